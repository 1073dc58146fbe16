/*
 * cvt.c - k-d tree and seeded k-means for the CVT archive (see cvt.h).
 *
 * The tree splits on the dimension of widest spread at the median, down to leaves of at
 * most CVT_LEAF points. A query descends to the nearer side first and visits the far
 * side only when the distance to the splitting plane does not exceed the current worst
 * accepted distance (equality included, so a tie with a lower index is never missed).
 * The plane distance is a lower bound of the floating-point distance too: rounding is
 * monotonic and every summand is non-negative.
 */
#include "cvt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* Keep a*b+c as two roundings on every target: results must not depend on the machine. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define CVT_LEAF 8

typedef struct cvt_node {
    uint32_t start, end;        /* range in tree->order */
    int32_t left, right;        /* child nodes, -1 for a leaf */
    uint32_t split_dim;
    double split;
} cvt_node;

struct cvt_tree {
    const double *points;
    size_t n, dim;
    uint32_t *order;            /* point indices, permuted so every node is a range */
    cvt_node *nodes;
    size_t node_count, node_capacity;
};

double cvt_distance2(const double *a, const double *b, size_t dim)
{
    double s = 0.0;
    for (size_t d = 0; d < dim; d++) {
        double t = a[d] - b[d];
        s += t * t;
    }
    return s;
}

/* Quickselect on order[lo..hi) by coordinate d: afterwards position k holds the value
 * of rank k, with no greater value before it and no smaller one after it. Three-way
 * partition, so runs of equal coordinates cost nothing extra. */
static void select_kth(const cvt_tree *t, uint32_t *order, size_t lo, size_t hi, size_t k,
                       size_t d)
{
    const double *p = t->points;
    size_t dim = t->dim;
    while (hi - lo > 1) {
        double pivot = p[(size_t)order[lo + (hi - lo) / 2] * dim + d];
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            double v = p[(size_t)order[i] * dim + d];
            uint32_t tmp = order[i];
            if (v < pivot) {
                order[i++] = order[lt];
                order[lt++] = tmp;
            } else if (v > pivot) {
                order[i] = order[--gt];
                order[gt] = tmp;
            } else {
                i++;
            }
        }
        if (k < lt)
            hi = lt;
        else if (k >= gt)
            lo = gt;
        else
            return;
    }
}

/* Builds the subtree over order[start..end); returns its node index or -1 (no memory). */
static int32_t build_node(cvt_tree *t, uint32_t start, uint32_t end)
{
    if (t->node_count == t->node_capacity) {
        size_t cap = t->node_capacity ? t->node_capacity * 2 : 64;
        cvt_node *grown = realloc(t->nodes, cap * sizeof *grown);
        if (!grown)
            return -1;
        t->nodes = grown;
        t->node_capacity = cap;
    }
    int32_t id = (int32_t)t->node_count++;
    cvt_node node = {start, end, -1, -1, 0, 0.0};
    if (end - start > CVT_LEAF) {
        /* the dimension of widest spread */
        double best_spread = -1.0;
        for (size_t d = 0; d < t->dim; d++) {
            double lo = INFINITY, hi = -INFINITY;
            for (uint32_t i = start; i < end; i++) {
                double v = t->points[(size_t)t->order[i] * t->dim + d];
                if (v < lo)
                    lo = v;
                if (v > hi)
                    hi = v;
            }
            if (hi - lo > best_spread) {
                best_spread = hi - lo;
                node.split_dim = (uint32_t)d;
            }
        }
        if (best_spread > 0.0) {
            uint32_t mid = start + (end - start) / 2;
            select_kth(t, t->order, start, end, mid, node.split_dim);
            node.split = t->points[(size_t)t->order[mid] * t->dim + node.split_dim];
            int32_t left = build_node(t, start, mid);
            if (left < 0)
                return -1;
            int32_t right = build_node(t, mid, end);
            if (right < 0)
                return -1;
            node.left = left;
            node.right = right;
        }
    }
    t->nodes[id] = node;
    return id;
}

cvt_tree *cvt_tree_build(const double *points, size_t n, size_t dim)
{
    if (n == 0 || n > UINT32_MAX || dim == 0)
        return NULL;
    cvt_tree *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->points = points;
    t->n = n;
    t->dim = dim;
    t->order = malloc(n * sizeof *t->order);
    if (!t->order)
        goto fail;
    for (size_t i = 0; i < n; i++)
        t->order[i] = (uint32_t)i;
    if (build_node(t, 0, (uint32_t)n) < 0)
        goto fail;
    return t;
fail:
    cvt_tree_free(t);
    return NULL;
}

void cvt_tree_free(cvt_tree *t)
{
    if (!t)
        return;
    free(t->order);
    free(t->nodes);
    free(t);
}

/* (d, i) < (best_d, best_i) lexicographically. */
static inline int closer(double d, size_t i, double best_d, size_t best_i)
{
    return d < best_d || (d == best_d && i < best_i);
}

static void nearest_rec(const cvt_tree *t, int32_t id, const double *q, double *best_d,
                        size_t *best_i)
{
    const cvt_node *node = &t->nodes[id];
    if (node->left < 0) {
        for (uint32_t k = node->start; k < node->end; k++) {
            size_t i = t->order[k];
            double d = cvt_distance2(q, t->points + i * t->dim, t->dim);
            if (closer(d, i, *best_d, *best_i)) {
                *best_d = d;
                *best_i = i;
            }
        }
        return;
    }
    double diff = q[node->split_dim] - node->split;
    int32_t near = diff < 0 ? node->left : node->right;
    int32_t far = diff < 0 ? node->right : node->left;
    nearest_rec(t, near, q, best_d, best_i);
    if (diff * diff <= *best_d)
        nearest_rec(t, far, q, best_d, best_i);
}

size_t cvt_tree_nearest(const cvt_tree *t, const double *q)
{
    double best_d = INFINITY;
    size_t best_i = SIZE_MAX;
    nearest_rec(t, 0, q, &best_d, &best_i);
    return best_i;
}

/* A bounded list kept sorted by (distance, index): out/dist hold `count` of `k`. */
typedef struct knn_state {
    size_t k, count;
    size_t *out;
    double *dist;
} knn_state;

static void knn_offer(knn_state *s, double d, size_t i)
{
    if (s->count == s->k && !closer(d, i, s->dist[s->k - 1], s->out[s->k - 1]))
        return;
    size_t pos = s->count < s->k ? s->count++ : s->k - 1;
    while (pos > 0 && closer(d, i, s->dist[pos - 1], s->out[pos - 1])) {
        s->dist[pos] = s->dist[pos - 1];
        s->out[pos] = s->out[pos - 1];
        pos--;
    }
    s->dist[pos] = d;
    s->out[pos] = i;
}

static void knn_rec(const cvt_tree *t, int32_t id, const double *q, knn_state *s)
{
    const cvt_node *node = &t->nodes[id];
    if (node->left < 0) {
        for (uint32_t k = node->start; k < node->end; k++) {
            size_t i = t->order[k];
            knn_offer(s, cvt_distance2(q, t->points + i * t->dim, t->dim), i);
        }
        return;
    }
    double diff = q[node->split_dim] - node->split;
    int32_t near = diff < 0 ? node->left : node->right;
    int32_t far = diff < 0 ? node->right : node->left;
    knn_rec(t, near, q, s);
    if (s->count < s->k || diff * diff <= s->dist[s->k - 1])
        knn_rec(t, far, q, s);
}

void cvt_tree_k_nearest(const cvt_tree *t, const double *q, size_t k, size_t *out,
                        double *scratch)
{
    if (k == 0)
        return;
    if (k > t->n)
        k = t->n;
    knn_state s = {k, 0, out, scratch};
    knn_rec(t, 0, q, &s);
}

int cvt_kmeans(const double *lower, const double *upper, size_t dim, size_t k,
               size_t samples, uint64_t seed, size_t iterations, double *centroids)
{
    int rc = -1;
    double *x = NULL, *sums = NULL;
    uint32_t *assign = NULL, *pick = NULL;
    size_t *counts = NULL;
    if (k == 0 || samples < k || dim == 0 || samples > UINT32_MAX)
        return -1;
    x = malloc(samples * dim * sizeof *x);
    sums = malloc(k * dim * sizeof *sums);
    assign = malloc(samples * sizeof *assign);
    pick = malloc(samples * sizeof *pick);
    counts = malloc(k * sizeof *counts);
    if (!x || !sums || !assign || !pick || !counts)
        goto out;

    rng_t rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < samples; i++)
        for (size_t d = 0; d < dim; d++)
            x[i * dim + d] = lower[d] + (upper[d] - lower[d]) * rng_double(&rng);

    /* k distinct samples: the first k of a Fisher-Yates shuffle */
    for (size_t i = 0; i < samples; i++)
        pick[i] = (uint32_t)i;
    for (size_t i = 0; i < k; i++) {
        size_t j = i + (size_t)rng_below(&rng, samples - i);
        uint32_t tmp = pick[i];
        pick[i] = pick[j];
        pick[j] = tmp;
        memcpy(centroids + i * dim, x + (size_t)pick[i] * dim, dim * sizeof *x);
    }

    /* tolerance: 1e-4 x the mean per-dimension variance of the samples */
    double variance = 0.0;
    for (size_t d = 0; d < dim; d++) {
        double mean = 0.0, m2 = 0.0;
        for (size_t i = 0; i < samples; i++)
            mean += x[i * dim + d];
        mean /= (double)samples;
        for (size_t i = 0; i < samples; i++) {
            double t = x[i * dim + d] - mean;
            m2 += t * t;
        }
        variance += m2 / (double)samples;
    }
    double tolerance = 1e-4 * variance / (double)dim;

    for (size_t i = 0; i < samples; i++)
        assign[i] = UINT32_MAX;
    for (size_t round = 0; round < iterations; round++) {
        cvt_tree *tree = cvt_tree_build(centroids, k, dim);
        if (!tree)
            goto out;
        size_t changed = 0;
        for (size_t i = 0; i < samples; i++) {
            uint32_t c = (uint32_t)cvt_tree_nearest(tree, x + i * dim);
            if (c != assign[i]) {
                assign[i] = c;
                changed++;
            }
        }
        cvt_tree_free(tree);
        if (changed == 0)
            break;
        memset(sums, 0, k * dim * sizeof *sums);
        memset(counts, 0, k * sizeof *counts);
        for (size_t i = 0; i < samples; i++) {
            double *s = sums + (size_t)assign[i] * dim;
            for (size_t d = 0; d < dim; d++)
                s[d] += x[i * dim + d];
            counts[assign[i]]++;
        }
        double shift = 0.0;
        for (size_t c = 0; c < k; c++) {
            if (counts[c] == 0)
                continue;   /* an empty cluster keeps its centroid */
            for (size_t d = 0; d < dim; d++) {
                double v = sums[c * dim + d] / (double)counts[c];
                double t = v - centroids[c * dim + d];
                shift += t * t;
                centroids[c * dim + d] = v;
            }
        }
        if (shift <= tolerance)
            break;
    }
    rc = 0;
out:
    free(x);
    free(sums);
    free(assign);
    free(pick);
    free(counts);
    return rc;
}
