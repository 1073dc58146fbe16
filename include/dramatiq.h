/*
 * dramatiq.h - the Dramatiq message format for the Redis broker, in pure C (no Lua, no
 * hiredis): building the JSON a Python Dramatiq worker decodes, checking a payload
 * against the rules a worker depends on, queue names and message ids.
 *
 * The format is that of shared/spec/dramatiq-redis.md §2: one compact JSON object with
 * exactly seven keys in this order
 *
 *   {"queue_name":Q,"actor_name":A,"args":[...],"kwargs":{...},
 *    "options":{"redis_message_id":R[,"eta":E]},"message_id":M,"message_timestamp":T}
 *
 * written the way Python's json.dumps(obj, separators=(",", ":")) writes it with
 * ensure_ascii on: every byte outside printable ASCII is escaped as \uXXXX (lower-case
 * hex, a surrogate pair above U+FFFF), control characters use the short escapes
 * \b \f \n \r \t where JSON has them, and '/' is left alone.
 *
 * Error idiom: functions return 0 on success and a negative DQ_E* code on failure; the
 * ones that can fail for a reason a user must read fill `err` (a NUL-terminated message
 * of at most errlen bytes).
 */
#ifndef LORELEY_DRAMATIQ_H
#define LORELEY_DRAMATIQ_H

#include <stddef.h>
#include <stdint.h>

enum {
    DQ_OK = 0,
    DQ_ENOMEM = -1,     /* out of memory */
    DQ_EINVAL = -2,     /* bad input (message in err) */
    DQ_ERANDOM = -3,    /* the OS random source failed */
};

/* Largest JSON nesting the encoder writes and the validator reads (arrays and objects
 * inside args/kwargs included). */
#define DQ_MAX_DEPTH 64

/* Length of a canonical UUID string, without the NUL. */
#define DQ_UUID_LEN 36

/* ---- growable byte buffer ----------------------------------------------------------- */

/* A growable byte buffer. Zero-initialise it (or dq_buf_init), free it with
 * dq_buf_free. Once an allocation fails, `failed` stays set and further appends are
 * ignored, so a writer can check once at the end. data is NUL-terminated when len > 0
 * or after dq_buf_cstr. */
typedef struct dq_buf {
    char *data;
    size_t len;
    size_t cap;
    int failed;
} dq_buf;

void dq_buf_init(dq_buf *b);
void dq_buf_free(dq_buf *b);
void dq_buf_reset(dq_buf *b);                 /* len = 0, keeps the memory */
int dq_buf_reserve(dq_buf *b, size_t extra);  /* room for `extra` more bytes + NUL */
void dq_buf_put(dq_buf *b, const void *data, size_t n);
void dq_buf_puts(dq_buf *b, const char *s);
void dq_buf_putc(dq_buf *b, char c);
const char *dq_buf_cstr(dq_buf *b);           /* "" when empty or failed */

/* ---- JSON writing -------------------------------------------------------------------- */

/*
 * Appends s[0..n) as a JSON string literal, quotes included, escaped ASCII-only as
 * described at the top. s must be valid UTF-8 (no overlong forms, no surrogates, nothing
 * above U+10FFFF); otherwise nothing is appended, *bad_offset (if not NULL) receives the
 * offset of the first bad byte and DQ_EINVAL is returned.
 */
int dq_json_string(dq_buf *b, const char *s, size_t n, size_t *bad_offset);

/*
 * Appends a JSON number. Integral values of magnitude below 2^53 are written as
 * integers ("42", "-7"; -0 as "0"); other finite values with the fewest significant
 * digits that read back to the same double ("0.1", "1e+300"). NaN and infinities have
 * no JSON form: DQ_EINVAL, nothing appended.
 */
int dq_json_number(dq_buf *b, double v);

/* Appends a 64-bit integer in decimal. */
void dq_json_int64(dq_buf *b, int64_t v);

/* ---- UUIDs ------------------------------------------------------------------------- */

/* Formats 16 bytes as a version-4 UUID (the version and variant bits are forced), in
 * lower-case 8-4-4-4-12 form; out receives 36 characters and a NUL. */
void dq_uuid4_format(const unsigned char bytes[16], char out[DQ_UUID_LEN + 1]);

/* A fresh version-4 UUID from the OS random source. DQ_ERANDOM when the kernel refuses. */
int dq_uuid4(char out[DQ_UUID_LEN + 1]);

/*
 * The redis_message_id used for duplicate suppression: a version-8 UUID (RFC 9562,
 * "custom") made of the first 16 bytes of
 *     SHA-256("loreley.broker.dedupe.v1" NUL queue NUL key)
 * with the version and variant bits forced. queue is the canonical queue name (no .DQ),
 * key the job's key (its id). Deterministic: the same job on the same queue always gets
 * the same id, so Redis can tell whether its message is still there.
 */
void dq_dedupe_id(const char *queue, size_t queue_len, const char *key, size_t key_len,
                  char out[DQ_UUID_LEN + 1]);

/* 1 when s[0..n) is a canonical UUID string (8-4-4-4-12 lower-case hex), else 0. */
int dq_is_uuid(const char *s, size_t n);

/* ---- queue names ------------------------------------------------------------------- */

/* 1 when name is a Dramatiq queue name, [a-zA-Z_][a-zA-Z0-9._-]*, else 0. */
int dq_queue_name_valid(const char *name, size_t n);

/* 1 when name ends in ".DQ" (delay queue) or ".XQ" (dead letters), else 0. */
int dq_queue_is_delay(const char *name, size_t n);
int dq_queue_is_dead(const char *name, size_t n);

/* Length of the canonical queue name (name without a trailing ".DQ" or ".XQ"). */
size_t dq_queue_canonical_len(const char *name, size_t n);

/* ---- messages ---------------------------------------------------------------------- */

/* What goes into one message. Strings are not NUL-terminated necessarily: lengths rule. */
typedef struct dq_message {
    const char *queue_name;     /* the list the id is pushed on: "<q>" or "<q>.DQ" */
    size_t queue_name_len;
    const char *actor_name;
    size_t actor_name_len;
    const char *args_json;      /* a JSON array, already encoded */
    size_t args_json_len;
    const char *kwargs_json;    /* a JSON object, already encoded; NULL means {} */
    size_t kwargs_json_len;
    const char *redis_message_id;   /* DQ_UUID_LEN characters */
    const char *message_id;         /* DQ_UUID_LEN characters */
    int64_t timestamp_ms;           /* Unix time in milliseconds */
    int has_eta;
    int64_t eta_ms;                 /* Unix ms; only when has_eta */
} dq_message;

/*
 * Appends the message JSON to out (see the top of this file). args_json and kwargs_json
 * are copied as they are: the caller encodes them with dq_json_*. Returns DQ_EINVAL with
 * a message when a string field is not valid UTF-8, DQ_ENOMEM when out failed.
 * The result is not checked: run dq_message_validate on it before sending.
 */
int dq_message_build(dq_buf *out, const dq_message *m, char *err, size_t errlen);

/* Fields read back by dq_message_validate (pointers into nothing: copies). */
typedef struct dq_message_info {
    char message_id[DQ_UUID_LEN + 1];
    int64_t timestamp_ms;
    int has_eta;
    int64_t eta_ms;
} dq_message_info;

/*
 * Checks a payload against the rules a Dramatiq worker depends on (spec §2 and §7):
 *  - valid UTF-8 and valid JSON (RFC 8259; no NaN/Infinity; no raw control characters
 *    in strings; \u escapes must not leave a lone surrogate), nesting <= DQ_MAX_DEPTH;
 *  - a top-level object with exactly the seven keys queue_name, actor_name, args, kwargs,
 *    options, message_id, message_timestamp (none missing, none extra, none twice);
 *  - queue_name a string equal to `queue` (the list the id is pushed on), when queue is
 *    not NULL; actor_name a non-empty string; args an array; kwargs an object;
 *  - options an object holding redis_message_id, a string equal to `redis_id` when
 *    redis_id is not NULL; an eta, when present, an integer;
 *  - message_id a canonical UUID string;
 *  - message_timestamp an integer number of milliseconds (>= 10^11, i.e. after 1973;
 *    a value in seconds is rejected) and below 10^14.
 * Returns DQ_OK (and fills *info when not NULL) or DQ_EINVAL with the first rule broken
 * in err, e.g. "unexpected top-level key 'priority'".
 */
int dq_message_validate(const char *json, size_t len, const char *queue, size_t queue_len,
                        const char *redis_id, size_t redis_id_len, dq_message_info *info,
                        char *err, size_t errlen);

/* Unix time now, in milliseconds (CLOCK_REALTIME). */
int64_t dq_now_ms(void);

#endif
