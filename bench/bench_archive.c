/*
 * bench_archive - the archive core's speed and memory on Loreley's default grid
 * (32^4 cells over [-6, 6]^4) at 10^3, 10^5 and 10^6 occupied cells. Every figure is
 * the median of many timed rounds. Elites look like Loreley's: a 40-digit commit hash,
 * solution = measures, no metadata (see bench/archive.md).
 *
 *   build/bench_archive           all figures
 *   build/bench_archive rss       only the resident memory of 10^6 elites (fresh process)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "archive.h"
#include "rng.h"

#define DIM 4
#define CELLS_PER_DIM 32
#define ROUND 1000   /* operations per timed round */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static archive_t *new_default_grid(void)
{
    uint64_t dims[DIM] = {CELLS_PER_DIM, CELLS_PER_DIM, CELLS_PER_DIM, CELLS_PER_DIM};
    double lo[DIM] = {-6, -6, -6, -6}, hi[DIM] = {6, 6, 6, 6};
    archive_t *a;
    archive_error err;
    if (archive_new_grid(DIM, dims, lo, hi, NULL, &a, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        exit(1);
    }
    return a;
}

/* Measures inside `cell` (uniform within the cell, away from its edges). */
static void measures_in(uint64_t cell, rng_t *g, double *m)
{
    for (int d = DIM - 1; d >= 0; d--) {
        uint64_t c = cell % CELLS_PER_DIM;
        cell /= CELLS_PER_DIM;
        m[d] = -6.0 + 12.0 * ((double)c + 0.05 + 0.9 * rng_double(g)) / CELLS_PER_DIM;
    }
}

typedef struct batch {
    archive_entry e[ROUND];
    double m[ROUND][DIM];
    char hash[ROUND][41];
    archive_add_result r[ROUND];
} batch;

static void fill_entry(batch *b, size_t i, uint64_t cell, rng_t *g)
{
    measures_in(cell, g, b->m[i]);
    snprintf(b->hash[i], 41, "%016llx%016llx%08x", (unsigned long long)rng_next(g),
             (unsigned long long)rng_next(g), (unsigned)rng_next(g));
    b->e[i] = (archive_entry){b->hash[i], 40, rng_normal(g), b->m[i], b->m[i], DIM, NULL, 0,
                              1.7e9};
}

/* An archive with exactly n occupied cells, chosen at random. */
static archive_t *filled(size_t n, rng_t *g, batch *b)
{
    archive_t *a = new_default_grid();
    uint64_t total = archive_cells(a);
    uint32_t *perm = malloc(total * sizeof *perm);
    for (uint64_t i = 0; i < total; i++)
        perm[i] = (uint32_t)i;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t j = i + rng_below(g, total - i);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    archive_error err;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < ROUND ? n - done : ROUND;
        for (size_t i = 0; i < k; i++)
            fill_entry(b, i, perm[done + i], g);
        archive_add_many(a, b->e, k, b->r, &err);
        done += k;
    }
    free(perm);
    return a;
}

static long rss_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0)
            v = strtol(line + n + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static void bench_occupancy(size_t n, rng_t *g, batch *b)
{
    archive_t *a = filled(n, g, b);
    archive_error err;
    enum { ROUNDS = 200 };
    double t[ROUNDS];
    size_t size = archive_size(a);

    /* single add into occupied cells (status 0 or 1: occupancy stays n) */
    for (int r = 0; r < ROUNDS; r++) {
        for (size_t i = 0; i < ROUND; i++)
            fill_entry(b, i, archive_cell_at(a, rng_below(g, size)), g);
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i++)
            archive_add(a, &b->e[i], &b->r[i], &err);
        t[r] = (now_ns() - t0) / ROUND;
    }
    double add_occupied = median(t, ROUNDS);

    /* batch add into occupied cells, per elite */
    for (int r = 0; r < ROUNDS; r++) {
        for (size_t i = 0; i < ROUND; i++)
            fill_entry(b, i, archive_cell_at(a, rng_below(g, size)), g);
        double t0 = now_ns();
        archive_add_many(a, b->e, ROUND, b->r, &err);
        t[r] = (now_ns() - t0) / ROUND;
    }
    double batch_occupied = median(t, ROUNDS);

    /* single add into empty cells (status 2): 10 rounds, capacity reserved first (growth
     * is amortised and reported by the fill below) */
    enum { NEW_ROUNDS = 10 };
    archive_reserve(a, archive_size(a) + NEW_ROUNDS * ROUND, &err);
    for (int r = 0; r < NEW_ROUNDS; r++) {
        size_t k = 0;
        while (k < ROUND) {   /* empty cells only */
            uint64_t cell = rng_below(g, archive_cells(a));
            archive_elite probe;
            if (!archive_get(a, cell, &probe))
                fill_entry(b, k++, cell, g);
        }
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i++)
            archive_add(a, &b->e[i], &b->r[i], &err);
        t[r] = (now_ns() - t0) / ROUND;
    }
    double add_new = median(t, NEW_ROUNDS);
    size = archive_size(a);

    /* uniform sample of one elite: the draw (position and cell), then with every field */
    double sink = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i++) {
            size_t pos;
            archive_sample(a, g, 1, 1, &pos);
            sink += (double)archive_cell_at(a, pos);
        }
        t[r] = (now_ns() - t0) / ROUND;
    }
    double sample = median(t, ROUNDS);
    archive_elite e;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i++) {
            size_t pos;
            archive_sample(a, g, 1, 1, &pos);
            archive_elite_at(a, pos, &e);
            sink += e.objective + e.commit_hash[7];
        }
        t[r] = (now_ns() - t0) / ROUND;
    }
    double sample_read = median(t, ROUNDS);

    /* neighbours at radius 3 around a random occupied cell */
    archive_cell_list list = {0};
    enum { NB = 2000 };
    static double tn[NB];
    size_t found = 0;
    for (int r = 0; r < NB; r++) {
        uint64_t centre = archive_cell_at(a, rng_below(g, size));
        double t0 = now_ns();
        archive_neighbours(a, centre, 3, ARCHIVE_NEIGHBOURS_AUTO, &list, &err);
        tn[r] = now_ns() - t0;
        found += list.count;
    }
    double neighbours = median(tn, NB);
    archive_cell_list_free(&list);

    printf("%-9zu %9.1f %9.1f %9.1f %9.1f %9.1f %9.2f  (%zu found)\n", n, add_occupied,
           add_new, batch_occupied, sample, sample_read, neighbours / 1000.0, found / NB);
    if (sink == 12345.678)
        printf(" ");
    archive_free(a);
}

/* Neighbours where the ball is far larger than the archive: 8 dimensions of 64 cells
 * (2.8e14 cells), radius 3 (a ball of 7^8 = 5.8 million cells). */
static void bench_sparse_neighbours(size_t n, rng_t *g)
{
    uint64_t dims[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    double lo[8] = {0}, hi[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    archive_t *a;
    archive_error err;
    archive_new_grid(8, dims, lo, hi, NULL, &a, &err);
    while (archive_size(a) < n) {
        double m[8];
        for (int d = 0; d < 8; d++)   /* clustered, so some balls are not empty */
            m[d] = 0.5 + 0.08 * rng_normal(g);
        archive_entry e = {"0123456789abcdef0123456789abcdef01234567", 40, rng_double(g), m,
                           m, 8, NULL, 0, 0.0};
        archive_add_result r;
        archive_add(a, &e, &r, &err);
    }
    enum { Q = 200 };
    double t[Q];
    archive_cell_list list = {0};
    size_t found = 0;
    for (int q = 0; q < Q; q++) {
        uint64_t centre = archive_cell_at(a, rng_below(g, archive_size(a)));
        double t0 = now_ns();
        archive_neighbours(a, centre, 3, ARCHIVE_NEIGHBOURS_AUTO, &list, &err);
        t[q] = now_ns() - t0;
        found += list.count;
    }
    printf("neighbours r=3 on a 64^8 grid with %zu elites: %.1f us median (%zu found)\n", n,
           median(t, Q) / 1000.0, found / Q);
    archive_cell_list_free(&list);
    archive_free(a);
}

static void bench_persistence(rng_t *g, batch *b)
{
    double t0 = now_ns();
    archive_t *a = filled(1000000, g, b);
    printf("fill 0 -> 10^6 elites with add_many, growth included: %.0f ns per elite "
           "(entry preparation included)\n", (now_ns() - t0) / 1e6);
    enum { RUNS = 5 };
    double ts[RUNS], tl[RUNS];
    size_t len = 0;
    archive_error err;
    for (int r = 0; r < RUNS; r++) {
        unsigned char *blob;
        t0 = now_ns();
        if (archive_save(a, &blob, &len, &err) != 0)
            exit(1);
        ts[r] = now_ns() - t0;
        archive_t *back;
        t0 = now_ns();
        if (archive_load(blob, len, &back, &err) != 0) {
            fprintf(stderr, "load: %s\n", err.message);
            exit(1);
        }
        tl[r] = now_ns() - t0;
        archive_free(back);
        free(blob);
    }
    printf("save 10^6 elites: %.0f ms (median of %d), blob %.1f MB\n", median(ts, RUNS) / 1e6,
           RUNS, (double)len / 1e6);
    printf("load 10^6 elites: %.0f ms (median of %d)\n", median(tl, RUNS) / 1e6, RUNS);
    archive_free(a);
}

static void bench_rss(void)
{
    rng_t g;
    rng_seed(&g, 1);
    batch *b = malloc(sizeof *b);
    long before = rss_kb("VmRSS:");
    archive_t *a = filled(1000000, &g, b);
    long after = rss_kb("VmRSS:");
    printf("resident memory with 10^6 elites: %.1f MB (process), %.1f MB for the archive; "
           "peak %.1f MB\n",
           after / 1024.0, (after - before) / 1024.0, rss_kb("VmHWM:") / 1024.0);
    archive_free(a);
    free(b);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "rss") == 0) {
        bench_rss();
        return 0;
    }
    rng_t g;
    rng_seed(&g, 20251129);
    batch *b = malloc(sizeof *b);
    printf("archive benchmark: 32^4 grid, medians of rounds of %d operations\n", ROUND);
    printf("%-9s %9s %9s %9s %9s %9s %9s\n", "occupied", "add", "add new", "batch/el",
           "sample", "+read", "nbr r=3");
    printf("%-9s %9s %9s %9s %9s %9s %9s\n", "cells", "ns", "ns", "ns", "ns", "ns", "us");
    size_t sizes[] = {1000, 100000, 1000000};
    for (size_t i = 0; i < 3; i++)
        bench_occupancy(sizes[i], &g, b);
    bench_sparse_neighbours(1000, &g);
    bench_sparse_neighbours(100000, &g);
    bench_persistence(&g, b);
    free(b);
    fflush(stdout);
    /* the resident memory in a fresh process, so earlier runs do not count */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "'%s' rss", argv[0]);
    return system(cmd) == 0 ? 0 : 1;
}
