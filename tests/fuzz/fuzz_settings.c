/*
 * Fuzz target: every setting parsed from arbitrary text (environment values and .env
 * files are outside data). The loader must return settings or nil + message; a Lua
 * error escaping settings.load is a finding.
 * Input: first byte selects the variable, the rest is its value; when the first byte is
 * 0xff the rest is a whole .env file.
 */
#include <string.h>

#include "fuzz_lua_common.h"

static const char driver[] =
    "local settings = require 'loreley.settings'\n"
    "local data = ...\n"
    "local selector = data:byte(1) or 0\n"
    "local rest = data:sub(2)\n"
    "if selector == 255 then\n"
    "  local parsed = settings.parse_dotenv(rest, 'fuzz.env')\n"
    "  if parsed then\n"
    "    local s, err = settings.load { env = parsed, dotenv = false }\n"
    "    assert(s or type(err) == 'string')\n"
    "  end\n"
    "  return\n"
    "end\n"
    "local row = settings.SPEC[selector % #settings.SPEC + 1]\n"
    "local s, err = settings.load { env = { [row.env] = rest }, dotenv = false }\n"
    "assert(s or (type(err) == 'string' and err:find(row.env, 1, true)), 'no error naming the variable')\n"
    "if s then local _ = settings.describe(s) end\n";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    lua_State *L = fuzz_lua_state();
    if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=fuzz_settings") != 0)
        abort();
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != 0) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "settings fuzz: %s\n", msg ? msg : "?");
        abort();
    }
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
