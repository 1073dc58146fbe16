/*
 * libFuzzer target over the descriptor's scanning kernels: on any input, the SSE2
 * blocks, the plain-C blocks and the byte-at-a-time reference must give the same tokens,
 * the same str.splitlines() lines and the same cleaned text; and the workspace (which
 * embeds chunk ranges of the cleaned text) must give the same vector, bit for bit, as
 * embed_files over the joined chunk contents. The first bytes set the knobs, the rest is
 * the file content. Any difference aborts.
 *
 *   CC=clang cmake -S . -B build-fuzz -DLORELEY_FUZZ=ON && cmake --build build-fuzz -j2
 *   build-fuzz/fuzz_descriptor_kernels tests/fuzz/corpus/preprocess_chunk -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor.h"
#include "pytext.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int cond)
{
    if (!cond)
        abort();
}

typedef struct joined {
    char *data;
    size_t len, cap;
    int failed;
} joined;

static void collect(const char *tok, size_t len, void *ctx)
{
    joined *j = ctx;
    if (j->len + len + 1 > j->cap) {
        size_t nc = 2 * (j->len + len + 1);
        char *p = realloc(j->data, nc);
        if (!p) {
            j->failed = 1;
            return;
        }
        j->data = p;
        j->cap = nc;
    }
    memcpy(j->data + j->len, tok, len);
    j->len += len;
    j->data[j->len++] = '\x01';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    descriptor_options o;
    if (descriptor_options_init(&o) != 0)
        return 0;
    o.tab_width = (long long)(data[0] % 10) - 2;
    o.max_blank_lines = data[1] % 4;
    o.strip_comments = data[2] & 1;
    o.strip_block_comments = (data[2] >> 1) & 1;
    o.chunk_min_lines = (long long)(data[3] % 4);
    o.chunk_target_lines = (long long)(data[3] >> 2) % 8;
    o.chunk_overlap_lines = (long long)(data[2] >> 2) % 4;
    o.max_file_size_kb = 64;
    const char *text = (const char *)data + 4;
    size_t len = size - 4;

    static const int kernels[3] = { DESCRIPTOR_KERNELS_AUTO, DESCRIPTOR_KERNELS_PORTABLE,
                                    DESCRIPTOR_KERNELS_REFERENCE };
    joined tok[3] = { { 0 } };
    size_t *lines[3] = { 0 }, lines_cap[3] = { 0 }, nlines[3] = { 0 };
    descriptor_buf clean[3] = { { 0 } };
    int rc[3], ok = 1;
    for (int k = 0; k < 3; k++) {
        descriptor_set_kernels(kernels[k]);
        descriptor_tokens(text, len, collect, &tok[k]);
        ok &= !tok[k].failed;
        ok &= pytext_split_lines(text, len, &lines[k], &lines_cap[k], &nlines[k]) == 0;
        rc[k] = descriptor_clean(&o, text, len, &clean[k]);
        ok &= rc[k] != DESCRIPTOR_ENOMEM;
    }
    descriptor_set_kernels(DESCRIPTOR_KERNELS_AUTO);
    if (ok) {
        for (int k = 1; k < 3; k++) {
            require(tok[k].len == tok[0].len &&
                    (tok[0].len == 0 || memcmp(tok[k].data, tok[0].data, tok[0].len) == 0));
            require(nlines[k] == nlines[0] &&
                    (nlines[0] == 0 ||
                     memcmp(lines[k], lines[0], 2 * nlines[0] * sizeof(size_t)) == 0));
            require(rc[k] == rc[0] && clean[k].len == clean[0].len &&
                    (clean[0].len == 0 ||
                     memcmp(clean[k].data, clean[0].data, clean[0].len) == 0));
        }
    }

    /* workspace (chunk ranges) against embed_files (joined chunks) */
    descriptor_workspace *w = descriptor_workspace_new(16);
    descriptor_embedder *e = descriptor_embedder_new(16);
    descriptor_chunks ch = { 0 };
    if (w && e && rc[0] == 0 && descriptor_chunk_text(&o, clean[0].data, clean[0].len, &ch) == 0) {
        descriptor_str *cs = calloc(ch.count + 1, sizeof *cs);
        size_t *lc = calloc(ch.count + 1, sizeof *lc);
        if (cs && lc) {
            for (size_t i = 0; i < ch.count; i++) {
                cs[i].ptr = ch.text.data + ch.items[i].offset;
                cs[i].len = ch.items[i].len;
                lc[i] = ch.items[i].line_count;
            }
            descriptor_chunked_file cf = { { "f.py", 4 }, 0, ch.total_lines, cs, lc, ch.count };
            descriptor_source src = { { "f.py", 4 }, 0, { text, len } };
            descriptor_file_result r;
            double va[16], vb[16];
            size_t kept, used_a = 0, used_b = 0;
            int ra = descriptor_embed_sources(w, &o, &src, 1, &r, va, &kept, &used_a);
            int rb = descriptor_embed_files(e, &o, &cf, 1, vb, &used_b);
            if (ra != DESCRIPTOR_ENOMEM && rb != DESCRIPTOR_ENOMEM) {
                require(ra == rb && used_a == used_b && r.chunk_count == ch.count);
                if (ra == 0)
                    require(memcmp(va, vb, sizeof va) == 0);
            }
        }
        free(cs);
        free(lc);
    }
    descriptor_chunks_free(&ch);
    descriptor_embedder_free(e);
    descriptor_workspace_free(w);
    for (int k = 0; k < 3; k++) {
        free(tok[k].data);
        free(lines[k]);
        descriptor_buf_free(&clean[k]);
    }
    descriptor_options_free(&o);
    return 0;
}
