/*
 * heatmap.c - see heatmap.h. One pass over the archive's dense elite array.
 */
#include "heatmap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void heatmap_free(heatmap *h)
{
    free(h->best);
    free(h->count);
    h->best = NULL;
    h->count = NULL;
}

/* The bin of value in [lo, hi) split into n (clipped to [0, n-1]). */
static size_t bin_of(double value, double lo, double hi, size_t n)
{
    double t = (value - lo) / (hi - lo) * (double)n;
    if (!(t >= 0))   /* also NaN */
        return 0;
    if (t >= (double)n)
        return n - 1;
    return (size_t)t;
}

int heatmap_build(const archive_t *a, size_t dim_x, size_t dim_y, size_t bins,
                  size_t max_cells, heatmap *out, char *err, size_t errsize)
{
    memset(out, 0, sizeof *out);
    size_t d = archive_dimensions(a);
    if (dim_x >= d || dim_y >= d) {
        snprintf(err, errsize, "measure dimensions %zu and %zu: the archive has %zu", dim_x + 1,
                 dim_y + 1, d);
        return -1;
    }
    if (bins < 1 || bins > HEATMAP_MAX_AXIS || max_cells < 1 || max_cells > HEATMAP_MAX_AXIS) {
        snprintf(err, errsize, "bins and max_cells must be in 1..%d", HEATMAP_MAX_AXIS);
        return -1;
    }
    const uint64_t *grid = archive_grid_dims(a);
    const double *lower = archive_lower(a), *upper = archive_upper(a);
    uint64_t cells_x = grid ? grid[dim_x] : bins, cells_y = grid ? grid[dim_y] : bins;
    out->dim_x = dim_x;
    out->dim_y = dim_y;
    out->nx = cells_x > max_cells ? max_cells : (size_t)cells_x;
    out->ny = cells_y > max_cells ? max_cells : (size_t)cells_y;
    out->lower[0] = lower[dim_x];
    out->lower[1] = lower[dim_y];
    out->upper[0] = upper[dim_x];
    out->upper[1] = upper[dim_y];
    size_t n = out->nx * out->ny;
    out->best = malloc(n * sizeof *out->best);
    out->count = calloc(n, sizeof *out->count);
    if (!out->best || !out->count) {
        heatmap_free(out);
        snprintf(err, errsize, "out of memory for a %zu x %zu heatmap", out->nx, out->ny);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        out->best[i] = NAN;

    /* Row-major cells, last dimension fastest: coordinate k = (cell / stride_k) % C_k. */
    uint64_t stride_x = 1, stride_y = 1;
    if (grid) {
        for (size_t k = d; k-- > dim_x + 1;)
            stride_x *= grid[k];
        for (size_t k = d; k-- > dim_y + 1;)
            stride_y *= grid[k];
    }
    size_t size = archive_size(a);
    for (size_t pos = 0; pos < size; pos++) {
        archive_elite e;
        archive_elite_at(a, pos, &e);
        size_t x, y;
        if (grid) {
            uint64_t cx = (e.cell / stride_x) % cells_x, cy = (e.cell / stride_y) % cells_y;
            x = cells_x > out->nx ? (size_t)(cx * out->nx / cells_x) : (size_t)cx;
            y = cells_y > out->ny ? (size_t)(cy * out->ny / cells_y) : (size_t)cy;
        } else {
            x = bin_of(e.measures[dim_x], out->lower[0], out->upper[0], out->nx);
            y = bin_of(e.measures[dim_y], out->lower[1], out->upper[1], out->ny);
        }
        size_t i = y * out->nx + x;
        if (out->count[i] == 0) {
            out->occupied++;
            out->best[i] = e.objective;
        } else if (e.objective > out->best[i]) {
            out->best[i] = e.objective;
        }
        if (out->count[i] < UINT32_MAX)
            out->count[i]++;
        out->elites++;
    }
    return 0;
}

/* Whether elite (oa, ca) ranks before (ob, cb): higher objective, then lower cell. */
static int ranks_before(double oa, uint64_t ca, double ob, uint64_t cb)
{
    return oa > ob || (oa == ob && ca < cb);
}

size_t heatmap_best(const archive_t *a, size_t k, size_t *positions)
{
    if (k > 1000)
        k = 1000;
    double objective[1000];
    uint64_t cell[1000];
    size_t kept = 0, size = archive_size(a);
    /* An insertion-sorted list of the best k so far; most elites fail the first test. */
    for (size_t pos = 0; pos < size && k > 0; pos++) {
        archive_elite e;
        archive_elite_at(a, pos, &e);
        if (kept == k && !ranks_before(e.objective, e.cell, objective[k - 1], cell[k - 1]))
            continue;
        size_t i = kept < k ? kept++ : k - 1;
        while (i > 0 && ranks_before(e.objective, e.cell, objective[i - 1], cell[i - 1])) {
            objective[i] = objective[i - 1];
            cell[i] = cell[i - 1];
            positions[i] = positions[i - 1];
            i--;
        }
        objective[i] = e.objective;
        cell[i] = e.cell;
        positions[i] = pos;
    }
    return kept;
}
