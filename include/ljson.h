/*
 * ljson.h - the JSON codec of loreley.json (src/ljson.c), for other C bindings. One
 * codec for the whole host: full double precision, arrays that stay arrays (decoded
 * arrays carry the shared array metatable), JSON null as a NULL light userdata.
 */
#ifndef LORELEY_LJSON_H
#define LORELEY_LJSON_H

#include <stddef.h>

#include <lua.h>

typedef struct ljson_options {
    int sort_keys;          /* keys in byte order (else table order) */
    int ascii;              /* non-ASCII as \uXXXX, as Python's ensure_ascii */
    int python_floats;      /* every number as Python writes a float (6.0) */
    const char *nonfinite;  /* "error" (default), "null", "sentinel", "python" */
} ljson_options;

/* Encodes the value at idx and pushes the text; options may be NULL (defaults).
 * Raises "json.encode: ..." on values JSON cannot hold (functions, cycles, non-string
 * keys in an object, NaN or infinities unless options say otherwise). */
void ljson_push_encoded(lua_State *L, int idx, const ljson_options *options);

/* Decodes s[0..n): pushes the value and returns 1, or pushes "invalid JSON: <what> at
 * byte N" and returns 0. */
int ljson_push_decoded(lua_State *L, const char *s, size_t n);

/* Pushes the metatable that marks a table as a JSON array (json.array_mt). */
void ljson_push_array_mt(lua_State *L);

/* json.array([t]) as a lua_CFunction (also db.json_array): t, or a new table, marked as
 * a JSON array so that it encodes as [] even when empty. */
int ljson_array(lua_State *L);

#endif
