/*
 * descriptor.h - from a commit's changed files to a measure vector (contract §3.2-§3.8),
 * as a pure C core with no Lua: candidate selection, cleanup, chunking, a local
 * deterministic code embedding with the §3.4 pooling, bounds and clipping. The
 * per-island dimension reducer (PCA) is in reducer.h.
 *
 * Conventions:
 *  - strings are byte strings with a length (descriptor_str); they need not be
 *    NUL-terminated and may hold anything (NUL bytes, invalid UTF-8);
 *  - functions return 0 on success, a positive DESCRIPTOR_SKIP_* code when an input is
 *    skipped, and DESCRIPTOR_ENOMEM when memory ran out; nothing here exits or aborts;
 *  - memory is bounded by the inputs: a file larger than the size limit is never
 *    copied, a chunk contributes at most DESCRIPTOR_MAX_CHUNK_TOKENS tokens.
 */
#ifndef LORELEY_DESCRIPTOR_H
#define LORELEY_DESCRIPTOR_H

#include <stddef.h>
#include <stdint.h>

enum {
    DESCRIPTOR_OK = 0,
    DESCRIPTOR_ENOMEM = -1,
    /* skip codes (a file is dropped, with this reason) */
    DESCRIPTOR_SKIP_OVERSIZE = 1,   /* content larger than the size limit */
    DESCRIPTOR_SKIP_BINARY,         /* content holds a NUL byte */
    DESCRIPTOR_SKIP_EMPTY,          /* nothing left after cleanup */
    DESCRIPTOR_SKIP_UNREADABLE,     /* no content and none could be read */
    DESCRIPTOR_NO_CHUNKS,           /* files survived cleanup but gave no chunk */
};

/* Tokens of one chunk that reach the embedding (the hosted models' input limit is of
 * the same order: text-embedding-3-small takes 8191 tokens). */
#define DESCRIPTOR_MAX_CHUNK_TOKENS 8192
/* Embedding dimensions when MAPELITES_CODE_EMBEDDING_DIMENSIONS is unset (or 0). */
#define DESCRIPTOR_DEFAULT_DIMENSIONS 256
#define DESCRIPTOR_MAX_DIMENSIONS 65536

typedef struct descriptor_str {
    const char *ptr;
    size_t len;
} descriptor_str;

/* A growable byte buffer; free with descriptor_buf_free. */
typedef struct descriptor_buf {
    char *data;
    size_t len, cap;
} descriptor_buf;

int descriptor_buf_reserve(descriptor_buf *b, size_t extra);   /* 0 or DESCRIPTOR_ENOMEM */
int descriptor_buf_append(descriptor_buf *b, const void *p, size_t n);
void descriptor_buf_free(descriptor_buf *b);

/* An owned list of byte strings. */
typedef struct descriptor_list {
    char **items;
    size_t *lens;
    size_t count;
} descriptor_list;

/* One excluded glob, normalised (§3.2) and split into segments. */
typedef struct descriptor_glob {
    char *text;                 /* the normalised pattern ("/"-joined segments) */
    descriptor_str *segments;   /* point into text */
    size_t count;
} descriptor_glob;

/*
 * Every knob of the pipeline, with the setting it comes from. Fields hold the raw
 * setting values; the clamps of the contract (max(1, ...), ...) are applied where the
 * value is used, so a caller copies settings verbatim.
 */
typedef struct descriptor_options {
    /* §3.2 preprocess */
    long long max_files;               /* MAPELITES_PREPROCESS_MAX_FILES (0: unlimited) */
    long long max_file_size_kb;        /* ..._MAX_FILE_SIZE_KB: limit max(kb,1)*1024 bytes */
    long long max_blank_lines;         /* ..._MAX_BLANK_LINES */
    long long tab_width;               /* ..._TAB_WIDTH (<= 0 keeps tabs) */
    int strip_comments;                /* ..._STRIP_COMMENTS */
    int strip_block_comments;          /* ..._STRIP_BLOCK_COMMENTS */
    descriptor_list allowed_extensions;   /* as given, a leading '.' added when missing */
    descriptor_list allowed_filenames;
    descriptor_glob *excluded_globs;      /* normalised, blank patterns dropped */
    size_t excluded_glob_count;
    /* §3.3 chunk */
    long long chunk_target_lines;      /* MAPELITES_CHUNK_TARGET_LINES */
    long long chunk_min_lines;         /* ..._MIN_LINES */
    long long chunk_overlap_lines;     /* ..._OVERLAP_LINES */
    long long max_chunks_per_file;     /* ..._MAX_CHUNKS_PER_FILE */
    descriptor_list boundary_keywords; /* lower-cased, empty ones dropped */
    /* §3.4 embed */
    long long dimensions;              /* MAPELITES_CODE_EMBEDDING_DIMENSIONS (0: 256) */
    long long max_chunks_per_commit;   /* ..._MAX_CHUNKS_PER_COMMIT (0: no cap) */
} descriptor_options;

/* Fills o with the contract defaults (§5). Returns 0 or DESCRIPTOR_ENOMEM. */
int descriptor_options_init(descriptor_options *o);
void descriptor_options_free(descriptor_options *o);

/* Replace a list (the items are copied and normalised as described above). */
int descriptor_options_set_extensions(descriptor_options *o, const descriptor_str *items, size_t n);
int descriptor_options_set_filenames(descriptor_options *o, const descriptor_str *items, size_t n);
int descriptor_options_set_globs(descriptor_options *o, const descriptor_str *items, size_t n);
int descriptor_options_set_keywords(descriptor_options *o, const descriptor_str *items, size_t n);

/* The effective values the steps use. */
size_t descriptor_size_limit(const descriptor_options *o);        /* bytes */
size_t descriptor_dimensions(const descriptor_options *o);

/* ---- §3.2 candidate selection ------------------------------------------------------ */

typedef struct descriptor_file_in {
    descriptor_str path;
    long long change_count;
} descriptor_file_in;

typedef struct descriptor_candidate {
    size_t input;               /* index into the inputs */
    char *path;                 /* relative to the root, normalised, NUL-terminated */
    size_t path_len;
    long long change_count;
} descriptor_candidate;

typedef struct descriptor_skip {
    size_t input;
    char *path;                 /* relative path when known, else the input path */
    size_t path_len;
    char reason[200];
} descriptor_skip;

typedef struct descriptor_selection {
    descriptor_candidate *candidates;   /* in order: change_count descending, stable */
    size_t candidate_count;
    descriptor_skip *skipped;           /* in input order */
    size_t skipped_count;
} descriptor_selection;

/*
 * Candidate selection (§3.2): resolves each path against repo_root following symlinks
 * (NULL: no filesystem, paths are resolved lexically and absolute ones are outside),
 * drops paths outside the root, excluded ones (a `**` segment matches any number of
 * directories, the one deliberate difference from the reference), and files whose
 * suffix and name are not allowed; then sorts by change count (stable, descending) and
 * keeps the first max_files. Every dropped input is listed in out->skipped with its
 * reason. The caller frees out with descriptor_selection_free.
 */
int descriptor_select(const descriptor_options *o, const char *repo_root,
                      const descriptor_file_in *files, size_t n, descriptor_selection *out);
void descriptor_selection_free(descriptor_selection *s);

/* PurePath normalisation of a relative path (collapses "//", drops "." segments and a
 * trailing "/"; ".." stays). out must hold len + 1 bytes; returns the length ("." for
 * an empty result). */
size_t descriptor_pure_path(const char *path, size_t len, char *out);

/* 1 when rel_path (normalised, relative) matches one of the excluded globs; stores the
 * matching pattern in *pattern. */
int descriptor_is_excluded(const descriptor_options *o, const char *rel_path, size_t len,
                           const char **pattern);

/* 1 when the lower-cased suffix is an allowed extension or the name an allowed name. */
int descriptor_is_code_file(const descriptor_options *o, const char *rel_path, size_t len);

/*
 * Reads repo_root/rel_path from the working tree, at most limit bytes: only a regular
 * file inside the root (symlinks resolved), never a FIFO or a device. Returns 0 with the
 * bytes in out, DESCRIPTOR_SKIP_OVERSIZE, DESCRIPTOR_SKIP_UNREADABLE (reason says why)
 * or DESCRIPTOR_ENOMEM.
 */
int descriptor_read_file(const char *repo_root, const char *rel_path, size_t limit,
                         descriptor_buf *out, char *reason, size_t reason_len);

/* ---- §3.2 cleanup ------------------------------------------------------------------- */

/*
 * Cleans raw file content into out (replacing its contents): DESCRIPTOR_SKIP_OVERSIZE
 * when raw is larger than the size limit, DESCRIPTOR_SKIP_BINARY when it holds a NUL
 * byte, then invalid UTF-8 bytes are dropped (Python's errors="ignore") and the cleanup
 * rules run: line endings, block comments, per line rstrip / comment lines / tabs /
 * blank-line runs, final strip. DESCRIPTOR_SKIP_EMPTY when nothing is left.
 */
int descriptor_clean(const descriptor_options *o, const char *raw, size_t len,
                     descriptor_buf *out);

/* A human-readable reason for a skip code ("larger than 524288 bytes", ...). */
void descriptor_skip_reason(const descriptor_options *o, int code, char *buf, size_t len);

/* ---- §3.3 chunk ----------------------------------------------------------------------- */

typedef struct descriptor_chunk {
    size_t start_line;          /* 1-based */
    size_t end_line;            /* inclusive */
    size_t line_count;          /* end_line - start_line + 1 (trimmed lines included) */
    size_t offset, len;         /* content in descriptor_chunks.text (or the range) */
} descriptor_chunk;

typedef struct descriptor_chunks {
    descriptor_chunk *items;
    size_t count, cap;
    size_t total_lines;         /* len(content.splitlines()) */
    descriptor_buf text;        /* chunk contents, back to back */
    size_t *lines;              /* scratch: line start / length pairs */
    size_t lines_cap;
} descriptor_chunks;

/* Chunks text (§3.3) into out, replacing what it held (its memory is reused). */
int descriptor_chunk_text(const descriptor_options *o, const char *text, size_t len,
                          descriptor_chunks *out);
/*
 * The same windows, without building their contents: each chunk's offset and len give
 * its lines' bytes in `text` itself, breaks as they are (not joined with "\n" nor
 * trimmed); out->text stays empty. Every line break is whitespace to the tokenizer, so a
 * range has the same tokens as the joined content (the embedding reads these).
 */
int descriptor_chunk_ranges(const descriptor_options *o, const char *text, size_t len,
                            descriptor_chunks *out);
void descriptor_chunks_free(descriptor_chunks *c);

/* ---- embedding (§3.4 pooling) --------------------------------------------------------- */

typedef struct descriptor_embedder descriptor_embedder;

/* An embedder for `dimensions` (1..DESCRIPTOR_MAX_DIMENSIONS) values; NULL on ENOMEM. */
descriptor_embedder *descriptor_embedder_new(size_t dimensions);
void descriptor_embedder_free(descriptor_embedder *e);
size_t descriptor_embedder_dimensions(const descriptor_embedder *e);

/*
 * Embeds one chunk into out[dimensions]: code tokens (identifier words split at
 * underscores and case changes, lower-cased; numbers; operators), their unigrams and
 * bigrams hashed with signed feature hashing, weight 1 + ln(tf) per distinct feature,
 * L2-normalised (all zero when the text has no token). Deterministic on every platform.
 * Returns 0 or DESCRIPTOR_ENOMEM.
 */
int descriptor_embed_chunk(descriptor_embedder *e, const char *text, size_t len, double *out);

/* Calls fn(token, len, ctx) for each token of text, lower-cased, as the embedding sees
 * them (at most DESCRIPTOR_MAX_CHUNK_TOKENS). For tests and curious users. */
void descriptor_tokens(const char *text, size_t len,
                       void (*fn)(const char *token, size_t len, void *ctx), void *ctx);

/*
 * The scanning kernels (tokenizer, line splitter, cleanup scan), for tests and
 * benchmarks: AUTO (the default: 64-byte blocks classified with SSE2 where the processor
 * has it, i.e. on every x86-64), PORTABLE (the same blocks classified in plain C) or
 * REFERENCE (the byte-at-a-time code). All three give the same results, bit for bit;
 * the tests check it. Process-wide and not thread-safe: set it before any work starts.
 * Returns the previous choice (an unknown value changes nothing).
 */
enum {
    DESCRIPTOR_KERNELS_AUTO = 0,
    DESCRIPTOR_KERNELS_PORTABLE,
    DESCRIPTOR_KERNELS_REFERENCE,
};
int descriptor_set_kernels(int which);

/* Weighted mean of §3.4: weights <= 0 are skipped; if all are, the plain mean. */
void descriptor_weighted_mean(const double *vectors, const double *weights, size_t n,
                              size_t dims, double *out);

/* File weight of §3.4: change_count if > 0, else the chunk weight sum if > 0, else
 * total_lines or 1. */
double descriptor_file_weight(long long change_count, double chunk_weight_sum,
                              size_t total_lines);

/* One chunked file, as the embedding step sees it. */
typedef struct descriptor_chunked_file {
    descriptor_str path;
    long long change_count;
    size_t total_lines;
    const descriptor_str *chunks;       /* contents */
    const size_t *line_counts;          /* per chunk */
    size_t chunk_count;
} descriptor_chunked_file;

/*
 * The commit code vector of §3.4 into out[dimensions]: chunks in file order then chunk
 * order, at most max_chunks_per_commit; chunk vectors pooled per file path with weight
 * max(line_count, 1), files pooled with descriptor_file_weight. *chunks_used counts the
 * embedded chunks. Returns 0, DESCRIPTOR_SKIP_EMPTY when there is no chunk, or ENOMEM.
 */
int descriptor_embed_files(descriptor_embedder *e, const descriptor_options *o,
                           const descriptor_chunked_file *files, size_t n, double *out,
                           size_t *chunks_used);

/* ---- the whole pipeline after loading ------------------------------------------------- */

typedef struct descriptor_source {
    descriptor_str path;        /* relative path (as selected) */
    long long change_count;
    descriptor_str content;     /* raw content */
} descriptor_source;

typedef struct descriptor_file_result {
    int status;                 /* DESCRIPTOR_OK or a skip code */
    size_t total_lines;         /* after cleanup */
    size_t chunk_count;         /* chunks made by the chunker */
} descriptor_file_result;

typedef struct descriptor_workspace descriptor_workspace;

/* Scratch memory reused across calls (clean text, chunks, vectors); NULL on ENOMEM. */
descriptor_workspace *descriptor_workspace_new(size_t dimensions);
void descriptor_workspace_free(descriptor_workspace *w);

/* The same, one file at a time: begin, add each loaded file (r tells what became of
 * it), finish writes the commit vector (return codes as descriptor_embed_sources). */
void descriptor_workspace_begin(descriptor_workspace *w);
int descriptor_workspace_add(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *s, descriptor_file_result *r);
int descriptor_workspace_finish(descriptor_workspace *w, double *out, size_t *kept,
                                size_t *chunks);

/*
 * Clean, chunk, embed and pool n loaded files, one at a time (memory: one file plus one
 * vector per distinct path). results[i] tells what became of sources[i]. Writes the
 * commit vector to out[dimensions] and returns 0; DESCRIPTOR_SKIP_EMPTY when no file
 * survived cleanup (*kept == 0), DESCRIPTOR_NO_CHUNKS when the kept files gave no
 * chunk; or ENOMEM. *kept and *chunks count surviving files and embedded chunks.
 */
int descriptor_embed_sources(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *sources, size_t n,
                             descriptor_file_result *results, double *out, size_t *kept,
                             size_t *chunks);

/* ---- §3.8 bounds and clip -------------------------------------------------------------- */

/*
 * Island bounds for `dims` dimensions from the setting lists: an empty list becomes
 * -6 (lower) / 6 (upper), a short one is padded with its last value, a long one cut;
 * where hi <= lo, hi = lo + 1.
 */
void descriptor_bounds(const double *lower, size_t n_lower, const double *upper,
                       size_t n_upper, size_t dims, double *lo, double *hi);

/* np.clip: each v[i] into [lo[i], hi[i]]; NaN stays NaN. */
void descriptor_clip(double *v, const double *lo, const double *hi, size_t dims);

#endif
