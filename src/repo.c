/*
 * repo.c - git operations over libgit2 for the scheduler: open, resolve, changed files
 * with line counts, blob reads under a size limit. The fetch lives in repo_fetch.c.
 * See repo.h for the contracts.
 */
#include "repo.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct repo {
    git_repository *git;
    char *root;                /* work tree (or git dir when bare), no trailing '/' */
    int bare;                  /* the repository has no work tree */
    char *shallow_path;        /* <gitdir>/shallow */
    git_oid *shallow;          /* sorted commit ids of the shallow boundary */
    size_t shallow_count;
    struct stat shallow_stat;  /* of the file when it was read; st_ino 0: absent */
};

/* --- errors ------------------------------------------------------------------------ */

/* Writes "prefix: <libgit2's last error>" into err and returns code. */
static int fail_git(char *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_git(char *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, REPO_ERRLEN, fmt, ap);
    va_end(ap);
    const git_error *e = git_error_last();
    if (n >= 0 && n < REPO_ERRLEN - 3 && e && e->message)
        snprintf(err + n, (size_t)(REPO_ERRLEN - n), ": %s", e->message);
    repo_mask_url_secrets(err);
    return code;
}

static int fail(char *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, REPO_ERRLEN, fmt, ap);
    va_end(ap);
    return code;
}

void repo_mask_url_secrets(char *s)
{
    for (char *scheme = strstr(s, "://"); scheme; scheme = strstr(scheme + 3, "://")) {
        char *user = scheme + 3;
        size_t span = strcspn(user, "/@ \t\n'\"");
        if (user[span] != '@')
            continue;
        char *colon = memchr(user, ':', span);
        if (!colon)
            continue;
        char *at = user + span;
        /* Replace ":secret@" with ":***@", shifting the rest of the string. */
        size_t secret = (size_t)(at - colon - 1);
        if (secret == 3 && memcmp(colon + 1, "***", 3) == 0)
            continue;
        memmove(colon + 4, at, strlen(at) + 1);
        memcpy(colon + 1, "***", 3);
    }
}

/* --- lifetime ---------------------------------------------------------------------- */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_status;

static void global_init(void)
{
    init_status = git_libgit2_init();
    /*
     * libgit2 re-hashes every object it reads (SHA-1 with collision detection, about
     * 0.14 ms per 100 KB): that is two thirds of a blob read. git itself does not
     * verify on `git show`/`cat-file` either. Damage is still caught: zlib's adler32
     * covers every loose object's content, and the loose reader (repo_loose.c)
     * verifies the hash of commits, trees and tags, which are small.
     */
    if (init_status >= 0)
        git_libgit2_opts(GIT_OPT_ENABLE_STRICT_HASH_VERIFICATION, 0);
}

int repo_global_init(char *err)
{
    pthread_once(&init_once, global_init);
    if (init_status < 0)
        return fail_git(err, REPO_ERROR, "cannot initialise libgit2");
    return REPO_OK;
}

static char *strip_slash_dup(const char *path)
{
    char *s = strdup(path);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

int repo_open(repo **out, const char *path, char *err)
{
    *out = NULL;
    int rc = repo_global_init(err);
    if (rc != REPO_OK)
        return rc;
    repo *r = calloc(1, sizeof *r);
    if (!r)
        return fail(err, REPO_ERROR, "out of memory");
    int e = git_repository_open_ext(&r->git, path, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL);
    if (e == GIT_ENOTFOUND) {
        free(r);
        return fail(err, REPO_ENOTREPO, "%s is not a git repository", path);
    }
    if (e < 0) {
        free(r);
        return fail_git(err, REPO_ERROR, "%s: cannot open the repository", path);
    }
    const char *workdir = git_repository_workdir(r->git);
    const char *gitdir = git_repository_path(r->git);
    r->root = strip_slash_dup(workdir ? workdir : gitdir);
    r->bare = workdir == NULL;
    /*
     * Everything the scheduler reads comes from the object database, never from the
     * work tree, so the handle is reopened as bare: libgit2 then does not resolve
     * work-tree paths and .gitattributes for every diffed file (a realpath per file,
     * 40% of changed_files). Binary files are recognised by content (a NUL in the
     * first 8000 bytes), as git does without attributes.
     */
    if (workdir) {
        git_repository *bare = NULL;
        e = git_repository_open_bare(&bare, gitdir);
        if (e < 0) {
            int code = fail_git(err, REPO_ERROR, "%s: cannot open the repository", path);
            repo_close(r);
            return code;
        }
        git_repository_free(r->git);
        r->git = bare;
        gitdir = git_repository_path(r->git);
    }
    rc = repo_guard_loose_objects(r->git, err);
    if (rc != REPO_OK) {
        repo_close(r);
        return rc;
    }

    size_t n = strlen(gitdir);
    r->shallow_path = malloc(n + sizeof "/shallow");
    if (!r->root || !r->shallow_path) {
        repo_close(r);
        return fail(err, REPO_ERROR, "out of memory");
    }
    snprintf(r->shallow_path, n + sizeof "/shallow", "%s%sshallow", gitdir,
             n && gitdir[n - 1] == '/' ? "" : "/");
    *out = r;
    return REPO_OK;
}

void repo_close(repo *r)
{
    if (!r)
        return;
    git_repository_free(r->git);
    free(r->root);
    free(r->shallow_path);
    free(r->shallow);
    free(r);
}

git_repository *repo_git(const repo *r) { return r->git; }
const char *repo_root(const repo *r) { return r->root; }
int repo_is_bare(const repo *r) { return r->bare; }

/* --- shallow boundary -------------------------------------------------------------- */

static int oid_compare(const void *a, const void *b) { return git_oid_cmp(a, b); }

/* Re-reads <gitdir>/shallow when it changed since the last read. A file that cannot
 * be read counts as absent: the worst outcome is git's own on a broken file. */
static void shallow_refresh(repo *r)
{
    struct stat st;
    if (stat(r->shallow_path, &st) != 0) {
        free(r->shallow);
        r->shallow = NULL;
        r->shallow_count = 0;
        memset(&r->shallow_stat, 0, sizeof r->shallow_stat);
        return;
    }
    if (st.st_ino == r->shallow_stat.st_ino && st.st_size == r->shallow_stat.st_size &&
        st.st_mtim.tv_sec == r->shallow_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == r->shallow_stat.st_mtim.tv_nsec)
        return;
    free(r->shallow);
    r->shallow = NULL;
    r->shallow_count = 0;
    r->shallow_stat = st;
    FILE *f = fopen(r->shallow_path, "r");
    if (!f)
        return;
    size_t cap = 0;
    char line[128];
    while (fgets(line, sizeof line, f)) {
        git_oid oid;
        if (strlen(line) < GIT_OID_HEXSZ || git_oid_fromstrn(&oid, line, GIT_OID_HEXSZ) < 0)
            continue;
        if (r->shallow_count == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            git_oid *grown = realloc(r->shallow, ncap * sizeof *grown);
            if (!grown)
                break;
            r->shallow = grown;
            cap = ncap;
        }
        r->shallow[r->shallow_count++] = oid;
    }
    fclose(f);
    if (r->shallow_count > 1)
        qsort(r->shallow, r->shallow_count, sizeof *r->shallow, oid_compare);
}

int repo_is_shallow_commit(repo *r, const git_oid *commit)
{
    shallow_refresh(r);
    return r->shallow_count &&
           bsearch(commit, r->shallow, r->shallow_count, sizeof *r->shallow, oid_compare);
}

/* --- revisions --------------------------------------------------------------------- */

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

/* Looks up `rev` as an object: a full hash directly (the common, hot case), anything
 * else through rev-parse. */
static int lookup_revision(repo *r, const char *rev, git_object **out, char *err)
{
    size_t n = strlen(rev);
    int e;
    if (n == GIT_OID_HEXSZ && is_hex(rev, n)) {
        git_oid oid;
        git_oid_fromstr(&oid, rev);
        e = git_object_lookup(out, r->git, &oid, GIT_OBJECT_ANY);
    } else {
        e = git_revparse_single(out, r->git, rev);
    }
    if (e == GIT_ENOTFOUND)
        return fail(err, REPO_ENOTFOUND, "revision %s not found", rev);
    if (e == GIT_EINVALIDSPEC)
        return fail(err, REPO_ENOTFOUND, "revision %s not found (not a valid revision)", rev);
    if (e == GIT_EAMBIGUOUS)
        return fail(err, REPO_ERROR, "revision %s is ambiguous", rev);
    if (e < 0)
        return fail_git(err, REPO_ERROR, "cannot read revision %s", rev);
    return REPO_OK;
}

int repo_resolve_commit(repo *r, const char *rev, git_oid *out, char *err)
{
    git_object *obj = NULL, *peeled = NULL;
    int rc = lookup_revision(r, rev, &obj, err);
    if (rc != REPO_OK)
        return rc;
    int e = git_object_peel(&peeled, obj, GIT_OBJECT_COMMIT);
    if (e == GIT_EINVALIDSPEC || e == GIT_ENOTFOUND || e == GIT_EPEEL) {
        rc = fail(err, REPO_ERROR, "revision %s is a %s, not a commit", rev,
                  git_object_type2string(git_object_type(obj)));
    } else if (e < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot read revision %s", rev);
    } else {
        git_oid_cpy(out, git_object_id(peeled));
    }
    git_object_free(peeled);
    git_object_free(obj);
    return rc;
}

int repo_has_commit(repo *r, const char *hex, char *err)
{
    size_t n = strlen(hex);
    if (n < GIT_OID_MINPREFIXLEN || n > GIT_OID_HEXSZ || !is_hex(hex, n))
        return 0;
    git_odb *odb = NULL;
    int rc = 0;
    if (git_repository_odb(&odb, r->git) < 0)
        return fail_git(err, REPO_ERROR, "cannot open the object database");
    git_oid oid, full;
    git_oid_fromstrn(&oid, hex, n);
    int e = n == GIT_OID_HEXSZ ? 0 : git_odb_exists_prefix(&full, odb, &oid, n);
    if (n == GIT_OID_HEXSZ)
        git_oid_cpy(&full, &oid);
    if (e == GIT_ENOTFOUND || e == GIT_EAMBIGUOUS) {
        rc = 0;   /* an ambiguous prefix does not name one commit */
    } else if (e < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot look up %s", hex);
    } else {
        size_t size;
        git_object_t type;
        e = git_odb_read_header(&size, &type, odb, &full);
        if (e == GIT_ENOTFOUND)
            rc = 0;
        else if (e < 0)
            rc = fail_git(err, REPO_ERROR, "cannot read object %s", hex);
        else
            rc = type == GIT_OBJECT_COMMIT;
    }
    git_odb_free(odb);
    return rc;
}

/* --- remotes ----------------------------------------------------------------------- */

/* "remote.<name>.url" -> the name (malloc'd), else NULL. Names may contain dots. */
static char *remote_name_of_key(const char *key)
{
    size_t n = strlen(key);
    if (n <= sizeof "remote." - 1 + sizeof ".url" - 1 || strncmp(key, "remote.", 7) != 0 ||
        strcmp(key + n - 4, ".url") != 0)
        return NULL;
    return strndup(key + 7, n - 7 - 4);
}

void repo_remotes_free(repo_remote *list, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(list[i].name);
        free(list[i].url);
    }
    free(list);
}

int repo_remotes(repo *r, repo_remote **out, size_t *count, char *err)
{
    *out = NULL;
    *count = 0;
    git_config *cfg = NULL;
    git_config_iterator *it = NULL;
    git_config_entry *entry;
    repo_remote *list = NULL;
    size_t n = 0, cap = 0;
    int rc = REPO_OK, e;
    if (git_repository_config_snapshot(&cfg, r->git) < 0 || git_config_iterator_new(&it, cfg) < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot read the configuration");
        goto out;
    }
    while ((e = git_config_next(&entry, it)) == 0) {
        char *name = remote_name_of_key(entry->name);
        if (!name)
            continue;
        size_t i;
        for (i = 0; i < n && strcmp(list[i].name, name) != 0; i++)
            ;
        if (i < n) {   /* a later url of the same remote: git uses the last one */
            free(name);
            free(list[i].url);
            list[i].url = entry->value ? strdup(entry->value) : NULL;
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            repo_remote *grown = realloc(list, ncap * sizeof *grown);
            if (!grown) {
                free(name);
                rc = fail(err, REPO_ERROR, "out of memory");
                goto out;
            }
            list = grown;
            cap = ncap;
        }
        list[n].name = name;
        list[n].url = entry->value ? strdup(entry->value) : NULL;
        n++;
    }
    if (e != GIT_ITEROVER) {
        rc = fail_git(err, REPO_ERROR, "cannot read the configuration");
        goto out;
    }
    *out = list;
    *count = n;
    list = NULL;
    n = 0;
out:
    repo_remotes_free(list, n);
    git_config_iterator_free(it);
    git_config_free(cfg);
    return rc;
}

int repo_remote_url(git_repository *git, const char *name, char **url, char *err)
{
    *url = NULL;
    git_config *cfg = NULL;
    if (git_repository_config_snapshot(&cfg, git) < 0)
        return fail_git(err, REPO_ERROR, "cannot read the configuration");
    size_t keylen = strlen(name) + sizeof "remote..url";
    char *key = malloc(keylen);
    if (!key) {
        git_config_free(cfg);
        return fail(err, REPO_ERROR, "out of memory");
    }
    snprintf(key, keylen, "remote.%s.url", name);
    const char *value = NULL;
    int e = git_config_get_string(&value, cfg, key);
    int rc = REPO_OK;
    if (e == GIT_ENOTFOUND || e == GIT_EINVALIDSPEC)
        rc = fail(err, REPO_ENOTFOUND, "no remote named %s", name);
    else if (e < 0)
        rc = fail_git(err, REPO_ERROR, "cannot read the URL of remote %s", name);
    else if (!(*url = strdup(value)))
        rc = fail(err, REPO_ERROR, "out of memory");
    free(key);
    git_config_free(cfg);
    return rc;
}

char *repo_rewrite_url(git_repository *git, const char *url)
{
    git_config *cfg = NULL;
    git_config_iterator *it = NULL;
    git_config_entry *entry;
    char *best_base = NULL;
    size_t best_len = 0;
    if (git_repository_config_snapshot(&cfg, git) == 0 && git_config_iterator_new(&it, cfg) == 0) {
        /* The longest "url.<base>.insteadof" value that prefixes url wins, as in git. */
        while (git_config_next(&entry, it) == 0) {
            size_t n = strlen(entry->name);
            const char *suffix = ".insteadof";
            size_t sl = strlen(suffix);
            if (n <= 4 + sl || strncmp(entry->name, "url.", 4) != 0 ||
                strcmp(entry->name + n - sl, suffix) != 0 || !entry->value)
                continue;
            size_t vl = strlen(entry->value);
            if (vl <= best_len || strncmp(url, entry->value, vl) != 0)
                continue;
            char *base = strndup(entry->name + 4, n - 4 - sl);
            if (!base)
                continue;
            free(best_base);
            best_base = base;
            best_len = vl;
        }
    }
    git_config_iterator_free(it);
    git_config_free(cfg);
    char *result;
    if (best_base) {
        size_t total = strlen(best_base) + strlen(url + best_len) + 1;
        result = malloc(total);
        if (result)
            snprintf(result, total, "%s%s", best_base, url + best_len);
        free(best_base);
    } else {
        result = strdup(url);
    }
    return result;
}

/* --- changed files ----------------------------------------------------------------- */

const char *repo_change_status_name(repo_change_status s)
{
    switch (s) {
    case REPO_CHANGE_ADDED: return "added";
    case REPO_CHANGE_MODIFIED: return "modified";
    case REPO_CHANGE_DELETED: return "deleted";
    case REPO_CHANGE_RENAMED: return "renamed";
    case REPO_CHANGE_COPIED: return "copied";
    case REPO_CHANGE_TYPECHANGE: return "typechange";
    }
    return "modified";
}

/* State of one git_diff_foreach pass: the delta being visited and its counts. */
typedef struct count_state {
    repo_changes *changes;
    size_t index;     /* index of the next delta (file_cb increments) */
} count_state;

static int count_file(const git_diff_delta *delta, float progress, void *payload)
{
    count_state *s = payload;
    s->index++;
    if (s->index > s->changes->count)
        return GIT_EUSER;
    if (delta->flags & GIT_DIFF_FLAG_BINARY)
        s->changes->items[s->index - 1].binary = 1;
    return 0;
}

static int count_binary(const git_diff_delta *delta, const git_diff_binary *binary,
                        void *payload)
{
    count_state *s = payload;
    if (s->index >= 1)
        s->changes->items[s->index - 1].binary = 1;
    return 0;
}

static int count_line(const git_diff_delta *delta, const git_diff_hunk *hunk,
                      const git_diff_line *line, void *payload)
{
    count_state *s = payload;
    if (s->index < 1)
        return 0;
    repo_change *c = &s->changes->items[s->index - 1];
    if (line->origin == GIT_DIFF_LINE_ADDITION)
        c->insertions++;
    else if (line->origin == GIT_DIFF_LINE_DELETION)
        c->deletions++;
    return 0;
}

static repo_change_status status_of(git_delta_t d)
{
    switch (d) {
    case GIT_DELTA_ADDED: return REPO_CHANGE_ADDED;
    case GIT_DELTA_DELETED: return REPO_CHANGE_DELETED;
    case GIT_DELTA_RENAMED: return REPO_CHANGE_RENAMED;
    case GIT_DELTA_COPIED: return REPO_CHANGE_COPIED;
    case GIT_DELTA_TYPECHANGE: return REPO_CHANGE_TYPECHANGE;
    default: return REPO_CHANGE_MODIFIED;
    }
}

/* Git's rule for binary content: a NUL byte in the first 8000 bytes. */
#define REPO_BINARY_PROBE 8000

static int is_binary(const char *buf, size_t len)
{
    return len && memchr(buf, '\0', len < REPO_BINARY_PROBE ? len : REPO_BINARY_PROBE);
}

/* One side of a typechange as git diffs it: the blob's content, or for a gitlink the
 * line "Subproject commit <hex>". *blob is set when a blob was loaded (caller frees). */
static int side_text(git_repository *git, const git_diff_file *f, git_blob **blob,
                     char *line, size_t cap, const char **buf, size_t *len)
{
    *blob = NULL;
    if (f->mode == GIT_FILEMODE_COMMIT) {
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &f->id);
        *len = (size_t)snprintf(line, cap, "Subproject commit %s\n", hex);
        *buf = line;
        return 0;
    }
    if (git_blob_lookup(blob, git, &f->id) < 0)
        return -1;
    *buf = git_blob_rawcontent(*blob);
    *len = (size_t)git_blob_rawsize(*blob);
    return 0;
}

/*
 * libgit2 reports no lines for a typechange (a file that became a symlink, say); git
 * counts the lines of the two contents against each other. Fills c from that diff.
 */
static int count_typechange(git_repository *git, const git_diff_delta *d, repo_change *c)
{
    git_blob *old_blob = NULL, *new_blob = NULL;
    git_patch *patch = NULL;
    char old_line[80], new_line[80];
    const char *old_buf, *new_buf;
    size_t old_len, new_len;
    int rc = -1;
    if (side_text(git, &d->old_file, &old_blob, old_line, sizeof old_line, &old_buf,
                  &old_len) < 0 ||
        side_text(git, &d->new_file, &new_blob, new_line, sizeof new_line, &new_buf,
                  &new_len) < 0)
        goto out;
    if (is_binary(old_buf, old_len) || is_binary(new_buf, new_len)) {
        c->binary = 1;
        rc = 0;
        goto out;
    }
    git_diff_options opts;
    git_diff_options_init(&opts, GIT_DIFF_OPTIONS_VERSION);
    opts.context_lines = 0;
    opts.interhunk_lines = 0;
    size_t context, adds, dels;
    if (git_patch_from_buffers(&patch, old_buf, old_len, d->old_file.path, new_buf, new_len,
                               d->new_file.path, &opts) < 0 ||
        git_patch_line_stats(&context, &adds, &dels, patch) < 0)
        goto out;
    c->insertions = adds;
    c->deletions = dels;
    rc = 0;
out:
    git_patch_free(patch);
    git_blob_free(old_blob);
    git_blob_free(new_blob);
    return rc;
}

int repo_changed_files(repo *r, const git_oid *commit_id, repo_changes *out, char *err)
{
    memset(out, 0, sizeof *out);
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, commit_id);
    git_commit *commit = NULL, *parent = NULL;
    git_tree *tree = NULL, *parent_tree = NULL;
    git_diff *diff = NULL;
    int rc = REPO_OK, e;

    e = git_commit_lookup(&commit, r->git, commit_id);
    if (e == GIT_ENOTFOUND) {
        rc = fail(err, REPO_ENOTFOUND, "commit %s not found", hex);
        goto out;
    }
    if (e < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot read commit %s", hex);
        goto out;
    }
    if (git_commit_tree(&tree, commit) < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot read the tree of commit %s", hex);
        goto out;
    }
    /* The first parent, unless this is a root commit or the shallow boundary. */
    if (git_commit_parentcount(commit) > 0 && !repo_is_shallow_commit(r, commit_id)) {
        char phex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(phex, sizeof phex, git_commit_parent_id(commit, 0));
        if (git_commit_parent(&parent, commit, 0) < 0) {
            rc = fail_git(err, REPO_ERROR, "cannot read parent %s of commit %s", phex, hex);
            goto out;
        }
        if (git_commit_tree(&parent_tree, parent) < 0) {
            rc = fail_git(err, REPO_ERROR, "cannot read the tree of commit %s", phex);
            goto out;
        }
    }

    /* No context lines: the counts do not depend on them and the diff is cheaper. */
    git_diff_options opts;
    git_diff_options_init(&opts, GIT_DIFF_OPTIONS_VERSION);
    opts.flags = GIT_DIFF_INCLUDE_TYPECHANGE;
    opts.context_lines = 0;
    opts.interhunk_lines = 0;
    if (git_diff_tree_to_tree(&diff, r->git, parent_tree, tree, &opts) < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot diff commit %s", hex);
        goto out;
    }
    /* Renames as `git diff` finds them by default: 50% similarity, rename limit 1000. */
    git_diff_find_options find;
    git_diff_find_options_init(&find, GIT_DIFF_FIND_OPTIONS_VERSION);
    find.flags = GIT_DIFF_FIND_RENAMES;
    find.rename_threshold = 50;
    find.rename_limit = 1000;
    if (git_diff_find_similar(diff, &find) < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot detect renames in commit %s", hex);
        goto out;
    }

    size_t n = git_diff_num_deltas(diff);
    out->diff = diff;
    diff = NULL;
    out->items = calloc(n ? n : 1, sizeof *out->items);
    if (!out->items) {
        rc = fail(err, REPO_ERROR, "out of memory");
        goto out;
    }
    out->count = n;
    for (size_t i = 0; i < n; i++) {
        const git_diff_delta *d = git_diff_get_delta(out->diff, i);
        repo_change *c = &out->items[i];
        c->status = status_of(d->status);
        c->path = d->status == GIT_DELTA_DELETED ? d->old_file.path : d->new_file.path;
        if (d->status == GIT_DELTA_RENAMED || d->status == GIT_DELTA_COPIED)
            c->old_path = d->old_file.path;
    }
    count_state state = {out, 0};
    e = git_diff_foreach(out->diff, count_file, count_binary, NULL, count_line, &state);
    if (e < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot compute the line counts of commit %s", hex);
        goto out;
    }
    /* The binary flag is final once the content was loaded; binary files count 0/0
     * (numstat prints "-" for them). */
    for (size_t i = 0; i < n; i++) {
        const git_diff_delta *d = git_diff_get_delta(out->diff, i);
        if (d->status == GIT_DELTA_TYPECHANGE &&
            count_typechange(r->git, d, &out->items[i]) < 0) {
            rc = fail_git(err, REPO_ERROR, "cannot count the lines of %s in commit %s",
                          d->new_file.path, hex);
            goto out;
        }
        if (d->flags & GIT_DIFF_FLAG_BINARY)
            out->items[i].binary = 1;
        if (out->items[i].binary)
            out->items[i].insertions = out->items[i].deletions = 0;
    }

out:
    if (rc != REPO_OK)
        repo_changes_free(out);
    git_diff_free(diff);
    git_tree_free(parent_tree);
    git_tree_free(tree);
    git_commit_free(parent);
    git_commit_free(commit);
    return rc;
}

void repo_changes_free(repo_changes *c)
{
    free(c->items);
    git_diff_free(c->diff);
    memset(c, 0, sizeof *c);
}

/* --- blobs ------------------------------------------------------------------------- */

int repo_blob_size(repo *r, const char *treeish, const char *path, git_oid *blob,
                   size_t *size, int *path_missing, char *err)
{
    git_object *obj = NULL;
    git_tree *tree = NULL;
    git_tree_entry *entry = NULL;
    git_odb *odb = NULL;
    int rc, e;
    *path_missing = 0;
    *size = 0;

    rc = lookup_revision(r, treeish, &obj, err);
    if (rc != REPO_OK)
        goto out;
    e = git_object_peel((git_object **)&tree, obj, GIT_OBJECT_TREE);
    if (e < 0) {
        rc = e == GIT_EINVALIDSPEC || e == GIT_EPEEL || e == GIT_ENOTFOUND
                 ? fail(err, REPO_ERROR, "revision %s is a %s, not a tree-ish", treeish,
                        git_object_type2string(git_object_type(obj)))
                 : fail_git(err, REPO_ERROR, "cannot read the tree of %s", treeish);
        goto out;
    }
    e = git_tree_entry_bypath(&entry, tree, path);
    if (e == GIT_ENOTFOUND) {
        *path_missing = 1;
        rc = fail(err, REPO_ENOTFOUND, "%s does not exist at %s", path, treeish);
        goto out;
    }
    if (e < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot look up %s at %s", path, treeish);
        goto out;
    }
    if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB) {
        rc = fail(err, REPO_ENOTFILE, "%s is a %s at %s, not a file", path,
                  git_tree_entry_filemode(entry) == GIT_FILEMODE_COMMIT ? "submodule"
                                                                         : "directory",
                  treeish);
        goto out;
    }
    git_oid_cpy(blob, git_tree_entry_id(entry));
    if (git_repository_odb(&odb, r->git) < 0) {
        rc = fail_git(err, REPO_ERROR, "cannot open the object database");
        goto out;
    }
    git_object_t type;
    e = git_odb_read_header(size, &type, odb, blob);
    if (e < 0) {
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, blob);
        rc = fail_git(err, REPO_ERROR, "cannot read blob %s (%s at %s)", hex, path, treeish);
        goto out;
    }
    rc = REPO_OK;
out:
    git_odb_free(odb);
    git_tree_entry_free(entry);
    git_tree_free(tree);
    git_object_free(obj);
    return rc;
}

int repo_read(repo *r, const char *treeish, const char *path, size_t max_bytes,
              git_blob **out, size_t *size, int *path_missing, char *err)
{
    *out = NULL;
    git_oid id;
    int rc = repo_blob_size(r, treeish, path, &id, size, path_missing, err);
    if (rc != REPO_OK)
        return rc;
    if (*size > max_bytes)
        return fail(err, REPO_ETOOLARGE, "%s at %s is %zu bytes, more than %zu", path, treeish,
                    *size, max_bytes);
    git_blob *blob = NULL;
    if (git_blob_lookup(&blob, r->git, &id) < 0) {
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &id);
        return fail_git(err, REPO_ERROR, "cannot read blob %s (%s at %s)", hex, path, treeish);
    }
    size_t len = (size_t)git_blob_rawsize(blob);
    const void *content = git_blob_rawcontent(blob);
    if (is_binary(content, len)) {
        git_blob_free(blob);
        return fail(err, REPO_EBINARY, "%s at %s is binary", path, treeish);
    }
    *size = len;
    *out = blob;
    return REPO_OK;
}

/* --- writing commits ----------------------------------------------------------------- */

int repo_commit_files(repo *r, const repo_commit_spec *spec, git_oid *out, char *err)
{
    int rc = REPO_ERROR;
    git_commit *parent = NULL;
    git_tree *baseline = NULL, *tree = NULL;
    git_signature *sig = NULL;
    git_reference *ref = NULL;
    git_tree_update *updates = NULL;
    git_oid parent_id, tree_id;

    rc = repo_resolve_commit(r, spec->parent, &parent_id, err);
    if (rc != REPO_OK)
        goto out;
    rc = REPO_ERROR;
    if (git_commit_lookup(&parent, r->git, &parent_id) != 0 ||
        git_commit_tree(&baseline, parent) != 0) {
        fail_git(err, REPO_ERROR, "cannot read the parent commit %s", spec->parent);
        goto out;
    }
    updates = calloc(spec->update_count ? spec->update_count : 1, sizeof *updates);
    if (!updates) {
        snprintf(err, REPO_ERRLEN, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < spec->update_count; i++) {
        const repo_file_update *u = &spec->updates[i];
        updates[i].path = u->path;
        if (u->content) {
            if (git_blob_create_from_buffer(&updates[i].id, r->git, u->content, u->size) != 0) {
                fail_git(err, REPO_ERROR, "cannot write the blob of %s", u->path);
                goto out;
            }
            updates[i].action = GIT_TREE_UPDATE_UPSERT;
            updates[i].filemode = GIT_FILEMODE_BLOB;
        } else {
            updates[i].action = GIT_TREE_UPDATE_REMOVE;
        }
    }
    if (git_tree_create_updated(&tree_id, r->git, baseline, spec->update_count, updates) != 0) {
        fail_git(err, REPO_ERROR, "cannot build the new tree");
        goto out;
    }
    if (git_tree_lookup(&tree, r->git, &tree_id) != 0) {
        fail_git(err, REPO_ERROR, "cannot read the new tree");
        goto out;
    }
    int made = spec->time > 0
        ? git_signature_new(&sig, spec->author, spec->email, (git_time_t)spec->time, 0)
        : git_signature_now(&sig, spec->author, spec->email);
    if (made != 0) {
        fail_git(err, REPO_ERROR, "invalid author or email");
        goto out;
    }
    const git_commit *parents[1] = {parent};
    if (git_commit_create(out, r->git, NULL, sig, sig, NULL, spec->message, tree, 1,
                          parents) != 0) {
        fail_git(err, REPO_ERROR, "cannot write the commit");
        goto out;
    }
    if (spec->ref &&
        git_reference_create(&ref, r->git, spec->ref, out, 1, "loreley: commit") != 0) {
        fail_git(err, REPO_ERROR, "cannot update %s", spec->ref);
        goto out;
    }
    rc = REPO_OK;
out:
    git_reference_free(ref);
    git_signature_free(sig);
    git_tree_free(tree);
    git_tree_free(baseline);
    git_commit_free(parent);
    free(updates);
    return rc;
}
