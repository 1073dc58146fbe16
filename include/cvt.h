/*
 * cvt.h - the geometry behind the CVT archive: a k-d tree over a fixed set of points
 * (exact nearest and k-nearest queries under squared Euclidean distance, ties broken by
 * the lower point index, so the answer equals a brute-force scan) and seeded k-means
 * (Lloyd) over uniform samples. Pure C, no Lua.
 */
#ifndef LORELEY_CVT_H
#define LORELEY_CVT_H

#include <stddef.h>
#include <stdint.h>

typedef struct cvt_tree cvt_tree;

/* Builds a tree over n points of `dim` values each (points[i * dim + d]). The points are
 * NOT copied: they must outlive the tree. Returns NULL when memory runs out or n == 0. */
cvt_tree *cvt_tree_build(const double *points, size_t n, size_t dim);
void cvt_tree_free(cvt_tree *tree);

/* Squared Euclidean distance, summed in dimension order (the order every caller uses,
 * so ties are decided identically everywhere). */
double cvt_distance2(const double *a, const double *b, size_t dim);

/* Index of the point nearest to q (lowest index among exact ties). */
size_t cvt_tree_nearest(const cvt_tree *tree, const double *q);

/* The k points nearest to q (k <= n), nearest first, ties by lower index, written to
 * out[0..k-1]. scratch must hold k doubles. */
void cvt_tree_k_nearest(const cvt_tree *tree, const double *q, size_t k, size_t *out,
                        double *scratch);

/*
 * Seeded k-means: draws `samples` points uniformly in [lower, upper] (rng_t seeded with
 * `seed`; dimension fastest), takes k distinct samples (a Fisher-Yates prefix) as the
 * initial centroids, then runs Lloyd rounds until no assignment changes, the centroids
 * move less than 1e-4 x the mean per-dimension variance of the samples (squared, summed),
 * or `iterations` rounds have run. An empty cluster keeps its centroid. Writes k x dim
 * values to centroids. Needs samples >= k >= 1. Returns 0, or -1 when memory runs out.
 */
int cvt_kmeans(const double *lower, const double *upper, size_t dim, size_t k,
               size_t samples, uint64_t seed, size_t iterations, double *centroids);

#endif
