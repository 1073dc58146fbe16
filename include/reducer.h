/*
 * reducer.h - the per-island dimension reducer of contract §3.6: a window of recent
 * penultimate vectors, an exact deterministic PCA fitted on it (first at
 * MIN_FIT_SAMPLES, then every REFIT_INTERVAL new samples), projection, optional
 * whitening, and truncation or zero-padding to TARGET_DIMS. Pure C, no Lua.
 *
 * Ownership: a reducer owns its history and model; results go to caller buffers.
 * Functions return 0 on success and REDUCER_ENOMEM when memory ran out; decoding
 * functions return REDUCER_EINVAL with a message naming what was wrong.
 */
#ifndef LORELEY_REDUCER_H
#define LORELEY_REDUCER_H

#include <stddef.h>
#include <stdint.h>

#include "descriptor.h"

enum { REDUCER_OK = 0, REDUCER_ENOMEM = -1, REDUCER_EINVAL = -2 };

/* ---- PCA --------------------------------------------------------------------------- */

typedef struct pca_model {
    size_t feature_count;       /* F */
    size_t k;                   /* components (0: no model) */
    uint64_t sample_count;
    double fitted_at;           /* epoch seconds */
    double *mean;               /* F */
    double *components;         /* k x F, row-major, unit rows (or zero rows, see below) */
    double *explained_variance; /* k: eigenvalue / (n - 1) */
    double *explained_variance_ratio;   /* k: share of the total variance */
} pca_model;

/*
 * Fits k = min(k_target, n, F) components on the n rows (each F values): centres on the
 * column mean, eigendecomposes the covariance (F <= n) or the Gram matrix (n < F)
 * exactly (Householder tridiagonalisation, bisection, inverse iteration), and flips each
 * component so that its largest-magnitude entry (the first, on ties) is positive, as
 * sklearn's svd_flip(u_based_decision=False). A direction without variance (eigenvalue
 * below 1e-12 of the largest) gives a zero component. Deterministic: the same rows in
 * the same order give the same model bit for bit. out must be zeroed or freed.
 */
int pca_fit(const double *const *rows, size_t n, size_t F, size_t k_target, double fitted_at,
            pca_model *out);

/* y[k] = components (x - mean), divided by sqrt(explained_variance) when whiten (a
 * component without variance gives 0). */
void pca_transform(const pca_model *m, const double *x, int whiten, double *y);

void pca_model_free(pca_model *m);

/* Versioned little-endian blob of a model; m == NULL (or m->k == 0) encodes "no model"
 * (used to record that a reset cleared the projection). */
int pca_encode(const pca_model *m, descriptor_buf *out);
/* Decodes a blob; out->k == 0 means "no model". err gets a message on REDUCER_EINVAL. */
int pca_decode(const char *blob, size_t len, pca_model *out, char *err, size_t errlen);

/* The symmetric eigenproblem used by pca_fit, exposed for tests: the k largest
 * eigenvalues of the n x n symmetric matrix a (row-major; destroyed) in descending
 * order, with unit eigenvectors as rows of vectors (k x n). */
int pca_symmetric_top(double *a, size_t n, size_t k, double *values, double *vectors);

/* ---- the reducer ------------------------------------------------------------------- */

typedef struct reducer_params {
    size_t target_dims;         /* max(1, TARGET_DIMS) */
    size_t min_fit_samples;     /* max(2, MIN_FIT_SAMPLES) */
    size_t history_limit;       /* max(min_fit_samples, HISTORY_SIZE) */
    size_t refit_interval;      /* max(0, REFIT_INTERVAL); 0: fit once */
    int normalize;              /* PENULTIMATE_NORMALIZE: L2-normalise incoming vectors */
    int whiten;                 /* divide projections by the component's std deviation */
} reducer_params;

/* The clamps of §3.6 applied to raw setting values. */
void reducer_params_init(reducer_params *p, long long target_dims, long long min_fit,
                         long long history_size, long long refit_interval, int normalize,
                         int whiten);

typedef struct reducer_entry {
    uint64_t seq;               /* strictly increasing along the history */
    char *hash;                 /* commit hash, NUL-terminated */
    size_t hash_len;
    uint64_t key;               /* hash of `hash`, for lookups */
    double *vector;             /* feature_count values (normalised when params.normalize) */
} reducer_entry;

typedef struct reducer reducer;

reducer *reducer_new(const reducer_params *p);
void reducer_free(reducer *r);
const reducer_params *reducer_get_params(const reducer *r);

/*
 * Records one commit's penultimate vector (F values, finite) and returns its measures
 * (params.target_dims values) in `measures`. In order: L2 normalisation (when
 * params.normalize; a zero vector stays zero); a vector of another length than the
 * history resets history and projection; a known commit hash moves to the newest
 * position, a new one is appended and counts toward the refit; the oldest entry beyond
 * history_limit is evicted; the PCA is (re)fitted when history >= min_fit_samples and
 * there is no projection or refit_interval > 0 new samples arrived since the last fit;
 * then projection (or the raw vector before the first fit), truncated or zero-padded.
 * *refitted tells whether this call fitted the PCA.
 */
int reducer_observe(reducer *r, const char *hash, size_t hash_len, const double *vector,
                    size_t F, double now, double *measures, int *refitted);

/* Measures of a vector without recording it. Returns 0, or REDUCER_EINVAL when the
 * history holds vectors of another length (F must match once the reducer has seen one). */
int reducer_project(const reducer *r, const double *vector, size_t F, double *measures);

/* Fits the PCA now on the current history (1 = fitted, 0 = too few samples). */
int reducer_refit(reducer *r, double now);

size_t reducer_history_len(const reducer *r);
size_t reducer_feature_count(const reducer *r);     /* 0 before any vector */
uint64_t reducer_samples_since_fit(const reducer *r);
const pca_model *reducer_model(const reducer *r);   /* NULL before the first fit */
const reducer_entry *reducer_history(const reducer *r);  /* oldest first */

/* ---- persistence --------------------------------------------------------------------- */

/* The whole state as one versioned blob (history, samples_since_fit, projection). */
int reducer_save(const reducer *r, descriptor_buf *out);
/* Rebuilds a reducer from reducer_save output under params (a smaller history limit
 * evicts the oldest entries; a projection of another length than the history is
 * dropped). NULL with a message in err when the blob is invalid or memory ran out. */
reducer *reducer_load(const reducer_params *p, const char *blob, size_t len, char *err,
                      size_t errlen);

/*
 * Restoring from rows (SHAPES.md): start with reducer_new, add rows oldest first with
 * reducer_restore_entry (seq strictly increasing; a commit hash seen before replaces
 * that entry; every vector of the same length), set the projection blob and the
 * counter, then reducer_restore_finish applies the limits and clears the change marks.
 */
int reducer_restore_entry(reducer *r, uint64_t seq, const char *hash, size_t hash_len,
                          const double *vector, size_t F, char *err, size_t errlen);
int reducer_restore_projection(reducer *r, const char *blob, size_t len, char *err,
                               size_t errlen);
void reducer_restore_counter(reducer *r, uint64_t samples_since_fit);
void reducer_restore_finish(reducer *r);

/* Incremental changes since the last reducer_mark_taken (or load/restore). */
typedef struct reducer_changes {
    int projection_changed;     /* refitted or cleared since: persist reducer_model() */
    size_t first_new;           /* history index of the first entry not yet taken */
    uint64_t trim_before_seq;   /* entries with seq < this are gone */
} reducer_changes;
void reducer_get_changes(const reducer *r, reducer_changes *c);
void reducer_mark_taken(reducer *r);

#endif
