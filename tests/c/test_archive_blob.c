/*
 * Archive persistence: save/load round trips (grid, CMA-MAE, CVT, empty), byte-identical
 * re-saves, identical behaviour after a load; truncated, bit-flipped and forged blobs
 * (with a valid checksum, so the parser itself is exercised) are refused with a message,
 * never a crash; the committed corpus in tests/fuzz/corpus/archive_blob loads as its
 * file names say (valid_* loads, bad_* is refused, seed_* came from fuzzing: no crash).
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "archive.h"
#include "check.h"
#include "rng.h"

/* Rewrites the total length and the checksum of a (modified) blob, so the loader's
 * parser sees it instead of stopping at the checksum. */
static void reseal(unsigned char *blob, size_t len)
{
    uint64_t total = len;
    memcpy(blob + 16, &total, 8);
    uint64_t sum = archive_checksum(blob, len - 8);
    memcpy(blob + len - 8, &sum, 8);
}

static void add_varied(archive_t *a, rng_t *g, size_t n)
{
    size_t dim = archive_dimensions(a);
    const double *lo = archive_lower(a), *hi = archive_upper(a);
    for (size_t i = 0; i < n; i++) {
        double m[8], sol[5] = {1, 2, 3, 4, 5};
        for (size_t d = 0; d < dim; d++)
            m[d] = lo[d] + (hi[d] - lo[d]) * rng_double(g);
        char hash[80];
        switch (i % 3) {
        case 0:
            snprintf(hash, sizeof hash, "%040llx", (unsigned long long)rng_next(g));
            break;
        case 1:
            snprintf(hash, sizeof hash, "%064llx", (unsigned long long)rng_next(g));
            break;
        default:
            snprintf(hash, sizeof hash, "ABC-%zu", i);   /* not packable */
        }
        static const char meta[] = "{\"metrics\":{\"a\":1}}\0binary";
        archive_entry e = {hash, strlen(hash), rng_normal(g), m, NULL, 0, NULL, 0,
                           1.7e9 + (double)i};
        switch (i % 4) {
        case 0:
            e.solution = m;
            e.solution_len = dim;
            break;
        case 1:
            e.solution = sol;
            e.solution_len = 1 + i % 5;
            break;
        case 2:
            e.solution = sol;   /* an empty solution is not "no solution" */
            e.solution_len = 0;
            break;
        default:
            break;
        }
        if (i % 5 == 0) {
            e.metadata = meta;
            e.metadata_len = sizeof meta - 1;   /* with an embedded NUL */
        } else if (i % 5 == 1) {
            e.metadata = "";
            e.metadata_len = 0;
        }
        archive_add_result r;
        archive_error err;
        CHECK(archive_add(a, &e, &r, &err) == 0);
    }
}

static int same_elite(const archive_elite *x, const archive_elite *y, size_t dim)
{
    return x->cell == y->cell && memcmp(&x->objective, &y->objective, 8) == 0 &&
           memcmp(&x->threshold, &y->threshold, 8) == 0 &&
           memcmp(&x->timestamp, &y->timestamp, 8) == 0 &&
           memcmp(x->measures, y->measures, dim * 8) == 0 &&
           strcmp(x->commit_hash, y->commit_hash) == 0 &&
           (x->solution == NULL) == (y->solution == NULL) &&
           x->solution_len == y->solution_len &&
           (!x->solution || memcmp(x->solution, y->solution, x->solution_len * 8) == 0) &&
           (x->metadata == NULL) == (y->metadata == NULL) &&
           x->metadata_len == y->metadata_len &&
           (!x->metadata || memcmp(x->metadata, y->metadata, x->metadata_len) == 0);
}

/* Same elites in the same dense order, same stats, same shape. */
static void check_same(const archive_t *a, const archive_t *b)
{
    CHECK(archive_get_kind(a) == archive_get_kind(b));
    CHECK(archive_dimensions(a) == archive_dimensions(b));
    CHECK(archive_cells(a) == archive_cells(b));
    CHECK(archive_size(a) == archive_size(b));
    size_t dim = archive_dimensions(a);
    CHECK(memcmp(archive_lower(a), archive_lower(b), dim * 8) == 0);
    CHECK(memcmp(archive_upper(a), archive_upper(b), dim * 8) == 0);
    CHECK(memcmp(archive_get_options(a), archive_get_options(b), sizeof(archive_options)) == 0);
    if (archive_get_kind(a) == ARCHIVE_CVT)
        CHECK(memcmp(archive_centroids(a), archive_centroids(b),
                     archive_cells(a) * dim * 8) == 0);
    int all = 1;
    for (size_t pos = 0; pos < archive_size(a) && pos < archive_size(b); pos++) {
        archive_elite x, y;
        archive_elite_at(a, pos, &x);
        archive_elite_at(b, pos, &y);
        all &= same_elite(&x, &y, dim);
    }
    CHECK(all);
    archive_stats s, t;
    archive_get_stats(a, &s);
    archive_get_stats(b, &t);
    CHECK(s.num_elites == t.num_elites && s.has_objective == t.has_objective);
    CHECK(memcmp(&s.objective_sum, &t.objective_sum, 8) == 0);
    CHECK(!s.has_objective || s.obj_max == t.obj_max);
}

static void round_trip(archive_t *a, uint64_t seed)
{
    unsigned char *blob, *blob2;
    size_t len, len2;
    archive_error err;
    archive_t *b;
    CHECK(archive_save(a, &blob, &len, &err) == 0);
    CHECK(archive_load(blob, len, &b, &err) == 0);
    if (!b) {
        fprintf(stderr, "load failed: %s\n", err.message);
        free(blob);
        return;
    }
    check_same(a, b);
    /* a re-save is byte-identical */
    CHECK(archive_save(b, &blob2, &len2, &err) == 0);
    CHECK(len == len2 && memcmp(blob, blob2, len) == 0);
    free(blob2);
    /* both go on identically: same adds, same samples */
    rng_t g1, g2;
    rng_seed(&g1, seed);
    rng_seed(&g2, seed);
    add_varied(a, &g1, 200);
    add_varied(b, &g2, 200);
    check_same(a, b);
    size_t s1[50], s2[50];
    CHECK(archive_sample(a, &g1, 50, 0, s1) == archive_sample(b, &g2, 50, 0, s2));
    CHECK(memcmp(s1, s2, sizeof s1) == 0 || archive_size(a) == 0);
    archive_free(b);
    free(blob);
}

static archive_t *make_grid(const archive_options *o)
{
    uint64_t dims[4] = {32, 32, 32, 32};
    double lo[4] = {-6, -6, -6, -6}, hi[4] = {6, 6, 6, 6};
    archive_t *a = NULL;
    archive_error err;
    CHECK(archive_new_grid(4, dims, lo, hi, o, &a, &err) == 0);
    return a;
}

static void test_round_trips(void)
{
    rng_t g;
    rng_seed(&g, 3);
    archive_t *a = make_grid(NULL);
    round_trip(a, 1);   /* empty */
    add_varied(a, &g, 3000);
    round_trip(a, 2);
    archive_free(a);

    archive_options o;
    archive_options_defaults(&o);
    o.learning_rate = 0.3;
    o.threshold_min = -0.5;
    o.qd_score_offset = -2.0;
    a = make_grid(&o);
    add_varied(a, &g, 3000);
    round_trip(a, 3);
    archive_clear(a);
    round_trip(a, 4);   /* cleared: no obj_max */
    archive_free(a);

    double lo[3] = {0, 0, 0}, hi[3] = {1, 2, 3};
    archive_cvt_config c = {3, lo, hi, NULL, 50, 2000, 9, 20};
    CHECK(archive_new_cvt(&c, NULL, &a, NULL) == 0);
    add_varied(a, &g, 500);
    round_trip(a, 5);
    archive_free(a);

    /* 8 dimensions of 64 cells: cell indices above 2^32 */
    uint64_t dims8[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    double lo8[8] = {0}, hi8[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(archive_new_grid(8, dims8, lo8, hi8, NULL, &a, NULL) == 0);
    add_varied(a, &g, 2000);
    round_trip(a, 6);
    archive_free(a);
}

/* A small blob to mutate. */
static unsigned char *small_blob(size_t *len, int cvt)
{
    archive_t *a;
    if (cvt) {
        double lo[2] = {0, 0}, hi[2] = {1, 1};
        double centroids[8] = {0.1, 0.1, 0.9, 0.9, 0.1, 0.9, 0.9, 0.1};
        archive_cvt_config c = {2, lo, hi, centroids, 4, 0, 0, 0};
        archive_new_cvt(&c, NULL, &a, NULL);
    } else {
        uint64_t dims[2] = {4, 4};
        double lo[2] = {0, 0}, hi[2] = {1, 1};
        archive_options o;
        archive_options_defaults(&o);
        o.learning_rate = 0.5;
        o.threshold_min = 0;
        archive_new_grid(2, dims, lo, hi, &o, &a, NULL);
    }
    rng_t g;
    rng_seed(&g, 17);
    add_varied(a, &g, 12);
    unsigned char *blob;
    archive_save(a, &blob, len, NULL);
    archive_free(a);
    return blob;
}

/* Loads a blob that must be refused; returns the message. */
static const char *refused(const unsigned char *blob, size_t len)
{
    static archive_error err;
    archive_t *a = NULL;
    err.message[0] = 0;
    if (archive_load(blob, len, &a, &err) == 0) {
        archive_free(a);
        return NULL;
    }
    CHECK(a == NULL && err.message[0] != 0);
    return err.message;
}

static void test_truncated_and_flipped(void)
{
    for (int cvt = 0; cvt < 2; cvt++) {
        size_t len;
        unsigned char *blob = small_blob(&len, cvt);
        int all = 1;
        for (size_t n = 0; n < len; n++)
            all &= refused(blob, n) != NULL;
        CHECK_MSG(all, "every truncation is refused");
        const char *msg = refused(blob, len - 1);
        CHECK(msg && strstr(msg, "truncated"));
        unsigned char *copy = malloc(len + 1);
        memcpy(copy, blob, len);
        copy[len] = 0;
        CHECK(refused(copy, len + 1) != NULL);   /* a stray byte at the end */
        all = 1;
        for (size_t i = 0; i < len; i++) {
            for (int bit = 0; bit < 8; bit += 3) {
                memcpy(copy, blob, len);
                copy[i] ^= (unsigned char)(1 << bit);
                all &= refused(copy, len) != NULL;
            }
        }
        CHECK_MSG(all, "every bit flip is refused");
        memcpy(copy, blob, len);
        copy[len / 2] ^= 0x40;
        msg = refused(copy, len);
        CHECK(msg && (strstr(msg, "checksum") || strstr(msg, "truncated")));
        free(copy);
        free(blob);
    }
}

/* Forged blobs with a valid checksum: each field made wrong in turn. */
static void test_forged(void)
{
    size_t len;
    unsigned char *blob = small_blob(&len, 0);
    unsigned char *f = malloc(len);
    struct {
        size_t offset;
        uint64_t value;
        int width;
        const char *expect;
    } cases[] = {
        {0, 0x4141414141414141ULL, 8, "magic"},
        {8, 2, 4, "version"},
        {12, 7, 4, "kind"},
        {24, 0, 4, "dimensions"},
        {24, 100000, 4, "dimensions"},
        {28, 0x10, 4, "flags"},
        {32, 0x7ff8000000000000ULL, 8, "learning_rate"},        /* NaN */
        {40, 0x7ff0000000000000ULL, 8, "threshold_min"},        /* +inf */
        {48, 0xfff0000000000000ULL, 8, "epsilon"},              /* -inf */
        {64, 0x7ff8000000000000ULL, 8, "stats"},                /* objective_sum NaN */
        {80, 1000000, 8, "elites"},                             /* count */
        {88, 0x3ff0000000000000ULL, 8, "lower bound"},          /* lower = 1 = upper */
        {104, 0, 8, "lower bound"},                             /* upper[0] = 0 = lower */
        {120, 0, 8, "at least 1 cell"},                         /* dims[0] = 0 */
        {120, 1ULL << 62, 8, "63 bits"},                        /* dims overflow */
        {136, UINT64_MAX, 8, "does not match"},                 /* first cell moved */
        {136, 16, 8, "outside"},                                /* cell out of range */
        {144, 0x7ff0000000000000ULL, 8, "objective"},           /* objective inf */
        {152, 0x7ff8000000000000ULL, 8, "threshold"},           /* threshold NaN */
        {160, 0x7ff8000000000000ULL, 8, "timestamp"},
        {168, 0x7ff8000000000000ULL, 8, "measure 1"},
        {184, 7, 4, "multiple of 8"},                           /* entry size */
        {184, 0x7fffffff, 4, "truncated"},
        {188, 0xf0, 1, "flags"},
        {189, 0, 1, "commit hash"},
        {189, 200, 1, "commit hash"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        memcpy(f, blob, len);
        if (cases[k].value == UINT64_MAX) {   /* the first elite's cell, plus one */
            uint64_t cell;
            memcpy(&cell, f + 136, 8);
            cases[k].value = (cell + 1) % 16;
        }
        memcpy(f + cases[k].offset, &cases[k].value, (size_t)cases[k].width);
        if (cases[k].offset != 0 && cases[k].offset != 8)
            reseal(f, len);
        const char *msg = refused(f, len);
        CHECK_MSG(msg && strstr(msg, cases[k].expect), "case %zu (offset %zu): %s", k,
                  cases[k].offset, msg ? msg : "(loaded)");
    }
    /* a duplicated elite: the first elite's bytes written over the second */
    memcpy(f, blob, len);
    uint32_t size1;
    memcpy(&size1, f + 184, 4);
    size_t e1 = 136, e2 = 188 + size1;
    uint32_t size2;
    memcpy(&size2, f + e2 + 48, 4);
    if (size1 == size2) {
        memcpy(f + e2, f + e1, 52 + size1);
        reseal(f, len);
        const char *msg = refused(f, len);
        CHECK(msg && strstr(msg, "already occupied"));
    }
    free(f);
    free(blob);
}

/* Random mutations, resealed: never a crash; whatever loads is a sound archive. */
static void test_random_mutations(void)
{
    rng_t g;
    rng_seed(&g, 2024);
    int loaded = 0;
    for (int cvt = 0; cvt < 2; cvt++) {
        size_t len;
        unsigned char *blob = small_blob(&len, cvt);
        unsigned char *f = malloc(len);
        for (int round = 0; round < 4000; round++) {
            memcpy(f, blob, len);
            int edits = 1 + (int)rng_below(&g, 4);
            for (int k = 0; k < edits; k++) {
                size_t at = 24 + (size_t)rng_below(&g, len - 32);   /* past magic/version */
                switch (rng_below(&g, 3)) {
                case 0:
                    f[at] = (unsigned char)rng_next(&g);
                    break;
                case 1:
                    f[at] ^= (unsigned char)(1 << rng_below(&g, 8));
                    break;
                default:
                    f[at] = rng_below(&g, 2) ? 0 : 0xff;
                }
            }
            reseal(f, len);
            archive_t *a = NULL;
            archive_error err;
            if (archive_load(f, len, &a, &err) == 0) {
                loaded++;
                unsigned char *again;
                size_t again_len;
                archive_t *b = NULL;
                CHECK(archive_save(a, &again, &again_len, &err) == 0);
                CHECK(archive_load(again, again_len, &b, &err) == 0);
                if (b)
                    check_same(a, b);
                archive_free(b);
                free(again);
                archive_free(a);
            }
        }
        free(f);
        free(blob);
    }
    CHECK(loaded > 0);   /* some mutations (a timestamp, an objective) stay valid */
}

/* The committed corpus: valid_* must load, bad_* must be refused. */
static void test_corpus(void)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fuzz/corpus/archive_blob", LORELEY_SOURCE_DIR);
    DIR *dir = opendir(path);
    CHECK_MSG(dir != NULL, "corpus directory %s", path);
    if (!dir)
        return;
    int valid = 0, bad = 0;
    struct dirent *ent;
    while ((ent = readdir(dir)) != NULL) {
        int is_valid = strncmp(ent->d_name, "valid_", 6) == 0;
        int is_bad = strncmp(ent->d_name, "bad_", 4) == 0;
        int is_seed = strncmp(ent->d_name, "seed_", 5) == 0;   /* from fuzzing: no crash */
        if (!is_valid && !is_bad && !is_seed)
            continue;
        char file[1400];
        snprintf(file, sizeof file, "%s/%s", path, ent->d_name);
        FILE *fp = fopen(file, "rb");
        CHECK(fp != NULL);
        if (!fp)
            continue;
        unsigned char *data = malloc(1 << 20);
        size_t n = fread(data, 1, 1 << 20, fp);
        fclose(fp);
        archive_t *a = NULL;
        archive_error err;
        int rc = archive_load(data, n, &a, &err);
        if (!is_seed)
            CHECK_MSG(rc == (is_valid ? 0 : -1), "%s: %s", ent->d_name,
                      rc ? err.message : "loaded");
        archive_free(a);
        free(data);
        valid += is_valid;
        bad += is_bad;
    }
    closedir(dir);
    CHECK(valid >= 3 && bad >= 5);
}

/* Writes the corpus (run by hand: test_archive_blob --write-corpus DIR). */
static int write_corpus(const char *dir)
{
    char file[1024];
    struct {
        const char *name;
        int cvt;
        int mutate;   /* 0 none, 1 truncate, 2 flip, 3 forged cell */
    } items[] = {
        {"valid_grid_cmamae", 0, 0}, {"valid_cvt", 1, 0},       {"bad_truncated", 0, 1},
        {"bad_flipped", 0, 2},       {"bad_forged_cell", 0, 3}, {"bad_cvt_truncated", 1, 1},
        {"bad_cvt_flipped", 1, 2},   {"bad_empty", 0, 4},
    };
    for (size_t k = 0; k < sizeof items / sizeof *items; k++) {
        size_t len;
        unsigned char *blob = small_blob(&len, items[k].cvt);
        switch (items[k].mutate) {
        case 1:
            len = len * 2 / 3;
            break;
        case 2:
            blob[len / 2] ^= 0x10;
            break;
        case 3: {
            uint64_t cell = 15;
            memcpy(blob + 136, &cell, 8);
            reseal(blob, len);
            break;
        }
        case 4:
            len = 0;
            break;
        }
        snprintf(file, sizeof file, "%s/%s", dir, items[k].name);
        FILE *fp = fopen(file, "wb");
        if (!fp)
            return 1;
        fwrite(blob, 1, len, fp);
        fclose(fp);
        free(blob);
    }
    /* an empty archive and a bigger one as fuzz seeds */
    archive_t *a = make_grid(NULL);
    rng_t g;
    rng_seed(&g, 1);
    for (int k = 0; k < 2; k++) {
        unsigned char *blob;
        size_t len;
        archive_save(a, &blob, &len, NULL);
        snprintf(file, sizeof file, "%s/valid_grid_%s", dir, k ? "60" : "empty");
        FILE *fp = fopen(file, "wb");
        if (!fp)
            return 1;
        fwrite(blob, 1, len, fp);
        fclose(fp);
        free(blob);
        add_varied(a, &g, 60);
    }
    archive_free(a);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
        return write_corpus(argv[2]);
    test_round_trips();
    test_truncated_and_flipped();
    test_forged();
    test_random_mutations();
    test_corpus();
    return CHECK_DONE();
}
