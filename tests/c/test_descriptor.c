/*
 * The descriptor core without Lua: Python text semantics, globs, cleanup of hostile
 * content, chunking limits, the embedding's tokens and determinism, PCA against
 * closed-form answers, the reducer's refit cadence, history window, reset, and
 * persistence (including every truncation of a saved blob).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "descriptor.h"
#include "pytext.h"
#include "reducer.h"

static descriptor_options opts;

/* ---- Python text semantics ------------------------------------------------------------ */

static void test_pytext(void)
{
    /* splitlines: \r\n is one break; \v \f \x1c \x85 U+2028 are breaks; \x1f is not */
    const char *text = "a\r\nb\vc\fd\x1c" "e\xc2\x85" "f\xe2\x80\xa8g\x1fh";
    size_t len = strlen(text), pos = 0, n = 0, ll;
    const char *expect[] = { "a", "b", "c", "d", "e", "f", "g\x1fh" };
    while (pos < len) {
        size_t next = pytext_next_line(text, len, pos, &ll);
        CHECK(n < 7);
        if (n < 7)
            CHECK_MSG(ll == strlen(expect[n]) && memcmp(text + pos, expect[n], ll) == 0,
                      "line %zu", n);
        n++;
        pos = next;
    }
    CHECK_EQ_INT(n, 7);
    /* whitespace: NBSP, ideographic space and \x1f are; ZWSP and the BOM are not */
    CHECK(pytext_is_space(0xA0) && pytext_is_space(0x3000) && pytext_is_space(0x1F));
    CHECK(!pytext_is_space(0x200B) && !pytext_is_space(0xFEFF) && !pytext_is_space('a'));
    CHECK_EQ_INT(pytext_lstrip_len("\xc2\xa0 x", 4), 3);
    CHECK_EQ_INT(pytext_rstrip_len("x\xe3\x80\x80\t", 5), 4);
    /* lower: Kelvin sign -> k, U+0130 -> i + U+0307, Greek and Cyrillic capitals */
    uint32_t second;
    CHECK_EQ_INT(pytext_lower(0x212A, &second), 'k');
    CHECK_EQ_INT(second, 0);
    CHECK_EQ_INT(pytext_lower(0x130, &second), 'i');
    CHECK_EQ_INT(second, 0x307);
    CHECK_EQ_INT(pytext_lower(0x391, &second), 0x3B1);
    CHECK_EQ_INT(pytext_lower(0x416, &second), 0x436);
    CHECK_EQ_INT(pytext_lower(0x100, &second), 0x101);
    CHECK_EQ_INT(pytext_lower(0x101, &second), 0x101);
    /* errors="ignore": invalid bytes go, valid neighbours stay */
    const char *bad = "a\xff b\xe2\x82" "A\xed\xa0\x80z\xc0\xaf!\xf4\x90\x80\x80?\xe2\x82\xac";
    char out[64];
    size_t ol = pytext_drop_invalid_utf8(bad, strlen(bad), out);
    CHECK_MSG(ol == strlen("a bAz!?\xe2\x82\xac") && memcmp(out, "a bAz!?\xe2\x82\xac", ol) == 0,
              "got %.*s", (int)ol, out);
    CHECK(!pytext_is_valid_utf8(bad, strlen(bad)));
    CHECK(pytext_is_valid_utf8("\xe2\x82\xac ok", 6));
}

/* ---- globs and eligibility ------------------------------------------------------------- */

static int excluded(const char *path)
{
    return descriptor_is_excluded(&opts, path, strlen(path), NULL);
}

static void test_globs(void)
{
    /* the default globs: "tests", "__pycache__", "node_modules", "build", "dist" and ".git",
     * each followed by "/" and a double star */
    CHECK(excluded("tests/a.py"));
    CHECK(excluded("tests/unit/deep/a.py"));       /* the deliberate difference */
    CHECK(excluded("x/tests/a.py"));
    CHECK(excluded("a/b/node_modules/c/d.js"));
    CHECK(!excluded("tests"));                     /* a trailing ** needs one segment */
    CHECK(!excluded("Tests/a.py"));                /* case-sensitive */
    CHECK(!excluded("tests.py"));
    CHECK(!excluded("src/main.py"));
    descriptor_options o;
    descriptor_options_init(&o);
    descriptor_str g[] = { { "  ./src/*_test.go ", 18 }, { "\\win\\[a-c]?.c", 13 },
                           { "lib/**/gen/*.py", 15 }, { "[!x]*.min.js", 12 }, { "", 0 } };
    descriptor_options_set_globs(&o, g, 5);
    CHECK_EQ_INT(o.excluded_glob_count, 4);
    CHECK_STR(o.excluded_globs[0].text, "src/*_test.go");
    CHECK_STR(o.excluded_globs[1].text, "win/[a-c]?.c");
    struct { const char *path; int hit; } cases[] = {
        { "src/h_test.go", 1 }, { "x/src/h_test.go", 1 }, { "src/h.go", 0 },
        { "win/b1.c", 1 }, { "win/d1.c", 0 }, { "win/b12.c", 0 },
        { "lib/gen/a.py", 1 }, { "lib/x/y/gen/a.py", 1 }, { "lib/gen/sub/a.py", 0 },
        { "app.min.js", 1 }, { "x.min.js", 0 }, { "web/\xc3\xa9.min.js", 1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK_MSG(descriptor_is_excluded(&o, cases[i].path, strlen(cases[i].path), NULL) ==
                      cases[i].hit,
                  "%s", cases[i].path);
    descriptor_options_free(&o);
    /* eligibility: lower-cased suffix, exact names, dot-files have no suffix */
    CHECK(descriptor_is_code_file(&opts, "a/B.PY", 6));
    CHECK(descriptor_is_code_file(&opts, "Makefile", 8));
    CHECK(!descriptor_is_code_file(&opts, "makefile", 8));
    CHECK(!descriptor_is_code_file(&opts, ".py", 3));
    CHECK(!descriptor_is_code_file(&opts, "x.py.", 5));
    CHECK(!descriptor_is_code_file(&opts, ".", 1));
}

/* ---- selection ----------------------------------------------------------------------------- */

static void test_select(void)
{
    descriptor_file_in in[] = {
        { { "../up.py", 8 }, 50 }, { { "/etc/passwd.py", 14 }, 40 }, { { "a/./b//c.py", 11 }, 5 },
        { { "x/../y.py", 9 }, 7 }, { { "n\0ul.py", 7 }, 9 }, { { "tests/t.py", 10 }, 99 },
        { { "README.md", 9 }, 3 }, { { "z.c", 3 }, 7 },
    };
    descriptor_selection sel;
    CHECK_EQ_INT(descriptor_select(&opts, NULL, in, 8, &sel), 0);
    CHECK_EQ_INT(sel.candidate_count, 3);
    if (sel.candidate_count == 3) {
        CHECK_STR(sel.candidates[0].path, "y.py");    /* 7, first of the tie */
        CHECK_STR(sel.candidates[1].path, "z.c");     /* 7 */
        CHECK_STR(sel.candidates[2].path, "a/b/c.py");
    }
    CHECK_EQ_INT(sel.skipped_count, 5);
    for (size_t i = 0; i < sel.skipped_count; i++)
        CHECK(strlen(sel.skipped[i].reason) > 0);
    CHECK(strstr(sel.skipped[0].reason, "outside") != NULL);
    CHECK(strstr(sel.skipped[2].reason, "NUL") != NULL);
    CHECK(strstr(sel.skipped[3].reason, "excluded by glob 'tests/**'") != NULL);
    descriptor_selection_free(&sel);

    /* thousands of files: sorted, capped, every dropped one listed */
    size_t n = 5000;
    descriptor_file_in *many = calloc(n, sizeof *many);
    char (*names)[32] = calloc(n, 32);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 32, "pkg/m%zu.py", i);
        many[i].path.ptr = names[i];
        many[i].path.len = strlen(names[i]);
        many[i].change_count = (long long)(i % 97);
    }
    CHECK_EQ_INT(descriptor_select(&opts, NULL, many, n, &sel), 0);
    CHECK_EQ_INT(sel.candidate_count, 6);
    CHECK_EQ_INT(sel.skipped_count, n - 6);
    CHECK_EQ_INT(sel.candidates[0].change_count, 96);
    CHECK_STR(sel.candidates[0].path, "pkg/m96.py");
    descriptor_selection_free(&sel);
    free(many);
    free(names);
}

/* ---- cleanup of hostile content --------------------------------------------------------------- */

static void test_clean(void)
{
    descriptor_buf out = { 0 };
    CHECK_EQ_INT(descriptor_clean(&opts, "a = 1\0b", 7, &out), DESCRIPTOR_SKIP_BINARY);
    CHECK_EQ_INT(descriptor_clean(&opts, "", 0, &out), DESCRIPTOR_SKIP_EMPTY);
    CHECK_EQ_INT(descriptor_clean(&opts, " \n\t\n// c\n", 9, &out), DESCRIPTOR_SKIP_EMPTY);
    const char *crlf = "a = 1\r\n\r\n\r\n\r\nb = 2\rc = 3\r";
    CHECK_EQ_INT(descriptor_clean(&opts, crlf, strlen(crlf), &out), 0);
    CHECK(out.len == strlen("a = 1\n\n\nb = 2\nc = 3") &&
          memcmp(out.data, "a = 1\n\n\nb = 2\nc = 3", out.len) == 0);
    const char *bad = "x = '\xff\xfe'\n\tif y:\xc3\n";
    CHECK_EQ_INT(descriptor_clean(&opts, bad, strlen(bad), &out), 0);
    CHECK(out.len == strlen("x = ''\n    if y:") && memcmp(out.data, "x = ''\n    if y:", out.len) == 0);
    CHECK(pytext_is_valid_utf8(out.data, out.len));
    /* the size limit: max(kb, 1) * 1024 bytes, inclusive */
    descriptor_options small;
    descriptor_options_init(&small);
    small.max_file_size_kb = 0;
    char *big = malloc(1025);
    memset(big, 'x', 1025);
    CHECK_EQ_INT(descriptor_clean(&small, big, 1024, &out), 0);
    CHECK_EQ_INT(descriptor_clean(&small, big, 1025, &out), DESCRIPTOR_SKIP_OVERSIZE);
    free(big);
    /* a 10 MB single line under a raised limit: one line, one chunk, bounded tokens */
    small.max_file_size_kb = 16384;
    size_t n = 10u << 20;
    char *line = malloc(n);
    for (size_t i = 0; i < n; i++)
        line[i] = "ab+ c_d1 "[i % 9];
    CHECK_EQ_INT(descriptor_clean(&small, line, n, &out), 0);
    descriptor_chunks ch = { 0 };
    CHECK_EQ_INT(descriptor_chunk_text(&small, out.data, out.len, &ch), 0);
    CHECK_EQ_INT(ch.total_lines, 1);
    CHECK_EQ_INT(ch.count, 1);
    descriptor_embedder *e = descriptor_embedder_new(64);
    double v[64], norm = 0;
    CHECK_EQ_INT(descriptor_embed_chunk(e, out.data, out.len, v), 0);
    for (int i = 0; i < 64; i++)
        norm += v[i] * v[i];
    CHECK_NEAR(norm, 1.0, 1e-12);
    descriptor_embedder_free(e);
    descriptor_chunks_free(&ch);
    free(line);
    /* tab width is bounded */
    small.tab_width = 1000000;
    CHECK_EQ_INT(descriptor_clean(&small, "a\tb", 3, &out), 0);
    CHECK_EQ_INT(out.len, 2 + 64);
    descriptor_options_free(&small);
    descriptor_buf_free(&out);
}

/* ---- chunking ---------------------------------------------------------------------------------- */

static void test_chunk_limits(void)
{
    descriptor_options o;
    descriptor_options_init(&o);
    o.chunk_target_lines = 10;
    o.chunk_min_lines = 4;
    o.chunk_overlap_lines = 3;
    o.max_chunks_per_file = 3;
    descriptor_buf text = { 0 };
    for (int i = 0; i < 100; i++) {
        char line[32];
        int k = snprintf(line, sizeof line, "    x%d = %d\n", i, i);
        descriptor_buf_append(&text, line, (size_t)k);
    }
    descriptor_chunks ch = { 0 };
    CHECK_EQ_INT(descriptor_chunk_text(&o, text.data, text.len, &ch), 0);
    CHECK_EQ_INT(ch.total_lines, 100);
    CHECK_EQ_INT(ch.count, 3);                   /* the window cap */
    /* no boundary in the filler: rough cuts at start + 10, overlap 3 */
    CHECK_EQ_INT(ch.items[0].start_line, 1);
    CHECK_EQ_INT(ch.items[0].end_line, 10);
    CHECK_EQ_INT(ch.items[1].start_line, 8);
    CHECK_EQ_INT(ch.items[1].end_line, 17);
    CHECK_EQ_INT(ch.items[2].start_line, 15);
    /* "" splits into no line at all */
    CHECK_EQ_INT(descriptor_chunk_text(&o, "", 0, &ch), 0);
    CHECK_EQ_INT(ch.count, 0);
    CHECK_EQ_INT(ch.total_lines, 0);
    descriptor_chunks_free(&ch);
    descriptor_buf_free(&text);
    descriptor_options_free(&o);
}

/* ---- tokens and the embedding -------------------------------------------------------------------- */

typedef struct tokens {
    char buf[512];
    size_t len;
} tokens;

static void collect(const char *t, size_t len, void *ctx)
{
    tokens *tk = ctx;
    if (tk->len + len + 2 < sizeof tk->buf) {
        memcpy(tk->buf + tk->len, t, len);
        tk->len += len;
        tk->buf[tk->len++] = '|';
        tk->buf[tk->len] = '\0';
    }
}

static void test_tokens(void)
{
    tokens tk = { .len = 0 };
    const char *code = "parseHTTPRequest_v2 = x->y + 0x1F; if (a <= b) { c++ } // Done!";
    descriptor_tokens(code, strlen(code), collect, &tk);
    CHECK_STR(tk.buf, "parse|http|request|v|2|=|x|->|y|+|0x1f|if|a|<=|b|c|++|//|done|!|");
    tk.len = 0;
    tk.buf[0] = '\0';
    const char *uni = "\xc3\x9c" "berGr\xc3\xb6\xc3\x9f" "e \xe2\x80\xa8 snake_CASE";
    descriptor_tokens(uni, strlen(uni), collect, &tk);
    CHECK_STR(tk.buf, "\xc3\xbc" "ber|gr\xc3\xb6\xc3\x9f" "e|snake|case|");
}

static void test_embedding(void)
{
    const char *code = "def f(x):\n    return x * 2 + offset\n";
    descriptor_embedder *a = descriptor_embedder_new(256), *b = descriptor_embedder_new(256);
    double va[256], vb[256], vc[256];
    CHECK_EQ_INT(descriptor_embed_chunk(a, code, strlen(code), va), 0);
    CHECK_EQ_INT(descriptor_embed_chunk(a, "other text", 10, vc), 0);
    CHECK_EQ_INT(descriptor_embed_chunk(b, code, strlen(code), vb), 0);
    CHECK(memcmp(va, vb, sizeof va) == 0);       /* bit for bit, any embedder, any history */
    CHECK(memcmp(va, vc, sizeof va) != 0);
    double norm = 0;
    int nonzero = 0;
    for (int i = 0; i < 256; i++) {
        norm += va[i] * va[i];
        nonzero += va[i] != 0;
    }
    CHECK_NEAR(norm, 1.0, 1e-12);
    CHECK(nonzero >= 8);
    /* the eight-bytes-at-a-time path (a lower-case word) and the general scanner (the
     * same word before a non-ASCII separator) hash alike, for every word length */
    for (size_t n = 1; n <= 20; n++) {
        char ascii[40], uni[40];
        memset(ascii, 'q', n);
        memcpy(ascii + n, " x", 3);
        memset(uni, 'q', n);
        memcpy(uni + n, "\xe2\x80\xa8x", 5);
        descriptor_embed_chunk(a, ascii, n + 2, va);
        descriptor_embed_chunk(b, uni, n + 4, vb);
        CHECK_MSG(memcmp(va, vb, sizeof va) == 0, "word of %zu letters", n);
    }
    /* workspace (file at a time) and embed_files (chunk tables) agree bit for bit */
    const char *file = "import os\n\nclass A:\n    def run(self):\n        return os.getcwd()\n";
    descriptor_workspace *w = descriptor_workspace_new(256);
    descriptor_source src = { { "a.py", 4 }, 3, { file, strlen(file) } };
    descriptor_file_result r;
    size_t kept, chunks;
    CHECK_EQ_INT(descriptor_embed_sources(w, &opts, &src, 1, &r, va, &kept, &chunks), 0);
    CHECK_EQ_INT(kept, 1);
    descriptor_buf clean = { 0 };
    descriptor_chunks ch = { 0 };
    descriptor_clean(&opts, file, strlen(file), &clean);
    descriptor_chunk_text(&opts, clean.data, clean.len, &ch);
    descriptor_str *cs = calloc(ch.count, sizeof *cs);
    size_t *lc = calloc(ch.count, sizeof *lc);
    for (size_t i = 0; i < ch.count; i++) {
        cs[i].ptr = ch.text.data + ch.items[i].offset;
        cs[i].len = ch.items[i].len;
        lc[i] = ch.items[i].line_count;
    }
    descriptor_chunked_file cf = { { "a.py", 4 }, 3, ch.total_lines, cs, lc, ch.count };
    size_t used;
    CHECK_EQ_INT(descriptor_embed_files(b, &opts, &cf, 1, vb, &used), 0);
    CHECK(memcmp(va, vb, sizeof va) == 0);
    free(cs);
    free(lc);
    descriptor_chunks_free(&ch);
    descriptor_buf_free(&clean);
    descriptor_workspace_free(w);
    descriptor_embedder_free(a);
    descriptor_embedder_free(b);
}

static void test_pooling(void)
{
    /* chunk weights max(line_count, 1); file weight = change_count when > 0 */
    double vecs[] = { 1, 0, 0, 1 }, w[] = { 3, 1 }, out[2];
    descriptor_weighted_mean(vecs, w, 2, 2, out);
    CHECK_NEAR(out[0], 0.75, 1e-15);
    CHECK_NEAR(out[1], 0.25, 1e-15);
    double zero[] = { 0, -1 };
    descriptor_weighted_mean(vecs, zero, 2, 2, out);   /* all skipped: plain mean */
    CHECK_NEAR(out[0], 0.5, 1e-15);
    CHECK_NEAR(out[1], 0.5, 1e-15);
    CHECK_NEAR(descriptor_file_weight(7, 40, 50), 7, 0);
    CHECK_NEAR(descriptor_file_weight(0, 40, 50), 40, 0);
    CHECK_NEAR(descriptor_file_weight(-3, 0, 50), 50, 0);
    CHECK_NEAR(descriptor_file_weight(0, 0, 0), 1, 0);
}

/* ---- bounds -------------------------------------------------------------------------------------- */

static void test_bounds(void)
{
    double lo[4], hi[4];
    double l[] = { -1, -2 }, u[] = { 5, -3, 1, 9, 9 };
    descriptor_bounds(l, 2, u, 5, 4, lo, hi);
    CHECK(lo[0] == -1 && lo[1] == -2 && lo[2] == -2 && lo[3] == -2);
    CHECK(hi[0] == 5 && hi[1] == -1 && hi[2] == 1 && hi[3] == 9);   /* hi <= lo -> lo + 1 */
    descriptor_bounds(NULL, 0, NULL, 0, 4, lo, hi);
    CHECK(lo[3] == -6 && hi[3] == 6);
    double v[] = { -10, 0.5, NAN, 10 };
    descriptor_clip(v, lo, hi, 4);
    CHECK(v[0] == -6 && v[1] == 0.5 && isnan(v[2]) && v[3] == 6);
}

/* ---- PCA -------------------------------------------------------------------------------------------- */

/* Four points c +- 3u, c +- w with u = (0.6, 0.8), w = (0.8, -0.6) placed in F dimensions
 * (the two directions spread over coordinates 0..1 and, when F > 2, scaled copies
 * elsewhere stay zero). Scatter eigenvalues 18 and 2: variance 6 and 2/3, ratio 0.9/0.1. */
static void check_closed_form(size_t F, size_t extra_rows)
{
    size_t n = 4 + extra_rows;
    double *data = calloc(n * F, sizeof *data);
    const double **rows = calloc(n, sizeof *rows);
    const double u[2] = { 0.6, 0.8 }, w[2] = { 0.8, -0.6 }, c[2] = { 1.5, -2.0 };
    const double coef[4][2] = { { 3, 0 }, { -3, 0 }, { 0, 1 }, { 0, -1 } };
    for (size_t i = 0; i < n; i++) {
        double *r = data + i * F;
        /* extra rows repeat the pattern so the mean and the shape stay the same */
        const double *k = coef[i % 4];
        for (int d = 0; d < 2; d++)
            r[d] = c[d] + k[0] * u[d] + k[1] * w[d];
        for (size_t d = 2; d < F; d++)
            r[d] = 7.0;                       /* constant: no variance */
        rows[i] = r;
    }
    pca_model m;
    CHECK_EQ_INT(pca_fit(rows, n, F, 4, 123.0, &m), 0);
    size_t k = F < 4 ? F : 4;
    if (k > n)
        k = n;
    CHECK_EQ_INT(m.k, k);
    double reps = (double)n / 4.0;            /* each point appears reps times */
    CHECK_NEAR(m.explained_variance[0], 18.0 * reps / (double)(n - 1), 1e-10);
    CHECK_NEAR(m.explained_variance[1], 2.0 * reps / (double)(n - 1), 1e-10);
    CHECK_NEAR(m.explained_variance_ratio[0], 0.9, 1e-12);
    CHECK_NEAR(m.explained_variance_ratio[1], 0.1, 1e-12);
    /* sign rule: the largest-magnitude entry is positive */
    CHECK_NEAR(m.components[0], 0.6, 1e-12);
    CHECK_NEAR(m.components[1], 0.8, 1e-12);
    CHECK_NEAR(m.components[F + 0], 0.8, 1e-12);
    CHECK_NEAR(m.components[F + 1], -0.6, 1e-12);
    for (size_t d = 2; d < F; d++) {
        CHECK_NEAR(m.components[d], 0, 1e-12);
        CHECK_NEAR(m.components[F + d], 0, 1e-12);
    }
    for (size_t j = 2; j < k; j++) {          /* no variance left: zero components */
        CHECK_NEAR(m.explained_variance[j], 0, 1e-12);
        for (size_t d = 0; d < F; d++)
            CHECK_NEAR(m.components[j * F + d], 0, 0);
    }
    CHECK_NEAR(m.mean[0], 1.5, 1e-12);
    CHECK_NEAR(m.mean[1], -2.0, 1e-12);
    /* projection of c + 2u + 0.5w is (2, 0.5); whitened divides by the std deviation */
    double *x = calloc(F, sizeof *x), y[4];
    for (int d = 0; d < 2; d++)
        x[d] = c[d] + 2 * u[d] + 0.5 * w[d];
    for (size_t d = 2; d < F; d++)
        x[d] = 7.0;
    pca_transform(&m, x, 0, y);
    CHECK_NEAR(y[0], 2.0, 1e-12);
    CHECK_NEAR(y[1], 0.5, 1e-12);
    pca_transform(&m, x, 1, y);
    CHECK_NEAR(y[0], 2.0 / sqrt(m.explained_variance[0]), 1e-12);
    CHECK_NEAR(y[1], 0.5 / sqrt(m.explained_variance[1]), 1e-12);
    /* blob round trip */
    descriptor_buf blob = { 0 };
    CHECK_EQ_INT(pca_encode(&m, &blob), 0);
    pca_model back;
    char err[200];
    CHECK_EQ_INT(pca_decode(blob.data, blob.len, &back, err, sizeof err), 0);
    CHECK(back.k == m.k && back.feature_count == F && back.fitted_at == 123.0);
    CHECK(memcmp(back.components, m.components, m.k * F * sizeof(double)) == 0);
    for (size_t cut = 0; cut < blob.len; cut++) {
        pca_model t;
        CHECK(pca_decode(blob.data, cut, &t, err, sizeof err) == REDUCER_EINVAL);
    }
    pca_model_free(&back);
    descriptor_buf_free(&blob);
    free(x);
    pca_model_free(&m);
    free(data);
    free(rows);
}

static void test_pca(void)
{
    check_closed_form(2, 0);       /* covariance path (F <= n) */
    check_closed_form(3, 4);       /* covariance path with a constant column */
    check_closed_form(10, 0);      /* Gram path (n < F) */
    check_closed_form(40, 8);      /* Gram path, repeated points */

    /* eigenvalues of [[2,1,0],[1,2,0],[0,0,5]] are 5, 3, 1 */
    double a[9] = { 2, 1, 0, 1, 2, 0, 0, 0, 5 }, vals[3], vecs[9];
    CHECK_EQ_INT(pca_symmetric_top(a, 3, 3, vals, vecs), 0);
    CHECK_NEAR(vals[0], 5, 1e-12);
    CHECK_NEAR(vals[1], 3, 1e-12);
    CHECK_NEAR(vals[2], 1, 1e-12);
    CHECK_NEAR(fabs(vecs[2]), 1, 1e-12);
    CHECK_NEAR(fabs(vecs[3] + vecs[4]), sqrt(2.0), 1e-12);
    CHECK_NEAR(vecs[6] + vecs[7], 0, 1e-12);

    /* a larger random symmetric matrix: A v = lambda v for the top 4 */
    size_t n = 60;
    double *m = malloc(n * n * sizeof *m), *copy = malloc(n * n * sizeof *copy);
    double top[4], tv[4 * 60];
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i; j < n; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            m[i * n + j] = m[j * n + i] = (double)(s >> 11) / 9007199254740992.0 - 0.5;
        }
    memcpy(copy, m, n * n * sizeof *m);
    CHECK_EQ_INT(pca_symmetric_top(m, n, 4, top, tv), 0);
    for (int k = 0; k < 4; k++) {
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            double av = 0;
            for (size_t j = 0; j < n; j++)
                av += copy[i * n + j] * tv[k * n + j];
            worst = fmax(worst, fabs(av - top[k] * tv[k * n + i]));
        }
        CHECK_MSG(worst < 1e-10, "residual %g for eigenvalue %d", worst, k);
        if (k > 0)
            CHECK(top[k] <= top[k - 1]);
    }
    free(m);
    free(copy);
}

/* ---- reducer ----------------------------------------------------------------------------------------- */

static void vector_for(int i, double *v, size_t F)
{
    for (size_t d = 0; d < F; d++)
        v[d] = sin((double)(i + 1) * (double)(d + 1) * 0.7) + (d == (size_t)i % F ? 1.0 : 0.0);
}

static void test_refit_cadence(void)
{
    reducer_params p;
    reducer_params_init(&p, 3, 4, 100, 3, 1, 0);
    reducer *r = reducer_new(&p);
    double v[6], m[3];
    int refitted, fits[12] = { 0 };
    char h[16];
    for (int i = 0; i < 11; i++) {
        vector_for(i, v, 6);
        snprintf(h, sizeof h, "c%d", i);
        CHECK_EQ_INT(reducer_observe(r, h, strlen(h), v, 6, 0, m, &refitted), 0);
        fits[i] = refitted;
        if (i < 3) {                              /* before the first fit: raw, normalised */
            double norm = 0;
            for (int d = 0; d < 6; d++)
                norm += v[d] * v[d];
            CHECK_NEAR(m[0], v[0] / sqrt(norm), 1e-15);
            CHECK_NEAR(m[2], v[2] / sqrt(norm), 1e-15);
        }
    }
    /* first fit at 4 samples, then every 3 new samples: 4, 7, 10 */
    int expect[11] = { 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0 };
    for (int i = 0; i < 11; i++)
        CHECK_MSG(fits[i] == expect[i], "observe %d refitted=%d", i + 1, fits[i]);
    CHECK_EQ_INT(reducer_samples_since_fit(r), 1);
    /* a commit seen before moves to the end and does not count toward the refit */
    vector_for(3, v, 6);
    reducer_observe(r, "c3", 2, v, 6, 0, m, &refitted);
    CHECK_EQ_INT(reducer_samples_since_fit(r), 1);
    CHECK_EQ_INT(reducer_history_len(r), 11);
    CHECK_STR(reducer_history(r)[10].hash, "c3");
    reducer_free(r);

    /* REFIT_INTERVAL 0: fitted once, never again */
    reducer_params_init(&p, 2, 2, 100, 0, 1, 0);
    r = reducer_new(&p);
    int count = 0;
    for (int i = 0; i < 10; i++) {
        vector_for(i, v, 6);
        snprintf(h, sizeof h, "d%d", i);
        reducer_observe(r, h, strlen(h), v, 6, 0, m, &refitted);
        count += refitted;
    }
    CHECK_EQ_INT(count, 1);
    reducer_free(r);
}

static void test_history_window(void)
{
    reducer_params p;
    reducer_params_init(&p, 2, 2, 5, 1, 0, 0);
    CHECK_EQ_INT(p.history_limit, 5);
    reducer *r = reducer_new(&p);
    double v[3], m[2];
    int refitted;
    char h[16];
    for (int i = 0; i < 8; i++) {
        vector_for(i, v, 3);
        snprintf(h, sizeof h, "h%d", i);
        reducer_observe(r, h, strlen(h), v, 3, 0, m, &refitted);
    }
    CHECK_EQ_INT(reducer_history_len(r), 5);
    CHECK_STR(reducer_history(r)[0].hash, "h3");
    CHECK_EQ_INT(reducer_history(r)[0].seq, 4);
    CHECK_EQ_INT(reducer_history(r)[4].seq, 8);
    reducer_changes c;
    reducer_get_changes(r, &c);
    CHECK_EQ_INT(c.first_new, 0);
    CHECK_EQ_INT(c.trim_before_seq, 4);
    CHECK(c.projection_changed);
    reducer_mark_taken(r);
    reducer_get_changes(r, &c);
    CHECK_EQ_INT(c.first_new, 5);
    CHECK(!c.projection_changed);
    /* another length resets history and projection (§3.6) */
    double w[4] = { 1, 2, 3, 4 };
    reducer_observe(r, "new", 3, w, 4, 0, m, &refitted);
    CHECK_EQ_INT(reducer_history_len(r), 1);
    CHECK_EQ_INT(reducer_feature_count(r), 4);
    CHECK(reducer_model(r) == NULL);
    CHECK_NEAR(m[0], 1, 0);                     /* normalize off: raw values */
    reducer_get_changes(r, &c);
    CHECK(c.projection_changed);                /* cleared: persist the empty projection */
    CHECK_EQ_INT(c.trim_before_seq, 9);
    CHECK_EQ_INT(reducer_project(r, v, 3, m), REDUCER_EINVAL);
    reducer_free(r);
}

static void test_persistence(void)
{
    reducer_params p;
    reducer_params_init(&p, 4, 3, 50, 2, 1, 1);
    reducer *r = reducer_new(&p);
    double v[8], m[4], a[4], b[4];
    int refitted;
    char h[16];
    for (int i = 0; i < 9; i++) {
        vector_for(i, v, 8);
        snprintf(h, sizeof h, "p%d", i);
        reducer_observe(r, h, strlen(h), v, 8, 1000.0 + i, m, &refitted);
    }
    descriptor_buf blob = { 0 };
    CHECK_EQ_INT(reducer_save(r, &blob), 0);
    char err[200];
    reducer *back = reducer_load(&p, blob.data, blob.len, err, sizeof err);
    CHECK(back != NULL);
    if (back) {
        CHECK_EQ_INT(reducer_history_len(back), 9);
        CHECK_EQ_INT(reducer_samples_since_fit(back), reducer_samples_since_fit(r));
        vector_for(20, v, 8);
        reducer_project(r, v, 8, a);
        reducer_project(back, v, 8, b);
        CHECK(memcmp(a, b, sizeof a) == 0);
        /* both go on identically */
        reducer_observe(r, "q", 1, v, 8, 5.0, a, &refitted);
        int refitted2;
        reducer_observe(back, "q", 1, v, 8, 5.0, b, &refitted2);
        CHECK(refitted == refitted2);
        CHECK(memcmp(a, b, sizeof a) == 0);
        reducer_free(back);
    }
    /* a smaller history limit on load evicts the oldest */
    reducer_params q = p;
    q.history_limit = 4;
    back = reducer_load(&q, blob.data, blob.len, err, sizeof err);
    CHECK(back && reducer_history_len(back) == 4);
    if (back)
        CHECK_STR(reducer_history(back)[0].hash, "p5");
    reducer_free(back);
    /* every truncation and a corrupted magic are refused with a message */
    int refused = 0;
    for (size_t cut = 0; cut < blob.len; cut++) {
        reducer *t = reducer_load(&p, blob.data, cut, err, sizeof err);
        refused += t == NULL && strlen(err) > 0;
        reducer_free(t);
    }
    CHECK_EQ_INT(refused, blob.len);
    blob.data[0] = 'X';
    CHECK(reducer_load(&p, blob.data, blob.len, err, sizeof err) == NULL);
    CHECK(strstr(err, "magic") != NULL);
    descriptor_buf_free(&blob);
    reducer_free(r);
}

int main(void)
{
    descriptor_options_init(&opts);
    test_pytext();
    test_globs();
    test_select();
    test_clean();
    test_chunk_limits();
    test_tokens();
    test_embedding();
    test_pooling();
    test_bounds();
    test_pca();
    test_refit_cadence();
    test_history_window();
    test_persistence();
    descriptor_options_free(&opts);
    return CHECK_DONE();
}
