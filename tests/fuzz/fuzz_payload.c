/*
 * Fuzz target: job payloads as the ingest stage reads them. Arbitrary bytes are decoded
 * as JSON (workers write evolution_jobs.payload) and checked with
 * loreley.jobstore.inspect_payload, the checks find_ingestable applies to every row: it
 * must return a reason or an ingestible result, never raise. A result it accepts must
 * have a non-empty commit hash and numeric metrics with names.
 */
#include <string.h>

#include "fuzz_lua_common.h"

static const char driver[] =
    "local json = require 'loreley.json'\n"
    "local jobstore = require 'loreley.jobstore'\n"
    "local data = ...\n"
    "local payload, err = json.decode(data)\n"
    "if err then return end\n"
    "local reason, hash, metrics = jobstore.inspect_payload(payload)\n"
    "if reason then assert(type(reason) == 'string' and #reason > 0, 'empty reason') return end\n"
    "assert(type(hash) == 'string' and hash ~= '', 'accepted without a commit hash')\n"
    "for i, m in ipairs(metrics) do\n"
    "  assert(type(m.name) == 'string' and m.name ~= '', 'metric without a name')\n"
    "  assert(type(m.value) == 'number' and m.value == m.value, 'metric value not a number')\n"
    "end\n";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    lua_State *L = fuzz_lua_state();
    if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=fuzz_payload") != 0)
        abort();
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != 0) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "payload fuzz: %s\n", msg ? msg : "?");
        abort();
    }
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
