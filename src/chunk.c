/*
 * chunk.c - contract §3.3: windows of str.splitlines() lines with boundary-aware
 * break points, overlap and a window cap, exactly as the reference chunker.
 */
#include <stdlib.h>
#include <string.h>

#include "descriptor.h"
#include "pytext.h"

/* Longest keyword in bytes (the lower-cased line prefix is computed up to this). */
static size_t longest_keyword(const descriptor_options *o)
{
    size_t m = 0;
    for (size_t i = 0; i < o->boundary_keywords.count; i++)
        if (o->boundary_keywords.lens[i] > m)
            m = o->boundary_keywords.lens[i];
    return m;
}

static size_t encode_utf8(uint32_t v, char *out)
{
    if (v < 0x80) {
        out[0] = (char)v;
        return 1;
    }
    if (v < 0x800) {
        out[0] = (char)(0xC0 | (v >> 6));
        out[1] = (char)(0x80 | (v & 0x3F));
        return 2;
    }
    if (v < 0x10000) {
        out[0] = (char)(0xE0 | (v >> 12));
        out[1] = (char)(0x80 | ((v >> 6) & 0x3F));
        out[2] = (char)(0x80 | (v & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (v >> 18));
    out[1] = (char)(0x80 | ((v >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((v >> 6) & 0x3F));
    out[3] = (char)(0x80 | (v & 0x3F));
    return 4;
}

/*
 * _looks_like_boundary of a non-blank line: the stripped, lower-cased text starts with
 * a keyword, or the stripped text ends with ':', '{' or '}', or the raw line has no
 * leading whitespace.
 */
static int looks_like_boundary(const descriptor_options *o, size_t kwmax, const char *line,
                               size_t len, char *lowbuf)
{
    size_t lead = pytext_lstrip_len(line, len);
    if (lead == 0)
        return 1;
    size_t trail = pytext_rstrip_len(line + lead, len - lead);
    const char *s = line + lead;
    size_t sl = len - lead - trail;
    unsigned char last = (unsigned char)s[sl - 1];
    if (last == ':' || last == '{' || last == '}')
        return 1;
    if (kwmax == 0)
        return 0;
    /* Lower-case the stripped prefix until it holds at least kwmax bytes. */
    size_t ll = 0, pos = 0;
    const unsigned char *u = (const unsigned char *)s;
    while (pos < sl && ll < kwmax) {
        uint32_t cp, second;
        size_t k = pytext_decode(u + pos, sl - pos, &cp);
        if (cp == PYTEXT_INVALID) {
            lowbuf[ll++] = (char)u[pos];
        } else {
            ll += encode_utf8(pytext_lower(cp, &second), lowbuf + ll);
            if (second)
                ll += encode_utf8(second, lowbuf + ll);
        }
        pos += k;
    }
    for (size_t i = 0; i < o->boundary_keywords.count; i++) {
        size_t kl = o->boundary_keywords.lens[i];
        if (kl <= ll && memcmp(lowbuf, o->boundary_keywords.items[i], kl) == 0)
            return 1;
    }
    return 0;
}

static int push_chunk(descriptor_chunks *c, const descriptor_chunk *ch)
{
    if (c->count == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 16;
        descriptor_chunk *p = realloc(c->items, nc * sizeof *p);
        if (!p)
            return DESCRIPTOR_ENOMEM;
        c->items = p;
        c->cap = nc;
    }
    c->items[c->count++] = *ch;
    return 0;
}

/* Appends the window lines[start:end] joined with "\n" to c->text and records it as a
 * chunk (trimmed of leading and trailing "\n"), unless it is only whitespace. */
static int join_window(descriptor_chunks *c, const char *text, size_t start, size_t end)
{
    /* "\n".join(lines[start:end]): one copy when every break between them is "\n" */
    size_t offset = c->text.len;
    int plain = 1;
    for (size_t i = start; i + 1 < end && plain; i++) {
        size_t stop = c->lines[2 * i] + c->lines[2 * i + 1];
        plain = c->lines[2 * i + 2] == stop + 1 && text[stop] == '\n';
    }
    if (plain) {
        size_t from = c->lines[2 * start];
        size_t to = c->lines[2 * (end - 1)] + c->lines[2 * (end - 1) + 1];
        if (descriptor_buf_append(&c->text, text + from, to - from) != 0)
            return DESCRIPTOR_ENOMEM;
    }
    for (size_t i = start; i < end && !plain; i++) {
        if (i > start && descriptor_buf_append(&c->text, "\n", 1) != 0)
            return DESCRIPTOR_ENOMEM;
        if (descriptor_buf_append(&c->text, text + c->lines[2 * i], c->lines[2 * i + 1]) != 0)
            return DESCRIPTOR_ENOMEM;
    }
    char *joined = c->text.data ? c->text.data + offset : NULL;
    size_t jl = c->text.len - offset;
    if (jl > 0 && !pytext_is_blank(joined, jl)) {
        /* Trim only leading and trailing '\n'. */
        size_t a = 0, b = jl;
        while (a < b && joined[a] == '\n')
            a++;
        while (b > a && joined[b - 1] == '\n')
            b--;
        memmove(joined, joined + a, b - a);
        c->text.len = offset + (b - a);
        descriptor_chunk ch = { start + 1, end, end - start, offset, b - a };
        if (push_chunk(c, &ch) != 0)
            return DESCRIPTOR_ENOMEM;
    } else {
        c->text.len = offset;    /* whitespace-only window: discarded, still counted */
    }
    return 0;
}

/* The chunker; join: the chunks' contents joined into c->text, else their ranges. */
static int chunk_text(const descriptor_options *o, const char *text, size_t len,
                      descriptor_chunks *c, int join)
{
    c->count = 0;
    c->total_lines = 0;
    c->text.len = 0;
    /* Lines of str.splitlines(): (start, length) pairs in c->lines. */
    size_t n;
    if (pytext_split_lines(text, len, &c->lines, &c->lines_cap, &n) != 0)
        return DESCRIPTOR_ENOMEM;
    c->total_lines = n;
    if (n == 0)
        return 0;

    long long minl = o->chunk_min_lines < 1 ? 1 : o->chunk_min_lines;
    long long target = o->chunk_target_lines < minl ? minl : o->chunk_target_lines;
    long long overlap = o->chunk_overlap_lines < 0 ? 0 : o->chunk_overlap_lines;
    long long max_windows = o->max_chunks_per_file < 1 ? 1 : o->max_chunks_per_file;
    size_t kwmax = longest_keyword(o);
    char *lowbuf = malloc(kwmax + 16);
    if (!lowbuf)
        return DESCRIPTOR_ENOMEM;

    int rc = 0;
    size_t cursor = 0;
    long long windows = 0;
    while (cursor < n && windows < max_windows) {
        size_t start = cursor;
        size_t rough = (unsigned long long)target >= n - start ? n : start + (size_t)target;
        size_t min_break = (unsigned long long)minl >= n - start ? n : start + (size_t)minl;
        size_t end = rough;
        if (rough > min_break) {
            for (size_t idx = rough; idx-- > min_break;) {
                const char *line = text + c->lines[2 * idx];
                size_t ll = c->lines[2 * idx + 1];
                if (pytext_is_blank(line, ll) ||
                    looks_like_boundary(o, kwmax, line, ll, lowbuf)) {
                    end = idx + 1;
                    break;
                }
            }
        }
        if (!join) {
            /* The lines' bytes as they are in text, breaks included: blank exactly when
             * every line is (breaks are whitespace). */
            size_t from = c->lines[2 * start];
            size_t to = c->lines[2 * (end - 1)] + c->lines[2 * (end - 1) + 1];
            if (!pytext_is_blank(text + from, to - from)) {
                descriptor_chunk ch = { start + 1, end, end - start, from, to - from };
                if (push_chunk(c, &ch) != 0) {
                    rc = DESCRIPTOR_ENOMEM;
                    goto out;
                }
            }
        } else if (join_window(c, text, start, end) != 0) {
            rc = DESCRIPTOR_ENOMEM;
            goto out;
        }
        if (end >= n)
            cursor = n;
        else if (overlap == 0)
            cursor = end;
        else {
            size_t back = (unsigned long long)overlap >= end ? 0 : end - (size_t)overlap;
            cursor = (unsigned long long)overlap >= end || back <= start ? end : back;
        }
        windows++;
    }
out:
    free(lowbuf);
    return rc;
}

int descriptor_chunk_text(const descriptor_options *o, const char *text, size_t len,
                          descriptor_chunks *c)
{
    return chunk_text(o, text, len, c, 1);
}

int descriptor_chunk_ranges(const descriptor_options *o, const char *text, size_t len,
                            descriptor_chunks *c)
{
    return chunk_text(o, text, len, c, 0);
}

void descriptor_chunks_free(descriptor_chunks *c)
{
    free(c->items);
    free(c->lines);
    descriptor_buf_free(&c->text);
    memset(c, 0, sizeof *c);
}
