/*
 * repo_fetch.c - fetching from a remote with a timeout (see repo.h).
 *
 * libgit2 1.5 has no network timeout of its own, and a blocked read cannot be
 * interrupted from outside. So the transfer runs in a thread on its own handle of the
 * repository, and the caller waits on a condition variable until the thread is done,
 * the deadline passes, or the caller's cancel predicate fires. On timeout the thread is
 * abandoned: it notices at its next progress callback (returning an error stops
 * libgit2) or when the connection fails, and then frees the job itself. The job is
 * reference-counted between the two sides for exactly that reason.
 *
 * Credentials are copied into the job before the thread starts, so the thread never
 * reads the environment or the caller's strings.
 */
#include "repo.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct fetch_job {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;                 /* 2 while both sides hold it; the last one frees */
    int done;                 /* set by the thread under lock */
    int abandoned;            /* set by the caller under lock; read by the callbacks */

    char *gitdir;
    char *remote;             /* its name, for messages */
    char *url;                /* the URL to fetch from (insteadOf applied) */
    char **refspecs;
    size_t refspec_count;
    int tags;
    int depth;
    char *username, *password, *token, *ssh_key, *ssh_public_key, *ssh_passphrase;

    /* Written by the thread only (read by the caller after `done`). */
    int status;
    char err[REPO_ERRLEN];
    char auth_err[REPO_ERRLEN];   /* set when the credential callback gave up */
    repo_fetch_stats stats;
    int tried_ssh_key, tried_agent, tried_userpass;
} fetch_job;

static void job_free(fetch_job *j)
{
    for (size_t i = 0; i < j->refspec_count; i++)
        free(j->refspecs[i]);
    free(j->refspecs);
    free(j->gitdir);
    free(j->remote);
    free(j->url);
    free(j->username);
    free(j->ssh_key);
    free(j->ssh_public_key);
    /* Secrets are wiped before the memory goes back to the allocator. */
    char *secrets[] = {j->password, j->token, j->ssh_passphrase};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        if (secrets[i])
            explicit_bzero(secrets[i], strlen(secrets[i]));
        free(secrets[i]);
    }
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    free(j);
}

static void job_release(fetch_job *j)
{
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left == 0)
        job_free(j);
}

static int job_abandoned(fetch_job *j)
{
    pthread_mutex_lock(&j->lock);
    int a = j->abandoned;
    pthread_mutex_unlock(&j->lock);
    return a;
}

static void set_err(fetch_job *j, char *buf, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(fetch_job *j, char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, REPO_ERRLEN, fmt, ap);
    va_end(ap);
    repo_mask_url_secrets(buf);
}

/* --- callbacks (run in the fetch thread) --------------------------------------------- */

static int on_progress(const git_indexer_progress *p, void *payload)
{
    fetch_job *j = payload;
    j->stats.objects = p->received_objects;
    j->stats.bytes = p->received_bytes;
    return job_abandoned(j) ? GIT_EUSER : 0;
}

static int on_sideband(const char *text, int len, void *payload)
{
    return job_abandoned(payload) ? GIT_EUSER : 0;
}

static int on_update_tip(const char *refname, const git_oid *a, const git_oid *b, void *payload)
{
    fetch_job *j = payload;
    j->stats.updated_refs++;
    return 0;
}

/*
 * Offers each configured kind of credential once, in this order: an ssh key file, the
 * ssh agent, a user name and password (or token) for https. libgit2 calls back again
 * after a refused credential; once everything was offered the fetch fails with a
 * message naming what was tried. Credentials in the URL itself are used by libgit2
 * before this is called.
 */
static int on_credentials(git_credential **out, const char *url, const char *url_user,
                          unsigned int allowed, void *payload)
{
    fetch_job *j = payload;
    if (job_abandoned(j))
        return GIT_EUSER;
    if (allowed & GIT_CREDENTIAL_SSH_KEY) {
        const char *user = url_user && *url_user ? url_user : j->username ? j->username : "git";
        if (j->ssh_key && !j->tried_ssh_key) {
            j->tried_ssh_key = 1;
            return git_credential_ssh_key_new(out, user, j->ssh_public_key, j->ssh_key,
                                              j->ssh_passphrase);
        }
        if (!j->tried_agent) {
            j->tried_agent = 1;
            return git_credential_ssh_key_from_agent(out, user);
        }
    }
    if ((allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT) && !j->tried_userpass &&
        (j->password || j->token)) {
        j->tried_userpass = 1;
        const char *user = j->username                 ? j->username
                           : url_user && *url_user     ? url_user
                           : j->token && !j->password  ? "x-access-token"
                                                       : "";
        return git_credential_userpass_plaintext_new(out, user,
                                                     j->password ? j->password : j->token);
    }
    if ((allowed & GIT_CREDENTIAL_USERNAME) && (j->username || (url_user && *url_user)))
        return git_credential_username_new(out, url_user && *url_user ? url_user : j->username);

    char tried[160] = "";
    if (j->tried_ssh_key)
        strcat(tried, " ssh key file,");
    if (j->tried_agent)
        strcat(tried, " ssh agent,");
    if (j->tried_userpass)
        strcat(tried, " user name and password,");
    size_t n = strlen(tried);
    if (n)
        tried[n - 1] = '\0';
    set_err(j, j->auth_err, "authentication to %s failed (%s%s)", url,
            n ? "tried:" : "no credentials: set LORELEY_GIT_TOKEN, LORELEY_GIT_USERNAME and "
                           "LORELEY_GIT_PASSWORD, LORELEY_GIT_SSH_KEY, or run an ssh agent",
            n ? tried : "");
    git_error_set_str(GIT_ERROR_NET, j->auth_err);
    return GIT_EAUTH;
}

/* --- the thread ---------------------------------------------------------------------- */

static void run_fetch(fetch_job *j)
{
    git_repository *git = NULL;
    git_remote *remote = NULL;
    if (git_repository_open_ext(&git, j->gitdir, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) < 0) {
        const git_error *e = git_error_last();
        set_err(j, j->err, "cannot open %s: %s", j->gitdir, e ? e->message : "unknown error");
        j->status = REPO_ERROR;
        goto out;
    }
    if (repo_guard_loose_objects(git, j->err) != REPO_OK) {
        j->status = REPO_ERROR;
        goto out;
    }
    /* An anonymous remote on the configured URL: see repo.h on git_remote_lookup. */
    git_remote_create_options co;
    git_remote_create_options_init(&co, GIT_REMOTE_CREATE_OPTIONS_VERSION);
    co.repository = git;
    co.flags = GIT_REMOTE_CREATE_SKIP_INSTEADOF | GIT_REMOTE_CREATE_SKIP_DEFAULT_FETCHSPEC;
    if (git_remote_create_with_opts(&remote, j->url, &co) < 0) {
        const git_error *e = git_error_last();
        set_err(j, j->err, "remote %s: %s", j->remote, e ? e->message : "unknown error");
        j->status = REPO_ERROR;
        goto out;
    }
    git_fetch_options fo;
    git_fetch_options_init(&fo, GIT_FETCH_OPTIONS_VERSION);
    fo.callbacks.transfer_progress = on_progress;
    fo.callbacks.sideband_progress = on_sideband;
    fo.callbacks.update_tips = on_update_tip;
    fo.callbacks.credentials = on_credentials;
    fo.callbacks.payload = j;
    fo.download_tags = j->tags ? GIT_REMOTE_DOWNLOAD_TAGS_ALL : GIT_REMOTE_DOWNLOAD_TAGS_NONE;
    fo.prune = GIT_FETCH_NO_PRUNE;
    fo.update_fetchhead = 1;
#if LIBGIT2_VER_MAJOR > 1 || (LIBGIT2_VER_MAJOR == 1 && LIBGIT2_VER_MINOR >= 7)
    fo.depth = j->depth;
#endif
    git_strarray specs = {j->refspecs, j->refspec_count};
    char reflog[64];
    snprintf(reflog, sizeof reflog, "fetch %s (loreley-host)", j->remote);
    if (git_remote_fetch(remote, &specs, &fo, reflog) < 0) {
        const git_error *e = git_error_last();
        if (j->auth_err[0])
            set_err(j, j->err, "fetch from %s failed: %s", j->remote, j->auth_err);
        else
            set_err(j, j->err, "fetch from %s failed: %s", j->remote,
                    e && e->message ? e->message : "unknown error");
        j->status = REPO_ERROR;
        goto out;
    }
    j->status = REPO_OK;
out:
    git_remote_free(remote);
    git_repository_free(git);
}

static void *fetch_thread(void *arg)
{
    fetch_job *j = arg;
    run_fetch(j);
    pthread_mutex_lock(&j->lock);
    j->done = 1;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
    job_release(j);
    return NULL;
}

/* --- the caller's side --------------------------------------------------------------- */

int repo_fetch_supports_depth(void)
{
#if LIBGIT2_VER_MAJOR > 1 || (LIBGIT2_VER_MAJOR == 1 && LIBGIT2_VER_MINOR >= 7)
    return 1;
#else
    return 0;
#endif
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static int add_refspec(fetch_job *j, size_t *cap, const char *spec)
{
    if (j->refspec_count == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        char **grown = realloc(j->refspecs, ncap * sizeof *grown);
        if (!grown)
            return -1;
        j->refspecs = grown;
        *cap = ncap;
    }
    char *copy = strdup(spec);
    if (!copy)
        return -1;
    j->refspecs[j->refspec_count++] = copy;
    return 0;
}

typedef struct refspec_collect {
    fetch_job *job;
    size_t *cap;
    int failed;
} refspec_collect;

static int collect_refspec(const git_config_entry *entry, void *payload)
{
    refspec_collect *c = payload;
    if (entry->value && *entry->value && add_refspec(c->job, c->cap, entry->value) < 0) {
        c->failed = 1;
        return -1;
    }
    return 0;
}

/*
 * Reads the remote's URL (rewritten by url.<base>.insteadOf) into the job and builds
 * the refspec list: the configured ones, job branches, a commit, extras.
 */
static int build_refspecs(git_repository *git, const repo_fetch_options *o, fetch_job *j,
                          char *err)
{
    char *url = NULL;
    int rc = repo_remote_url(git, o->remote, &url, err);
    if (rc != REPO_OK)
        return rc;
    j->url = repo_rewrite_url(git, url);
    free(url);
    if (!j->url) {
        snprintf(err, REPO_ERRLEN, "out of memory");
        return REPO_ERROR;
    }
    size_t cap = 0;
    char spec[1024];
    if (o->configured) {
        git_config *cfg = NULL;
        char key[512];
        int n = snprintf(key, sizeof key, "remote.%s.fetch", o->remote);
        refspec_collect c = {j, &cap, 0};
        int e = n < 0 || (size_t)n >= sizeof key ? -1 : git_repository_config_snapshot(&cfg, git);
        if (e == 0) {
            e = git_config_get_multivar_foreach(cfg, key, NULL, collect_refspec, &c);
            if (e == GIT_ENOTFOUND)
                e = 0;
        }
        git_config_free(cfg);
        if (e < 0 || c.failed) {
            snprintf(err, REPO_ERRLEN, "remote %s: cannot read its fetch refspecs", o->remote);
            return REPO_ERROR;
        }
    }
    if (o->job_prefix) {
        int n = snprintf(spec, sizeof spec, "+refs/heads/%s/*:refs/remotes/%s/%s/*",
                         o->job_prefix, o->remote, o->job_prefix);
        if (n < 0 || (size_t)n >= sizeof spec || add_refspec(j, &cap, spec) < 0)
            rc = REPO_ERROR;
    }
    if (rc == REPO_OK && o->commit && add_refspec(j, &cap, o->commit) < 0)
        rc = REPO_ERROR;
    for (size_t i = 0; rc == REPO_OK && i < o->refspec_count; i++)
        if (add_refspec(j, &cap, o->refspecs[i]) < 0)
            rc = REPO_ERROR;
    if (rc != REPO_OK) {
        snprintf(err, REPO_ERRLEN, "out of memory (or a refspec too long)");
        return rc;
    }
    /* No refspec at all would make libgit2 fetch nothing but tags: say so instead. */
    if (j->refspec_count == 0 && !o->tags) {
        snprintf(err, REPO_ERRLEN, "nothing to fetch from %s (no refspec, no tags)", o->remote);
        return REPO_ERROR;
    }
    return REPO_OK;
}

static struct timespec deadline_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double whole = (double)(long)seconds;
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static int before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

int repo_fetch(repo *r, const repo_fetch_options *o, repo_fetch_stats *stats, char *err)
{
    memset(stats, 0, sizeof *stats);
    err[0] = '\0';
    if (o->depth > 0 && !repo_fetch_supports_depth()) {
        snprintf(err, REPO_ERRLEN, "shallow fetch (depth) needs libgit2 >= 1.7; this is %d.%d",
                 LIBGIT2_VER_MAJOR, LIBGIT2_VER_MINOR);
        return REPO_ERROR;
    }
    fetch_job *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, REPO_ERRLEN, "out of memory");
        return REPO_ERROR;
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cond, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    j->tags = o->tags;
    j->depth = o->depth;

    int rc = build_refspecs(repo_git(r), o, j, err);
    if (rc != REPO_OK) {
        job_free(j);
        return rc;
    }
    int oom = 0;
    j->gitdir = dup_or_null(git_repository_path(repo_git(r)), &oom);
    j->remote = dup_or_null(o->remote, &oom);
    j->username = dup_or_null(o->credentials.username, &oom);
    j->password = dup_or_null(o->credentials.password, &oom);
    j->token = dup_or_null(o->credentials.token, &oom);
    j->ssh_key = dup_or_null(o->credentials.ssh_key, &oom);
    j->ssh_public_key = dup_or_null(o->credentials.ssh_public_key, &oom);
    j->ssh_passphrase = dup_or_null(o->credentials.ssh_passphrase, &oom);
    if (oom) {
        job_free(j);
        snprintf(err, REPO_ERRLEN, "out of memory");
        return REPO_ERROR;
    }

    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    j->refs = 2;
    int e = pthread_create(&thread, &attr, fetch_thread, j);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        job_free(j);
        snprintf(err, REPO_ERRLEN, "cannot start the fetch thread: %s", strerror(e));
        return REPO_ERROR;
    }

    /* Wait in slices so the cancel predicate is polled (a stop request, say). */
    struct timespec deadline = deadline_after(o->timeout > 0 ? o->timeout : 0);
    pthread_mutex_lock(&j->lock);
    while (!j->done) {
        struct timespec now, slice = deadline_after(0.1);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (o->timeout > 0 && !before(&now, &deadline))
            break;
        if (o->cancelled) {
            pthread_mutex_unlock(&j->lock);
            int stop = o->cancelled();
            pthread_mutex_lock(&j->lock);
            if (stop)
                break;
        }
        if (o->timeout > 0 && before(&deadline, &slice))
            slice = deadline;
        pthread_cond_timedwait(&j->cond, &j->lock, &slice);
    }
    int finished = j->done;
    if (!finished)
        j->abandoned = 1;
    pthread_mutex_unlock(&j->lock);

    if (!finished) {
        if (o->timeout > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!before(&now, &deadline))
                snprintf(err, REPO_ERRLEN, "fetch from %s timed out after %g s", o->remote,
                         o->timeout);
        }
        if (!err[0])
            snprintf(err, REPO_ERRLEN, "fetch from %s cancelled", o->remote);
        job_release(j);
        return REPO_ETIMEOUT;
    }
    rc = j->status;
    if (rc != REPO_OK)
        snprintf(err, REPO_ERRLEN, "%s", j->err);
    *stats = j->stats;
    job_release(j);

    /* New packs and loose objects become visible to this handle. */
    git_odb *odb = NULL;
    if (rc == REPO_OK && git_repository_odb(&odb, repo_git(r)) == 0) {
        git_odb_refresh(odb);
        git_odb_free(odb);
    }
    return rc;
}
