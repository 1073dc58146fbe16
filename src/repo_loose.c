/*
 * repo_loose.c - a careful reader of loose objects, placed in front of libgit2's own.
 *
 * Why: libgit2 1.5 spins for ever inflating a loose object whose zlib stream is cut
 * short (its zstream loop makes no progress on Z_BUF_ERROR and never gives up). A
 * truncated object file is ordinary damage (a full disk, a killed writer), and the
 * scheduler must report it, not hang. This backend reads loose objects itself with
 * every zlib result checked, and answers before libgit2's loose backend is asked:
 * a good object is returned, a damaged one is an error that stops the lookup, and an
 * object that is not loose is passed on to the pack backends.
 *
 * Commits, trees and tags are verified against their names here; libgit2's own
 * verification is off (see repo_global_init). Writes, streams and iteration stay with
 * libgit2's backends.
 */
#include "repo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <git2/sys/odb_backend.h>

/* Above libgit2's loose (1) and packed (2) backends. */
#define LOOSE_GUARD_PRIORITY 1000
/* "commit 18446744073709551615\0" fits; git's header is at most this long. */
#define HEADER_MAX 64

typedef struct loose_backend {
    git_odb_backend parent;
    char *objects_dir;
} loose_backend;

static int corrupt(const git_oid *id, const char *why)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, id);
    git_error_set(GIT_ERROR_ODB, "corrupt loose object %s: %s", hex, why);
    return GIT_ERROR;
}

static void object_path(const loose_backend *b, const char *hex, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%.2s/%s", b->objects_dir, hex, hex + 2);
}

/*
 * Reads up to `limit` bytes of the object file (SIZE_MAX: all of it) into a malloc'd
 * buffer. *whole tells whether that was the entire file. GIT_ENOTFOUND when the object
 * is not loose.
 */
static int read_file(const char *path, size_t limit, unsigned char **out, size_t *len,
                     int *whole)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return GIT_ENOTFOUND;
        git_error_set(GIT_ERROR_OS, "cannot open %s: %s", path, strerror(errno));
        return GIT_ERROR;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        git_error_set(GIT_ERROR_OS, "cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return GIT_ERROR;
    }
    size_t size = (size_t)st.st_size;
    size_t want = size < limit ? size : limit;
    unsigned char *buf = malloc(want ? want : 1);
    if (!buf) {
        close(fd);
        git_error_set_oom();
        return GIT_ERROR;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            git_error_set(GIT_ERROR_OS, "cannot read %s: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return GIT_ERROR;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *len = got;
    *whole = got == size;
    return 0;
}

static int parse_type(const char *name, size_t n, git_object_t *type)
{
    static const struct {
        const char *name;
        git_object_t type;
    } types[] = {{"commit", GIT_OBJECT_COMMIT},
                 {"tree", GIT_OBJECT_TREE},
                 {"blob", GIT_OBJECT_BLOB},
                 {"tag", GIT_OBJECT_TAG}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i].name) == n && memcmp(types[i].name, name, n) == 0) {
            *type = types[i].type;
            return 0;
        }
    return -1;
}

/*
 * Inflates the header "<type> <size>\0" from the start of the stream. On success
 * zs is positioned after as much output as was produced into hdr[0..*produced), and
 * *hdr_len is the header's length including the NUL.
 */
static int inflate_header(z_stream *zs, const git_oid *id, unsigned char *hdr,
                          size_t *produced, size_t *hdr_len, git_object_t *type,
                          size_t *size)
{
    zs->next_out = hdr;
    zs->avail_out = HEADER_MAX;
    int ret = Z_OK;
    const unsigned char *nul = NULL;
    /* Each pass either makes progress or stops: Z_BUF_ERROR means none is possible. */
    while (!nul && zs->avail_out > 0 && ret == Z_OK) {
        ret = inflate(zs, Z_NO_FLUSH);
        nul = memchr(hdr, '\0', HEADER_MAX - zs->avail_out);
    }
    *produced = HEADER_MAX - zs->avail_out;
    if (!nul) {
        if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT)
            return corrupt(id, "bad zlib data");
        if (ret == Z_BUF_ERROR || ret == Z_OK)
            return corrupt(id, "truncated or unterminated header");
        return corrupt(id, "no header");
    }
    const char *text = (const char *)hdr;
    const char *space = memchr(text, ' ', (size_t)(nul - hdr));
    if (!space || parse_type(text, (size_t)(space - text), type) < 0)
        return corrupt(id, "unknown object type in header");
    const char *digit = space + 1;
    if (digit == (const char *)nul)
        return corrupt(id, "no size in header");
    size_t value = 0;
    for (const char *p = digit; p < (const char *)nul; p++) {
        if (*p < '0' || *p > '9')
            return corrupt(id, "bad size in header");
        if (value > (SIZE_MAX - 9) / 10)
            return corrupt(id, "size in header overflows");
        value = value * 10 + (size_t)(*p - '0');
    }
    *size = value;
    *hdr_len = (size_t)(nul - hdr) + 1;
    return 0;
}

static int looks_like_zlib(const unsigned char *buf, size_t len)
{
    if (len < 2)
        return 0;
    unsigned w = ((unsigned)buf[0] << 8) | buf[1];
    return (buf[0] & 0x8F) == 0x08 && w % 31 == 0;
}

/*
 * Reads one loose object. With data == NULL only the header is read (type, size).
 * Returns 0, GIT_ENOTFOUND (not loose: let the next backend answer), or GIT_ERROR.
 */
/*
 * Inflates one loose object from its file content. With data == NULL only the header
 * is read (type, *len = size). Returns 0 or GIT_ERROR (message set).
 */
static int inflate_object(loose_backend *b, const git_oid *id, const unsigned char *file,
                          size_t file_len, void **data, size_t *len, git_object_t *type)
{
    int rc;
    if (!looks_like_zlib(file, file_len))
        return corrupt(id, "not zlib data");

    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (file_len > UINT_MAX)
        return corrupt(id, "object file larger than 4 GiB");
    if (inflateInit(&zs) != Z_OK) {
        git_error_set_oom();
        return GIT_ERROR;
    }
    zs.next_in = (unsigned char *)file;
    zs.avail_in = (uInt)file_len;
    unsigned char hdr[HEADER_MAX];
    size_t produced = 0, hdr_len = 0, size = 0;
    rc = inflate_header(&zs, id, hdr, &produced, &hdr_len, type, &size);
    if (rc != 0)
        goto out;
    *len = size;
    if (!data)
        goto out;

    if (size == SIZE_MAX) {
        rc = corrupt(id, "size in header too large");
        goto out;
    }
    unsigned char *body = git_odb_backend_data_alloc(&b->parent, size + 1);
    if (!body) {
        rc = GIT_ERROR;
        goto out;
    }
    size_t have = produced - hdr_len;
    if (have > size) {
        git_odb_backend_data_free(&b->parent, body);
        rc = corrupt(id, "longer than its header says");
        goto out;
    }
    memcpy(body, hdr + hdr_len, have);
    /* One byte of room past the end catches content longer than the header says. */
    zs.next_out = body + have;
    size_t room = size + 1 - have;
    int ret = Z_OK;
    while (ret == Z_OK) {
        uInt chunk = room > UINT_MAX ? UINT_MAX : (uInt)room;
        zs.avail_out = chunk;
        ret = inflate(&zs, Z_NO_FLUSH);
        size_t wrote = chunk - zs.avail_out;
        have += wrote;
        room -= wrote;
        if (ret == Z_OK && wrote == 0 && zs.avail_in == 0)
            ret = Z_BUF_ERROR;
    }
    const char *why = NULL;
    if (have > size)
        why = "longer than its header says";
    else if (ret == Z_DATA_ERROR || ret == Z_NEED_DICT || ret == Z_MEM_ERROR)
        why = "bad zlib data";
    else if (ret != Z_STREAM_END)
        why = "truncated";
    else if (have != size)
        why = "shorter than its header says";
    else if (zs.avail_in != 0)
        why = "garbage after the end of the object";
    if (why) {
        git_odb_backend_data_free(&b->parent, body);
        rc = corrupt(id, why);
        goto out;
    }
    body[size] = '\0';
    /* Commits, trees and tags are hashed again (they are small); a blob's content is
     * covered by zlib's adler32 (see repo_global_init). */
    if (*type != GIT_OBJECT_BLOB) {
        git_oid actual;
        if (git_odb_hash(&actual, body, size, *type) < 0 || !git_oid_equal(&actual, id)) {
            git_odb_backend_data_free(&b->parent, body);
            rc = corrupt(id, "content does not match its name (hash mismatch)");
            goto out;
        }
    }
    *data = body;
out:
    inflateEnd(&zs);
    return rc;
}

static int read_object(loose_backend *b, const git_oid *id, void **data, size_t *len,
                       git_object_t *type)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, id);
    char path[PATH_MAX];
    object_path(b, hex, path, sizeof path);
    /* A header read needs only the start of the file; if 4 KiB do not hold the whole
     * header (pathological compression), the second pass reads everything. */
    size_t limit = data ? SIZE_MAX : 4096;
    for (;;) {
        unsigned char *file = NULL;
        size_t file_len = 0;
        int whole = 0;
        int rc = read_file(path, limit, &file, &file_len, &whole);
        if (rc != 0)
            return rc;
        rc = inflate_object(b, id, file, file_len, data, len, type);
        free(file);
        if (rc == 0 || whole || limit == SIZE_MAX)
            return rc;
        limit = SIZE_MAX;
    }
}

static int loose_read(void **data, size_t *len, git_object_t *type, git_odb_backend *backend,
                      const git_oid *id)
{
    return read_object((loose_backend *)backend, id, data, len, type);
}

static int loose_read_header(size_t *len, git_object_t *type, git_odb_backend *backend,
                             const git_oid *id)
{
    return read_object((loose_backend *)backend, id, NULL, len, type);
}

/* Abbreviated ids: find the single loose file whose name starts with the prefix. */
static int loose_read_prefix(git_oid *out, void **data, size_t *len, git_object_t *type,
                             git_odb_backend *backend, const git_oid *short_id, size_t n)
{
    loose_backend *b = (loose_backend *)backend;
    if (n >= GIT_OID_HEXSZ) {
        git_oid_cpy(out, short_id);
        return read_object(b, short_id, data, len, type);
    }
    if (n < 2)
        return GIT_PASSTHROUGH;
    char prefix[GIT_OID_HEXSZ + 1];
    git_oid_tostr(prefix, sizeof prefix, short_id);
    prefix[n] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%.2s", b->objects_dir, prefix);
    DIR *d = opendir(dir);
    if (!d)
        return GIT_ENOTFOUND;
    int found = 0;
    char full[GIT_OID_HEXSZ + 1];
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strlen(e->d_name) != GIT_OID_HEXSZ - 2 ||
            strncasecmp(e->d_name, prefix + 2, n - 2) != 0)
            continue;
        git_oid probe;
        char candidate[GIT_OID_HEXSZ + 1];
        snprintf(candidate, sizeof candidate, "%.2s%s", prefix, e->d_name);
        if (git_oid_fromstr(&probe, candidate) < 0)
            continue;
        if (found && strcasecmp(full, candidate) != 0) {
            closedir(d);
            git_error_set(GIT_ERROR_ODB, "ambiguous object prefix %s", prefix);
            return GIT_EAMBIGUOUS;
        }
        memcpy(full, candidate, sizeof full);
        found = 1;
    }
    closedir(d);
    if (!found)
        return GIT_ENOTFOUND;
    git_oid_fromstr(out, full);
    return read_object(b, out, data, len, type);
}

static void loose_free(git_odb_backend *backend)
{
    loose_backend *b = (loose_backend *)backend;
    free(b->objects_dir);
    free(b);
}

static int new_backend(git_odb_backend **out, const char *objects_dir)
{
    loose_backend *b = calloc(1, sizeof *b);
    if (!b)
        return -1;
    git_odb_init_backend(&b->parent, GIT_ODB_BACKEND_VERSION);
    b->objects_dir = strdup(objects_dir);
    if (!b->objects_dir) {
        free(b);
        return -1;
    }
    size_t n = strlen(b->objects_dir);
    while (n > 1 && b->objects_dir[n - 1] == '/')
        b->objects_dir[--n] = '\0';
    b->parent.read = loose_read;
    b->parent.read_header = loose_read_header;
    b->parent.read_prefix = loose_read_prefix;
    b->parent.free = loose_free;
    *out = &b->parent;
    return 0;
}

/* Adds the guard for objects_dir, and for the directories its info/alternates lists
 * (one level, as libgit2 reads them too). */
static int guard_dir(git_odb *odb, const char *objects_dir, int alternate, char *err)
{
    git_odb_backend *backend = NULL;
    if (new_backend(&backend, objects_dir) < 0) {
        snprintf(err, REPO_ERRLEN, "out of memory");
        return REPO_ERROR;
    }
    int e = alternate ? git_odb_add_alternate(odb, backend, LOOSE_GUARD_PRIORITY)
                      : git_odb_add_backend(odb, backend, LOOSE_GUARD_PRIORITY);
    if (e < 0) {
        backend->free(backend);
        const git_error *ge = git_error_last();
        snprintf(err, REPO_ERRLEN, "cannot add the loose object reader: %s",
                 ge ? ge->message : "unknown error");
        return REPO_ERROR;
    }
    if (alternate)
        return REPO_OK;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/info/alternates", objects_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return REPO_OK;
    char line[PATH_MAX];
    int rc = REPO_OK;
    while (rc == REPO_OK && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        char dir[PATH_MAX];
        int n = line[0] == '/' ? snprintf(dir, sizeof dir, "%s", line)
                               : snprintf(dir, sizeof dir, "%s/%s", objects_dir, line);
        if (n < 0 || (size_t)n >= sizeof dir)
            continue;   /* a path longer than PATH_MAX names nothing we can open */
        rc = guard_dir(odb, dir, 1, err);
    }
    fclose(f);
    return rc;
}

int repo_guard_loose_objects(git_repository *git, char *err)
{
    git_odb *odb = NULL;
    if (git_repository_odb(&odb, git) < 0) {
        const git_error *ge = git_error_last();
        snprintf(err, REPO_ERRLEN, "cannot open the object database: %s",
                 ge ? ge->message : "unknown error");
        return REPO_ERROR;
    }
    char objects[PATH_MAX];
    snprintf(objects, sizeof objects, "%sobjects", git_repository_path(git));
    int rc = guard_dir(odb, objects, 0, err);
    git_odb_free(odb);
    return rc;
}
