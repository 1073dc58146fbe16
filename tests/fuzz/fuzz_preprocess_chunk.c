/*
 * libFuzzer target over preprocess and chunk: the input drives the knobs (first bytes),
 * an excluded glob and a path (NUL-separated), and the file content (the rest). Every
 * step must finish without a crash, a leak or an out-of-bounds access, and the outputs
 * must keep their invariants (chunk ranges inside the file, chunk text valid UTF-8 when
 * the cleaned text is, at most max_chunks_per_file windows).
 *
 *   CC=clang cmake -S . -B build-fuzz -DLORELEY_FUZZ=ON && cmake --build build-fuzz -j2
 *   build-fuzz/fuzz_preprocess_chunk tests/fuzz/corpus/preprocess_chunk -max_total_time=60
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    descriptor_options o;
    if (descriptor_options_init(&o) != 0)
        return 0;
    /* knobs: small ranges so that every branch is reachable */
    o.tab_width = (long long)(data[0] % 10) - 2;
    o.max_blank_lines = data[1] % 4;
    o.strip_comments = data[2] & 1;
    o.strip_block_comments = (data[2] >> 1) & 1;
    o.chunk_min_lines = (long long)(data[3] % 8) - 1;
    o.chunk_target_lines = (long long)(data[4] % 16) - 1;
    o.chunk_overlap_lines = (long long)(data[5] % 10) - 1;
    o.max_chunks_per_file = (long long)((data[2] >> 2) % 8);
    o.max_file_size_kb = 64;
    const char *rest = (const char *)data + 6;
    size_t len = size - 6;
    /* glob \0 path \0 content (missing parts are empty) */
    const char *glob = rest, *path = "", *content = "";
    size_t glen = len, plen = 0, clen = 0;
    const char *z1 = memchr(rest, '\0', len);
    if (z1) {
        glen = (size_t)(z1 - rest);
        path = z1 + 1;
        size_t left = len - glen - 1;
        const char *z2 = memchr(path, '\0', left);
        plen = z2 ? (size_t)(z2 - path) : left;
        if (z2) {
            content = z2 + 1;
            clen = left - plen - 1;
        }
    }
    descriptor_str g = { glob, glen };
    descriptor_str kw[2] = { { glob, glen < 12 ? glen : 12 }, { "def ", 4 } };
    if (descriptor_options_set_globs(&o, &g, 1) != 0 ||
        descriptor_options_set_keywords(&o, kw, 2) != 0)
        goto out;

    descriptor_file_in in = { { path, plen }, (long long)glen - 3 };
    descriptor_selection sel;
    if (descriptor_select(&o, NULL, &in, 1, &sel) == 0) {
        require(sel.candidate_count + sel.skipped_count == 1);
        if (sel.candidate_count)
            require(strlen(sel.candidates[0].path) == sel.candidates[0].path_len);
        descriptor_selection_free(&sel);
    }

    descriptor_buf clean = { 0 };
    int rc = descriptor_clean(&o, content, clen, &clean);
    if (rc == 0) {
        require(clean.len > 0 && pytext_is_valid_utf8(clean.data, clean.len));
        require(pytext_lstrip_len(clean.data, clean.len) == 0);
    }
    descriptor_chunks ch = { 0 };
    /* chunk both the cleaned text and the raw bytes (chunk() accepts any content) */
    for (int pass = 0; pass < 2; pass++) {
        const char *text = pass ? content : clean.data;
        size_t tl = pass ? clen : (rc == 0 ? clean.len : 0);
        if (descriptor_chunk_text(&o, text ? text : "", tl, &ch) != 0)
            break;
        long long maxw = o.max_chunks_per_file < 1 ? 1 : o.max_chunks_per_file;
        require(ch.count <= (size_t)maxw);
        for (size_t i = 0; i < ch.count; i++) {
            const descriptor_chunk *c = &ch.items[i];
            require(c->start_line >= 1 && c->start_line <= c->end_line);
            require(c->end_line <= ch.total_lines);
            require(c->line_count == c->end_line - c->start_line + 1);
            require(c->offset + c->len <= ch.text.len && c->len > 0);
            if (pass == 0)
                require(pytext_is_valid_utf8(ch.text.data + c->offset, c->len));
        }
    }
    /* and the embedding of whatever came out */
    descriptor_embedder *e = descriptor_embedder_new(16);
    if (e) {
        double v[16];
        for (size_t i = 0; i < ch.count && i < 4; i++)
            descriptor_embed_chunk(e, ch.text.data + ch.items[i].offset, ch.items[i].len, v);
        descriptor_embedder_free(e);
    }
    descriptor_chunks_free(&ch);
    descriptor_buf_free(&clean);
out:
    descriptor_options_free(&o);
    return 0;
}
