/*
 * ldb.c - the `loreley.db` module: PostgreSQL through libpq.
 *
 * Errors: misuse (a wrong argument type, a parameter count that does not match the SQL,
 * a value that cannot be sent) raises a Lua error. Failures of the world (server down,
 * SQL error, constraint violation) return nil, message, sqlstate. Messages never hold
 * the password.
 *
 *   db.connect(url[, opts]) -> conn | nil, msg, sqlstate
 *        url: postgresql://, postgres:// or postgresql+DRIVER:// (SQLAlchemy style, as
 *        Loreley writes DATABASE_URL); opts: connect_timeout (s, default 10),
 *        application_name (default "loreley-host")
 *   db.settings_url(settings) -> DATABASE_URL, or the URL built from the DB_* settings
 *   db.parse_url(url) -> {host, port, user, password, dbname, params = {k = v}}
 *   db.null                      SQL NULL in rows and parameters (== json.null == cjson.null)
 *   db.json_encode(v) -> text    db.json_array(t) -> t marked as a JSON array
 *                                (loreley.json's encoder and array mark, shared)
 *   db.float_repr(x) -> Python repr(float) text ("1e-06", "6.0", "-inf")
 *   db.float_list_repr(list) -> "[1.0,2.5]" (finite numbers, as Python writes floats)
 *   db.iso(epoch) -> "2025-11-29T10:41:48.123456+00:00" (Python isoformat, UTC)
 *   db.lock_key(text) -> decimal int64 text (first 8 bytes of SHA-256, big-endian)
 *   db.error_count() -> failed calls so far in this process (each nil, msg, sqlstate
 *                       returned by connect, query, exec, script, tx; the metrics endpoint)
 *
 *   conn:query(sql, ...) -> rows | nil, msg, sqlstate     ($1..$n parameters)
 *   conn:exec(sql, ...)  -> affected row count | nil, msg, sqlstate
 *   conn:script(sql)     -> true | nil, msg, sqlstate     (several statements, no params)
 *   conn:tx(fn, ...)     -> fn's results | nil, msg, sqlstate
 *   conn:try_lock(key) -> bool | nil, msg    conn:lock(key) -> true | nil, msg
 *   conn:unlock(key)   -> bool | nil, msg    conn:holds_lock(key) -> bool
 *   conn:ping() -> true | nil, msg           conn:info() -> {host, port, user, dbname, ...}
 *   conn:close()                             tostring(conn)
 *
 * Values: see docs/db.md. Timestamps are epoch seconds (numbers, microsecond resolution);
 * json/jsonb are decoded with loreley.json (arrays keep json.array_mt, so [] stays []);
 * bytea is a Lua string; arrays are Lua arrays;
 * int8 beyond +-2^53 comes back as decimal text.
 *
 * Statements with parameters are prepared once per connection and cached; the server's
 * inferred parameter types decide how each Lua value is sent (a table becomes JSON for a
 * json/jsonb parameter and an array literal for an array parameter).
 *
 * A lost connection makes the current call return nil, msg, "08006"; the next call
 * reconnects, with an exponential backoff (0.25 s doubling to 10 s) between failed
 * attempts. Session advisory locks held before the loss are taken again after a
 * reconnect when possible; conn:holds_lock tells whether that worked.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "host.h"
#include "lmod.h"
#include "log.h"
#include "ljson.h"
#include "pyfloat.h"
#include "sha256.h"

#define CONN_TYPE "loreley.db.conn"
#define BUF_TYPE "loreley.db.buffer"
#define RESULT_TYPE "loreley.db.result"

#define BACKOFF_FIRST 0.25
#define BACKOFF_MAX 10.0
#define STMT_CACHE_MAX 256
#define JSON_MAX_DEPTH 64
#define SQLSTATE_CONNECTION_FAILURE "08006"

/* Failures returned to Lua (db.error_count). Only the main thread runs Lua. */
static double failure_count;

/* lmod_fail_code that also counts the failure. */
#define FAIL_CODE(...) (failure_count++, lmod_fail_code(__VA_ARGS__))

/* Type OIDs of the built-in types (pg_type.dat); fixed across PostgreSQL versions. */
enum {
    OID_BOOL = 16, OID_BYTEA = 17, OID_CHAR = 18, OID_NAME = 19, OID_INT8 = 20,
    OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25, OID_OID = 26, OID_JSON = 114,
    OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_BPCHAR = 1042, OID_VARCHAR = 1043,
    OID_DATE = 1082, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_NUMERIC = 1700,
    OID_UUID = 2950, OID_JSONB = 3802,
    OID_JSON_ARRAY = 199, OID_BOOL_ARRAY = 1000, OID_BYTEA_ARRAY = 1001,
    OID_NAME_ARRAY = 1003, OID_INT2_ARRAY = 1005, OID_INT4_ARRAY = 1007,
    OID_TEXT_ARRAY = 1009, OID_BPCHAR_ARRAY = 1014, OID_VARCHAR_ARRAY = 1015,
    OID_INT8_ARRAY = 1016, OID_FLOAT4_ARRAY = 1021, OID_FLOAT8_ARRAY = 1022,
    OID_OID_ARRAY = 1028, OID_TIMESTAMP_ARRAY = 1115, OID_DATE_ARRAY = 1182,
    OID_TIMESTAMPTZ_ARRAY = 1185, OID_NUMERIC_ARRAY = 1231, OID_UUID_ARRAY = 2951,
    OID_JSONB_ARRAY = 3807,
};

/* How a column value becomes a Lua value. */
typedef enum value_kind {
    KIND_TEXT, KIND_INTEGER, KIND_FLOAT, KIND_BOOL, KIND_TIME, KIND_JSON, KIND_BYTEA,
} value_kind;

static value_kind scalar_kind(Oid oid)
{
    switch (oid) {
    case OID_INT2: case OID_INT4: case OID_INT8: case OID_OID:
        return KIND_INTEGER;
    case OID_FLOAT4: case OID_FLOAT8: case OID_NUMERIC:
        return KIND_FLOAT;
    case OID_BOOL:
        return KIND_BOOL;
    case OID_DATE: case OID_TIMESTAMP: case OID_TIMESTAMPTZ:
        return KIND_TIME;
    case OID_JSON: case OID_JSONB:
        return KIND_JSON;
    case OID_BYTEA:
        return KIND_BYTEA;
    default:
        return KIND_TEXT;   /* text, varchar, uuid, enums, and anything unknown */
    }
}

/* The element type of a built-in array type, or 0 when oid is not one. */
static Oid array_element(Oid oid)
{
    switch (oid) {
    case OID_BOOL_ARRAY: return OID_BOOL;
    case OID_BYTEA_ARRAY: return OID_BYTEA;
    case OID_NAME_ARRAY: return OID_NAME;
    case OID_INT2_ARRAY: return OID_INT2;
    case OID_INT4_ARRAY: return OID_INT4;
    case OID_TEXT_ARRAY: return OID_TEXT;
    case OID_BPCHAR_ARRAY: return OID_BPCHAR;
    case OID_VARCHAR_ARRAY: return OID_VARCHAR;
    case OID_INT8_ARRAY: return OID_INT8;
    case OID_FLOAT4_ARRAY: return OID_FLOAT4;
    case OID_FLOAT8_ARRAY: return OID_FLOAT8;
    case OID_OID_ARRAY: return OID_OID;
    case OID_TIMESTAMP_ARRAY: return OID_TIMESTAMP;
    case OID_DATE_ARRAY: return OID_DATE;
    case OID_TIMESTAMPTZ_ARRAY: return OID_TIMESTAMPTZ;
    case OID_NUMERIC_ARRAY: return OID_NUMERIC;
    case OID_UUID_ARRAY: return OID_UUID;
    case OID_JSON_ARRAY: return OID_JSON;
    case OID_JSONB_ARRAY: return OID_JSONB;
    default: return 0;
    }
}

/* Registry keys (addresses of these statics) for the JSON decoder. */

/* --- growable byte buffer, owned by a userdata so a raise cannot leak it ------------------ */

typedef struct buffer {
    char *data;
    size_t len, cap;
} buffer;

static int buffer_gc(lua_State *L)
{
    buffer *b = luaL_checkudata(L, 1, BUF_TYPE);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    return 0;
}

/* Pushes a new empty buffer userdata and returns it. */
static buffer *buffer_new(lua_State *L)
{
    buffer *b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    luaL_getmetatable(L, BUF_TYPE);
    lua_setmetatable(L, -2);
    return b;
}

static void buffer_reserve(lua_State *L, buffer *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        luaL_error(L, "loreley.db: out of memory");
    b->data = p;
    b->cap = cap;
}

static void buffer_add(lua_State *L, buffer *b, const char *s, size_t n)
{
    buffer_reserve(L, b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void buffer_adds(lua_State *L, buffer *b, const char *s)
{
    buffer_add(L, b, s, strlen(s));
}

static void buffer_addc(lua_State *L, buffer *b, char c)
{
    buffer_reserve(L, b, 1);
    b->data[b->len++] = c;
}

/* --- numbers and times ------------------------------------------------------------------ */


/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, long long *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long long)yoe + era * 400 + (*m <= 2);
}

/*
 * Parses PostgreSQL's ISO output of date, timestamp and timestamptz ("2025-11-29",
 * "2025-11-29 10:41:48.123456+00", "+05:30" offsets, "infinity", " BC") into epoch
 * seconds. Returns 0 on success, -1 when the text is not in that form.
 */
static int parse_pg_time(const char *s, double *out)
{
    if (strcmp(s, "infinity") == 0) {
        *out = HUGE_VAL;
        return 0;
    }
    if (strcmp(s, "-infinity") == 0) {
        *out = -HUGE_VAL;
        return 0;
    }
    char *end;
    long long year = strtoll(s, &end, 10);
    if (end == s || *end != '-')
        return -1;
    unsigned month = (unsigned)strtoul(end + 1, &end, 10);
    if (*end != '-')
        return -1;
    unsigned day = (unsigned)strtoul(end + 1, &end, 10);
    double seconds = 0;
    if ((*end == ' ' || *end == 'T') && end[1] >= '0' && end[1] <= '9') {
        unsigned hh = (unsigned)strtoul(end + 1, &end, 10);
        if (*end != ':')
            return -1;
        unsigned mm = (unsigned)strtoul(end + 1, &end, 10);
        if (*end != ':')
            return -1;
        double ss = strtod(end + 1, &end);
        seconds = hh * 3600.0 + mm * 60.0 + ss;
        if (*end == '+' || *end == '-') {
            int sign = *end == '-' ? -1 : 1;
            unsigned oh = (unsigned)strtoul(end + 1, &end, 10), om = 0, os = 0;
            if (*end == ':')
                om = (unsigned)strtoul(end + 1, &end, 10);
            if (*end == ':')
                os = (unsigned)strtoul(end + 1, &end, 10);
            seconds -= sign * (oh * 3600.0 + om * 60.0 + os);
        }
    }
    if (strcmp(end, " BC") == 0) {
        year = 1 - year;
        end += 3;
    }
    if (*end != '\0' || month < 1 || month > 12 || day < 1 || day > 31)
        return -1;
    *out = (double)days_from_civil(year, month, day) * 86400.0 + seconds;
    return 0;
}

/*
 * Formats epoch seconds as Python's datetime.fromtimestamp(t, UTC).isoformat():
 * "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00", microseconds rounded half-even, the fraction
 * left out when it is zero. sep is 'T' for ISO text or ' ' for SQL literals.
 */
static int format_iso(double t, char sep, char *out, size_t size)
{
    if (!isfinite(t) || fabs(t) > 253402300800.0 * 4)
        return -1;
    double whole = floor(t);
    double micro = nearbyint((t - whole) * 1e6);   /* round half even */
    if (micro >= 1e6) {
        whole += 1;
        micro -= 1e6;
    }
    long long secs = (long long)whole;
    long long days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    long long rem = secs - days * 86400;
    long long y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 1 || y > 9999)
        return -1;
    int n = snprintf(out, size, "%04lld-%02u-%02u%c%02lld:%02lld:%02lld", y, m, d, sep,
                     rem / 3600, rem / 60 % 60, rem % 60);
    if (micro > 0)
        n += snprintf(out + n, size - (size_t)n, ".%06lld", (long long)micro);
    snprintf(out + n, size - (size_t)n, "+00:00");
    return 0;
}

/* Reads an advisory-lock key: an integer number (|k| <= 2^53) or decimal int64 text. */
static long long check_lock_key(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double k = lua_tonumber(L, idx);
        if (k != floor(k) || fabs(k) > 9007199254740992.0)
            luaL_argerror(L, idx, "lock key must be an integer (|key| <= 2^53) or int64 text");
        return (long long)k;
    }
    const char *s = luaL_checkstring(L, idx);
    char *end;
    errno = 0;
    long long k = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE)
        luaL_argerror(L, idx, "lock key text must be a decimal 64-bit integer");
    return k;
}

/* --- JSON encoding ---------------------------------------------------------------------- */

/* Appends the JSON text of the value at idx (loreley.json's codec). Raises on values JSON
 * cannot hold, with loreley.json's message ("json.encode: ..."). depth and path are
 * kept by callers for their own messages. */
static void json_value(lua_State *L, buffer *b, int idx, int depth, const char *path)
{
    (void)depth;
    (void)path;
    ljson_push_encoded(L, idx, NULL);
    size_t n;
    const char *text = lua_tolstring(L, -1, &n);
    buffer_add(L, b, text, n);
    lua_pop(L, 1);
}

/* --- PostgreSQL array literals ---------------------------------------------------------- */

/* Appends the array literal of the Lua array at idx ("{1,2}", "{\"a b\",NULL}"). */
static void array_literal(lua_State *L, buffer *b, int idx, Oid element, int depth,
                          const char *path)
{
    idx = lmod_absindex(L, idx);
    if (depth >= JSON_MAX_DEPTH)
        luaL_error(L, "loreley.db: %s: array nested too deeply", path);
    size_t n = lua_objlen(L, idx);
    char num[40];
    buffer_addc(L, b, '{');
    for (size_t i = 1; i <= n; i++) {
        if (i > 1)
            buffer_addc(L, b, ',');
        lua_rawgeti(L, idx, (int)i);
        switch (lua_type(L, -1)) {
        case LUA_TNIL:
            buffer_adds(L, b, "NULL");
            break;
        case LUA_TLIGHTUSERDATA:
            if (lua_touserdata(L, -1) != NULL)
                luaL_error(L, "loreley.db: %s: element %d is a userdata", path, (int)i);
            buffer_adds(L, b, "NULL");
            break;
        case LUA_TBOOLEAN:
            buffer_adds(L, b, lua_toboolean(L, -1) ? "t" : "f");
            break;
        case LUA_TNUMBER: {
            double x = lua_tonumber(L, -1);
            if (isnan(x))
                buffer_adds(L, b, "NaN");
            else if (isinf(x))
                buffer_adds(L, b, x < 0 ? "-Infinity" : "Infinity");
            else if (element == OID_TIMESTAMPTZ || element == OID_TIMESTAMP) {
                if (format_iso(x, ' ', num, sizeof num) != 0)
                    luaL_error(L, "loreley.db: %s: element %d is not a valid time", path,
                               (int)i);
                buffer_addc(L, b, '"');
                buffer_adds(L, b, num);
                buffer_addc(L, b, '"');
            } else {
                pyfloat_number_text(x, num, sizeof num);
                buffer_adds(L, b, num);
            }
            break;
        }
        case LUA_TSTRING: {
            size_t sn;
            const char *s = lua_tolstring(L, -1, &sn);
            buffer_addc(L, b, '"');
            for (size_t j = 0; j < sn; j++) {
                if (s[j] == '"' || s[j] == '\\')
                    buffer_addc(L, b, '\\');
                buffer_addc(L, b, s[j]);
            }
            buffer_addc(L, b, '"');
            break;
        }
        case LUA_TTABLE:
            if (element == OID_JSON || element == OID_JSONB) {
                buffer *tb = buffer_new(L);
                json_value(L, tb, -2, 0, path);
                buffer_addc(L, b, '"');
                for (size_t j = 0; j < tb->len; j++) {
                    if (tb->data[j] == '"' || tb->data[j] == '\\')
                        buffer_addc(L, b, '\\');
                    buffer_addc(L, b, tb->data[j]);
                }
                buffer_addc(L, b, '"');
                lua_pop(L, 1);
            } else {
                array_literal(L, b, -1, element, depth + 1, path);
            }
            break;
        default:
            luaL_error(L, "loreley.db: %s: element %d is a %s", path, (int)i,
                       luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    buffer_addc(L, b, '}');
}

/* Pushes one scalar from its text form. */
static void push_text_value(lua_State *L, value_kind kind, const char *s, size_t n);

/*
 * Parses an array literal (s, from the server: "{1,2}", "{{1,2},{3,4}}", "{\"a\",NULL}",
 * possibly "[0:1]={..}" bounds) into nested Lua tables. Returns the position after the
 * closing brace. Element text is unescaped into scratch.
 */
static const char *parse_array(lua_State *L, const char *s, value_kind kind, buffer *scratch)
{
    if (*s == '[') {   /* explicit bounds: skip "[a:b]...=" */
        s = strchr(s, '=');
        if (!s)
            luaL_error(L, "loreley.db: malformed array from the server");
        s++;
    }
    if (*s != '{')
        luaL_error(L, "loreley.db: malformed array from the server");
    s++;
    lua_newtable(L);
    int i = 0;
    if (*s == '}')
        return s + 1;
    for (;;) {
        i++;
        if (*s == '{') {
            s = parse_array(L, s, kind, scratch);
        } else {
            scratch->len = 0;
            int quoted = *s == '"';
            if (quoted) {
                s++;
                while (*s && *s != '"') {
                    if (*s == '\\' && s[1])
                        s++;
                    buffer_addc(L, scratch, *s++);
                }
                if (*s != '"')
                    luaL_error(L, "loreley.db: malformed array from the server");
                s++;
            } else {
                while (*s && *s != ',' && *s != '}')
                    buffer_addc(L, scratch, *s++);
            }
            buffer_addc(L, scratch, '\0');
            scratch->len--;
            if (!quoted && scratch->len == 4 && strcmp(scratch->data, "NULL") == 0)
                lua_pushlightuserdata(L, NULL);
            else
                push_text_value(L, kind, scratch->data, scratch->len);
        }
        lua_rawseti(L, -2, i);
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '}')
            return s + 1;
        luaL_error(L, "loreley.db: malformed array from the server");
    }
}

/* --- values from the server ------------------------------------------------------------- */

/* json/jsonb from the server, decoded by loreley.json (arrays stay arrays). */
static void push_json(lua_State *L, const char *s, size_t n)
{
    if (!ljson_push_decoded(L, s, n))
        lua_error(L);   /* the server sent something that is not JSON: a bug, raise */
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void push_text_value(lua_State *L, value_kind kind, const char *s, size_t n)
{
    switch (kind) {
    case KIND_INTEGER: {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno == 0 && *end == '\0' && v <= 9007199254740992LL && v >= -9007199254740992LL)
            lua_pushnumber(L, (lua_Number)v);
        else
            lua_pushlstring(L, s, n);   /* beyond 2^53: exact decimal text */
        return;
    }
    case KIND_FLOAT:
        lua_pushnumber(L, strtod(s, NULL));   /* also NaN, Infinity, -Infinity */
        return;
    case KIND_BOOL:
        lua_pushboolean(L, s[0] == 't');
        return;
    case KIND_TIME: {
        double t;
        if (parse_pg_time(s, &t) == 0)
            lua_pushnumber(L, t);
        else
            lua_pushlstring(L, s, n);
        return;
    }
    case KIND_JSON:
        push_json(L, s, n);
        return;
    case KIND_BYTEA:
        if (n >= 2 && s[0] == '\\' && s[1] == 'x') {
            buffer *raw = buffer_new(L);
            buffer_reserve(L, raw, (n - 2) / 2 + 1);
            for (size_t i = 2; i + 1 < n; i += 2)
                raw->data[raw->len++] = (char)(hex_value(s[i]) << 4 | hex_value(s[i + 1]));
            lua_pushlstring(L, raw->data, raw->len);
            lua_remove(L, -2);
        } else {
            lua_pushlstring(L, s, n);
        }
        return;
    case KIND_TEXT:
    default:
        lua_pushlstring(L, s, n);
        return;
    }
}

/* --- the connection --------------------------------------------------------------------- */

typedef struct stmt {
    char *sql;
    size_t sql_len;
    unsigned long hash;
    char name[24];
    int nparams;
    Oid *types;
} stmt;

typedef struct held_lock {
    long long key;
    int count;
} held_lock;

typedef struct conn {
    PGconn *pg;                 /* NULL when closed or not (re)connected */
    int closed;                 /* close() was called: every method raises */
    int broken;                 /* the session was lost; reconnect before the next use */
    int ever_connected;
    double next_attempt;        /* monotonic time of the next reconnect attempt */
    double backoff;
    char **keywords, **values;  /* connection parameters (owned; the password is wiped) */
    int nparams;
    char label[256];            /* user@host:port/dbname, for messages */
    stmt *stmts;
    int nstmts;
    unsigned next_stmt_id;
    held_lock *locks;
    int nlocks;
    int tx_depth;               /* nesting of conn:tx */
    int tx_lost;                /* the connection was lost inside the current tx */
    unsigned reconnects;
} conn;

static void clear_statements(conn *c)
{
    for (int i = 0; i < c->nstmts; i++) {
        free(c->stmts[i].sql);
        free(c->stmts[i].types);
    }
    free(c->stmts);
    c->stmts = NULL;
    c->nstmts = 0;
}

static void free_params(conn *c)
{
    for (int i = 0; i < c->nparams; i++) {
        free(c->keywords[i]);
        if (c->values[i]) {
            memset(c->values[i], 0, strlen(c->values[i]));   /* passwords */
            free(c->values[i]);
        }
    }
    free(c->keywords);
    free(c->values);
    c->keywords = c->values = NULL;
    c->nparams = 0;
}

static void conn_release(conn *c)
{
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    clear_statements(c);
    free_params(c);
    free(c->locks);
    c->locks = NULL;
    c->nlocks = 0;
    c->closed = 1;
}

static conn *check_conn(lua_State *L, int idx)
{
    conn *c = luaL_checkudata(L, idx, CONN_TYPE);
    if (c->closed)
        luaL_error(L, "loreley.db: connection is closed");
    return c;
}

static void notice_processor(void *arg, const char *message)
{
    (void)arg;
    size_t n = strlen(message);
    while (n > 0 && message[n - 1] == '\n')
        n--;
    log_debug("postgres: %.*s", (int)n, message);
}

/* The libpq error text of the connection without its trailing newline, pushed. */
static void push_pq_message(lua_State *L, const char *prefix, const char *msg)
{
    size_t n = msg ? strlen(msg) : 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    if (n == 0) {
        msg = "unknown error";
        n = strlen(msg);
    }
    lua_pushfstring(L, "%s", prefix);
    lua_pushlstring(L, msg, n);
    lua_concat(L, 2);
}

/*
 * Opens a new session with the stored parameters and prepares it (UTC, ISO dates,
 * shortest float output). Returns 0, or -1 with a message pushed.
 */
static int open_session(lua_State *L, conn *c)
{
    PGconn *pg = PQconnectdbParams((const char *const *)c->keywords,
                                   (const char *const *)c->values, 0);
    if (!pg) {
        lua_pushstring(L, "out of memory while connecting");
        return -1;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        lua_pushfstring(L, "cannot connect to %s: ", c->label);
        push_pq_message(L, "", PQerrorMessage(pg));
        lua_concat(L, 2);
        PQfinish(pg);
        return -1;
    }
    PQsetNoticeProcessor(pg, notice_processor, NULL);
    PGresult *r = PQexec(pg, "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; "
                             "SET extra_float_digits = 1; SET client_encoding = 'UTF8'");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        lua_pushfstring(L, "cannot set up the session on %s: ", c->label);
        push_pq_message(L, "", PQresultErrorMessage(r));
        lua_concat(L, 2);
    }
    PQclear(r);
    if (!ok) {
        PQfinish(pg);
        return -1;
    }
    c->pg = pg;
    return 0;
}

/* Takes the session advisory locks held before a reconnect again; drops those another
 * session holds now. */
static void retake_locks(conn *c)
{
    int kept = 0;
    for (int i = 0; i < c->nlocks; i++) {
        char key[32];
        snprintf(key, sizeof key, "%lld", c->locks[i].key);
        const char *values[1] = {key};
        PGresult *r = PQexecParams(c->pg, "SELECT pg_try_advisory_lock($1::bigint)", 1,
                                   NULL, values, NULL, NULL, 0);
        int got = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                  PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (got) {
            c->locks[i].count = 1;
            c->locks[kept++] = c->locks[i];
        } else {
            log_warning("advisory lock %s lost while the database connection was down", key);
        }
    }
    c->nlocks = kept;
}

/*
 * Makes sure the session is usable: reconnects a lost one when the backoff allows.
 * Returns 0, or pushes nil, message, sqlstate and returns 3.
 */
static int ensure_session(lua_State *L, conn *c)
{
    if (c->pg && !c->broken)
        return 0;
    if (c->tx_depth > 0 && c->tx_lost)
        return FAIL_CODE(L, SQLSTATE_CONNECTION_FAILURE,
                         "database connection to %s lost inside a transaction", c->label);
    double now = host_now();
    if (now < c->next_attempt)
        return FAIL_CODE(L, SQLSTATE_CONNECTION_FAILURE,
                              "database connection to %s is down; next reconnect attempt in "
                              "%.1f s", c->label, c->next_attempt - now);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    clear_statements(c);
    if (open_session(L, c) != 0) {
        failure_count++;
        c->backoff = c->backoff > 0 ? fmin(c->backoff * 2, BACKOFF_MAX) : BACKOFF_FIRST;
        c->next_attempt = now + c->backoff;
        lua_pushnil(L);
        lua_insert(L, -2);
        lua_pushstring(L, SQLSTATE_CONNECTION_FAILURE);
        return 3;
    }
    c->broken = 0;
    c->backoff = 0;
    c->next_attempt = 0;
    if (c->ever_connected) {
        c->reconnects++;
        log_info("database connection to %s re-established", c->label);
        retake_locks(c);
    }
    c->ever_connected = 1;
    return 0;
}

/*
 * Handles a failed result: pushes nil, message, sqlstate and returns 3. Marks the
 * session broken when the connection is gone. Does not clear r.
 */
static int push_result_error(lua_State *L, conn *c, PGresult *r)
{
    failure_count++;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(c->pg);
    int lost = PQstatus(c->pg) != CONNECTION_OK;
    if (lost) {
        c->broken = 1;
        if (c->tx_depth > 0)
            c->tx_lost = 1;
        log_warning("database connection to %s lost", c->label);
        if (!state || strncmp(state, "08", 2) != 0)
            state = SQLSTATE_CONNECTION_FAILURE;
    }
    lua_pushnil(L);
    const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary && !lost) {
        /* "relation "x" does not exist", plus the detail when the server gave one */
        const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
        if (detail)
            lua_pushfstring(L, "%s (%s)", primary, detail);
        else
            lua_pushstring(L, primary);
    } else {
        push_pq_message(L, lost ? "database connection lost: " : "", msg);
    }
    if (state)
        lua_pushstring(L, state);
    else
        lua_pushnil(L);
    return 3;
}

static unsigned long hash_sql(const char *s, size_t n)
{
    unsigned long h = 5381;
    for (size_t i = 0; i < n; i++)
        h = h * 33 + (unsigned char)s[i];
    return h;
}

static void forget_statement(conn *c, stmt *st)
{
    int i = (int)(st - c->stmts);
    free(st->sql);
    free(st->types);
    c->stmts[i] = c->stmts[--c->nstmts];
}

/*
 * Finds or prepares the statement for sql. Returns it, or NULL with nil, msg, sqlstate
 * pushed (*nret = 3). Preparing asks the server for the parameter types it inferred.
 */
static stmt *get_statement(lua_State *L, conn *c, const char *sql, size_t n, int *nret)
{
    unsigned long h = hash_sql(sql, n);
    for (int i = 0; i < c->nstmts; i++) {
        stmt *st = &c->stmts[i];
        if (st->hash == h && st->sql_len == n && memcmp(st->sql, sql, n) == 0)
            return st;
    }
    if (c->nstmts >= STMT_CACHE_MAX) {   /* a policy generating SQL text: start over */
        PGresult *r = PQexec(c->pg, "DEALLOCATE ALL");
        PQclear(r);
        clear_statements(c);
    }
    char name[24];
    snprintf(name, sizeof name, "ldb_%u", ++c->next_stmt_id);
    PGresult *r = PQprepare(c->pg, name, sql, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *nret = push_result_error(L, c, r);
        PQclear(r);
        return NULL;
    }
    PQclear(r);
    r = PQdescribePrepared(c->pg, name);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *nret = push_result_error(L, c, r);
        PQclear(r);
        return NULL;
    }
    int np = PQnparams(r);
    Oid *types = np > 0 ? malloc(sizeof *types * (size_t)np) : NULL;
    char *copy = malloc(n + 1);
    stmt *grown = realloc(c->stmts, sizeof *grown * (size_t)(c->nstmts + 1));
    if ((np > 0 && !types) || !copy || !grown) {
        free(types);
        free(copy);
        if (grown)
            c->stmts = grown;
        PQclear(r);
        luaL_error(L, "loreley.db: out of memory");
    }
    for (int i = 0; i < np; i++)
        types[i] = PQparamtype(r, i);
    PQclear(r);
    memcpy(copy, sql, n);
    copy[n] = '\0';
    c->stmts = grown;
    stmt *st = &c->stmts[c->nstmts++];
    st->sql = copy;
    st->sql_len = n;
    st->hash = h;
    memcpy(st->name, name, sizeof name);
    st->nparams = np;
    st->types = types;
    return st;
}

/* --- parameters ------------------------------------------------------------------------- */

/*
 * Encodes the Lua value at idx for a parameter of type oid into b. Returns 1 for SQL
 * NULL, 0 otherwise; sets *binary for bytea. Raises on values that cannot be sent.
 */
static int encode_param(lua_State *L, buffer *b, int idx, Oid oid, int *binary, int number)
{
    char text[48], path[32];
    snprintf(path, sizeof path, "parameter $%d", number);
    *binary = 0;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 1;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return 1;
        break;
    case LUA_TBOOLEAN:
        if (oid == OID_JSON || oid == OID_JSONB)
            buffer_adds(L, b, lua_toboolean(L, idx) ? "true" : "false");
        else
            buffer_adds(L, b, lua_toboolean(L, idx) ? "t" : "f");
        return 0;
    case LUA_TNUMBER: {
        double x = lua_tonumber(L, idx);
        if (oid == OID_TIMESTAMPTZ || oid == OID_TIMESTAMP || oid == OID_DATE) {
            if (isinf(x))
                buffer_adds(L, b, x < 0 ? "-infinity" : "infinity");
            else if (format_iso(x, ' ', text, sizeof text) == 0)
                buffer_adds(L, b, text);
            else
                luaL_error(L, "loreley.db: %s: %f is not a time PostgreSQL can hold", path, x);
            return 0;
        }
        if (oid == OID_JSON || oid == OID_JSONB) {
            json_value(L, b, idx, 0, path);
            return 0;
        }
        if (isnan(x))
            buffer_adds(L, b, "NaN");
        else if (isinf(x))
            buffer_adds(L, b, x < 0 ? "-Infinity" : "Infinity");
        else {
            pyfloat_number_text(x, text, sizeof text);
            buffer_adds(L, b, text);
        }
        return 0;
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (oid == OID_BYTEA)
            *binary = 1;
        buffer_add(L, b, s, n);   /* for json/jsonb a string is JSON text */
        return 0;
    }
    case LUA_TTABLE: {
        Oid element = array_element(oid);
        if (element)
            array_literal(L, b, idx, element, 0, path);
        else
            json_value(L, b, idx, 0, path);
        return 0;
    }
    default:
        break;
    }
    return luaL_error(L, "loreley.db: %s: cannot send a %s", path, luaL_typename(L, idx));
}

/* --- results ---------------------------------------------------------------------------- */

typedef struct result_box {
    PGresult *r;
} result_box;

static int result_gc(lua_State *L)
{
    result_box *box = luaL_checkudata(L, 1, RESULT_TYPE);
    if (box->r) {
        PQclear(box->r);
        box->r = NULL;
    }
    return 0;
}

/* Frees the result held by the box at idx now rather than at the next collection. */
static void result_gc_now(lua_State *L, int idx)
{
    result_box *box = lua_touserdata(L, idx);
    if (box && box->r) {
        PQclear(box->r);
        box->r = NULL;
    }
}

/* Pushes the rows of r as an array of {column = value} tables. */
static void push_rows(lua_State *L, PGresult *r)
{
    int nrows = PQntuples(r), ncols = PQnfields(r);
    int base = lua_gettop(L);
    value_kind kinds[ncols > 0 ? ncols : 1];
    Oid elements[ncols > 0 ? ncols : 1];
    for (int j = 0; j < ncols; j++) {
        Oid t = PQftype(r, j);
        elements[j] = array_element(t);
        kinds[j] = scalar_kind(elements[j] ? elements[j] : t);
        lua_pushstring(L, PQfname(r, j));          /* names at base+1 .. base+ncols */
    }
    buffer *scratch = buffer_new(L);                /* base+ncols+1 */
    lua_createtable(L, nrows, 0);                   /* rows */
    for (int i = 0; i < nrows; i++) {
        lua_createtable(L, 0, ncols);
        for (int j = 0; j < ncols; j++) {
            lua_pushvalue(L, base + 1 + j);
            if (PQgetisnull(r, i, j))
                lua_pushlightuserdata(L, NULL);
            else if (elements[j])
                parse_array(L, PQgetvalue(r, i, j), kinds[j], scratch);
            else
                push_text_value(L, kinds[j], PQgetvalue(r, i, j),
                                (size_t)PQgetlength(r, i, j));
            lua_rawset(L, -3);
        }
        lua_rawseti(L, -2, i + 1);
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
}

/*
 * Runs sql with the Lua values at [first, top] as parameters. On success leaves the
 * result in a result box on the stack and returns 0 with *out set; on a failure of the
 * world pushes nil, msg, sqlstate and returns 3.
 */
static int run_statement(lua_State *L, conn *c, int first, PGresult **out)
{
    size_t sql_len;
    const char *sql = luaL_checklstring(L, 2, &sql_len);
    int nargs = lua_gettop(L) - first + 1;
    if (nargs < 0)
        nargs = 0;
    int nret = ensure_session(L, c);
    if (nret)
        return nret;
    for (int attempt = 0;; attempt++) {
        stmt *st = get_statement(L, c, sql, sql_len, &nret);
        if (!st)
            return nret;
        if (st->nparams != nargs) {
            int expected = st->nparams;
            return luaL_error(L, "loreley.db: the SQL has %d parameter%s ($1..$%d), got %d "
                                 "value%s", expected, expected == 1 ? "" : "s", expected,
                              nargs, nargs == 1 ? "" : "s");
        }
        int top = lua_gettop(L);
        buffer *b = buffer_new(L);
        /* Per-parameter scratch in one GC-owned block (no VLA: up to 65535 values). */
        size_t count = nargs > 0 ? (size_t)nargs : 1;
        char *block = lua_newuserdata(L, count * (2 * sizeof(size_t) + sizeof(char *) +
                                                  3 * sizeof(int)));
        size_t *offsets = (size_t *)block, *lengths = offsets + count;
        const char **values = (const char **)(lengths + count);
        int *is_null = (int *)(values + count), *formats = is_null + count,
            *lens = formats + count;
        for (int i = 0; i < nargs; i++) {
            offsets[i] = b->len;
            is_null[i] = encode_param(L, b, first + i, st->types[i], &formats[i], i + 1);
            lengths[i] = b->len - offsets[i];
            buffer_addc(L, b, '\0');
        }
        for (int i = 0; i < nargs; i++) {
            values[i] = is_null[i] ? NULL : b->data + offsets[i];
            lens[i] = (int)lengths[i];
        }
        result_box *box = lua_newuserdata(L, sizeof *box);
        box->r = NULL;
        luaL_getmetatable(L, RESULT_TYPE);
        lua_setmetatable(L, -2);
        box->r = PQexecPrepared(c->pg, st->name, nargs, values, lens, formats, 0);
        ExecStatusType status = PQresultStatus(box->r);
        if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) {
            lua_replace(L, top + 1);   /* the result box where the parameter buffer was */
            lua_settop(L, top + 1);
            *out = box->r;
            return 0;
        }
        /* The cached plan is stale (0A000 after a DDL change of a SELECT *) or the
         * statement vanished (26000 after DISCARD ALL): prepare again, once. */
        const char *state = PQresultErrorField(box->r, PG_DIAG_SQLSTATE);
        if (attempt == 0 && state && PQstatus(c->pg) == CONNECTION_OK &&
            (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0) &&
            PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
            forget_statement(c, st);
            PQclear(box->r);
            box->r = NULL;
            lua_settop(L, top);
            continue;
        }
        nret = push_result_error(L, c, box->r);
        return nret;
    }
}

/* conn:query(sql, ...) -> rows | nil, msg, sqlstate */
static int conn_query(lua_State *L)
{
    conn *c = check_conn(L, 1);
    PGresult *r;
    int nret = run_statement(L, c, 3, &r);
    if (nret)
        return nret;
    push_rows(L, r);                     /* stack: ... box rows */
    result_gc_now(L, -2);
    return 1;
}

/* conn:exec(sql, ...) -> affected rows | nil, msg, sqlstate */
static int conn_exec(lua_State *L)
{
    conn *c = check_conn(L, 1);
    PGresult *r;
    int nret = run_statement(L, c, 3, &r);
    if (nret)
        return nret;
    const char *n = PQcmdTuples(r);
    lua_pushnumber(L, *n ? strtod(n, NULL) : 0);
    result_gc_now(L, -2);
    return 1;
}

/* Runs text through the simple protocol (several statements allowed). Returns 0, or
 * pushes nil, msg, sqlstate and returns 3. */
static int run_simple(lua_State *L, conn *c, const char *sql)
{
    int nret = ensure_session(L, c);
    if (nret)
        return nret;
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        PQclear(r);
        return 0;
    }
    nret = push_result_error(L, c, r);
    PQclear(r);
    return nret;
}

/* conn:script(sql) -> true | nil, msg, sqlstate */
static int conn_script(lua_State *L)
{
    conn *c = check_conn(L, 1);
    int nret = run_simple(L, c, luaL_checkstring(L, 2));
    if (nret)
        return nret;
    lua_pushboolean(L, 1);
    return 1;
}

/* Ends the transaction level started by conn:tx: commit or roll back. Returns 0, or
 * pushes nil, msg, sqlstate and returns 3. A lost connection ends it without a word. */
static int end_transaction(lua_State *L, conn *c, int commit)
{
    char sql[64];
    int depth = c->tx_depth;
    c->tx_depth--;
    if (c->broken || !c->pg) {
        if (c->tx_depth == 0)
            c->tx_lost = 0;
        if (commit)
            return FAIL_CODE(L, SQLSTATE_CONNECTION_FAILURE,
                                  "database connection to %s lost inside a transaction",
                                  c->label);
        return 0;
    }
    if (depth == 1)
        snprintf(sql, sizeof sql, commit ? "COMMIT" : "ROLLBACK");
    else if (commit)
        snprintf(sql, sizeof sql, "RELEASE SAVEPOINT ldb_tx_%d", depth);
    else
        snprintf(sql, sizeof sql, "ROLLBACK TO SAVEPOINT ldb_tx_%d; "
                 "RELEASE SAVEPOINT ldb_tx_%d", depth, depth);
    PGresult *r = PQexec(c->pg, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    /* COMMIT of a failed transaction answers ROLLBACK without an error. */
    if (ok && commit && depth == 1 && strcmp(PQcmdStatus(r), "ROLLBACK") == 0) {
        PQclear(r);
        return FAIL_CODE(L, "25P02", "transaction was aborted by an earlier error; "
                                          "rolled back");
    }
    int nret = 0;
    if (!ok)
        nret = push_result_error(L, c, r);
    PQclear(r);
    if (c->tx_depth == 0)
        c->tx_lost = 0;
    return nret;
}

/*
 * conn:tx(fn, ...) -> the results of fn(conn, ...), after COMMIT.
 * fn raising: ROLLBACK, then the error is raised again. fn returning nil or false as its
 * first result: ROLLBACK, and its results are returned (nil, err...). A COMMIT that fails
 * returns nil, msg, sqlstate. Nested calls use savepoints.
 */
static int conn_tx(lua_State *L)
{
    conn *c = check_conn(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int nret = ensure_session(L, c);
    if (nret)
        return nret;
    char sql[64];
    int depth = c->tx_depth + 1;
    if (depth == 1)
        snprintf(sql, sizeof sql, "BEGIN");
    else
        snprintf(sql, sizeof sql, "SAVEPOINT ldb_tx_%d", depth);
    PGresult *r = PQexec(c->pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        nret = push_result_error(L, c, r);
        PQclear(r);
        return nret;
    }
    PQclear(r);
    c->tx_depth = depth;
    /* stack: conn fn args... -> call fn(conn, args...) */
    int nargs = lua_gettop(L) - 2;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 1);
    for (int i = 0; i < nargs; i++)
        lua_pushvalue(L, 3 + i);
    int base = lua_gettop(L) - nargs - 2;   /* results start at base + 1 */
    if (lua_pcall(L, nargs + 1, LUA_MULTRET, 0) != 0) {
        nret = end_transaction(L, c, 0);
        if (nret)
            lua_pop(L, nret);
        return lua_error(L);   /* the error value is on top again */
    }
    int nresults = lua_gettop(L) - base;
    if (nresults == 0 || !lua_toboolean(L, base + 1)) {
        nret = end_transaction(L, c, 0);
        if (nret)
            lua_pop(L, nret);
        if (nresults == 0) {
            lua_pushnil(L);
            lua_pushstring(L, "transaction function returned nothing");
            return 2;
        }
        return nresults;
    }
    nret = end_transaction(L, c, 1);
    if (nret)
        return nret;
    return nresults;
}

/* --- advisory locks --------------------------------------------------------------------- */

static held_lock *find_lock(conn *c, long long key)
{
    for (int i = 0; i < c->nlocks; i++)
        if (c->locks[i].key == key)
            return &c->locks[i];
    return NULL;
}

static void note_lock(lua_State *L, conn *c, long long key)
{
    held_lock *h = find_lock(c, key);
    if (h) {
        h->count++;
        return;
    }
    held_lock *grown = realloc(c->locks, sizeof *grown * (size_t)(c->nlocks + 1));
    if (!grown)
        luaL_error(L, "loreley.db: out of memory");
    c->locks = grown;
    c->locks[c->nlocks].key = key;
    c->locks[c->nlocks].count = 1;
    c->nlocks++;
}

/* Runs a one-boolean advisory-lock query. Returns 0 with *value set, or pushes the
 * failure and returns 3. */
static int lock_query(lua_State *L, conn *c, const char *sql, long long key, int *value)
{
    int nret = ensure_session(L, c);
    if (nret)
        return nret;
    char text[32];
    snprintf(text, sizeof text, "%lld", key);
    const char *values[1] = {text};
    PGresult *r = PQexecParams(c->pg, sql, 1, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        nret = push_result_error(L, c, r);
        PQclear(r);
        return nret;
    }
    *value = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    if (PQntuples(r) == 1 && PQgetisnull(r, 0, 0) == 0 && PQgetvalue(r, 0, 0)[0] == '\0')
        *value = 1;   /* pg_advisory_lock returns void: an empty value */
    PQclear(r);
    return 0;
}

/* conn:try_lock(key) -> true | false | nil, msg, sqlstate (session-level) */
static int conn_try_lock(lua_State *L)
{
    conn *c = check_conn(L, 1);
    long long key = check_lock_key(L, 2);
    int got;
    int nret = lock_query(L, c, "SELECT pg_try_advisory_lock($1::bigint)", key, &got);
    if (nret)
        return nret;
    if (got)
        note_lock(L, c, key);
    lua_pushboolean(L, got);
    return 1;
}

/* conn:lock(key) -> true | nil, msg, sqlstate (waits for the lock) */
static int conn_lock(lua_State *L)
{
    conn *c = check_conn(L, 1);
    long long key = check_lock_key(L, 2);
    int got;
    int nret = lock_query(L, c, "SELECT pg_advisory_lock($1::bigint) IS NULL", key, &got);
    if (nret)
        return nret;
    note_lock(L, c, key);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:unlock(key) -> true (released) | false (was not held) | nil, msg, sqlstate */
static int conn_unlock(lua_State *L)
{
    conn *c = check_conn(L, 1);
    long long key = check_lock_key(L, 2);
    held_lock *h = find_lock(c, key);
    if (c->broken) {   /* the session that held it is gone: nothing to release */
        if (h)
            *h = c->locks[--c->nlocks];
        lua_pushboolean(L, h != NULL);
        return 1;
    }
    int released;
    int nret = lock_query(L, c, "SELECT pg_advisory_unlock($1::bigint)", key, &released);
    if (nret)
        return nret;
    h = find_lock(c, key);
    if (released && h && --h->count == 0)
        *h = c->locks[--c->nlocks];
    lua_pushboolean(L, released);
    return 1;
}

/* conn:holds_lock(key) -> whether this connection holds the session lock (as far as it
 * knows: a lock lost with the connection and not retaken reads false). */
static int conn_holds_lock(lua_State *L)
{
    conn *c = check_conn(L, 1);
    long long key = check_lock_key(L, 2);
    lua_pushboolean(L, !c->broken && find_lock(c, key) != NULL);
    return 1;
}

/* conn:ping() -> true | nil, msg, sqlstate (reconnects when needed) */
static int conn_ping(lua_State *L)
{
    conn *c = check_conn(L, 1);
    int nret = run_simple(L, c, "SELECT 1");
    if (nret)
        return nret;
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:info() -> {host, port, user, dbname, connected, reconnects, in_transaction,
 *                 statements, server_version} */
static int conn_info(lua_State *L)
{
    conn *c = check_conn(L, 1);
    lua_createtable(L, 0, 8);
    for (int i = 0; i < c->nparams; i++) {
        const char *k = c->keywords[i];
        if (strcmp(k, "host") == 0 || strcmp(k, "port") == 0 || strcmp(k, "user") == 0 ||
            strcmp(k, "dbname") == 0) {
            lua_pushstring(L, c->values[i]);
            lua_setfield(L, -2, k);
        }
    }
    lua_pushboolean(L, c->pg && !c->broken && PQstatus(c->pg) == CONNECTION_OK);
    lua_setfield(L, -2, "connected");
    lua_pushnumber(L, c->reconnects);
    lua_setfield(L, -2, "reconnects");
    lua_pushboolean(L, c->tx_depth > 0);
    lua_setfield(L, -2, "in_transaction");
    lua_pushnumber(L, c->nstmts);
    lua_setfield(L, -2, "statements");
    if (c->pg && !c->broken) {
        lua_pushnumber(L, PQserverVersion(c->pg));
        lua_setfield(L, -2, "server_version");
    }
    return 1;
}

static int conn_close(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, CONN_TYPE);
    if (!c->closed)
        conn_release(c);
    return 0;
}

static int conn_tostring(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, CONN_TYPE);
    if (c->closed)
        lua_pushstring(L, "loreley.db.conn (closed)");
    else
        lua_pushfstring(L, "loreley.db.conn (%s%s)", c->label, c->broken ? ", lost" : "");
    return 1;
}

/* --- URLs ------------------------------------------------------------------------------- */

/* Percent-decodes s[0..n) (SQLAlchemy's unquote: '+' stays '+'). Pushes the result, or
 * returns -1 when an escape is malformed. */
static int push_unquoted(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hex_value(s[i + 1]) : -1;
            int lo = i + 2 < n ? hex_value(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                luaL_pushresult(&b);
                lua_pop(L, 1);
                return -1;
            }
            luaL_addchar(&b, (char)(hi << 4 | lo));
            i += 2;
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
    return 0;
}

/*
 * Parses url into a table {host, port, user, password, dbname, params = {...}} pushed on
 * the stack. Returns 0, or pushes an error message (never holding the password) and
 * returns -1.
 */
static int parse_url(lua_State *L, const char *url)
{
    const char *sep = strstr(url, "://");
    if (!sep) {
        lua_pushstring(L, "database URL must look like postgresql://user:password@host:port/"
                          "dbname");
        return -1;
    }
    size_t scheme_len = (size_t)(sep - url);
    const char *plus = memchr(url, '+', scheme_len);
    size_t base_len = plus ? (size_t)(plus - url) : scheme_len;
    if (!((base_len == 10 && strncmp(url, "postgresql", 10) == 0) ||
          (base_len == 8 && strncmp(url, "postgres", 8) == 0))) {
        lua_pushlstring(L, url, scheme_len < 40 ? scheme_len : 40);
        lua_pushfstring(L, "unsupported database URL scheme '%s' (expected postgresql://, "
                           "postgres:// or postgresql+DRIVER://)", lua_tostring(L, -1));
        lua_remove(L, -2);
        return -1;
    }
    /* Credentials as SQLAlchemy's URL pattern reads them: the user name runs to the first
     * ':', '/' or '@'; after a ':' the password runs to the first '@' (so a password may
     * hold '/', '?', '#' or ':' unencoded, but not '@'). Without that '@' the ':' is the
     * port separator and there are no credentials. */
    const char *p = sep + 3;
    int table = lua_gettop(L) + 1;
    lua_newtable(L);
    lua_newtable(L);
    lua_setfield(L, table, "params");
    const char *user_end = p + strcspn(p, ":/@");
    const char *at = NULL;
    if (*user_end == '@')
        at = user_end;
    else if (*user_end == ':')
        at = strchr(user_end, '@');
    if (at) {
        if (push_unquoted(L, p, (size_t)(user_end - p)) != 0) {
            lua_settop(L, table - 1);
            lua_pushstring(L, "database URL: malformed %-escape in the user name");
            return -1;
        }
        lua_setfield(L, table, "user");
        if (*user_end == ':') {
            if (push_unquoted(L, user_end + 1, (size_t)(at - user_end - 1)) != 0) {
                lua_settop(L, table - 1);
                lua_pushstring(L, "database URL: malformed %-escape in the password");
                return -1;
            }
            lua_setfield(L, table, "password");
        }
        p = at + 1;
    }
    const char *hostpart = p;
    const char *end_authority = p + strcspn(p, "/?#");
    /* host[:port], host may be [ipv6] */
    const char *host_end = end_authority, *port = NULL;
    if (*hostpart == '[') {
        const char *close = memchr(hostpart, ']', (size_t)(end_authority - hostpart));
        if (!close) {
            lua_settop(L, table - 1);
            lua_pushstring(L, "database URL: unterminated [IPv6] host");
            return -1;
        }
        lua_pushlstring(L, hostpart + 1, (size_t)(close - hostpart - 1));
        lua_setfield(L, table, "host");
        if (close + 1 < end_authority && close[1] == ':')
            port = close + 2;
    } else {
        const char *colon = memchr(hostpart, ':', (size_t)(end_authority - hostpart));
        if (colon) {
            host_end = colon;
            port = colon + 1;
        }
        if (host_end > hostpart) {
            if (push_unquoted(L, hostpart, (size_t)(host_end - hostpart)) != 0) {
                lua_settop(L, table - 1);
                lua_pushstring(L, "database URL: malformed %-escape in the host");
                return -1;
            }
            lua_setfield(L, table, "host");
        }
    }
    if (port && port < end_authority) {
        size_t n = (size_t)(end_authority - port);
        char digits[8];
        if (n >= sizeof digits || strspn(port, "0123456789") < n) {
            lua_settop(L, table - 1);
            lua_pushstring(L, "database URL: the port must be a number");
            return -1;
        }
        memcpy(digits, port, n);
        digits[n] = '\0';
        long v = strtol(digits, NULL, 10);
        if (v < 1 || v > 65535) {
            lua_settop(L, table - 1);
            lua_pushstring(L, "database URL: the port must be between 1 and 65535");
            return -1;
        }
        lua_pushstring(L, digits);
        lua_setfield(L, table, "port");
    }
    p = end_authority;
    if (*p == '/') {
        p++;
        size_t n = strcspn(p, "?#");
        if (n > 0) {
            if (push_unquoted(L, p, n) != 0) {
                lua_settop(L, table - 1);
                lua_pushstring(L, "database URL: malformed %-escape in the database name");
                return -1;
            }
            lua_setfield(L, table, "dbname");
        }
        p += n;
    }
    if (*p == '?') {
        p++;
        lua_getfield(L, table, "params");
        while (*p && *p != '#') {
            size_t n = strcspn(p, "&#");
            const char *eq = memchr(p, '=', n);
            if (!eq || eq == p) {
                lua_settop(L, table - 1);
                lua_pushstring(L, "database URL: query parameters must be key=value");
                return -1;
            }
            if (push_unquoted(L, p, (size_t)(eq - p)) != 0 ||
                push_unquoted(L, eq + 1, (size_t)(p + n - eq - 1)) != 0) {
                lua_settop(L, table - 1);
                lua_pushstring(L, "database URL: malformed %-escape in a query parameter");
                return -1;
            }
            lua_rawset(L, -3);
            p += n;
            if (*p == '&')
                p++;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* db.parse_url(url) -> {host, port, user, password, dbname, params} | nil, msg */
static int db_parse_url(lua_State *L)
{
    if (parse_url(L, luaL_checkstring(L, 1)) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    return 1;
}

/* Appends a URL-encoded copy of s (unreserved characters kept, the rest %XX). */
static void add_quoted(luaL_Buffer *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            luaL_addchar(b, (char)c);
        } else {
            char esc[4];
            snprintf(esc, sizeof esc, "%%%02X", c);
            luaL_addstring(b, esc);
        }
    }
}

static const char *settings_string(lua_State *L, int idx, const char *field)
{
    lua_getfield(L, idx, field);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1);   /* the settings table keeps the string alive */
    return s;
}

/* db.settings_url(settings) -> DATABASE_URL when set, else
 * DB_SCHEME://quote(DB_USER):quote(DB_PASSWORD)@DB_HOST:DB_PORT/DB_NAME */
static int db_settings_url(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *url = settings_string(L, 1, "database_url");
    if (url && *url) {
        lua_pushstring(L, url);
        return 1;
    }
    const char *scheme = settings_string(L, 1, "db_scheme");
    const char *user = settings_string(L, 1, "db_username");
    const char *password = settings_string(L, 1, "db_password");
    const char *host = settings_string(L, 1, "db_host");
    const char *name = settings_string(L, 1, "db_name");
    lua_getfield(L, 1, "db_port");
    double port = lua_tonumber(L, -1);
    lua_pop(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, scheme ? scheme : "postgresql+psycopg");
    luaL_addstring(&b, "://");
    add_quoted(&b, user ? user : "postgres");
    luaL_addchar(&b, ':');
    add_quoted(&b, password ? password : "");
    luaL_addchar(&b, '@');
    luaL_addstring(&b, host ? host : "localhost");
    char portbuf[16];
    snprintf(portbuf, sizeof portbuf, ":%d/", port > 0 ? (int)port : 5432);
    luaL_addstring(&b, portbuf);
    add_quoted(&b, name ? name : "loreley");
    luaL_pushresult(&b);
    return 1;
}

/* --- connect ---------------------------------------------------------------------------- */

static char *dup_string(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

/* Adds keyword=value to the connection's parameter arrays (NULL-terminated). */
static int add_param(conn *c, const char *k, const char *v)
{
    char **kw = realloc(c->keywords, sizeof *kw * (size_t)(c->nparams + 2));
    if (!kw)
        return -1;
    c->keywords = kw;
    char **vv = realloc(c->values, sizeof *vv * (size_t)(c->nparams + 2));
    if (!vv)
        return -1;
    c->values = vv;
    c->keywords[c->nparams] = dup_string(k);
    c->values[c->nparams] = dup_string(v);
    if (!c->keywords[c->nparams] || !c->values[c->nparams])
        return -1;
    c->nparams++;
    c->keywords[c->nparams] = NULL;
    c->values[c->nparams] = NULL;
    return 0;
}

static const char *param_value(conn *c, const char *k)
{
    for (int i = 0; i < c->nparams; i++)
        if (strcmp(c->keywords[i], k) == 0)
            return c->values[i];
    return NULL;
}

static const char *const connect_options[] = {"connect_timeout", "application_name", NULL};

/* db.connect(url[, opts]) -> conn | nil, msg, sqlstate */
static int db_connect(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    lmod_check_options(L, 2, connect_options, "db.connect");
    lua_Integer timeout = lmod_opt_integer(L, 2, "connect_timeout", 10);
    const char *app = lmod_opt_string(L, 2, "application_name", "loreley-host");
    if (parse_url(L, url) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    int parsed = lua_gettop(L);          /* stack: url opts parsed */
    /* The box first, then the resources into it: a raise below (out of memory) leaves a
     * box whose __gc frees whatever was copied in. */
    conn *c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    luaL_getmetatable(L, CONN_TYPE);
    lua_setmetatable(L, -2);
    int box = lua_gettop(L);
    static const char *const fields[] = {"host", "port", "user", "password", "dbname", NULL};
    int failed = 0;
    for (const char *const *f = fields; *f; f++) {
        lua_getfield(L, parsed, *f);
        if (lua_isstring(L, -1))
            failed |= add_param(c, *f, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_getfield(L, parsed, "params");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        failed |= add_param(c, lua_tostring(L, -2), lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    char timeout_text[24];
    snprintf(timeout_text, sizeof timeout_text, "%d", (int)timeout);
    if (!param_value(c, "connect_timeout"))
        failed |= add_param(c, "connect_timeout", timeout_text);
    if (!param_value(c, "application_name"))
        failed |= add_param(c, "fallback_application_name", app);
    if (failed)
        return luaL_error(L, "loreley.db: out of memory");
    const char *host = param_value(c, "host"), *port = param_value(c, "port");
    const char *user = param_value(c, "user"), *dbname = param_value(c, "dbname");
    snprintf(c->label, sizeof c->label, "%s@%s:%s/%s", user ? user : "(default user)",
             host ? host : "(local socket)", port ? port : "5432",
             dbname ? dbname : (user ? user : "(default)"));
    if (open_session(L, c) != 0) {
        failure_count++;
        conn_release(c);
        lua_pushnil(L);
        lua_insert(L, -2);
        lua_pushstring(L, SQLSTATE_CONNECTION_FAILURE);
        return 3;
    }
    c->ever_connected = 1;
    lua_pushvalue(L, box);
    return 1;
}

/* --- module functions ------------------------------------------------------------------- */

/* db.json_encode(value) -> JSON text (raises on values JSON cannot hold) */
static int db_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    buffer *b = buffer_new(L);
    json_value(L, b, 1, 0, "value");
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    return 1;
}

/* db.float_list_repr(list) -> "[1.0,2.5]": a JSON array of finite numbers written as
 * Python writes floats (one call for a whole array: payload records are on the
 * scheduling hot path). Raises naming the first element that is not finite. */
static int db_float_list_repr(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)lua_objlen(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '[');
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        double x = lua_tonumber(L, -1);
        int ok = lua_type(L, -1) == LUA_TNUMBER && isfinite(x);
        lua_pop(L, 1);
        if (!ok)
            return luaL_error(L, "element %d must be a finite number", i);
        char text[64];
        pyfloat_repr(x, text, sizeof text);
        if (i > 1)
            luaL_addchar(&b, ',');
        luaL_addstring(&b, text);
    }
    luaL_addchar(&b, ']');
    luaL_pushresult(&b);
    return 1;
}

static int db_float_repr(lua_State *L)
{
    char text[48];
    pyfloat_repr(luaL_checknumber(L, 1), text, sizeof text);
    lua_pushstring(L, text);
    return 1;
}

/* db.iso(epoch) -> "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00" */
static int db_iso(lua_State *L)
{
    char text[64];
    double t = luaL_checknumber(L, 1);
    if (format_iso(t, 'T', text, sizeof text) != 0)
        return luaL_argerror(L, 1, "time out of range (years 1..9999)");
    lua_pushstring(L, text);
    return 1;
}

/* db.parse_time(text) -> epoch seconds | nil, msg (PostgreSQL or ISO-8601 text) */
static int db_parse_time(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char copy[96];
    if (n >= sizeof copy)
        return lmod_fail(L, "not a time: too long");
    memcpy(copy, s, n + 1);
    /* ISO-8601 "Z" means +00 */
    if (n > 0 && copy[n - 1] == 'Z')
        copy[n - 1] = '\0';
    double t;
    if (parse_pg_time(copy, &t) != 0)
        return lmod_fail(L, "not a time: '%s'", s);
    lua_pushnumber(L, t);
    return 1;
}

/* db.lock_key(text) -> decimal int64 text: the first 8 bytes of SHA-256(text) read as a
 * signed big-endian integer (the per-experiment leader lock of Loreley's later versions
 * uses this on the experiment id). */
static int db_lock_key(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char digest[32];
    sha256_t ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, s, n);
    sha256_final(&ctx, digest);
    unsigned long long v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | digest[i];
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)v);
    lua_pushstring(L, text);
    return 1;
}

static int conn_gc(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, CONN_TYPE);
    if (!c->closed)
        conn_release(c);
    return 0;
}

static const luaL_Reg conn_methods[] = {
    {"query", conn_query},       {"exec", conn_exec},         {"script", conn_script},
    {"tx", conn_tx},             {"try_lock", conn_try_lock}, {"lock", conn_lock},
    {"unlock", conn_unlock},     {"holds_lock", conn_holds_lock},
    {"ping", conn_ping},         {"info", conn_info},         {"close", conn_close},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", conn_gc},
    {"__tostring", conn_tostring},
    {NULL, NULL},
};

static const luaL_Reg buffer_meta[] = {{"__gc", buffer_gc}, {NULL, NULL}};
static const luaL_Reg result_meta[] = {{"__gc", result_gc}, {NULL, NULL}};
static const luaL_Reg no_methods[] = {{NULL, NULL}};

/* db.error_count() -> failed calls so far (see the header) */
static int db_error_count(lua_State *L)
{
    lua_pushnumber(L, failure_count);
    return 1;
}

static const luaL_Reg db_functions[] = {
    {"connect", db_connect},         {"settings_url", db_settings_url},
    {"parse_url", db_parse_url},     {"json_encode", db_json_encode},
    {"json_array", ljson_array},   {"float_repr", db_float_repr},
    {"float_list_repr", db_float_list_repr},
    {"iso", db_iso},                 {"parse_time", db_parse_time},
    {"lock_key", db_lock_key},       {"error_count", db_error_count},
    {NULL, NULL},
};

LMOD_OPEN(db)
{
    /* Metatables: the connection class, and two internal boxes that own C memory
     * (parameter buffers, PGresults) so that a raise in the middle cannot leak it. */
    lmod_new_class(L, CONN_TYPE, conn_methods, conn_meta);
    lmod_new_class(L, BUF_TYPE, no_methods, buffer_meta);
    lmod_new_class(L, RESULT_TYPE, no_methods, result_meta);
    lmod_new_module(L, db_functions);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
