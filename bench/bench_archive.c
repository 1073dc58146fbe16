/*
 * bench_archive - the archive core's speed and memory on Loreley's default grid
 * (32^4 cells over [-6, 6]^4) at 10^3, 10^5 and 10^6 occupied cells. Every figure is
 * the median of many timed rounds. Elites look like Loreley's: a 40-digit commit hash,
 * solution = measures, no metadata (see bench/archive.md).
 *
 *   build/bench_archive             all figures
 *   build/bench_archive 1000000     only the occupancy table, for the sizes given
 *   build/bench_archive metadata=200 1000 1000000
 *                                   the table with metadata of 150 to 249 bytes per elite
 *   build/bench_archive persist     only the fill, save and load of 10^6 elites
 *   build/bench_archive rss         only the resident memory of 10^6 elites (fresh process)
 *
 * Two ways of timing one operation, both reported:
 *  - back to back: a round of 1000 independent calls, divided by 1000. This is how calls
 *    arrive in a hot loop, and the CPU overlaps the memory misses of consecutive calls;
 *  - isolated: each call waits until the previous one has finished (a fence between calls,
 *    and the previous result fed into the next call's input), so nothing overlaps: the
 *    latency of one call, as when an add comes alone among other work.
 * The cells a round uses are chosen from the benchmark's own copy of the occupied cells
 * (and its own occupancy bitmap for empty cells), so preparing a round never reads the
 * archive's memory: at 10^5 and 10^6 elites the timed calls find their hash slots and
 * records in DRAM, as a call on a random cell would.
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
#define TOTAL_CELLS (1u << 20)
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

/* Metadata per elite: none by default; metadata=N gives 3N/4 to 5N/4 - 1 bytes. */
static size_t metadata_size;
static char metadata_text[1 << 16];

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
    if (metadata_size) {
        b->e[i].metadata = metadata_text;
        b->e[i].metadata_len = metadata_size * 3 / 4 + rng_below(g, metadata_size / 2);
    }
}

/* An archive and the benchmark's own record of which cells it occupies. */
typedef struct fixture {
    archive_t *a;
    uint64_t *occupied;        /* the occupied cells, in no particular order */
    size_t count;
    unsigned char *taken;      /* one byte per cell: 1 when occupied */
} fixture;

/* An archive with exactly n occupied cells, chosen at random. */
static void fill(fixture *f, size_t n, rng_t *g, batch *b)
{
    f->a = new_default_grid();
    f->occupied = malloc(TOTAL_CELLS * sizeof *f->occupied);
    f->taken = calloc(TOTAL_CELLS, 1);
    for (uint64_t i = 0; i < TOTAL_CELLS; i++)
        f->occupied[i] = i;
    for (uint64_t i = 0; i < n; i++) {   /* a random n-subset: partial Fisher-Yates */
        uint64_t j = i + rng_below(g, TOTAL_CELLS - i);
        uint64_t t = f->occupied[i];
        f->occupied[i] = f->occupied[j];
        f->occupied[j] = t;
        f->taken[f->occupied[i]] = 1;
    }
    f->count = n;
    archive_error err;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < ROUND ? n - done : ROUND;
        for (size_t i = 0; i < k; i++)
            fill_entry(b, i, f->occupied[done + i], g);
        if (archive_add_many(f->a, b->e, k, b->r, &err) != 0) {
            fprintf(stderr, "fill: %s\n", err.message);
            exit(1);
        }
        done += k;
    }
}

static void fixture_free(fixture *f)
{
    archive_free(f->a);
    free(f->occupied);
    free(f->taken);
}

/* A round of entries into random occupied cells. */
static void prepare_occupied(fixture *f, rng_t *g, batch *b)
{
    for (size_t i = 0; i < ROUND; i++)
        fill_entry(b, i, f->occupied[rng_below(g, f->count)], g);
}

/*
 * A round of entries into distinct empty cells, which count as occupied from now on.
 * Up to 10^5 elites the archive first goes back to its n elites (cleared and refilled
 * with new entries), so every round adds into an archive of n elites; at 10^6 the
 * rounds add 3% to the occupancy instead (a refill takes a second).
 */
static void prepare_new(fixture *f, size_t n, rng_t *g, batch *b)
{
    if (n <= 100000 && f->count > n) {
        archive_clear(f->a);
        for (size_t i = n; i < f->count; i++)
            f->taken[f->occupied[i]] = 0;
        f->count = 0;
        archive_error err;
        while (f->count < n) {
            size_t k = n - f->count < ROUND ? n - f->count : ROUND;
            for (size_t i = 0; i < k; i++)
                fill_entry(b, i, f->occupied[f->count + i], g);
            archive_add_many(f->a, b->e, k, b->r, &err);
            f->count += k;
        }
    }
    for (size_t i = 0; i < ROUND; i++) {
        uint64_t cell;
        do
            cell = rng_below(g, TOTAL_CELLS);
        while (f->taken[cell]);
        f->taken[cell] = 1;
        f->occupied[f->count++] = cell;
        fill_entry(b, i, cell, g);
    }
}

/* Lets nothing after it start before everything before it has finished (its loads have
 * arrived): without it, the CPU runs ahead into the next call whenever a result does not
 * depend on the data of a miss (the status of a new cell, predicted by the branch). */
static inline void wait_for_previous(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_lfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Back to back: ROUND independent archive_add calls. */
static double time_adds(archive_t *a, batch *b)
{
    archive_error err;
    double t0 = now_ns();
    for (size_t i = 0; i < ROUND; i++)
        archive_add(a, &b->e[i], &b->r[i], &err);
    return (now_ns() - t0) / ROUND;
}

/* Isolated: a fence between adds, and each add's measures depend on the previous add's
 * delta (0.0 * delta is +-0.0 and changes nothing). */
static double time_adds_isolated(archive_t *a, batch *b)
{
    archive_error err;
    double delta = 0.0;
    double t0 = now_ns();
    for (size_t i = 0; i < ROUND; i++) {
        b->m[i][0] += 0.0 * delta;
        wait_for_previous();
        archive_add(a, &b->e[i], &b->r[i], &err);
        delta = b->r[i].delta;
    }
    return (now_ns() - t0) / ROUND;
}

static double time_add_many(archive_t *a, batch *b)
{
    archive_error err;
    double t0 = now_ns();
    archive_add_many(a, b->e, ROUND, b->r, &err);
    return (now_ns() - t0) / ROUND;
}

typedef struct figures {
    double add_occupied, add_new, batch_occupied, batch_new;
    double add_occupied_isolated, add_new_isolated;
    double draw, sample_read, sample_read_isolated, sample_many_read;
    double neighbours;
    size_t found;
} figures;

static void bench_occupancy(size_t n, rng_t *g, batch *b, figures *out)
{
    fixture f;
    fill(&f, n, g, b);
    archive_t *a = f.a;
    enum { ROUNDS = 100, NEW_ROUNDS = 10 };
    double t[ROUNDS];

    /* adds into occupied cells (status 0 or 1: the occupancy stays n) */
    for (int r = 0; r < ROUNDS; r++) {
        prepare_occupied(&f, g, b);
        t[r] = time_adds(a, b);
    }
    out->add_occupied = median(t, ROUNDS);
    for (int r = 0; r < ROUNDS; r++) {
        prepare_occupied(&f, g, b);
        t[r] = time_add_many(a, b);
    }
    out->batch_occupied = median(t, ROUNDS);
    for (int r = 0; r < ROUNDS; r++) {
        prepare_occupied(&f, g, b);
        t[r] = time_adds_isolated(a, b);
    }
    out->add_occupied_isolated = median(t, ROUNDS);

    /* uniform sample of one elite: the draw (its dense position and cell), then the
     * draw and every field of the elite, back to back and isolated */
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
    out->draw = median(t, ROUNDS);
    archive_elite e;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i++) {
            size_t pos;
            archive_sample(a, g, 1, 1, &pos);
            archive_elite_at(a, pos, &e);
            sink += e.objective + e.measures[3] + e.commit_hash[39];
        }
        t[r] = (now_ns() - t0) / ROUND;
    }
    out->sample_read = median(t, ROUNDS);
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns(), chain = 0.0;
        for (size_t i = 0; i < ROUND; i++) {
            size_t pos;
            rng_t *wait = g + (size_t)(0.0 * chain);   /* the draw waits for the last elite */
            wait_for_previous();
            archive_sample(a, wait, 1, 1, &pos);
            archive_elite_at(a, pos, &e);
            chain = e.objective + e.measures[3] + e.commit_hash[39];
            sink += chain;
        }
        t[r] = (now_ns() - t0) / ROUND;
    }
    out->sample_read_isolated = median(t, ROUNDS);
    for (int r = 0; r < ROUNDS; r++) {   /* archive_sample(100), then read each */
        double t0 = now_ns();
        for (size_t i = 0; i < ROUND; i += 100) {
            size_t pos[100];
            archive_sample(a, g, 100, 1, pos);
            for (size_t k = 0; k < 100; k++) {
                archive_elite_at(a, pos[k], &e);
                sink += e.objective + e.measures[3] + e.commit_hash[39];
            }
        }
        t[r] = (now_ns() - t0) / ROUND;
    }
    out->sample_many_read = median(t, ROUNDS);

    /* neighbours at radius 3 around a random occupied cell */
    archive_cell_list list = {0};
    archive_error err;
    enum { NB = 2000 };
    static double tn[NB];
    size_t found = 0;
    for (int r = 0; r < NB; r++) {
        uint64_t centre = f.occupied[rng_below(g, f.count)];
        double t0 = now_ns();
        archive_neighbours(a, centre, 3, ARCHIVE_NEIGHBOURS_AUTO, &list, &err);
        tn[r] = now_ns() - t0;
        found += list.count;
    }
    out->neighbours = median(tn, NB) / 1000.0;
    out->found = found / NB;
    archive_cell_list_free(&list);

    /* adds into empty cells (status 2), last since they change the archive; capacity
     * reserved first (growth is amortised: see the fill figure) */
    archive_reserve(a, archive_size(a) + (n > 100000 ? 3 * NEW_ROUNDS : 1) * ROUND, &err);
    for (int r = 0; r < NEW_ROUNDS; r++) {
        prepare_new(&f, n, g, b);
        t[r] = time_adds(a, b);
    }
    out->add_new = median(t, NEW_ROUNDS);
    for (int r = 0; r < NEW_ROUNDS; r++) {
        prepare_new(&f, n, g, b);
        t[r] = time_add_many(a, b);
    }
    out->batch_new = median(t, NEW_ROUNDS);
    for (int r = 0; r < NEW_ROUNDS; r++) {
        prepare_new(&f, n, g, b);
        t[r] = time_adds_isolated(a, b);
    }
    out->add_new_isolated = median(t, NEW_ROUNDS);

    if (sink == 12345.678)
        printf(" ");
    fixture_free(&f);
}

static void print_table(const size_t *sizes, size_t count, rng_t *g, batch *b)
{
    printf("archive benchmark: 32^4 grid; ns per operation, medians of rounds of %d\n", ROUND);
    printf("%-8s | %-19s | %-17s | %-17s | %-35s | %s\n", "", "single add, b2b",
           "batch add/elite", "single add, isol.", "sample one elite", "neighbours");
    printf("%-8s | %9s %9s | %8s %8s | %8s %8s | %8s %8s %8s %8s | %s\n", "elites",
           "occupied", "new", "occupied", "new", "occupied", "new", "draw", "+read",
           "isolated", "of 100", "r=3 (us)");
    for (size_t i = 0; i < count; i++) {
        figures fg;
        bench_occupancy(sizes[i], g, b, &fg);
        printf("%-8zu | %9.1f %9.1f | %8.1f %8.1f | %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f | "
               "%.2f (%zu found)\n",
               sizes[i], fg.add_occupied, fg.add_new, fg.batch_occupied, fg.batch_new,
               fg.add_occupied_isolated, fg.add_new_isolated, fg.draw, fg.sample_read,
               fg.sample_read_isolated, fg.sample_many_read, fg.neighbours, fg.found);
        fflush(stdout);
    }
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
    fixture f;
    double t0 = now_ns();
    fill(&f, 1000000, g, b);
    printf("fill 0 -> 10^6 elites with add_many, growth included: %.0f ns per elite "
           "(entry preparation included)\n", (now_ns() - t0) / 1e6);
    enum { RUNS = 5 };
    double ts[RUNS], tl[RUNS];
    size_t len = 0;
    archive_error err;
    for (int r = 0; r < RUNS; r++) {
        unsigned char *blob;
        t0 = now_ns();
        if (archive_save(f.a, &blob, &len, &err) != 0)
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
    fixture_free(&f);
}

static void bench_rss(void)
{
    rng_t g;
    rng_seed(&g, 1);
    batch *b = malloc(sizeof *b);
    long before = rss_kb("VmRSS:");
    fixture f;
    fill(&f, 1000000, &g, b);
    free(f.occupied);   /* the benchmark's own tables (mapped, so returned at once) */
    free(f.taken);
    f.occupied = NULL;
    f.taken = NULL;
    long after = rss_kb("VmRSS:");
    printf("resident memory with 10^6 elites: %.1f MB (process), %.1f MB for the archive; "
           "peak %.1f MB (the benchmark's own 9 MB of tables included)\n",
           after / 1024.0, (after - before) / 1024.0, rss_kb("VmHWM:") / 1024.0);
    fixture_free(&f);
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
    if (argc > 1 && strcmp(argv[1], "persist") == 0) {
        bench_persistence(&g, b);
        free(b);
        return 0;
    }
    if (argc > 1) {   /* only the table, for the sizes given */
        size_t sizes[16], count = 0;
        for (int i = 1; i < argc && count < 16; i++) {
            if (strncmp(argv[i], "metadata=", 9) == 0) {
                metadata_size = strtoull(argv[i] + 9, NULL, 10);
                if (metadata_size * 5 / 4 > sizeof metadata_text)
                    metadata_size = sizeof metadata_text * 4 / 5;
                memset(metadata_text, 'm', sizeof metadata_text);
                printf("metadata: %zu to %zu bytes per elite\n", metadata_size * 3 / 4,
                       metadata_size * 5 / 4 - 1);
                continue;
            }
            sizes[count++] = strtoull(argv[i], NULL, 10);
        }
        print_table(sizes, count, &g, b);
        free(b);
        return 0;
    }
    size_t sizes[] = {1000, 100000, 1000000};
    print_table(sizes, 3, &g, b);
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
