/*
 * Fuzzes the message validator and the Redis URL parser with arbitrary bytes: neither
 * may crash, read out of bounds or accept a payload a re-validation rejects. The first
 * byte picks the target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dramatiq.h"
#include "redis_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char err[400];
    if (data[0] & 1) {
        const char *json = (const char *)data + 1;
        dq_message_info info;
        int rc = dq_message_validate(json, size - 1, NULL, 0, NULL, 0, &info, err, sizeof err);
        if (rc == DQ_OK && strlen(info.message_id) != DQ_UUID_LEN)
            abort();
        /* The string encoder must cope with the same bytes. */
        dq_buf b;
        dq_buf_init(&b);
        size_t bad;
        dq_json_string(&b, json, size - 1, &bad);
        dq_buf_free(&b);
    } else {
        char *url = malloc(size);
        if (!url)
            return 0;
        memcpy(url, data + 1, size - 1);
        url[size - 1] = '\0';
        redis_url u;
        if (redis_url_parse(url, &u, err, sizeof err) == 0) {
            char display[512];
            redis_url_display(&u, display, sizeof display);
            if (!u.is_unix && strchr(display, '@'))
                abort();   /* the display form carries no userinfo */
        }
        free(url);
    }
    return 0;
}
