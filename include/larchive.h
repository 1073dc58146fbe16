/*
 * larchive.h - the C archive inside a `loreley.archive` userdata, for other bindings that
 * read archives in bulk (lhttp.c builds heatmaps from it).
 */
#ifndef LORELEY_LARCHIVE_H
#define LORELEY_LARCHIVE_H

#include <lua.h>

#include "archive.h"

/* The archive of the loreley.archive userdata at idx; raises when idx holds something
 * else or a closed archive. The archive stays owned by the userdata: do not keep the
 * pointer beyond the call, and do not change the archive through it. */
archive_t *larchive_check(lua_State *L, int idx);

#endif
