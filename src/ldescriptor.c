/*
 * ldescriptor.c - the `loreley.descriptor` module: from a commit's changed files to the
 * measure vector the archive places it by (contract §3.2-§3.8). Each step is its own
 * function, so a policy can replace any of them; compute() runs the whole pipeline in
 * one call across the C boundary.
 *
 * Errors: misuse (wrong types, unknown option keys) raises; failures of the world
 * (unreadable files, invalid persisted state) return nil, message. Files that cannot be
 * used are never an error: they are listed in `skipped` with a reason.
 *
 *   descriptor.options([settings]) -> opts
 *   descriptor.select(files, opts) -> candidates, skipped
 *   descriptor.preprocess(files, opts) -> kept, skipped
 *   descriptor.chunk(kept, opts) -> chunked
 *   descriptor.embed(chunked, opts) -> vector | nil, reason
 *   descriptor.tokens(text) -> { token, ... }
 *   descriptor.reducer(opts) -> reducer
 *   descriptor.load_reducer(blob, opts) -> reducer | nil, message
 *   descriptor.reducer_from_rows(rows, opts) -> reducer | nil, message
 *   descriptor.bounds(settings_or_opts) -> lower, upper
 *   descriptor.clip(measures, lower, upper) -> clipped
 *   descriptor.compute(files, opts[, reducer, commit_hash]) -> measures, info
 *                                                            | nil, reason, info
 *   reducer:observe(hash, vector) -> measures, refitted   reducer:project(vector)
 *   reducer:refit() reducer:history_len() reducer:fitted() reducer:stats() reducer:pca()
 *   reducer:save() reducer:rows() reducer:take_changes()
 * Shapes are documented in docs/descriptor.md.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "descriptor.h"
#include "lmod.h"
#include "reducer.h"

#define SCRATCH_TYPE "loreley.descriptor.scratch"
#define REDUCER_TYPE "loreley.descriptor.reducer"

static const char *const OPTION_KEYS[] = {
    "repo_root", "read", "embed",
    "max_files", "max_file_size_kb", "allowed_extensions", "allowed_filenames",
    "excluded_globs", "max_blank_lines", "tab_width", "strip_comments",
    "strip_block_comments",
    "chunk_target_lines", "chunk_min_lines", "chunk_overlap_lines", "max_chunks_per_file",
    "boundary_keywords",
    "dimensions", "max_chunks_per_commit",
    "target_dims", "min_fit_samples", "history_size", "refit_interval", "normalize", "whiten",
    "lower_bounds", "upper_bounds", "clip",
    NULL,
};

/* ---- scratch: C memory owned by a userdata, so a Lua error cannot leak it ------------------ */

typedef struct scratch {
    descriptor_options o;
    int have_options;
    descriptor_selection sel;
    descriptor_workspace *ws;
    descriptor_chunks chunks;
    descriptor_buf buf;
    void **mem;                 /* other malloc'ed blocks */
    size_t nmem, capmem;
} scratch;

static void scratch_release(scratch *s)
{
    if (s->have_options)
        descriptor_options_free(&s->o);
    s->have_options = 0;
    descriptor_selection_free(&s->sel);
    descriptor_workspace_free(s->ws);
    s->ws = NULL;
    descriptor_chunks_free(&s->chunks);
    descriptor_buf_free(&s->buf);
    for (size_t i = 0; i < s->nmem; i++)
        free(s->mem[i]);
    free(s->mem);
    s->mem = NULL;
    s->nmem = s->capmem = 0;
}

static int scratch_gc(lua_State *L)
{
    scratch_release(luaL_checkudata(L, 1, SCRATCH_TYPE));
    return 0;
}

/* Pushes a new scratch userdata and returns it. */
static scratch *scratch_new(lua_State *L)
{
    scratch *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    luaL_getmetatable(L, SCRATCH_TYPE);
    lua_setmetatable(L, -2);
    return s;
}

/* malloc owned by the scratch; raises on ENOMEM. */
static void *scratch_alloc(lua_State *L, scratch *s, size_t size)
{
    if (s->nmem == s->capmem) {
        size_t nc = s->capmem ? s->capmem * 2 : 8;
        void **m = realloc(s->mem, nc * sizeof *m);
        if (!m)
            luaL_error(L, "descriptor: out of memory");
        s->mem = m;
        s->capmem = nc;
    }
    void *p = calloc(1, size ? size : 1);
    if (!p)
        luaL_error(L, "descriptor: out of memory");
    s->mem[s->nmem++] = p;
    return p;
}

static void nomem(lua_State *L)
{
    luaL_error(L, "descriptor: out of memory");
}

/* ---- options ------------------------------------------------------------------------------- */

/* Reads opts[key] as an array of strings into a temporary descriptor_str array (strings
 * stay anchored in the options table). Returns the count, or -1 when absent. */
static long read_string_list(lua_State *L, int idx, const char *key, scratch *s,
                             descriptor_str **out)
{
    lua_getfield(L, idx, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return -1;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "option '%s' must be an array of strings, got %s", key, luaL_typename(L, -1));
    size_t n = lua_objlen(L, -1);
    descriptor_str *items = scratch_alloc(L, s, n * sizeof *items);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "option '%s'[%d] must be a string, got %s", key, (int)i + 1,
                       luaL_typename(L, -1));
        items[i].ptr = lua_tolstring(L, -1, &items[i].len);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *out = items;
    return (long)n;
}

static long long opt_int(lua_State *L, int idx, const char *key, long long def)
{
    return (long long)lmod_opt_integer(L, idx, key, (lua_Integer)def);
}

static void reducer_params_from(lua_State *L, int idx, reducer_params *p)
{
    reducer_params_init(p, opt_int(L, idx, "target_dims", 4),
                        opt_int(L, idx, "min_fit_samples", 32),
                        opt_int(L, idx, "history_size", 4096),
                        opt_int(L, idx, "refit_interval", 50),
                        lmod_opt_boolean(L, idx, "normalize", 1),
                        lmod_opt_boolean(L, idx, "whiten", 0));
}

/*
 * Validates the options table at idx (nil = all defaults) and fills s->o. Unknown keys
 * and wrong types raise, naming the key.
 */
static descriptor_options *check_options(lua_State *L, int idx, scratch *s, const char *what)
{
    idx = lmod_absindex(L, idx);
    lmod_check_options(L, idx, OPTION_KEYS, what);
    if (descriptor_options_init(&s->o) != 0)
        nomem(L);
    s->have_options = 1;
    if (!lua_istable(L, idx))
        return &s->o;
    descriptor_options *o = &s->o;
    o->max_files = opt_int(L, idx, "max_files", o->max_files);
    o->max_file_size_kb = opt_int(L, idx, "max_file_size_kb", o->max_file_size_kb);
    o->max_blank_lines = opt_int(L, idx, "max_blank_lines", o->max_blank_lines);
    o->tab_width = opt_int(L, idx, "tab_width", o->tab_width);
    o->strip_comments = lmod_opt_boolean(L, idx, "strip_comments", o->strip_comments);
    o->strip_block_comments =
        lmod_opt_boolean(L, idx, "strip_block_comments", o->strip_block_comments);
    o->chunk_target_lines = opt_int(L, idx, "chunk_target_lines", o->chunk_target_lines);
    o->chunk_min_lines = opt_int(L, idx, "chunk_min_lines", o->chunk_min_lines);
    o->chunk_overlap_lines = opt_int(L, idx, "chunk_overlap_lines", o->chunk_overlap_lines);
    o->max_chunks_per_file = opt_int(L, idx, "max_chunks_per_file", o->max_chunks_per_file);
    o->dimensions = opt_int(L, idx, "dimensions", 0);
    if (o->dimensions < 0 || o->dimensions > DESCRIPTOR_MAX_DIMENSIONS)
        luaL_error(L, "option 'dimensions' must be between 0 and %d, got %lld",
                   DESCRIPTOR_MAX_DIMENSIONS, o->dimensions);
    o->max_chunks_per_commit = opt_int(L, idx, "max_chunks_per_commit", o->max_chunks_per_commit);
    descriptor_str *items;
    long n;
    if ((n = read_string_list(L, idx, "allowed_extensions", s, &items)) >= 0 &&
        descriptor_options_set_extensions(o, items, (size_t)n) != 0)
        nomem(L);
    if ((n = read_string_list(L, idx, "allowed_filenames", s, &items)) >= 0 &&
        descriptor_options_set_filenames(o, items, (size_t)n) != 0)
        nomem(L);
    if ((n = read_string_list(L, idx, "excluded_globs", s, &items)) >= 0 &&
        descriptor_options_set_globs(o, items, (size_t)n) != 0)
        nomem(L);
    if ((n = read_string_list(L, idx, "boundary_keywords", s, &items)) >= 0 &&
        descriptor_options_set_keywords(o, items, (size_t)n) != 0)
        nomem(L);
    /* Type checks of the keys used elsewhere, so a mistake fails at once. */
    reducer_params unused;
    reducer_params_from(L, idx, &unused);
    lmod_opt_boolean(L, idx, "clip", 1);
    static const char *const bound_keys[] = { "lower_bounds", "upper_bounds" };
    for (int b = 0; b < 2; b++) {
        lua_getfield(L, idx, bound_keys[b]);
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                luaL_error(L, "option '%s' must be an array of numbers, got %s", bound_keys[b],
                           luaL_typename(L, -1));
            for (size_t i = 1; i <= lua_objlen(L, -1); i++) {
                lua_rawgeti(L, -1, (int)i);
                if (lua_type(L, -1) != LUA_TNUMBER)
                    luaL_error(L, "option '%s'[%d] must be a number, got %s", bound_keys[b],
                               (int)i, luaL_typename(L, -1));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lmod_opt_string(L, idx, "repo_root", NULL);
    lua_getfield(L, idx, "read");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "option 'read' must be a function, got %s", luaL_typename(L, -1));
    lua_getfield(L, idx, "embed");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "option 'embed' must be a function, got %s", luaL_typename(L, -1));
    lua_pop(L, 2);
    return o;
}

/* Copies settings[from] (raw) into opts[to] when it is not nil. opts at -1. */
static void copy_field(lua_State *L, int settings, const char *from, const char *to)
{
    lua_pushstring(L, from);
    lua_rawget(L, settings);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (lua_istable(L, -1)) {        /* copy lists, so editing opts leaves settings alone */
        int src = lua_gettop(L);
        size_t n = lua_objlen(L, src);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, src, (int)i);
            lua_rawseti(L, -2, (int)i);
        }
        lua_remove(L, src);
    }
    lua_setfield(L, -2, to);
}

/* descriptor.options([settings]) -> opts: every knob from a loreley.settings table (or
 * any table with the same field names); missing fields keep the contract defaults. */
static int l_options(lua_State *L)
{
    static const char *const map[][2] = {
        { "mapelites_preprocess_max_files", "max_files" },
        { "mapelites_preprocess_max_file_size_kb", "max_file_size_kb" },
        { "mapelites_preprocess_allowed_extensions", "allowed_extensions" },
        { "mapelites_preprocess_allowed_filenames", "allowed_filenames" },
        { "mapelites_preprocess_excluded_globs", "excluded_globs" },
        { "mapelites_preprocess_max_blank_lines", "max_blank_lines" },
        { "mapelites_preprocess_tab_width", "tab_width" },
        { "mapelites_preprocess_strip_comments", "strip_comments" },
        { "mapelites_preprocess_strip_block_comments", "strip_block_comments" },
        { "mapelites_chunk_target_lines", "chunk_target_lines" },
        { "mapelites_chunk_min_lines", "chunk_min_lines" },
        { "mapelites_chunk_overlap_lines", "chunk_overlap_lines" },
        { "mapelites_chunk_max_chunks_per_file", "max_chunks_per_file" },
        { "mapelites_chunk_boundary_keywords", "boundary_keywords" },
        { "mapelites_code_embedding_dimensions", "dimensions" },
        { "mapelites_code_embedding_max_chunks_per_commit", "max_chunks_per_commit" },
        { "mapelites_dimensionality_target_dims", "target_dims" },
        { "mapelites_dimensionality_min_fit_samples", "min_fit_samples" },
        { "mapelites_dimensionality_history_size", "history_size" },
        { "mapelites_dimensionality_refit_interval", "refit_interval" },
        { "mapelites_dimensionality_penultimate_normalize", "normalize" },
        { "loreley_dimension_reduction_whiten", "whiten" },
        { "mapelites_feature_lower_bounds", "lower_bounds" },
        { "mapelites_feature_upper_bounds", "upper_bounds" },
        { "mapelites_feature_clip", "clip" },
        { "scheduler_repo_root", "repo_root" },
    };
    int has = lua_istable(L, 1);
    if (!lua_isnoneornil(L, 1) && !has)
        return luaL_argerror(L, 1, "expected a settings table or nil");
    lua_newtable(L);
    if (has)
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            copy_field(L, 1, map[i][0], map[i][1]);
    /* Validate now: a bad setting fails here, not at the first ingest. */
    scratch *s = scratch_new(L);
    check_options(L, -2, s, "descriptor.options");
    scratch_release(s);
    lua_pop(L, 1);
    return 1;
}

/* ---- files ---------------------------------------------------------------------------------- */

/* Python truthiness of the value at -1: nil, false, 0 and "" are false. */
static int py_truthy(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return 0;
    case LUA_TBOOLEAN: return lua_toboolean(L, idx);
    case LUA_TNUMBER: return lua_tonumber(L, idx) != 0;
    case LUA_TSTRING: return lua_objlen(L, idx) > 0;
    default: return 1;
    }
}

/* int() of the reference's _coerce_int: numbers truncate, booleans are 0/1, strings
 * must be an integer after stripping (underscores between digits allowed), else 0. */
static long long coerce_count(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx);
    case LUA_TNUMBER: {
        double v = lua_tonumber(L, idx);
        if (v != v)
            return 0;
        if (v >= 9.2e18)
            return INT64_MAX;
        if (v <= -9.2e18)
            return INT64_MIN;
        return (long long)v;      /* truncation toward zero, as int() */
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        size_t a = 0, b = len;
        while (a < b && (s[a] == ' ' || (s[a] >= 9 && s[a] <= 13)))
            a++;
        while (b > a && (s[b - 1] == ' ' || (s[b - 1] >= 9 && s[b - 1] <= 13)))
            b--;
        int neg = 0;
        if (a < b && (s[a] == '+' || s[a] == '-'))
            neg = s[a++] == '-';
        if (a == b)
            return 0;
        long long v = 0;
        int prev_digit = 0;
        for (size_t i = a; i < b; i++) {
            if (s[i] >= '0' && s[i] <= '9') {
                if (v < (INT64_MAX - 9) / 10)
                    v = v * 10 + (s[i] - '0');
                prev_digit = 1;
            } else if (s[i] == '_' && prev_digit && i + 1 < b && s[i + 1] >= '0' &&
                       s[i + 1] <= '9') {
                prev_digit = 0;
            } else {
                return 0;
            }
        }
        return neg ? -v : v;
    }
    default:
        return 0;
    }
}

typedef struct file_entry {
    int ok;                     /* 0: dropped at coercion */
    descriptor_str path;
    long long change_count;
    descriptor_str content;     /* ptr NULL: no inline content */
} file_entry;

/*
 * Reads the files array at idx into entries (coercion of the reference: a string is a
 * path; {path, count} a pair; a table takes path|file|filename and
 * change_count|lines_changed|delta, first truthy wins). Strings are anchored in the
 * table at `anchor`.
 */
static file_entry *read_files(lua_State *L, int idx, int anchor, scratch *s, size_t *count)
{
    idx = lmod_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    size_t n = lua_objlen(L, idx);
    file_entry *files = scratch_alloc(L, s, n * sizeof *files);
    for (size_t i = 0; i < n; i++) {
        file_entry *f = &files[i];
        lua_rawgeti(L, idx, (int)i + 1);
        int e = lua_gettop(L);
        if (lua_type(L, e) == LUA_TSTRING) {
            f->ok = 1;
            f->path.ptr = lua_tolstring(L, e, &f->path.len);
        } else if (lua_istable(L, e)) {
            static const char *const path_keys[] = { "path", "file", "filename" };
            static const char *const count_keys[] = { "change_count", "lines_changed", "delta" };
            int have_named = 0;
            for (int k = 0; k < 3; k++) {
                lua_getfield(L, e, path_keys[k]);
                have_named |= !lua_isnil(L, -1);
                lua_pop(L, 1);
            }
            if (!have_named) {
                lua_rawgeti(L, e, 1);
                if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, e) == 2) {
                    f->ok = 1;
                    f->path.ptr = lua_tolstring(L, -1, &f->path.len);
                    lua_rawgeti(L, e, 2);
                    f->change_count = coerce_count(L, -1);
                    lua_pop(L, 1);
                }
                lua_pop(L, 1);
            } else {
                for (int k = 0; k < 3; k++) {
                    lua_getfield(L, e, path_keys[k]);
                    if (py_truthy(L, -1)) {
                        if (lua_type(L, -1) == LUA_TSTRING) {
                            f->ok = 1;
                            f->path.ptr = lua_tolstring(L, -1, &f->path.len);
                        }
                        lua_pop(L, 1);
                        break;
                    }
                    lua_pop(L, 1);
                }
                for (int k = 0; k < 3; k++) {
                    lua_getfield(L, e, count_keys[k]);
                    if (py_truthy(L, -1) || k == 2) {
                        f->change_count = coerce_count(L, -1);
                        lua_pop(L, 1);
                        break;
                    }
                    lua_pop(L, 1);
                }
                lua_getfield(L, e, "content");
                if (lua_type(L, -1) == LUA_TSTRING) {
                    f->content.ptr = lua_tolstring(L, -1, &f->content.len);
                    lua_rawseti(L, anchor, (int)(2 * i + 2));
                } else {
                    lua_pop(L, 1);
                }
            }
        }
        if (f->ok) {
            lua_pushlstring(L, f->path.ptr, f->path.len);
            f->path.ptr = lua_tostring(L, -1);
            lua_rawseti(L, anchor, (int)(2 * i + 1));
        }
        lua_settop(L, e - 1);
    }
    *count = n;
    return files;
}

/* Pushes {path=, reason=, stage=} and appends it to the array at arr. */
static void push_skip(lua_State *L, int arr, const char *path, size_t plen, const char *reason,
                      const char *stage)
{
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, path, plen);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, stage);
    lua_setfield(L, -2, "stage");
    lua_rawseti(L, arr, (int)lua_objlen(L, arr) + 1);
}

/* Selection of read_files' entries; coercion drops become skips. */
static void run_select(lua_State *L, scratch *s, const char *root, const file_entry *files,
                       size_t n, int skipped)
{
    descriptor_file_in *in = scratch_alloc(L, s, n * sizeof *in);
    size_t *back = scratch_alloc(L, s, n * sizeof *back);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!files[i].ok) {
            push_skip(L, skipped, "", 0, "no usable path in the entry", "select");
            continue;
        }
        in[m].path = files[i].path;
        in[m].change_count = files[i].change_count;
        back[m++] = i;
    }
    if (descriptor_select(&s->o, root, in, m, &s->sel) != 0)
        nomem(L);
    for (size_t i = 0; i < s->sel.candidate_count; i++)
        s->sel.candidates[i].input = back[s->sel.candidates[i].input];
    for (size_t i = 0; i < s->sel.skipped_count; i++) {
        descriptor_skip *k = &s->sel.skipped[i];
        push_skip(L, skipped, k->path, k->path_len, k->reason, "select");
    }
}

/* descriptor.select(files, opts) -> candidates, skipped */
static int l_select(lua_State *L)
{
    lua_settop(L, 2);
    scratch *s = scratch_new(L);                       /* 3 */
    check_options(L, 2, s, "descriptor.select");
    const char *root = lmod_opt_string(L, 2, "repo_root", NULL);
    lua_newtable(L);                                   /* 4: anchor */
    size_t n;
    file_entry *files = read_files(L, 1, 4, s, &n);
    lua_newtable(L);                                   /* 5: candidates */
    lua_newtable(L);                                   /* 6: skipped */
    run_select(L, s, root, files, n, 6);
    for (size_t i = 0; i < s->sel.candidate_count; i++) {
        const descriptor_candidate *c = &s->sel.candidates[i];
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, c->path, c->path_len);
        lua_setfield(L, -2, "path");
        lua_pushnumber(L, (lua_Number)c->change_count);
        lua_setfield(L, -2, "change_count");
        if (files[c->input].content.ptr) {
            lua_pushlstring(L, files[c->input].content.ptr, files[c->input].content.len);
            lua_setfield(L, -2, "content");
        }
        lua_rawseti(L, 5, (int)i + 1);
    }
    scratch_release(s);
    return 2;
}

/*
 * Content of candidate c: inline, from opts.read(path, limit), or from the working tree
 * under repo_root. Pushes the content string and returns 1, or pushes a reason and
 * returns 0.
 */
static int load_content(lua_State *L, scratch *s, int opts, const char *root,
                        const file_entry *f, const descriptor_candidate *c)
{
    size_t limit = descriptor_size_limit(&s->o);
    if (f->content.ptr) {
        lua_pushlstring(L, f->content.ptr, f->content.len);
        return 1;
    }
    if (lua_istable(L, opts)) {
        lua_getfield(L, opts, "read");
        if (lua_isfunction(L, -1)) {
            lua_pushlstring(L, c->path, c->path_len);
            lua_pushnumber(L, (lua_Number)limit);
            lua_call(L, 2, 2);
            if (lua_type(L, -2) == LUA_TSTRING) {
                lua_pop(L, 1);
                return 1;
            }
            if (!lua_isnil(L, -2))
                luaL_error(L, "opts.read(%s) returned %s; expected a string or nil, reason",
                           c->path, luaL_typename(L, -2));
            const char *why = lua_tostring(L, -1);
            lua_pushfstring(L, "unreadable: %s", why ? why : "opts.read returned nil");
            lua_replace(L, -3);
            lua_pop(L, 1);
            return 0;
        }
        lua_pop(L, 1);
    }
    if (!root) {
        lua_pushstring(L, "no content (give content, opts.read or opts.repo_root)");
        return 0;
    }
    char reason[256];
    int rc = descriptor_read_file(root, c->path, limit, &s->buf, reason, sizeof reason);
    if (rc == DESCRIPTOR_ENOMEM)
        nomem(L);
    if (rc == DESCRIPTOR_SKIP_OVERSIZE) {
        descriptor_skip_reason(&s->o, rc, reason, sizeof reason);
        lua_pushstring(L, reason);
        return 0;
    }
    if (rc != 0) {
        lua_pushfstring(L, "unreadable: %s", reason);
        return 0;
    }
    lua_pushlstring(L, s->buf.data, s->buf.len);
    return 1;
}

/* descriptor.preprocess(files, opts) -> kept, skipped */
static int l_preprocess(lua_State *L)
{
    lua_settop(L, 2);
    scratch *s = scratch_new(L);                       /* 3 */
    check_options(L, 2, s, "descriptor.preprocess");
    const char *root = lmod_opt_string(L, 2, "repo_root", NULL);
    lua_newtable(L);                                   /* 4: anchor */
    size_t n;
    file_entry *files = read_files(L, 1, 4, s, &n);
    lua_newtable(L);                                   /* 5: kept */
    lua_newtable(L);                                   /* 6: skipped */
    run_select(L, s, root, files, n, 6);
    size_t kept = 0;
    for (size_t i = 0; i < s->sel.candidate_count; i++) {
        const descriptor_candidate *c = &s->sel.candidates[i];
        if (!load_content(L, s, 2, root, &files[c->input], c)) {
            push_skip(L, 6, c->path, c->path_len, lua_tostring(L, -1), "load");
            lua_pop(L, 1);
            continue;
        }
        size_t len;
        const char *raw = lua_tolstring(L, -1, &len);
        int rc = descriptor_clean(&s->o, raw, len, &s->buf);
        lua_pop(L, 1);
        if (rc == DESCRIPTOR_ENOMEM)
            nomem(L);
        if (rc != 0) {
            char reason[200];
            descriptor_skip_reason(&s->o, rc, reason, sizeof reason);
            push_skip(L, 6, c->path, c->path_len, reason, "clean");
            continue;
        }
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, c->path, c->path_len);
        lua_setfield(L, -2, "path");
        lua_pushnumber(L, (lua_Number)c->change_count);
        lua_setfield(L, -2, "change_count");
        lua_pushlstring(L, s->buf.data, s->buf.len);
        lua_setfield(L, -2, "content");
        lua_rawseti(L, 5, (int)++kept);
    }
    scratch_release(s);
    return 2;
}

/* ---- chunk --------------------------------------------------------------------------------- */

/* Pushes one chunked-file table for (path, change_count) from s->chunks. */
static void push_chunked(lua_State *L, scratch *s, const char *path, size_t plen,
                         long long change_count)
{
    char *pure = scratch_alloc(L, s, plen + 2);
    size_t pl = descriptor_pure_path(path, plen, pure);
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, pure, pl);
    lua_setfield(L, -2, "path");
    lua_pushnumber(L, (lua_Number)change_count);
    lua_setfield(L, -2, "change_count");
    lua_pushnumber(L, (lua_Number)s->chunks.total_lines);
    lua_setfield(L, -2, "total_lines");
    lua_createtable(L, (int)s->chunks.count, 0);
    for (size_t i = 0; i < s->chunks.count; i++) {
        const descriptor_chunk *ch = &s->chunks.items[i];
        lua_createtable(L, 0, 7);
        char suffix[40];                 /* "<path>::chunk-%04d" */
        int sl = snprintf(suffix, sizeof suffix, "::chunk-%04zu", i);
        lua_pushlstring(L, pure, pl);
        lua_pushlstring(L, suffix, (size_t)sl);
        lua_concat(L, 2);
        lua_setfield(L, -2, "id");
        lua_pushnumber(L, (lua_Number)i);
        lua_setfield(L, -2, "index");
        lua_pushnumber(L, (lua_Number)ch->start_line);
        lua_setfield(L, -2, "start_line");
        lua_pushnumber(L, (lua_Number)ch->end_line);
        lua_setfield(L, -2, "end_line");
        lua_pushnumber(L, (lua_Number)ch->line_count);
        lua_setfield(L, -2, "line_count");
        lua_pushnumber(L, (lua_Number)change_count);
        lua_setfield(L, -2, "change_count");
        lua_pushlstring(L, s->chunks.text.data + ch->offset, ch->len);
        lua_setfield(L, -2, "content");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "chunks");
}

static const char *field_string(lua_State *L, int t, const char *key, size_t *len,
                                const char *what, size_t i)
{
    lua_getfield(L, t, key);
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s: entry %d: '%s' must be a string, got %s", what, (int)i, key,
                   luaL_typename(L, -1));
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1);                   /* still anchored in the entry */
    return s;
}

static double field_number(lua_State *L, int t, const char *key, double def, const char *what,
                           size_t i)
{
    lua_getfield(L, t, key);
    double v = def;
    if (lua_type(L, -1) == LUA_TNUMBER)
        v = lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: entry %d: '%s' must be a number, got %s", what, (int)i, key,
                   luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* descriptor.chunk(kept, opts) -> chunked */
static int l_chunk(lua_State *L)
{
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    scratch *s = scratch_new(L);
    check_options(L, 2, s, "descriptor.chunk");
    size_t n = lua_objlen(L, 1);
    lua_createtable(L, (int)n, 0);                     /* 4: result */
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, (int)i);
        if (!lua_istable(L, -1))
            luaL_error(L, "descriptor.chunk: entry %d must be a table, got %s", (int)i,
                       luaL_typename(L, -1));
        int e = lua_gettop(L);
        size_t plen, clen;
        const char *path = field_string(L, e, "path", &plen, "descriptor.chunk", i);
        const char *content = field_string(L, e, "content", &clen, "descriptor.chunk", i);
        double cc = field_number(L, e, "change_count", 0, "descriptor.chunk", i);
        if (descriptor_chunk_text(&s->o, content, clen, &s->chunks) != 0)
            nomem(L);
        push_chunked(L, s, path, plen, (long long)cc);
        lua_rawseti(L, 4, (int)i);
        lua_settop(L, 4);
    }
    scratch_release(s);
    return 1;
}

/* ---- embed ---------------------------------------------------------------------------------- */

/* descriptor.embed(chunked, opts) -> vector | nil, reason */
static int l_embed(lua_State *L)
{
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    scratch *s = scratch_new(L);
    check_options(L, 2, s, "descriptor.embed");
    size_t n = lua_objlen(L, 1);
    descriptor_chunked_file *files = scratch_alloc(L, s, n * sizeof *files);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 1, (int)i + 1);
        if (!lua_istable(L, -1))
            luaL_error(L, "descriptor.embed: entry %d must be a table, got %s", (int)i + 1,
                       luaL_typename(L, -1));
        int e = lua_gettop(L);
        descriptor_chunked_file *f = &files[i];
        f->path.ptr = field_string(L, e, "path", &f->path.len, "descriptor.embed", i + 1);
        f->change_count = (long long)field_number(L, e, "change_count", 0, "descriptor.embed", i + 1);
        f->total_lines = (size_t)field_number(L, e, "total_lines", 0, "descriptor.embed", i + 1);
        lua_getfield(L, e, "chunks");
        if (!lua_istable(L, -1))
            luaL_error(L, "descriptor.embed: entry %d: 'chunks' must be a table, got %s",
                       (int)i + 1, luaL_typename(L, -1));
        int ct = lua_gettop(L);
        size_t m = lua_objlen(L, ct);
        descriptor_str *chunks = scratch_alloc(L, s, m * sizeof *chunks);
        size_t *lines = scratch_alloc(L, s, m * sizeof *lines);
        for (size_t j = 0; j < m; j++) {
            lua_rawgeti(L, ct, (int)j + 1);
            if (!lua_istable(L, -1))
                luaL_error(L, "descriptor.embed: entry %d: chunk %d must be a table",
                           (int)i + 1, (int)j + 1);
            int c = lua_gettop(L);
            lua_getfield(L, c, "content");
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "descriptor.embed: entry %d: chunk %d: 'content' must be a string",
                           (int)i + 1, (int)j + 1);
            chunks[j].ptr = lua_tolstring(L, -1, &chunks[j].len);
            double lc = field_number(L, c, "line_count", 0, "descriptor.embed", i + 1);
            lines[j] = lc > 0 ? (size_t)lc : 0;
            lua_settop(L, ct);
        }
        f->chunks = chunks;
        f->line_counts = lines;
        f->chunk_count = m;
        lua_settop(L, 3);
    }
    size_t dims = descriptor_dimensions(&s->o);
    descriptor_embedder *emb = descriptor_embedder_new(dims);
    if (!emb)
        nomem(L);
    double *v = malloc(dims * sizeof *v);
    size_t used = 0;
    int rc = v ? descriptor_embed_files(emb, &s->o, files, n, v, &used) : DESCRIPTOR_ENOMEM;
    descriptor_embedder_free(emb);
    if (rc == DESCRIPTOR_ENOMEM) {
        free(v);
        nomem(L);
    }
    if (rc != 0) {
        free(v);
        scratch_release(s);
        return lmod_fail(L, "Unable to derive final embedding.");
    }
    lmod_push_number_array(L, v, dims);
    free(v);
    scratch_release(s);
    return 1;
}

static void push_token(const char *token, size_t len, void *ctx)
{
    lua_State *L = ctx;
    lua_pushlstring(L, token, len);
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
}

/* descriptor.tokens(text) -> the tokens the embedding sees */
static int l_tokens(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_newtable(L);
    descriptor_tokens(text, len, push_token, L);
    return 1;
}

/* ---- bounds and clip ------------------------------------------------------------------------- */

/* Reads an optional array of numbers (raw field) into a malloc'ed array. */
static double *raw_number_list(lua_State *L, int t, const char *k1, const char *k2, scratch *s,
                               size_t *n)
{
    *n = 0;
    lua_pushstring(L, k1);
    lua_rawget(L, t);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushstring(L, k2);
        lua_rawget(L, t);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s must be an array of numbers, got %s", k1, luaL_typename(L, -1));
    size_t m = lua_objlen(L, -1);
    double *v = scratch_alloc(L, s, m * sizeof *v);
    for (size_t i = 0; i < m; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s[%d] must be a number, got %s", k1, (int)i + 1, luaL_typename(L, -1));
        v[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *n = m;
    return v;
}

static size_t raw_target_dims(lua_State *L, int t)
{
    lua_Number v = 4;
    const char *keys[] = { "target_dims", "mapelites_dimensionality_target_dims" };
    for (int i = 0; i < 2; i++) {
        lua_pushstring(L, keys[i]);
        lua_rawget(L, t);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            v = lua_tonumber(L, -1);
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
    }
    if (v > 4096)
        luaL_error(L, "target_dims %f is out of range", v);
    return v < 1 ? 1 : (size_t)v;
}

/* Bounds of t (opts or settings) into lo/hi (scratch memory); returns dims. */
static size_t bounds_of(lua_State *L, int t, scratch *s, double **lo, double **hi)
{
    size_t dims = raw_target_dims(L, t), nl, nu;
    double *lower = raw_number_list(L, t, "lower_bounds", "mapelites_feature_lower_bounds", s, &nl);
    double *upper = raw_number_list(L, t, "upper_bounds", "mapelites_feature_upper_bounds", s, &nu);
    *lo = scratch_alloc(L, s, dims * sizeof **lo);
    *hi = scratch_alloc(L, s, dims * sizeof **hi);
    descriptor_bounds(lower, nl, upper, nu, dims, *lo, *hi);
    return dims;
}

/* descriptor.bounds(settings_or_opts) -> lower, upper */
static int l_bounds(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    scratch *s = scratch_new(L);
    double *lo, *hi;
    size_t dims = bounds_of(L, 1, s, &lo, &hi);
    lmod_push_number_array(L, lo, dims);
    lmod_push_number_array(L, hi, dims);
    scratch_release(s);
    return 2;
}

/* descriptor.clip(measures, lower, upper) -> clipped copy */
static int l_clip(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t n = lua_objlen(L, 1);
    scratch *s = scratch_new(L);
    double *v = scratch_alloc(L, s, n * sizeof *v), *lo = scratch_alloc(L, s, n * sizeof *lo),
           *hi = scratch_alloc(L, s, n * sizeof *hi);
    lmod_check_number_array(L, 1, v, n, "measures");
    lmod_check_number_array(L, 2, lo, n, "lower bounds");
    lmod_check_number_array(L, 3, hi, n, "upper bounds");
    descriptor_clip(v, lo, hi, n);
    lmod_push_number_array(L, v, n);
    scratch_release(s);
    return 1;
}

/* ---- reducer --------------------------------------------------------------------------------- */

typedef struct reducer_box {
    reducer *r;
} reducer_box;

static reducer *check_reducer(lua_State *L, int idx)
{
    reducer_box *b = luaL_checkudata(L, idx, REDUCER_TYPE);
    if (!b->r)
        luaL_error(L, "reducer is closed");
    return b->r;
}

static reducer_box *push_reducer_box(lua_State *L)
{
    reducer_box *b = lua_newuserdata(L, sizeof *b);
    b->r = NULL;
    luaL_getmetatable(L, REDUCER_TYPE);
    lua_setmetatable(L, -2);
    return b;
}

static double wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* descriptor.reducer(opts) -> reducer */
static int l_reducer(lua_State *L)
{
    lua_settop(L, 1);
    lmod_check_options(L, 1, OPTION_KEYS, "descriptor.reducer");
    reducer_params p;
    reducer_params_from(L, 1, &p);
    reducer_box *b = push_reducer_box(L);
    b->r = reducer_new(&p);
    if (!b->r)
        nomem(L);
    return 1;
}

/* Reads the vector at idx (array of finite numbers) into scratch memory. */
static double *check_vector(lua_State *L, int idx, scratch *s, size_t *n)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    size_t m = lua_objlen(L, idx);
    if (m == 0)
        luaL_argerror(L, idx, "vector is empty");
    double *v = scratch_alloc(L, s, m * sizeof *v);
    for (size_t i = 0; i < m; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "vector[%d] must be a number, got %s", (int)i + 1, luaL_typename(L, -1));
        v[i] = lua_tonumber(L, -1);
        if (!isfinite(v[i]))
            luaL_error(L, "vector[%d] is not finite", (int)i + 1);
        lua_pop(L, 1);
    }
    *n = m;
    return v;
}

static int reducer_observe_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    size_t hl;
    const char *hash = luaL_checklstring(L, 2, &hl);
    if (hl == 0)
        return luaL_argerror(L, 2, "commit hash is empty");
    scratch *s = scratch_new(L);
    size_t F;
    double *v = check_vector(L, 3, s, &F);
    size_t D = reducer_get_params(r)->target_dims;
    double *m = scratch_alloc(L, s, D * sizeof *m);
    int refitted;
    int rc = reducer_observe(r, hash, hl, v, F, wall_clock(), m, &refitted);
    if (rc != 0)
        nomem(L);
    lmod_push_number_array(L, m, D);
    lua_pushboolean(L, refitted);
    scratch_release(s);
    return 2;
}

static int reducer_project_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    scratch *s = scratch_new(L);
    size_t F;
    double *v = check_vector(L, 2, s, &F);
    size_t D = reducer_get_params(r)->target_dims;
    double *m = scratch_alloc(L, s, D * sizeof *m);
    int rc = reducer_project(r, v, F, m);
    if (rc == REDUCER_EINVAL)
        luaL_error(L, "reducer:project: vector has %d values, the history has %d",
                   (int)F, (int)reducer_feature_count(r));
    if (rc != 0)
        nomem(L);
    lmod_push_number_array(L, m, D);
    scratch_release(s);
    return 1;
}

static int reducer_refit_l(lua_State *L)
{
    int rc = reducer_refit(check_reducer(L, 1), wall_clock());
    if (rc < 0)
        nomem(L);
    lua_pushboolean(L, rc == 1);
    return 1;
}

static int reducer_history_len_l(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)reducer_history_len(check_reducer(L, 1)));
    return 1;
}

static int reducer_fitted_l(lua_State *L)
{
    lua_pushboolean(L, reducer_model(check_reducer(L, 1)) != NULL);
    return 1;
}

static int reducer_stats_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    const reducer_params *p = reducer_get_params(r);
    const pca_model *m = reducer_model(r);
    lua_createtable(L, 0, 12);
    lua_pushnumber(L, (lua_Number)reducer_history_len(r));
    lua_setfield(L, -2, "history_len");
    lua_pushnumber(L, (lua_Number)reducer_feature_count(r));
    lua_setfield(L, -2, "feature_count");
    lua_pushnumber(L, (lua_Number)reducer_samples_since_fit(r));
    lua_setfield(L, -2, "samples_since_fit");
    lua_pushboolean(L, m != NULL);
    lua_setfield(L, -2, "fitted");
    lua_pushnumber(L, (lua_Number)p->target_dims);
    lua_setfield(L, -2, "target_dims");
    lua_pushnumber(L, (lua_Number)p->min_fit_samples);
    lua_setfield(L, -2, "min_fit_samples");
    lua_pushnumber(L, (lua_Number)p->history_limit);
    lua_setfield(L, -2, "history_limit");
    lua_pushnumber(L, (lua_Number)p->refit_interval);
    lua_setfield(L, -2, "refit_interval");
    if (m) {
        lua_pushnumber(L, (lua_Number)m->k);
        lua_setfield(L, -2, "components");
        lua_pushnumber(L, (lua_Number)m->sample_count);
        lua_setfield(L, -2, "sample_count");
        lua_pushnumber(L, m->fitted_at);
        lua_setfield(L, -2, "fitted_at");
        lmod_push_number_array(L, m->explained_variance_ratio, m->k);
        lua_setfield(L, -2, "explained_variance_ratio");
    }
    return 1;
}

/* reducer:pca() -> {mean=, components={{...}}, explained_variance=, ...} | nil */
static int reducer_pca_l(lua_State *L)
{
    const pca_model *m = reducer_model(check_reducer(L, 1));
    if (!m) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 7);
    lmod_push_number_array(L, m->mean, m->feature_count);
    lua_setfield(L, -2, "mean");
    lua_createtable(L, (int)m->k, 0);
    for (size_t c = 0; c < m->k; c++) {
        lmod_push_number_array(L, m->components + c * m->feature_count, m->feature_count);
        lua_rawseti(L, -2, (int)c + 1);
    }
    lua_setfield(L, -2, "components");
    lmod_push_number_array(L, m->explained_variance, m->k);
    lua_setfield(L, -2, "explained_variance");
    lmod_push_number_array(L, m->explained_variance_ratio, m->k);
    lua_setfield(L, -2, "explained_variance_ratio");
    lua_pushnumber(L, (lua_Number)m->feature_count);
    lua_setfield(L, -2, "feature_count");
    lua_pushnumber(L, (lua_Number)m->sample_count);
    lua_setfield(L, -2, "sample_count");
    lua_pushnumber(L, m->fitted_at);
    lua_setfield(L, -2, "fitted_at");
    return 1;
}

static int reducer_save_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    scratch *s = scratch_new(L);
    if (reducer_save(r, &s->buf) != 0)
        nomem(L);
    lua_pushlstring(L, s->buf.data, s->buf.len);
    scratch_release(s);
    return 1;
}

/* Pushes the projection blob of r (the "no model" blob when there is none). */
static void push_projection(lua_State *L, scratch *s, const reducer *r)
{
    s->buf.len = 0;
    if (pca_encode(reducer_model(r), &s->buf) != 0)
        nomem(L);
    lua_pushlstring(L, s->buf.data, s->buf.len);
}

/* Pushes one history row {seq=, commit_hash=, vector=<F LE float64>}. */
static void push_row(lua_State *L, scratch *s, const reducer_entry *e, size_t F)
{
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)e->seq);
    lua_setfield(L, -2, "seq");
    lua_pushlstring(L, e->hash, e->hash_len);
    lua_setfield(L, -2, "commit_hash");
    s->buf.len = 0;
    if (descriptor_buf_reserve(&s->buf, 8 * F) != 0)
        nomem(L);
    unsigned char *out = (unsigned char *)s->buf.data;
    for (size_t j = 0; j < F; j++) {
        uint64_t u;
        memcpy(&u, &e->vector[j], 8);
        for (int b = 0; b < 8; b++)
            out[8 * j + b] = (unsigned char)(u >> (8 * b));
    }
    lua_pushlstring(L, s->buf.data, 8 * F);
    lua_setfield(L, -2, "vector");
}

static int reducer_rows_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    scratch *s = scratch_new(L);                       /* 2 */
    lua_createtable(L, 0, 3);                          /* 3 */
    if (reducer_model(r)) {
        push_projection(L, s, r);
        lua_setfield(L, 3, "projection");
    }
    lua_pushnumber(L, (lua_Number)reducer_samples_since_fit(r));
    lua_setfield(L, 3, "samples_since_fit");
    size_t n = reducer_history_len(r), F = reducer_feature_count(r);
    const reducer_entry *h = reducer_history(r);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        push_row(L, s, &h[i], F);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, 3, "history");
    reducer_mark_taken(r);
    scratch_release(s);
    return 1;
}

static int reducer_take_changes_l(lua_State *L)
{
    reducer *r = check_reducer(L, 1);
    scratch *s = scratch_new(L);                       /* 2 */
    reducer_changes c;
    reducer_get_changes(r, &c);
    lua_createtable(L, 0, 4);                          /* 3 */
    if (c.projection_changed) {
        push_projection(L, s, r);
        lua_setfield(L, 3, "projection");
    }
    lua_pushnumber(L, (lua_Number)reducer_samples_since_fit(r));
    lua_setfield(L, 3, "samples_since_fit");
    size_t n = reducer_history_len(r), F = reducer_feature_count(r);
    const reducer_entry *h = reducer_history(r);
    lua_createtable(L, (int)(n - c.first_new), 0);
    for (size_t i = c.first_new; i < n; i++) {
        push_row(L, s, &h[i], F);
        lua_rawseti(L, -2, (int)(i - c.first_new) + 1);
    }
    lua_setfield(L, 3, "append");
    lua_pushnumber(L, (lua_Number)c.trim_before_seq);
    lua_setfield(L, 3, "trim_before_seq");
    reducer_mark_taken(r);
    scratch_release(s);
    return 1;
}

static int reducer_gc(lua_State *L)
{
    reducer_box *b = luaL_checkudata(L, 1, REDUCER_TYPE);
    reducer_free(b->r);
    b->r = NULL;
    return 0;
}

static int reducer_tostring(lua_State *L)
{
    reducer_box *b = luaL_checkudata(L, 1, REDUCER_TYPE);
    if (!b->r)
        lua_pushstring(L, "loreley.descriptor.reducer (closed)");
    else
        lua_pushfstring(L, "loreley.descriptor.reducer (%d samples of %d values, %s)",
                        (int)reducer_history_len(b->r), (int)reducer_feature_count(b->r),
                        reducer_model(b->r) ? "fitted" : "not fitted");
    return 1;
}

/* descriptor.load_reducer(blob, opts) -> reducer | nil, message */
static int l_load_reducer(lua_State *L)
{
    size_t len;
    const char *blob = luaL_checklstring(L, 1, &len);
    lmod_check_options(L, 2, OPTION_KEYS, "descriptor.load_reducer");
    reducer_params p;
    reducer_params_from(L, 2, &p);
    reducer_box *b = push_reducer_box(L);
    char err[256];
    b->r = reducer_load(&p, blob, len, err, sizeof err);
    if (!b->r)
        return lmod_fail(L, "%s", err);
    return 1;
}

/* descriptor.reducer_from_rows(rows, opts) -> reducer | nil, message (rows: SHAPES.md) */
static int l_reducer_from_rows(lua_State *L)
{
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    lmod_check_options(L, 2, OPTION_KEYS, "descriptor.reducer_from_rows");
    reducer_params p;
    reducer_params_from(L, 2, &p);
    reducer_box *b = push_reducer_box(L);              /* 3 */
    b->r = reducer_new(&p);
    if (!b->r)
        nomem(L);
    scratch *s = scratch_new(L);                       /* 4 */
    char err[256];
    lua_getfield(L, 1, "history");                     /* 5 */
    if (!lua_isnil(L, 5) && !lua_istable(L, 5))
        return lmod_fail(L, "rows: history must be an array, got %s", luaL_typename(L, 5));
    size_t n = lua_istable(L, 5) ? lua_objlen(L, 5) : 0;
    double *vec = NULL;
    size_t vcap = 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 5, (int)i);
        if (!lua_istable(L, -1))
            return lmod_fail(L, "history row %d: expected a table, got %s", (int)i,
                             luaL_typename(L, -1));
        lua_getfield(L, -1, "seq");
        lua_getfield(L, -2, "commit_hash");
        lua_getfield(L, -3, "vector");
        if (lua_type(L, -3) != LUA_TNUMBER || lua_tonumber(L, -3) < 1 ||
            lua_tonumber(L, -3) > 9007199254740992.0 ||
            lua_tonumber(L, -3) != floor(lua_tonumber(L, -3)))
            return lmod_fail(L, "history row %d: seq must be a positive integer", (int)i);
        if (lua_type(L, -2) != LUA_TSTRING || lua_objlen(L, -2) == 0)
            return lmod_fail(L, "history row %d: commit_hash must be a non-empty string", (int)i);
        if (lua_type(L, -1) != LUA_TSTRING || lua_objlen(L, -1) == 0 || lua_objlen(L, -1) % 8)
            return lmod_fail(L, "history row %d: vector must be a string of little-endian "
                                "float64 values (a non-zero multiple of 8 bytes)", (int)i);
        size_t vl, hl;
        const unsigned char *raw = (const unsigned char *)lua_tolstring(L, -1, &vl);
        const char *hash = lua_tolstring(L, -2, &hl);
        size_t F = vl / 8;
        if (F > vcap) {
            vec = scratch_alloc(L, s, F * sizeof *vec);
            vcap = F;
        }
        for (size_t j = 0; j < F; j++) {
            uint64_t u = 0;
            for (int k = 7; k >= 0; k--)
                u = (u << 8) | raw[8 * j + k];
            memcpy(&vec[j], &u, 8);
        }
        char sub[200];
        int rc = reducer_restore_entry(b->r, (uint64_t)lua_tonumber(L, -3), hash, hl, vec, F,
                                       sub, sizeof sub);
        if (rc == REDUCER_ENOMEM)
            nomem(L);
        if (rc != 0)
            return lmod_fail(L, "history row %d: %s", (int)i, sub);
        lua_settop(L, 5);
    }
    lua_getfield(L, 1, "projection");
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t pl;
        const char *blob = lua_tolstring(L, -1, &pl);
        int rc = reducer_restore_projection(b->r, blob, pl, err, sizeof err);
        if (rc == REDUCER_ENOMEM)
            nomem(L);
        if (rc != 0)
            return lmod_fail(L, "rows: %s", err);
    } else if (!lua_isnil(L, -1)) {
        return lmod_fail(L, "rows: projection must be a string or nil, got %s",
                         luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "samples_since_fit");
    if (!lua_isnil(L, -1)) {
        double v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
        if (v < 0 || v != floor(v) || v > 9007199254740992.0)
            return lmod_fail(L, "rows: samples_since_fit must be a non-negative integer");
        reducer_restore_counter(b->r, (uint64_t)v);
    }
    reducer_restore_finish(b->r);
    scratch_release(s);
    lua_settop(L, 3);
    return 1;
}

/* ---- compute -------------------------------------------------------------------------------- */

/*
 * descriptor.compute(files, opts[, reducer, commit_hash]) -> measures, info
 *                                                        | nil, reason, info
 * Stack: 1 files, 2 opts, 3 reducer, 4 hash, 5 scratch, 6 anchor, 7 info, 8 kept,
 * 9 skipped, 10 chunked (only with opts.embed).
 */
static int l_compute(lua_State *L)
{
    lua_settop(L, 4);
    scratch *s = scratch_new(L);                       /* 5 */
    check_options(L, 2, s, "descriptor.compute");
    reducer *r = lua_isnil(L, 3) ? NULL : check_reducer(L, 3);
    size_t hl = 0;
    const char *hash = NULL;
    if (r) {
        hash = luaL_checklstring(L, 4, &hl);
        if (hl == 0)
            return luaL_argerror(L, 4, "commit hash is empty");
    }
    const char *root = lmod_opt_string(L, 2, "repo_root", NULL);
    int custom_embed = 0;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "embed");
        custom_embed = lua_isfunction(L, -1);
        lua_pop(L, 1);
    }
    lua_newtable(L);                                   /* 6: anchor */
    size_t n;
    file_entry *files = read_files(L, 1, 6, s, &n);
    lua_createtable(L, 0, 8);                          /* 7: info */
    lua_newtable(L);                                   /* 8: kept */
    lua_newtable(L);                                   /* 9: skipped */
    lua_pushvalue(L, 8);
    lua_setfield(L, 7, "kept");
    lua_pushvalue(L, 9);
    lua_setfield(L, 7, "skipped");
    lua_newtable(L);                                   /* 10: chunked */
    run_select(L, s, root, files, n, 9);

    size_t dims = descriptor_dimensions(&s->o);
    s->ws = descriptor_workspace_new(dims);
    if (!s->ws)
        nomem(L);
    double *vector = scratch_alloc(L, s, dims * sizeof *vector);
    size_t nkept = 0, nchunks = 0;
    const char *reason = NULL;
    descriptor_workspace_begin(s->ws);
    for (size_t i = 0; i < s->sel.candidate_count; i++) {
        const descriptor_candidate *c = &s->sel.candidates[i];
        if (!load_content(L, s, 2, root, &files[c->input], c)) {
            push_skip(L, 9, c->path, c->path_len, lua_tostring(L, -1), "load");
            lua_pop(L, 1);
            continue;
        }
        descriptor_source src;
        src.path.ptr = c->path;
        src.path.len = c->path_len;
        src.change_count = c->change_count;
        src.content.ptr = lua_tolstring(L, -1, &src.content.len);
        descriptor_file_result res;
        int rc = custom_embed ? descriptor_clean(&s->o, src.content.ptr, src.content.len,
                                                 &s->buf)
                              : descriptor_workspace_add(s->ws, &s->o, &src, &res);
        if (rc == DESCRIPTOR_ENOMEM)
            nomem(L);
        if (custom_embed && rc == 0) {
            if (descriptor_chunk_text(&s->o, s->buf.data, s->buf.len, &s->chunks) != 0)
                nomem(L);
            res.total_lines = s->chunks.total_lines;
            res.chunk_count = s->chunks.count;
            res.status = 0;
            push_chunked(L, s, c->path, c->path_len, c->change_count);
            lua_rawseti(L, 10, (int)lua_objlen(L, 10) + 1);
        } else if (custom_embed) {
            res.status = rc;
        }
        lua_pop(L, 1);                                 /* the content */
        if (res.status != 0) {
            char why[200];
            descriptor_skip_reason(&s->o, res.status, why, sizeof why);
            push_skip(L, 9, c->path, c->path_len, why, "clean");
            continue;
        }
        nkept++;
        nchunks += res.chunk_count;
        lua_createtable(L, 0, 4);
        lua_pushlstring(L, c->path, c->path_len);
        lua_setfield(L, -2, "path");
        lua_pushnumber(L, (lua_Number)c->change_count);
        lua_setfield(L, -2, "change_count");
        lua_pushnumber(L, (lua_Number)res.total_lines);
        lua_setfield(L, -2, "total_lines");
        lua_pushnumber(L, (lua_Number)res.chunk_count);
        lua_setfield(L, -2, "chunks");
        lua_rawseti(L, 8, (int)nkept);
    }
    lua_pushnumber(L, (lua_Number)nchunks);
    lua_setfield(L, 7, "chunk_count");
    size_t F = dims;
    const double *embedding = vector;
    if (nkept == 0) {
        reason = "No eligible files after preprocessing.";
    } else if (nchunks == 0) {
        reason = "Chunking produced no content.";
    } else if (custom_embed) {
        lua_getfield(L, 2, "embed");
        lua_pushvalue(L, 10);
        lua_call(L, 1, 2);
        if (lua_isnil(L, -2)) {
            reason = "Unable to derive final embedding.";
            lua_pop(L, 2);
        } else {
            lua_pop(L, 1);
            int vi = lua_gettop(L);
            if (!lua_istable(L, vi))
                return luaL_error(L, "opts.embed returned %s; expected an array of numbers "
                                     "or nil, reason", luaL_typename(L, vi));
            F = lua_objlen(L, vi);
            if (F == 0) {
                reason = "Unable to derive final embedding.";
            } else {
                double *v = check_vector(L, vi, s, &F);
                embedding = v;
            }
            lua_pop(L, 1);
        }
    } else {
        size_t used;
        int rc = descriptor_workspace_finish(s->ws, vector, &nkept, &used);
        if (rc == DESCRIPTOR_ENOMEM)
            nomem(L);
        if (rc != 0)
            reason = "Unable to derive final embedding.";
        lua_pushnumber(L, (lua_Number)used);
        lua_setfield(L, 7, "embedded_chunks");
    }
    if (reason) {
        lua_pushnil(L);
        lua_pushstring(L, reason);
        lua_pushvalue(L, 7);
        return 3;
    }
    lmod_push_number_array(L, embedding, F);
    lua_setfield(L, 7, "embedding");

    size_t D;
    double *measures;
    if (r) {
        D = reducer_get_params(r)->target_dims;
        measures = scratch_alloc(L, s, D * sizeof *measures);
        int refitted;
        int rc = reducer_observe(r, hash, hl, embedding, F, wall_clock(), measures, &refitted);
        if (rc != 0)
            nomem(L);
        lua_pushboolean(L, refitted);
        lua_setfield(L, 7, "refitted");
    } else {
        reducer_params p;
        reducer_params_from(L, 2, &p);
        reducer *tmp = reducer_new(&p);
        D = p.target_dims;
        measures = scratch_alloc(L, s, D * sizeof *measures);
        int rc = tmp ? reducer_project(tmp, embedding, F, measures) : REDUCER_ENOMEM;
        reducer_free(tmp);
        if (rc != 0)
            nomem(L);
    }
    lmod_push_number_array(L, measures, D);
    lua_setfield(L, 7, "unclipped");
    if (!lua_istable(L, 2) || lmod_opt_boolean(L, 2, "clip", 1)) {
        double *lo, *hi;
        lua_newtable(L);
        int t = lua_istable(L, 2) ? 2 : lua_gettop(L);
        bounds_of(L, t, s, &lo, &hi);
        lua_pop(L, 1);
        /* bounds_of sizes by target_dims, as the reducer does */
        descriptor_clip(measures, lo, hi, D);
    }
    lmod_push_number_array(L, measures, D);
    lua_pushvalue(L, 7);
    scratch_release(s);
    return 2;
}

/* ---- registration ---------------------------------------------------------------------------- */

static const luaL_Reg scratch_meta[] = {
    { "__gc", scratch_gc },
    { NULL, NULL },
};

static const luaL_Reg reducer_methods[] = {
    { "observe", reducer_observe_l },
    { "project", reducer_project_l },
    { "refit", reducer_refit_l },
    { "history_len", reducer_history_len_l },
    { "fitted", reducer_fitted_l },
    { "stats", reducer_stats_l },
    { "pca", reducer_pca_l },
    { "save", reducer_save_l },
    { "rows", reducer_rows_l },
    { "take_changes", reducer_take_changes_l },
    { NULL, NULL },
};

static const luaL_Reg reducer_meta[] = {
    { "__gc", reducer_gc },
    { "__tostring", reducer_tostring },
    { NULL, NULL },
};

static const luaL_Reg descriptor_functions[] = {
    { "options", l_options },
    { "select", l_select },
    { "preprocess", l_preprocess },
    { "chunk", l_chunk },
    { "embed", l_embed },
    { "tokens", l_tokens },
    { "reducer", l_reducer },
    { "load_reducer", l_load_reducer },
    { "reducer_from_rows", l_reducer_from_rows },
    { "bounds", l_bounds },
    { "clip", l_clip },
    { "compute", l_compute },
    { NULL, NULL },
};

LMOD_OPEN(descriptor)
{
    lmod_new_class(L, SCRATCH_TYPE, NULL, scratch_meta);
    lmod_new_class(L, REDUCER_TYPE, reducer_methods, reducer_meta);
    lmod_new_module(L, descriptor_functions);
    return 1;
}
