/*
 * ljson.c - the `loreley.json` module: a JSON codec that round-trips what the job store
 * and the workers exchange without losing anything.
 *
 * Why not plain lua-cjson (which is also available as `cjson`): Debian's 2.1.0 writes
 * numbers with at most 14 significant digits, and it cannot tell `[]` from `{}`, so a
 * payload read and written back would change. Here:
 *  - numbers are written with the shortest representation that reads back to the same
 *    double ("%.17g" reduced), integral values below 2^53 as integers;
 *  - decoded arrays carry the metatable json.array_mt, so `[]` stays `[]`; a Lua table
 *    is written as an array when it has that metatable or keys exactly 1..n (n > 0);
 *  - JSON null decodes to json.null (the same light userdata as cjson.null);
 *  - strings are checked for valid UTF-8 and, with ascii = true, written with \uXXXX
 *    escapes (surrogate pairs above the BMP) as Python's json.dumps does.
 *
 *   json.encode(value[, {sort_keys = false, ascii = false, nonfinite = "error",
 *                        floats = "shortest", int_keys = nil}]) -> text
 *       nonfinite: "error" (raise), "null", "sentinel" ({"__float__": "-inf"}), or
 *       "python" (bare -Infinity / Infinity / NaN tokens, as json.dumps writes them)
 *       floats: "shortest" (integral values as integers) or "python" (every number as
 *       Python writes a float: 6 -> 6.0, 1e-06), except the values of the keys in the
 *       set int_keys ({cell_index = true, ...}; arrays under them too), which must be
 *       integers and are written as such: the typed JSON of a Python payload
 *   json.raw(text) -> a value the encoder writes verbatim (JSON text the caller vouches for)
 *   json.decode(text) -> value | nil, message      (depth limited; trailing text rejected)
 *   json.array(t?) -> t marked as an array         json.is_array(t)
 *   json.null, json.array_mt
 * Encoding errors (a function value, a cycle, a non-string key) raise; a decoding error
 * of outside data returns nil, message with the byte offset.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ljson.h"
#include "lmod.h"
#include "pyfloat.h"

#define JSON_MAX_DEPTH 200

static char array_mt_key;   /* registry key of the array metatable */
static char raw_mt_key;     /* registry key of the metatable of json.raw values */

/* --- encoding ------------------------------------------------------------------------ */

/* The output buffer. It lives in a userdata whose __gc frees the bytes, so a Lua error
 * raised half-way through an encoding (a cycle, a function value) leaks nothing. A
 * luaL_Buffer cannot be used here: it keeps its pieces on the Lua stack, and the
 * encoder pushes the values it visits between additions. */
typedef struct jbuf {
    char *data;
    size_t len, cap;
} jbuf;

static int jbuf_gc(lua_State *L)
{
    jbuf *b = lua_touserdata(L, 1);
    free(b->data);
    b->data = NULL;
    return 0;
}

typedef struct encoder {
    lua_State *L;
    jbuf *b;
    int sort_keys;
    int ascii;
    const char *nonfinite;
    int depth;
    int scratch;     /* stack index of a table used to detect cycles */
    int python;      /* floats = "python" */
    int int_keys;    /* stack index of the int_keys set, or 0 */
    const char *key; /* the object key whose value is being written (for messages) */
} encoder;

static void encode_value(encoder *e, int idx, int as_int);

static void jb_add(encoder *e, const char *s, size_t n)
{
    jbuf *b = e->b;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            luaL_error(e->L, "json.encode: out of memory");
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void jb_adds(encoder *e, const char *s) { jb_add(e, s, strlen(s)); }

static void jb_addchar(encoder *e, char c) { jb_add(e, &c, 1); }

/* Decodes one UTF-8 sequence at s (n bytes left); returns its length and sets *cp, or 0
 * when the bytes are not valid UTF-8 (overlong forms and surrogates included). */
static int utf8_decode(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    unsigned min;
    if ((c & 0xe0) == 0xc0) {
        len = 2;
        min = 0x80;
        c &= 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
        c &= 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

static void add_escape_u(encoder *e, unsigned v)
{
    char tmp[16];
    snprintf(tmp, sizeof tmp, "\\u%04x", v & 0xffffu);
    jb_add(e, tmp, 6);
}

static void encode_string(encoder *e, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    jb_addchar(e, '"');
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c >= 0x80) {
            unsigned cp;
            int len = utf8_decode(p + i, n - i, &cp);
            if (len == 0)
                luaL_error(e->L, "json.encode: string is not valid UTF-8 (byte %d)", (int)i + 1);
            if (e->ascii) {
                if (cp >= 0x10000) {
                    cp -= 0x10000;
                    add_escape_u(e, 0xd800 + (cp >> 10));
                    add_escape_u(e, 0xdc00 + (cp & 0x3ff));
                } else {
                    add_escape_u(e, cp);
                }
            } else {
                jb_add(e, s + i, (size_t)len);
            }
            i += (size_t)len;
            continue;
        }
        switch (c) {
        case '"': jb_add(e, "\\\"", 2); break;
        case '\\': jb_add(e, "\\\\", 2); break;
        case '\n': jb_add(e, "\\n", 2); break;
        case '\r': jb_add(e, "\\r", 2); break;
        case '\t': jb_add(e, "\\t", 2); break;
        case '\b': jb_add(e, "\\b", 2); break;
        case '\f': jb_add(e, "\\f", 2); break;
        default:
            if (c < 0x20)   /* as Python's json.dumps: DEL (0x7f) is written raw */
                add_escape_u(e, c);
            else
                jb_addchar(e, (char)c);
        }
        i++;
    }
    jb_addchar(e, '"');
}

static void encode_number(encoder *e, double v, int as_int)
{
    char buf[32];
    if (as_int) {
        if (!(v == floor(v) && fabs(v) < 9007199254740992.0))
            luaL_error(e->L, "json.encode: '%s' must be an integer", e->key ? e->key : "?");
        int n = snprintf(buf, sizeof buf, "%.0f", v);
        jb_add(e, buf, (size_t)n);
        return;
    }
    if (!isfinite(v)) {
        const char *mode = e->nonfinite;
        const char *name = isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
        if (strcmp(mode, "null") == 0) {
            jb_adds(e, "null");
        } else if (strcmp(mode, "sentinel") == 0) {
            jb_adds(e, "{\"__float__\":\"");
            jb_adds(e, name);
            jb_adds(e, "\"}");
        } else if (strcmp(mode, "python") == 0) {
            jb_adds(e, isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
        } else {
            luaL_error(e->L, "json.encode: cannot encode %s (JSON has no non-finite numbers)",
                       name);
        }
        return;
    }
    if (e->python) {
        pyfloat_repr(v, buf, sizeof buf);
        jb_adds(e, buf);
        return;
    }
    pyfloat_number_text(v, buf, sizeof buf);
    jb_adds(e, buf);
}

/* Returns n > 0 when the table at idx is an array of n elements, 0 for an empty
 * array-marked table, -1 for an object. */
static int array_length(lua_State *L, int idx)
{
    if (lua_getmetatable(L, idx)) {
        lua_pushlightuserdata(L, &array_mt_key);
        lua_rawget(L, LUA_REGISTRYINDEX);
        int marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (marked)
            return (int)lua_objlen(L, idx);
    }
    size_t count = 0;
    double max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER) {
            lua_pop(L, 1);
            return -1;
        }
        double k = lua_tonumber(L, -1);
        if (k < 1 || k != floor(k)) {
            lua_pop(L, 1);
            return -1;
        }
        if (k > max)
            max = k;
        count++;
    }
    if (count == 0 || (double)count != max)
        return -1;
    return (int)count;
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void encode_table(encoder *e, int idx, int as_int)
{
    lua_State *L = e->L;
    if (++e->depth > JSON_MAX_DEPTH)
        luaL_error(L, "json.encode: nesting deeper than %d (a cycle?)", JSON_MAX_DEPTH);
    luaL_checkstack(L, 8, "json.encode");
    /* cycle check: scratch[table] = true while inside it */
    lua_pushvalue(L, idx);
    lua_rawget(L, e->scratch);
    if (lua_toboolean(L, -1))
        luaL_error(L, "json.encode: table contains a cycle");
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->scratch);

    int n = array_length(L, idx);
    if (n >= 0) {
        jb_addchar(e, '[');
        for (int i = 1; i <= n; i++) {
            if (i > 1)
                jb_addchar(e, ',');
            lua_rawgeti(L, idx, i);
            encode_value(e, lua_gettop(L), as_int);
            lua_pop(L, 1);
        }
        jb_addchar(e, ']');
    } else {
        /* Collect the keys (strings only), optionally sorted. The array lives in a
         * userdata, so an error raised while encoding a value frees it with the GC. */
        size_t count = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "json.encode: object keys must be strings, got %s",
                           luaL_typename(L, -1));
            count++;
        }
        const char **keys = lua_newuserdata(L, (count ? count : 1) * sizeof *keys);
        size_t k = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            keys[k++] = lua_tostring(L, -1);   /* anchored: the key lives in the table */
        }
        if (e->sort_keys)
            qsort(keys, count, sizeof *keys, compare_keys);
        jb_addchar(e, '{');
        for (size_t i = 0; i < count; i++) {
            if (i > 0)
                jb_addchar(e, ',');
            encode_string(e, keys[i], strlen(keys[i]));
            jb_addchar(e, ':');
            int key_is_int = 0;
            if (e->int_keys) {
                lua_getfield(L, e->int_keys, keys[i]);
                key_is_int = lua_toboolean(L, -1);
                lua_pop(L, 1);
            }
            const char *outer = e->key;
            e->key = keys[i];
            lua_getfield(L, idx, keys[i]);
            encode_value(e, lua_gettop(L), key_is_int);
            lua_pop(L, 1);
            e->key = outer;
        }
        lua_pop(L, 1);   /* the keys userdata */
        jb_addchar(e, '}');
    }
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, e->scratch);
    e->depth--;
}

/* Whether the table at idx is a json.raw value; pushes nothing. */
static int is_raw(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_pushlightuserdata(L, &raw_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    int raw = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return raw;
}

static void encode_value(encoder *e, int idx, int as_int)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        jb_adds(e, "null");
        break;
    case LUA_TBOOLEAN:
        jb_adds(e, lua_toboolean(L, idx) ? "true" : "false");
        break;
    case LUA_TNUMBER:
        encode_number(e, lua_tonumber(L, idx), as_int);
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        encode_string(e, s, n);
        break;
    }
    case LUA_TTABLE:
        if (is_raw(L, idx)) {
            size_t n;
            lua_rawgeti(L, idx, 1);
            const char *text = lua_tolstring(L, -1, &n);
            if (text)
                jb_add(e, text, n);
            lua_pop(L, 1);
            break;
        }
        encode_table(e, idx, as_int);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            jb_adds(e, "null");
            break;
        }
        /* fall through */
    default:
        luaL_error(L, "json.encode: cannot encode a %s value", luaL_typename(L, idx));
    }
}

/* Encodes the value at idx (absolute) with the options; the int_keys set, when given, is
 * at stack index int_keys (0: none). Pushes the text. */
static void encode_at(lua_State *L, int idx, const ljson_options *o, int int_keys)
{
    encoder e;
    e.L = L;
    e.sort_keys = o->sort_keys;
    e.ascii = o->ascii;
    e.nonfinite = o->nonfinite ? o->nonfinite : "error";
    e.python = o->python_floats;
    e.depth = 0;
    e.key = NULL;
    e.int_keys = int_keys;
    lua_newtable(L);
    e.scratch = lua_gettop(L);
    e.b = lua_newuserdata(L, sizeof *e.b);
    memset(e.b, 0, sizeof *e.b);
    lua_newtable(L);
    lua_pushcfunction(L, jbuf_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    encode_value(&e, idx, 0);
    lua_pushlstring(L, e.b->data ? e.b->data : "", e.b->len);
    free(e.b->data);
    e.b->data = NULL;
    lua_replace(L, e.scratch);   /* the text replaces the scratch table */
    lua_pop(L, 1);               /* the buffer box */
}

void ljson_push_encoded(lua_State *L, int idx, const ljson_options *options)
{
    static const ljson_options defaults = {0, 0, 0, NULL};
    encode_at(L, lmod_absindex(L, idx), options ? options : &defaults, 0);
}

static const char *const encode_keys[] = {"sort_keys", "ascii", "nonfinite", "floats",
                                          "int_keys", NULL};

static int json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lmod_check_options(L, 2, encode_keys, "json.encode");
    ljson_options o;
    o.sort_keys = lmod_opt_boolean(L, 2, "sort_keys", 0);
    o.ascii = lmod_opt_boolean(L, 2, "ascii", 0);
    o.nonfinite = lmod_opt_string(L, 2, "nonfinite", "error");
    if (strcmp(o.nonfinite, "error") && strcmp(o.nonfinite, "null") &&
        strcmp(o.nonfinite, "sentinel") && strcmp(o.nonfinite, "python"))
        return luaL_error(L, "json.encode: nonfinite must be error, null, sentinel or python");
    const char *floats = lmod_opt_string(L, 2, "floats", "shortest");
    if (strcmp(floats, "shortest") && strcmp(floats, "python"))
        return luaL_error(L, "json.encode: floats must be shortest or python");
    o.python_floats = strcmp(floats, "python") == 0;
    lua_settop(L, 2);
    int int_keys = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "int_keys");
        if (lua_istable(L, -1))
            int_keys = 3;
        else if (!lua_isnil(L, -1))
            return luaL_error(L, "json.encode: int_keys must be a set {name = true}");
        else
            lua_pop(L, 1);
    }
    encode_at(L, 1, &o, int_keys);
    return 1;
}

/* --- decoding ------------------------------------------------------------------------ */

typedef struct decoder {
    lua_State *L;
    const char *s;
    size_t n, pos;
    int depth;
    char error[160];
} decoder;

static int decode_fail(decoder *d, const char *what)
{
    if (!d->error[0])
        snprintf(d->error, sizeof d->error, "%s at byte %d", what, (int)d->pos + 1);
    return -1;
}

static void skip_ws(decoder *d)
{
    while (d->pos < d->n) {
        char c = d->s[d->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        d->pos++;
    }
}

static int decode_value(decoder *d);

static int hex4(decoder *d, unsigned *out)
{
    if (d->pos + 4 > d->n)
        return decode_fail(d, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = d->s[d->pos + (size_t)i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return decode_fail(d, "invalid \\u escape");
    }
    d->pos += 4;
    *out = v;
    return 0;
}

static void add_utf8(luaL_Buffer *b, unsigned cp)
{
    char tmp[4];
    int n;
    if (cp < 0x80) {
        tmp[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        tmp[0] = (char)(0xc0 | (cp >> 6));
        tmp[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        tmp[0] = (char)(0xe0 | (cp >> 12));
        tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        tmp[0] = (char)(0xf0 | (cp >> 18));
        tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        tmp[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    luaL_addlstring(b, tmp, (size_t)n);
}

/* Pushes the string starting after the opening quote. */
static int decode_string(decoder *d)
{
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    for (;;) {
        if (d->pos >= d->n)
            return decode_fail(d, "unterminated string");
        unsigned char c = (unsigned char)d->s[d->pos];
        if (c == '"') {
            d->pos++;
            break;
        }
        if (c < 0x20)
            return decode_fail(d, "control character in string");
        if (c == '\\') {
            d->pos++;
            if (d->pos >= d->n)
                return decode_fail(d, "unterminated escape");
            char e = d->s[d->pos++];
            switch (e) {
            case '"': luaL_addchar(&b, '"'); break;
            case '\\': luaL_addchar(&b, '\\'); break;
            case '/': luaL_addchar(&b, '/'); break;
            case 'b': luaL_addchar(&b, '\b'); break;
            case 'f': luaL_addchar(&b, '\f'); break;
            case 'n': luaL_addchar(&b, '\n'); break;
            case 'r': luaL_addchar(&b, '\r'); break;
            case 't': luaL_addchar(&b, '\t'); break;
            case 'u': {
                unsigned cp;
                if (hex4(d, &cp) != 0)
                    return -1;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    unsigned lo;
                    if (d->pos + 2 <= d->n && d->s[d->pos] == '\\' && d->s[d->pos + 1] == 'u') {
                        d->pos += 2;
                        if (hex4(d, &lo) != 0)
                            return -1;
                        if (lo < 0xdc00 || lo > 0xdfff)
                            return decode_fail(d, "invalid surrogate pair");
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        return decode_fail(d, "lone surrogate");
                    }
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    return decode_fail(d, "lone surrogate");
                }
                add_utf8(&b, cp);
                break;
            }
            default:
                return decode_fail(d, "invalid escape");
            }
            continue;
        }
        if (c >= 0x80) {
            unsigned cp;
            int len = utf8_decode((const unsigned char *)d->s + d->pos, d->n - d->pos, &cp);
            if (len == 0)
                return decode_fail(d, "invalid UTF-8");
            luaL_addlstring(&b, d->s + d->pos, (size_t)len);
            d->pos += (size_t)len;
            continue;
        }
        luaL_addchar(&b, (char)c);
        d->pos++;
    }
    luaL_pushresult(&b);
    return 0;
}

static int decode_number(decoder *d)
{
    size_t start = d->pos;
    const char *s = d->s;
    if (d->pos < d->n && s[d->pos] == '-')
        d->pos++;
    if (d->pos >= d->n)
        return decode_fail(d, "invalid number");
    if (s[d->pos] == '0') {
        d->pos++;
    } else if (s[d->pos] >= '1' && s[d->pos] <= '9') {
        while (d->pos < d->n && s[d->pos] >= '0' && s[d->pos] <= '9')
            d->pos++;
    } else {
        return decode_fail(d, "invalid number");
    }
    if (d->pos < d->n && s[d->pos] == '.') {
        d->pos++;
        size_t digits = d->pos;
        while (d->pos < d->n && s[d->pos] >= '0' && s[d->pos] <= '9')
            d->pos++;
        if (d->pos == digits)
            return decode_fail(d, "invalid number");
    }
    if (d->pos < d->n && (s[d->pos] == 'e' || s[d->pos] == 'E')) {
        d->pos++;
        if (d->pos < d->n && (s[d->pos] == '+' || s[d->pos] == '-'))
            d->pos++;
        size_t digits = d->pos;
        while (d->pos < d->n && s[d->pos] >= '0' && s[d->pos] <= '9')
            d->pos++;
        if (d->pos == digits)
            return decode_fail(d, "invalid number");
    }
    char buf[64];
    size_t len = d->pos - start;
    double v;
    if (len < sizeof buf) {
        memcpy(buf, s + start, len);
        buf[len] = '\0';
        v = strtod(buf, NULL);
    } else {
        char *tmp = malloc(len + 1);
        if (!tmp)
            return decode_fail(d, "out of memory");
        memcpy(tmp, s + start, len);
        tmp[len] = '\0';
        v = strtod(tmp, NULL);
        free(tmp);
    }
    lua_pushnumber(d->L, v);
    return 0;
}

static int match_word(decoder *d, const char *word)
{
    size_t len = strlen(word);
    if (d->pos + len > d->n || memcmp(d->s + d->pos, word, len) != 0)
        return 0;
    d->pos += len;
    return 1;
}

static int decode_value(decoder *d)
{
    lua_State *L = d->L;
    skip_ws(d);
    if (d->pos >= d->n)
        return decode_fail(d, "unexpected end of input");
    if (!lua_checkstack(L, 4))
        return decode_fail(d, "out of stack");
    char c = d->s[d->pos];
    if (c == '{' || c == '[') {
        if (++d->depth > JSON_MAX_DEPTH)
            return decode_fail(d, "nesting too deep");
        d->pos++;
        lua_newtable(L);
        int t = lua_gettop(L);
        if (c == '[') {
            ljson_push_array_mt(L);
            lua_setmetatable(L, t);
            int i = 0;
            skip_ws(d);
            if (d->pos < d->n && d->s[d->pos] == ']') {
                d->pos++;
            } else {
                for (;;) {
                    if (decode_value(d) != 0)
                        return -1;
                    /* null elements keep their place as json.null */
                    lua_rawseti(L, t, ++i);
                    skip_ws(d);
                    if (d->pos < d->n && d->s[d->pos] == ',') {
                        d->pos++;
                        continue;
                    }
                    if (d->pos < d->n && d->s[d->pos] == ']') {
                        d->pos++;
                        break;
                    }
                    return decode_fail(d, "expected ',' or ']'");
                }
            }
        } else {
            skip_ws(d);
            if (d->pos < d->n && d->s[d->pos] == '}') {
                d->pos++;
            } else {
                for (;;) {
                    skip_ws(d);
                    if (d->pos >= d->n || d->s[d->pos] != '"')
                        return decode_fail(d, "expected a string key");
                    d->pos++;
                    if (decode_string(d) != 0)
                        return -1;
                    skip_ws(d);
                    if (d->pos >= d->n || d->s[d->pos] != ':')
                        return decode_fail(d, "expected ':'");
                    d->pos++;
                    if (decode_value(d) != 0)
                        return -1;
                    lua_rawset(L, t);
                    skip_ws(d);
                    if (d->pos < d->n && d->s[d->pos] == ',') {
                        d->pos++;
                        continue;
                    }
                    if (d->pos < d->n && d->s[d->pos] == '}') {
                        d->pos++;
                        break;
                    }
                    return decode_fail(d, "expected ',' or '}'");
                }
            }
        }
        d->depth--;
        return 0;
    }
    if (c == '"') {
        d->pos++;
        return decode_string(d);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return decode_number(d);
    if (match_word(d, "true")) {
        lua_pushboolean(L, 1);
        return 0;
    }
    if (match_word(d, "false")) {
        lua_pushboolean(L, 0);
        return 0;
    }
    if (match_word(d, "null")) {
        lua_pushlightuserdata(L, NULL);
        return 0;
    }
    return decode_fail(d, "unexpected character");
}

int ljson_push_decoded(lua_State *L, const char *s, size_t n)
{
    decoder d = {.L = L, .s = s, .n = n, .pos = 0, .depth = 0, .error = {0}};
    int top = lua_gettop(L);
    if (decode_value(&d) == 0) {
        skip_ws(&d);
        if (d.pos == d.n)
            return 1;
        decode_fail(&d, "trailing characters");
    }
    lua_settop(L, top);
    lua_pushfstring(L, "invalid JSON: %s", d.error);
    return 0;
}

static int json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (ljson_push_decoded(L, s, n))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

void ljson_push_array_mt(lua_State *L)
{
    lua_pushlightuserdata(L, &array_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__jsontype");
        lua_pushlightuserdata(L, &array_mt_key);
        lua_pushvalue(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
    }
}

int ljson_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    ljson_push_array_mt(L);
    lua_setmetatable(L, 1);
    return 1;
}

static int json_raw(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushlightuserdata(L, &raw_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setmetatable(L, -2);
    return 1;
}

static int json_is_array(lua_State *L)
{
    if (!lua_istable(L, 1)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, array_length(L, 1) >= 0);
    return 1;
}

static const luaL_Reg json_functions[] = {
    {"encode", json_encode},
    {"decode", json_decode},
    {"array", ljson_array},
    {"is_array", json_is_array},
    {"raw", json_raw},
    {NULL, NULL},
};

LMOD_OPEN(json)
{
    ljson_push_array_mt(L);   /* shared by every decoded array */
    int mt = lua_gettop(L);
    lua_pushlightuserdata(L, &raw_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1)) {
        lua_newtable(L);
        lua_pushlightuserdata(L, &raw_mt_key);
        lua_pushvalue(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
        lua_remove(L, -2);
    }
    lua_pop(L, 1);
    lmod_new_module(L, json_functions);
    lua_pushvalue(L, mt);
    lua_setfield(L, -2, "array_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
