/*
 * embed.c - the local code embedding and the pooling of contract §3.4.
 *
 * The reference asks a hosted model for one vector per chunk. Here a chunk becomes a
 * signed feature-hashing vector of its code tokens:
 *   tokens    identifier words (split at '_', lower->Upper, Upper->Upper+lower and
 *             letter<->digit changes), numbers, operators (longest of a fixed list, else
 *             one character); lower-cased; at most DESCRIPTOR_MAX_CHUNK_TOKENS;
 *   features  every unigram and every bigram of consecutive tokens, each a 64-bit hash
 *             (FNV-1a over the token bytes, then a splitmix64 finaliser);
 *   vector    per distinct feature, 1 + ln(count) added to bucket hi32(h) * D >> 32 with
 *             the sign of bit 0; then L2 normalisation.
 * Nothing depends on the platform, the locale or a seed: the same text gives the same
 * vector, bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor.h"
#include "pytext.h"

#define SEED_UNIGRAM 0x243F6A8885A308D3ull   /* digits of pi, to separate the kinds */
#define SEED_BIGRAM 0x13198A2E03707344ull
#define FNV_OFFSET 0xCBF29CE484222325ull
#define FNV_PRIME 0x100000001B3ull
#define TOKEN_TEXT_MAX 256                  /* token text kept for descriptor_tokens */

static uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

/* ---- tokenizer --------------------------------------------------------------------------- */

typedef struct tokenizer {
    void (*emit)(struct tokenizer *t, uint64_t hash);
    size_t count;
    /* descriptor_tokens only */
    void (*fn)(const char *token, size_t len, void *ctx);
    void *ctx;
    char text[TOKEN_TEXT_MAX];
    size_t text_len;
    uint64_t hash;
} tokenizer;

static void token_begin(tokenizer *t)
{
    t->hash = FNV_OFFSET;
    t->text_len = 0;
}

static void token_byte(tokenizer *t, unsigned char b)
{
    t->hash = (t->hash ^ b) * FNV_PRIME;
    if (t->fn && t->text_len < TOKEN_TEXT_MAX)
        t->text[t->text_len++] = (char)b;
}

static void token_cp(tokenizer *t, uint32_t cp)
{
    uint32_t second;
    uint32_t v = pytext_lower(cp, &second);
    for (int round = 0; round < 2; round++) {
        if (v < 0x80) {
            token_byte(t, (unsigned char)v);
        } else if (v < 0x800) {
            token_byte(t, (unsigned char)(0xC0 | (v >> 6)));
            token_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        } else if (v < 0x10000) {
            token_byte(t, (unsigned char)(0xE0 | (v >> 12)));
            token_byte(t, (unsigned char)(0x80 | ((v >> 6) & 0x3F)));
            token_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        } else {
            token_byte(t, (unsigned char)(0xF0 | (v >> 18)));
            token_byte(t, (unsigned char)(0x80 | ((v >> 12) & 0x3F)));
            token_byte(t, (unsigned char)(0x80 | ((v >> 6) & 0x3F)));
            token_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        }
        if (!second)
            break;
        v = second;
        second = 0;
    }
}

static void token_end(tokenizer *t)
{
    if (t->fn)
        t->fn(t->text, t->text_len, t->ctx);
    if (t->emit)
        t->emit(t, t->hash);
    t->count++;
}

enum { CLASS_LOWER, CLASS_UPPER, CLASS_DIGIT, CLASS_UNDERSCORE };

static int is_ident_cp(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               (cp >= '0' && cp <= '9') || cp == '_';
    return cp != PYTEXT_INVALID && !pytext_is_space(cp);
}

static int ident_class(uint32_t cp)
{
    if (cp == '_')
        return CLASS_UNDERSCORE;
    if (cp >= '0' && cp <= '9')
        return CLASS_DIGIT;
    if (cp >= 'A' && cp <= 'Z')
        return CLASS_UPPER;
    if (cp < 0x80)
        return CLASS_LOWER;
    uint32_t second;
    return pytext_lower(cp, &second) != cp ? CLASS_UPPER : CLASS_LOWER;
}

/* Splits the identifier s[0..len) into words and emits them. */
static void emit_identifier(tokenizer *t, const unsigned char *s, size_t len, size_t max)
{
    size_t pos = 0;
    int in_word = 0, prev = CLASS_UNDERSCORE;
    while (pos < len && t->count < max) {
        uint32_t cp;
        size_t k = pytext_decode(s + pos, len - pos, &cp);
        int cls = ident_class(cp);
        if (cls == CLASS_UNDERSCORE) {
            if (in_word)
                token_end(t);
            in_word = 0;
            prev = cls;
            pos += k;
            continue;
        }
        int boundary = 0;
        if (in_word) {
            if ((cls == CLASS_DIGIT) != (prev == CLASS_DIGIT))
                boundary = 1;
            else if (cls == CLASS_UPPER && prev == CLASS_LOWER)
                boundary = 1;
            else if (cls == CLASS_UPPER && prev == CLASS_UPPER && pos + k < len) {
                /* "HTTPServer": a capital followed by a lower-case letter starts a word */
                uint32_t nx;
                pytext_decode(s + pos + k, len - pos - k, &nx);
                if (ident_class(nx) == CLASS_LOWER)
                    boundary = 1;
            }
        }
        if (boundary)
            token_end(t);
        if (!in_word || boundary)
            token_begin(t);
        in_word = 1;
        token_cp(t, cp);
        prev = cls;
        pos += k;
    }
    if (in_word && t->count < max)
        token_end(t);
}

static const char *const OPERATORS3[] = { "...", "===", "!==", "<<=", ">>=", "**=", "//=",
                                           "<=>", ">>>", NULL };
static const char *const OPERATORS2[] = { "==", "!=", "<=", ">=", "&&", "||", "->", "=>",
                                           "::", "<<", ">>", "+=", "-=", "*=", "/=", "%=",
                                           "&=", "|=", "^=", "++", "--", "**", "//", ":=",
                                           "..", "??", "?.", "|>", NULL };

static void tokenize(tokenizer *t, const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    const size_t max = DESCRIPTOR_MAX_CHUNK_TOKENS;
    size_t pos = 0;
    while (pos < len && t->count < max) {
        unsigned char b = s[pos];
        uint32_t cp = b;
        size_t k = 1;
        if (b >= 0x80)
            k = pytext_decode(s + pos, len - pos, &cp);
        if (cp == PYTEXT_INVALID || pytext_is_space(cp)) {
            pos += k;
            continue;
        }
        if (cp >= '0' && cp <= '9') {
            size_t end = pos;
            while (end < len && ((s[end] >= '0' && s[end] <= '9') ||
                                 (s[end] >= 'a' && s[end] <= 'z') ||
                                 (s[end] >= 'A' && s[end] <= 'Z') || s[end] == '_' ||
                                 s[end] == '.'))
                end++;
            token_begin(t);
            for (size_t i = pos; i < end; i++)
                token_byte(t, (unsigned char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]));
            token_end(t);
            pos = end;
            continue;
        }
        if (is_ident_cp(cp)) {
            size_t end = pos;
            while (end < len) {
                uint32_t c2 = s[end];
                size_t k2 = 1;
                if (c2 >= 0x80)
                    k2 = pytext_decode(s + end, len - end, &c2);
                if (!is_ident_cp(c2))
                    break;
                end += k2;
            }
            emit_identifier(t, s + pos, end - pos, max);
            pos = end;
            continue;
        }
        /* An operator or other ASCII symbol: the longest listed operator, else one byte. */
        size_t ol = 1;
        for (const char *const *op = OPERATORS3; *op && ol == 1; op++)
            if (pos + 3 <= len && memcmp(s + pos, *op, 3) == 0)
                ol = 3;
        for (const char *const *op = OPERATORS2; *op && ol == 1; op++)
            if (pos + 2 <= len && memcmp(s + pos, *op, 2) == 0)
                ol = 2;
        token_begin(t);
        for (size_t i = 0; i < ol; i++)
            token_byte(t, s[pos + i]);
        token_end(t);
        pos += ol;
    }
}

void descriptor_tokens(const char *text, size_t len,
                       void (*fn)(const char *token, size_t len, void *ctx), void *ctx)
{
    tokenizer t;
    memset(&t, 0, sizeof t);
    t.fn = fn;
    t.ctx = ctx;
    tokenize(&t, text, len);
}

/* ---- feature counting -------------------------------------------------------------------- */

struct descriptor_embedder {
    tokenizer tok;              /* first: the emit callback casts back to the embedder */
    size_t dims;
    uint64_t *keys;             /* open addressing, 0 = empty */
    uint32_t *counts;
    uint32_t *used;             /* slots in insertion order */
    size_t cap, nused;          /* cap: power of two */
    uint64_t prev;
    int has_prev;
    int failed;                 /* ENOMEM while counting */
    double log_table[64];       /* 1 + ln(c) for c < 64 */
};

static int table_grow(descriptor_embedder *e)
{
    size_t nc = e->cap * 2;
    uint64_t *keys = calloc(nc, sizeof *keys);
    uint32_t *counts = malloc(nc * sizeof *counts);
    uint32_t *used = malloc(nc / 2 * sizeof *used);
    if (!keys || !counts || !used) {
        free(keys);
        free(counts);
        free(used);
        return DESCRIPTOR_ENOMEM;
    }
    /* Re-insert in insertion order, keeping that order. */
    for (size_t i = 0; i < e->nused; i++) {
        size_t old = e->used[i];
        uint64_t key = e->keys[old];
        size_t slot = (size_t)key & (nc - 1);
        while (keys[slot])
            slot = (slot + 1) & (nc - 1);
        keys[slot] = key;
        counts[slot] = e->counts[old];
        used[i] = (uint32_t)slot;
    }
    free(e->keys);
    free(e->counts);
    free(e->used);
    e->keys = keys;
    e->counts = counts;
    e->used = used;
    e->cap = nc;
    return 0;
}

static void add_feature(descriptor_embedder *e, uint64_t key)
{
    if (key == 0)
        key = 1;
    if (2 * (e->nused + 1) > e->cap && table_grow(e) != 0) {
        e->failed = 1;
        return;
    }
    size_t mask = e->cap - 1, slot = (size_t)key & mask;
    while (e->keys[slot]) {
        if (e->keys[slot] == key) {
            e->counts[slot]++;
            return;
        }
        slot = (slot + 1) & mask;
    }
    e->keys[slot] = key;
    e->counts[slot] = 1;
    e->used[e->nused++] = (uint32_t)slot;
}

static void embedder_emit(tokenizer *t, uint64_t hash)
{
    descriptor_embedder *e = (descriptor_embedder *)t;
    add_feature(e, mix64(hash ^ SEED_UNIGRAM));
    if (e->has_prev)
        add_feature(e, mix64(e->prev * 0x9E3779B97F4A7C15ull + hash + SEED_BIGRAM));
    e->prev = hash;
    e->has_prev = 1;
}

descriptor_embedder *descriptor_embedder_new(size_t dimensions)
{
    if (dimensions < 1 || dimensions > DESCRIPTOR_MAX_DIMENSIONS)
        return NULL;
    descriptor_embedder *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->dims = dimensions;
    e->cap = 4096;
    e->keys = calloc(e->cap, sizeof *e->keys);
    e->counts = malloc(e->cap * sizeof *e->counts);
    e->used = malloc(e->cap / 2 * sizeof *e->used);
    if (!e->keys || !e->counts || !e->used) {
        descriptor_embedder_free(e);
        return NULL;
    }
    e->tok.emit = embedder_emit;
    for (int c = 1; c < 64; c++)
        e->log_table[c] = 1.0 + log((double)c);
    return e;
}

void descriptor_embedder_free(descriptor_embedder *e)
{
    if (!e)
        return;
    free(e->keys);
    free(e->counts);
    free(e->used);
    free(e);
}

size_t descriptor_embedder_dimensions(const descriptor_embedder *e)
{
    return e->dims;
}

int descriptor_embed_chunk(descriptor_embedder *e, const char *text, size_t len, double *out)
{
    e->nused = 0;
    e->has_prev = 0;
    e->failed = 0;
    e->tok.count = 0;
    tokenize(&e->tok, text, len);
    size_t dims = e->dims;
    memset(out, 0, dims * sizeof *out);
    for (size_t i = 0; i < e->nused; i++) {
        size_t slot = e->used[i];
        uint64_t key = e->keys[slot];
        uint32_t c = e->counts[slot];
        double w = c < 64 ? e->log_table[c] : 1.0 + log((double)c);
        size_t bucket = (size_t)(((key >> 32) * (uint64_t)dims) >> 32);
        out[bucket] += (key & 1) ? -w : w;
        e->keys[slot] = 0;       /* clear as we go: the table is empty for the next chunk */
    }
    e->nused = 0;
    if (e->failed)
        return DESCRIPTOR_ENOMEM;
    double norm = 0.0;
    for (size_t i = 0; i < dims; i++)
        norm += out[i] * out[i];
    if (norm > 0.0) {
        norm = sqrt(norm);
        for (size_t i = 0; i < dims; i++)
            out[i] /= norm;
    }
    return 0;
}

/* ---- pooling (§3.4) ---------------------------------------------------------------------- */

void descriptor_weighted_mean(const double *vectors, const double *weights, size_t n,
                              size_t dims, double *out)
{
    memset(out, 0, dims * sizeof *out);
    double wsum = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!(weights[i] > 0))
            continue;
        for (size_t d = 0; d < dims; d++)
            out[d] += vectors[i * dims + d] * weights[i];
        wsum += weights[i];
    }
    if (wsum == 0.0) {
        if (n == 0)
            return;
        wsum = (double)n;
        memset(out, 0, dims * sizeof *out);
        for (size_t i = 0; i < n; i++)
            for (size_t d = 0; d < dims; d++)
                out[d] += vectors[i * dims + d];
    }
    for (size_t d = 0; d < dims; d++)
        out[d] /= wsum;
}

double descriptor_file_weight(long long change_count, double chunk_weight_sum,
                              size_t total_lines)
{
    if (change_count > 0)
        return (double)change_count;
    if (chunk_weight_sum > 0)
        return chunk_weight_sum;
    return total_lines ? (double)total_lines : 1.0;
}

/*
 * Chunk vectors pooled per file path: the reference groups chunk embeddings by path, so
 * two inputs with the same path pool as one file (whose weight is the later one's).
 */
typedef struct pool_group {
    uint64_t key;
    char *path;
    size_t path_len;
    long long change_count;
    size_t total_lines;
    double weight_sum;          /* chunk weights */
} pool_group;

typedef struct pooler {
    size_t dims;
    pool_group *groups;
    double *sums;               /* groups x dims, chunk-weighted sums */
    size_t count, cap;
} pooler;

static uint64_t path_key(const char *p, size_t n)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * FNV_PRIME;
    return h;
}

static void pooler_reset(pooler *p)
{
    for (size_t i = 0; i < p->count; i++)
        free(p->groups[i].path);
    p->count = 0;
}

static void pooler_free(pooler *p)
{
    pooler_reset(p);
    free(p->groups);
    free(p->sums);
    memset(p, 0, sizeof *p);
}

/* The group of path (created when new); NULL on ENOMEM. */
static pool_group *pooler_group(pooler *p, const char *path, size_t len, long long change,
                                size_t total_lines, size_t *index)
{
    uint64_t key = path_key(path, len);
    for (size_t i = 0; i < p->count; i++) {
        pool_group *g = &p->groups[i];
        if (g->key == key && g->path_len == len && memcmp(g->path, path, len) == 0) {
            g->change_count = change;
            g->total_lines = total_lines;
            *index = i;
            return g;
        }
    }
    if (p->count == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 8;
        pool_group *ng = realloc(p->groups, nc * sizeof *ng);
        if (!ng)
            return NULL;
        p->groups = ng;
        double *ns = realloc(p->sums, nc * p->dims * sizeof *ns);
        if (!ns)
            return NULL;
        p->sums = ns;
        p->cap = nc;
    }
    pool_group *g = &p->groups[p->count];
    g->path = malloc(len + 1);
    if (!g->path)
        return NULL;
    memcpy(g->path, path, len);
    g->path[len] = '\0';
    g->path_len = len;
    g->key = key;
    g->change_count = change;
    g->total_lines = total_lines;
    g->weight_sum = 0.0;
    memset(p->sums + p->count * p->dims, 0, p->dims * sizeof(double));
    *index = p->count++;
    return g;
}

static void pooler_add(pooler *p, size_t index, const double *v, double w)
{
    double *sum = p->sums + index * p->dims;
    for (size_t d = 0; d < p->dims; d++)
        sum[d] += v[d] * w;
    p->groups[index].weight_sum += w;
}

/* Commit vector from the groups that received chunks. Returns 0 or ENOMEM. */
static int pooler_finish(pooler *p, double *out)
{
    size_t dims = p->dims, used = 0;
    double *weights = malloc((p->count ? p->count : 1) * sizeof *weights);
    if (!weights)
        return DESCRIPTOR_ENOMEM;
    for (size_t i = 0; i < p->count; i++) {
        pool_group *g = &p->groups[i];
        if (!(g->weight_sum > 0))
            continue;
        double *dst = p->sums + used * dims, *src = p->sums + i * dims;
        for (size_t d = 0; d < dims; d++)
            dst[d] = src[d] / g->weight_sum;
        weights[used++] = descriptor_file_weight(g->change_count, g->weight_sum, g->total_lines);
    }
    descriptor_weighted_mean(p->sums, weights, used, dims, out);
    free(weights);
    return 0;
}

int descriptor_embed_files(descriptor_embedder *e, const descriptor_options *o,
                           const descriptor_chunked_file *files, size_t n, double *out,
                           size_t *chunks_used)
{
    pooler p = { .dims = e->dims };
    size_t cap = o->max_chunks_per_commit > 0 ? (size_t)o->max_chunks_per_commit : (size_t)-1;
    size_t used = 0;
    int rc = DESCRIPTOR_ENOMEM;
    double *v = malloc(e->dims * sizeof *v);
    if (!v)
        goto out;
    for (size_t f = 0; f < n && used < cap; f++) {
        const descriptor_chunked_file *cf = &files[f];
        if (cf->chunk_count == 0)
            continue;
        size_t index;
        if (!pooler_group(&p, cf->path.ptr, cf->path.len, cf->change_count, cf->total_lines,
                          &index))
            goto out;
        for (size_t c = 0; c < cf->chunk_count && used < cap; c++) {
            if (descriptor_embed_chunk(e, cf->chunks[c].ptr, cf->chunks[c].len, v) != 0)
                goto out;
            size_t lc = cf->line_counts[c];
            pooler_add(&p, index, v, (double)(lc > 1 ? lc : 1));
            used++;
        }
    }
    *chunks_used = used;
    if (used == 0) {
        rc = DESCRIPTOR_NO_CHUNKS;
        goto out;
    }
    rc = pooler_finish(&p, out);
out:
    free(v);
    pooler_free(&p);
    return rc;
}

/* ---- the pipeline after loading ------------------------------------------------------------- */

struct descriptor_workspace {
    descriptor_embedder *embedder;
    descriptor_buf clean;
    descriptor_chunks chunks;
    pooler pool;
    double *vector;
    size_t kept, used;          /* files kept and chunks embedded since begin */
};

descriptor_workspace *descriptor_workspace_new(size_t dimensions)
{
    descriptor_workspace *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->embedder = descriptor_embedder_new(dimensions);
    w->vector = malloc(dimensions * sizeof *w->vector);
    w->pool.dims = dimensions;
    if (!w->embedder || !w->vector) {
        descriptor_workspace_free(w);
        return NULL;
    }
    return w;
}

void descriptor_workspace_free(descriptor_workspace *w)
{
    if (!w)
        return;
    descriptor_embedder_free(w->embedder);
    descriptor_buf_free(&w->clean);
    descriptor_chunks_free(&w->chunks);
    pooler_free(&w->pool);
    free(w->vector);
    free(w);
}

void descriptor_workspace_begin(descriptor_workspace *w)
{
    pooler_reset(&w->pool);
    w->kept = 0;
    w->used = 0;
}

int descriptor_workspace_add(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *s, descriptor_file_result *r)
{
    size_t cap = o->max_chunks_per_commit > 0 ? (size_t)o->max_chunks_per_commit : (size_t)-1;
    memset(r, 0, sizeof *r);
    int rc = descriptor_clean(o, s->content.ptr, s->content.len, &w->clean);
    if (rc == DESCRIPTOR_ENOMEM)
        return rc;
    if (rc != 0) {
        r->status = rc;
        return 0;
    }
    w->kept++;
    if (descriptor_chunk_text(o, w->clean.data, w->clean.len, &w->chunks) != 0)
        return DESCRIPTOR_ENOMEM;
    r->total_lines = w->chunks.total_lines;
    r->chunk_count = w->chunks.count;
    if (w->chunks.count == 0 || w->used >= cap)
        return 0;
    size_t index;
    if (!pooler_group(&w->pool, s->path.ptr, s->path.len, s->change_count,
                      w->chunks.total_lines, &index))
        return DESCRIPTOR_ENOMEM;
    for (size_t c = 0; c < w->chunks.count && w->used < cap; c++) {
        const descriptor_chunk *ch = &w->chunks.items[c];
        if (descriptor_embed_chunk(w->embedder, w->chunks.text.data + ch->offset, ch->len,
                                   w->vector) != 0)
            return DESCRIPTOR_ENOMEM;
        pooler_add(&w->pool, index, w->vector,
                   (double)(ch->line_count > 1 ? ch->line_count : 1));
        w->used++;
    }
    return 0;
}

int descriptor_workspace_finish(descriptor_workspace *w, double *out, size_t *kept,
                                size_t *chunks)
{
    *kept = w->kept;
    *chunks = w->used;
    if (w->kept == 0)
        return DESCRIPTOR_SKIP_EMPTY;
    if (w->used == 0)
        return DESCRIPTOR_NO_CHUNKS;
    return pooler_finish(&w->pool, out);
}

int descriptor_embed_sources(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *sources, size_t n,
                             descriptor_file_result *results, double *out, size_t *kept,
                             size_t *chunks)
{
    descriptor_workspace_begin(w);
    for (size_t i = 0; i < n; i++) {
        int rc = descriptor_workspace_add(w, o, &sources[i], &results[i]);
        if (rc != 0)
            return rc;
    }
    return descriptor_workspace_finish(w, out, kept, chunks);
}
