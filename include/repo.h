/*
 * repo.h - the git operations the scheduler needs, over libgit2 (no Lua): open a
 * repository root, resolve revisions to commits, list the files a commit changed with
 * numstat-like line counts, read blobs under a size limit, and fetch from a remote with
 * a timeout and credentials.
 *
 * Error idiom: every function that can fail returns REPO_OK (0) or a negative REPO_E*
 * code and writes a one-line message into err (REPO_ERRLEN bytes; never NULL). Messages
 * never contain a password or token embedded in a URL.
 *
 * Shallow repositories: commits listed in <gitdir>/shallow are treated as having no
 * parents, as git does (libgit2 1.5 does not read that file itself).
 */
#ifndef LORELEY_REPO_H
#define LORELEY_REPO_H

#include <stddef.h>

#include <git2.h>

#define REPO_ERRLEN 512

enum {
    REPO_OK = 0,
    REPO_ERROR = -1,       /* anything else: err says what */
    REPO_ENOTFOUND = -2,   /* no such revision, object, path or remote */
    REPO_ENOTREPO = -3,    /* repo_open: the path is not a repository root */
    REPO_ETOOLARGE = -4,   /* repo_read: the blob is larger than max_bytes */
    REPO_EBINARY = -5,     /* repo_read: a NUL byte in the first 8000 bytes, as git */
    REPO_ENOTFILE = -6,    /* the path names a directory or a submodule, not a blob */
    REPO_ETIMEOUT = -7,    /* repo_fetch: the timeout passed (or the caller cancelled) */
};

typedef struct repo repo;

/* Initialises libgit2 once per process (thread-safe). Returns REPO_OK or REPO_ERROR. */
int repo_global_init(char *err);

/*
 * Opens the repository whose root is `path`: a working tree with a .git inside, or a
 * bare repository (or a .git directory itself). Parent directories are not searched,
 * so a subdirectory of a work tree is REPO_ENOTREPO ("<path> is not a git
 * repository"). The caller owns *out and frees it with repo_close.
 */
int repo_open(repo **out, const char *path, char *err);
void repo_close(repo *r);

git_repository *repo_git(const repo *r);

/*
 * Puts a careful reader of loose objects in front of libgit2's (repo_loose.c): libgit2
 * 1.5 loops for ever on a truncated loose object; with this, damage is an error.
 * repo_open does it; a separately opened handle (the fetch thread's) calls it too.
 */
int repo_guard_loose_objects(git_repository *git, char *err);
/* The work tree root (bare: the git directory), absolute, without a trailing '/'. */
const char *repo_root(const repo *r);
/* Whether the repository has no work tree (the handle itself is always opened bare). */
int repo_is_bare(const repo *r);

/* 1 when the commit is listed in <gitdir>/shallow (re-read when the file changes). */
int repo_is_shallow_commit(repo *r, const git_oid *commit);

/*
 * Resolves a revision (hash, abbreviated hash, branch, tag, "HEAD~2", ...) to the
 * commit it names; annotated tags are peeled. REPO_ENOTFOUND when nothing matches,
 * REPO_ERROR when it names something that is not a commit, is ambiguous, or cannot
 * be read.
 */
int repo_resolve_commit(repo *r, const char *rev, git_oid *out, char *err);

/*
 * Whether `hex` (4..40 hex digits) names a commit object present in the object
 * database. Returns 1 or 0 (also 0 for text that cannot be a hash), or REPO_ERROR
 * when the object exists but cannot be read (e.g. a corrupted loose object).
 */
int repo_has_commit(repo *r, const char *hex, char *err);

/* --- remotes ---------------------------------------------------------------------- */
/*
 * Remotes are read from the configuration directly, never through git_remote_lookup
 * or git_remote_list: in libgit2 1.5 those match every configuration entry against a
 * regular expression and leak about 20 KB of PCRE2 match data per entry that does not
 * match (tens per call), which a scheduler fetching on every ingest cannot afford.
 */
typedef struct repo_remote {
    char *name;
    char *url;   /* NULL when the remote has no url */
} repo_remote;

/* The configured remotes in configuration order. Free with repo_remotes_free. */
int repo_remotes(repo *r, repo_remote **out, size_t *count, char *err);
void repo_remotes_free(repo_remote *list, size_t count);

/* The URL of remote `name` as configured (malloc'd, caller frees); REPO_ENOTFOUND when
 * there is no such remote or it has no url. */
int repo_remote_url(git_repository *git, const char *name, char **url, char *err);

/* The URL git would connect to: url.<base>.insteadOf rewriting applied (malloc'd). */
char *repo_rewrite_url(git_repository *git, const char *url);

/* --- changed files ------------------------------------------------------------------ */

typedef enum repo_change_status {
    REPO_CHANGE_ADDED,
    REPO_CHANGE_MODIFIED,
    REPO_CHANGE_DELETED,
    REPO_CHANGE_RENAMED,
    REPO_CHANGE_COPIED,
    REPO_CHANGE_TYPECHANGE,
} repo_change_status;

const char *repo_change_status_name(repo_change_status s);

typedef struct repo_change {
    const char *path;       /* new path (old path for a deletion); raw bytes, not quoted */
    const char *old_path;   /* renames and copies only, else NULL */
    size_t insertions;      /* lines, as `git show --numstat` counts them; 0 for binary */
    size_t deletions;
    repo_change_status status;
    int binary;
} repo_change;

/* Owns the changes; paths point into the diff kept here. Free with repo_changes_free. */
typedef struct repo_changes {
    repo_change *items;
    size_t count;
    git_diff *diff;
} repo_changes;

/*
 * The files `commit` changed against its first parent (merges: parent 1), or its
 * whole tree for a root or shallow-boundary commit, with renames detected as git does
 * by default (50% similarity, at most 1000 candidates). Ordered by path. On success
 * the caller frees *out with repo_changes_free; on failure *out is empty.
 */
int repo_changed_files(repo *r, const git_oid *commit, repo_changes *out, char *err);
void repo_changes_free(repo_changes *c);

/* --- blobs ------------------------------------------------------------------------- */

/*
 * Finds the blob at `path` in the tree of `treeish` and its size, read from the object
 * header without inflating the content. REPO_ENOTFOUND: the path does not exist (the
 * message says whether the path or the revision was missing: *path_missing is set for
 * the former). REPO_ENOTFILE: a directory or a submodule.
 */
int repo_blob_size(repo *r, const char *treeish, const char *path, git_oid *blob,
                   size_t *size, int *path_missing, char *err);

/*
 * Reads the blob at treeish:path when its size is at most max_bytes (SIZE_MAX: no
 * limit): the size is checked from the object header before the content is loaded.
 * REPO_ETOOLARGE (*size set), REPO_EBINARY, REPO_ENOTFOUND, REPO_ENOTFILE, REPO_ERROR.
 * On success *out is the blob (caller frees with git_blob_free).
 */
int repo_read(repo *r, const char *treeish, const char *path, size_t max_bytes,
              git_blob **out, size_t *size, int *path_missing, char *err);

/* --- writing commits ----------------------------------------------------------------- */

typedef struct repo_file_update {
    const char *path;      /* path in the tree ("dir/file.py") */
    const char *content;   /* new content; NULL removes the path */
    size_t size;
} repo_file_update;

typedef struct repo_commit_spec {
    const char *parent;    /* revision of the parent commit (its tree is the baseline) */
    const repo_file_update *updates;
    size_t update_count;
    const char *message;
    const char *author;    /* also the committer */
    const char *email;
    double time;           /* epoch seconds; <= 0: now */
    const char *ref;       /* full ref name to point at the commit ("refs/heads/..."),
                              or NULL to leave every ref alone */
} repo_commit_spec;

/*
 * Writes a commit whose tree is the parent's tree with the updates applied (blobs,
 * tree and commit go straight into the object database: no work tree, no index), and
 * optionally points `ref` at it (created or moved). This is how the example worker
 * "checks out the base, edits, commits on the job branch" without a checkout. On
 * success *out is the new commit id.
 */
int repo_commit_files(repo *r, const repo_commit_spec *spec, git_oid *out, char *err);

/* --- fetch ------------------------------------------------------------------------- */

typedef struct repo_credentials {
    const char *username;         /* https user (default: from the URL, or
                                     "x-access-token" with a token); ssh user */
    const char *password;         /* https password */
    const char *token;            /* https token, sent as the password */
    const char *ssh_key;          /* private key file (else the ssh agent) */
    const char *ssh_public_key;   /* optional public key file */
    const char *ssh_passphrase;   /* passphrase of ssh_key */
} repo_credentials;

typedef struct repo_fetch_options {
    const char *remote;          /* the name of a configured remote */
    const char *job_prefix;      /* fetch refs/heads/<p>/NAME into
                                    refs/remotes/<remote>/<p>/NAME; NULL: none */
    int configured;              /* also the remote's configured fetch refspecs */
    int tags;                    /* every tag (refs/tags/NAME) */
    const char *commit;          /* also ask for this object id (NULL: none) */
    const char *const *refspecs; /* extra refspecs */
    size_t refspec_count;
    double timeout;              /* seconds; <= 0 waits for ever */
    int depth;                   /* > 0: shallow fetch (needs libgit2 >= 1.7) */
    repo_credentials credentials;
    int (*cancelled)(void);      /* polled while waiting; nonzero abandons the fetch */
} repo_fetch_options;

typedef struct repo_fetch_stats {
    size_t objects;              /* received objects */
    size_t bytes;                /* received bytes */
    size_t updated_refs;
} repo_fetch_stats;

/* 1 when this libgit2 can make shallow fetches (options.depth). */
int repo_fetch_supports_depth(void);

/*
 * Fetches from a remote. The transfer runs in its own thread on its own handle of the
 * repository; when the timeout passes (or cancelled() returns nonzero) the call
 * returns REPO_ETIMEOUT at once and the thread is abandoned: it stops at the next
 * progress callback or network error and frees its own resources. Objects fetched
 * are visible through r afterwards. REPO_ENOTFOUND: no such remote.
 */
int repo_fetch(repo *r, const repo_fetch_options *options, repo_fetch_stats *stats,
               char *err);

/* Replaces the password of every "scheme://user:password@" in s with "***" (in place). */
void repo_mask_url_secrets(char *s);

#endif
