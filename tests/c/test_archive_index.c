/*
 * The archive's cell map and block map at every size they take: a 16^4 grid filled cell
 * by cell to the last one (the cell map goes from a hashed table to a direct one, the
 * block map from hashed to a bitmap), checked at each step against the test's own record
 * of what was added (get, misses, stats, neighbours against a scan, improvements and
 * rejections with their deltas, clear and refill); two cells of a grid over 2^32 cells
 * whose hash slots collide (keys are hash fragments there, confirmed on the record);
 * commit hashes of every length and of every byte value (packed hex and raw); CMA-MAE
 * improvements, where the previous objective is not the threshold; the arena under
 * churn (metadata, long hashes and explicit solutions replaced, grown, shrunk, dropped,
 * through many compactions), every elite checked against the test's own copy.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "check.h"
#include "rng.h"

#define SIDE 16
#define CELLS (SIDE * SIDE * SIDE * SIDE)

static archive_t *grid16(const archive_options *o)
{
    uint64_t dims[4] = {SIDE, SIDE, SIDE, SIDE};
    double lo[4] = {0, 0, 0, 0}, hi[4] = {1, 1, 1, 1};
    archive_t *a = NULL;
    archive_error err;
    CHECK(archive_new_grid(4, dims, lo, hi, o, &a, &err) == 0);
    return a;
}

/* Measures at the centre of cell (row-major, last dimension fastest). */
static void centre_of(uint64_t cell, double *m)
{
    for (int d = 3; d >= 0; d--) {
        m[d] = ((double)(cell % SIDE) + 0.5) / SIDE;
        cell /= SIDE;
    }
}

/* The objective the test gives cell in round `round` (exact in binary). */
static double objective_of(uint64_t cell, int round)
{
    return (double)(cell % 1000) / 8.0 + round;
}

static archive_add_result add_cell(archive_t *a, uint64_t cell, double objective)
{
    double m[4];
    char hash[41];
    centre_of(cell, m);
    snprintf(hash, sizeof hash, "%040llx", (unsigned long long)(cell * 2654435761u));
    archive_entry e = {hash, 40, objective, m, m, 4, NULL, 0, (double)cell};
    archive_add_result r = {-1, 0, 0};
    archive_error err;
    CHECK(archive_add(a, &e, &r, &err) == 0);
    return r;
}

/* Every added cell is found with its fields; a sample of the others is not. */
static void check_contents(const archive_t *a, const uint64_t *order, size_t added,
                           const unsigned char *present, int round, rng_t *g)
{
    size_t wrong = 0;
    for (size_t i = 0; i < added; i++) {
        archive_elite e;
        char hash[41];
        snprintf(hash, sizeof hash, "%040llx", (unsigned long long)(order[i] * 2654435761u));
        if (!archive_get(a, order[i], &e) || e.cell != order[i] ||
            e.objective != objective_of(order[i], round) || e.threshold != e.objective ||
            e.timestamp != (double)order[i] || strcmp(e.commit_hash, hash) != 0)
            wrong++;
    }
    CHECK_MSG(wrong == 0, "%zu of %zu elites wrong after %zu adds", wrong, added, added);
    size_t found = 0;
    for (int k = 0; k < 2000; k++) {
        uint64_t cell = rng_below(g, CELLS);
        archive_elite e;
        if (!present[cell] && archive_get(a, cell, &e))
            found++;
    }
    CHECK_MSG(found == 0, "%zu empty cells found after %zu adds", found, added);
    CHECK_EQ_INT(archive_size(a), added);
    archive_stats s;
    archive_get_stats(a, &s);
    CHECK_EQ_INT(s.num_elites, added);
}

/* Neighbours at radius r of centre against a scan of the test's own occupancy. */
static void check_neighbours(const archive_t *a, const unsigned char *present, uint64_t centre,
                             uint64_t r)
{
    archive_cell_list list = {0};
    archive_error err;
    CHECK(archive_neighbours(a, centre, r, ARCHIVE_NEIGHBOURS_AUTO, &list, &err) == 0);
    uint64_t cc[4], k = 0;
    for (int d = 3, c = (int)centre; d >= 0; d--, c /= SIDE)
        cc[d] = (uint64_t)c % SIDE;
    int same = 1;
    for (uint64_t cell = 0; cell < CELLS; cell++) {
        if (!present[cell] || cell == centre)
            continue;
        uint64_t x = cell;
        int inside = 1;
        for (int d = 3; d >= 0; d--, x /= SIDE) {
            uint64_t g = x % SIDE;
            inside &= (g > cc[d] ? g - cc[d] : cc[d] - g) <= r;
        }
        if (inside)
            same &= k < list.count && list.cells[k++] == cell;
    }
    CHECK_MSG(same && k == list.count, "neighbours of %llu at radius %llu",
              (unsigned long long)centre, (unsigned long long)r);
    archive_cell_list_free(&list);
}

static void test_fill_whole_grid(void)
{
    archive_t *a = grid16(NULL);
    if (!a)
        return;
    rng_t g;
    rng_seed(&g, 7);
    uint64_t *order = malloc(CELLS * sizeof *order);
    unsigned char *present = calloc(CELLS, 1);
    for (uint64_t i = 0; i < CELLS; i++)
        order[i] = i;
    for (uint64_t i = CELLS - 1; i > 0; i--) {
        uint64_t j = rng_below(&g, i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    /* sizes around the maps' changes of form (12 and 24576 elites, ~3000 blocks) */
    static const size_t checkpoints[] = {1, 12, 13, 100, 3000, 24576, 24577, 40000, CELLS};
    size_t next = 0, bad = 0;
    for (size_t i = 0; i < CELLS; i++) {
        archive_add_result r = add_cell(a, order[i], objective_of(order[i], 0));
        present[order[i]] = 1;
        bad += r.status != 2 || r.cell != order[i] || r.delta != objective_of(order[i], 0);
        if (i + 1 == checkpoints[next]) {
            check_contents(a, order, i + 1, present, 0, &g);
            for (int k = 0; k < 3; k++)
                check_neighbours(a, present, order[rng_below(&g, i + 1)], 1 + (uint64_t)k);
            next++;
        }
    }
    CHECK_EQ_INT(bad, 0);
    /* a second round: every cell improves by exactly 1 (delta 1), a third rejects */
    for (size_t i = 0; i < CELLS; i++) {
        archive_add_result r = add_cell(a, order[i], objective_of(order[i], 1));
        bad += r.status != 1 || r.delta != 1.0;
        r = add_cell(a, order[i], objective_of(order[i], 1) - 0.5);
        bad += r.status != 0 || r.delta != -0.5;
    }
    CHECK_EQ_INT(bad, 0);
    check_contents(a, order, CELLS, present, 1, &g);
    /* clear keeps the tables' form; the archive then starts afresh */
    archive_clear(a);
    memset(present, 0, CELLS);
    for (size_t i = 0; i < 500; i++) {
        archive_add_result r = add_cell(a, order[i], objective_of(order[i], 0));
        present[order[i]] = 1;
        bad += r.status != 2;
    }
    CHECK_EQ_INT(bad, 0);
    check_contents(a, order, 500, present, 0, &g);
    check_neighbours(a, present, order[0], 2);
    free(order);
    free(present);
    archive_free(a);
}

/* MurmurHash3's 64-bit finaliser, which the archive uses for its hashed tables. If the
 * archive changes its hash, the two cells below stop colliding and this test merely
 * checks two ordinary cells. */
static uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

typedef struct keyed {
    uint64_t key, cell;
} keyed;

static int compare_keyed(const void *x, const void *y)
{
    const keyed *a = x, *b = y;
    return a->key < b->key ? -1 : a->key > b->key;
}

static void test_tag_collision(void)
{
    /* 64^6 = 2^36 cells: a slot's key is the low half of the cell's hash. Find two cells
     * with the same low 32 bits and the same top 4 bits (the home slot of a 16-slot
     * table): a birthday search over 2^19 random cells. */
    enum { N = 1 << 19 };
    keyed *k = malloc(N * sizeof *k);
    rng_t g;
    rng_seed(&g, 11);
    for (size_t i = 0; i < N; i++) {
        k[i].cell = rng_below(&g, (uint64_t)1 << 36);
        uint64_t h = fmix64(k[i].cell);
        k[i].key = (h & 0xffffffffu) | (h >> 60) << 32;
    }
    qsort(k, N, sizeof *k, compare_keyed);
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 1; i < N && c1 == c2; i++)
        if (k[i].key == k[i - 1].key && k[i].cell != k[i - 1].cell) {
            c1 = k[i - 1].cell;
            c2 = k[i].cell;
        }
    free(k);
    CHECK(c1 != c2);
    uint64_t dims[6] = {64, 64, 64, 64, 64, 64};
    double lo[6] = {0}, hi[6] = {64, 64, 64, 64, 64, 64};
    archive_t *a;
    archive_error err;
    CHECK(archive_new_grid(6, dims, lo, hi, NULL, &a, &err) == 0);
    uint64_t cells[2] = {c1, c2};
    for (int i = 0; i < 2; i++) {
        double m[6];
        for (int d = 5, c = 0; d >= 0; d--, c++)
            m[d] = (double)((cells[i] >> (6 * c)) & 63) + 0.5;
        archive_entry e = {"0123456789abcdef0123456789abcdef01234567", 40, 1.0 + i, m, NULL,
                           0, NULL, 0, 0.0};
        archive_add_result r;
        CHECK(archive_add(a, &e, &r, &err) == 0);
        CHECK(r.status == 2 && r.cell == cells[i]);
        e.objective = 0.5;   /* the cell's own threshold decides: rejected */
        CHECK(archive_add(a, &e, &r, &err) == 0);
        CHECK(r.status == 0 && r.cell == cells[i] && r.delta == 0.5 - (1.0 + i));
    }
    archive_elite e1, e2;
    CHECK(archive_get(a, c1, &e1) && e1.cell == c1 && e1.objective == 1.0);
    CHECK(archive_get(a, c2, &e2) && e2.cell == c2 && e2.objective == 2.0);
    CHECK(!archive_get(a, c1 ^ 1, &e1));
    CHECK_EQ_INT(archive_size(a), 2);
    archive_free(a);
}

static void test_commit_hashes(void)
{
    archive_t *a = grid16(NULL);
    if (!a)
        return;
    static const char digits[] = "0123456789abcdef";
    char hash[ARCHIVE_MAX_COMMIT_HASH + 1];
    uint64_t cell = 0;
    size_t wrong = 0;
    for (size_t len = 1; len <= ARCHIVE_MAX_COMMIT_HASH; len++) {
        /* hex, then one byte of every value at the start, the middle and the end */
        for (int variant = -1; variant < 256 * 3; variant++) {
            if (variant >= 0 && len > 64 && len % 16 != 1 && len != ARCHIVE_MAX_COMMIT_HASH)
                break;   /* every byte value in a few long lengths is enough */
            for (size_t i = 0; i < len; i++)
                hash[i] = digits[(i * 7 + len) % 16];
            if (variant >= 0) {
                size_t at = variant / 256 == 0 ? 0 : variant / 256 == 1 ? len / 2 : len - 1;
                hash[at] = (char)(variant % 256);
            }
            double m[4];
            centre_of(cell % CELLS, m);
            archive_entry e = {hash, len, 1.0 + (double)(cell / CELLS), m, NULL, 0, NULL, 0,
                               0.0};
            archive_add_result r;
            archive_error err;
            if (archive_add(a, &e, &r, &err) != 0 || r.status == 0) {
                wrong++;
                continue;
            }
            archive_elite got;
            if (!archive_get(a, r.cell, &got) || got.commit_hash_len != len ||
                memcmp(got.commit_hash, hash, len) != 0 || got.commit_hash[len] != '\0')
                wrong++;
            cell++;
        }
    }
    CHECK_MSG(wrong == 0, "%zu commit hashes did not come back", wrong);
    /* the round trip through a blob keeps every hash of the last round */
    unsigned char *blob;
    size_t blob_len;
    archive_t *back = NULL;
    archive_error err;
    CHECK(archive_save(a, &blob, &blob_len, &err) == 0);
    CHECK(archive_load(blob, blob_len, &back, &err) == 0);
    if (back) {
        size_t differ = 0;
        for (size_t pos = 0; pos < archive_size(a); pos++) {
            archive_elite x, y;
            archive_elite_at(a, pos, &x);
            archive_elite_at(back, pos, &y);
            differ += x.commit_hash_len != y.commit_hash_len ||
                      memcmp(x.commit_hash, y.commit_hash, x.commit_hash_len) != 0;
        }
        CHECK_EQ_INT(differ, 0);
    }
    free(blob);
    archive_free(back);
    archive_free(a);
}

static void test_cma_mae_improvements(void)
{
    archive_options o;
    archive_options_defaults(&o);
    o.learning_rate = 0.5;
    o.threshold_min = 0.0;
    archive_t *a = grid16(&o);
    if (!a)
        return;
    /* the contract: threshold' = (1 - lr) * threshold + objective * (1 - (1 - lr)),
     * objective_sum += objective - previous objective */
    double objective = 0.0, threshold = 0.0, sum = 0.0;
    static const double offers[] = {1.0, 0.75, 0.6, 2.0, 0.9, 1.5, 1.2};
    for (size_t i = 0; i < sizeof offers / sizeof *offers; i++) {
        archive_add_result r = add_cell(a, 42, offers[i]);
        int inserted = offers[i] > threshold;
        CHECK_EQ_INT(r.status, inserted ? (i == 0 ? 2 : 1) : 0);
        CHECK(r.delta == offers[i] - threshold);
        if (inserted) {
            sum = sum + (offers[i] - objective);
            objective = offers[i];
            threshold = 0.5 * threshold + offers[i] * (1.0 - 0.5);
        }
        archive_elite e;
        CHECK(archive_get(a, 42, &e) && e.objective == objective && e.threshold == threshold);
        archive_stats s;
        archive_get_stats(a, &s);
        CHECK(s.objective_sum == sum);
    }
    archive_free(a);
}

/* The test's copy of one elite's variable parts. */
typedef struct churn_elite {
    int present, version;
    char hash[80];
    size_t meta_len;           /* SIZE_MAX: no metadata */
    size_t solution_len;       /* SIZE_MAX: none */
} churn_elite;

/* Metadata and solution contents are a function of (cell, version, index). */
static char meta_byte(uint64_t cell, int version, size_t i)
{
    return (char)('a' + (cell * 31 + (uint64_t)version * 7 + i) % 26);
}

static double solution_value(uint64_t cell, int version, size_t i)
{
    return (double)cell + version * 0.5 + (double)i * 0.25;
}

static void test_arena_churn(void)
{
    archive_t *a = grid16(NULL);
    if (!a)
        return;
    enum { CELLS_USED = 300, STEPS = 20000 };
    static churn_elite want[CELLS_USED];
    static char meta[4096];
    static double solution[64];
    rng_t g;
    rng_seed(&g, 23);
    size_t wrong = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t cell = rng_below(&g, CELLS_USED);
        churn_elite *w = &want[cell];
        churn_elite next = {1, step, "", SIZE_MAX, SIZE_MAX};
        /* hashes: hex SHA-1 (inline), long hex (arena) or long raw (arena) */
        switch (rng_below(&g, 3)) {
        case 0:
            snprintf(next.hash, sizeof next.hash, "%040llx", (unsigned long long)step);
            break;
        case 1:
            snprintf(next.hash, sizeof next.hash, "%064llx", (unsigned long long)step);
            break;
        default:
            snprintf(next.hash, sizeof next.hash, "refs/heads/a-long-branch-name-%d", step);
        }
        if (rng_below(&g, 4) != 0) {   /* sizes from empty to 4 KB */
            next.meta_len = (size_t)rng_below(&g, rng_below(&g, 2) ? 40 : sizeof meta);
            for (size_t i = 0; i < next.meta_len; i++)
                meta[i] = meta_byte(cell, step, i);
        }
        if (rng_below(&g, 2)) {
            next.solution_len = (size_t)rng_below(&g, 64);
            for (size_t i = 0; i < next.solution_len; i++)
                solution[i] = solution_value(cell, step, i);
        }
        double m[4];
        centre_of(cell, m);
        archive_entry e = {next.hash, strlen(next.hash), (double)step, m,
                           next.solution_len == SIZE_MAX ? NULL : solution,
                           next.solution_len == SIZE_MAX ? 0 : next.solution_len,
                           next.meta_len == SIZE_MAX ? NULL : meta,
                           next.meta_len == SIZE_MAX ? 0 : next.meta_len, (double)step};
        archive_add_result r;
        archive_error err;
        CHECK(archive_add(a, &e, &r, &err) == 0);
        wrong += r.status != (w->present ? 1 : 2);   /* objectives only grow */
        *w = next;
        if (step % 2000 != 1999 && step != STEPS - 1)
            continue;
        for (uint64_t c = 0; c < CELLS_USED; c++) {
            const churn_elite *x = &want[c];
            archive_elite got;
            if (!archive_get(a, c, &got)) {
                wrong += x->present;
                continue;
            }
            int bad = !x->present || got.objective != x->version ||
                      strcmp(got.commit_hash, x->hash) != 0;
            if (x->meta_len == SIZE_MAX)
                bad |= got.metadata != NULL;
            else if (!got.metadata || got.metadata_len != x->meta_len)
                bad = 1;
            else
                for (size_t i = 0; i < x->meta_len; i++)
                    bad |= got.metadata[i] != meta_byte(c, x->version, i);
            if (x->solution_len == SIZE_MAX)
                bad |= got.solution != NULL;
            else if (!got.solution || got.solution_len != x->solution_len)
                bad = 1;
            else
                for (size_t i = 0; i < x->solution_len; i++)
                    bad |= got.solution[i] != solution_value(c, x->version, i);
            wrong += bad;
        }
    }
    CHECK_MSG(wrong == 0, "%zu wrong elites or statuses under arena churn", wrong);
    /* and the same through a blob */
    unsigned char *blob;
    size_t len;
    archive_t *back = NULL;
    archive_error err;
    CHECK(archive_save(a, &blob, &len, &err) == 0);
    CHECK(archive_load(blob, len, &back, &err) == 0);
    if (back) {
        size_t differ = 0;
        for (size_t pos = 0; pos < archive_size(a); pos++) {
            archive_elite x, y;
            archive_elite_at(a, pos, &x);
            archive_elite_at(back, pos, &y);
            differ += x.cell != y.cell || strcmp(x.commit_hash, y.commit_hash) != 0 ||
                      x.metadata_len != y.metadata_len || x.solution_len != y.solution_len ||
                      (x.metadata_len && memcmp(x.metadata, y.metadata, x.metadata_len)) ||
                      (x.solution_len &&
                       memcmp(x.solution, y.solution, x.solution_len * sizeof(double)));
        }
        CHECK_EQ_INT(differ, 0);
    }
    free(blob);
    archive_free(back);
    archive_free(a);
}

int main(void)
{
    test_fill_whole_grid();
    test_tag_collision();
    test_commit_hashes();
    test_cma_mae_improvements();
    test_arena_churn();
    return CHECK_DONE();
}
