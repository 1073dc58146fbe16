/*
 * The CVT archive: k-d tree nearest and k-nearest queries equal a brute-force scan
 * (ties included: lattice points make many); seeded k-means is deterministic and
 * improves on its initial centroids; CVT adds follow the same semantics as the grid
 * (checked against a per-cell reference); neighbours are the occupied cells among the
 * k nearest centroids.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "check.h"
#include "cvt.h"
#include "rng.h"

/* brute force: lowest index among the minimal squared distances */
static size_t brute_nearest(const double *pts, size_t n, size_t dim, const double *q)
{
    size_t best = 0;
    double best_d = INFINITY;
    for (size_t i = 0; i < n; i++) {
        double d = cvt_distance2(q, pts + i * dim, dim);
        if (d < best_d) {
            best_d = d;
            best = i;
        }
    }
    return best;
}

typedef struct ranked {
    double d;
    size_t i;
} ranked;

static int cmp_ranked(const void *x, const void *y)
{
    const ranked *a = x, *b = y;
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static void test_tree(void)
{
    rng_t g;
    rng_seed(&g, 77);
    for (size_t dim = 1; dim <= 16; dim *= 2) {
        for (int lattice = 0; lattice < 2; lattice++) {
            size_t n = 1 + (size_t)rng_below(&g, 600);
            double *pts = malloc(n * dim * sizeof *pts);
            for (size_t i = 0; i < n * dim; i++)
                pts[i] = lattice ? (double)rng_below(&g, 4) : rng_double(&g);
            cvt_tree *t = cvt_tree_build(pts, n, dim);
            CHECK(t != NULL);
            ranked *all = malloc(n * sizeof *all);
            size_t *knn = malloc(n * sizeof *knn);
            double *scratch = malloc(n * sizeof *scratch);
            int nearest_ok = 1, knn_ok = 1;
            for (int q = 0; q < 300; q++) {
                double query[16];
                for (size_t d = 0; d < dim; d++)
                    query[d] = lattice ? (double)rng_below(&g, 5) - 0.5 * (double)rng_below(&g, 2)
                                       : rng_double(&g) * 1.2 - 0.1;
                nearest_ok &= cvt_tree_nearest(t, query) == brute_nearest(pts, n, dim, query);
                for (size_t i = 0; i < n; i++) {
                    all[i].d = cvt_distance2(query, pts + i * dim, dim);
                    all[i].i = i;
                }
                qsort(all, n, sizeof *all, cmp_ranked);
                size_t k = 1 + (size_t)rng_below(&g, n < 20 ? n : 20);
                cvt_tree_k_nearest(t, query, k, knn, scratch);
                for (size_t i = 0; i < k; i++)
                    knn_ok &= knn[i] == all[i].i;
            }
            CHECK_MSG(nearest_ok, "nearest, dim %zu lattice %d", dim, lattice);
            CHECK_MSG(knn_ok, "k nearest, dim %zu lattice %d", dim, lattice);
            cvt_tree_free(t);
            free(pts);
            free(all);
            free(knn);
            free(scratch);
        }
    }
    CHECK(cvt_tree_build(NULL, 0, 2) == NULL);
}

/* mean squared distance of uniform probes to their nearest centroid */
static double quantisation_error(const double *c, size_t k, size_t dim)
{
    rng_t g;
    rng_seed(&g, 123);
    double sum = 0;
    for (int i = 0; i < 20000; i++) {
        double q[4];
        for (size_t d = 0; d < dim; d++)
            q[d] = rng_double(&g);
        sum += cvt_distance2(q, c + brute_nearest(c, k, dim, q) * dim, dim);
    }
    return sum / 20000;
}

static void test_kmeans(void)
{
    double lo[2] = {0, 0}, hi[2] = {1, 1};
    double a[64 * 2], b[64 * 2], c[64 * 2], init[64 * 2];
    CHECK(cvt_kmeans(lo, hi, 2, 64, 5000, 42, 50, a) == 0);
    CHECK(cvt_kmeans(lo, hi, 2, 64, 5000, 42, 50, b) == 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(cvt_kmeans(lo, hi, 2, 64, 5000, 43, 50, c) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    CHECK(cvt_kmeans(lo, hi, 2, 64, 5000, 42, 0, init) == 0);   /* no rounds: the samples */
    /* Lloyd rounds lower the quantisation error; a uniform 8x8 lattice has 1/(6*64) */
    double e_init = quantisation_error(init, 64, 2), e_final = quantisation_error(a, 64, 2);
    CHECK_MSG(e_final < e_init, "%g < %g", e_final, e_init);
    CHECK_MSG(e_final < 1.25 / (6.0 * 64), "%g", e_final);
    for (size_t i = 0; i < 128; i++)
        CHECK(a[i] > 0 && a[i] < 1);
    CHECK(cvt_kmeans(lo, hi, 2, 10, 5, 1, 10, a) == -1);   /* fewer samples than k */
}

static void test_cvt_archive(void)
{
    /* given centroids, with duplicates (exact ties) */
    size_t k = 40, dim = 3;
    double cent[40 * 3];
    rng_t g;
    rng_seed(&g, 5);
    for (size_t i = 0; i < k * dim; i++)
        cent[i] = (double)rng_below(&g, 3);
    double lo[3] = {0, 0, 0}, hi[3] = {2, 2, 2};
    archive_options o;
    archive_options_defaults(&o);
    o.learning_rate = 0.25;
    o.threshold_min = -0.5;
    archive_cvt_config cfg = {dim, lo, hi, cent, k, 0, 0, 0};
    archive_t *a;
    archive_error err;
    CHECK(archive_new_cvt(&cfg, &o, &a, &err) == 0);
    if (!a)
        return;
    CHECK(archive_get_kind(a) == ARCHIVE_CVT && archive_cells(a) == k);
    CHECK(archive_grid_dims(a) == NULL);

    /* per-cell reference state */
    int occupied[40] = {0};
    double thr[40], obj[40], sum = 0, max = -INFINITY;
    size_t count = 0;
    int ok = 1;
    for (int step = 0; step < 3000; step++) {
        double m[3];
        for (size_t d = 0; d < dim; d++)
            m[d] = rng_double(&g) * 2.4 - 0.2;
        double objective = rng_below(&g, 2) ? (double)rng_below(&g, 4) : rng_normal(&g);
        size_t cell = brute_nearest(cent, k, dim, m);
        archive_entry e = {"cafe", 4, objective, m, NULL, 0, NULL, 0, 0.0};
        archive_add_result r;
        CHECK(archive_add(a, &e, &r, &err) == 0);
        double t = occupied[cell] ? thr[cell] : o.threshold_min;
        int status = 0;
        double delta = objective - t;
        if (objective > t) {
            double ratio = 1.0 - o.learning_rate;
            thr[cell] = ratio * t + objective * (1.0 - ratio);
            sum = sum + (objective - (occupied[cell] ? obj[cell] : 0.0));
            status = occupied[cell] ? 1 : 2;
            count += !occupied[cell];
            occupied[cell] = 1;
            obj[cell] = objective;
            if (objective > max)
                max = objective;
        }
        ok &= r.cell == cell && r.status == status && r.delta == delta;
    }
    CHECK(ok);
    archive_stats s;
    archive_get_stats(a, &s);
    CHECK(s.num_elites == count && s.qd_score == sum && s.obj_max == max);
    CHECK(s.coverage == (double)count / (double)k);
    for (size_t c = 0; c < k; c++) {
        archive_elite e;
        CHECK(archive_get(a, c, &e) == occupied[c]);
        if (occupied[c])
            CHECK(e.threshold == thr[c] && e.objective == obj[c]);
    }

    /* neighbours: occupied among the r nearest other centroids, nearest first */
    archive_cell_list list = {0};
    ranked all[40];
    int nb_ok = 1;
    for (size_t c = 0; c < k; c++) {
        for (uint64_t r = 0; r <= k + 2; r += 3) {
            CHECK(archive_neighbours(a, c, r, ARCHIVE_NEIGHBOURS_AUTO, &list, &err) == 0);
            size_t n = 0;
            for (size_t i = 0; i < k; i++)
                if (i != c) {
                    all[n].d = cvt_distance2(cent + c * dim, cent + i * dim, dim);
                    all[n++].i = i;
                }
            qsort(all, n, sizeof *all, cmp_ranked);
            size_t want = 0;
            for (size_t i = 0; i < n && i < r; i++)
                if (occupied[all[i].i])
                    nb_ok &= want < list.count && list.cells[want++] == all[i].i;
            nb_ok &= want == list.count;
        }
    }
    CHECK(nb_ok);
    archive_cell_list_free(&list);
    archive_free(a);

    /* computed centroids are reproducible through the archive too */
    archive_cvt_config kc = {2, lo, hi, NULL, 30, 3000, 8, 25};
    archive_t *x, *y;
    CHECK(archive_new_cvt(&kc, NULL, &x, &err) == 0);
    CHECK(archive_new_cvt(&kc, NULL, &y, &err) == 0);
    CHECK(memcmp(archive_centroids(x), archive_centroids(y), 30 * 2 * sizeof(double)) == 0);
    archive_free(x);
    archive_free(y);

    /* configuration errors */
    archive_cvt_config bad = kc;
    bad.centroid_count = 0;
    CHECK(archive_new_cvt(&bad, NULL, &x, &err) == -1);
    bad = kc;
    bad.samples = 10;
    CHECK(archive_new_cvt(&bad, NULL, &x, &err) == -1 && strstr(err.message, "samples"));
    double nan_cent[2] = {NAN, 0};
    bad = kc;
    bad.centroids = nan_cent;
    bad.centroid_count = 1;
    CHECK(archive_new_cvt(&bad, NULL, &x, &err) == -1 && strstr(err.message, "not finite"));
    bad = kc;
    bad.dimensions = 0;
    CHECK(archive_new_cvt(&bad, NULL, &x, &err) == -1);
}

int main(void)
{
    test_tree();
    test_kmeans();
    test_cvt_archive();
    return CHECK_DONE();
}
