/*
 * pca.c - exact, deterministic PCA for the dimension reducer (contract §3.6).
 *
 * The reference uses scikit-learn, whose solver for its usual shapes is randomized SVD
 * (not reproducible). Here: the covariance (F <= n) or Gram (n < F) matrix of the
 * centred rows, Householder tridiagonalisation, the k largest eigenvalues by Sturm
 * bisection, their eigenvectors by inverse iteration with a pivoted tridiagonal LU
 * (re-orthogonalised within clusters), and the Householder back-transform. Every step
 * runs in a fixed order, so equal inputs give equal bits.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "reducer.h"

#define VARIANCE_FLOOR 1e-12    /* eigenvalues below this share of the largest are noise */

/* ---- the symmetric eigenproblem ---------------------------------------------------------- */

/*
 * Householder tridiagonalisation of the symmetric n x n matrix a (row-major, destroyed):
 * a = Q T Q^T, T with diagonal d and off-diagonal e (n-1). Reflector j (j < n-2) acts
 * on indices j+1..n-1 with vector vs[j*n + j+1 ..] and factor betas[j].
 */
static int tridiagonalize(double *a, size_t n, double *d, double *e, double *vs, double *betas)
{
    double *p = malloc(n * sizeof *p);
    if (!p)
        return REDUCER_ENOMEM;
    for (size_t j = 0; j + 2 < n; j++) {
        size_t m = n - j - 1;
        double *x = a + j * n + j + 1;          /* row j right of the diagonal = column j */
        double *v = vs + j * n + j + 1;
        double scale = 0.0;
        for (size_t i = 0; i < m; i++)
            scale = fmax(scale, fabs(x[i]));
        d[j] = a[j * n + j];
        if (scale == 0.0) {
            betas[j] = 0.0;
            e[j] = 0.0;
            memset(v, 0, m * sizeof *v);
            continue;
        }
        double norm2 = 0.0;
        for (size_t i = 0; i < m; i++) {
            v[i] = x[i] / scale;
            norm2 += v[i] * v[i];
        }
        double alpha = sqrt(norm2);
        double sign = v[0] >= 0 ? 1.0 : -1.0;
        v[0] += sign * alpha;
        double vv = 0.0;
        for (size_t i = 0; i < m; i++)
            vv += v[i] * v[i];
        double beta = 2.0 / vv;
        betas[j] = beta;
        e[j] = -sign * alpha * scale;
        /* B = a[j+1.., j+1..]: p = beta B v; w = p - (beta/2)(p.v) v; B -= v w' + w v' */
        double *B = a + (j + 1) * n + (j + 1);
        double pv = 0.0;
        for (size_t i = 0; i < m; i++) {
            const double *row = B + i * n;
            double s = 0.0;
            for (size_t k = 0; k < m; k++)
                s += row[k] * v[k];
            p[i] = beta * s;
            pv += p[i] * v[i];
        }
        double K = 0.5 * beta * pv;
        for (size_t i = 0; i < m; i++)
            p[i] -= K * v[i];                   /* p is now w */
        for (size_t i = 0; i < m; i++) {
            double *row = B + i * n;
            double vi = v[i], wi = p[i];
            for (size_t k = 0; k < m; k++)
                row[k] -= vi * p[k] + wi * v[k];
        }
    }
    if (n >= 2) {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 2) * n + n - 1];
    }
    d[n - 1] = a[(n - 1) * n + n - 1];
    free(p);
    return 0;
}

/* Number of eigenvalues of T below x (Sturm sequence). */
static size_t sturm_count(const double *d, const double *e, size_t n, double x, double pivmin)
{
    size_t count = 0;
    double q = d[0] - x;
    if (fabs(q) < pivmin)
        q = -pivmin;
    if (q < 0)
        count++;
    for (size_t i = 1; i < n; i++) {
        q = d[i] - x - e[i - 1] * e[i - 1] / q;
        if (fabs(q) < pivmin)
            q = -pivmin;
        if (q < 0)
            count++;
    }
    return count;
}

/* The eigenvalue of T with ascending index idx, by bisection. */
static double bisect(const double *d, const double *e, size_t n, size_t idx, double lo,
                     double hi, double pivmin)
{
    for (int it = 0; it < 256; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi)
            break;
        if (hi - lo <= 2.0 * DBL_EPSILON * fmax(fabs(lo), fabs(hi)) + pivmin)
            break;
        if (sturm_count(d, e, n, mid, pivmin) > idx)
            hi = mid;
        else
            lo = mid;
    }
    return 0.5 * (lo + hi);
}

/* Solves (T - lambda I) x = b in place (b -> x) with a pivoted LU; work: 5n doubles. */
static void shifted_solve(const double *d, const double *e, size_t n, double lambda,
                          double tiny, double *b, double *work)
{
    double *dd = work, *du = work + n, *du2 = work + 2 * n, *dl = work + 3 * n;
    unsigned char *piv = (unsigned char *)(work + 4 * n);
    for (size_t i = 0; i < n; i++) {
        dd[i] = d[i] - lambda;
        du2[i] = 0.0;
        if (i + 1 < n)
            du[i] = dl[i] = e[i];
    }
    for (size_t i = 0; i + 1 < n; i++) {
        if (fabs(dd[i]) >= fabs(dl[i])) {
            piv[i] = 0;
            if (dd[i] == 0.0)
                dd[i] = tiny;
            double f = dl[i] / dd[i];
            dl[i] = f;
            dd[i + 1] -= f * du[i];
        } else {
            piv[i] = 1;
            double f = dd[i] / dl[i];
            dd[i] = dl[i];
            dl[i] = f;
            double t = du[i];
            du[i] = dd[i + 1];
            dd[i + 1] = t - f * dd[i + 1];
            if (i + 2 < n) {
                du2[i] = du[i + 1];
                du[i + 1] = -f * du[i + 1];
            }
        }
    }
    if (dd[n - 1] == 0.0)
        dd[n - 1] = tiny;
    for (size_t i = 0; i + 1 < n; i++) {
        if (piv[i]) {
            double t = b[i];
            b[i] = b[i + 1];
            b[i + 1] = t;
        }
        b[i + 1] -= dl[i] * b[i];
    }
    for (size_t i = n; i-- > 0;) {
        double s = b[i];
        if (i + 1 < n)
            s -= du[i] * b[i + 1];
        if (i + 2 < n)
            s -= du2[i] * b[i + 2];
        b[i] = s / dd[i];
        if (!isfinite(b[i]))
            b[i] = copysign(1e300, b[i]);
    }
}

static void normalize(double *v, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(v[i]));
    if (m == 0.0)
        return;
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        v[i] /= m;
        s += v[i] * v[i];
    }
    s = sqrt(s);
    for (size_t i = 0; i < n; i++)
        v[i] /= s;
}

int pca_symmetric_top(double *a, size_t n, size_t k, double *values, double *vectors)
{
    if (k > n)
        k = n;
    if (k == 0)
        return 0;
    int rc = REDUCER_ENOMEM;
    double *d = malloc(n * sizeof *d), *e = calloc(n, sizeof *e);
    double *vs = calloc(n * n, sizeof *vs), *betas = calloc(n, sizeof *betas);
    double *z = malloc(n * sizeof *z), *work = malloc((5 * n + 1) * sizeof *work);
    if (!d || !e || !vs || !betas || !z || !work)
        goto out;
    if (tridiagonalize(a, n, d, e, vs, betas) != 0)
        goto out;
    /* Gershgorin interval and the size of T. */
    double lo = d[0], hi = d[0], tnorm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = (i > 0 ? fabs(e[i - 1]) : 0.0) + (i + 1 < n ? fabs(e[i]) : 0.0);
        lo = fmin(lo, d[i] - r);
        hi = fmax(hi, d[i] + r);
        tnorm = fmax(tnorm, fabs(d[i]) + r);
    }
    double pivmin = DBL_MIN * fmax(1.0, tnorm * tnorm);
    double pad = 2.0 * DBL_EPSILON * tnorm * (double)n + pivmin;
    lo -= pad;
    hi += pad;
    for (size_t j = 0; j < k; j++)
        values[j] = bisect(d, e, n, n - 1 - j, lo, hi, pivmin);
    /* Eigenvectors of T by inverse iteration, then back to the basis of a. */
    double tiny = DBL_EPSILON * fmax(tnorm, DBL_MIN);
    double cluster = 1e-3 * tnorm;
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t j = 0; j < k; j++) {
        for (size_t i = 0; i < n; i++) {          /* fixed pseudo-random start */
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            z[i] = (double)(state >> 11) / 9007199254740992.0 - 0.5;
        }
        for (int it = 0; it < 5; it++) {
            normalize(z, n);
            shifted_solve(d, e, n, values[j], tiny, z, work);
            normalize(z, n);
            /* keep orthogonal to the vectors of nearby eigenvalues (in T's basis) */
            for (size_t q = 0; q < j; q++) {
                if (fabs(values[q] - values[j]) > cluster)
                    continue;
                double *zq = vectors + q * n;   /* still in T's basis during this loop */
                double dot = 0.0;
                for (size_t i = 0; i < n; i++)
                    dot += zq[i] * z[i];
                for (size_t i = 0; i < n; i++)
                    z[i] -= dot * zq[i];
            }
        }
        normalize(z, n);
        memcpy(vectors + j * n, z, n * sizeof *z);
    }
    /* Back-transform every vector: y = H_0 H_1 ... H_{n-3} z. */
    for (size_t j = 0; j < k; j++) {
        double *y = vectors + j * n;
        for (size_t r = n >= 2 ? n - 2 : 0; r-- > 0;) {
            if (betas[r] == 0.0)
                continue;
            const double *v = vs + r * n + r + 1;
            double *ys = y + r + 1;
            size_t m = n - r - 1;
            double dot = 0.0;
            for (size_t i = 0; i < m; i++)
                dot += v[i] * ys[i];
            dot *= betas[r];
            for (size_t i = 0; i < m; i++)
                ys[i] -= dot * v[i];
        }
        normalize(y, n);
    }
    rc = 0;
out:
    free(d);
    free(e);
    free(vs);
    free(betas);
    free(z);
    free(work);
    return rc;
}

/* ---- fitting -------------------------------------------------------------------------------- */

/* c[b] += r0a*r0[b] + r1a*r1[b] + r2a*r2[b] + r3a*r3[b] for b in [0, m) */
static void rank4_update(double *restrict c, const double *restrict r0,
                         const double *restrict r1, const double *restrict r2,
                         const double *restrict r3, double a0, double a1, double a2,
                         double a3, size_t m)
{
    for (size_t b = 0; b < m; b++)
        c[b] += a0 * r0[b] + a1 * r1[b] + a2 * r2[b] + a3 * r3[b];
}

/* Upper triangle of sum_i (x_i)(x_i)' over the m centred rows (each F values). */
static void scatter_matrix(const double *const *centred, size_t m, size_t F, double *c)
{
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const double *r0 = centred[i], *r1 = centred[i + 1], *r2 = centred[i + 2],
                     *r3 = centred[i + 3];
        for (size_t a = 0; a < F; a++)
            rank4_update(c + a * F + a, r0 + a, r1 + a, r2 + a, r3 + a, r0[a], r1[a], r2[a],
                         r3[a], F - a);
    }
    for (; i < m; i++) {
        const double *r0 = centred[i];
        for (size_t a = 0; a < F; a++) {
            double *row = c + a * F;
            double s = r0[a];
            for (size_t b = a; b < F; b++)
                row[b] += s * r0[b];
        }
    }
    for (size_t a = 0; a < F; a++)
        for (size_t b = 0; b < a; b++)
            c[a * F + b] = c[b * F + a];
}

int pca_fit(const double *const *rows, size_t n, size_t F, size_t k_target, double fitted_at,
            pca_model *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0 || F == 0)
        return 0;
    size_t k = k_target;
    if (k > n)
        k = n;
    if (k > F)
        k = F;
    if (k == 0)
        return 0;
    int rc = REDUCER_ENOMEM;
    size_t dim = F <= n ? F : n;          /* size of the eigenproblem */
    double *mean = calloc(F, sizeof *mean);
    double *centred = malloc(n * F * sizeof *centred);
    const double **crow = malloc(n * sizeof *crow);
    double *mat = calloc(dim * dim, sizeof *mat);
    double *values = malloc(k * sizeof *values);
    double *vecs = malloc(k * dim * sizeof *vecs);
    double *comps = calloc(k * F, sizeof *comps);
    double *var = calloc(k, sizeof *var), *ratio = calloc(k, sizeof *ratio);
    if (!mean || !centred || !crow || !mat || !values || !vecs || !comps || !var || !ratio)
        goto fail;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < F; j++)
            mean[j] += rows[i][j];
    for (size_t j = 0; j < F; j++)
        mean[j] /= (double)n;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        double *c = centred + i * F;
        for (size_t j = 0; j < F; j++) {
            c[j] = rows[i][j] - mean[j];
            total += c[j] * c[j];
        }
        crow[i] = c;
    }
    if (F <= n) {
        scatter_matrix(crow, n, F, mat);
    } else {
        for (size_t a = 0; a < n; a++)
            for (size_t b = a; b < n; b++) {
                double s = 0.0;
                for (size_t j = 0; j < F; j++)
                    s += crow[a][j] * crow[b][j];
                mat[a * n + b] = mat[b * n + a] = s;
            }
    }
    if (pca_symmetric_top(mat, dim, k, values, vecs) != 0)
        goto fail;
    double top = values[0] > 0 ? values[0] : 0.0;
    double denom = n > 1 ? (double)(n - 1) : 1.0;
    for (size_t c = 0; c < k; c++) {
        double *comp = comps + c * F;
        if (!(values[c] > VARIANCE_FLOOR * top) || top == 0.0)
            continue;                     /* no variance along this direction: zero row */
        if (F <= n) {
            memcpy(comp, vecs + c * dim, F * sizeof *comp);
        } else {                          /* v = Xc' u, normalised */
            const double *u = vecs + c * dim;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < F; j++)
                    comp[j] += u[i] * crow[i][j];
            normalize(comp, F);
        }
        /* svd_flip(u_based_decision=False): largest |entry| (first on ties) positive */
        size_t arg = 0;
        for (size_t j = 1; j < F; j++)
            if (fabs(comp[j]) > fabs(comp[arg]))
                arg = j;
        if (comp[arg] < 0)
            for (size_t j = 0; j < F; j++)
                comp[j] = -comp[j];
        var[c] = values[c] / denom;
        ratio[c] = total > 0 ? values[c] / total : 0.0;
    }
    out->feature_count = F;
    out->k = k;
    out->sample_count = n;
    out->fitted_at = fitted_at;
    out->mean = mean;
    out->components = comps;
    out->explained_variance = var;
    out->explained_variance_ratio = ratio;
    mean = comps = var = ratio = NULL;
    rc = 0;
fail:
    free(mean);
    free(centred);
    free(crow);
    free(mat);
    free(values);
    free(vecs);
    free(comps);
    free(var);
    free(ratio);
    return rc;
}

void pca_transform(const pca_model *m, const double *x, int whiten, double *y)
{
    size_t F = m->feature_count, k = m->k;
    for (size_t c = 0; c < k; c++)
        y[c] = 0.0;
    if (k == 4) {
        /* The default: one pass over x, two accumulators per component (even and odd
         * j) so that the additions do not wait on each other. */
        const double *c0 = m->components, *c1 = c0 + F, *c2 = c1 + F, *c3 = c2 + F;
        const double *mu = m->mean;
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
        size_t j = 0;
        for (; j + 2 <= F; j += 2) {
            double d0 = x[j] - mu[j], d1 = x[j + 1] - mu[j + 1];
            a0 += c0[j] * d0;
            b0 += c0[j + 1] * d1;
            a1 += c1[j] * d0;
            b1 += c1[j + 1] * d1;
            a2 += c2[j] * d0;
            b2 += c2[j + 1] * d1;
            a3 += c3[j] * d0;
            b3 += c3[j + 1] * d1;
        }
        if (j < F) {
            double d0 = x[j] - mu[j];
            a0 += c0[j] * d0;
            a1 += c1[j] * d0;
            a2 += c2[j] * d0;
            a3 += c3[j] * d0;
        }
        y[0] = a0 + b0;
        y[1] = a1 + b1;
        y[2] = a2 + b2;
        y[3] = a3 + b3;
    } else {
        for (size_t c = 0; c < k; c++) {
            const double *comp = m->components + c * F;
            double a = 0.0, b = 0.0;
            size_t j = 0;
            for (; j + 2 <= F; j += 2) {
                a += comp[j] * (x[j] - m->mean[j]);
                b += comp[j + 1] * (x[j + 1] - m->mean[j + 1]);
            }
            if (j < F)
                a += comp[j] * (x[j] - m->mean[j]);
            y[c] = a + b;
        }
    }
    if (whiten)
        for (size_t c = 0; c < k; c++)
            y[c] = m->explained_variance[c] > 0 ? y[c] / sqrt(m->explained_variance[c]) : 0.0;
}

void pca_model_free(pca_model *m)
{
    free(m->mean);
    free(m->components);
    free(m->explained_variance);
    free(m->explained_variance_ratio);
    memset(m, 0, sizeof *m);
}

/* ---- blob --------------------------------------------------------------------------------- */

#define PCA_MAGIC "LPCA"
#define PCA_VERSION 1u
#define PCA_MAX_FEATURES (1u << 24)

static int put_u64(descriptor_buf *b, uint64_t v)
{
    unsigned char x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    return descriptor_buf_append(b, x, 8);
}

static int put_f64(descriptor_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    return put_u64(b, u);
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static double get_f64(const unsigned char *p)
{
    uint64_t u = get_u64(p);
    double v;
    memcpy(&v, &u, 8);
    return v;
}

int pca_encode(const pca_model *m, descriptor_buf *out)
{
    int empty = !m || m->k == 0;
    size_t F = empty ? 0 : m->feature_count, k = empty ? 0 : m->k;
    int bad = descriptor_buf_append(out, PCA_MAGIC, 4) || put_u64(out, PCA_VERSION) ||
              put_u64(out, F) || put_u64(out, k) || put_u64(out, empty ? 0 : m->sample_count) ||
              put_f64(out, empty ? 0.0 : m->fitted_at);
    for (size_t j = 0; !bad && j < F; j++)
        bad = put_f64(out, m->mean[j]);
    for (size_t j = 0; !bad && j < k * F; j++)
        bad = put_f64(out, m->components[j]);
    for (size_t j = 0; !bad && j < k; j++)
        bad = put_f64(out, m->explained_variance[j]);
    for (size_t j = 0; !bad && j < k; j++)
        bad = put_f64(out, m->explained_variance_ratio[j]);
    return bad ? REDUCER_ENOMEM : 0;
}

int pca_decode(const char *blob, size_t len, pca_model *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const unsigned char *p = (const unsigned char *)blob;
    const size_t head = 4 + 8 * 5;
    if (len < head || memcmp(p, PCA_MAGIC, 4) != 0) {
        snprintf(err, errlen, "projection blob: not a loreley PCA blob (bad magic or too short)");
        return REDUCER_EINVAL;
    }
    uint64_t version = get_u64(p + 4), F = get_u64(p + 12), k = get_u64(p + 20);
    if (version != PCA_VERSION) {
        snprintf(err, errlen, "projection blob: version %llu, expected %u",
                 (unsigned long long)version, PCA_VERSION);
        return REDUCER_EINVAL;
    }
    if (F > PCA_MAX_FEATURES || k > F || (k == 0) != (F == 0)) {
        snprintf(err, errlen, "projection blob: invalid shape %llu components x %llu features",
                 (unsigned long long)k, (unsigned long long)F);
        return REDUCER_EINVAL;
    }
    uint64_t values = F + k * F + 2 * k;
    if (len != head + 8 * values) {
        snprintf(err, errlen, "projection blob: %zu bytes, expected %llu for %llu x %llu",
                 len, (unsigned long long)(head + 8 * values), (unsigned long long)k,
                 (unsigned long long)F);
        return REDUCER_EINVAL;
    }
    if (k == 0)
        return 0;
    double fitted_at = get_f64(p + 36);
    const unsigned char *q = p + head;
    for (uint64_t i = 0; i < values; i++)
        if (!isfinite(get_f64(q + 8 * i))) {
            snprintf(err, errlen, "projection blob: value %llu is not finite",
                     (unsigned long long)i);
            return REDUCER_EINVAL;
        }
    if (!isfinite(fitted_at)) {
        snprintf(err, errlen, "projection blob: fitted_at is not finite");
        return REDUCER_EINVAL;
    }
    out->mean = malloc(F * sizeof(double));
    out->components = malloc(k * F * sizeof(double));
    out->explained_variance = malloc(k * sizeof(double));
    out->explained_variance_ratio = malloc(k * sizeof(double));
    if (!out->mean || !out->components || !out->explained_variance ||
        !out->explained_variance_ratio) {
        pca_model_free(out);
        snprintf(err, errlen, "out of memory");
        return REDUCER_ENOMEM;
    }
    for (uint64_t j = 0; j < F; j++, q += 8)
        out->mean[j] = get_f64(q);
    for (uint64_t j = 0; j < k * F; j++, q += 8)
        out->components[j] = get_f64(q);
    for (uint64_t j = 0; j < k; j++, q += 8)
        out->explained_variance[j] = get_f64(q);
    for (uint64_t j = 0; j < k; j++, q += 8)
        out->explained_variance_ratio[j] = get_f64(q);
    out->feature_count = (size_t)F;
    out->k = (size_t)k;
    out->sample_count = get_u64(p + 28);
    out->fitted_at = fitted_at;
    return 0;
}
