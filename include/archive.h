/*
 * archive.h - MAP-Elites archives: a grid archive with the exact semantics of pyribs 0.8.3
 * GridArchive (the reference scheduler's archive, contract §3.8) and a centroidal Voronoi
 * (CVT) archive with the same interface. Pure C, no Lua.
 *
 * Storage. Only occupied cells are stored: a dense array of elites (uniform sampling and
 * iteration in O(1) per elite, in insertion order), a map from the cell index to the
 * elite's position and threshold (hashed, or a table of one slot per cell once that is
 * no larger), and a map from blocks of 64 consecutive cells to an occupancy bitmap
 * (neighbour queries). An elite's record holds its commit hash when it is short (a hex
 * SHA-1 is packed to 20 bytes); metadata, an explicit solution and long hashes live in
 * one byte arena per archive. A grid of up to 2^63 - 1 cells works as well as a small
 * one; the memory is proportional to the number of elites (about 112 bytes per Loreley
 * elite on the default grid).
 *
 * Semantics (pyribs 0.8.3, single-solution adds as Loreley makes them):
 *  - grid index per dimension g = (C*(m - lo) + epsilon) / (hi - lo), truncated and
 *    clipped to [0, C-1] (a huge positive measure lands in the last cell, not the first
 *    as pyribs' int32 overflow would have it); cell = row-major ravel, last dim fastest;
 *  - the current threshold is the occupant's threshold, or threshold_min for an empty
 *    cell; a solution is inserted iff objective > threshold (ties rejected);
 *  - status 2 = new cell, 1 = improved an occupied cell, 0 = not added;
 *  - delta = objective - threshold, where an empty cell counts as 0.0 when
 *    threshold_min = -inf and as threshold_min otherwise;
 *  - new threshold = objective when threshold_min = -inf, otherwise
 *    (1 - lr) * old + objective * (1 - (1 - lr)) (CMA-MAE);
 *  - stats are updated on insert only, as pyribs does (obj_max is never lowered).
 *
 * Errors: every fallible function returns 0 on success and -1 on failure, with a message
 * in the archive_error given (which may be NULL). A failed call leaves the archive as
 * it was. Nothing here aborts on bad input.
 */
#ifndef LORELEY_ARCHIVE_H
#define LORELEY_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

#define ARCHIVE_MAX_GRID_DIMENSIONS 64
#define ARCHIVE_MAX_CVT_DIMENSIONS 4096
#define ARCHIVE_MAX_COMMIT_HASH 255           /* bytes */
#define ARCHIVE_MAX_METADATA (1u << 30)       /* bytes */
#define ARCHIVE_MAX_SOLUTION (1u << 20)       /* values */
#define ARCHIVE_MAX_ELITES 0xfffffffeu
#define ARCHIVE_MAX_CVT_CELLS (1u << 24)

typedef struct archive archive_t;

typedef enum archive_kind {
    ARCHIVE_GRID = 1,
    ARCHIVE_CVT = 2,
} archive_kind;

typedef struct archive_error {
    char message[256];
} archive_error;

/* Options shared by both kinds. archive_options_defaults() gives the reference's
 * defaults: learning_rate 1, threshold_min -inf, epsilon 1e-6, qd_score_offset 0. */
typedef struct archive_options {
    double learning_rate;     /* (0, 1]; != 1 needs a finite threshold_min */
    double threshold_min;     /* finite, or -INFINITY (plain MAP-Elites) */
    double epsilon;           /* grid only: added before the division, finite */
    double qd_score_offset;   /* finite */
} archive_options;

void archive_options_defaults(archive_options *options);

/*
 * Creates a grid archive of `dimensions` dimensions with cells_per_dimension[d] >= 1
 * cells each over [lower[d], upper[d]] (finite, lower < upper). Refuses a grid whose
 * cell count does not fit in 63 bits. The arrays are copied. *out owns the archive
 * (archive_free).
 */
int archive_new_grid(size_t dimensions, const uint64_t *cells_per_dimension,
                     const double *lower, const double *upper,
                     const archive_options *options, archive_t **out, archive_error *err);

/* CVT construction. Either `centroids` (centroid_count x dimensions values, copied) or,
 * when centroids is NULL, `centroid_count` centroids from seeded k-means (Lloyd) over
 * `samples` points drawn uniformly in [lower, upper] with rng_t seeded by `seed`, at most
 * `iterations` rounds. lower/upper are always required (the bounds of the measure
 * space). The same seed gives the same centroids on every machine. */
typedef struct archive_cvt_config {
    size_t dimensions;
    const double *lower, *upper;
    const double *centroids;   /* NULL: compute them */
    size_t centroid_count;
    size_t samples;            /* k-means: 0 means max(100000, centroid_count) */
    uint64_t seed;
    size_t iterations;         /* k-means: 0 means 100 */
} archive_cvt_config;

int archive_new_cvt(const archive_cvt_config *config, const archive_options *options,
                    archive_t **out, archive_error *err);

void archive_free(archive_t *archive);

/* Makes room for n elites in total (the record array and the cell map), so the next
 * n - size inserts do not grow them. Optional: the archive grows by itself. */
int archive_reserve(archive_t *a, size_t n, archive_error *err);

/* --- shape ---------------------------------------------------------------------------- */

archive_kind archive_get_kind(const archive_t *a);
size_t archive_dimensions(const archive_t *a);
uint64_t archive_cells(const archive_t *a);            /* total number of cells */
size_t archive_size(const archive_t *a);               /* number of elites */
const archive_options *archive_get_options(const archive_t *a);
const double *archive_lower(const archive_t *a);       /* D values */
const double *archive_upper(const archive_t *a);
const uint64_t *archive_grid_dims(const archive_t *a); /* D values; NULL for CVT */
const double *archive_centroids(const archive_t *a);   /* k x D; NULL for grid */

/* --- adding ---------------------------------------------------------------------------- */

/* One candidate elite. Strings are copied; they need not be NUL-terminated. */
typedef struct archive_entry {
    const char *commit_hash;    /* 1..ARCHIVE_MAX_COMMIT_HASH bytes */
    size_t commit_hash_len;
    double objective;           /* finite */
    const double *measures;     /* D finite values */
    const double *solution;     /* NULL: none; else solution_len finite values */
    size_t solution_len;
    const char *metadata;       /* NULL: none; opaque bytes (JSON text by convention) */
    size_t metadata_len;
    double timestamp;           /* insertion time, epoch seconds, finite */
} archive_entry;

typedef struct archive_add_result {
    int status;      /* 2 new cell, 1 improved, 0 not added */
    double delta;    /* pyribs' add_info["value"] */
    uint64_t cell;
} archive_add_result;

/* Offers one entry. An invalid entry (non-finite value, bad length) fails with -1 and
 * the archive unchanged. */
int archive_add(archive_t *a, const archive_entry *entry, archive_add_result *result,
                archive_error *err);

/* Offers n entries in order; exactly equivalent to n archive_add calls. Every entry is
 * validated first: if one is invalid nothing is added and the message names its
 * (0-based) position. results must hold n. */
int archive_add_many(archive_t *a, const archive_entry *entries, size_t n,
                     archive_add_result *results, archive_error *err);

/* The cell of a measure vector (D values). Fails on a non-finite measure. */
int archive_index_of(const archive_t *a, const double *measures, uint64_t *cell,
                     archive_error *err);

/* n measure vectors at measures[i * D]; fails (naming the row) on a non-finite one. */
int archive_index_of_many(const archive_t *a, const double *measures, size_t n,
                          uint64_t *cells, archive_error *err);

/* Grid coordinates of a cell (D values); fails when cell >= archive_cells or for CVT. */
int archive_grid_coordinates(const archive_t *a, uint64_t cell, uint64_t *coords,
                             archive_error *err);

/* --- reading ---------------------------------------------------------------------------- */

/*
 * A read-only view of one elite. The pointers point into the archive and stay valid
 * until the archive next changes (add, restore, clear, free). commit_hash is a copy.
 */
typedef struct archive_elite {
    uint64_t cell;
    double objective;
    double threshold;
    double timestamp;
    const double *measures;       /* D values */
    const double *solution;       /* NULL when the elite has none */
    size_t solution_len;
    const char *metadata;         /* NULL when none */
    size_t metadata_len;
    size_t commit_hash_len;
    char commit_hash[ARCHIVE_MAX_COMMIT_HASH + 1];   /* NUL-terminated */
} archive_elite;

/* Fills *out with the elite of `cell`; returns 1 when the cell is occupied, else 0. */
int archive_get(const archive_t *a, uint64_t cell, archive_elite *out);

/* The elite at dense position pos (0 <= pos < archive_size), for iteration. The order
 * is insertion order of the cells (an improved cell keeps its position); it survives
 * save/load, so sampling after a load repeats the same sequence. */
void archive_elite_at(const archive_t *a, size_t pos, archive_elite *out);

/* The cell at dense position pos (cheaper than archive_elite_at). */
uint64_t archive_cell_at(const archive_t *a, size_t pos);

/* Removes every elite and resets stats and thresholds (as pyribs clear()). */
void archive_clear(archive_t *a);

/* --- sampling and neighbours ------------------------------------------------------------ */

/*
 * Draws n dense positions uniformly from the elites into out (n slots). With replace,
 * every draw is rng_below(size) and n may be anything (0 if the archive is empty);
 * without, a Fisher-Yates prefix over positions 0..size-1 gives min(n, size) distinct
 * positions. Returns how many were written. Deterministic for a given generator state.
 * The records of the first 256 drawn are prefetched, so reading them right afterwards
 * waits for memory about once, not once per elite.
 */
size_t archive_sample(const archive_t *a, rng_t *rng, size_t n, int replace, size_t *out);

/* A growable list of cells, reused across calls (free with archive_cell_list_free). */
typedef struct archive_cell_list {
    uint64_t *cells;
    size_t count, capacity;
} archive_cell_list;

void archive_cell_list_free(archive_cell_list *list);

typedef enum archive_neighbour_strategy {
    ARCHIVE_NEIGHBOURS_AUTO = 0,   /* choose the cheaper per call */
    ARCHIVE_NEIGHBOURS_BALL = 1,   /* enumerate the ball through the occupancy bitmaps */
    ARCHIVE_NEIGHBOURS_SCAN = 2,   /* scan every elite */
} archive_neighbour_strategy;

/*
 * Grid: the occupied cells within Chebyshev distance `radius` of `cell` (clipped to the
 * grid), centre excluded, in increasing cell order. CVT: the occupied cells among the
 * `radius` centroids nearest to the centroid of `cell` (centre excluded), nearest first
 * (ties by lower cell). The result replaces the list's content. Fails when cell is
 * outside the archive or memory runs out.
 */
int archive_neighbours(const archive_t *a, uint64_t cell, uint64_t radius,
                       archive_neighbour_strategy strategy, archive_cell_list *out,
                       archive_error *err);

/* --- statistics ------------------------------------------------------------------------- */

typedef struct archive_stats {
    uint64_t num_elites;
    uint64_t cells;
    double coverage;          /* num_elites / cells */
    double qd_score;          /* objective_sum - num_elites * qd_score_offset */
    double norm_qd_score;     /* qd_score / cells */
    int has_objective;        /* 0 before the first insert: obj_max, obj_mean are None */
    double obj_max;
    double obj_mean;          /* objective_sum / num_elites */
    double objective_sum;     /* the running sum pyribs keeps */
} archive_stats;

void archive_get_stats(const archive_t *a, archive_stats *out);

/* --- persistence ------------------------------------------------------------------------ */

/*
 * Serialises the whole archive (configuration, CVT centroids, elites in dense order with
 * their thresholds, running stats) as a versioned little-endian blob with a 64-bit
 * checksum. *blob is malloc'd; the caller frees it.
 */
int archive_save(const archive_t *a, unsigned char **blob, size_t *len, archive_error *err);

/* Rebuilds an archive from a blob. A truncated, corrupted or inconsistent blob fails
 * with a message; it never crashes. */
int archive_load(const void *blob, size_t len, archive_t **out, archive_error *err);

/*
 * Restores one elite exactly (the per-cell row form), without add semantics: the cell
 * must be empty, inside the archive and equal to index_of(measures); threshold must be
 * finite. Stats are updated as for an insert of a new cell, so after restoring every row
 * into an empty archive num_elites, coverage and qd_score are exact, and objective_sum /
 * obj_max are those of the stored elites (pyribs' history-dependent obj_max is not kept
 * per row).
 */
int archive_restore(archive_t *a, uint64_t cell, const archive_entry *entry, double threshold,
                    archive_error *err);

/* Replaces the running stats (used by blob loading; exposed for the row form's callers
 * who persist them). objective_sum and obj_max must be finite. */
int archive_set_running_stats(archive_t *a, double objective_sum, int has_objective,
                              double obj_max, archive_error *err);

/* 64-bit checksum of the blob format (exposed for tests and tools). */
uint64_t archive_checksum(const void *data, size_t len);

#endif
