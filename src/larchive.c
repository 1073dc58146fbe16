/*
 * larchive.c - the `loreley.archive` module: MAP-Elites archives (grid and CVT) over the
 * C core in archive.c. See docs/archive.md for the user documentation.
 *
 * Errors: misuse raises (wrong argument types, unknown option keys, NaN or infinite
 * objectives and measures, a cell outside the archive); input from the outside world
 * that turns out to be bad (a corrupted blob, invalid persisted rows) returns
 * nil, message.
 *
 *   archive.grid{dims=, lower=, upper=, learning_rate=, threshold_min=, epsilon=,
 *                qd_score_offset=} -> a
 *   archive.cvt{lower=, upper=, centroids= | cells=, samples=, seed=, iterations=,
 *               learning_rate=, threshold_min=, qd_score_offset=} -> a
 *   archive.load(blob) -> a | nil, message
 *   a:add(commit_hash, objective, measures[, {solution=, metadata=, timestamp=}])
 *       -> status, delta, cell
 *   a:add_many{ {commit_hash=, objective=, measures=, solution=, metadata=, timestamp=}, ...}
 *       -> statuses, deltas, cells
 *   a:index_of(measures) -> cell        a:index_of_many{measures, ...} -> cells
 *   a:get(cell) -> elite | nil          a:elites() -> iterator of elites
 *   a:sample(n, rng[, {replace=true, cells=false}]) -> elites (or cells)
 *   a:neighbours(cell, radius) -> cells a:stats() -> table      a:clear()
 *   a:save() -> blob                    a:row(cell) / a:rows() / a:load_rows(rows)
 *   a:kind() a:dimensions() a:cells() a:size() (#a) a:dims() a:bounds() a:options()
 *   a:centroids() a:coordinates(cell) a:close()
 *
 * Cells are Lua numbers, so an archive may have at most 2^53 cells here (the C core
 * allows 2^63 - 1); elites and rows are tables of the shape in SHAPES.md.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "host.h"
#include "larchive.h"
#include "lmod.h"
#include "rng.h"

#define ARCHIVE_TYPE "loreley.archive"
#define MAX_LUA_CELLS 9007199254740992.0   /* 2^53: cells must be exact Lua numbers */

typedef struct archive_box {
    archive_t *archive;
} archive_box;

/* The archive of the userdata at idx; raises when it is not one or was closed. */
static archive_t *check_archive(lua_State *L, int idx)
{
    archive_box *box = luaL_checkudata(L, idx, ARCHIVE_TYPE);
    if (!box->archive)
        luaL_error(L, "archive is closed");
    return box->archive;
}

archive_t *larchive_check(lua_State *L, int idx)
{
    return check_archive(L, idx);
}

/* Wraps a freshly created archive in a new userdata (pushed). Frees it on failure. */
static void push_archive(lua_State *L, archive_t *a)
{
    archive_box *box = lua_newuserdata(L, sizeof *box);
    box->archive = a;
    luaL_setmetatable(L, ARCHIVE_TYPE);
}

/* A scratch buffer owned by the Lua GC (pushed on the stack), so a raise frees it. */
static void *scratch(lua_State *L, size_t bytes)
{
    return lua_newuserdata(L, bytes ? bytes : 1);
}

/* nil, none, or cjson.null (a NULL light userdata): an absent optional field. */
static int is_null(lua_State *L, int idx)
{
    return lua_isnoneornil(L, idx) ||
           (lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL);
}

/*
 * Where a value sits, for error messages: a prefix with one %d (the item or row number),
 * formatted only when an error is raised, so a loop over thousands of items formats
 * nothing. NULL: no prefix.
 */
typedef struct where {
    const char *prefix;   /* e.g. "archive:add_many: item %d: " */
    int index;
} where;

/* Raises "<position>: <prefix><message>", as luaL_error would with the prefix. */
static int raise_at(lua_State *L, const where *w, const char *fmt, ...)
{
    luaL_where(L, 1);
    if (w)
        lua_pushfstring(L, w->prefix, w->index);
    else
        lua_pushliteral(L, "");
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 3);
    return lua_error(L);
}

/* An array of numbers at idx into out (exactly n); raises naming w and `what`. */
static void read_numbers_at(lua_State *L, int idx, double *out, size_t n, const where *w,
                            const char *what)
{
    idx = lmod_absindex(L, idx);
    if (!lua_istable(L, idx))
        raise_at(L, w, "%s must be an array of %d numbers, got %s", what, (int)n,
                 luaL_typename(L, idx));
    size_t len = lua_objlen(L, idx);
    if (len != n)
        raise_at(L, w, "%s has %d values, archive has %d dimensions", what, (int)len, (int)n);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            raise_at(L, w, "%s[%d] must be a number, got %s", what, (int)i + 1,
                     luaL_typename(L, -1));
        out[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
}

/* An array of numbers at idx into out (exactly n); raises naming `what`. */
static void read_numbers(lua_State *L, int idx, double *out, size_t n, const char *what)
{
    read_numbers_at(L, idx, out, n, NULL, what);
}

/* A cell argument: an integer-valued number in [0, cells); raises otherwise. */
static uint64_t check_cell(lua_State *L, archive_t *a, int idx)
{
    double c = luaL_checknumber(L, idx);
    if (!(c >= 0) || c != floor(c) || c >= (double)archive_cells(a))
        luaL_argerror(L, idx, lua_pushfstring(L, "cell must be an integer in [0, %f)",
                                              (double)archive_cells(a)));
    return (uint64_t)c;
}

/* --- construction ----------------------------------------------------------------------- */

/* Reads the options shared by both kinds from the table at 1. */
static void read_common_options(lua_State *L, archive_options *o)
{
    archive_options_defaults(o);
    o->learning_rate = lmod_opt_number(L, 1, "learning_rate", o->learning_rate);
    o->threshold_min = lmod_opt_number(L, 1, "threshold_min", o->threshold_min);
    o->qd_score_offset = lmod_opt_number(L, 1, "qd_score_offset", o->qd_score_offset);
}

/* lower/upper of the options table at 1, with D = #lower. Pushes two scratch buffers. */
static size_t read_bounds(lua_State *L, double **lower, double **upper, const char *who)
{
    lua_getfield(L, 1, "lower");
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: option 'lower' must be an array of numbers", who);
    size_t dim = lua_objlen(L, -1);
    if (dim < 1)
        luaL_error(L, "%s: option 'lower' must not be empty", who);
    *lower = scratch(L, dim * sizeof **lower);
    *upper = scratch(L, dim * sizeof **upper);
    read_numbers(L, -3, *lower, dim, "lower");
    lua_getfield(L, 1, "upper");
    read_numbers(L, -1, *upper, dim, "upper");
    lua_pop(L, 1);
    lua_remove(L, -3);   /* the lower table; the two buffers stay */
    return dim;
}

static const char *const grid_keys[] = {"dims",          "lower",   "upper",
                                        "learning_rate", "threshold_min", "epsilon",
                                        "qd_score_offset", NULL};

static int archive_grid_l(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lmod_check_options(L, 1, grid_keys, "archive.grid");
    archive_options o;
    read_common_options(L, &o);
    o.epsilon = lmod_opt_number(L, 1, "epsilon", o.epsilon);
    double *lower, *upper;
    size_t dim = read_bounds(L, &lower, &upper, "archive.grid");
    if (dim > ARCHIVE_MAX_GRID_DIMENSIONS)
        return luaL_error(L, "archive.grid: at most %d dimensions, got %d",
                          ARCHIVE_MAX_GRID_DIMENSIONS, (int)dim);
    uint64_t dims[ARCHIVE_MAX_GRID_DIMENSIONS];
    double total = 1;
    lua_getfield(L, 1, "dims");
    if (!lua_istable(L, -1) || lua_objlen(L, -1) != dim)
        return luaL_error(L, "archive.grid: option 'dims' must be an array of %d integers "
                             "(one per bound)", (int)dim);
    for (size_t d = 0; d < dim; d++) {
        lua_rawgeti(L, -1, (int)d + 1);
        double v = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || v != floor(v) || v < 1 || v > 9.2e18)
            return luaL_error(L, "archive.grid: dims[%d] must be an integer >= 1",
                              (int)d + 1);
        dims[d] = (uint64_t)v;
        total *= v;
        lua_pop(L, 1);
    }
    archive_t *a;
    archive_error err;
    if (archive_new_grid(dim, dims, lower, upper, &o, &a, &err) != 0)
        return luaL_error(L, "archive.grid: %s", err.message);
    if ((double)archive_cells(a) > MAX_LUA_CELLS || total > MAX_LUA_CELLS) {
        archive_free(a);
        return luaL_error(L, "archive.grid: the grid has %f cells; cell indices above 2^53 "
                             "are not exact Lua numbers", total);
    }
    push_archive(L, a);
    return 1;
}

static const char *const cvt_keys[] = {"lower",         "upper",         "centroids",
                                       "cells",         "samples",       "seed",
                                       "iterations",    "learning_rate", "threshold_min",
                                       "qd_score_offset", NULL};

static int archive_cvt_l(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lmod_check_options(L, 1, cvt_keys, "archive.cvt");
    archive_options o;
    read_common_options(L, &o);
    double *lower, *upper;
    size_t dim = read_bounds(L, &lower, &upper, "archive.cvt");
    archive_cvt_config c = {0};
    c.dimensions = dim;
    c.lower = lower;
    c.upper = upper;
    lua_Integer cells = lmod_opt_integer(L, 1, "cells", 0);
    lua_Integer samples = lmod_opt_integer(L, 1, "samples", 0);
    lua_Integer iterations = lmod_opt_integer(L, 1, "iterations", 0);
    lua_Integer seed = lmod_opt_integer(L, 1, "seed", 0);
    if (cells < 0 || samples < 0 || iterations < 0)
        return luaL_error(L, "archive.cvt: cells, samples and iterations must be >= 0");
    c.samples = (size_t)samples;
    c.iterations = (size_t)iterations;
    c.seed = (uint64_t)seed;
    lua_getfield(L, 1, "centroids");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            return luaL_error(L, "archive.cvt: option 'centroids' must be an array of "
                                 "arrays of %d numbers", (int)dim);
        size_t k = lua_objlen(L, -1);
        if (k < 1 || k > ARCHIVE_MAX_CVT_CELLS)
            return luaL_error(L, "archive.cvt: 'centroids' must hold 1 to %d centroids",
                              (int)ARCHIVE_MAX_CVT_CELLS);
        if (cells != 0 && (size_t)cells != k)
            return luaL_error(L, "archive.cvt: cells = %d but %d centroids were given",
                              (int)cells, (int)k);
        double *centroids = scratch(L, k * dim * sizeof *centroids);
        char what[48];
        for (size_t i = 0; i < k; i++) {
            lua_rawgeti(L, -2, (int)i + 1);
            snprintf(what, sizeof what, "centroids[%d]", (int)i + 1);
            read_numbers(L, -1, centroids + i * dim, dim, what);
            lua_pop(L, 1);
        }
        c.centroids = centroids;
        c.centroid_count = k;
    } else {
        if (cells < 1)
            return luaL_error(L, "archive.cvt: give 'centroids' or 'cells' (>= 1)");
        c.centroid_count = (size_t)cells;
    }
    archive_t *a;
    archive_error err;
    if (archive_new_cvt(&c, &o, &a, &err) != 0)
        return luaL_error(L, "archive.cvt: %s", err.message);
    push_archive(L, a);
    return 1;
}

static int archive_load_l(lua_State *L)
{
    size_t len;
    const char *blob = luaL_checklstring(L, 1, &len);
    archive_t *a;
    archive_error err;
    if (archive_load(blob, len, &a, &err) != 0)
        return lmod_fail(L, "%s", err.message);
    if ((double)archive_cells(a) > MAX_LUA_CELLS) {
        archive_free(a);
        return lmod_fail(L, "archive blob has more than 2^53 cells");
    }
    push_archive(L, a);
    return 1;
}

/* --- elites as tables ------------------------------------------------------------------- */

/* Pushes the row/elite table of SHAPES.md. */
static void push_elite(lua_State *L, const archive_t *a, const archive_elite *e)
{
    lua_createtable(L, 0, 8);
    lua_pushnumber(L, (double)e->cell);
    lua_setfield(L, -2, "cell");
    lua_pushlstring(L, e->commit_hash, e->commit_hash_len);
    lua_setfield(L, -2, "commit_hash");
    lua_pushnumber(L, e->objective);
    lua_setfield(L, -2, "objective");
    lua_pushnumber(L, e->threshold);
    lua_setfield(L, -2, "threshold");
    lmod_push_number_array(L, e->measures, archive_dimensions(a));
    lua_setfield(L, -2, "measures");
    if (e->solution) {
        lmod_push_number_array(L, e->solution, e->solution_len);
        lua_setfield(L, -2, "solution");
    }
    if (e->metadata) {
        lua_pushlstring(L, e->metadata, e->metadata_len);
        lua_setfield(L, -2, "metadata");
    }
    lua_pushnumber(L, e->timestamp);
    lua_setfield(L, -2, "timestamp");
}

/* Pushes an array of cells (exact: cells are below 2^53 here). */
static void push_cells(lua_State *L, const uint64_t *cells, size_t n)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushnumber(L, (double)cells[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

/* --- adding ----------------------------------------------------------------------------- */

static const char *const add_keys[] = {"solution", "metadata", "timestamp", NULL};

/* Reads an optional solution at idx into a scratch buffer (pushed when present). */
static void read_solution(lua_State *L, int idx, archive_entry *e, const where *w)
{
    idx = lmod_absindex(L, idx);
    e->solution = NULL;
    e->solution_len = 0;
    if (is_null(L, idx))
        return;
    if (!lua_istable(L, idx))
        raise_at(L, w, "solution must be an array of numbers, got %s", luaL_typename(L, idx));
    size_t n = lua_objlen(L, idx);
    if (n > ARCHIVE_MAX_SOLUTION)
        raise_at(L, w, "solution has %d values (at most %d)", (int)n,
                 (int)ARCHIVE_MAX_SOLUTION);
    double *buf = scratch(L, n * sizeof *buf);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            raise_at(L, w, "solution[%d] must be a number, got %s", (int)i + 1,
                     luaL_typename(L, -1));
        buf[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    e->solution = buf;
    e->solution_len = n;
}

/* An optional metadata string at idx; the pointer stays valid while the value is
 * anchored (in an options table, an item, or on the stack). */
static void read_metadata(lua_State *L, int idx, archive_entry *e, const where *w)
{
    e->metadata = NULL;
    e->metadata_len = 0;
    if (is_null(L, idx))
        return;
    if (lua_type(L, idx) != LUA_TSTRING)
        raise_at(L, w, "metadata must be a string (JSON text), got %s", luaL_typename(L, idx));
    e->metadata = lua_tolstring(L, idx, &e->metadata_len);
}

/* An optional timestamp at idx; nil means now (wall clock). */
static double read_timestamp(lua_State *L, int idx, const where *w)
{
    if (lua_isnil(L, idx))
        return host_wall_time();
    if (lua_type(L, idx) != LUA_TNUMBER)
        raise_at(L, w, "timestamp must be a number, got %s", luaL_typename(L, idx));
    return lua_tonumber(L, idx);
}

/* a:add(commit_hash, objective, measures[, opts]) -> status, delta, cell */
static int archive_add_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    lmod_check_options(L, 5, add_keys, "archive:add");
    /* stack: 1 archive, 2 hash, 3 objective, 4 measures, 5 options or nil; above them the
     * measures buffer, then metadata, timestamp and solution (with its buffer), all kept
     * until the add is done */
    lua_settop(L, 5);
    archive_entry e;
    e.commit_hash = luaL_checklstring(L, 2, &e.commit_hash_len);
    e.objective = luaL_checknumber(L, 3);
    size_t dim = archive_dimensions(a);
    double *measures = scratch(L, dim * sizeof *measures);
    read_numbers(L, 4, measures, dim, "measures");
    e.measures = measures;
    int has_options = lua_istable(L, 5);
    if (has_options)
        lua_getfield(L, 5, "metadata");
    else
        lua_pushnil(L);
    read_metadata(L, -1, &e, NULL);   /* a string stays anchored in the options table */
    if (has_options)
        lua_getfield(L, 5, "timestamp");
    else
        lua_pushnil(L);
    e.timestamp = read_timestamp(L, -1, NULL);
    if (has_options)
        lua_getfield(L, 5, "solution");
    else
        lua_pushnil(L);
    read_solution(L, -1, &e, NULL);   /* its buffer stays on the stack */
    archive_add_result r;
    archive_error err;
    if (archive_add(a, &e, &r, &err) != 0)
        return luaL_error(L, "archive:add: %s", err.message);
    lua_pushinteger(L, r.status);
    lua_pushnumber(L, r.delta);
    lua_pushnumber(L, (double)r.cell);
    return 3;
}

static const char *const item_keys[] = {"commit_hash", "objective", "measures", "solution",
                                        "metadata", "timestamp", NULL};

/*
 * Raises, with lmod_check_options' message, when the item at idx has a key besides its
 * `present` known fields (0: check by name). Counting the item's keys is enough when the
 * caller knows how many known fields it found, and costs no string comparison.
 */
static void check_item_keys(lua_State *L, int idx, int present, int number)
{
    int keys = 0;
    if (present > 0) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            keys++;
        }
        if (keys == present)
            return;
    }
    lua_pushfstring(L, "archive:add_many: item %d", number);
    lmod_check_options(L, idx, item_keys, lua_tostring(L, -1));
    lua_pop(L, 1);
}

/* a:add_many(items) -> statuses, deltas, cells. Every item is checked before any is
 * added; the adds are exactly a sequence of a:add calls. */
static int archive_add_many_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = lua_objlen(L, 2), dim = archive_dimensions(a);
    archive_entry *entries = scratch(L, n * sizeof *entries);
    double *measures = scratch(L, n * dim * sizeof *measures);
    archive_add_result *results = scratch(L, n * sizeof *results);
    lua_newtable(L);   /* anchors the solution buffers until the adds are done */
    int anchors = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        archive_entry *e = &entries[i];
        where w = {"archive:add_many: item %d: ", (int)i + 1};
        lua_rawgeti(L, 2, (int)i + 1);
        int item = lua_gettop(L);
        if (!lua_istable(L, item))
            return raise_at(L, &w, "expected a table, got %s", luaL_typename(L, item));
        /* strings read below stay anchored in the item, itself anchored in the list */
        lua_getfield(L, item, "commit_hash");
        if (lua_type(L, -1) != LUA_TSTRING) {
            check_item_keys(L, item, 0, (int)i + 1);   /* an unknown key is the first error */
            return raise_at(L, &w, "commit_hash must be a string, got %s",
                            luaL_typename(L, -1));
        }
        e->commit_hash = lua_tolstring(L, -1, &e->commit_hash_len);
        lua_getfield(L, item, "objective");
        if (lua_type(L, -1) != LUA_TNUMBER) {
            check_item_keys(L, item, 0, (int)i + 1);
            return raise_at(L, &w, "objective must be a number, got %s", luaL_typename(L, -1));
        }
        e->objective = lua_tonumber(L, -1);
        lua_getfield(L, item, "metadata");
        lua_getfield(L, item, "timestamp");
        lua_getfield(L, item, "solution");
        lua_getfield(L, item, "measures");
        /* stack: item, commit_hash, objective, metadata, timestamp, solution, measures */
        int present = 2;
        for (int k = item + 3; k <= item + 6; k++)
            present += !lua_isnil(L, k);
        check_item_keys(L, item, present, (int)i + 1);
        read_metadata(L, item + 3, e, &w);
        e->timestamp = read_timestamp(L, item + 4, &w);
        read_solution(L, item + 5, e, &w);   /* pushes its buffer */
        if (e->solution)
            lua_rawseti(L, anchors, (int)i + 1);
        read_numbers_at(L, item + 6, measures + i * dim, dim, &w, "measures");
        e->measures = measures + i * dim;
        lua_settop(L, item - 1);
    }
    archive_error err;
    if (archive_add_many(a, entries, n, results, &err) != 0)
        return luaL_error(L, "archive:add_many: %s", err.message);
    lua_createtable(L, (int)n, 0);
    lua_createtable(L, (int)n, 0);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, results[i].status);
        lua_rawseti(L, -4, (int)i + 1);
        lua_pushnumber(L, results[i].delta);
        lua_rawseti(L, -3, (int)i + 1);
        lua_pushnumber(L, (double)results[i].cell);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 3;
}

/* a:index_of(measures) -> cell */
static int archive_index_of_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    size_t dim = archive_dimensions(a);
    double *m = scratch(L, dim * sizeof *m);
    read_numbers(L, 2, m, dim, "measures");
    uint64_t cell;
    archive_error err;
    if (archive_index_of(a, m, &cell, &err) != 0)
        return luaL_error(L, "archive:index_of: %s", err.message);
    lua_pushnumber(L, (double)cell);
    return 1;
}

/* a:index_of_many{measures, ...} -> cells */
static int archive_index_of_many_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = lua_objlen(L, 2), dim = archive_dimensions(a);
    double *m = scratch(L, n * dim * sizeof *m);
    uint64_t *cells = scratch(L, n * sizeof *cells);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        where w = {"measures[%d]", (int)i + 1};
        read_numbers_at(L, -1, m + i * dim, dim, &w, "");
        lua_pop(L, 1);
    }
    archive_error err;
    if (archive_index_of_many(a, m, n, cells, &err) != 0)
        return luaL_error(L, "archive:index_of_many: %s", err.message);
    push_cells(L, cells, n);
    return 1;
}

/* --- reading ------------------------------------------------------------------------------- */

/* a:get(cell) -> elite | nil */
static int archive_get_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    archive_elite e;
    if (!archive_get(a, check_cell(L, a, 2), &e)) {
        lua_pushnil(L);
        return 1;
    }
    push_elite(L, a, &e);
    return 1;
}

/* Iterator step: upvalue 1 is the archive userdata, upvalue 2 the next position. */
static int elites_step(lua_State *L)
{
    archive_t *a = check_archive(L, lua_upvalueindex(1));
    size_t pos = (size_t)lua_tonumber(L, lua_upvalueindex(2));
    if (pos >= archive_size(a))
        return 0;
    lua_pushnumber(L, (double)(pos + 1));
    lua_replace(L, lua_upvalueindex(2));
    archive_elite e;
    archive_elite_at(a, pos, &e);
    push_elite(L, a, &e);
    return 1;
}

/* a:elites() -> iterator over the elites in dense (insertion) order */
static int archive_elites_l(lua_State *L)
{
    check_archive(L, 1);
    lua_pushvalue(L, 1);
    lua_pushnumber(L, 0);
    lua_pushcclosure(L, elites_step, 2);
    return 1;
}

static int archive_clear_l(lua_State *L)
{
    archive_clear(check_archive(L, 1));
    return 0;
}

static const char *const sample_keys[] = {"replace", "cells", NULL};

/* a:sample(n, rng[, {replace = true, cells = false}]) -> elites, or cells */
static int archive_sample_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    double nd = luaL_checknumber(L, 2);
    if (!(nd >= 0) || nd != floor(nd) || nd > 1e8)
        return luaL_argerror(L, 2, "n must be an integer in [0, 1e8]");
    rng_t *rng = lmod_check_rng(L, 3);
    lmod_check_options(L, 4, sample_keys, "archive:sample");
    int replace = lmod_opt_boolean(L, 4, "replace", 1);
    int cells_only = lmod_opt_boolean(L, 4, "cells", 0);
    size_t n = (size_t)nd;
    size_t *pos = scratch(L, n * sizeof *pos);
    size_t got = archive_sample(a, rng, n, replace, pos);
    if (got == 0 && n > 0 && archive_size(a) > 0)
        return luaL_error(L, "archive:sample: out of memory");
    lua_createtable(L, (int)got, 0);
    for (size_t i = 0; i < got; i++) {
        if (cells_only) {
            lua_pushnumber(L, (double)archive_cell_at(a, pos[i]));
        } else {
            archive_elite e;
            archive_elite_at(a, pos[i], &e);
            push_elite(L, a, &e);
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* a:neighbours(cell, radius) -> cells (grid: Chebyshev ball; CVT: radius nearest) */
static int archive_neighbours_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    uint64_t cell = check_cell(L, a, 2);
    double r = luaL_checknumber(L, 3);
    if (!(r >= 0) || r != floor(r))
        return luaL_argerror(L, 3, "radius must be an integer >= 0");
    archive_cell_list list = {0};
    archive_error err;
    if (archive_neighbours(a, cell, r > 1.8e19 ? UINT64_MAX : (uint64_t)r,
                           ARCHIVE_NEIGHBOURS_AUTO, &list, &err) != 0) {
        archive_cell_list_free(&list);
        return luaL_error(L, "archive:neighbours: %s", err.message);
    }
    if (list.count > 0x7fffffff) {
        archive_cell_list_free(&list);
        return luaL_error(L, "archive:neighbours: too many neighbours");
    }
    lua_createtable(L, (int)list.count, 0);
    for (size_t i = 0; i < list.count; i++) {
        lua_pushnumber(L, (double)list.cells[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    archive_cell_list_free(&list);
    return 1;
}

/* a:stats() -> pyribs' stats; obj_max/obj_mean absent before the first insert */
static int archive_stats_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    archive_stats s;
    archive_get_stats(a, &s);
    lua_createtable(L, 0, 7);
    lua_pushnumber(L, (double)s.num_elites);
    lua_setfield(L, -2, "num_elites");
    lua_pushnumber(L, (double)s.cells);
    lua_setfield(L, -2, "cells");
    lua_pushnumber(L, s.coverage);
    lua_setfield(L, -2, "coverage");
    lua_pushnumber(L, s.qd_score);
    lua_setfield(L, -2, "qd_score");
    lua_pushnumber(L, s.norm_qd_score);
    lua_setfield(L, -2, "norm_qd_score");
    if (s.has_objective) {
        lua_pushnumber(L, s.obj_max);
        lua_setfield(L, -2, "obj_max");
    }
    if (s.num_elites) {
        lua_pushnumber(L, s.obj_mean);
        lua_setfield(L, -2, "obj_mean");
    }
    return 1;
}

/* --- persistence ---------------------------------------------------------------------------- */

/* a:save() -> blob (the C buffer is freed before returning) */
static int archive_save_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    unsigned char *blob;
    size_t len;
    archive_error err;
    if (archive_save(a, &blob, &len, &err) != 0)
        return luaL_error(L, "archive:save: %s", err.message);
    lua_pushlstring(L, (const char *)blob, len);
    free(blob);
    return 1;
}

static int archive_row_l(lua_State *L)
{
    return archive_get_l(L);
}

/* a:rows() -> every elite as a row, in dense order */
static int archive_rows_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    size_t n = archive_size(a);
    lua_createtable(L, (int)n, 0);
    for (size_t pos = 0; pos < n; pos++) {
        archive_elite e;
        archive_elite_at(a, pos, &e);
        push_elite(L, a, &e);
        lua_rawseti(L, -2, (int)pos + 1);
    }
    return 1;
}

static const char *const row_keys[] = {"cell",     "commit_hash", "objective", "threshold",
                                       "measures", "solution",    "metadata",  "timestamp",
                                       NULL};

/* Validates row i (at idx) and restores it; on bad data pushes a message and returns -1. */
static int load_one_row(lua_State *L, archive_t *a, int idx, int i, double *measures)
{
    size_t dim = archive_dimensions(a);
    if (!lua_istable(L, idx)) {
        lua_pushfstring(L, "row %d: expected a table, got %s", i, luaL_typename(L, idx));
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *k = row_keys; *k && !known; k++)
                known = strcmp(*k, lua_tostring(L, -1)) == 0;
        if (!known) {
            lua_pushfstring(L, "row %d: unknown field '%s'", i,
                            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
            return -1;
        }
    }
    static const char *const numbers[] = {"cell", "objective", "threshold", "timestamp"};
    double v[4];
    for (int k = 0; k < 4; k++) {
        lua_getfield(L, idx, numbers[k]);
        if (lua_type(L, -1) != LUA_TNUMBER) {
            lua_pushfstring(L, "row %d: %s must be a number, got %s", i, numbers[k],
                            luaL_typename(L, -1));
            return -1;
        }
        v[k] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    if (!(v[0] >= 0) || v[0] != floor(v[0]) || v[0] >= (double)archive_cells(a)) {
        lua_pushfstring(L, "row %d: cell %f is not an integer in [0, %f)", i, v[0],
                        (double)archive_cells(a));
        return -1;
    }
    archive_entry e;
    e.objective = v[1];
    e.timestamp = v[3];
    lua_getfield(L, idx, "commit_hash");
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pushfstring(L, "row %d: commit_hash must be a string, got %s", i,
                        luaL_typename(L, -1));
        return -1;
    }
    e.commit_hash = lua_tolstring(L, -1, &e.commit_hash_len);
    lua_pop(L, 1);   /* anchored in the row */
    lua_getfield(L, idx, "measures");
    if (!lua_istable(L, -1)) {
        lua_pushfstring(L, "row %d: measures must be an array of numbers, got %s", i,
                        luaL_typename(L, -1));
        return -1;
    }
    if (lua_objlen(L, -1) != dim) {
        lua_pushfstring(L, "row %d: measures has %d values, archive has %d dimensions", i,
                        (int)lua_objlen(L, -1), (int)dim);
        return -1;
    }
    for (size_t d = 0; d < dim; d++) {
        lua_rawgeti(L, -1, (int)d + 1);
        if (lua_type(L, -1) != LUA_TNUMBER) {
            lua_pushfstring(L, "row %d: measures[%d] must be a number", i, (int)d + 1);
            return -1;
        }
        measures[d] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    e.measures = measures;
    e.metadata = NULL;
    e.metadata_len = 0;
    lua_getfield(L, idx, "metadata");
    if (!is_null(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pushfstring(L, "row %d: metadata must be a string or nil, got %s", i,
                            luaL_typename(L, -1));
            return -1;
        }
        e.metadata = lua_tolstring(L, -1, &e.metadata_len);
    }
    lua_pop(L, 1);
    e.solution = NULL;
    e.solution_len = 0;
    lua_getfield(L, idx, "solution");   /* stays on the stack: holds the scratch buffer */
    if (!is_null(L, -1)) {
        if (!lua_istable(L, -1)) {
            lua_pushfstring(L, "row %d: solution must be an array of numbers or nil, got %s", i,
                            luaL_typename(L, -1));
            return -1;
        }
        size_t n = lua_objlen(L, -1);
        if (n > ARCHIVE_MAX_SOLUTION) {
            lua_pushfstring(L, "row %d: solution has too many values", i);
            return -1;
        }
        double *sol = scratch(L, n * sizeof *sol);
        for (size_t k = 0; k < n; k++) {
            lua_rawgeti(L, -2, (int)k + 1);
            if (lua_type(L, -1) != LUA_TNUMBER) {
                lua_pushfstring(L, "row %d: solution[%d] must be a number", i, (int)k + 1);
                return -1;
            }
            sol[k] = lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        e.solution = sol;
        e.solution_len = n;
    }
    archive_error err;
    if (archive_restore(a, (uint64_t)v[0], &e, v[2], &err) != 0) {
        lua_pushfstring(L, "row %d: %s", i, err.message);
        return -1;
    }
    return 0;
}

/* a:load_rows(rows) -> true | nil, message. The archive must be empty; on bad rows it is
 * left empty again. */
static int archive_load_rows_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (archive_size(a) != 0)
        return luaL_error(L, "archive:load_rows: the archive must be empty (it has %d "
                             "elites); call clear() first",
                          (int)archive_size(a));
    size_t n = lua_objlen(L, 2);
    double *measures = scratch(L, archive_dimensions(a) * sizeof *measures);
    int base = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        if (load_one_row(L, a, base + 1, (int)i + 1, measures) != 0) {
            archive_clear(a);
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        lua_settop(L, base);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* --- shape ---------------------------------------------------------------------------------- */

static int archive_kind_l(lua_State *L)
{
    lua_pushstring(L, archive_get_kind(check_archive(L, 1)) == ARCHIVE_GRID ? "grid" : "cvt");
    return 1;
}

static int archive_dimensions_l(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)archive_dimensions(check_archive(L, 1)));
    return 1;
}

static int archive_cells_l(lua_State *L)
{
    lua_pushnumber(L, (double)archive_cells(check_archive(L, 1)));
    return 1;
}

static int archive_size_l(lua_State *L)
{
    lua_pushnumber(L, (double)archive_size(check_archive(L, 1)));
    return 1;
}

static int archive_dims_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    const uint64_t *dims = archive_grid_dims(a);
    if (!dims)
        return 0;
    lua_createtable(L, (int)archive_dimensions(a), 0);
    for (size_t d = 0; d < archive_dimensions(a); d++) {
        lua_pushnumber(L, (double)dims[d]);
        lua_rawseti(L, -2, (int)d + 1);
    }
    return 1;
}

static int archive_bounds_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    lmod_push_number_array(L, archive_lower(a), archive_dimensions(a));
    lmod_push_number_array(L, archive_upper(a), archive_dimensions(a));
    return 2;
}

static int archive_options_l(lua_State *L)
{
    const archive_options *o = archive_get_options(check_archive(L, 1));
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, o->learning_rate);
    lua_setfield(L, -2, "learning_rate");
    lua_pushnumber(L, o->threshold_min);
    lua_setfield(L, -2, "threshold_min");
    lua_pushnumber(L, o->epsilon);
    lua_setfield(L, -2, "epsilon");
    lua_pushnumber(L, o->qd_score_offset);
    lua_setfield(L, -2, "qd_score_offset");
    return 1;
}

static int archive_centroids_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    const double *c = archive_centroids(a);
    if (!c)
        return 0;
    size_t k = (size_t)archive_cells(a), dim = archive_dimensions(a);
    lua_createtable(L, (int)k, 0);
    for (size_t i = 0; i < k; i++) {
        lmod_push_number_array(L, c + i * dim, dim);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* a:coordinates(cell) -> 0-based grid coordinates (grid archives only) */
static int archive_coordinates_l(lua_State *L)
{
    archive_t *a = check_archive(L, 1);
    uint64_t cell = check_cell(L, a, 2);
    uint64_t coords[ARCHIVE_MAX_GRID_DIMENSIONS];
    archive_error err;
    if (archive_grid_coordinates(a, cell, coords, &err) != 0)
        return luaL_error(L, "archive:coordinates: %s", err.message);
    push_cells(L, coords, archive_dimensions(a));
    return 1;
}

static int archive_close_l(lua_State *L)
{
    archive_box *box = luaL_checkudata(L, 1, ARCHIVE_TYPE);
    archive_free(box->archive);
    box->archive = NULL;
    return 0;
}

static int archive_tostring_l(lua_State *L)
{
    archive_box *box = luaL_checkudata(L, 1, ARCHIVE_TYPE);
    if (!box->archive) {
        lua_pushstring(L, "loreley.archive (closed)");
        return 1;
    }
    archive_t *a = box->archive;
    lua_pushfstring(L, "loreley.archive (%s, %d dimensions, %f cells, %f elites)",
                    archive_get_kind(a) == ARCHIVE_GRID ? "grid" : "cvt",
                    (int)archive_dimensions(a), (double)archive_cells(a),
                    (double)archive_size(a));
    return 1;
}

static const luaL_Reg archive_methods[] = {
    {"add", archive_add_l},
    {"add_many", archive_add_many_l},
    {"index_of", archive_index_of_l},
    {"index_of_many", archive_index_of_many_l},
    {"get", archive_get_l},
    {"elites", archive_elites_l},
    {"clear", archive_clear_l},
    {"sample", archive_sample_l},
    {"neighbours", archive_neighbours_l},
    {"stats", archive_stats_l},
    {"save", archive_save_l},
    {"row", archive_row_l},
    {"rows", archive_rows_l},
    {"load_rows", archive_load_rows_l},
    {"kind", archive_kind_l},
    {"dimensions", archive_dimensions_l},
    {"cells", archive_cells_l},
    {"size", archive_size_l},
    {"dims", archive_dims_l},
    {"bounds", archive_bounds_l},
    {"options", archive_options_l},
    {"centroids", archive_centroids_l},
    {"coordinates", archive_coordinates_l},
    {"close", archive_close_l},
    {NULL, NULL},
};

static const luaL_Reg archive_meta[] = {
    {"__gc", archive_close_l},
    {"__tostring", archive_tostring_l},
    {"__len", archive_size_l},
    {NULL, NULL},
};

static const luaL_Reg archive_functions[] = {
    {"grid", archive_grid_l},
    {"cvt", archive_cvt_l},
    {"load", archive_load_l},
    {NULL, NULL},
};

LMOD_OPEN(archive)
{
    lmod_new_class(L, ARCHIVE_TYPE, archive_methods, archive_meta);
    lmod_new_module(L, archive_functions);
    return 1;
}
