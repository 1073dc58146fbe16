/*
 * reducer.c - the per-island dimension reducer of contract §3.6 (see reducer.h), with
 * the one fix the contract asks for: samples_since_fit survives across ingests (it is
 * part of the persisted state), so the PCA really is refitted every REFIT_INTERVAL new
 * commits instead of never.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"

struct reducer {
    reducer_params p;
    size_t F;                   /* feature count, 0 before the first vector */
    reducer_entry *slots;       /* history lives in slots[head .. head + count) */
    size_t head, count, cap;
    uint64_t next_seq;
    uint64_t since_fit;
    pca_model model;            /* model.k == 0: no projection */
    uint64_t taken_seq;         /* entries with seq > taken_seq are not yet taken */
    int projection_changed;
    double *scratch, *proj;     /* F and max(k, target) values */
    size_t scratch_cap, proj_cap;
};

static uint64_t hash_key(const char *s, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001B3ull;
    return h;
}

void reducer_params_init(reducer_params *p, long long target_dims, long long min_fit,
                         long long history_size, long long refit_interval, int normalize,
                         int whiten)
{
    p->target_dims = target_dims < 1 ? 1 : (size_t)target_dims;
    p->min_fit_samples = min_fit < 2 ? 2 : (size_t)min_fit;
    p->history_limit = history_size < (long long)p->min_fit_samples ? p->min_fit_samples
                                                                     : (size_t)history_size;
    p->refit_interval = refit_interval < 0 ? 0 : (size_t)refit_interval;
    p->normalize = normalize;
    p->whiten = whiten;
}

reducer *reducer_new(const reducer_params *p)
{
    reducer *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->p = *p;
    r->next_seq = 1;
    return r;
}

static void entry_free(reducer_entry *e)
{
    free(e->hash);
    free(e->vector);
    e->hash = NULL;
    e->vector = NULL;
}

static void clear_history(reducer *r)
{
    for (size_t i = 0; i < r->count; i++)
        entry_free(&r->slots[r->head + i]);
    r->head = r->count = 0;
}

void reducer_free(reducer *r)
{
    if (!r)
        return;
    clear_history(r);
    free(r->slots);
    pca_model_free(&r->model);
    free(r->scratch);
    free(r->proj);
    free(r);
}

const reducer_params *reducer_get_params(const reducer *r) { return &r->p; }
size_t reducer_history_len(const reducer *r) { return r->count; }
size_t reducer_feature_count(const reducer *r) { return r->F; }
uint64_t reducer_samples_since_fit(const reducer *r) { return r->since_fit; }
const pca_model *reducer_model(const reducer *r) { return r->model.k ? &r->model : NULL; }
const reducer_entry *reducer_history(const reducer *r) { return r->slots + r->head; }

/* Makes room for one more entry at the end. */
static int reserve_slot(reducer *r)
{
    if (r->head + r->count < r->cap)
        return 0;
    if (r->head > 0) {                 /* compact: amortised O(1) per eviction */
        memmove(r->slots, r->slots + r->head, r->count * sizeof *r->slots);
        r->head = 0;
        if (r->count < r->cap)
            return 0;
    }
    size_t nc = r->cap ? r->cap * 2 : 64;
    reducer_entry *s = realloc(r->slots, nc * sizeof *s);
    if (!s)
        return REDUCER_ENOMEM;
    r->slots = s;
    r->cap = nc;
    return 0;
}

/* Index (from head) of the entry for hash, or (size_t)-1. */
static size_t find_entry(const reducer *r, const char *hash, size_t len, uint64_t key)
{
    for (size_t i = r->count; i-- > 0;) {
        const reducer_entry *e = &r->slots[r->head + i];
        if (e->key == key && e->hash_len == len && memcmp(e->hash, hash, len) == 0)
            return i;
    }
    return (size_t)-1;
}

static void remove_entry(reducer *r, size_t i)
{
    entry_free(&r->slots[r->head + i]);
    if (i == 0) {
        r->head++;
    } else {
        memmove(r->slots + r->head + i, r->slots + r->head + i + 1,
                (r->count - i - 1) * sizeof *r->slots);
    }
    r->count--;
    if (r->count == 0)
        r->head = 0;
}

static void evict_over_limit(reducer *r)
{
    while (r->count > r->p.history_limit)
        remove_entry(r, 0);
}

/* Appends a copy (the vector is copied as given). */
static int append_entry(reducer *r, uint64_t seq, const char *hash, size_t len,
                        const double *vector)
{
    if (reserve_slot(r) != 0)
        return REDUCER_ENOMEM;
    reducer_entry e;
    e.seq = seq;
    e.hash = malloc(len + 1);
    e.vector = malloc(r->F * sizeof *e.vector);
    if (!e.hash || !e.vector) {
        free(e.hash);
        free(e.vector);
        return REDUCER_ENOMEM;
    }
    memcpy(e.hash, hash, len);
    e.hash[len] = '\0';
    e.hash_len = len;
    e.key = hash_key(hash, len);
    memcpy(e.vector, vector, r->F * sizeof *vector);
    r->slots[r->head + r->count++] = e;
    return 0;
}

static int ensure_scratch(reducer *r, size_t F)
{
    if (F > r->scratch_cap) {
        double *s = realloc(r->scratch, F * sizeof *s);
        if (!s)
            return REDUCER_ENOMEM;
        r->scratch = s;
        r->scratch_cap = F;
    }
    size_t need = r->p.target_dims > F ? r->p.target_dims : F;
    if (need > r->proj_cap) {
        double *s = realloc(r->proj, need * sizeof *s);
        if (!s)
            return REDUCER_ENOMEM;
        r->proj = s;
        r->proj_cap = need;
    }
    return 0;
}

/* x (F values, already normalised) -> measures (target_dims). */
static void project_into(const reducer *r, const double *x, size_t F, double *proj,
                         double *measures)
{
    const double *y = x;
    size_t len = F;
    if (r->model.k && r->model.feature_count == F) {
        pca_transform(&r->model, x, r->p.whiten, proj);
        y = proj;
        len = r->model.k;
    }
    for (size_t i = 0; i < r->p.target_dims; i++)
        measures[i] = i < len ? y[i] : 0.0;
}

/* Copies vector into out, L2-normalised when the params say so (zero stays zero). The
 * sum of squares runs in four interleaved partial sums, then one division and a
 * multiplication per value: deterministic, within an ulp of dividing each value. */
static void penultimate(const reducer *r, const double *vector, size_t F, double *out)
{
    if (!r->p.normalize) {
        memcpy(out, vector, F * sizeof *out);
        return;
    }
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= F; i += 4) {
        s0 += vector[i] * vector[i];
        s1 += vector[i + 1] * vector[i + 1];
        s2 += vector[i + 2] * vector[i + 2];
        s3 += vector[i + 3] * vector[i + 3];
    }
    for (; i < F; i++)
        s0 += vector[i] * vector[i];
    double s = (s0 + s1) + (s2 + s3);
    if (s == 0.0) {
        memcpy(out, vector, F * sizeof *out);
        return;
    }
    double inv;
    if (isfinite(s)) {
        inv = 1.0 / sqrt(s);
    } else {                         /* squares overflowed: scale by the largest value */
        double big = 0.0, t = 0.0;
        for (i = 0; i < F; i++)
            big = fmax(big, fabs(vector[i]));
        for (i = 0; i < F; i++)
            t += (vector[i] / big) * (vector[i] / big);
        inv = 1.0 / (big * sqrt(t));
    }
    for (i = 0; i < F; i++)
        out[i] = vector[i] * inv;
}

int reducer_refit(reducer *r, double now)
{
    if (r->count < r->p.min_fit_samples || r->F == 0)
        return 0;
    const double **rows = malloc(r->count * sizeof *rows);
    if (!rows)
        return REDUCER_ENOMEM;
    for (size_t i = 0; i < r->count; i++)
        rows[i] = r->slots[r->head + i].vector;
    pca_model m;
    int rc = pca_fit(rows, r->count, r->F, r->p.target_dims, now, &m);
    free(rows);
    if (rc != 0)
        return rc;
    if (m.k == 0)
        return 0;
    pca_model_free(&r->model);
    r->model = m;
    r->since_fit = 0;
    r->projection_changed = 1;
    return 1;
}

int reducer_observe(reducer *r, const char *hash, size_t hash_len, const double *vector,
                    size_t F, double now, double *measures, int *refitted)
{
    *refitted = 0;
    if (F == 0)
        return REDUCER_EINVAL;
    if (ensure_scratch(r, F) != 0)
        return REDUCER_ENOMEM;
    penultimate(r, vector, F, r->scratch);
    if (r->F != F) {
        if (r->F != 0 || r->model.k) {  /* length changed: history and projection reset */
            clear_history(r);
            if (r->model.k)
                r->projection_changed = 1;
            pca_model_free(&r->model);
            r->since_fit = 0;
        }
        r->F = F;
    }
    uint64_t key = hash_key(hash, hash_len);
    size_t old = find_entry(r, hash, hash_len, key);
    int is_new = old == (size_t)-1;
    if (!is_new)
        remove_entry(r, old);         /* re-added: moves to the newest position */
    if (append_entry(r, r->next_seq, hash, hash_len, r->scratch) != 0)
        return REDUCER_ENOMEM;
    r->next_seq++;
    evict_over_limit(r);
    if (is_new)
        r->since_fit++;
    if (r->count >= r->p.min_fit_samples &&
        (r->model.k == 0 || (r->p.refit_interval > 0 && r->since_fit >= r->p.refit_interval))) {
        int rc = reducer_refit(r, now);
        if (rc < 0)
            return rc;
        *refitted = rc == 1;
    }
    project_into(r, r->scratch, F, r->proj, measures);
    return 0;
}

int reducer_project(const reducer *r, const double *vector, size_t F, double *measures)
{
    if (F == 0 || (r->F != 0 && F != r->F))
        return REDUCER_EINVAL;
    size_t need = r->p.target_dims > F ? r->p.target_dims : F;
    double stack[2 * 512];
    double *x = stack, *proj = stack + 512, *heap = NULL;
    if (F > 512 || need > 512) {
        heap = malloc(2 * need * sizeof *heap);
        if (!heap)
            return REDUCER_ENOMEM;
        x = heap;
        proj = heap + need;
    }
    penultimate(r, vector, F, x);
    project_into(r, x, F, proj, measures);
    free(heap);
    return 0;
}

/* ---- changes ------------------------------------------------------------------------------- */

void reducer_get_changes(const reducer *r, reducer_changes *c)
{
    c->projection_changed = r->projection_changed;
    size_t i = r->count;
    while (i > 0 && r->slots[r->head + i - 1].seq > r->taken_seq)
        i--;
    c->first_new = i;
    c->trim_before_seq = r->count ? r->slots[r->head].seq : r->next_seq;
}

void reducer_mark_taken(reducer *r)
{
    r->taken_seq = r->next_seq - 1;
    r->projection_changed = 0;
}

/* ---- restore --------------------------------------------------------------------------------- */

int reducer_restore_entry(reducer *r, uint64_t seq, const char *hash, size_t hash_len,
                          const double *vector, size_t F, char *err, size_t errlen)
{
    if (hash_len == 0) {
        snprintf(err, errlen, "commit_hash is empty");
        return REDUCER_EINVAL;
    }
    if (F == 0) {
        snprintf(err, errlen, "vector is empty");
        return REDUCER_EINVAL;
    }
    if (r->count > 0 && F != r->F) {
        snprintf(err, errlen, "vector has %zu values, earlier rows have %zu", F, r->F);
        return REDUCER_EINVAL;
    }
    if (seq == 0 || seq < r->next_seq) {
        snprintf(err, errlen, "seq %llu is not greater than the previous row's (%llu)",
                 (unsigned long long)seq, (unsigned long long)(r->next_seq - 1));
        return REDUCER_EINVAL;
    }
    for (size_t i = 0; i < F; i++)
        if (!isfinite(vector[i])) {
            snprintf(err, errlen, "vector value %zu is not finite", i + 1);
            return REDUCER_EINVAL;
        }
    r->F = F;
    size_t old = find_entry(r, hash, hash_len, hash_key(hash, hash_len));
    if (old != (size_t)-1)
        remove_entry(r, old);
    if (append_entry(r, seq, hash, hash_len, vector) != 0) {
        snprintf(err, errlen, "out of memory");
        return REDUCER_ENOMEM;
    }
    r->next_seq = seq + 1;
    return 0;
}

int reducer_restore_projection(reducer *r, const char *blob, size_t len, char *err,
                               size_t errlen)
{
    pca_model m;
    int rc = pca_decode(blob, len, &m, err, errlen);
    if (rc != 0)
        return rc;
    pca_model_free(&r->model);
    r->model = m;
    return 0;
}

void reducer_restore_counter(reducer *r, uint64_t samples_since_fit)
{
    r->since_fit = samples_since_fit;
}

void reducer_restore_finish(reducer *r)
{
    evict_over_limit(r);
    if (r->count == 0 && r->model.k)
        r->F = r->model.feature_count;
    if (r->model.k && r->model.feature_count != r->F)
        pca_model_free(&r->model);     /* incompatible projection: dropped (§3.6) */
    reducer_mark_taken(r);
}

/* ---- the whole state as one blob ------------------------------------------------------------ */

#define REDUCER_MAGIC "LRDC"
#define REDUCER_VERSION 1u

static int put_u64(descriptor_buf *b, uint64_t v)
{
    unsigned char x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    return descriptor_buf_append(b, x, 8);
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

int reducer_save(const reducer *r, descriptor_buf *out)
{
    if (descriptor_buf_append(out, REDUCER_MAGIC, 4) || put_u64(out, REDUCER_VERSION) ||
        put_u64(out, r->F) || put_u64(out, r->since_fit) || put_u64(out, r->count))
        return REDUCER_ENOMEM;
    for (size_t i = 0; i < r->count; i++) {
        const reducer_entry *e = &r->slots[r->head + i];
        if (put_u64(out, e->seq) || put_u64(out, e->hash_len) ||
            descriptor_buf_append(out, e->hash, e->hash_len))
            return REDUCER_ENOMEM;
        for (size_t j = 0; j < r->F; j++) {
            uint64_t u;
            memcpy(&u, &e->vector[j], 8);
            if (put_u64(out, u))
                return REDUCER_ENOMEM;
        }
    }
    descriptor_buf proj = { 0 };
    int rc = pca_encode(r->model.k ? &r->model : NULL, &proj);
    if (rc == 0)
        rc = put_u64(out, proj.len) || descriptor_buf_append(out, proj.data, proj.len)
                 ? REDUCER_ENOMEM
                 : 0;
    descriptor_buf_free(&proj);
    return rc;
}

reducer *reducer_load(const reducer_params *p, const char *blob, size_t len, char *err,
                      size_t errlen)
{
    const unsigned char *u = (const unsigned char *)blob;
    reducer *r = NULL;
    double *vec = NULL;
    if (len < 36 || memcmp(u, REDUCER_MAGIC, 4) != 0) {
        snprintf(err, errlen, "reducer blob: not a loreley reducer blob (bad magic or too short)");
        return NULL;
    }
    uint64_t version = get_u64(u + 4), F = get_u64(u + 12), since = get_u64(u + 20),
             count = get_u64(u + 28);
    if (version != REDUCER_VERSION) {
        snprintf(err, errlen, "reducer blob: version %llu, expected %u",
                 (unsigned long long)version, REDUCER_VERSION);
        return NULL;
    }
    if (F > (1u << 24) || (count > 0 && F == 0) || count > (len - 36) / 16) {
        snprintf(err, errlen, "reducer blob: invalid header (%llu rows of %llu values)",
                 (unsigned long long)count, (unsigned long long)F);
        return NULL;
    }
    r = reducer_new(p);
    vec = malloc((F ? F : 1) * sizeof *vec);
    if (!r || !vec) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    size_t pos = 36;
    char sub[160];
    for (uint64_t i = 0; i < count; i++) {
        if (len - pos < 16) {
            snprintf(err, errlen, "reducer blob: truncated at row %llu", (unsigned long long)i + 1);
            goto fail;
        }
        uint64_t seq = get_u64(u + pos), hl = get_u64(u + pos + 8);
        pos += 16;
        if (hl > len - pos || F * 8 > len - pos - hl) {
            snprintf(err, errlen, "reducer blob: truncated at row %llu", (unsigned long long)i + 1);
            goto fail;
        }
        const char *hash = blob + pos;
        pos += hl;
        for (uint64_t j = 0; j < F; j++) {
            uint64_t bits = get_u64(u + pos + 8 * j);
            memcpy(&vec[j], &bits, 8);
        }
        pos += F * 8;
        if (reducer_restore_entry(r, seq, hash, hl, vec, F, sub, sizeof sub) != 0) {
            snprintf(err, errlen, "reducer blob: row %llu: %s", (unsigned long long)i + 1, sub);
            goto fail;
        }
    }
    if (len - pos < 8) {
        snprintf(err, errlen, "reducer blob: truncated before the projection");
        goto fail;
    }
    uint64_t pl = get_u64(u + pos);
    pos += 8;
    if (pl != len - pos) {
        snprintf(err, errlen, "reducer blob: projection of %llu bytes, %zu left",
                 (unsigned long long)pl, len - pos);
        goto fail;
    }
    if (reducer_restore_projection(r, blob + pos, pl, sub, sizeof sub) != 0) {
        snprintf(err, errlen, "reducer blob: %s", sub);
        goto fail;
    }
    if (count == 0 && F > 0 && !r->model.k)
        r->F = F;
    reducer_restore_counter(r, since);
    reducer_restore_finish(r);
    free(vec);
    return r;
fail:
    free(vec);
    reducer_free(r);
    return NULL;
}
