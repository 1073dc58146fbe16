/*
 * lmod.c - glue shared by the C Lua modules: module registration, the embedded-library
 * searcher, option-table checks and small conversions. See lmod.h.
 */
#include "lmod.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

const lmod_embedded_file *lmod_find_embedded(const char *path)
{
    for (const lmod_embedded_file *f = lmod_embedded_files; f->path; f++)
        if (strcmp(f->path, path) == 0)
            return f;
    return NULL;
}

int lmod_push_file(lua_State *L, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return 0;
        lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t n;
    do {
        char *p = luaL_prepbuffer(&b);
        n = fread(p, 1, LUAL_BUFFERSIZE, f);
        luaL_addsize(&b, n);
    } while (n == LUAL_BUFFERSIZE);
    int failed = ferror(f);
    fclose(f);
    luaL_pushresult(&b);
    if (failed) {
        lua_pop(L, 1);
        lua_pushfstring(L, "cannot read %s", path);
        return -1;
    }
    return 1;
}

int lmod_push_resource(lua_State *L, const char *path)
{
    const char *dir = getenv("LORELEY_LUA_DIR");
    if (dir && *dir) {
        lua_pushfstring(L, "%s/%s", dir, path);
        const char *full = lua_tostring(L, -1);
        int r = lmod_push_file(L, full);
        lua_remove(L, -2);
        if (r == 1)
            return 1;
        if (r < 0) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        lua_pushnil(L);
        lua_pushfstring(L, "resource %s not found under LORELEY_LUA_DIR=%s", path, dir);
        return 2;
    }
    const lmod_embedded_file *f = lmod_find_embedded(path);
    if (!f) {
        lua_pushnil(L);
        lua_pushfstring(L, "resource %s is not in the embedded library", path);
        return 2;
    }
    lua_pushlstring(L, f->data, f->size);
    return 1;
}

/*
 * package.loaders entry: "loreley.a.b" -> "loreley/a/b.lua" in the embedded library or
 * under $LORELEY_LUA_DIR. Returns the loaded chunk, or a "\n\tno ..." message as Lua
 * 5.1 searchers do.
 */
static int embedded_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = name; *p; p++)
        luaL_addchar(&b, *p == '.' ? '/' : *p);
    luaL_addstring(&b, ".lua");
    luaL_pushresult(&b);
    const char *path = lua_tostring(L, -1);   /* stack: name path */

    const char *dir = getenv("LORELEY_LUA_DIR");
    if (dir && *dir) {
        lua_pushfstring(L, "%s/%s", dir, path);   /* name path fullpath */
        const char *full = lua_tostring(L, -1);
        int r = lmod_push_file(L, full);               /* name path fullpath source|msg */
        if (r < 0)
            return lua_error(L);
        if (r == 0) {
            lua_pushfstring(L, "\n\tno file '%s' (LORELEY_LUA_DIR)", full);
            return 1;
        }
        size_t len;
        const char *src = lua_tolstring(L, -1, &len);
        lua_pushfstring(L, "@%s", full);
        if (luaL_loadbuffer(L, src, len, lua_tostring(L, -1)) != 0)
            return luaL_error(L, "error loading module '%s' from %s:\n\t%s", name, full,
                              lua_tostring(L, -1));
        return 1;
    }
    const lmod_embedded_file *f = lmod_find_embedded(path);
    if (!f) {
        lua_pushfstring(L, "\n\tno embedded module '%s'", path);
        return 1;
    }
    lua_pushfstring(L, "@[embedded]/%s", path);
    if (luaL_loadbuffer(L, f->data, f->size, lua_tostring(L, -1)) != 0)
        return luaL_error(L, "error loading embedded module '%s':\n\t%s", name,
                          lua_tostring(L, -1));
    return 1;
}

void lmod_install(lua_State *L)
{
    lua_getglobal(L, "package");                     /* package */
    lua_getfield(L, -1, "preload");                  /* package preload */
    for (const lmod_preload *m = lmod_preload_table; m->name; m++) {
        lua_pushcfunction(L, m->open);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);                                   /* package */
    /* Insert the embedded searcher right after the preload searcher, so the standard
     * library cannot be shadowed by a stray file on package.path. */
    lua_getfield(L, -1, "loaders");                  /* package loaders */
    int n = (int)lua_objlen(L, -1);
    for (int i = n; i >= 2; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, embedded_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
}

int lmod_fail(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushnil(L);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return 2;
}

int lmod_fail_code(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushnil(L);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    if (code)
        lua_pushstring(L, code);
    else
        lua_pushnil(L);
    return 3;
}

void lmod_check_options(lua_State *L, int idx, const char *const keys[], const char *what)
{
    idx = lmod_absindex(L, idx);
    if (lua_isnoneornil(L, idx))
        return;
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: options must be a table, got %s", what, luaL_typename(L, idx));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: option keys must be strings, got %s", what,
                       luaL_typename(L, -1));
        const char *key = lua_tostring(L, -1);
        int known = 0;
        for (const char *const *k = keys; *k; k++)
            if (strcmp(*k, key) == 0) {
                known = 1;
                break;
            }
        if (!known) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *const *k = keys; *k; k++) {
                if (k != keys)
                    luaL_addstring(&b, ", ");
                luaL_addstring(&b, *k);
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown option '%s' (expected one of: %s)", what, key,
                       lua_tostring(L, -1));
        }
    }
}

/* Pushes options[key] (or nil when options is not a table). */
static int push_field(lua_State *L, int idx, const char *key)
{
    idx = lmod_absindex(L, idx);
    if (!lua_istable(L, idx)) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_getfield(L, idx, key);
    return lua_type(L, -1);
}

lua_Integer lmod_opt_integer(lua_State *L, int idx, const char *key, lua_Integer def)
{
    int t = push_field(L, idx, key);
    lua_Integer v = def;
    if (t == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, -1);
        if (n != (lua_Number)(lua_Integer)n)
            luaL_error(L, "option '%s' must be an integer, got %f", key, n);
        v = (lua_Integer)n;
    } else if (t != LUA_TNIL) {
        luaL_error(L, "option '%s' must be an integer, got %s", key, lua_typename(L, t));
    }
    lua_pop(L, 1);
    return v;
}

double lmod_opt_number(lua_State *L, int idx, const char *key, double def)
{
    int t = push_field(L, idx, key);
    double v = def;
    if (t == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "option '%s' must be a number, got %s", key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

const char *lmod_opt_string(lua_State *L, int idx, const char *key, const char *def)
{
    int t = push_field(L, idx, key);
    const char *v = def;
    if (t == LUA_TSTRING)
        v = lua_tostring(L, -1);   /* anchored in the options table */
    else if (t != LUA_TNIL)
        luaL_error(L, "option '%s' must be a string, got %s", key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

int lmod_opt_boolean(lua_State *L, int idx, const char *key, int def)
{
    int t = push_field(L, idx, key);
    int v = def;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "option '%s' must be a boolean, got %s", key, lua_typename(L, t));
    lua_pop(L, 1);
    return v;
}

void lmod_new_class(lua_State *L, const char *tname, const luaL_Reg *methods,
                    const luaL_Reg *meta)
{
    luaL_newmetatable(L, tname);          /* mt */
    if (meta)
        luaL_setfuncs(L, meta, 0);
    lua_newtable(L);                      /* mt methods */
    if (methods)
        luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");       /* mt */
    lua_pushstring(L, tname);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void lmod_new_module(lua_State *L, const luaL_Reg *funcs)
{
    lua_newtable(L);
    luaL_setfuncs(L, funcs, 0);
}

size_t lmod_check_number_array(lua_State *L, int idx, double *out, size_t n,
                               const char *what)
{
    idx = lmod_absindex(L, idx);
    if (!lua_istable(L, idx))
        luaL_error(L, "%s must be an array of %d numbers, got %s", what, (int)n,
                   luaL_typename(L, idx));
    size_t len = lua_objlen(L, idx);
    if (len != n)
        luaL_error(L, "%s must have %d elements, got %d", what, (int)n, (int)len);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s[%d] must be a number, got %s", what, (int)i + 1,
                       luaL_typename(L, -1));
        out[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    return n;
}

void lmod_push_number_array(lua_State *L, const double *values, size_t n)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushnumber(L, values[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

struct rng *lmod_check_rng(lua_State *L, int idx)
{
    return (struct rng *)luaL_checkudata(L, idx, "loreley.rng");
}

struct rng *lmod_opt_rng(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return NULL;
    return lmod_check_rng(L, idx);
}
