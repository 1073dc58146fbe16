/*
 * test_descriptor_kernels.c - the scanning kernels of the descriptor pipeline (the
 * tokenizer, the line splitter, the cleanup scan) in their three implementations:
 * 64-byte blocks classified with SSE2 (AUTO on x86-64), the same blocks classified in
 * plain C (PORTABLE), and the byte-at-a-time reference (REFERENCE).
 *
 *   - hand-written token lists for the places a block scanner can get wrong: tokens
 *     across the 64-byte block edge, operators whose length depends on the next block,
 *     runs longer than a block, non-ASCII bytes inside a block, texts of 63-65 bytes;
 *   - the three agree on random texts (tokens, lines, cleanup), bit for bit;
 *   - the workspace, which embeds chunk ranges of the cleaned text, and embed_files,
 *     which embeds the joined chunk contents, agree bit for bit whatever the line breaks;
 *   - embedding digests recorded with the implementation before the block kernels
 *     (commit f53d56d): the vectors did not change, and must not.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "descriptor.h"
#include "pytext.h"

static const int kernels[3] = { DESCRIPTOR_KERNELS_AUTO, DESCRIPTOR_KERNELS_PORTABLE,
                                DESCRIPTOR_KERNELS_REFERENCE };
static const char *const kernel_names[3] = { "auto", "portable", "reference" };

/* ---- helpers ------------------------------------------------------------------------- */

typedef struct text {
    char *data;
    size_t len, cap;
} text;

static void text_add(text *t, const void *p, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = 2 * (t->len + n + 1);
        t->data = realloc(t->data, t->cap);
    }
    memcpy(t->data + t->len, p, n);
    t->len += n;
    t->data[t->len] = '\0';
}

static void text_spaces(text *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        text_add(t, " ", 1);
}

/* Tokens joined with '|' after each. */
static void collect(const char *tok, size_t len, void *ctx)
{
    text_add(ctx, tok, len);
    text_add(ctx, "|", 1);
}

static char *tokens_of(const char *s, size_t len, int kernel)
{
    text t = { 0 };
    text_add(&t, "", 0);
    int old = descriptor_set_kernels(kernel);
    descriptor_tokens(s, len, collect, &t);
    descriptor_set_kernels(old);
    return t.data;
}

/* The tokens of `pad` spaces followed by s, under every kernel, against `want`. */
static void expect_tokens(size_t pad, const char *s, const char *want)
{
    text in = { 0 };
    text_spaces(&in, pad);
    text_add(&in, s, strlen(s));
    for (int k = 0; k < 3; k++) {
        char *got = tokens_of(in.data, in.len, kernels[k]);
        CHECK_MSG(strcmp(got, want) == 0, "%s, %zu spaces + \"%s\": \"%s\" != \"%s\"",
                  kernel_names[k], pad, s, got, want);
        free(got);
    }
    free(in.data);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* ---- tokens at the block edges --------------------------------------------------------- */

static void test_block_edges(void)
{
    /* a token ends, or goes on, exactly at the edge (bytes 63 and 64) */
    for (size_t pad = 55; pad <= 66; pad++) {
        expect_tokens(pad, "fooBarBaz qux", "foo|bar|baz|qux|");
        expect_tokens(pad, "HTTPServer", "http|server|");
        expect_tokens(pad, "parseHTTPRequest_v2", "parse|http|request|v|2|");
        expect_tokens(pad, "1.5e10x.y+1", "1.5e10x.y|+|1|");
        expect_tokens(pad, "a.5", "a|5|");
        expect_tokens(pad, "x..5", "x|..|5|");
        expect_tokens(pad, "<<= ... .. . :: := : =>", "<<=|...|..|::|:=|=>|");
        expect_tokens(pad, "a?.b", "a|?.|b|");
        expect_tokens(pad, "====", "===|=|");
        expect_tokens(pad, "f(x)[0]", "f|x|0|");
        expect_tokens(pad, "caf\xc3\xa9" "Bar", "caf\xc3\xa9|bar|");
        expect_tokens(pad, "x\xc3\xa9" "1 2", "x\xc3\xa9|1|2|");
        expect_tokens(pad, "a\xe2\x80\xa8" "b", "a|b|");
        expect_tokens(pad, "7\xc3\xa9", "7|\xc3\xa9|");
        expect_tokens(pad, "\xff" "abc", "abc|");
    }
    /* runs longer than a block */
    text in = { 0 }, want = { 0 };
    for (int i = 0; i < 30; i++) {
        text_add(&in, "WordAbc", 7);
        text_add(&want, "word|abc|", 9);
    }
    text_add(&in, "_9", 2);
    text_add(&want, "9|", 2);
    expect_tokens(3, in.data, want.data);
    in.len = want.len = 0;
    text_add(&in, "1", 1);
    for (int i = 0; i < 100; i++)
        text_add(&in, "0.aB_", 5);
    text_add(&want, "1", 1);
    for (int i = 0; i < 100; i++)
        text_add(&want, "0.ab_", 5);
    text_add(&want, "|", 1);
    expect_tokens(0, in.data, want.data);
    /* texts that end just before, at and after a block's last byte */
    expect_tokens(62, "ab", "ab|");
    expect_tokens(63, "ab", "ab|");
    expect_tokens(61, "-=", "-=|");
    expect_tokens(62, "-=", "-=|");
    expect_tokens(63, "-=", "-=|");
    free(in.data);
    free(want.data);
}

/* ---- the three kernels agree ------------------------------------------------------------ */

static const char *const pieces[] = {
    "a", "z", "A", "Z", "_", "0", "9", ".", ":", "=", "<", ">", "!", "-", "+", "*", "/", "?",
    "|", "&", "^", "%", "(", ")", "[", "]", "{", "}", ",", ";", "'", "\"", "`", "\\", "#",
    "$", "@", "~", " ", " ", "    ", "\t", "\n", "\n", "\r", "\r\n", "\v", "\f", "\x1c",
    "\x1f", "\x01", "\x7f", "\xc2\x85", "\xc2\xa0", "\xe2\x80\xa8", "\xe2\x80\xa9",
    "\xc3\xa9", "\xc3\x89", "\xc4\xb0", "\xc7\x85", "\xe3\x80\x80", "\xf0\x9f\x98\x80",
    "\xff", "\xc3", "\xe2\x80", "\x80", "...", "::", ":=", "<<=", "!==", "->", "?.", "/*",
    "*/", "//", "--", "# c", "def ", "HTTPServer", "x86_64", "1.5e10", "userID",
};

static size_t random_text(char *buf, size_t cap)
{
    size_t np = sizeof pieces / sizeof pieces[0];
    size_t target = next_random() % 4 == 0 ? next_random() % (cap - 16) : next_random() % 300;
    int ascii = next_random() % 3 == 0;
    size_t n = 0;
    while (n < target) {
        const char *p = pieces[next_random() % (ascii ? 38 : np)];
        size_t l = strlen(p);
        memcpy(buf + n, p, l);
        n += l;
    }
    return n;
}

static void test_kernels_agree(void)
{
    enum { CAP = 6000 };
    char *buf = malloc(CAP);
    descriptor_options o;
    descriptor_options_init(&o);
    int disagreements = 0;
    for (int iter = 0; iter < 1500 && disagreements < 5; iter++) {
        size_t len = random_text(buf, CAP);
        size_t off = next_random() % 8;      /* blocks start anywhere */
        if (off > len)
            off = 0;
        const char *s = buf + off;
        len -= off;
        o.tab_width = (long long)(next_random() % 10) - 2;
        o.max_blank_lines = (long long)(next_random() % 4) - 1;
        o.strip_comments = (int)(next_random() & 1);
        o.strip_block_comments = (int)(next_random() & 1);
        char *tok[3];
        size_t *lines[3] = { 0 }, lines_cap[3] = { 0 }, nlines[3] = { 0 };
        descriptor_buf clean[3] = { { 0 } };
        int rc[3];
        for (int k = 0; k < 3; k++) {
            tok[k] = tokens_of(s, len, kernels[k]);
            int old = descriptor_set_kernels(kernels[k]);
            CHECK(pytext_split_lines(s, len, &lines[k], &lines_cap[k], &nlines[k]) == 0);
            rc[k] = descriptor_clean(&o, s, len, &clean[k]);
            descriptor_set_kernels(old);
        }
        for (int k = 1; k < 3; k++) {
            int same_tokens = strcmp(tok[k], tok[0]) == 0;
            int same_lines = nlines[k] == nlines[0] &&
                             (nlines[0] == 0 ||
                              memcmp(lines[k], lines[0], 2 * nlines[0] * sizeof(size_t)) == 0);
            int same_clean = rc[k] == rc[0] && clean[k].len == clean[0].len &&
                             (clean[0].len == 0 ||
                              memcmp(clean[k].data, clean[0].data, clean[0].len) == 0);
            CHECK_MSG(same_tokens, "text %d: tokens of %s differ from auto", iter, kernel_names[k]);
            CHECK_MSG(same_lines, "text %d: lines of %s differ from auto", iter, kernel_names[k]);
            CHECK_MSG(same_clean, "text %d: cleanup of %s differs from auto", iter, kernel_names[k]);
            disagreements += !same_tokens + !same_lines + !same_clean;
        }
        for (int k = 0; k < 3; k++) {
            free(tok[k]);
            free(lines[k]);
            descriptor_buf_free(&clean[k]);
        }
    }
    descriptor_options_free(&o);
    free(buf);
}

/* ---- chunk ranges and joined chunks embed alike ------------------------------------------- */

static void test_ranges_and_joined(void)
{
    static const char *const breaks[] = { "\n", "\n", "\n\n", "\r\n", "\v", "\f", "\x1c",
                                          "\xc2\x85", "\xe2\x80\xa8", "\xe2\x80\xa9" };
    static const char *const lines[] = { "def run(self, x):", "    return x.y + 1",
                                         "class HTTPServer:", "", "   ", "z = [1, 2]",
                                         "# note", "    \xc3\xa9t\xc3\xa9 = \"\xe4\xbd\xa0\"",
                                         "a->b::c <<= 2 ** n" };
    descriptor_options o;
    descriptor_options_init(&o);
    o.chunk_target_lines = 4;
    o.chunk_min_lines = 2;
    o.chunk_overlap_lines = 1;
    descriptor_workspace *w = descriptor_workspace_new(64);
    descriptor_embedder *e = descriptor_embedder_new(64);
    for (int iter = 0; iter < 200; iter++) {
        text t = { 0 };
        int n = 1 + (int)(next_random() % 40);
        for (int i = 0; i < n; i++) {
            const char *l = lines[next_random() % (sizeof lines / sizeof lines[0])];
            const char *b = breaks[next_random() % (sizeof breaks / sizeof breaks[0])];
            text_add(&t, l, strlen(l));
            text_add(&t, b, strlen(b));
        }
        double va[64], vb[64];
        descriptor_source src = { { "m.py", 4 }, 0, { t.data, t.len } };
        descriptor_file_result r;
        size_t kept, used = 0, used_b = 0;
        int rc = descriptor_embed_sources(w, &o, &src, 1, &r, va, &kept, &used);
        descriptor_buf clean = { 0 };
        descriptor_chunks ch = { 0 };
        if (descriptor_clean(&o, t.data, t.len, &clean) == 0)
            CHECK(descriptor_chunk_text(&o, clean.data, clean.len, &ch) == 0);
        descriptor_str *cs = calloc(ch.count + 1, sizeof *cs);
        size_t *lc = calloc(ch.count + 1, sizeof *lc);
        for (size_t i = 0; i < ch.count; i++) {
            cs[i].ptr = ch.text.data + ch.items[i].offset;
            cs[i].len = ch.items[i].len;
            lc[i] = ch.items[i].line_count;
        }
        descriptor_chunked_file cf = { { "m.py", 4 }, 0, ch.total_lines, cs, lc, ch.count };
        int rc_b = descriptor_embed_files(e, &o, &cf, 1, vb, &used_b);
        CHECK_MSG(used == used_b, "text %d: %zu chunks vs %zu", iter, used, used_b);
        if (ch.count > 0) {
            CHECK(rc == 0 && rc_b == 0);
            CHECK_MSG(memcmp(va, vb, sizeof va) == 0, "text %d: vectors differ", iter);
        }
        free(cs);
        free(lc);
        descriptor_chunks_free(&ch);
        descriptor_buf_free(&clean);
        free(t.data);
    }
    descriptor_embedder_free(e);
    descriptor_workspace_free(w);
    descriptor_options_free(&o);
}

/* ---- the vectors did not change ------------------------------------------------------------ */

/* FNV-1a over the IEEE bits of each value, least significant byte first. */
static uint64_t digest(const double *v, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        uint64_t b;
        memcpy(&b, &v[i], sizeof b);
        for (int k = 0; k < 8; k++)
            h = (h ^ ((b >> (8 * k)) & 0xFF)) * 0x100000001B3ull;
    }
    return h;
}

static const char *const pinned[] = {
    "import os\n\nclass HTTPServer(BaseServer):\n    \"\"\"Serve requests.\"\"\"\n"
    "    max_size = 0x1F_FF + 1.5e10\n\n    def parseHeader(self, raw_bytes, userID=None):\n"
    "        if raw_bytes is None or len(raw_bytes) <= 0:\n            return {}\n"
    "        # a comment line\n        items = [x.strip() for x in raw_bytes.split(b':')]\n"
    "        self.state |= FLAG_A << 2 ** 3; counter += 1  /* block */\n"
    "        return {k: v for k, v in zip(items[::2], items[1::2]) if k != '...'}\n",
    "fn main() {\n\tlet v: Vec<u8> = vec![1, 2, 3];\n\tlet s = v.iter().map(|x| x * 2).sum::<u8>();\n"
    "\tprintln!(\"{}\", s);\r\n\tif a === b && c !== d || e >>= f { g <=> h }\r\n}\r\n",
    "caf\xc3\xa9" "Bar = na\xc3\xafve[\"\xe4\xbd\xa0\xe5\xa5\xbd\"] + \xc3\x89" "COLE\n"
    "\xe5\xa4\x84\xe7\x90\x86_x = 1\x0b" "2\x0c" "3\x1c" "4\xc2\x85" "5\xe2\x80\xa8six\xe2\x80\xa9seven\n"
    "\xc4\xb0stanbul \xc7\x85ungla \xe2\x80\x83 \xc2\xa0 \xf0\x9f\x98\x80 end\n",
};

/* Recorded with the byte-at-a-time implementation (commit f53d56d): the chunk vector
 * (descriptor_embed_chunk of the whole text) and the file vector (the workspace, with
 * windows of 6 lines, at least 2, overlap 2), for 256 and 7 dimensions. */
static const struct {
    int text;
    size_t dims;
    uint64_t chunk, file;
} recorded[] = {
    { 0, 256, 0x41DB6C5FC7251F69ull, 0x15C2D33861D8148Eull },
    { 0, 7, 0x7DB2584EBAB15377ull, 0x186139A55B14BA8Eull },
    { 1, 256, 0x37899389AC1E8453ull, 0x37899389AC1E8453ull },
    { 1, 7, 0x7E9AB1D6A906B337ull, 0x7C67A8ACE861B5DAull },
    { 2, 256, 0x146D62E79DC693ACull, 0x4BB274FDDE0CD4F9ull },
    { 2, 7, 0x3D65F93803E48E92ull, 0xFFB67B582B12C97Full },
};

static void test_recorded_vectors(void)
{
    descriptor_options o;
    descriptor_options_init(&o);
    o.chunk_target_lines = 6;
    o.chunk_min_lines = 2;
    o.chunk_overlap_lines = 2;
    for (int k = 0; k < 3; k++) {
        int old = descriptor_set_kernels(kernels[k]);
        for (size_t i = 0; i < sizeof recorded / sizeof recorded[0]; i++) {
            const char *s = pinned[recorded[i].text];
            size_t dims = recorded[i].dims;
            double v[256];
            descriptor_embedder *e = descriptor_embedder_new(dims);
            CHECK(descriptor_embed_chunk(e, s, strlen(s), v) == 0);
            CHECK_MSG(digest(v, dims) == recorded[i].chunk, "%s: chunk vector of text %d, %zu dims",
                      kernel_names[k], recorded[i].text, dims);
            descriptor_workspace *w = descriptor_workspace_new(dims);
            descriptor_source src = { { "m.py", 4 }, 5, { s, strlen(s) } };
            descriptor_file_result r;
            size_t kept, used;
            CHECK(descriptor_embed_sources(w, &o, &src, 1, &r, v, &kept, &used) == 0);
            CHECK_MSG(digest(v, dims) == recorded[i].file, "%s: file vector of text %d, %zu dims",
                      kernel_names[k], recorded[i].text, dims);
            descriptor_workspace_free(w);
            descriptor_embedder_free(e);
        }
        descriptor_set_kernels(old);
    }
    descriptor_options_free(&o);
}

int main(void)
{
    CHECK(descriptor_set_kernels(DESCRIPTOR_KERNELS_AUTO) == DESCRIPTOR_KERNELS_AUTO);
    CHECK(descriptor_set_kernels(99) == DESCRIPTOR_KERNELS_AUTO);   /* unknown: unchanged */
    test_block_edges();
    test_kernels_agree();
    test_ranges_and_joined();
    test_recorded_vectors();
    return CHECK_DONE();
}
