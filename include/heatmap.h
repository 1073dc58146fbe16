/*
 * heatmap.h - two-dimensional views of a MAP-Elites archive for the status page: the
 * best objective and the number of elites per cell of a plane spanned by two measure
 * dimensions (the other dimensions are projected away), and the best elites. Pure C.
 *
 * Grid archives use their own cells: the plane has the grid's cells along the two
 * dimensions, and an elite lands where its cell's grid coordinates say (exactly the
 * archive's binning), unless that would exceed max_cells per axis, in which case
 * coordinates are scaled down (x * max / cells). CVT archives bin each elite's measures
 * into `bins` equal intervals of the archive's bounds per axis (clipped).
 */
#ifndef LORELEY_HEATMAP_H
#define LORELEY_HEATMAP_H

#include <stddef.h>
#include <stdint.h>

#include "archive.h"

#define HEATMAP_MAX_AXIS 4096   /* cells per axis */

typedef struct heatmap {
    size_t dim_x, dim_y;      /* 0-based measure dimensions of the axes */
    size_t nx, ny;            /* cells per axis */
    double lower[2], upper[2];/* the measure range of each axis */
    double *best;             /* nx * ny values, index y * nx + x; NAN where empty */
    uint32_t *count;          /* elites per cell, same index */
    size_t occupied;          /* cells with at least one elite */
    size_t elites;            /* elites placed (all of them) */
} heatmap;

/*
 * Builds the heatmap of archive `a` over measure dimensions dim_x and dim_y (0-based,
 * < archive_dimensions, may be equal). bins is the CVT resolution per axis and
 * max_cells the grid cap per axis (both 1..HEATMAP_MAX_AXIS). Returns 0 and fills *out
 * (free with heatmap_free), or -1 with a message in err.
 */
int heatmap_build(const archive_t *a, size_t dim_x, size_t dim_y, size_t bins,
                  size_t max_cells, heatmap *out, char *err, size_t errsize);

void heatmap_free(heatmap *h);

/*
 * The dense positions of the k best elites (highest objective first; ties: lower cell
 * first) written to positions (k slots). Returns how many were written
 * (min(k, archive_size)). k must be at most 1000.
 */
size_t heatmap_best(const archive_t *a, size_t k, size_t *positions);

#endif
