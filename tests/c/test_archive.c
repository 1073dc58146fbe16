/*
 * The archive core against a brute-force reference written here from the contract
 * (§3.8, pyribs 0.8.3 semantics): long random add sequences on grids of 1 to 8
 * dimensions with ties, exact boundaries and out-of-range measures, in plain MAP-Elites
 * and CMA-MAE modes; neighbours (both strategies) against a full scan; sampling against
 * an independent replay of the generator; option checking; huge grids.
 * (Persistence and corrupted blobs: test_archive_blob.c; CVT: test_archive_cvt.c.)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "check.h"
#include "rng.h"

/* --- the reference: every occupied cell in a flat list, linear search --------------------- */

typedef struct ref_elite {
    uint64_t cell;
    double objective, threshold, timestamp;
    double measures[8];
    char hash[64];
    char *metadata;                 /* NULL or malloc'd copy */
    double solution[8];
    int solution_len;               /* -1: none */
} ref_elite;

typedef struct ref_archive {
    size_t dim;
    uint64_t dims[8];
    double lower[8], upper[8];
    double lr, tmin, eps;
    ref_elite *elites;
    size_t count, cap;
    double objective_sum, obj_max;
    int has_obj;
} ref_archive;

static uint64_t ref_index(const ref_archive *r, const double *m)
{
    uint64_t cell = 0;
    for (size_t d = 0; d < r->dim; d++) {
        /* the contract: int((C*(m - lo) + eps) / (hi - lo)) clipped to [0, C-1]; a value
         * too large for an integer goes to the last cell */
        double v = ((double)r->dims[d] * (m[d] - r->lower[d]) + r->eps) /
                   (r->upper[d] - r->lower[d]);
        uint64_t g;
        if (v < 0)
            g = 0;
        else if (v >= (double)r->dims[d])
            g = r->dims[d] - 1;
        else
            g = (uint64_t)floor(v);
        cell = cell * r->dims[d] + g;
    }
    return cell;
}

static ref_elite *ref_find(ref_archive *r, uint64_t cell)
{
    for (size_t i = 0; i < r->count; i++)
        if (r->elites[i].cell == cell)
            return &r->elites[i];
    return NULL;
}

static void ref_add(ref_archive *r, const archive_entry *e, archive_add_result *out)
{
    uint64_t cell = ref_index(r, e->measures);
    ref_elite *x = ref_find(r, cell);
    double thr = x ? x->threshold : r->tmin;
    out->cell = cell;
    if (!(e->objective > thr)) {
        out->status = 0;
        out->delta = e->objective - thr;
        return;
    }
    double base = x ? thr : (r->tmin == -INFINITY ? 0.0 : r->tmin);
    double prev = x ? x->objective : 0.0;
    out->status = x ? 1 : 2;
    out->delta = e->objective - base;
    if (!x) {
        if (r->count == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 64;
            r->elites = realloc(r->elites, r->cap * sizeof *r->elites);
        }
        x = &r->elites[r->count++];
        x->cell = cell;
        x->metadata = NULL;
    }
    if (r->tmin == -INFINITY) {
        x->threshold = e->objective;
    } else {
        /* golden semantics: ratio = (1 - lr)^1; ratio*old + objective*(1 - ratio) */
        double ratio = 1.0 - r->lr;
        x->threshold = ratio * base + e->objective * (1.0 - ratio);
    }
    x->objective = e->objective;
    x->timestamp = e->timestamp;
    memcpy(x->measures, e->measures, r->dim * sizeof(double));
    memcpy(x->hash, e->commit_hash, e->commit_hash_len);
    x->hash[e->commit_hash_len] = 0;
    free(x->metadata);
    x->metadata = e->metadata ? strndup(e->metadata, e->metadata_len) : NULL;
    x->solution_len = e->solution ? (int)e->solution_len : -1;
    if (e->solution)
        memcpy(x->solution, e->solution, e->solution_len * sizeof(double));
    r->objective_sum = r->objective_sum + (e->objective - prev);
    if (!r->has_obj || e->objective > r->obj_max)
        r->obj_max = e->objective;
    r->has_obj = 1;
}

static void ref_free(ref_archive *r)
{
    for (size_t i = 0; i < r->count; i++)
        free(r->elites[i].metadata);
    free(r->elites);
}

/* Compares every elite and the stats of the core with the reference. */
static void compare_state(const archive_t *a, ref_archive *r, const char *what)
{
    CHECK_MSG(archive_size(a) == r->count, "%s: %zu elites, reference %zu", what,
              archive_size(a), r->count);
    for (size_t i = 0; i < r->count; i++) {
        const ref_elite *x = &r->elites[i];
        archive_elite e;
        if (!archive_get(a, x->cell, &e)) {
            CHECK_MSG(0, "%s: cell %llu missing", what, (unsigned long long)x->cell);
            continue;
        }
        CHECK(e.objective == x->objective && e.threshold == x->threshold);
        CHECK(e.timestamp == x->timestamp);
        CHECK(memcmp(e.measures, x->measures, r->dim * sizeof(double)) == 0);
        CHECK_STR(e.commit_hash, x->hash);
        CHECK((e.metadata == NULL) == (x->metadata == NULL));
        if (e.metadata && x->metadata)
            CHECK(e.metadata_len == strlen(x->metadata) &&
                  memcmp(e.metadata, x->metadata, e.metadata_len) == 0);
        CHECK((int)(e.solution ? (int)e.solution_len : -1) == x->solution_len);
        if (e.solution && x->solution_len > 0)
            CHECK(memcmp(e.solution, x->solution, e.solution_len * sizeof(double)) == 0);
    }
    /* the dense iteration visits every elite exactly once */
    uint64_t xor_core = 0, xor_ref = 0;
    for (size_t pos = 0; pos < archive_size(a); pos++)
        xor_core ^= archive_cell_at(a, pos) * 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < r->count; i++)
        xor_ref ^= r->elites[i].cell * 0x9e3779b97f4a7c15ULL;
    CHECK(xor_core == xor_ref);
    archive_stats s;
    archive_get_stats(a, &s);
    uint64_t cells = 1;
    for (size_t d = 0; d < r->dim; d++)
        cells *= r->dims[d];
    CHECK(s.num_elites == r->count && s.cells == cells);
    CHECK(s.coverage == (double)r->count / (double)cells);
    CHECK(s.qd_score == r->objective_sum);
    CHECK(s.norm_qd_score == r->objective_sum / (double)cells);
    CHECK(s.has_objective == r->has_obj);
    if (r->has_obj)
        CHECK(s.obj_max == r->obj_max && s.obj_mean == r->objective_sum / (double)r->count);
}

/* --- neighbours: brute force over the reference ------------------------------------------ */

static void coords_of(const ref_archive *r, uint64_t cell, uint64_t *g)
{
    for (size_t d = r->dim; d-- > 0;) {
        g[d] = cell % r->dims[d];
        cell /= r->dims[d];
    }
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void check_neighbours(const archive_t *a, const ref_archive *r, uint64_t cell,
                             uint64_t radius)
{
    uint64_t *want = malloc((r->count + 1) * sizeof *want);
    size_t n = 0;
    uint64_t gc[8], g[8];
    coords_of(r, cell, gc);
    for (size_t i = 0; i < r->count; i++) {
        if (r->elites[i].cell == cell)
            continue;
        coords_of(r, r->elites[i].cell, g);
        int inside = 1;
        for (size_t d = 0; d < r->dim; d++) {
            uint64_t dist = g[d] > gc[d] ? g[d] - gc[d] : gc[d] - g[d];
            inside &= dist <= radius;
        }
        if (inside)
            want[n++] = r->elites[i].cell;
    }
    if (radius == 0)
        n = 0;
    qsort(want, n, sizeof *want, cmp_u64);
    archive_neighbour_strategy strategies[] = {ARCHIVE_NEIGHBOURS_AUTO, ARCHIVE_NEIGHBOURS_BALL,
                                               ARCHIVE_NEIGHBOURS_SCAN};
    archive_cell_list list = {0};
    for (int s = 0; s < 3; s++) {
        /* the ball of a huge sparse grid is too large to enumerate in a test */
        if (strategies[s] == ARCHIVE_NEIGHBOURS_BALL && pow(2.0 * (double)radius + 1, (double)r->dim) > 2e6)
            continue;
        archive_error err;
        CHECK(archive_neighbours(a, cell, radius, strategies[s], &list, &err) == 0);
        CHECK_MSG(list.count == n, "strategy %d: %zu neighbours, reference %zu", s, list.count,
                  n);
        if (list.count == n && n > 0)
            CHECK(memcmp(list.cells, want, n * sizeof *want) == 0);
    }
    archive_cell_list_free(&list);
    free(want);
}

/* --- random sequences ----------------------------------------------------------------------- */

typedef struct config {
    size_t dim;
    uint64_t cells_per_dim;
    double lr, tmin;
} config;

/* A measure that is uniform, exactly on a boundary, just beside one, or out of range. */
static double random_measure(rng_t *g, double lo, double hi, uint64_t c)
{
    double span = hi - lo;
    switch (rng_below(g, 8)) {
    case 0:
    case 1:
    case 2:
        return lo + span * rng_double(g);
    case 3:   /* a boundary of the linspace */
        return lo + span * (double)rng_below(g, c + 1) / (double)c;
    case 4: { /* near a boundary, within the epsilon's reach */
        double b = lo + span * (double)rng_below(g, c + 1) / (double)c;
        return b - span * 1e-7 * (rng_double(g) * 2.0 - 1.0);
    }
    case 5:   /* out of range, near */
        return rng_below(g, 2) ? hi + span * rng_double(g) : lo - span * rng_double(g);
    case 6:   /* far out of range */
        return (rng_below(g, 2) ? 1 : -1) * 1e12 * (1 + rng_double(g));
    default:  /* revisit a small set of points so cells get contested */
        return lo + span * (double)rng_below(g, 4) / 4.0;
    }
}

static double random_objective(rng_t *g)
{
    switch (rng_below(g, 4)) {
    case 0:
        return (double)rng_below(g, 5);           /* ties */
    case 1:
        return (double)rng_below(g, 9) * 0.25 - 1; /* ties, negatives */
    default:
        return rng_normal(g) * 3.0;
    }
}

static void run_sequence(const config *c, uint64_t seed, size_t steps)
{
    rng_t g;
    rng_seed(&g, seed);
    ref_archive r = {0};
    r.dim = c->dim;
    r.lr = c->lr;
    r.tmin = c->tmin;
    r.eps = 1e-6;
    uint64_t dims[8];
    for (size_t d = 0; d < c->dim; d++) {
        dims[d] = r.dims[d] = c->cells_per_dim + (d % 2);   /* uneven grids too */
        r.lower[d] = -1.0 - (double)d;
        r.upper[d] = 1.5 + (double)d * 0.5;
    }
    archive_options o;
    archive_options_defaults(&o);
    o.learning_rate = c->lr;
    o.threshold_min = c->tmin;
    archive_t *a;
    archive_error err;
    CHECK(archive_new_grid(c->dim, dims, r.lower, r.upper, &o, &a, &err) == 0);
    if (!a)
        return;
    if (seed % 2)   /* reserving capacity up front changes nothing but speed */
        CHECK(archive_reserve(a, steps, &err) == 0);
    char what[96];
    snprintf(what, sizeof what, "D=%zu C=%llu lr=%g tmin=%g", c->dim,
             (unsigned long long)c->cells_per_dim, c->lr, c->tmin);
    int mismatches = 0;
    archive_entry batch[16];
    double batch_m[16][8], batch_sol[16][8];
    char batch_hash[16][48], batch_meta[16][32];
    size_t in_batch = 0;
    for (size_t step = 0; step < steps; step++) {
        /* one entry: hex or plain hashes, metadata of varying size, varying solutions */
        archive_entry *e = &batch[in_batch];
        double *m = batch_m[in_batch];
        for (size_t d = 0; d < c->dim; d++)
            m[d] = random_measure(&g, r.lower[d], r.upper[d], r.dims[d]);
        memset(e, 0, sizeof *e);
        e->measures = m;
        e->objective = random_objective(&g);
        e->timestamp = (double)step;
        if (rng_below(&g, 2))
            snprintf(batch_hash[in_batch], 48, "%040llx", (unsigned long long)step);
        else
            snprintf(batch_hash[in_batch], 48, "Commit-%zu", step);
        e->commit_hash = batch_hash[in_batch];
        e->commit_hash_len = strlen(batch_hash[in_batch]);
        if (rng_below(&g, 2)) {
            size_t mlen = (size_t)rng_below(&g, 30);
            memset(batch_meta[in_batch], 'a' + (int)(step % 26), mlen);
            e->metadata = batch_meta[in_batch];
            e->metadata_len = mlen;
        }
        switch (rng_below(&g, 3)) {
        case 0:
            e->solution = m;   /* Loreley's shape: solution == measures */
            e->solution_len = c->dim;
            break;
        case 1: {
            size_t n = (size_t)rng_below(&g, 9);
            for (size_t k = 0; k < n; k++)
                batch_sol[in_batch][k] = (double)k - (double)step;
            e->solution = batch_sol[in_batch];
            e->solution_len = n;
            break;
        }
        default:
            break;
        }
        in_batch++;
        /* alternate single adds and batches of up to 16 */
        int flush = step % 64 < 32 || in_batch == 16 || step + 1 == steps;
        if (!flush)
            continue;
        archive_add_result got[16], want;
        if (in_batch == 1)
            CHECK(archive_add(a, &batch[0], &got[0], &err) == 0);
        else
            CHECK(archive_add_many(a, batch, in_batch, got, &err) == 0);
        for (size_t k = 0; k < in_batch; k++) {
            ref_add(&r, &batch[k], &want);
            if ((got[k].status != want.status || got[k].cell != want.cell ||
                 memcmp(&got[k].delta, &want.delta, sizeof want.delta) != 0) &&
                mismatches++ < 5)
                CHECK_MSG(0, "%s step %zu: got (%d, %.17g, %llu), want (%d, %.17g, %llu)",
                          what, step, got[k].status, got[k].delta,
                          (unsigned long long)got[k].cell, want.status, want.delta,
                          (unsigned long long)want.cell);
        }
        in_batch = 0;
        if (step % 500 < 32 && step % 16 == 15) {
            compare_state(a, &r, what);
            if (r.count) {
                uint64_t centre = r.elites[rng_below(&g, r.count)].cell;
                check_neighbours(a, &r, centre, rng_below(&g, 4));
                check_neighbours(a, &r, rng_below(&g, archive_cells(a)), 1 + rng_below(&g, 2));
            }
        }
    }
    compare_state(a, &r, what);
    if (r.count)
        check_neighbours(a, &r, r.elites[0].cell, 1000000);   /* radius beyond the grid */
    archive_free(a);
    ref_free(&r);
}

static void test_random_sequences(void)
{
    static const double lrs[] = {1.0, 0.5, 0.1, 1.0};
    static const double tmins[] = {-INFINITY, 0.0, -1.0, 0.5};
    uint64_t seed = 1;
    for (size_t dim = 1; dim <= 8; dim++) {
        for (int mode = 0; mode < 4; mode++) {
            uint64_t per_dim = dim <= 2 ? 7 : dim <= 4 ? 5 : 3;
            config c = {dim, per_dim, lrs[mode], tmins[mode]};
            run_sequence(&c, seed++, 1500);
        }
        /* a sparse, huge grid of the same dimension: 64 cells per dimension */
        config big = {dim, 64, 1.0, -INFINITY};
        run_sequence(&big, seed++, 800);
        /* single-cell dimensions */
        config one = {dim, 1, 1.0, -INFINITY};
        run_sequence(&one, seed++, 100);
    }
}

/* --- sampling ----------------------------------------------------------------------------- */

static archive_t *filled_grid(size_t n)
{
    uint64_t dims[4] = {32, 32, 32, 32};
    double lo[4] = {0, 0, 0, 0}, hi[4] = {1, 1, 1, 1};
    archive_t *a;
    archive_error err;
    if (archive_new_grid(4, dims, lo, hi, NULL, &a, &err) != 0)
        return NULL;
    rng_t g;
    rng_seed(&g, 99);
    while (archive_size(a) < n) {
        double m[4];
        for (int d = 0; d < 4; d++)
            m[d] = rng_double(&g);
        archive_entry e = {"c0ffee", 6, rng_double(&g), m, NULL, 0, NULL, 0, 0.0};
        archive_add_result r;
        archive_add(a, &e, &r, &err);
    }
    return a;
}

static void test_sampling(void)
{
    archive_t *a = filled_grid(1000);
    CHECK(a != NULL);
    if (!a)
        return;
    size_t size = archive_size(a);
    size_t out[2000], again[2000];
    rng_t g1, g2, replay;

    /* with replacement: exactly the draws below(size), in order */
    rng_seed(&g1, 7);
    rng_seed(&replay, 7);
    CHECK(archive_sample(a, &g1, 500, 1, out) == 500);
    int same = 1;
    for (size_t i = 0; i < 500; i++)
        same &= out[i] == (size_t)rng_below(&replay, size);
    CHECK(same);

    /* without replacement: a Fisher-Yates prefix, replayed on a plain array; the core
     * uses its sparse map for small n and an array for large n: both must agree */
    size_t sizes[] = {1, 3, 10, 100, 249, 250, 999, 1000, 1500};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        rng_seed(&g1, 1000 + n);
        rng_seed(&replay, 1000 + n);
        size_t got = archive_sample(a, &g1, n, 0, out);
        CHECK(got == (n < size ? n : size));
        size_t *v = malloc(size * sizeof *v);
        for (size_t i = 0; i < size; i++)
            v[i] = i;
        int ok = 1;
        for (size_t i = 0; i < got; i++) {
            size_t j = i + (size_t)rng_below(&replay, size - i);
            size_t t = v[i];
            v[i] = v[j];
            v[j] = t;
            ok &= out[i] == v[i];
        }
        CHECK_MSG(ok, "sample without replacement, n=%zu", n);
        /* distinct */
        char *seen = calloc(size, 1);
        for (size_t i = 0; i < got; i++) {
            CHECK(!seen[out[i]]);
            seen[out[i]] = 1;
        }
        free(seen);
        free(v);
    }

    /* determinism: the same seed, the same sequence; another seed, another */
    rng_seed(&g1, 5);
    rng_seed(&g2, 5);
    archive_sample(a, &g1, 100, 0, out);
    archive_sample(a, &g2, 100, 0, again);
    CHECK(memcmp(out, again, 100 * sizeof *out) == 0);
    rng_seed(&g2, 6);
    archive_sample(a, &g2, 100, 0, again);
    CHECK(memcmp(out, again, 100 * sizeof *out) != 0);

    /* uniform: 200000 draws over 1000 elites, every count within 5 sigma of 200 */
    size_t *counts = calloc(size, sizeof *counts);
    rng_seed(&g1, 11);
    for (int round = 0; round < 100; round++) {
        archive_sample(a, &g1, 2000, 1, out);
        for (size_t i = 0; i < 2000; i++)
            counts[out[i]]++;
    }
    int uniform = 1;
    for (size_t i = 0; i < size; i++)
        uniform &= fabs((double)counts[i] - 200.0) < 5 * sqrt(200.0);
    CHECK(uniform);
    free(counts);

    /* an empty archive samples nothing */
    archive_clear(a);
    CHECK(archive_sample(a, &g1, 5, 1, out) == 0);
    CHECK(archive_sample(a, &g1, 5, 0, out) == 0);
    archive_free(a);
}

/* --- options and shapes ----------------------------------------------------------------- */

static void test_options(void)
{
    uint64_t dims[3] = {4, 4, 4};
    double lo[3] = {0, 0, 0}, hi[3] = {1, 1, 1};
    archive_options o;
    archive_t *a = NULL;
    archive_error err;

    archive_options_defaults(&o);
    CHECK(o.learning_rate == 1.0 && o.threshold_min == -INFINITY && o.epsilon == 1e-6 &&
          o.qd_score_offset == 0.0);

    o.learning_rate = 0.5;   /* with threshold_min -inf: pyribs refuses */
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1 && a == NULL);
    CHECK(strstr(err.message, "threshold_min must be finite") != NULL);
    o.threshold_min = 0.0;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == 0);
    archive_free(a);
    o.learning_rate = 0.0;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    o.learning_rate = 1.5;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    o.learning_rate = NAN;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    archive_options_defaults(&o);
    o.threshold_min = NAN;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    o.threshold_min = INFINITY;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    archive_options_defaults(&o);
    o.epsilon = INFINITY;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);
    archive_options_defaults(&o);
    o.qd_score_offset = NAN;
    CHECK(archive_new_grid(3, dims, lo, hi, &o, &a, &err) == -1);

    double bad_hi[3] = {1, 0, 1};
    CHECK(archive_new_grid(3, dims, lo, bad_hi, NULL, &a, &err) == -1);
    CHECK(strstr(err.message, "dimension 2") != NULL);
    double inf_hi[3] = {1, INFINITY, 1};
    CHECK(archive_new_grid(3, dims, lo, inf_hi, NULL, &a, &err) == -1);
    double wide_lo[1] = {-1.7e308}, wide_hi[1] = {1.7e308};
    uint64_t d1[1] = {4};
    CHECK(archive_new_grid(1, d1, wide_lo, wide_hi, NULL, &a, &err) == -1);
    uint64_t zero[3] = {4, 0, 4};
    CHECK(archive_new_grid(3, zero, lo, hi, NULL, &a, &err) == -1);
    CHECK(archive_new_grid(0, dims, lo, hi, NULL, &a, &err) == -1);

    /* 63 bits: 2^62 cells work, 2^63 do not */
    uint64_t big[2] = {(uint64_t)1 << 31, (uint64_t)1 << 31};
    CHECK(archive_new_grid(2, big, lo, hi, NULL, &a, &err) == 0);
    CHECK(archive_cells(a) == (uint64_t)1 << 62);
    archive_free(a);
    uint64_t too_big[2] = {(uint64_t)1 << 32, (uint64_t)1 << 31};
    CHECK(archive_new_grid(2, too_big, lo, hi, NULL, &a, &err) == -1);
    CHECK(strstr(err.message, "63 bits") != NULL);
    uint64_t max63[3] = {3, 715827883, 4294967297ULL};   /* product > 2^63 - 1 */
    CHECK(archive_new_grid(3, max63, lo, hi, NULL, &a, &err) == -1);

    CHECK(archive_new_grid(3, dims, lo, hi, NULL, &a, &err) == 0);
    CHECK(archive_reserve(a, (size_t)ARCHIVE_MAX_ELITES + 1, &err) == -1);
    CHECK(archive_reserve(a, 100000, &err) == 0 && archive_size(a) == 0);
    archive_free(a);

    /* several archives side by side do not share state */
    archive_t *x, *y;
    CHECK(archive_new_grid(3, dims, lo, hi, NULL, &x, &err) == 0);
    CHECK(archive_new_grid(3, dims, lo, hi, NULL, &y, &err) == 0);
    double m[3] = {0.1, 0.2, 0.3};
    archive_entry e = {"abc", 3, 1.0, m, NULL, 0, NULL, 0, 0.0};
    archive_add_result r;
    CHECK(archive_add(x, &e, &r, &err) == 0 && r.status == 2);
    CHECK(archive_size(x) == 1 && archive_size(y) == 0);
    CHECK(archive_add(y, &e, &r, &err) == 0 && r.status == 2);

    /* bad entries name what is wrong and change nothing */
    archive_entry bad = e;
    bad.commit_hash_len = 0;
    CHECK(archive_add(x, &bad, &r, &err) == -1 && strstr(err.message, "commit_hash"));
    bad = e;
    bad.objective = NAN;
    CHECK(archive_add(x, &bad, &r, &err) == -1 && strstr(err.message, "objective"));
    double nan_m[3] = {0.1, NAN, 0.3};
    bad = e;
    bad.measures = nan_m;
    CHECK(archive_add(x, &bad, &r, &err) == -1 && strstr(err.message, "measure 2"));
    double inf_sol[1] = {INFINITY};
    bad = e;
    bad.solution = inf_sol;
    bad.solution_len = 1;
    CHECK(archive_add(x, &bad, &r, &err) == -1 && strstr(err.message, "solution"));
    bad = e;
    bad.timestamp = NAN;
    CHECK(archive_add(x, &bad, &r, &err) == -1 && strstr(err.message, "timestamp"));
    archive_entry many[3] = {e, e, e};
    many[2].objective = INFINITY;
    archive_add_result rs[3];
    CHECK(archive_add_many(x, many, 3, rs, &err) == -1 && strstr(err.message, "entry 2"));
    archive_elite got;
    CHECK(archive_get(x, r.cell, &got) && got.objective == 1.0 && archive_size(x) == 1);
    uint64_t cell;
    CHECK(archive_index_of(x, nan_m, &cell, &err) == -1);
    CHECK(archive_neighbours(x, archive_cells(x), 1, 0, &(archive_cell_list){0}, &err) == -1);
    uint64_t coords[3];
    CHECK(archive_grid_coordinates(x, 63, coords, &err) == 0 && coords[0] == 3 &&
          coords[1] == 3 && coords[2] == 3);
    CHECK(archive_grid_coordinates(x, 64, coords, &err) == -1);
    archive_free(x);
    archive_free(y);
}

/* pyribs' int32 cast sends a huge positive measure to cell 0; here it goes to the last */
static void test_huge_measures(void)
{
    uint64_t dims[1] = {8};
    double lo[1] = {-1}, hi[1] = {1};
    archive_t *a;
    archive_error err;
    CHECK(archive_new_grid(1, dims, lo, hi, NULL, &a, &err) == 0);
    double cases[][2] = {{1e12, 7}, {-1e12, 0}, {1.7976931348623157e308, 7},
                         {-1.7976931348623157e308, 0}, {749999999.0, 7}, {5e-324, 4},
                         {-0.0, 4}, {-1.125, 0}, {3.0, 7}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t cell;
        CHECK(archive_index_of(a, &cases[i][0], &cell, &err) == 0);
        CHECK_MSG(cell == (uint64_t)cases[i][1], "%.17g -> %llu", cases[i][0],
                  (unsigned long long)cell);
    }
    archive_free(a);
}

/* Replacing elites with entries of changing size compacts the arena and keeps content. */
static void test_arena_churn(void)
{
    uint64_t dims[2] = {4, 4};
    double lo[2] = {0, 0}, hi[2] = {1, 1};
    archive_t *a;
    archive_error err;
    CHECK(archive_new_grid(2, dims, lo, hi, NULL, &a, &err) == 0);
    static char meta[5000];
    memset(meta, 'm', sizeof meta);
    char hash[32];
    for (int i = 0; i < 4000; i++) {
        double m[2] = {(i % 4) / 4.0 + 0.1, ((i / 4) % 4) / 4.0 + 0.1};
        snprintf(hash, sizeof hash, "h%d", i);
        size_t mlen = (size_t)(i * 7919) % sizeof meta;
        archive_entry e = {hash, strlen(hash), (double)i, m, NULL, 0, meta, mlen, (double)i};
        archive_add_result r;
        CHECK(archive_add(a, &e, &r, &err) == 0);
        archive_elite got;
        CHECK(archive_get(a, r.cell, &got));
        CHECK(got.metadata_len == mlen && strcmp(got.commit_hash, hash) == 0);
    }
    CHECK(archive_size(a) == 16);
    for (size_t pos = 0; pos < 16; pos++) {
        archive_elite got;
        archive_elite_at(a, pos, &got);
        int i = (int)got.objective;
        char want[32];
        snprintf(want, sizeof want, "h%d", i);
        CHECK(i >= 3984 && strcmp(got.commit_hash, want) == 0);
        CHECK(got.metadata_len == (size_t)(i * 7919) % sizeof meta);
        size_t k = 0;
        while (k < got.metadata_len && got.metadata[k] == 'm')
            k++;
        CHECK(k == got.metadata_len);
    }
    archive_free(a);
}

int main(void)
{
    test_options();
    test_huge_measures();
    test_random_sequences();
    test_sampling();
    test_arena_churn();
    return CHECK_DONE();
}
