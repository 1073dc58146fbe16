/*
 * bench_descriptor.c - the descriptor targets of issue 4:
 *   1. the whole descriptor (preprocess, chunk, embed, project, clip) of a commit
 *      touching 6 files of 2,000 lines each: <= 2 ms median;
 *   2. a PCA refit over a 4,096 x 256 history: <= 100 ms median;
 *   3. projecting one 256-d vector: <= 1 us median.
 * Usage: build/bench_descriptor [repetitions] [file ...]   (figures in bench/descriptor.md)
 * With files, the commit is made of (the first 2,000 lines of) up to six of them instead
 * of the generated ones. Times are wall-clock medians; "cpu" is the thread CPU time,
 * which a busy shared machine does not inflate.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "descriptor.h"
#include "reducer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The first 2,000 lines of a file, or NULL. */
static char *read_head(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    int lines = 0, c;
    while (lines < 2000 && n + 1 < cap && (c = fgetc(f)) != EOF) {
        buf[n++] = (char)c;
        lines += c == '\n';
    }
    fclose(f);
    *len = n;
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t next_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A plausible 2,000-line Python source file, shaped like real code: classes, methods,
 * assignments, calls, returns, control flow, comments, docstrings and blank lines;
 * 36 bytes per line on average, as the Python standard library (35.6). */
static char *make_file(int seed, size_t *len)
{
    static const char *const words[] = { "value", "count", "index", "result", "buffer",
        "request", "handler", "parseHeader", "HTTPServer", "max_size", "total", "items",
        "node", "left", "right", "config", "retry_count", "userId", "payload", "offset",
        "name", "data", "key", "path", "self.state", "options", "response", "line" };
    const size_t nw = sizeof words / sizeof words[0];
    size_t cap = 200000, n = 0;
    char *buf = malloc(cap);
    rng_state ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull;
#define W(shift) words[(r >> (shift)) % nw]
    for (int line = 0; line < 2000; line++) {
        char tmp[256];
        int k;
        uint64_t r = next_u64();
        switch (r % 16) {
        case 0:
            k = snprintf(tmp, sizeof tmp, "\n");
            break;
        case 1:
            k = snprintf(tmp, sizeof tmp, "        %s = self._%s(%s, %s=%s)\n", W(8), W(16), W(24),
                         W(32), W(40));
            break;
        case 2:
            k = snprintf(tmp, sizeof tmp, "    def %s_%d(self, %s):\n", W(8), line % 97, W(16));
            break;
        case 3:
            k = snprintf(tmp, sizeof tmp, "        # %s the %s\n", W(8), W(16));
            break;
        case 4:
            k = snprintf(tmp, sizeof tmp, "        return %s\n", W(8));
            break;
        case 5:
            k = snprintf(tmp, sizeof tmp, "        if %s is None:\n", W(8));
            break;
        case 6:
            k = snprintf(tmp, sizeof tmp, "            %s = %s(%s)\n", W(8), W(16), W(24));
            break;
        case 7:
            k = snprintf(tmp, sizeof tmp, "        \"\"\"Return the %s of %s.\"\"\"\n", W(8), W(16));
            break;
        case 8:
            k = snprintf(tmp, sizeof tmp, "        for %s in %s:\n", W(8), W(16));
            break;
        case 9:
            k = snprintf(tmp, sizeof tmp, "class %s%d:\n", W(8), line);
            break;
        default:
            k = snprintf(tmp, sizeof tmp, "        %s = %s[%d] + %s.get(%s, %d)\n", W(8), W(16),
                         (int)((r >> 32) % 64), W(24), W(48), (int)((r >> 40) % 100));
            break;
        }
        memcpy(buf + n, tmp, (size_t)k);
        n += (size_t)k;
    }
#undef W
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 200;
    int nfiles = argc > 2 ? argc - 2 : 0;
    if (nfiles > 6)
        nfiles = 6;
    if (reps < 5)
        reps = 5;
    double *times = malloc((size_t)reps * sizeof *times);

    /* ---- 1. whole descriptor ---------------------------------------------------------- */
    descriptor_options o;
    descriptor_options_init(&o);
    descriptor_source src[6];
    char paths[6][32];
    size_t total_bytes = 0;
    for (int i = 0; i < 6; i++) {
        size_t len;
        char *text = i < nfiles ? read_head(argv[2 + i], &len) : make_file(i + 1, &len);
        if (!text) {
            fprintf(stderr, "cannot read %s\n", argv[2 + i]);
            return 1;
        }
        snprintf(paths[i], sizeof paths[i], "src/module_%d.py", i);
        src[i].path.ptr = paths[i];
        src[i].path.len = strlen(paths[i]);
        src[i].change_count = 10 + i;
        src[i].content.ptr = text;
        src[i].content.len = len;
        total_bytes += len;
    }
    size_t dims = descriptor_dimensions(&o);
    descriptor_workspace *w = descriptor_workspace_new(dims);
    double *vector = malloc(dims * sizeof *vector);
    descriptor_file_result results[6];
    descriptor_file_in in[6];
    for (int i = 0; i < 6; i++) {
        in[i].path = src[i].path;
        in[i].change_count = src[i].change_count;
    }
    /* A fitted reducer, as after the first 32 commits. */
    reducer_params p;
    reducer_params_init(&p, 4, 32, 4096, 50, 1, 0);
    reducer *r = reducer_new(&p);
    double *x = malloc(dims * sizeof *x);
    for (int i = 0; i < 64; i++) {
        for (size_t j = 0; j < dims; j++)
            x[j] = (double)(next_u64() >> 11) / 9007199254740992.0 - 0.5;
        char h[32];
        snprintf(h, sizeof h, "warm%d", i);
        double m[4];
        int refitted;
        reducer_observe(r, h, strlen(h), x, dims, 0, m, &refitted);
    }
    double lo[4], hi[4], measures[4];
    descriptor_bounds(NULL, 0, NULL, 0, 4, lo, hi);
    size_t chunks = 0;
    double *cpu = malloc((size_t)reps * sizeof *cpu);
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s(), c0 = cpu_s();
        descriptor_selection sel;
        descriptor_select(&o, NULL, in, 6, &sel);
        size_t kept;
        descriptor_embed_sources(w, &o, src, 6, results, vector, &kept, &chunks);
        reducer_project(r, vector, dims, measures);
        descriptor_clip(measures, lo, hi, 4);
        descriptor_selection_free(&sel);
        times[rep] = now_s() - t0;
        cpu[rep] = cpu_s() - c0;
    }
    double whole = median(times, reps);
    printf("whole descriptor, 6 files x 2000 lines (%s, %zu bytes, %zu chunks): median %.3f ms "
           "(cpu %.3f ms, min %.3f ms) over %d runs\n",
           nfiles ? "given files" : "generated", total_bytes, chunks, whole * 1e3,
           median(cpu, reps) * 1e3, times[0] * 1e3, reps);

    /* ---- 1b. with the reducer recording the commit (observe instead of project) ------- */
    for (int rep = 0; rep < reps; rep++) {
        char h[32];
        snprintf(h, sizeof h, "commit%d", rep);
        double t0 = now_s();
        size_t kept;
        descriptor_embed_sources(w, &o, src, 6, results, vector, &kept, &chunks);
        int refitted;
        reducer_observe(r, h, strlen(h), vector, dims, 0, measures, &refitted);
        descriptor_clip(measures, lo, hi, 4);
        times[rep] = now_s() - t0;
    }
    printf("whole descriptor with reducer:observe (refits every 50): median %.3f ms\n",
           median(times, reps) * 1e3);

    /* ---- 2. refit over 4096 x 256 ------------------------------------------------------ */
    size_t n = 4096, F = 256;
    double *data = malloc(n * F * sizeof *data);
    const double **rows = malloc(n * sizeof *rows);
    for (size_t i = 0; i < n; i++) {
        double norm = 0;
        for (size_t j = 0; j < F; j++) {
            /* a few strong directions plus noise, as embeddings have */
            double v = ((double)(next_u64() >> 11) / 9007199254740992.0 - 0.5) * 0.1;
            if (j < 8)
                v += sin((double)i * (j + 1) * 0.37) / (double)(j + 1);
            data[i * F + j] = v;
            norm += v * v;
        }
        norm = sqrt(norm);
        for (size_t j = 0; j < F; j++)
            data[i * F + j] /= norm;
        rows[i] = data + i * F;
    }
    int refit_reps = reps < 15 ? reps : 15;
    pca_model m;
    for (int rep = 0; rep < refit_reps; rep++) {
        double t0 = now_s();
        pca_fit(rows, n, F, 4, 0, &m);
        times[rep] = now_s() - t0;
        if (rep + 1 < refit_reps)
            pca_model_free(&m);
    }
    printf("refit (PCA fit) over a %zu x %zu history: median %.1f ms over %d runs "
           "(variance ratio %.3f %.3f %.3f %.3f)\n",
           n, F, median(times, refit_reps) * 1e3, refit_reps, m.explained_variance_ratio[0],
           m.explained_variance_ratio[1], m.explained_variance_ratio[2],
           m.explained_variance_ratio[3]);

    /* ---- 3. projecting one vector ------------------------------------------------------- */
    int inner = 10000;
    double y[4], sink = 0;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        for (int i = 0; i < inner; i++) {
            pca_transform(&m, rows[i % n], 0, y);
            sink += y[0];
        }
        times[rep] = (now_s() - t0) / inner;
    }
    printf("project one %zu-d vector (pca_transform): median %.1f ns\n", F, median(times, reps) * 1e9);
    reducer *big = reducer_new(&p);
    for (size_t i = 0; i < 64; i++) {
        char h[32];
        snprintf(h, sizeof h, "h%zu", i);
        int refitted;
        reducer_observe(big, h, strlen(h), rows[i], F, 0, y, &refitted);
    }
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        for (int i = 0; i < inner; i++) {
            reducer_project(big, rows[i % n], F, y);
            sink += y[0];
        }
        times[rep] = (now_s() - t0) / inner;
    }
    printf("reducer_project (normalise + project + pad) of one %zu-d vector: median %.1f ns "
           "(checksum %.3g)\n", F, median(times, reps) * 1e9, sink);

    pca_model_free(&m);
    reducer_free(big);
    reducer_free(r);
    descriptor_workspace_free(w);
    descriptor_options_free(&o);
    for (int i = 0; i < 6; i++)
        free((void *)src[i].content.ptr);
    free(vector);
    free(x);
    free(data);
    free(rows);
    free(times);
    free(cpu);
    return 0;
}
