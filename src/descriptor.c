/*
 * descriptor.c - options, buffers, bounds and clipping of the descriptor pipeline
 * (see descriptor.h). The steps live in preprocess.c, chunk.c and embed.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor.h"
#include "pytext.h"

/* ---- buffers ------------------------------------------------------------------------- */

int descriptor_buf_reserve(descriptor_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra && b->data)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len)
        return DESCRIPTOR_ENOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return DESCRIPTOR_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int descriptor_buf_append(descriptor_buf *b, const void *p, size_t n)
{
    if (descriptor_buf_reserve(b, n) != 0)
        return DESCRIPTOR_ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void descriptor_buf_free(descriptor_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- lists ---------------------------------------------------------------------------- */

static void list_free(descriptor_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    free(l->lens);
    l->items = NULL;
    l->lens = NULL;
    l->count = 0;
}

/* Appends a copy of s[0..len) (NUL-terminated) to l. */
static int list_push(descriptor_list *l, const char *s, size_t len)
{
    char **items = realloc(l->items, (l->count + 1) * sizeof *items);
    if (!items)
        return DESCRIPTOR_ENOMEM;
    l->items = items;
    size_t *lens = realloc(l->lens, (l->count + 1) * sizeof *lens);
    if (!lens)
        return DESCRIPTOR_ENOMEM;
    l->lens = lens;
    char *copy = malloc(len + 1);
    if (!copy)
        return DESCRIPTOR_ENOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    l->items[l->count] = copy;
    l->lens[l->count] = len;
    l->count++;
    return 0;
}

static void globs_free(descriptor_options *o)
{
    for (size_t i = 0; i < o->excluded_glob_count; i++) {
        free(o->excluded_globs[i].text);
        free(o->excluded_globs[i].segments);
    }
    free(o->excluded_globs);
    o->excluded_globs = NULL;
    o->excluded_glob_count = 0;
}

int descriptor_options_set_extensions(descriptor_options *o, const descriptor_str *items,
                                      size_t n)
{
    list_free(&o->allowed_extensions);
    for (size_t i = 0; i < n; i++) {
        /* Python: ext if ext.startswith(".") else f".{ext}" (not lower-cased). */
        if (items[i].len > 0 && items[i].ptr[0] == '.') {
            if (list_push(&o->allowed_extensions, items[i].ptr, items[i].len) != 0)
                return DESCRIPTOR_ENOMEM;
        } else {
            char *tmp = malloc(items[i].len + 1);
            if (!tmp)
                return DESCRIPTOR_ENOMEM;
            tmp[0] = '.';
            memcpy(tmp + 1, items[i].ptr, items[i].len);
            int r = list_push(&o->allowed_extensions, tmp, items[i].len + 1);
            free(tmp);
            if (r != 0)
                return r;
        }
    }
    return 0;
}

int descriptor_options_set_filenames(descriptor_options *o, const descriptor_str *items,
                                     size_t n)
{
    list_free(&o->allowed_filenames);
    for (size_t i = 0; i < n; i++)
        if (list_push(&o->allowed_filenames, items[i].ptr, items[i].len) != 0)
            return DESCRIPTOR_ENOMEM;
    return 0;
}

/*
 * Normalises one excluded pattern as the reference does (strip, backslash -> '/', one
 * leading "./" removed, leading '/' removed), then as PurePath parses it ("//" and "."
 * segments collapse). Consecutive "**" segments are merged (they mean the same thing
 * and merging keeps matching linear). Returns 0 with g->count == 0 for a blank pattern.
 */
static int glob_compile(const char *raw, size_t len, descriptor_glob *g)
{
    memset(g, 0, sizeof *g);
    size_t lead = pytext_lstrip_len(raw, len);
    size_t trail = lead < len ? pytext_rstrip_len(raw + lead, len - lead) : 0;
    const char *s = raw + lead;
    size_t n = len - lead - trail;
    char *text = malloc(n + 1);
    if (!text)
        return DESCRIPTOR_ENOMEM;
    for (size_t i = 0; i < n; i++)
        text[i] = s[i] == '\\' ? '/' : s[i];
    size_t start = 0;
    if (n >= 2 && text[0] == '.' && text[1] == '/')
        start = 2;
    while (start < n && text[start] == '/')
        start++;
    /* Rebuild as normalised segments joined by '/'. */
    size_t out = 0, segs = 0;
    size_t i = start;
    while (i < n) {
        size_t j = i;
        while (j < n && text[j] != '/')
            j++;
        size_t sl = j - i;
        int dot = sl == 1 && text[i] == '.';
        int star2 = sl == 2 && text[i] == '*' && text[i + 1] == '*';
        int prev_star2 = out >= 2 && text[out - 1] == '*' && text[out - 2] == '*' &&
                         (out == 2 || text[out - 3] == '/');
        if (sl > 0 && !dot && !(star2 && prev_star2)) {
            if (out > 0)
                text[out++] = '/';
            memmove(text + out, text + i, sl);
            out += sl;
            segs++;
        }
        i = j + 1;
    }
    text[out] = '\0';
    if (segs == 0) {
        free(text);
        return 0;
    }
    g->segments = malloc(segs * sizeof *g->segments);
    if (!g->segments) {
        free(text);
        return DESCRIPTOR_ENOMEM;
    }
    g->text = text;
    size_t k = 0;
    i = 0;
    while (i < out) {
        size_t j = i;
        while (j < out && text[j] != '/')
            j++;
        g->segments[k].ptr = text + i;
        g->segments[k].len = j - i;
        k++;
        i = j + 1;
    }
    g->count = k;
    return 0;
}

int descriptor_options_set_globs(descriptor_options *o, const descriptor_str *items, size_t n)
{
    globs_free(o);
    if (n == 0)
        return 0;
    o->excluded_globs = calloc(n, sizeof *o->excluded_globs);
    if (!o->excluded_globs)
        return DESCRIPTOR_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        descriptor_glob g;
        if (glob_compile(items[i].ptr, items[i].len, &g) != 0)
            return DESCRIPTOR_ENOMEM;
        if (g.count == 0)
            continue;
        /* Drop duplicates, as the reference's expanded list does. */
        int dup = 0;
        for (size_t k = 0; k < o->excluded_glob_count; k++)
            if (strcmp(o->excluded_globs[k].text, g.text) == 0)
                dup = 1;
        if (dup) {
            free(g.text);
            free(g.segments);
            continue;
        }
        o->excluded_globs[o->excluded_glob_count++] = g;
    }
    return 0;
}

int descriptor_options_set_keywords(descriptor_options *o, const descriptor_str *items,
                                    size_t n)
{
    list_free(&o->boundary_keywords);
    descriptor_buf b = { 0 };
    for (size_t i = 0; i < n; i++) {
        if (items[i].len == 0)
            continue;
        /* str.lower(), code point by code point (invalid bytes are kept as they are). */
        b.len = 0;
        const unsigned char *u = (const unsigned char *)items[i].ptr;
        size_t pos = 0;
        while (pos < items[i].len) {
            uint32_t cp, second;
            size_t k = pytext_decode(u + pos, items[i].len - pos, &cp);
            if (cp == PYTEXT_INVALID) {
                if (descriptor_buf_append(&b, u + pos, k) != 0)
                    goto nomem;
            } else {
                uint32_t low[2] = { pytext_lower(cp, &second), 0 };
                low[1] = second;
                for (int c = 0; c < 2 && low[c]; c++) {
                    char enc[4];
                    size_t el;
                    uint32_t v = low[c];
                    if (v < 0x80) {
                        enc[0] = (char)v;
                        el = 1;
                    } else if (v < 0x800) {
                        enc[0] = (char)(0xC0 | (v >> 6));
                        enc[1] = (char)(0x80 | (v & 0x3F));
                        el = 2;
                    } else if (v < 0x10000) {
                        enc[0] = (char)(0xE0 | (v >> 12));
                        enc[1] = (char)(0x80 | ((v >> 6) & 0x3F));
                        enc[2] = (char)(0x80 | (v & 0x3F));
                        el = 3;
                    } else {
                        enc[0] = (char)(0xF0 | (v >> 18));
                        enc[1] = (char)(0x80 | ((v >> 12) & 0x3F));
                        enc[2] = (char)(0x80 | ((v >> 6) & 0x3F));
                        enc[3] = (char)(0x80 | (v & 0x3F));
                        el = 4;
                    }
                    if (descriptor_buf_append(&b, enc, el) != 0)
                        goto nomem;
                }
            }
            pos += k;
        }
        if (list_push(&o->boundary_keywords, b.data, b.len) != 0)
            goto nomem;
    }
    descriptor_buf_free(&b);
    return 0;
nomem:
    descriptor_buf_free(&b);
    return DESCRIPTOR_ENOMEM;
}

static descriptor_str cstr(const char *s)
{
    descriptor_str r = { s, strlen(s) };
    return r;
}

int descriptor_options_init(descriptor_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_files = 6;
    o->max_file_size_kb = 512;
    o->max_blank_lines = 2;
    o->tab_width = 4;
    o->strip_comments = 1;
    o->strip_block_comments = 1;
    o->chunk_target_lines = 80;
    o->chunk_min_lines = 20;
    o->chunk_overlap_lines = 8;
    o->max_chunks_per_file = 64;
    o->dimensions = 0;
    o->max_chunks_per_commit = 512;

    static const char *const ext[] = { ".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".go",
        ".rs", ".java", ".kt", ".swift", ".m", ".mm", ".c", ".cc", ".cpp", ".cxx", ".cs",
        ".h", ".hpp", ".php", ".rb", ".scala", ".sql", ".sh" };
    static const char *const names[] = { "Dockerfile", "Makefile" };
    static const char *const globs[] = { "tests/**", "__pycache__/**", "node_modules/**",
        "build/**", "dist/**", ".git/**" };
    static const char *const keywords[] = { "def ", "class ", "async def ", "fn ",
        "function ", "impl ", "struct ", "interface ", "module ", "export " };
    descriptor_str tmp[32];
    size_t n;
    n = sizeof ext / sizeof ext[0];
    for (size_t i = 0; i < n; i++)
        tmp[i] = cstr(ext[i]);
    if (descriptor_options_set_extensions(o, tmp, n) != 0)
        goto nomem;
    n = sizeof names / sizeof names[0];
    for (size_t i = 0; i < n; i++)
        tmp[i] = cstr(names[i]);
    if (descriptor_options_set_filenames(o, tmp, n) != 0)
        goto nomem;
    n = sizeof globs / sizeof globs[0];
    for (size_t i = 0; i < n; i++)
        tmp[i] = cstr(globs[i]);
    if (descriptor_options_set_globs(o, tmp, n) != 0)
        goto nomem;
    n = sizeof keywords / sizeof keywords[0];
    for (size_t i = 0; i < n; i++)
        tmp[i] = cstr(keywords[i]);
    if (descriptor_options_set_keywords(o, tmp, n) != 0)
        goto nomem;
    return 0;
nomem:
    descriptor_options_free(o);
    return DESCRIPTOR_ENOMEM;
}

void descriptor_options_free(descriptor_options *o)
{
    list_free(&o->allowed_extensions);
    list_free(&o->allowed_filenames);
    list_free(&o->boundary_keywords);
    globs_free(o);
}

size_t descriptor_size_limit(const descriptor_options *o)
{
    long long kb = o->max_file_size_kb < 1 ? 1 : o->max_file_size_kb;
    if (kb > (long long)(SIZE_MAX / 2048))
        kb = (long long)(SIZE_MAX / 2048);
    return (size_t)kb * 1024;
}

size_t descriptor_dimensions(const descriptor_options *o)
{
    if (o->dimensions <= 0)
        return DESCRIPTOR_DEFAULT_DIMENSIONS;
    if (o->dimensions > DESCRIPTOR_MAX_DIMENSIONS)
        return DESCRIPTOR_MAX_DIMENSIONS;
    return (size_t)o->dimensions;
}

void descriptor_skip_reason(const descriptor_options *o, int code, char *buf, size_t len)
{
    switch (code) {
    case DESCRIPTOR_SKIP_OVERSIZE:
        snprintf(buf, len, "larger than %zu bytes (MAPELITES_PREPROCESS_MAX_FILE_SIZE_KB)",
                 descriptor_size_limit(o));
        break;
    case DESCRIPTOR_SKIP_BINARY:
        snprintf(buf, len, "binary content (NUL byte)");
        break;
    case DESCRIPTOR_SKIP_EMPTY:
        snprintf(buf, len, "empty after cleanup");
        break;
    case DESCRIPTOR_SKIP_UNREADABLE:
        snprintf(buf, len, "content unavailable");
        break;
    default:
        snprintf(buf, len, "skipped (code %d)", code);
        break;
    }
}

/* ---- §3.8 bounds and clip ---------------------------------------------------------------- */

static void pad_bounds(const double *v, size_t n, double fallback, size_t dims, double *out)
{
    for (size_t i = 0; i < dims; i++) {
        if (n == 0)
            out[i] = fallback;
        else
            out[i] = i < n ? v[i] : v[n - 1];
    }
}

void descriptor_bounds(const double *lower, size_t n_lower, const double *upper,
                       size_t n_upper, size_t dims, double *lo, double *hi)
{
    pad_bounds(lower, n_lower, -6.0, dims, lo);
    pad_bounds(upper, n_upper, 6.0, dims, hi);
    for (size_t i = 0; i < dims; i++)
        if (hi[i] <= lo[i])
            hi[i] = lo[i] + 1.0;
}

void descriptor_clip(double *v, const double *lo, const double *hi, size_t dims)
{
    for (size_t i = 0; i < dims; i++) {
        if (v[i] < lo[i])
            v[i] = lo[i];
        if (v[i] > hi[i])
            v[i] = hi[i];
    }
}

int descriptor_set_kernels(int which)
{
    int old = pytext_kernels;
    if (which >= DESCRIPTOR_KERNELS_AUTO && which <= DESCRIPTOR_KERNELS_REFERENCE)
        pytext_kernels = which;
    return old;
}
