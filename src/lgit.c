/*
 * lgit.c - the `loreley.git` module: the evolved repository through libgit2 (the
 * operations themselves live in repo.c, repo_fetch.c and repo_loose.c; user
 * documentation in docs/git.md).
 *
 * Errors: misuse (wrong argument types, unknown option keys, a closed repository)
 * raises; failures of the world (not a repository, missing commit, corrupted object,
 * network) return nil, message.
 *
 *   git.open(path) -> repo | nil, "<path> is not a git repository"
 *   git.libgit2_version              "1.5.1"
 *   git.features -> {https=, ssh=, threads=, shallow_fetch=}
 *
 *   repo:path() -> root               repo:is_bare()   repo:is_shallow()
 *   repo:remotes() -> {{name=, url=}, ...}     repo:remote_url(name) -> url | nil, msg
 *   repo:resolve(rev) -> hash | nil, msg       repo:has_commit(hash) -> bool | nil, msg
 *   repo:head() -> hash, branch|nil | nil, msg
 *   repo:commit_info(rev) -> {hash, tree, parents, author, email, time, offset,
 *                             committer, committer_email, commit_time, message,
 *                             summary, shallow} | nil, msg
 *   repo:changed_files(rev) -> {{path, old_path, insertions, deletions, change_count,
 *                                status, binary}, ...} | nil, msg
 *   repo:read(treeish, path[, max_bytes]) -> content | nil, reason, message
 *   repo:size(treeish, path) -> bytes | nil, reason, message
 *       reason: "missing", "too large", "binary", "not a file", "revision not found",
 *               "error"
 *   repo:fetch(remote, opts) -> true, {objects, bytes, refs} | nil, msg, "timeout"|"error"
 *       opts: prefix (string|false), tags, configured, commit, refspecs, timeout,
 *             depth, credentials ({username, password, token, ssh_key,
 *             ssh_public_key, ssh_passphrase} | false; missing fields: LORELEY_GIT_*)
 *   repo:commit{parent, files = {[path] = content|false}, message, author, email,
 *               time?, ref?} -> hash | nil, msg      (no work tree: straight to the odb)
 *   repo:close()                     idempotent; also __gc
 */
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "lmod.h"
#include "repo.h"

#define REPO_TYPE "loreley.git.repo"
#define GUARD_TYPE "loreley.git.guard"
#define DEFAULT_JOB_PREFIX "evolution/job"
#define DEFAULT_FETCH_TIMEOUT 300.0

typedef struct repo_box {
    repo *r;
} repo_box;

static repo *check_repo(lua_State *L)
{
    repo_box *box = luaL_checkudata(L, 1, REPO_TYPE);
    if (!box->r)
        luaL_error(L, "repository is closed");
    return box->r;
}

/*
 * A string argument that names something in the world (a revision, a path). A NUL
 * byte inside cannot name anything: returns NULL so the caller reports it as a
 * failure, not a crash or a truncated lookup.
 */
static const char *check_text(lua_State *L, int idx)
{
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    return strlen(s) == len ? s : NULL;
}

/* --- scratch guards: C results owned by the GC until they are converted ------------- */

typedef struct guard {
    void (*release)(void *);
    void *ptr;
} guard;

static int guard_gc(lua_State *L)
{
    guard *g = lua_touserdata(L, 1);
    if (g->ptr)
        g->release(g->ptr);
    g->ptr = NULL;
    return 0;
}

/* Pushes a guard that releases ptr when collected (or by guard_release). */
static guard *push_guard(lua_State *L, void (*release)(void *), void *ptr)
{
    guard *g = lua_newuserdata(L, sizeof *g);
    g->release = release;
    g->ptr = ptr;
    luaL_getmetatable(L, GUARD_TYPE);
    lua_setmetatable(L, -2);
    return g;
}

static void guard_release(guard *g)
{
    if (g->ptr)
        g->release(g->ptr);
    g->ptr = NULL;
}

static void release_changes(void *p)
{
    repo_changes_free(p);
    free(p);
}

static void release_blob(void *p) { git_blob_free(p); }

static void set_string(lua_State *L, const char *key, const char *value);
static void set_number(lua_State *L, const char *key, double value);

/* --- module functions ---------------------------------------------------------------- */

static int git_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    repo_box *box = lua_newuserdata(L, sizeof *box);
    box->r = NULL;
    luaL_getmetatable(L, REPO_TYPE);
    lua_setmetatable(L, -2);
    char err[REPO_ERRLEN];
    if (repo_open(&box->r, path, err) != REPO_OK)
        return lmod_fail(L, "%s", err);
    return 1;
}

/* --- repository methods -------------------------------------------------------------- */

static int repo_l_close(lua_State *L)
{
    repo_box *box = luaL_checkudata(L, 1, REPO_TYPE);
    repo_close(box->r);
    box->r = NULL;
    return 0;
}

static int repo_l_tostring(lua_State *L)
{
    repo_box *box = luaL_checkudata(L, 1, REPO_TYPE);
    if (box->r)
        lua_pushfstring(L, "loreley.git.repo (%s)", repo_root(box->r));
    else
        lua_pushliteral(L, "loreley.git.repo (closed)");
    return 1;
}

static int repo_l_path(lua_State *L)
{
    lua_pushstring(L, repo_root(check_repo(L)));
    return 1;
}

static int repo_l_is_bare(lua_State *L)
{
    lua_pushboolean(L, repo_is_bare(check_repo(L)));
    return 1;
}

static int repo_l_is_shallow(lua_State *L)
{
    lua_pushboolean(L, git_repository_is_shallow(repo_git(check_repo(L))) == 1);
    return 1;
}

typedef struct remote_list {
    repo_remote *items;
    size_t count;
} remote_list;

static void release_remotes(void *p)
{
    remote_list *l = p;
    repo_remotes_free(l->items, l->count);
    free(l);
}

static int repo_l_remotes(lua_State *L)
{
    repo *r = check_repo(L);
    remote_list *l = calloc(1, sizeof *l);
    if (!l)
        return luaL_error(L, "out of memory");
    guard *g = push_guard(L, release_remotes, l);
    char err[REPO_ERRLEN];
    if (repo_remotes(r, &l->items, &l->count, err) != REPO_OK) {
        guard_release(g);
        return lmod_fail(L, "%s", err);
    }
    lua_createtable(L, (int)l->count, 0);
    for (size_t i = 0; i < l->count; i++) {
        lua_createtable(L, 0, 2);
        set_string(L, "name", l->items[i].name);
        set_string(L, "url", l->items[i].url);
        lua_rawseti(L, -2, (int)i + 1);
    }
    guard_release(g);
    return 1;
}

static int repo_l_remote_url(lua_State *L)
{
    repo *r = check_repo(L);
    const char *name = luaL_checkstring(L, 2);
    char *url = NULL;
    char err[REPO_ERRLEN];
    if (repo_remote_url(repo_git(r), name, &url, err) != REPO_OK)
        return lmod_fail(L, "%s", err);
    lua_pushstring(L, url);
    free(url);
    return 1;
}

static void push_oid(lua_State *L, const git_oid *oid)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, oid);
    lua_pushlstring(L, hex, GIT_OID_HEXSZ);
}

/* Resolves the revision argument at idx to a commit id, or pushes nil, msg (returns 2). */
static int resolve_arg(lua_State *L, repo *r, int idx, git_oid *out)
{
    const char *rev = check_text(L, idx);
    if (!rev)
        return lmod_fail(L, "revision contains a NUL byte");
    char err[REPO_ERRLEN];
    if (repo_resolve_commit(r, rev, out, err) != REPO_OK)
        return lmod_fail(L, "%s", err);
    return 0;
}

static int repo_l_resolve(lua_State *L)
{
    repo *r = check_repo(L);
    git_oid oid;
    int n = resolve_arg(L, r, 2, &oid);
    if (n)
        return n;
    push_oid(L, &oid);
    return 1;
}

static int repo_l_has_commit(lua_State *L)
{
    repo *r = check_repo(L);
    const char *hex = check_text(L, 2);
    if (!hex) {
        lua_pushboolean(L, 0);
        return 1;
    }
    char err[REPO_ERRLEN];
    int rc = repo_has_commit(r, hex, err);
    if (rc < 0)
        return lmod_fail(L, "%s", err);
    lua_pushboolean(L, rc);
    return 1;
}

static int repo_l_head(lua_State *L)
{
    git_repository *git = repo_git(check_repo(L));
    git_reference *head = NULL;
    int e = git_repository_head(&head, git);
    if (e == GIT_EUNBORNBRANCH || e == GIT_ENOTFOUND)
        return lmod_fail(L, "HEAD has no commit yet (unborn branch)");
    if (e < 0) {
        const git_error *ge = git_error_last();
        return lmod_fail(L, "cannot read HEAD: %s", ge ? ge->message : "unknown error");
    }
    const git_oid *target = git_reference_target(head);
    if (!target) {
        git_reference_free(head);
        return lmod_fail(L, "HEAD does not point at a commit");
    }
    push_oid(L, target);
    if (git_reference_is_branch(head))
        lua_pushstring(L, git_reference_shorthand(head));
    else
        lua_pushnil(L);
    git_reference_free(head);
    return 2;
}

static void set_string(lua_State *L, const char *key, const char *value)
{
    if (!value)
        return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

static void set_number(lua_State *L, const char *key, double value)
{
    lua_pushnumber(L, value);
    lua_setfield(L, -2, key);
}

static int repo_l_commit_info(lua_State *L)
{
    repo *r = check_repo(L);
    git_oid oid;
    int n = resolve_arg(L, r, 2, &oid);
    if (n)
        return n;
    git_commit *c = NULL;
    if (git_commit_lookup(&c, repo_git(r), &oid) < 0) {
        const git_error *ge = git_error_last();
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &oid);
        return lmod_fail(L, "cannot read commit %s: %s", hex, ge ? ge->message : "unknown error");
    }
    /* Everything below only pushes; the commit is freed before anything could raise
     * but an out-of-memory error. */
    int shallow = repo_is_shallow_commit(r, &oid);
    lua_createtable(L, 0, 13);
    push_oid(L, &oid);
    lua_setfield(L, -2, "hash");
    push_oid(L, git_commit_tree_id(c));
    lua_setfield(L, -2, "tree");
    unsigned parents = shallow ? 0 : git_commit_parentcount(c);
    lua_createtable(L, (int)parents, 0);
    for (unsigned i = 0; i < parents; i++) {
        push_oid(L, git_commit_parent_id(c, i));
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "parents");
    const git_signature *a = git_commit_author(c), *m = git_commit_committer(c);
    set_string(L, "author", a->name);
    set_string(L, "email", a->email);
    set_number(L, "time", (double)a->when.time);
    set_number(L, "offset", a->when.offset);
    set_string(L, "committer", m->name);
    set_string(L, "committer_email", m->email);
    set_number(L, "commit_time", (double)m->when.time);
    set_string(L, "message", git_commit_message(c));
    set_string(L, "summary", git_commit_summary(c));
    lua_pushboolean(L, shallow);
    lua_setfield(L, -2, "shallow");
    git_commit_free(c);
    return 1;
}

static int repo_l_changed_files(lua_State *L)
{
    repo *r = check_repo(L);
    git_oid oid;
    int n = resolve_arg(L, r, 2, &oid);
    if (n)
        return n;
    repo_changes *changes = calloc(1, sizeof *changes);
    if (!changes)
        return luaL_error(L, "out of memory");
    guard *g = push_guard(L, release_changes, changes);
    char err[REPO_ERRLEN];
    if (repo_changed_files(r, &oid, changes, err) != REPO_OK) {
        guard_release(g);
        return lmod_fail(L, "%s", err);
    }
    /* stack: guard */
    lua_createtable(L, (int)changes->count, 0);
    for (size_t i = 0; i < changes->count; i++) {
        const repo_change *c = &changes->items[i];
        lua_createtable(L, 0, 7);
        set_string(L, "path", c->path);
        set_string(L, "old_path", c->old_path);
        set_number(L, "insertions", (double)c->insertions);
        set_number(L, "deletions", (double)c->deletions);
        size_t lines = c->insertions + c->deletions;
        set_number(L, "change_count", (double)(lines ? lines : 1));
        set_string(L, "status", repo_change_status_name(c->status));
        lua_pushboolean(L, c->binary);
        lua_setfield(L, -2, "binary");
        lua_rawseti(L, -2, (int)i + 1);
    }
    guard_release(g);
    return 1;
}

/* The reason word of a blob failure (see the header comment). */
static const char *blob_reason(int rc, int path_missing)
{
    switch (rc) {
    case REPO_ENOTFOUND: return path_missing ? "missing" : "revision not found";
    case REPO_ETOOLARGE: return "too large";
    case REPO_EBINARY: return "binary";
    case REPO_ENOTFILE: return "not a file";
    default: return "error";
    }
}

static int blob_fail(lua_State *L, int rc, int path_missing, const char *message)
{
    lua_pushnil(L);
    lua_pushstring(L, blob_reason(rc, path_missing));
    lua_pushstring(L, message);
    return 3;
}

static int repo_l_read(lua_State *L)
{
    repo *r = check_repo(L);
    const char *treeish = check_text(L, 2);
    const char *path = check_text(L, 3);
    size_t max_bytes = SIZE_MAX;
    if (!lua_isnoneornil(L, 4)) {
        lua_Number limit = luaL_checknumber(L, 4);
        if (!(limit >= 0))
            return luaL_argerror(L, 4, "max_bytes must be a number >= 0");
        if (limit < 9.0e15)
            max_bytes = (size_t)limit;
    }
    if (!treeish || !path)
        return blob_fail(L, REPO_ERROR, 0, "revision or path contains a NUL byte");
    if (!*path)
        return luaL_argerror(L, 3, "path must not be empty");
    git_blob *blob = NULL;
    size_t size = 0;
    int path_missing = 0;
    char err[REPO_ERRLEN];
    int rc = repo_read(r, treeish, path, max_bytes, &blob, &size, &path_missing, err);
    if (rc != REPO_OK)
        return blob_fail(L, rc, path_missing, err);
    guard *g = push_guard(L, release_blob, blob);
    lua_pushlstring(L, git_blob_rawcontent(blob), size);
    guard_release(g);
    return 1;
}

static int repo_l_size(lua_State *L)
{
    repo *r = check_repo(L);
    const char *treeish = check_text(L, 2);
    const char *path = check_text(L, 3);
    if (!treeish || !path)
        return blob_fail(L, REPO_ERROR, 0, "revision or path contains a NUL byte");
    if (!*path)
        return luaL_argerror(L, 3, "path must not be empty");
    git_oid blob;
    size_t size = 0;
    int path_missing = 0;
    char err[REPO_ERRLEN];
    int rc = repo_blob_size(r, treeish, path, &blob, &size, &path_missing, err);
    if (rc != REPO_OK)
        return blob_fail(L, rc, path_missing, err);
    lua_pushnumber(L, (double)size);
    return 1;
}

/* --- writing commits ------------------------------------------------------------------ */

static const char *const commit_keys[] = {"parent", "files", "message", "author", "email",
                                          "time", "ref", NULL};

/*
 * repo:commit{parent=, files={[path]=content|false}, message=, author=, email=, time=?,
 * ref=?} -> hash | nil, message. The parent's tree with the files replaced (false
 * removes one), written straight to the object database; `ref` ("refs/heads/...") is
 * created or moved to the new commit.
 */
static int repo_l_commit(lua_State *L)
{
    repo *r = check_repo(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lmod_check_options(L, 2, commit_keys, "repo:commit");
    repo_commit_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.parent = lmod_opt_string(L, 2, "parent", NULL);
    spec.message = lmod_opt_string(L, 2, "message", NULL);
    spec.author = lmod_opt_string(L, 2, "author", NULL);
    spec.email = lmod_opt_string(L, 2, "email", NULL);
    spec.ref = lmod_opt_string(L, 2, "ref", NULL);
    spec.time = lmod_opt_number(L, 2, "time", 0);
    if (!spec.parent || !spec.message || !spec.author || !spec.email)
        return luaL_error(L, "repo:commit: parent, message, author and email are required");
    if (spec.ref && strncmp(spec.ref, "refs/", 5) != 0)
        return luaL_error(L, "repo:commit: ref must be a full name (refs/heads/...)");
    lua_getfield(L, 2, "files");
    int files = lua_gettop(L);
    if (!lua_istable(L, files))
        return luaL_error(L, "repo:commit: files must be a table {path = content|false}");
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, files)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return luaL_error(L, "repo:commit: file paths must be strings");
        if (!lua_isstring(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1)))
            return luaL_error(L, "repo:commit: files[%s] must be a string or false",
                              lua_tostring(L, -2));
        lua_pop(L, 1);
        n++;
    }
    repo_file_update *updates = lua_newuserdata(L, (n ? n : 1) * sizeof *updates);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, files)) {
        updates[i].path = lua_tostring(L, -2);   /* anchored in the files table */
        if (lua_isstring(L, -1))
            updates[i].content = lua_tolstring(L, -1, &updates[i].size);
        else
            updates[i].content = NULL;
        i++;
        lua_pop(L, 1);
    }
    spec.updates = updates;
    spec.update_count = n;
    git_oid id;
    char err[REPO_ERRLEN];
    if (repo_commit_files(r, &spec, &id, err) != REPO_OK)
        return lmod_fail(L, "%s", err);
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, &id);
    lua_pushstring(L, hex);
    return 1;
}

/* --- fetch --------------------------------------------------------------------------- */

static const char *const fetch_keys[] = {"prefix", "tags", "commit", "depth", "timeout",
                                         "configured", "refspecs", "credentials", NULL};
static const char *const credential_keys[] = {"username", "password", "token", "ssh_key",
                                              "ssh_public_key", "ssh_passphrase", NULL};

/* A credential from opts.credentials[key], else from the environment variable. */
static const char *credential(lua_State *L, int creds, const char *key, const char *env)
{
    if (creds == 0)
        return NULL;
    const char *v = creds > 0 ? lmod_opt_string(L, creds, key, NULL) : NULL;
    if (!v) {
        v = getenv(env);
        if (v && !*v)
            v = NULL;
    }
    return v;
}

static int fetch_cancelled(void) { return host_stop_requested(); }

static int repo_l_fetch(lua_State *L)
{
    repo *r = check_repo(L);
    const char *remote = luaL_checkstring(L, 2);
    lmod_check_options(L, 3, fetch_keys, "repo:fetch");
    repo_fetch_options o;
    memset(&o, 0, sizeof o);
    o.remote = remote;
    o.configured = lmod_opt_boolean(L, 3, "configured", 1);
    o.tags = lmod_opt_boolean(L, 3, "tags", 1);
    o.timeout = lmod_opt_number(L, 3, "timeout", DEFAULT_FETCH_TIMEOUT);
    if (!(o.timeout > 0))
        return luaL_error(L, "repo:fetch: option 'timeout' must be > 0 seconds");
    lua_Integer depth = lmod_opt_integer(L, 3, "depth", 0);
    if (depth < 0 || depth > 0x7fffffff)
        return luaL_error(L, "repo:fetch: option 'depth' must be a positive integer");
    if (depth > 0 && !repo_fetch_supports_depth())
        return luaL_error(L, "repo:fetch: option 'depth' needs libgit2 >= 1.7 (this is %d.%d)",
                          LIBGIT2_VER_MAJOR, LIBGIT2_VER_MINOR);
    o.depth = (int)depth;
    o.cancelled = fetch_cancelled;

    /* prefix: a string, false for no job branches, nil for the contract's default. */
    o.job_prefix = DEFAULT_JOB_PREFIX;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "prefix");
        if (lua_type(L, -1) == LUA_TSTRING) {
            o.job_prefix = lua_tostring(L, -1);   /* anchored in the options table */
        } else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            o.job_prefix = NULL;
        } else if (!lua_isnil(L, -1)) {
            return luaL_error(L, "repo:fetch: option 'prefix' must be a string or false, got %s",
                              luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    char prefix[256];
    if (o.job_prefix) {
        size_t len = strlen(o.job_prefix);
        while (len && o.job_prefix[len - 1] == '/')
            len--;
        char probe[320];
        if (len == 0 || len >= sizeof prefix)
            return luaL_error(L, "repo:fetch: option 'prefix' must be a branch name prefix");
        memcpy(prefix, o.job_prefix, len);
        prefix[len] = '\0';
        snprintf(probe, sizeof probe, "refs/heads/%s/x", prefix);
        int valid = 0;
        if (git_reference_name_is_valid(&valid, probe) < 0 || !valid)
            return luaL_error(L, "repo:fetch: option 'prefix' is not a valid branch prefix: %s",
                              prefix);
        o.job_prefix = prefix;
    }

    o.commit = lmod_opt_string(L, 3, "commit", NULL);
    if (o.commit) {
        git_oid probe;
        if (strlen(o.commit) != GIT_OID_HEXSZ || git_oid_fromstr(&probe, o.commit) < 0)
            return lmod_fail(L, "cannot fetch commit %s: not a full 40-hex hash", o.commit);
    }

    /* refspecs: an array of strings, kept alive by the options table. */
    const char *specs[64];
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "refspecs");
        if (lua_istable(L, -1)) {
            size_t count = lua_objlen(L, -1);
            if (count > sizeof specs / sizeof specs[0])
                return luaL_error(L, "repo:fetch: at most 64 refspecs");
            for (size_t i = 0; i < count; i++) {
                lua_rawgeti(L, -1, (int)i + 1);
                if (lua_type(L, -1) != LUA_TSTRING)
                    return luaL_error(L, "repo:fetch: refspecs[%d] must be a string",
                                      (int)i + 1);
                specs[i] = lua_tostring(L, -1);
                lua_pop(L, 1);
            }
            o.refspecs = specs;
            o.refspec_count = count;
        } else if (!lua_isnil(L, -1)) {
            return luaL_error(L, "repo:fetch: option 'refspecs' must be an array of strings");
        }
        lua_pop(L, 1);
    }

    /* credentials: a table (missing fields come from the environment), false for none,
     * nil for the environment only. Stack: [4] = the credentials value. */
    int creds = -1;
    if (lua_istable(L, 3))
        lua_getfield(L, 3, "credentials");
    else
        lua_pushnil(L);
    if (lua_istable(L, -1)) {
        creds = lua_gettop(L);
        lmod_check_options(L, creds, credential_keys, "repo:fetch credentials");
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
        creds = 0;
    } else if (!lua_isnil(L, -1)) {
        return luaL_error(L, "repo:fetch: option 'credentials' must be a table or false");
    }
    o.credentials.username = credential(L, creds, "username", "LORELEY_GIT_USERNAME");
    o.credentials.password = credential(L, creds, "password", "LORELEY_GIT_PASSWORD");
    o.credentials.token = credential(L, creds, "token", "LORELEY_GIT_TOKEN");
    o.credentials.ssh_key = credential(L, creds, "ssh_key", "LORELEY_GIT_SSH_KEY");
    o.credentials.ssh_public_key =
        credential(L, creds, "ssh_public_key", "LORELEY_GIT_SSH_PUBLIC_KEY");
    o.credentials.ssh_passphrase =
        credential(L, creds, "ssh_passphrase", "LORELEY_GIT_SSH_PASSPHRASE");

    repo_fetch_stats stats;
    char err[REPO_ERRLEN];
    int rc = repo_fetch(r, &o, &stats, err);
    if (rc != REPO_OK)
        return lmod_fail_code(L, rc == REPO_ETIMEOUT ? "timeout" : "error", "%s", err);
    lua_pushboolean(L, 1);
    lua_createtable(L, 0, 3);
    set_number(L, "objects", (double)stats.objects);
    set_number(L, "bytes", (double)stats.bytes);
    set_number(L, "refs", (double)stats.updated_refs);
    return 2;
}

/* --- registration -------------------------------------------------------------------- */

static const luaL_Reg repo_methods[] = {
    {"path", repo_l_path},
    {"is_bare", repo_l_is_bare},
    {"is_shallow", repo_l_is_shallow},
    {"remotes", repo_l_remotes},
    {"remote_url", repo_l_remote_url},
    {"resolve", repo_l_resolve},
    {"has_commit", repo_l_has_commit},
    {"head", repo_l_head},
    {"commit_info", repo_l_commit_info},
    {"changed_files", repo_l_changed_files},
    {"read", repo_l_read},
    {"size", repo_l_size},
    {"fetch", repo_l_fetch},
    {"commit", repo_l_commit},
    {"close", repo_l_close},
    {NULL, NULL},
};

static const luaL_Reg repo_meta[] = {
    {"__gc", repo_l_close},
    {"__tostring", repo_l_tostring},
    {NULL, NULL},
};

static const luaL_Reg guard_meta[] = {
    {"__gc", guard_gc},
    {NULL, NULL},
};

static const luaL_Reg git_functions[] = {
    {"open", git_open},
    {NULL, NULL},
};

LMOD_OPEN(git)
{
    char err[REPO_ERRLEN];
    if (repo_global_init(err) != REPO_OK)
        return luaL_error(L, "loreley.git: %s", err);
    lmod_new_class(L, REPO_TYPE, repo_methods, repo_meta);
    lmod_new_class(L, GUARD_TYPE, NULL, guard_meta);
    lmod_new_module(L, git_functions);
    int major, minor, rev;
    git_libgit2_version(&major, &minor, &rev);
    lua_pushfstring(L, "%d.%d.%d", major, minor, rev);
    lua_setfield(L, -2, "libgit2_version");
    int features = git_libgit2_features();
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, (features & GIT_FEATURE_HTTPS) != 0);
    lua_setfield(L, -2, "https");
    lua_pushboolean(L, (features & GIT_FEATURE_SSH) != 0);
    lua_setfield(L, -2, "ssh");
    lua_pushboolean(L, (features & GIT_FEATURE_THREADS) != 0);
    lua_setfield(L, -2, "threads");
    lua_pushboolean(L, repo_fetch_supports_depth());
    lua_setfield(L, -2, "shallow_fetch");
    lua_setfield(L, -2, "features");
    return 1;
}
