/*
 * preprocess.c - contract §3.2: candidate selection (path resolution, excluded globs,
 * allowed extensions and names, ordering, the max-files cap), reading a working-tree
 * file safely, and the cleanup rules.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "descriptor.h"
#include "pytext.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define PATH_CAP 8192        /* longest path handled; longer ones are skipped */
#define MAX_SYMLINKS 40      /* as the kernel's ELOOP limit */
#define MAX_TAB_WIDTH 64     /* bound on tab expansion (a larger setting counts as 64) */

/* ---- paths ------------------------------------------------------------------------------ */

size_t descriptor_pure_path(const char *path, size_t len, char *out)
{
    size_t o = 0, i = 0;
    int absolute = len > 0 && path[0] == '/';
    if (absolute)
        out[o++] = '/';
    while (i < len) {
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        size_t sl = j - i;
        if (sl > 0 && !(sl == 1 && path[i] == '.')) {
            if (o > 0 && out[o - 1] != '/')
                out[o++] = '/';
            memmove(out + o, path + i, sl);
            o += sl;
        }
        i = j + 1;
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return o;
}

/*
 * os.path.realpath(path, strict=False) for an absolute path: walks the components,
 * following symbolic links that exist, keeping the rest as it is. resolved (PATH_CAP
 * bytes) receives the result. Returns 0, or -1 with errno ELOOP (too many links) or
 * ENAMETOOLONG.
 */
static int realpath_lenient(const char *path, char *resolved)
{
    /* Work list: the part of the path still to walk, as a string we consume from the
     * front; a symlink target is prepended to what remains. */
    char *rest = malloc(PATH_CAP);
    char *link = malloc(PATH_CAP);
    int rc = -1;
    if (!rest || !link) {
        errno = ENOMEM;
        goto out;
    }
    size_t rl = strlen(path);
    if (rl >= PATH_CAP) {
        errno = ENAMETOOLONG;
        goto out;
    }
    memcpy(rest, path, rl + 1);
    size_t pos = 0;                  /* consumed prefix of rest */
    size_t len = 1;                  /* resolved is always absolute */
    strcpy(resolved, "/");
    int links = 0;
    while (pos < rl) {
        while (pos < rl && rest[pos] == '/')
            pos++;
        if (pos >= rl)
            break;
        size_t end = pos;
        while (end < rl && rest[end] != '/')
            end++;
        size_t nl = end - pos;
        const char *name = rest + pos;
        pos = end;
        if (nl == 1 && name[0] == '.')
            continue;
        if (nl == 2 && name[0] == '.' && name[1] == '.') {
            while (len > 1 && resolved[len - 1] != '/')
                len--;
            if (len > 1)
                len--;
            resolved[len] = '\0';
            continue;
        }
        size_t save = len;
        if (len + (len > 1) + nl + 1 > PATH_CAP) {
            errno = ENAMETOOLONG;
            goto out;
        }
        if (len > 1)
            resolved[len++] = '/';
        memcpy(resolved + len, name, nl);
        len += nl;
        resolved[len] = '\0';
        struct stat st;
        if (lstat(resolved, &st) != 0 || !S_ISLNK(st.st_mode))
            continue;
        if (++links > MAX_SYMLINKS) {
            errno = ELOOP;
            goto out;
        }
        ssize_t ll = readlink(resolved, link, PATH_CAP - 1);
        if (ll < 0)
            continue;                /* vanished meanwhile: keep the name as it is */
        size_t remaining = rl - pos;
        if ((size_t)ll + 1 + remaining + 1 > PATH_CAP) {
            errno = ENAMETOOLONG;
            goto out;
        }
        /* rest = target + "/" + remaining */
        memmove(rest + ll + 1, rest + pos, remaining);
        memcpy(rest, link, (size_t)ll);
        rest[ll] = '/';
        rl = (size_t)ll + 1 + remaining;
        rest[rl] = '\0';
        pos = 0;
        if (link[0] == '/') {
            len = 1;
            strcpy(resolved, "/");
        } else {
            len = save;              /* relative target: from the link's directory */
            resolved[len] = '\0';
        }
    }
    rc = 0;
out:
    free(rest);
    free(link);
    return rc;
}

/*
 * Resolves path against root_resolved (already resolved, absolute) and stores the
 * path relative to the root in rel (PATH_CAP bytes; "." for the root itself).
 * Returns 0, 1 when the path leaves the root, or 2 (with a reason) when it cannot be
 * resolved. Without a root the resolution is lexical: ".." above the top and absolute
 * paths are outside.
 */
static int resolve_relative(const char *root_resolved, const char *path, size_t plen,
                            char *rel, const char **why)
{
    if (memchr(path, '\0', plen)) {
        *why = "path contains a NUL byte";
        return 2;
    }
    if (plen + 2 >= PATH_CAP / 2) {
        *why = "path too long";
        return 2;
    }
    if (!root_resolved) {
        if (plen > 0 && path[0] == '/')
            return 1;
        size_t o = 0, i = 0;
        while (i < plen) {
            size_t j = i;
            while (j < plen && path[j] != '/')
                j++;
            size_t sl = j - i;
            if (sl == 2 && path[i] == '.' && path[i + 1] == '.') {
                if (o == 0)
                    return 1;
                while (o > 0 && rel[o - 1] != '/')
                    o--;
                if (o > 0)
                    o--;
            } else if (sl > 0 && !(sl == 1 && path[i] == '.')) {
                if (o > 0)
                    rel[o++] = '/';
                memcpy(rel + o, path + i, sl);
                o += sl;
            }
            i = j + 1;
        }
        if (o == 0)
            rel[o++] = '.';
        rel[o] = '\0';
        return 0;
    }
    char *full = malloc(PATH_CAP);
    char *res = malloc(PATH_CAP);
    int rc = 2;
    if (!full || !res) {
        *why = "out of memory";
        goto out;
    }
    size_t rootlen = strlen(root_resolved);
    if (plen > 0 && path[0] == '/') {
        memcpy(full, path, plen);
        full[plen] = '\0';
    } else {
        if (rootlen + 1 + plen + 1 > PATH_CAP) {
            *why = "path too long";
            goto out;
        }
        memcpy(full, root_resolved, rootlen);
        full[rootlen] = '/';
        memcpy(full + rootlen + 1, path, plen);
        full[rootlen + 1 + plen] = '\0';
    }
    if (realpath_lenient(full, res) != 0) {
        *why = errno == ELOOP ? "too many levels of symbolic links" : "path too long";
        goto out;
    }
    size_t rl = strlen(res);
    if (rootlen == 1) {              /* root is "/" */
        strcpy(rel, rl == 1 ? "." : res + 1);
        rc = 0;
    } else if (rl == rootlen && memcmp(res, root_resolved, rootlen) == 0) {
        strcpy(rel, ".");
        rc = 0;
    } else if (rl > rootlen && memcmp(res, root_resolved, rootlen) == 0 &&
               res[rootlen] == '/') {
        strcpy(rel, res + rootlen + 1);
        rc = 0;
    } else {
        rc = 1;
    }
out:
    free(full);
    free(res);
    return rc;
}

/* ---- globs --------------------------------------------------------------------------------- */

/* fnmatch.fnmatchcase on one path segment, code point by code point: '*', '?', and
 * sets "[...]" with "!" negation and ranges; an unclosed '[' is literal. */
static int segment_match(const char *pat, size_t plen, const char *name, size_t nlen)
{
    const unsigned char *p = (const unsigned char *)pat, *s = (const unsigned char *)name;
    size_t pi = 0, si = 0;
    size_t star_p = (size_t)-1, star_s = 0;
    while (si < nlen) {
        uint32_t sc;
        size_t sn = pytext_decode(s + si, nlen - si, &sc);
        if (pi < plen) {
            if (p[pi] == '*') {
                star_p = ++pi;
                star_s = si;
                continue;
            }
            if (p[pi] == '?') {
                pi++;
                si += sn;
                continue;
            }
            if (p[pi] == '[') {
                size_t j = pi + 1;
                if (j < plen && p[j] == '!')
                    j++;
                if (j < plen && p[j] == ']')
                    j++;
                while (j < plen && p[j] != ']')
                    j++;
                if (j < plen) {          /* a set pi+1 .. j-1 */
                    size_t k = pi + 1;
                    int negate = 0, hit = 0;
                    if (p[k] == '!') {
                        negate = 1;
                        k++;
                    }
                    int first = 1;
                    while (k < j) {
                        uint32_t a, b;
                        size_t an = pytext_decode(p + k, j - k, &a);
                        if (!first && p[k] == ']')
                            break;
                        first = 0;
                        k += an;
                        if (k + 1 < j && p[k] == '-') {
                            size_t bn = pytext_decode(p + k + 1, j - k - 1, &b);
                            k += 1 + bn;
                            if (a <= sc && sc <= b)
                                hit = 1;
                        } else if (a == sc) {
                            hit = 1;
                        }
                    }
                    if (hit != negate) {
                        pi = j + 1;
                        si += sn;
                        continue;
                    }
                    goto backtrack;
                }
                /* unclosed '[' is a literal character: fall through */
            }
            uint32_t pc;
            size_t pn = pytext_decode(p + pi, plen - pi, &pc);
            if (pc == sc && (pc != PYTEXT_INVALID || p[pi] == s[si])) {
                pi += pn;
                si += sn;
                continue;
            }
        }
    backtrack:
        if (star_p == (size_t)-1)
            return 0;
        uint32_t skip;
        star_s += pytext_decode(s + star_s, nlen - star_s, &skip);
        si = star_s;
        pi = star_p;
    }
    while (pi < plen && p[pi] == '*')
        pi++;
    return pi == plen;
}

static int is_star2(const descriptor_str *seg)
{
    return seg->len == 2 && seg->ptr[0] == '*' && seg->ptr[1] == '*';
}

/*
 * Matches the path segments against the glob, anchored at the right end and free at
 * the left (as "**\/" + pattern). A "**" segment matches any number of segments, at
 * least one when it ends the pattern (so "tests/" + "**" matches everything inside tests/).
 * Dynamic programming over (pattern segment, path segment): O(P * D).
 */
static int glob_match(const descriptor_glob *g, const descriptor_str *segs, size_t d)
{
    size_t P = g->count;
    /* ok[j] for the current pattern row i: pattern[i:] matches path[j:]. */
    unsigned char small_next[65], small_cur[65];
    unsigned char *next = small_next, *cur = small_cur;
    unsigned char *heap = NULL;
    if (d + 1 > sizeof small_next) {
        heap = malloc(2 * (d + 1));
        if (!heap)
            return 0;
        next = heap;
        cur = heap + d + 1;
    }
    for (size_t j = 0; j <= d; j++)
        next[j] = j == d;            /* empty pattern matches only the empty rest */
    for (size_t i = P; i-- > 0;) {
        const descriptor_str *seg = &g->segments[i];
        if (is_star2(seg)) {
            int last = i + 1 == P;
            /* cur[j] = exists t >= j (+1 if last) with next[t] */
            int any = 0;
            for (size_t j = d + 1; j-- > 0;) {
                if (!last)
                    any = any || next[j];
                cur[j] = (unsigned char)any;
                if (last)
                    any = any || next[j];
            }
        } else {
            cur[d] = 0;
            for (size_t j = 0; j < d; j++)
                cur[j] = next[j + 1] &&
                         segment_match(seg->ptr, seg->len, segs[j].ptr, segs[j].len);
        }
        unsigned char *t = next;
        next = cur;
        cur = t;
    }
    int hit = 0;
    for (size_t j = 0; j <= d && !hit; j++)
        hit = next[j];
    free(heap);
    return hit;
}

/* Splits a normalised relative path into segments ("." has none). Returns the count,
 * or (size_t)-1 when memory ran out; *segs is malloc'ed (free it). */
static size_t split_segments(const char *path, size_t len, descriptor_str **segs)
{
    *segs = NULL;
    if (len == 0 || (len == 1 && path[0] == '.'))
        return 0;
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += path[i] == '/';
    descriptor_str *s = malloc(n * sizeof *s);
    if (!s)
        return (size_t)-1;
    size_t k = 0, i = 0;
    while (i <= len && k < n) {
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        s[k].ptr = path + i;
        s[k].len = j - i;
        k++;
        i = j + 1;
    }
    *segs = s;
    return k;
}

int descriptor_is_excluded(const descriptor_options *o, const char *rel_path, size_t len,
                           const char **pattern)
{
    if (o->excluded_glob_count == 0)
        return 0;
    descriptor_str *segs;
    size_t d = split_segments(rel_path, len, &segs);
    if (d == (size_t)-1)
        return 0;
    int hit = 0;
    for (size_t i = 0; i < o->excluded_glob_count && !hit; i++) {
        if (glob_match(&o->excluded_globs[i], segs, d)) {
            hit = 1;
            if (pattern)
                *pattern = o->excluded_globs[i].text;
        }
    }
    free(segs);
    return hit;
}

/* ---- eligibility ------------------------------------------------------------------------ */

int descriptor_is_code_file(const descriptor_options *o, const char *rel_path, size_t len)
{
    const char *name = rel_path;
    size_t nl = len;
    const char *slash = NULL;
    for (size_t i = len; i-- > 0;)
        if (rel_path[i] == '/') {
            slash = rel_path + i;
            break;
        }
    if (slash) {
        name = slash + 1;
        nl = len - (size_t)(name - rel_path);
    }
    if (nl == 1 && name[0] == '.')
        nl = 0;                      /* Path(".").name == "" */
    /* Path.suffix: from the last '.', when it is neither the first nor the last char. */
    size_t dot = (size_t)-1;
    for (size_t i = nl; i-- > 0;)
        if (name[i] == '.') {
            dot = i;
            break;
        }
    if (dot != (size_t)-1 && dot > 0 && dot + 1 < nl) {
        /* lower-case the suffix (str.lower) into a small buffer */
        char low[256];
        size_t ll = 0, pos = dot;
        const unsigned char *u = (const unsigned char *)name;
        int fits = 1;
        while (pos < nl) {
            uint32_t cp, second;
            size_t k = pytext_decode(u + pos, nl - pos, &cp);
            if (ll + 8 > sizeof low) {
                fits = 0;
                break;
            }
            if (cp == PYTEXT_INVALID) {
                memcpy(low + ll, u + pos, k);
                ll += k;
            } else {
                uint32_t vals[2];
                vals[0] = pytext_lower(cp, &second);
                vals[1] = second;
                for (int c = 0; c < 2 && vals[c]; c++) {
                    uint32_t v = vals[c];
                    if (v < 0x80) {
                        low[ll++] = (char)v;
                    } else if (v < 0x800) {
                        low[ll++] = (char)(0xC0 | (v >> 6));
                        low[ll++] = (char)(0x80 | (v & 0x3F));
                    } else if (v < 0x10000) {
                        low[ll++] = (char)(0xE0 | (v >> 12));
                        low[ll++] = (char)(0x80 | ((v >> 6) & 0x3F));
                        low[ll++] = (char)(0x80 | (v & 0x3F));
                    } else {
                        low[ll++] = (char)(0xF0 | (v >> 18));
                        low[ll++] = (char)(0x80 | ((v >> 12) & 0x3F));
                        low[ll++] = (char)(0x80 | ((v >> 6) & 0x3F));
                        low[ll++] = (char)(0x80 | (v & 0x3F));
                    }
                }
            }
            pos += k;
        }
        if (fits)
            for (size_t i = 0; i < o->allowed_extensions.count; i++)
                if (o->allowed_extensions.lens[i] == ll &&
                    memcmp(o->allowed_extensions.items[i], low, ll) == 0)
                    return 1;
    }
    for (size_t i = 0; i < o->allowed_filenames.count; i++)
        if (o->allowed_filenames.lens[i] == nl && memcmp(o->allowed_filenames.items[i], name, nl) == 0)
            return 1;
    return 0;
}

/* ---- selection ------------------------------------------------------------------------ */

static int candidate_order(const void *a, const void *b)
{
    const descriptor_candidate *x = a, *y = b;
    if (x->change_count != y->change_count)
        return x->change_count > y->change_count ? -1 : 1;
    return x->input < y->input ? -1 : x->input > y->input;
}

static int skip_order(const void *a, const void *b)
{
    const descriptor_skip *x = a, *y = b;
    return x->input < y->input ? -1 : x->input > y->input;
}

static int push_skip(descriptor_selection *s, size_t *cap, size_t input, const char *path,
                     size_t plen, const char *fmt, const char *arg)
{
    if (s->skipped_count == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        descriptor_skip *p = realloc(s->skipped, nc * sizeof *p);
        if (!p)
            return DESCRIPTOR_ENOMEM;
        s->skipped = p;
        *cap = nc;
    }
    descriptor_skip *k = &s->skipped[s->skipped_count];
    k->path = malloc(plen + 1);
    if (!k->path)
        return DESCRIPTOR_ENOMEM;
    memcpy(k->path, path, plen);
    k->path[plen] = '\0';
    k->path_len = plen;
    k->input = input;
    snprintf(k->reason, sizeof k->reason, fmt, arg ? arg : "");
    s->skipped_count++;
    return 0;
}

int descriptor_select(const descriptor_options *o, const char *repo_root,
                      const descriptor_file_in *files, size_t n, descriptor_selection *out)
{
    memset(out, 0, sizeof *out);
    char *root = NULL, *rel = malloc(PATH_CAP);
    size_t skip_cap = 0;
    int rc = DESCRIPTOR_ENOMEM;
    if (!rel)
        goto out;
    if (repo_root) {
        root = malloc(PATH_CAP);
        if (!root)
            goto out;
        char *abs = malloc(PATH_CAP);
        if (!abs)
            goto out;
        if (repo_root[0] == '/') {
            snprintf(abs, PATH_CAP, "%s", repo_root);
        } else {
            char cwd[PATH_MAX];
            if (!getcwd(cwd, sizeof cwd))
                strcpy(cwd, "/");
            snprintf(abs, PATH_CAP, "%s/%s", cwd, repo_root);
        }
        int r = realpath_lenient(abs, root);
        free(abs);
        if (r != 0)
            snprintf(root, PATH_CAP, "%s", repo_root);
    }
    if (n > 0) {
        out->candidates = malloc(n * sizeof *out->candidates);
        if (!out->candidates)
            goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const descriptor_file_in *f = &files[i];
        const char *why = NULL;
        int r = resolve_relative(root, f->path.ptr, f->path.len, rel, &why);
        if (r == 1) {
            if (push_skip(out, &skip_cap, i, f->path.ptr, f->path.len,
                          "outside the repository root%s", NULL) != 0)
                goto out;
            continue;
        }
        if (r == 2) {
            if (push_skip(out, &skip_cap, i, f->path.ptr, f->path.len, "%s", why) != 0)
                goto out;
            continue;
        }
        size_t rl = strlen(rel);
        const char *pattern = NULL;
        if (descriptor_is_excluded(o, rel, rl, &pattern)) {
            if (push_skip(out, &skip_cap, i, rel, rl, "excluded by glob '%s'", pattern) != 0)
                goto out;
            continue;
        }
        if (!descriptor_is_code_file(o, rel, rl)) {
            if (push_skip(out, &skip_cap, i, rel, rl,
                          "not an allowed extension or file name%s", NULL) != 0)
                goto out;
            continue;
        }
        descriptor_candidate *c = &out->candidates[out->candidate_count];
        c->path = malloc(rl + 1);
        if (!c->path)
            goto out;
        memcpy(c->path, rel, rl + 1);
        c->path_len = rl;
        c->input = i;
        c->change_count = f->change_count;
        out->candidate_count++;
    }
    if (out->candidate_count > 1)
        qsort(out->candidates, out->candidate_count, sizeof *out->candidates, candidate_order);
    if (o->max_files > 0 && out->candidate_count > (unsigned long long)o->max_files) {
        char limit[48];
        snprintf(limit, sizeof limit, "%lld", o->max_files);
        for (size_t i = (size_t)o->max_files; i < out->candidate_count; i++) {
            descriptor_candidate *c = &out->candidates[i];
            if (push_skip(out, &skip_cap, c->input, c->path, c->path_len,
                          "beyond the first %s files by change count "
                          "(MAPELITES_PREPROCESS_MAX_FILES)", limit) != 0)
                goto out;
            free(c->path);
            c->path = NULL;
        }
        out->candidate_count = (size_t)o->max_files;
    }
    if (out->skipped_count > 1)
        qsort(out->skipped, out->skipped_count, sizeof *out->skipped, skip_order);
    rc = 0;
out:
    free(rel);
    free(root);
    if (rc != 0)
        descriptor_selection_free(out);
    return rc;
}

void descriptor_selection_free(descriptor_selection *s)
{
    for (size_t i = 0; i < s->candidate_count; i++)
        free(s->candidates[i].path);
    for (size_t i = 0; i < s->skipped_count; i++)
        free(s->skipped[i].path);
    free(s->candidates);
    free(s->skipped);
    memset(s, 0, sizeof *s);
}

/* ---- reading the working tree ------------------------------------------------------------ */

int descriptor_read_file(const char *repo_root, const char *rel_path, size_t limit,
                         descriptor_buf *out, char *reason, size_t reason_len)
{
    out->len = 0;
    char *root = malloc(PATH_CAP), *full = malloc(PATH_CAP), *res = malloc(PATH_CAP);
    int rc = DESCRIPTOR_ENOMEM, fd = -1;
    if (!root || !full || !res)
        goto out;
    rc = DESCRIPTOR_SKIP_UNREADABLE;
    if (realpath_lenient(repo_root, root) != 0 ||
        snprintf(full, PATH_CAP, "%s/%s", root, rel_path) >= PATH_CAP ||
        realpath_lenient(full, res) != 0) {
        snprintf(reason, reason_len, "cannot resolve path");
        goto out;
    }
    size_t rootlen = strlen(root);
    if (!(rootlen == 1 || (strncmp(res, root, rootlen) == 0 && res[rootlen] == '/'))) {
        snprintf(reason, reason_len, "outside the repository root");
        goto out;
    }
    /* The path is fully resolved: refuse a symlink swapped in meanwhile, and never
     * block on a FIFO. */
    fd = open(res, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(reason, reason_len, "cannot open: %s", strerror(errno));
        goto out;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(reason, reason_len, "not a regular file");
        goto out;
    }
    if ((unsigned long long)st.st_size > limit) {
        rc = DESCRIPTOR_SKIP_OVERSIZE;
        goto out;
    }
    if (descriptor_buf_reserve(out, (size_t)st.st_size + 1) != 0) {
        rc = DESCRIPTOR_ENOMEM;
        goto out;
    }
    for (;;) {
        if (out->len > limit) {
            rc = DESCRIPTOR_SKIP_OVERSIZE;   /* grew while we read */
            goto out;
        }
        if (descriptor_buf_reserve(out, 4096) != 0) {
            rc = DESCRIPTOR_ENOMEM;
            goto out;
        }
        ssize_t r = read(fd, out->data + out->len, out->cap - out->len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            snprintf(reason, reason_len, "read failed: %s", strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        out->len += (size_t)r;
    }
    if (out->len > limit) {
        rc = DESCRIPTOR_SKIP_OVERSIZE;
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        out->len = 0;
    free(root);
    free(full);
    free(res);
    return rc;
}

/* ---- cleanup --------------------------------------------------------------------------------- */

/* In place: "\r\n" and lone "\r" become "\n". Returns the new length. */
static size_t normalise_newlines(char *s, size_t len)
{
    char *first = memchr(s, '\r', len);
    if (!first)
        return len;
    size_t o = (size_t)(first - s);
    for (size_t i = o; i < len; i++) {
        if (s[i] == '\r') {
            s[o++] = '\n';
            if (i + 1 < len && s[i + 1] == '\n')
                i++;
        } else {
            s[o++] = s[i];
        }
    }
    return o;
}

/* The first "ab" in s[from..len), or NULL (memchr on the rarer first byte). */
static char *find_pair(char *s, size_t from, size_t len, char a, char b)
{
    while (from + 1 < len) {
        char *p = memchr(s + from, a, len - from - 1);
        if (!p)
            return NULL;
        if (p[1] == b)
            return p;
        from = (size_t)(p - s) + 1;
    }
    return NULL;
}

/* In place: every non-greedy "/\* ... *\/" span becomes one "\n" (re.DOTALL). */
static size_t strip_block_comments(char *s, size_t len)
{
    size_t o = 0, i = 0;
    while (i < len) {
        char *open = find_pair(s, i, len, '/', '*');
        if (!open)
            break;
        size_t at = (size_t)(open - s);
        char *close = find_pair(s, at + 2, len, '*', '/');
        if (!close)
            break;                   /* no closer after this opener, nor after any later one */
        memmove(s + o, s + i, at - i);
        o += at - i;
        s[o++] = '\n';
        i = (size_t)(close - s) + 2;
    }
    if (o == i)
        return len;                  /* nothing removed */
    memmove(s + o, s + i, len - i);
    return o + (len - i);
}

static int starts_with_comment(const char *s, size_t len)
{
    if (len >= 1 && s[0] == '#')
        return 1;
    if (len >= 2 && ((s[0] == '/' && s[1] == '/') || (s[0] == '-' && s[1] == '-')))
        return 1;
    return 0;
}

/* Appends line[0..ll) with each tab replaced by width spaces (width <= 0: kept). */
static int append_expanded(descriptor_buf *out, const char *line, size_t ll, long long width)
{
    static const char spaces[MAX_TAB_WIDTH + 1] = "                                "
                                                  "                                ";
    if (width <= 0 || !memchr(line, '\t', ll))
        return descriptor_buf_append(out, line, ll);
    size_t k = 0;
    while (k < ll) {
        const char *tab = memchr(line + k, '\t', ll - k);
        size_t run = tab ? (size_t)(tab - line) - k : ll - k;
        if (descriptor_buf_append(out, line + k, run) != 0 ||
            (tab && descriptor_buf_append(out, spaces, (size_t)width) != 0))
            return DESCRIPTOR_ENOMEM;
        k += run + (tab ? 1 : 0);
    }
    return 0;
}

/* Per line: right-strip, comment lines, tabs, blank-line runs; each kept line is
 * appended to out followed by "\n". The byte-at-a-time reference. */
static int clean_lines_reference(const descriptor_options *o, const char *text, size_t n,
                                 descriptor_buf *out)
{
    long long width = o->tab_width > MAX_TAB_WIDTH ? MAX_TAB_WIDTH : o->tab_width;
    long long max_blank = o->max_blank_lines;
    long long streak = 0;
    size_t pos = 0;
    for (;;) {
        const char *nl = memchr(text + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - text) : n;
        const char *line = text + pos;
        size_t ll = end - pos;
        ll -= pytext_rstrip_len(line, ll);
        int keep = 1;
        if (o->strip_comments && ll > 0) {
            size_t lead = pytext_lstrip_len(line, ll);
            if (lead < ll && starts_with_comment(line + lead, ll - lead))
                keep = 0;            /* dropped: neither blank nor a streak reset */
        }
        if (keep) {
            if (ll == 0) {           /* rstripped to nothing: a blank line */
                streak++;
                if (streak <= max_blank && descriptor_buf_append(out, "\n", 1) != 0)
                    return DESCRIPTOR_ENOMEM;
            } else {
                streak = 0;
                if (append_expanded(out, line, ll, width) != 0 ||
                    descriptor_buf_append(out, "\n", 1) != 0)
                    return DESCRIPTOR_ENOMEM;
            }
        }
        if (!nl)
            break;
        pos = end + 1;
    }
    return 0;
}

/* Bit i set when p[i] (i < 64) is '\n'. */
static uint64_t newline_mask(const unsigned char *p, int portable)
{
    uint64_t m = 0;
    (void)portable;
#if defined(__SSE2__)
    if (!portable) {
        for (int k = 0; k < 4; k++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
            m |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\n')))
                 << (16 * k);
        }
        return m;
    }
#endif
    for (int i = 0; i < 64; i++)
        m |= (uint64_t)(p[i] == '\n') << i;
    return m;
}

/* Leading whitespace of line[0..ll) (ll > 0, its last byte not whitespace); line has 16
 * readable bytes. Indentation by spaces is counted 16 bytes at a time. */
static size_t leading_space(const unsigned char *line, size_t ll, int portable)
{
    size_t k = 0;
    (void)portable;
#if defined(__SSE2__)
    if (!portable) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)line);
        unsigned spaces = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(' ')));
        k = (size_t)__builtin_ctz(~spaces);   /* 16 when all are */
    } else
#endif
    {
        while (k < 16 && line[k] == ' ')
            k++;
    }
    if (k < ll && line[k] > 0x20 && line[k] < 0x80)
        return k;                    /* spaces, then a byte that is not whitespace */
    return pytext_lstrip_len((const char *)line, ll);
}

/*
 * The same as clean_lines_reference, faster: newlines come from 64-byte blocks, the
 * strip checks look at one byte (or 16) before falling back to the full rules, and a
 * run of lines that stay as they are (with their "\n") is copied at once. text has 64
 * zero bytes after text[n).
 */
static int clean_lines_blocks(const descriptor_options *o, const char *text, size_t n,
                              descriptor_buf *out, int portable)
{
    const unsigned char *u = (const unsigned char *)text;
    long long width = o->tab_width > MAX_TAB_WIDTH ? MAX_TAB_WIDTH : o->tab_width;
    long long max_blank = o->max_blank_lines;
    long long streak = 0;
    size_t pos = 0, run = 0;         /* text[run..pos): lines copied as they are */
    size_t base = 0, tab = 0;        /* tab: the next '\t' at or after pos (n: none) */
    uint64_t nls = newline_mask(u, portable);
    if (width > 0) {
        const char *t = memchr(text, '\t', n);
        tab = t ? (size_t)(t - text) : n;
    } else {
        tab = n;
    }
    for (;;) {
        while (!nls && base + 64 < n) {
            base += 64;
            nls = newline_mask(u + base, portable);
        }
        size_t end = nls ? base + (size_t)__builtin_ctzll(nls) : n;
        nls &= nls - 1;
        int has_nl = end < n;
        const unsigned char *line = u + pos;
        size_t ll = end - pos, trail = 0;
        if (ll > 0 && !(line[ll - 1] > 0x20 && line[ll - 1] < 0x80))
            trail = pytext_rstrip_len((const char *)line, ll);
        size_t sl = ll - trail;
        int keep = 1;
        if (o->strip_comments && sl > 0) {
            size_t lead = leading_space(line, sl, portable);
            if (lead < sl && starts_with_comment((const char *)line + lead, sl - lead))
                keep = 0;
        }
        if (tab < pos) {
            const char *t = memchr(text + pos, '\t', n - pos);
            tab = t ? (size_t)(t - text) : n;
        }
        int tabs = tab < pos + sl;
        int emit = 0, same = 0;
        if (keep) {
            if (sl == 0) {
                streak++;
                emit = streak <= max_blank;
                same = emit && ll == 0 && has_nl;
            } else {
                streak = 0;
                emit = 1;
                same = trail == 0 && !tabs && has_nl;
            }
        }
        if (!same) {
            if (descriptor_buf_append(out, text + run, pos - run) != 0)
                return DESCRIPTOR_ENOMEM;
            if (emit && (append_expanded(out, (const char *)line, sl, width) != 0 ||
                         descriptor_buf_append(out, "\n", 1) != 0))
                return DESCRIPTOR_ENOMEM;
            run = end + 1;
        }
        if (!has_nl)
            break;
        pos = end + 1;
    }
    if (run < n && descriptor_buf_append(out, text + run, n - run) != 0)
        return DESCRIPTOR_ENOMEM;
    return 0;
}

int descriptor_clean(const descriptor_options *o, const char *raw, size_t len,
                     descriptor_buf *out)
{
    out->len = 0;
    if (len > descriptor_size_limit(o))
        return DESCRIPTOR_SKIP_OVERSIZE;
    if (len > 0 && memchr(raw, '\0', len))
        return DESCRIPTOR_SKIP_BINARY;
    char *text = malloc(len + 64);
    if (!text)
        return DESCRIPTOR_ENOMEM;
    size_t n;
    if (pytext_is_valid_utf8(raw, len)) {
        memcpy(text, raw, len);
        n = len;
    } else {
        n = pytext_drop_invalid_utf8(raw, len, text);
    }
    n = normalise_newlines(text, n);
    if (o->strip_block_comments)
        n = strip_block_comments(text, n);
    memset(text + n, 0, 64);         /* the block scans read up to 64 bytes past the end */

    int rc;
    if (descriptor_buf_reserve(out, n + 1) != 0)
        rc = DESCRIPTOR_ENOMEM;
    else if (pytext_kernels == PYTEXT_KERNELS_REFERENCE)
        rc = clean_lines_reference(o, text, n, out);
    else
        rc = clean_lines_blocks(o, text, n, out, pytext_kernels == PYTEXT_KERNELS_PORTABLE);
    if (rc == 0) {
        /* "\n".join(lines).strip(): each kept line was followed by "\n"; the final strip
         * removes that last one together with any other surrounding whitespace. */
        size_t lead = pytext_lstrip_len(out->data, out->len);
        size_t trail = lead < out->len ? pytext_rstrip_len(out->data + lead, out->len - lead) : 0;
        size_t keep_len = out->len - lead - trail;
        memmove(out->data, out->data + lead, keep_len);
        out->len = keep_len;
        if (out->len == 0)
            rc = DESCRIPTOR_SKIP_EMPTY;
    }
    free(text);
    return rc;
}
