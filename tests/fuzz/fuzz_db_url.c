/*
 * fuzz_db_url.c - libFuzzer target for the text parsers of loreley.db that see outside
 * input: database URLs (db.parse_url) and time text (db.parse_time). Neither may crash
 * or raise on any byte string; a URL must either parse or come back as nil, message.
 *
 *   CC=clang cmake -S . -B build-fuzz -DLORELEY_FUZZ=ON && cmake --build build-fuzz -j2
 *   build-fuzz/fuzz_db_url -max_total_time=60
 */
#include <stdlib.h>
#include <string.h>

#include "lmod.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

static void close_state(void)
{
    lua_close(L);
}

/* One Lua state for the whole run, made before fuzzing starts (so its allocations are
 * not counted against the first input) and closed at exit. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    luaL_openlibs(L);
    lmod_install(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "loreley.db");
    lua_call(L, 1, 1);
    lua_setglobal(L, "db");
    atexit(close_state);
    return 0;
}

static void call(lua_State *S, const char *fn, const uint8_t *data, size_t size)
{
    lua_getglobal(S, "db");
    lua_getfield(S, -1, fn);
    lua_pushlstring(S, (const char *)data, size);
    if (lua_pcall(S, 1, 2, 0) != 0)
        abort();   /* a string argument must never raise */
    if (lua_isnil(S, -2) && !lua_isstring(S, -1))
        abort();   /* a failure always comes with a message */
    lua_settop(S, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    call(L, "parse_url", data, size);
    call(L, "parse_time", data, size);
    return 0;
}
