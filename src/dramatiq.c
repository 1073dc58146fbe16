/*
 * dramatiq.c - the Dramatiq message format: ASCII-escaped JSON writing, message
 * assembly, ids, queue names and the validator every outgoing message goes through.
 * See dramatiq.h for the contracts and shared/spec/dramatiq-redis.md for the format.
 */
#include "dramatiq.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rng.h"
#include "sha256.h"

/* ---- buffer -------------------------------------------------------------------------- */

void dq_buf_init(dq_buf *b)
{
    memset(b, 0, sizeof *b);
}

void dq_buf_free(dq_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void dq_buf_reset(dq_buf *b)
{
    b->len = 0;
    b->failed = 0;
    if (b->data)
        b->data[0] = '\0';
}

int dq_buf_reserve(dq_buf *b, size_t extra)
{
    if (b->failed)
        return DQ_ENOMEM;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->failed = 1;
        return DQ_ENOMEM;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return DQ_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return DQ_ENOMEM;
    }
    b->data = p;
    b->cap = cap;
    return DQ_OK;
}

void dq_buf_put(dq_buf *b, const void *data, size_t n)
{
    if (dq_buf_reserve(b, n) != DQ_OK)
        return;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void dq_buf_puts(dq_buf *b, const char *s)
{
    dq_buf_put(b, s, strlen(s));
}

void dq_buf_putc(dq_buf *b, char c)
{
    if (dq_buf_reserve(b, 1) != DQ_OK)
        return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

const char *dq_buf_cstr(dq_buf *b)
{
    if (b->failed || !b->data)
        return "";
    return b->data;
}

/* ---- UTF-8 ------------------------------------------------------------------------- */

/*
 * Decodes one UTF-8 sequence at s (n bytes available). Returns its length (1-4) and the
 * code point in *cp, or 0 when the bytes are not well-formed UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF, no truncated sequence).
 */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;
    uint32_t v;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;          /* no overlong 3-byte forms */
        else if (c == 0xed)
            hi = 0x9f;          /* no UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;          /* no overlong 4-byte forms */
        else if (c == 0xf4)
            hi = 0x8f;          /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    v = (v << 6) | (s[1] & 0x3f);
    for (size_t i = 2; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Offset of the first byte that is not part of well-formed UTF-8, or n when all is. */
static size_t utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode(s + i, n - i, &cp);
        if (len == 0)
            return i;
        i += len;
    }
    return n;
}

/* Appends code point cp as UTF-8 to out[*len..cap); sets *overflow when it does not fit. */
static void utf8_put(char *out, size_t cap, size_t *len, int *overflow, uint32_t cp)
{
    unsigned char tmp[4];
    size_t n;
    if (cp < 0x80) {
        tmp[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        tmp[0] = (unsigned char)(0xc0 | (cp >> 6));
        tmp[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        tmp[0] = (unsigned char)(0xe0 | (cp >> 12));
        tmp[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        tmp[0] = (unsigned char)(0xf0 | (cp >> 18));
        tmp[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        tmp[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    if (!out || *len + n > cap) {
        *overflow = 1;
        return;
    }
    memcpy(out + *len, tmp, n);
    *len += n;
}

/* ---- JSON writing ------------------------------------------------------------------ */

static const char HEX[] = "0123456789abcdef";

/* Appends "\uXXXX" (lower-case hex, as Python writes it). */
static void put_u_escape(dq_buf *b, uint32_t unit)
{
    char e[6] = {'\\', 'u', HEX[(unit >> 12) & 15], HEX[(unit >> 8) & 15],
                 HEX[(unit >> 4) & 15], HEX[unit & 15]};
    dq_buf_put(b, e, sizeof e);
}

int dq_json_string(dq_buf *b, const char *s, size_t n, size_t *bad_offset)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t start_len = b->len;
    if (dq_buf_reserve(b, n + 2) != DQ_OK)
        return DQ_ENOMEM;
    dq_buf_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        /* Copy the longest run of bytes that need no escape in one go. */
        size_t run = i;
        while (run < n && u[run] >= 0x20 && u[run] < 0x7f && u[run] != '"' && u[run] != '\\')
            run++;
        if (run > i) {
            dq_buf_put(b, s + i, run - i);
            i = run;
            if (i == n)
                break;
        }
        unsigned char c = u[i];
        if (c < 0x80) {
            switch (c) {
            case '"': dq_buf_put(b, "\\\"", 2); break;
            case '\\': dq_buf_put(b, "\\\\", 2); break;
            case '\b': dq_buf_put(b, "\\b", 2); break;
            case '\f': dq_buf_put(b, "\\f", 2); break;
            case '\n': dq_buf_put(b, "\\n", 2); break;
            case '\r': dq_buf_put(b, "\\r", 2); break;
            case '\t': dq_buf_put(b, "\\t", 2); break;
            default: put_u_escape(b, c); break;   /* other controls and DEL (0x7f) */
            }
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode(u + i, n - i, &cp);
        if (len == 0) {
            b->len = start_len;
            if (b->data)
                b->data[b->len] = '\0';
            if (bad_offset)
                *bad_offset = i;
            return DQ_EINVAL;
        }
        if (cp < 0x10000) {
            put_u_escape(b, cp);
        } else {
            uint32_t v = cp - 0x10000;
            put_u_escape(b, 0xd800 | (v >> 10));
            put_u_escape(b, 0xdc00 | (v & 0x3ff));
        }
        i += len;
    }
    dq_buf_putc(b, '"');
    return b->failed ? DQ_ENOMEM : DQ_OK;
}

void dq_json_int64(dq_buf *b, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    dq_buf_put(b, tmp, (size_t)n);
}

int dq_json_number(dq_buf *b, double v)
{
    if (!isfinite(v))
        return DQ_EINVAL;
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {   /* 2^53 */
        dq_json_int64(b, (int64_t)v);
        return b->failed ? DQ_ENOMEM : DQ_OK;
    }
    char tmp[40];
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    dq_buf_put(b, tmp, (size_t)n);
    return b->failed ? DQ_ENOMEM : DQ_OK;
}

/* ---- UUIDs ------------------------------------------------------------------------- */

static void uuid_format(const unsigned char b[16], char out[DQ_UUID_LEN + 1])
{
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = HEX[b[i] >> 4];
        *o++ = HEX[b[i] & 15];
    }
    *o = '\0';
}

void dq_uuid4_format(const unsigned char bytes[16], char out[DQ_UUID_LEN + 1])
{
    unsigned char b[16];
    memcpy(b, bytes, 16);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    uuid_format(b, out);
}

int dq_uuid4(char out[DQ_UUID_LEN + 1])
{
    unsigned char b[16];
    if (rng_os_bytes(b, sizeof b) != 0)
        return DQ_ERANDOM;
    dq_uuid4_format(b, out);
    return DQ_OK;
}

void dq_dedupe_id(const char *queue, size_t queue_len, const char *key, size_t key_len,
                  char out[DQ_UUID_LEN + 1])
{
    static const char domain[] = "loreley.broker.dedupe.v1";
    unsigned char digest[32];
    sha256_t ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, domain, sizeof domain);   /* the NUL separates the domain */
    sha256_update(&ctx, queue, queue_len);
    sha256_update(&ctx, "", 1);
    sha256_update(&ctx, key, key_len);
    sha256_final(&ctx, digest);
    digest[6] = (unsigned char)((digest[6] & 0x0f) | 0x80);   /* version 8 */
    digest[8] = (unsigned char)((digest[8] & 0x3f) | 0x80);   /* RFC 9562 variant */
    uuid_format(digest, out);
}

int dq_is_uuid(const char *s, size_t n)
{
    if (n != DQ_UUID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* ---- queue names ------------------------------------------------------------------- */

int dq_queue_name_valid(const char *name, size_t n)
{
    if (n == 0)
        return 0;
    char c = name[0];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'))
        return 0;
    for (size_t i = 1; i < n; i++) {
        c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int has_suffix(const char *name, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(name + n - k, suffix, k) == 0;
}

int dq_queue_is_delay(const char *name, size_t n)
{
    return has_suffix(name, n, ".DQ");
}

int dq_queue_is_dead(const char *name, size_t n)
{
    return has_suffix(name, n, ".XQ");
}

size_t dq_queue_canonical_len(const char *name, size_t n)
{
    if (dq_queue_is_delay(name, n) || dq_queue_is_dead(name, n))
        return n - 3;
    return n;
}

/* ---- message assembly -------------------------------------------------------------- */

/* Appends a string literal without its NUL. */
#define DQ_PUT_LITERAL(b, lit) dq_buf_put((b), (lit), sizeof(lit) - 1)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int dq_message_build(dq_buf *out, const dq_message *m, char *err, size_t errlen)
{
    size_t bad;
    dq_buf_reserve(out, 160 + m->queue_name_len + m->actor_name_len + m->args_json_len +
                            (m->kwargs_json ? m->kwargs_json_len : 2));
    DQ_PUT_LITERAL(out, "{\"queue_name\":");
    if (dq_json_string(out, m->queue_name, m->queue_name_len, &bad) == DQ_EINVAL) {
        set_err(err, errlen, "queue_name is not valid UTF-8 (byte %zu)", bad);
        return DQ_EINVAL;
    }
    DQ_PUT_LITERAL(out, ",\"actor_name\":");
    if (dq_json_string(out, m->actor_name, m->actor_name_len, &bad) == DQ_EINVAL) {
        set_err(err, errlen, "actor_name is not valid UTF-8 (byte %zu)", bad);
        return DQ_EINVAL;
    }
    DQ_PUT_LITERAL(out, ",\"args\":");
    dq_buf_put(out, m->args_json, m->args_json_len);
    DQ_PUT_LITERAL(out, ",\"kwargs\":");
    if (m->kwargs_json)
        dq_buf_put(out, m->kwargs_json, m->kwargs_json_len);
    else
        DQ_PUT_LITERAL(out, "{}");
    DQ_PUT_LITERAL(out, ",\"options\":{\"redis_message_id\":\"");
    dq_buf_put(out, m->redis_message_id, DQ_UUID_LEN);
    dq_buf_putc(out, '"');
    if (m->has_eta) {
        DQ_PUT_LITERAL(out, ",\"eta\":");
        dq_json_int64(out, m->eta_ms);
    }
    DQ_PUT_LITERAL(out, "},\"message_id\":\"");
    dq_buf_put(out, m->message_id, DQ_UUID_LEN);
    DQ_PUT_LITERAL(out, "\",\"message_timestamp\":");
    dq_json_int64(out, m->timestamp_ms);
    dq_buf_putc(out, '}');
    if (out->failed) {
        set_err(err, errlen, "out of memory");
        return DQ_ENOMEM;
    }
    return DQ_OK;
}

int64_t dq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- validation: a strict JSON reader ------------------------------------------------ */

typedef struct jreader {
    const unsigned char *start;
    const unsigned char *p;
    const unsigned char *end;
    char *err;
    size_t errlen;
} jreader;

/* A decoded string value, kept only up to its capacity. */
typedef struct jstring {
    char *data;       /* NULL: validate only */
    size_t cap;
    size_t len;
    int overflow;     /* longer than cap */
} jstring;

/* A number literal: whether it is an integer literal (no fraction, no exponent) that
 * fits an int64, and that value. */
typedef struct jnumber {
    int is_integer;
    int64_t value;
} jnumber;

static int jfail(jreader *r, const char *what)
{
    set_err(r->err, r->errlen, "payload is not valid JSON: %s at byte %zu", what,
            (size_t)(r->p - r->start));
    return DQ_EINVAL;
}

static void skip_ws(jreader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Reads a string at r->p (which is '"'); decodes it into s when s->data is set. The
 * payload's UTF-8 was checked beforehand, so raw bytes >= 0x80 are copied as they are. */
static int read_string(jreader *r, jstring *s)
{
    if (s) {
        s->len = 0;
        s->overflow = 0;
    }
    r->p++;   /* opening quote */
    for (;;) {
        if (r->p >= r->end)
            return jfail(r, "unterminated string");
        unsigned char c = *r->p;
        if (c == '"') {
            r->p++;
            return 0;
        }
        if (c < 0x20)
            return jfail(r, "raw control character in a string");
        if (c != '\\') {
            if (s && s->data) {
                if (s->len < s->cap)
                    s->data[s->len++] = (char)c;
                else
                    s->overflow = 1;
            }
            r->p++;
            continue;
        }
        if (r->end - r->p < 2)
            return jfail(r, "unterminated escape");
        unsigned char e = r->p[1];
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (r->end - r->p < 6 || hex4(r->p + 2, &cp) != 0)
                return jfail(r, "bad \\u escape");
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return jfail(r, "lone low surrogate in \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t low;
                if (r->end - r->p < 12 || r->p[6] != '\\' || r->p[7] != 'u' ||
                    hex4(r->p + 8, &low) != 0 || low < 0xdc00 || low > 0xdfff)
                    return jfail(r, "high surrogate without its low half in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                r->p += 6;
            }
            r->p += 4;
            break;
        default:
            return jfail(r, "unknown escape");
        }
        r->p += 2;
        if (s && s->data)
            utf8_put(s->data, s->cap, &s->len, &s->overflow, cp);
    }
}

/* Reads a number per the JSON grammar -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int read_number(jreader *r, jnumber *n)
{
    const unsigned char *p = r->p;
    int negative = 0, integer = 1, overflow = 0;
    uint64_t mag = 0;
    if (p < r->end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= r->end || !(*p >= '0' && *p <= '9'))
        return jfail(r, "bad number");
    if (*p == '0') {
        p++;
    } else {
        while (p < r->end && *p >= '0' && *p <= '9') {
            unsigned d = (unsigned)(*p - '0');
            if (mag > (UINT64_MAX - d) / 10)
                overflow = 1;
            else
                mag = mag * 10 + d;
            p++;
        }
    }
    if (p < r->end && *p == '.') {
        integer = 0;
        p++;
        if (p >= r->end || !(*p >= '0' && *p <= '9'))
            return jfail(r, "bad number (digits expected after '.')");
        while (p < r->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < r->end && (*p == 'e' || *p == 'E')) {
        integer = 0;
        p++;
        if (p < r->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= r->end || !(*p >= '0' && *p <= '9'))
            return jfail(r, "bad number (digits expected in the exponent)");
        while (p < r->end && *p >= '0' && *p <= '9')
            p++;
    }
    r->p = p;
    if (n) {
        n->is_integer = integer && !overflow && mag <= (uint64_t)INT64_MAX;
        n->value = n->is_integer ? (negative ? -(int64_t)mag : (int64_t)mag) : 0;
    }
    return 0;
}

static int read_literal(jreader *r, const char *word)
{
    size_t k = strlen(word);
    if ((size_t)(r->end - r->p) < k || memcmp(r->p, word, k) != 0)
        return jfail(r, "unexpected character");
    r->p += k;
    return 0;
}

static int read_value(jreader *r, int depth);

/* Reads an array or object at r->p, whichever it is. */
static int read_container(jreader *r, int depth)
{
    if (depth >= DQ_MAX_DEPTH)
        return jfail(r, "nested too deeply");
    int object = *r->p == '{';
    unsigned char close = object ? '}' : ']';
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return 0;
    }
    for (;;) {
        skip_ws(r);
        if (object) {
            if (r->p >= r->end || *r->p != '"')
                return jfail(r, "object key expected");
            if (read_string(r, NULL) != 0)
                return -1;
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':')
                return jfail(r, "':' expected");
            r->p++;
            skip_ws(r);
        }
        if (read_value(r, depth + 1) != 0)
            return -1;
        skip_ws(r);
        if (r->p >= r->end)
            return jfail(r, object ? "unterminated object" : "unterminated array");
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == close) {
            r->p++;
            return 0;
        }
        return jfail(r, object ? "',' or '}' expected" : "',' or ']' expected");
    }
}

static int read_value(jreader *r, int depth)
{
    if (r->p >= r->end)
        return jfail(r, "value expected");
    switch (*r->p) {
    case '{':
    case '[':
        return read_container(r, depth);
    case '"':
        return read_string(r, NULL);
    case 't':
        return read_literal(r, "true");
    case 'f':
        return read_literal(r, "false");
    case 'n':
        return read_literal(r, "null");
    default:
        if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
            return read_number(r, NULL);
        return jfail(r, "unexpected character");
    }
}

/* The JSON type of the value at r->p, for messages. */
static const char *peek_type(jreader *r)
{
    if (r->p >= r->end)
        return "nothing";
    switch (*r->p) {
    case '{': return "an object";
    case '[': return "an array";
    case '"': return "a string";
    case 't':
    case 'f': return "a boolean";
    case 'n': return "null";
    default:
        if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9'))
            return "a number";
        return "not a JSON value";
    }
}

/* A key as it may be shown in a message: printable ASCII only, at most 40 bytes. */
static void printable_key(const jstring *k, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < k->len && o + 1 < cap && o < 40; i++) {
        unsigned char c = (unsigned char)k->data[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
    if ((k->overflow || k->len > o) && o + 4 <= cap)
        memcpy(out + o, "...", 4);
}

enum { K_QUEUE, K_ACTOR, K_ARGS, K_KWARGS, K_OPTIONS, K_MID, K_TS, K_COUNT };
static const char *const KEY_NAMES[K_COUNT] = {
    "queue_name", "actor_name", "args", "kwargs", "options", "message_id",
    "message_timestamp",
};

static int key_is(const jstring *k, const char *name)
{
    size_t n = strlen(name);
    return !k->overflow && k->len == n && memcmp(k->data, name, n) == 0;
}

/* Reads the options object: redis_message_id (decoded into rid) and eta are checked,
 * other options are skipped. */
static int read_options(jreader *r, jstring *rid, int *has_rid, dq_message_info *info)
{
    char keybuf[64];
    jstring key = {keybuf, sizeof keybuf, 0, 0};
    int has_eta = 0;
    r->p++;   /* '{' */
    skip_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return 0;
    }
    for (;;) {
        skip_ws(r);
        if (r->p >= r->end || *r->p != '"')
            return jfail(r, "object key expected");
        if (read_string(r, &key) != 0)
            return -1;
        skip_ws(r);
        if (r->p >= r->end || *r->p != ':')
            return jfail(r, "':' expected");
        r->p++;
        skip_ws(r);
        if (key_is(&key, "redis_message_id")) {
            if (*has_rid) {
                set_err(r->err, r->errlen, "duplicate key 'options.redis_message_id'");
                return -1;
            }
            if (r->p >= r->end || *r->p != '"') {
                set_err(r->err, r->errlen, "options.redis_message_id must be a string, got %s",
                        peek_type(r));
                return -1;
            }
            if (read_string(r, rid) != 0)
                return -1;
            *has_rid = 1;
        } else if (key_is(&key, "eta")) {
            if (has_eta) {
                set_err(r->err, r->errlen, "duplicate key 'options.eta'");
                return -1;
            }
            const char *type = peek_type(r);
            jnumber n;
            if (strcmp(type, "not a JSON value") == 0 || strcmp(type, "nothing") == 0)
                return jfail(r, "value expected");
            if (strcmp(type, "a number") != 0) {
                set_err(r->err, r->errlen,
                        "options.eta must be an integer number of milliseconds, got %s", type);
                return -1;
            }
            if (read_number(r, &n) != 0)
                return -1;
            if (!n.is_integer) {
                set_err(r->err, r->errlen,
                        "options.eta must be an integer number of milliseconds");
                return -1;
            }
            has_eta = 1;
            if (info) {
                info->has_eta = 1;
                info->eta_ms = n.value;
            }
        } else if (read_value(r, 2) != 0) {
            return -1;
        }
        skip_ws(r);
        if (r->p >= r->end)
            return jfail(r, "unterminated object");
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == '}') {
            r->p++;
            return 0;
        }
        return jfail(r, "',' or '}' expected");
    }
}

/* Checks that the value at r->p has JSON type `want` ("a string", ...) for key k. */
static int expect_type(jreader *r, int k, const char *want)
{
    const char *got = peek_type(r);
    if (strcmp(got, want) == 0)
        return 0;
    if (strcmp(got, "not a JSON value") == 0 || strcmp(got, "nothing") == 0)
        return jfail(r, "value expected");
    set_err(r->err, r->errlen, "%s must be %s, got %s", KEY_NAMES[k], want, got);
    return -1;
}

int dq_message_validate(const char *json, size_t len, const char *queue, size_t queue_len,
                        const char *redis_id, size_t redis_id_len, dq_message_info *info,
                        char *err, size_t errlen)
{
    if (info)
        memset(info, 0, sizeof *info);
    size_t bad = utf8_check((const unsigned char *)json, len);
    if (bad != len) {
        set_err(err, errlen, "payload is not valid UTF-8 (byte %zu)", bad);
        return DQ_EINVAL;
    }
    jreader r = {(const unsigned char *)json, (const unsigned char *)json,
                 (const unsigned char *)json + len, err, errlen};
    char keybuf[64], queuebuf[256], actorbuf[8], midbuf[DQ_UUID_LEN + 1], ridbuf[256];
    jstring key = {keybuf, sizeof keybuf, 0, 0};
    jstring qs = {queuebuf, sizeof queuebuf, 0, 0};
    jstring as = {actorbuf, sizeof actorbuf, 0, 0};
    jstring ms = {midbuf, DQ_UUID_LEN, 0, 0};
    jstring rs = {ridbuf, sizeof ridbuf, 0, 0};
    int has_rid = 0;
    unsigned seen = 0;
    jnumber ts = {0, 0};

    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{') {
        set_err(err, errlen, "payload must be a JSON object, got %s", peek_type(&r));
        return DQ_EINVAL;
    }
    r.p++;
    skip_ws(&r);
    if (r.p < r.end && *r.p == '}') {
        r.p++;
    } else {
        for (;;) {
            skip_ws(&r);
            if (r.p >= r.end || *r.p != '"')
                return jfail(&r, "object key expected");
            if (read_string(&r, &key) != 0)
                return DQ_EINVAL;
            skip_ws(&r);
            if (r.p >= r.end || *r.p != ':')
                return jfail(&r, "':' expected");
            r.p++;
            skip_ws(&r);
            int k = -1;
            for (int i = 0; i < K_COUNT; i++)
                if (key_is(&key, KEY_NAMES[i]))
                    k = i;
            if (k < 0) {
                char shown[48];
                printable_key(&key, shown, sizeof shown);
                set_err(err, errlen,
                        "unexpected top-level key '%s' (a worker cannot decode the message)",
                        shown);
                return DQ_EINVAL;
            }
            if (seen & (1u << k)) {
                set_err(err, errlen, "duplicate top-level key '%s'", KEY_NAMES[k]);
                return DQ_EINVAL;
            }
            seen |= 1u << k;
            int rc = 0;
            switch (k) {
            case K_QUEUE:
                rc = expect_type(&r, k, "a string") ? -1 : read_string(&r, &qs);
                break;
            case K_ACTOR:
                rc = expect_type(&r, k, "a string") ? -1 : read_string(&r, &as);
                if (rc == 0 && as.len == 0 && !as.overflow) {
                    set_err(err, errlen, "actor_name must not be empty");
                    rc = -1;
                }
                break;
            case K_ARGS:
                rc = expect_type(&r, k, "an array") ? -1 : read_container(&r, 1);
                break;
            case K_KWARGS:
                rc = expect_type(&r, k, "an object") ? -1 : read_container(&r, 1);
                break;
            case K_OPTIONS:
                rc = expect_type(&r, k, "an object") ? -1 : read_options(&r, &rs, &has_rid, info);
                break;
            case K_MID:
                rc = expect_type(&r, k, "a string") ? -1 : read_string(&r, &ms);
                if (rc == 0 && (ms.overflow || !dq_is_uuid(midbuf, ms.len))) {
                    set_err(err, errlen, "message_id must be a UUID string "
                                         "(8-4-4-4-12 lower-case hex)");
                    rc = -1;
                }
                break;
            case K_TS:
                rc = expect_type(&r, k, "a number") ? -1 : read_number(&r, &ts);
                if (rc == 0 && !ts.is_integer) {
                    set_err(err, errlen, "message_timestamp must be an integer");
                    rc = -1;
                } else if (rc == 0 && (ts.value < 100000000000LL || ts.value >= 100000000000000LL)) {
                    set_err(err, errlen,
                            "message_timestamp %lld is not a Unix time in milliseconds%s",
                            (long long)ts.value,
                            ts.value > 0 && ts.value < 100000000000LL ? " (seconds?)" : "");
                    rc = -1;
                }
                break;
            }
            if (rc != 0)
                return DQ_EINVAL;
            skip_ws(&r);
            if (r.p >= r.end)
                return jfail(&r, "unterminated object");
            if (*r.p == ',') {
                r.p++;
                continue;
            }
            if (*r.p == '}') {
                r.p++;
                break;
            }
            return jfail(&r, "',' or '}' expected");
        }
    }
    skip_ws(&r);
    if (r.p != r.end)
        return jfail(&r, "trailing data after the object");
    for (int k = 0; k < K_COUNT; k++) {
        if (!(seen & (1u << k))) {
            set_err(err, errlen, "missing key '%s'", KEY_NAMES[k]);
            return DQ_EINVAL;
        }
    }
    if (!has_rid) {
        set_err(err, errlen, "missing options.redis_message_id (the worker acks by it)");
        return DQ_EINVAL;
    }
    if (queue && (qs.overflow || qs.len != queue_len || memcmp(queue, queuebuf, queue_len) != 0)) {
        set_err(err, errlen, "queue_name '%.*s%s' differs from the queue '%.*s' it is pushed on",
                (int)(qs.len > 100 ? 100 : qs.len), queuebuf, qs.overflow ? "..." : "",
                (int)queue_len, queue);
        return DQ_EINVAL;
    }
    if (redis_id &&
        (rs.overflow || rs.len != redis_id_len || memcmp(redis_id, ridbuf, redis_id_len) != 0)) {
        set_err(err, errlen,
                "options.redis_message_id '%.*s%s' differs from the pushed id '%.*s'",
                (int)(rs.len > 100 ? 100 : rs.len), ridbuf, rs.overflow ? "..." : "",
                (int)redis_id_len, redis_id);
        return DQ_EINVAL;
    }
    if (info) {
        memcpy(info->message_id, midbuf, DQ_UUID_LEN);
        info->message_id[DQ_UUID_LEN] = '\0';
        info->timestamp_ms = ts.value;
    }
    return DQ_OK;
}
