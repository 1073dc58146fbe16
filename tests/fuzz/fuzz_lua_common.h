/*
 * fuzz_lua_common.h - a Lua state with the host's modules for fuzz targets that drive
 * Lua-side parsers (settings values, job payloads). One state per process; each input
 * runs under lua_pcall, and a Lua error is an expected outcome, not a finding.
 */
#ifndef LORELEY_FUZZ_LUA_COMMON_H
#define LORELEY_FUZZ_LUA_COMMON_H

#include <stdlib.h>

#include "lmod.h"

static lua_State *fuzz_lua_state(void)
{
    static lua_State *L;
    if (!L) {
        L = luaL_newstate();
        if (!L)
            abort();
        luaL_openlibs(L);
        lmod_install(L);
    }
    return L;
}

#endif
