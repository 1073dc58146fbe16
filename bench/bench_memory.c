/*
 * bench_memory - what one random memory access costs on this machine, the floor under
 * any archive operation that touches a random elite (see bench/archive.md).
 *
 *   build/bench_memory
 *
 * For working sets of 256 KB to 128 MB (2 MB pages, advised as the archive's tables are):
 *  - dependent: a pointer chase through a random cyclic permutation of cache lines, so
 *    each load waits for the one before (the latency of one access);
 *  - independent: loads of random lines whose addresses are known in advance, so the CPU
 *    overlaps their misses (the cost per access when nothing waits for the previous one).
 * Medians of 7 (dependent) and 5 (independent) timed passes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define LINE 64
#define HUGE_PAGE ((size_t)2 << 20)

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A zeroed, touched, 2 MB-aligned region of `bytes` (a multiple of 2 MB) with huge pages
 * advised. */
static uint64_t *huge_region(size_t bytes)
{
    unsigned char *p = mmap(NULL, bytes + HUGE_PAGE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    unsigned char *start =
        (unsigned char *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    size_t head = (size_t)(start - p);
    if (head)
        munmap(p, head);
    if (HUGE_PAGE - head)
        munmap(start + bytes, HUGE_PAGE - head);
    madvise(start, bytes, MADV_HUGEPAGE);
    memset(start, 0, bytes);
    return (uint64_t *)start;
}

int main(void)
{
    static const size_t sizes_kb[] = {256, 1024, 2048, 4096, 16384, 32768, 131072};
    enum { CHASE = 1000000, LOADS = 1000000 };
    uint32_t *targets = malloc(LOADS * sizeof *targets);
    uint64_t seed = 88172645463325252ULL;
    printf("working set   dependent load   independent load   (ns per access, medians)\n");
    for (size_t k = 0; k < sizeof sizes_kb / sizeof *sizes_kb; k++) {
        size_t bytes = sizes_kb[k] << 10, lines = bytes / LINE;
        size_t mapped = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        uint64_t *region = huge_region(mapped);
        uint32_t *order = malloc(lines * sizeof *order);
        if (!region || !order || !targets)
            return 1;
        for (size_t i = 0; i < lines; i++)
            order[i] = (uint32_t)i;
        for (size_t i = lines - 1; i > 0; i--) {
            size_t j = xorshift(&seed) % (i + 1);
            uint32_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        /* each line's first word holds the word index of the next line of the cycle */
        for (size_t i = 0; i < lines; i++)
            region[(size_t)order[i] * (LINE / 8)] = (uint64_t)order[(i + 1) % lines] * (LINE / 8);
        double dependent[7], independent[5];
        uint64_t sink = 0;
        for (int r = 0; r < 7; r++) {
            uint64_t at = 0;
            double t0 = now_ns();
            for (size_t i = 0; i < CHASE; i++)
                at = region[at];
            dependent[r] = (now_ns() - t0) / CHASE;
            sink += at;
        }
        for (size_t i = 0; i < LOADS; i++)
            targets[i] = (uint32_t)(xorshift(&seed) % lines);
        for (int r = 0; r < 5; r++) {
            double t0 = now_ns();
            for (size_t i = 0; i < LOADS; i++)
                sink += region[(size_t)targets[i] * (LINE / 8) + 1];
            independent[r] = (now_ns() - t0) / LOADS;
        }
        qsort(dependent, 7, sizeof *dependent, cmp_double);
        qsort(independent, 5, sizeof *independent, cmp_double);
        printf("%8zu KB   %11.1f      %11.1f%s\n", sizes_kb[k], dependent[3], independent[2],
               sink == 1 ? " " : "");
        munmap(region, mapped);
        free(order);
    }
    free(targets);
    return 0;
}
