/*
 * Fuzz target: loreley.json decode of arbitrary bytes (job payloads come from the
 * database, written by workers), then encode of whatever decoded and decode again: the
 * second decode must give back an equal encoding (round-trip stability).
 */
#include <string.h>

#include "fuzz_lua_common.h"

static const char driver[] =
    "local json = require 'loreley.json'\n"
    "local data = ...\n"
    "local v, err = json.decode(data)\n"
    "if err then return end\n"
    "local ok, text = pcall(json.encode, v, { sort_keys = true })\n"
    "if not ok then return end\n"   /* e.g. numbers beyond double range decode to inf */
    "local again, err2 = json.decode(text)\n"
    "assert(err2 == nil, 'encoded text does not decode')\n"
    "assert(json.encode(again, { sort_keys = true }) == text, 'round trip differs')\n";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    lua_State *L = fuzz_lua_state();
    if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=fuzz_json") != 0)
        abort();
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != 0) {
        const char *msg = lua_tostring(L, -1);
        /* Only assertion failures of the driver are findings. */
        if (msg && (strstr(msg, "round trip differs") || strstr(msg, "does not decode")))
            abort();
        lua_pop(L, 1);
    }
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
