/*
 * archive.c - MAP-Elites grid and CVT archives (see archive.h for the contract).
 *
 * Layout of one archive:
 *   records  dense array of elites, `stride` 64-bit words each: a 64-byte elite_head
 *            (cell, objective, threshold, timestamp, the commit hash when it fits in 22
 *            bytes, flags, the offset of an arena entry) followed by D measures. A
 *            Loreley elite (40-digit hash, solution = measures, no metadata) is one
 *            record and nothing else, so reading or sampling it touches one place;
 *   cellmap  from cell to its elite, in 16-byte slots: the threshold, a key and the
 *            position + 1 (0 = empty). Everything an add decides on is in the slot, so a
 *            rejected add reads one cache line and an improvement only writes its record
 *            (in plain MAP-Elites, where a threshold is its objective).
 *            Hashed (linear probing, load <= 3/4) while small; once a hashed table would
 *            have as many slots as the grid has cells, a direct table indexed by the
 *            cell instead (16 MB for 32^4 cells, from 393,217 elites on), no larger and
 *            never probed. The key is the cell itself when cells fit in 32 bits, else
 *            the low half of its hash, confirmed against the record;
 *   blockmap from block = cell / 64 to a 64-bit occupancy bitmap, so a neighbour query
 *            reads one word per run of cells: hashed while small, a direct array of one
 *            word per block once that is no larger (128 KB for 32^4 cells);
 *   arena    what does not fit the record (metadata, an explicit solution, a long
 *            commit hash), as 8-byte aligned entries, each after a tag naming its elite.
 *
 * Entry (in the arena, and per elite in a saved blob, where the hash is always present):
 *              [flags u8][stored hash length u8][hash bytes]
 *              [if ENTRY_META: metadata length u32][metadata bytes]
 *              [if ENTRY_SOL_EXPLICIT: pad to 8, count u64, count doubles]
 *              padded to a multiple of 8.
 * A commit hash of lower-case hex digits of even length is stored packed (two digits
 * a byte): a 40-digit SHA-1 takes 20 bytes. A solution bit-identical to the measures
 * (what Loreley stores) is a flag, not a copy. An elite that changes gets a new entry;
 * the old one is garbage until the arena fills up and is compacted (arena_reserve), so
 * no add reads an old entry. Tables of 4 MB and more get their own mappings with
 * transparent huge pages, since random access over 100 MB otherwise misses the TLB
 * almost every time.
 *
 * The implementation assumes a little-endian host (x86-64, aarch64): blobs are
 * little-endian and written with memcpy.
 */
#include "archive.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cvt.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "archive.c assumes little endian");

/* The cell index formula must round exactly as numpy does: no fused multiply-add. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define ENTRY_HEX 0x01
#define ENTRY_META 0x02
#define ENTRY_SOL_MASK 0x0c
#define ENTRY_SOL_NONE 0x00
#define ENTRY_SOL_MEASURES 0x04
#define ENTRY_SOL_EXPLICIT 0x08

#define REC_HASH_HEX 0x01       /* the hash is inline, hex-packed */
#define REC_HASH_RAW 0x02       /* the hash is inline, as given */
#define REC_SOL_MEASURES 0x04   /* the solution is the measures */
#define INLINE_HASH 22

typedef struct elite_head {
    uint64_t cell;
    double objective;
    double threshold;
    double timestamp;
    uint64_t extra;              /* 1 + offset of the elite's arena tag; 0 = none */
    uint8_t flags;
    uint8_t hash_len;            /* inline bytes */
    uint8_t hash[INLINE_HASH];
} elite_head;

_Static_assert(sizeof(elite_head) == 64, "an elite head is one cache line");

#define HEAD_WORDS (sizeof(elite_head) / sizeof(uint64_t))

/* What the cell index needs of one grid dimension, together in one place. */
typedef struct grid_axis {
    double cells;            /* (double)cells_per_dimension */
    double lower;
    double span;             /* upper - lower */
    uint64_t last;           /* cells_per_dimension - 1 */
} grid_axis;

/* One slot of the cell map: what an add needs to decide, in 16 bytes. */
typedef struct cell_slot {
    double threshold;        /* the occupant's threshold (a rejected add reads nothing else) */
    uint32_t key;            /* see slot_key */
    uint32_t pos1;           /* dense position + 1; 0 = empty */
} cell_slot;

_Static_assert(sizeof(cell_slot) == 16, "four cell slots to a cache line");

typedef struct block_slot {
    uint64_t key;            /* block + 1; 0 = empty */
    uint64_t bits;
} block_slot;

struct archive {
    archive_kind kind;
    size_t dim;
    uint64_t cells;
    archive_options options;
    double *lower, *upper;
    uint64_t *grid_dims;     /* grid: cells per dimension */
    uint64_t *strides;       /* grid: ravel strides (last dimension 1) */
    grid_axis *axes;         /* grid: per dimension, for the cell index */
    double *centroids;       /* cvt: cells x dim */
    cvt_tree *tree;          /* cvt */

    /* elites */
    uint64_t *records;
    size_t stride;           /* words per record */
    size_t count, capacity;

    cell_slot *slots;        /* the cell map (see cellmap_reserve) */
    size_t slot_count;       /* slots allocated */
    size_t slot_mask;        /* hashed: slot_count - 1 */
    size_t slot_limit;       /* elites the table holds before it must grow */
    unsigned slot_shift;     /* hashed: 64 - log2(slot_count) */
    int direct;              /* slot index = cell */
    int exact_keys;          /* cells <= 2^32: a slot's key is its cell */
    int thresholds_are_objectives;   /* every elite's threshold has its objective's bits */

    block_slot *blockmap;
    size_t blockmap_mask, blockmap_count;
    size_t blockmap_limit;   /* blocks the table holds before it must grow (load 3/4) */
    unsigned blockmap_shift;
    uint64_t *block_bits;    /* direct: one word per block, replacing the hashed table */
    size_t block_words;

    unsigned char *arena;
    size_t arena_used, arena_capacity;

    /* running stats, as pyribs keeps them */
    double objective_sum;
    int has_objective;
    double obj_max;
};

static int fail(archive_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(archive_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A 64-bit finaliser (MurmurHash3's fmix64): a bijection, so distinct cells never
 * collide in the full hash; the top bits pick the home slot, the low 32 are the tag. */
static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* --- memory for the big tables ----------------------------------------------------------- */

#define HUGE_THRESHOLD ((size_t)4 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

static size_t round_huge(size_t n)
{
    return (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
}

/* Zeroed memory of `bytes`; large requests get a 2 MB-aligned private mapping advised
 * for transparent huge pages. Free with region_free(p, bytes) (the same size). */
static void *region_alloc(size_t bytes)
{
    if (bytes < HUGE_THRESHOLD)
        return calloc(1, bytes ? bytes : 1);
    size_t body = round_huge(bytes), len = body + HUGE_PAGE;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    size_t head = start - (uintptr_t)p;
    if (head)
        munmap(p, head);
    if (len - head - body)
        munmap((void *)(start + body), len - head - body);
    madvise((void *)start, body, MADV_HUGEPAGE);   /* advice only: failure is harmless */
    return (void *)start;
}

static void region_free(void *p, size_t bytes)
{
    if (!p)
        return;
    if (bytes < HUGE_THRESHOLD)
        free(p);
    else
        munmap(p, round_huge(bytes));
}

/* Grows a region from old_bytes to new_bytes, keeping the first `used` bytes. */
static void *region_grow(void *p, size_t old_bytes, size_t used, size_t new_bytes)
{
    if (new_bytes < HUGE_THRESHOLD && (p == NULL || old_bytes < HUGE_THRESHOLD))
        return realloc(p, new_bytes);
    void *q = region_alloc(new_bytes);
    if (!q)
        return NULL;
    if (used)
        memcpy(q, p, used);
    region_free(p, old_bytes);
    return q;
}

static inline elite_head *head_at(const archive_t *a, size_t pos)
{
    return (elite_head *)(a->records + pos * a->stride);
}

static inline double *measures_at(const archive_t *a, size_t pos)
{
    return (double *)(a->records + pos * a->stride + HEAD_WORDS);
}

void archive_options_defaults(archive_options *o)
{
    o->learning_rate = 1.0;
    o->threshold_min = -INFINITY;
    o->epsilon = 1e-6;
    o->qd_score_offset = 0.0;
}

/* --- maps ------------------------------------------------------------------------------ */

/* The key a slot stores for cell: the cell itself when every cell fits in 32 bits (so a
 * match is exact), else the low half of its hash (a match is confirmed on the record). */
static inline uint32_t slot_key(const archive_t *a, uint64_t cell, uint64_t hash)
{
    return a->exact_keys ? (uint32_t)cell : (uint32_t)hash;
}

/* The home slot of cell. */
static inline size_t slot_home(const archive_t *a, uint64_t cell, uint64_t *hash)
{
    if (a->direct)
        return (size_t)cell;
    *hash = mix64(cell);
    return (size_t)(*hash >> a->slot_shift);
}

/*
 * The slot of cell when it is occupied (*found = 1), else the empty slot where it would
 * go (*found = 0). A direct table answers at the home slot; a hashed one probes linearly
 * (load <= 3/4), comparing keys in the slots and, for grids over 2^32 cells, confirming a
 * key match on the record.
 */
static inline cell_slot *slot_probe(const archive_t *a, uint64_t cell, int *found)
{
    uint64_t hash = 0;
    size_t i = slot_home(a, cell, &hash);
    uint32_t key = slot_key(a, cell, hash);
    for (;;) {
        cell_slot *s = &a->slots[i];
        if (s->pos1 == 0) {
            *found = 0;
            return s;
        }
        if (s->key == key && (a->exact_keys || head_at(a, s->pos1 - 1)->cell == cell)) {
            *found = 1;
            return s;
        }
        i = (i + 1) & a->slot_mask;
    }
}

/* Position of cell, or SIZE_MAX. */
static inline size_t cellmap_find(const archive_t *a, uint64_t cell)
{
    int found;
    cell_slot *s = slot_probe(a, cell, &found);
    return found ? (size_t)s->pos1 - 1 : SIZE_MAX;
}

/* The address of cell's home slot, for prefetching. */
static inline const cell_slot *slot_home_address(const archive_t *a, uint64_t cell)
{
    uint64_t hash;
    return &a->slots[slot_home(a, cell, &hash)];
}

/* The smallest b with 2^b >= n. */
static unsigned log2_exact(size_t n)
{
    unsigned b = 0;
    while (((size_t)1 << b) < n)
        b++;
    return b;
}

/*
 * Makes room for `needed` elites in the cell map. A hashed table doubles while its load
 * would pass 3/4; once it would have as many slots as the archive has cells (and keys are
 * exact), it becomes a direct table of one slot per cell instead, no larger and never
 * probed, which then never grows again. Rebuilding reads every record in dense order.
 */
static int cellmap_reserve(archive_t *a, size_t needed)
{
    if (a->direct || (a->slots && needed <= a->slot_limit))
        return 0;
    size_t cap = a->slots ? a->slot_mask + 1 : 16;
    while (needed > cap / 4 * 3)
        cap *= 2;
    int direct = a->exact_keys && a->cells <= cap;
    size_t count = direct ? (size_t)a->cells : cap;
    cell_slot *slots = region_alloc(count * sizeof *slots);
    if (!slots)
        return -1;
    archive_t next = *a;
    next.slots = slots;
    next.direct = direct;
    next.slot_mask = direct ? SIZE_MAX : cap - 1;
    next.slot_shift = direct ? 0 : 64 - log2_exact(cap);
    next.slot_limit = direct ? (size_t)a->cells : cap / 4 * 3;
    for (size_t pos = 0; pos < a->count; pos++) {
        const elite_head *h = head_at(a, pos);
        int found;
        cell_slot *s = slot_probe(&next, h->cell, &found);
        uint64_t hash = mix64(h->cell);
        s->threshold = h->threshold;
        s->key = slot_key(a, h->cell, hash);
        s->pos1 = (uint32_t)(pos + 1);
    }
    region_free(a->slots, a->slot_count * sizeof *slots);
    a->slots = slots;
    a->slot_count = count;
    a->direct = direct;
    a->slot_mask = next.slot_mask;
    a->slot_shift = next.slot_shift;
    a->slot_limit = next.slot_limit;
    return 0;
}

/* The occupancy bitmap of block (cells 64*block .. 64*block + 63); 0 when none. */
static inline uint64_t blockmap_get(const archive_t *a, uint64_t block)
{
    if (a->block_bits)
        return a->block_bits[block];
    size_t i = (size_t)(mix64(block) >> a->blockmap_shift);
    for (;;) {
        const block_slot *s = &a->blockmap[i];
        if (s->key == block + 1)
            return s->bits;
        if (s->key == 0)
            return 0;
        i = (i + 1) & a->blockmap_mask;
    }
}

/*
 * Doubles the hashed block map (or creates it with 16 slots) and re-inserts every block.
 * When the doubled table would take at least as many bytes as one word per block of the
 * whole grid, the map becomes that direct array instead (128 KB for 32^4 cells, from a
 * few thousand elites on), which never grows again.
 */
static int blockmap_grow(archive_t *a)
{
    size_t cap = a->blockmap ? a->blockmap_mask + 1 : 0;
    size_t ncap = cap ? cap * 2 : 16;
    uint64_t words = a->cells / 64 + 1;
    if ((uint64_t)ncap * sizeof(block_slot) >= words * sizeof(uint64_t)) {
        uint64_t *bits = region_alloc((size_t)words * sizeof *bits);
        if (!bits)
            return -1;
        for (size_t k = 0; k < cap; k++)
            if (a->blockmap[k].key != 0)
                bits[a->blockmap[k].key - 1] = a->blockmap[k].bits;
        region_free(a->blockmap, cap * sizeof *a->blockmap);
        a->blockmap = NULL;
        a->blockmap_mask = 0;
        a->block_bits = bits;
        a->block_words = (size_t)words;
        a->blockmap_limit = SIZE_MAX;
        return 0;
    }
    block_slot *slots = region_alloc(ncap * sizeof *slots);
    if (!slots)
        return -1;
    unsigned shift = 64 - log2_exact(ncap);
    for (size_t k = 0; k < cap; k++) {
        if (a->blockmap[k].key == 0)
            continue;
        size_t i = (size_t)(mix64(a->blockmap[k].key - 1) >> shift);
        while (slots[i].key != 0)
            i = (i + 1) & (ncap - 1);
        slots[i] = a->blockmap[k];
    }
    region_free(a->blockmap, cap * sizeof *slots);
    a->blockmap = slots;
    a->blockmap_mask = ncap - 1;
    a->blockmap_limit = ncap / 4 * 3;
    a->blockmap_shift = shift;
    return 0;
}

/* Marks cell occupied. The map must have room for one more block (blockmap_reserve). */
static inline void blockmap_set(archive_t *a, uint64_t cell)
{
    uint64_t block = cell >> 6;
    if (a->block_bits) {
        a->block_bits[block] |= (uint64_t)1 << (cell & 63);
        return;
    }
    size_t i = (size_t)(mix64(block) >> a->blockmap_shift);
    for (;;) {
        block_slot *s = &a->blockmap[i];
        if (s->key == block + 1) {
            s->bits |= (uint64_t)1 << (cell & 63);
            return;
        }
        if (s->key == 0) {
            s->key = block + 1;
            s->bits = (uint64_t)1 << (cell & 63);
            a->blockmap_count++;
            return;
        }
        i = (i + 1) & a->blockmap_mask;
    }
}

/* The address cell's block starts its lookup at, for prefetching. */
static inline const void *blockmap_home_address(const archive_t *a, uint64_t cell)
{
    if (a->block_bits)
        return &a->block_bits[cell >> 6];
    return &a->blockmap[(size_t)(mix64(cell >> 6) >> a->blockmap_shift)];
}

/* Makes room for one more block (load factor <= 3/4). */
static int blockmap_reserve(archive_t *a)
{
    if ((a->blockmap || a->block_bits) && a->blockmap_count < a->blockmap_limit)
        return 0;
    return blockmap_grow(a);
}

/* --- arena ------------------------------------------------------------------------------ */

/* 1 + the value of a lower-case hex digit, 0 for any other byte */
static const unsigned char hex_digit[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,
    ['6'] = 7,  ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12,
    ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/*
 * Hex digits 16 characters (8 packed bytes) at a time, with GCC vector extensions (SSE2
 * on x86-64, NEON on aarch64; plain code elsewhere). A u16 lane holds two characters, the
 * first in its low byte (little endian).
 */
typedef unsigned char u8x16 __attribute__((vector_size(16)));
typedef unsigned char u8x8 __attribute__((vector_size(8)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));

/* Packs 16 characters into 8 bytes; 0 when one is not a lower-case hex digit. */
static inline int hex16_pack(unsigned char *out, const char *s)
{
    u8x16 c;
    memcpy(&c, s, 16);
    u8x16 digit = c - '0', letter = c - 'a';
    u8x16 is_digit = (u8x16)(digit < 10), is_letter = (u8x16)(letter < 6);
    uint64_t ok[2];
    u8x16 either = is_digit | is_letter;
    memcpy(ok, &either, 16);
    if ((ok[0] & ok[1]) != UINT64_MAX)
        return 0;
    u8x16 values = (digit & is_digit) | ((letter + 10) & is_letter);
    u16x8 pairs;
    memcpy(&pairs, &values, 16);
    pairs = ((pairs << 4) & 0xf0) | (pairs >> 8);
    u8x8 packed = __builtin_convertvector(pairs, u8x8);
    memcpy(out, &packed, 8);
    return 1;
}

/* The 16 lower-case hex characters of 8 packed bytes. */
static inline void hex16_unpack(char *out, const unsigned char *in)
{
    u8x8 packed;
    memcpy(&packed, in, 8);
    u16x8 pairs = __builtin_convertvector(packed, u16x8);
    pairs = (pairs >> 4) | ((pairs & 0x0f) << 8);
    u8x16 values;
    memcpy(&values, &pairs, 16);
    u8x16 chars = values + '0' + ((u8x16)(values > 9) & ('a' - '0' - 10));
    memcpy(out, &chars, 16);
}

/* Packs s (n characters) into n/2 bytes at out when s is lower-case hex of even length,
 * which then unpacks exactly; returns 0 otherwise (out holds garbage then). A last
 * block of 16 overlaps the one before it. */
static int pack_hex(unsigned char *out, const char *s, size_t n)
{
    if (n == 0 || n % 2 != 0)
        return 0;
    if (n >= 16) {
        for (size_t i = 0;; i += 16) {
            if (i + 16 > n)
                i = n - 16;
            if (!hex16_pack(out + i / 2, s + i))
                return 0;
            if (i + 16 == n)
                return 1;
        }
    }
    for (size_t i = 0; i < n; i += 2) {
        unsigned high = hex_digit[(unsigned char)s[i]], low = hex_digit[(unsigned char)s[i + 1]];
        if (!high || !low)
            return 0;
        out[i / 2] = (unsigned char)((high - 1) << 4 | (low - 1));
    }
    return 1;
}

/* Writes the 2n hex characters of n packed bytes; returns 2n. */
static size_t unpack_hex(char *out, const unsigned char *packed, size_t n)
{
    if (n >= 8) {
        for (size_t i = 0;; i += 8) {
            if (i + 8 > n)
                i = n - 8;
            hex16_unpack(out + 2 * i, packed + i);
            if (i + 8 == n)
                return 2 * n;
        }
    }
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[packed[i] >> 4];
        out[2 * i + 1] = digits[packed[i] & 15];
    }
    return 2 * n;
}

static inline size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Bit-identical, so the flag restores the exact doubles (signed zeros included). */
static int solution_is_measures(const archive_t *a, const archive_entry *e)
{
    if (!e->solution || e->solution_len != a->dim)
        return 0;
    uint64_t differ = 0;
    for (size_t d = 0; d < a->dim; d++) {
        uint64_t x, y;
        memcpy(&x, e->solution + d, 8);
        memcpy(&y, e->measures + d, 8);
        differ |= x ^ y;
    }
    return differ == 0;
}

/* How an entry is stored, decided once per entry. */
typedef struct entry_plan {
    int packable;        /* the hash is lower-case hex of even length */
    int inline_hash;     /* the hash fits the record */
    int sol_measures;    /* the solution is bit-identical to the measures */
    unsigned char packed[ARCHIVE_MAX_COMMIT_HASH / 2 + 1];   /* the packed hash */
} entry_plan;

static void plan_entry(const archive_t *a, const archive_entry *e, entry_plan *p)
{
    p->packable = pack_hex(p->packed, e->commit_hash, e->commit_hash_len);
    p->inline_hash =
        (p->packable ? e->commit_hash_len / 2 : e->commit_hash_len) <= INLINE_HASH;
    p->sol_measures = solution_is_measures(a, e);
}

/* Size of the entry for e (validated); with_hash: the entry carries the commit hash. */
static size_t entry_size(const archive_entry *e, const entry_plan *plan, int with_hash)
{
    size_t n = 2;
    if (with_hash)
        n += plan->packable ? e->commit_hash_len / 2 : e->commit_hash_len;
    if (e->metadata)
        n += 4 + e->metadata_len;
    if (e->solution && !plan->sol_measures)
        n = align8(n) + 8 + e->solution_len * sizeof(double);
    return align8(n);
}

/* Writes the entry for e at p (entry_size bytes, 8-aligned). */
static void entry_write(unsigned char *p, const archive_entry *e, const entry_plan *plan,
                        int with_hash)
{
    size_t n = 2;
    unsigned char flags = 0;
    p[1] = 0;
    if (with_hash && plan->packable) {
        flags |= ENTRY_HEX;
        size_t packed = e->commit_hash_len / 2;
        memcpy(p + n, plan->packed, packed);
        p[1] = (unsigned char)packed;
        n += packed;
    } else if (with_hash) {
        memcpy(p + n, e->commit_hash, e->commit_hash_len);
        p[1] = (unsigned char)e->commit_hash_len;
        n += e->commit_hash_len;
    }
    if (e->metadata) {
        flags |= ENTRY_META;
        uint32_t len = (uint32_t)e->metadata_len;
        memcpy(p + n, &len, 4);
        memcpy(p + n + 4, e->metadata, e->metadata_len);
        n += 4 + e->metadata_len;
    }
    if (e->solution) {
        if (plan->sol_measures) {
            flags |= ENTRY_SOL_MEASURES;
        } else {
            flags |= ENTRY_SOL_EXPLICIT;
            size_t start = align8(n);
            memset(p + n, 0, start - n);
            uint64_t count = e->solution_len;
            memcpy(p + start, &count, 8);
            memcpy(p + start + 8, e->solution, e->solution_len * sizeof(double));
            n = start + 8 + e->solution_len * sizeof(double);
        }
    }
    memset(p + n, 0, align8(n) - n);
    p[0] = flags;
}

/* A decoded arena entry (pointers into the arena). */
typedef struct entry_view {
    unsigned char flags;
    size_t hash_stored;
    const unsigned char *hash;
    const char *metadata;
    size_t metadata_len;
    const double *solution;
    size_t solution_len;
    size_t size;            /* total entry size */
} entry_view;

/* Decodes a trusted entry (one this file wrote). */
static void entry_read(const unsigned char *p, entry_view *v)
{
    size_t n = 2;
    v->flags = p[0];
    v->hash_stored = p[1];
    v->hash = p + 2;
    n += v->hash_stored;
    v->metadata = NULL;
    v->metadata_len = 0;
    if (v->flags & ENTRY_META) {
        uint32_t len;
        memcpy(&len, p + n, 4);
        v->metadata = (const char *)p + n + 4;
        v->metadata_len = len;
        n += 4 + len;
    }
    v->solution = NULL;
    v->solution_len = 0;
    if ((v->flags & ENTRY_SOL_MASK) == ENTRY_SOL_EXPLICIT) {
        size_t start = align8(n);
        uint64_t count;
        memcpy(&count, p + start, 8);
        v->solution = (const double *)(p + start + 8);
        v->solution_len = (size_t)count;
        n = start + 8 + (size_t)count * sizeof(double);
    }
    v->size = align8(n);
}

/*
 * In the arena every entry follows an 8-byte tag: the position of the elite it was
 * written for and the entry's size. A record's `extra` is 1 + the offset of its tag. An
 * elite that changes gets a new entry at the end; the old one stays as garbage until the
 * arena is full, when it is compacted instead of grown (arena_reserve). So an add never
 * reads a previous entry (nor the record pointing at it) to reuse or account for it.
 */
typedef struct arena_tag {
    uint32_t pos;
    uint32_t size;           /* of the entry after the tag, a multiple of 8 */
} arena_tag;

_Static_assert(sizeof(arena_tag) == 8, "an arena tag keeps entries 8-aligned");

/* The entry of the elite h (which has one). */
static inline const unsigned char *entry_at(const archive_t *a, const elite_head *h)
{
    return a->arena + h->extra - 1 + sizeof(arena_tag);
}

/*
 * Makes room for `extra` more bytes at the end of the arena. A full arena is compacted
 * rather than grown as is: its live entries (those whose elite's record still points at
 * them) are copied, in arena order, into a fresh arena of twice their size (plus the
 * request), which is what growing would have copied anyway: garbage never makes the
 * arena more than twice its live entries. Walking the arena costs a look at one record
 * per entry, paid for by the appends that filled it. On failure (no memory) nothing
 * changed.
 */
static int arena_reserve(archive_t *a, size_t extra)
{
    if (a->arena_used + extra <= a->arena_capacity)
        return 0;
    size_t live = 0;
    for (size_t at = 0; at < a->arena_used;) {
        arena_tag tag;
        memcpy(&tag, a->arena + at, sizeof tag);
        if (tag.pos < a->count && head_at(a, tag.pos)->extra == at + 1)
            live += sizeof tag + tag.size;
        at += sizeof tag + tag.size;
    }
    size_t cap = (2 * (live + extra) + 4095) & ~(size_t)4095;   /* so at most 2x live */
    unsigned char *fresh = region_alloc(cap);
    if (!fresh)
        return -1;
    size_t used = 0;
    for (size_t at = 0; at < a->arena_used;) {
        arena_tag tag;
        memcpy(&tag, a->arena + at, sizeof tag);
        elite_head *h = tag.pos < a->count ? head_at(a, tag.pos) : NULL;
        if (h && h->extra == at + 1) {
            memcpy(fresh + used, a->arena + at, sizeof tag + tag.size);
            h->extra = used + 1;
            used += sizeof tag + tag.size;
        }
        at += sizeof tag + tag.size;
    }
    region_free(a->arena, a->arena_capacity);
    a->arena = fresh;
    a->arena_capacity = cap;
    a->arena_used = used;
    return 0;
}

/* --- construction ------------------------------------------------------------------------ */

/* The options pyribs accepts, plus finiteness of epsilon and the offset. */
static int check_options(const archive_options *o, archive_error *err)
{
    if (!(o->learning_rate > 0.0 && o->learning_rate <= 1.0))
        return fail(err, "learning_rate must be in (0, 1], got %.17g", o->learning_rate);
    if (isnan(o->threshold_min) || o->threshold_min == INFINITY)
        return fail(err, "threshold_min must be finite or -inf, got %.17g", o->threshold_min);
    if (o->threshold_min == -INFINITY && o->learning_rate != 1.0)
        return fail(err,
                    "threshold_min must be finite when learning_rate != 1 (got learning_rate "
                    "%.17g with threshold_min -inf), as in pyribs",
                    o->learning_rate);
    if (!isfinite(o->epsilon))
        return fail(err, "epsilon must be finite, got %.17g", o->epsilon);
    if (!isfinite(o->qd_score_offset))
        return fail(err, "qd_score_offset must be finite, got %.17g", o->qd_score_offset);
    return 0;
}

/* Finite bounds, lower < upper, and a finite span (the index divides by it). */
static int check_bounds(size_t dim, const double *lower, const double *upper,
                        archive_error *err)
{
    for (size_t d = 0; d < dim; d++) {
        if (!isfinite(lower[d]) || !isfinite(upper[d]))
            return fail(err, "bounds of dimension %zu must be finite, got [%.17g, %.17g]",
                        d + 1, lower[d], upper[d]);
        if (!(lower[d] < upper[d]) || !isfinite(upper[d] - lower[d]))
            return fail(err,
                        "dimension %zu: lower bound %.17g must be below upper bound %.17g "
                        "(and their difference finite)",
                        d + 1, lower[d], upper[d]);
    }
    return 0;
}

/* The parts both kinds share: bounds, options, empty maps. NULL when out of memory. */
static archive_t *alloc_archive(archive_kind kind, size_t dim, uint64_t cells,
                                const double *lower, const double *upper,
                                const archive_options *options)
{
    archive_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->kind = kind;
    a->dim = dim;
    a->cells = cells;
    a->exact_keys = cells <= (uint64_t)UINT32_MAX + 1;
    a->thresholds_are_objectives = 1;
    a->options = *options;
    a->stride = HEAD_WORDS + dim;
    a->lower = malloc(dim * sizeof *a->lower);
    a->upper = malloc(dim * sizeof *a->upper);
    if (!a->lower || !a->upper || cellmap_reserve(a, 1) != 0 || blockmap_grow(a) != 0) {
        archive_free(a);
        return NULL;
    }
    memcpy(a->lower, lower, dim * sizeof *lower);
    memcpy(a->upper, upper, dim * sizeof *upper);
    return a;
}

int archive_new_grid(size_t dim, const uint64_t *dims, const double *lower,
                     const double *upper, const archive_options *options, archive_t **out,
                     archive_error *err)
{
    archive_options defaults;
    if (!options) {
        archive_options_defaults(&defaults);
        options = &defaults;
    }
    *out = NULL;
    if (dim < 1 || dim > ARCHIVE_MAX_GRID_DIMENSIONS)
        return fail(err, "a grid archive needs 1 to %d dimensions, got %zu",
                    ARCHIVE_MAX_GRID_DIMENSIONS, dim);
    if (check_options(options, err) != 0 || check_bounds(dim, lower, upper, err) != 0)
        return -1;
    uint64_t total = 1;
    for (size_t d = 0; d < dim; d++) {
        if (dims[d] < 1 || dims[d] > INT64_MAX)
            return fail(err, "dimension %zu must have at least 1 cell, got %llu", d + 1,
                        (unsigned long long)dims[d]);
        if (total > (uint64_t)INT64_MAX / dims[d])
            return fail(err, "the grid has too many cells: the product of dims does not fit "
                             "in 63 bits");
        total *= dims[d];
    }
    archive_t *a = alloc_archive(ARCHIVE_GRID, dim, total, lower, upper, options);
    if (!a)
        return fail(err, "out of memory");
    a->grid_dims = malloc(dim * sizeof *a->grid_dims);
    a->strides = malloc(dim * sizeof *a->strides);
    a->axes = malloc(dim * sizeof *a->axes);
    if (!a->grid_dims || !a->strides || !a->axes) {
        archive_free(a);
        return fail(err, "out of memory");
    }
    memcpy(a->grid_dims, dims, dim * sizeof *dims);
    for (size_t d = 0; d < dim; d++)
        a->axes[d] = (grid_axis){(double)dims[d], lower[d], upper[d] - lower[d], dims[d] - 1};
    uint64_t stride = 1;
    for (size_t d = dim; d-- > 0;) {
        a->strides[d] = stride;
        stride *= dims[d];
    }
    *out = a;
    return 0;
}

int archive_new_cvt(const archive_cvt_config *c, const archive_options *options,
                    archive_t **out, archive_error *err)
{
    archive_options defaults;
    if (!options) {
        archive_options_defaults(&defaults);
        options = &defaults;
    }
    *out = NULL;
    if (c->dimensions < 1 || c->dimensions > ARCHIVE_MAX_CVT_DIMENSIONS)
        return fail(err, "a CVT archive needs 1 to %d dimensions, got %zu",
                    ARCHIVE_MAX_CVT_DIMENSIONS, c->dimensions);
    if (c->centroid_count < 1 || c->centroid_count > ARCHIVE_MAX_CVT_CELLS)
        return fail(err, "a CVT archive needs 1 to %u centroids, got %zu",
                    ARCHIVE_MAX_CVT_CELLS, c->centroid_count);
    if (check_options(options, err) != 0 || check_bounds(c->dimensions, c->lower, c->upper, err))
        return -1;
    size_t dim = c->dimensions, k = c->centroid_count;
    size_t samples = c->samples ? c->samples : (k > 100000 ? k : 100000);
    if (!c->centroids && samples < k)
        return fail(err, "k-means needs at least as many samples (%zu) as centroids (%zu)",
                    samples, k);
    if (!c->centroids && samples > UINT32_MAX / 2)
        return fail(err, "too many k-means samples: %zu", samples);
    if (c->centroids) {
        for (size_t i = 0; i < k * dim; i++)
            if (!isfinite(c->centroids[i]))
                return fail(err, "centroid %zu, value %zu is not finite", i / dim + 1,
                            i % dim + 1);
    }
    archive_t *a = alloc_archive(ARCHIVE_CVT, dim, k, c->lower, c->upper, options);
    if (!a)
        return fail(err, "out of memory");
    a->centroids = malloc(k * dim * sizeof *a->centroids);
    if (!a->centroids)
        goto oom;
    if (c->centroids) {
        memcpy(a->centroids, c->centroids, k * dim * sizeof *a->centroids);
    } else if (cvt_kmeans(c->lower, c->upper, dim, k, samples, c->seed,
                          c->iterations ? c->iterations : 100, a->centroids) != 0) {
        goto oom;
    }
    a->tree = cvt_tree_build(a->centroids, k, dim);
    if (!a->tree)
        goto oom;
    *out = a;
    return 0;
oom:
    archive_free(a);
    return fail(err, "out of memory");
}

void archive_free(archive_t *a)
{
    if (!a)
        return;
    free(a->lower);
    free(a->upper);
    free(a->grid_dims);
    free(a->strides);
    free(a->axes);
    free(a->centroids);
    cvt_tree_free(a->tree);
    region_free(a->records, a->capacity * a->stride * sizeof(uint64_t));
    region_free(a->slots, a->slot_count * sizeof *a->slots);
    region_free(a->blockmap, a->blockmap ? (a->blockmap_mask + 1) * sizeof *a->blockmap : 0);
    region_free(a->block_bits, a->block_words * sizeof *a->block_bits);
    region_free(a->arena, a->arena_capacity);
    free(a);
}

archive_kind archive_get_kind(const archive_t *a) { return a->kind; }
size_t archive_dimensions(const archive_t *a) { return a->dim; }
uint64_t archive_cells(const archive_t *a) { return a->cells; }
size_t archive_size(const archive_t *a) { return a->count; }
const archive_options *archive_get_options(const archive_t *a) { return &a->options; }
const double *archive_lower(const archive_t *a) { return a->lower; }
const double *archive_upper(const archive_t *a) { return a->upper; }
const uint64_t *archive_grid_dims(const archive_t *a) { return a->grid_dims; }
const double *archive_centroids(const archive_t *a) { return a->centroids; }

/* --- index ------------------------------------------------------------------------------- */

/* The grid index of one coordinate: (C*(m - lo) + eps) / (hi - lo), evaluated in that
 * order in double, truncated and clipped to [0, C-1]. The comparisons run on the double,
 * so a value beyond any integer type clips instead of wrapping. */
static inline uint64_t grid_coordinate(const grid_axis *axis, double epsilon, double m)
{
    double scaled = axis->cells * (m - axis->lower);
    scaled = scaled + epsilon;
    scaled = scaled / axis->span;
    if (!(scaled >= 1.0))
        return 0;   /* also (-1, 0): int cast gives 0; and everything negative clips to 0 */
    if (scaled >= axis->cells)
        return axis->last;
    uint64_t g = (uint64_t)scaled;
    return g < axis->last ? g : axis->last;
}

/* Cell of finite measures (no validation). */
static inline uint64_t cell_of(const archive_t *a, const double *m)
{
    if (a->kind == ARCHIVE_GRID) {
        uint64_t cell = 0;
        double epsilon = a->options.epsilon;
        for (size_t d = 0; d < a->dim; d++)
            cell = cell * (a->axes[d].last + 1) + grid_coordinate(&a->axes[d], epsilon, m[d]);
        return cell;
    }
    return cvt_tree_nearest(a->tree, m);
}

/* Every measure finite (pyribs raises ValueError otherwise). */
static int check_measures(const archive_t *a, const double *m, archive_error *err)
{
    for (size_t d = 0; d < a->dim; d++)
        if (!isfinite(m[d]))
            return fail(err, "measure %zu is not finite (%.17g): all measures must be finite",
                        d + 1, m[d]);
    return 0;
}

int archive_index_of(const archive_t *a, const double *measures, uint64_t *cell,
                     archive_error *err)
{
    if (check_measures(a, measures, err) != 0)
        return -1;
    *cell = cell_of(a, measures);
    return 0;
}

int archive_index_of_many(const archive_t *a, const double *measures, size_t n,
                          uint64_t *cells, archive_error *err)
{
    archive_error inner;   /* the message gets its row only when there is one */
    for (size_t i = 0; i < n; i++)
        if (check_measures(a, measures + i * a->dim, &inner) != 0)
            return fail(err, "row %zu: %s", i, inner.message);
    for (size_t i = 0; i < n; i++)
        cells[i] = cell_of(a, measures + i * a->dim);
    return 0;
}

int archive_grid_coordinates(const archive_t *a, uint64_t cell, uint64_t *coords,
                             archive_error *err)
{
    if (a->kind != ARCHIVE_GRID)
        return fail(err, "grid coordinates exist only for grid archives");
    if (cell >= a->cells)
        return fail(err, "cell %llu is outside the archive (%llu cells)",
                    (unsigned long long)cell, (unsigned long long)a->cells);
    for (size_t d = a->dim; d-- > 0;) {
        coords[d] = cell % a->grid_dims[d];
        cell /= a->grid_dims[d];
    }
    return 0;
}

/* --- adding ------------------------------------------------------------------------------- */

/* Validates everything about an entry before anything changes. */
static int check_entry(const archive_t *a, const archive_entry *e, archive_error *err)
{
    if (!e->commit_hash || e->commit_hash_len < 1 ||
        e->commit_hash_len > ARCHIVE_MAX_COMMIT_HASH)
        return fail(err, "commit_hash must be 1 to %d bytes, got %zu",
                    ARCHIVE_MAX_COMMIT_HASH, e->commit_hash ? e->commit_hash_len : 0);
    if (!isfinite(e->objective))
        return fail(err, "objective is not finite (%.17g): objectives must be finite",
                    e->objective);
    if (check_measures(a, e->measures, err) != 0)
        return -1;
    if (e->solution) {
        if (e->solution_len > ARCHIVE_MAX_SOLUTION)
            return fail(err, "solution has %zu values (at most %u)", e->solution_len,
                        ARCHIVE_MAX_SOLUTION);
        for (size_t i = 0; i < e->solution_len; i++)
            if (!isfinite(e->solution[i]))
                return fail(err, "solution value %zu is not finite", i + 1);
    }
    if (e->metadata && e->metadata_len > ARCHIVE_MAX_METADATA)
        return fail(err, "metadata is %zu bytes (at most %u)", e->metadata_len,
                    ARCHIVE_MAX_METADATA);
    if (!isfinite(e->timestamp))
        return fail(err, "timestamp is not finite");
    return 0;
}

/* Appends the entry the plan needs for e, the elite at pos, and points the record at it
 * (whatever entry it had becomes garbage). On failure (no memory) nothing changed. */
static int store_entry(archive_t *a, size_t pos, const archive_entry *e, const entry_plan *plan)
{
    size_t size = entry_size(e, plan, !plan->inline_hash);
    if (arena_reserve(a, sizeof(arena_tag) + size) != 0)
        return -1;
    arena_tag tag = {(uint32_t)pos, (uint32_t)size};
    memcpy(a->arena + a->arena_used, &tag, sizeof tag);
    entry_write(a->arena + a->arena_used + sizeof tag, e, plan, !plan->inline_hash);
    head_at(a, pos)->extra = a->arena_used + 1;
    a->arena_used += sizeof tag + size;
    return 0;
}

/*
 * Writes e into the record at pos, all but its cell: objective, threshold, timestamp,
 * measures, the commit hash inline when it fits, the solution kind and, when needed, a
 * new arena entry. Nothing is read from the record or the arena: replacing an elite
 * only writes. planned: e's plan, or NULL to make it here. On failure (no memory) the
 * record is unchanged.
 */
static int write_record(archive_t *a, size_t pos, const archive_entry *e,
                        const entry_plan *planned, double threshold)
{
    entry_plan computed;
    if (!planned) {
        plan_entry(a, e, &computed);
        planned = &computed;
    }
    const entry_plan *plan = planned;
    int needs = !plan->inline_hash || e->metadata || (e->solution && !plan->sol_measures);
    if (needs && store_entry(a, pos, e, plan) != 0)
        return -1;
    elite_head *h = head_at(a, pos);
    if (!needs)
        h->extra = 0;
    h->objective = e->objective;
    h->threshold = threshold;
    h->timestamp = e->timestamp;
    memcpy(measures_at(a, pos), e->measures, a->dim * sizeof(double));
    uint8_t flags = plan->sol_measures ? REC_SOL_MEASURES : 0;
    memset(h->hash, 0, sizeof h->hash);
    if (plan->inline_hash && plan->packable) {
        h->flags = flags | REC_HASH_HEX;
        h->hash_len = (uint8_t)(e->commit_hash_len / 2);
        memcpy(h->hash, plan->packed, h->hash_len);
    } else if (plan->inline_hash) {
        h->flags = flags | REC_HASH_RAW;
        h->hash_len = (uint8_t)e->commit_hash_len;
        memcpy(h->hash, e->commit_hash, e->commit_hash_len);
    } else {
        h->flags = flags;
        h->hash_len = 0;
    }
    return 0;
}

/* Grows the record array to hold at least n elites. */
static int records_reserve(archive_t *a, size_t n)
{
    if (n <= a->capacity)
        return 0;
    size_t cap = a->capacity ? a->capacity : 64;
    while (cap < n)
        cap *= 2;
    size_t word = sizeof(uint64_t);
    uint64_t *grown = region_grow(a->records, a->capacity * a->stride * word,
                                  a->count * a->stride * word, cap * a->stride * word);
    if (!grown)
        return -1;
    a->records = grown;
    a->capacity = cap;
    return 0;
}

int archive_reserve(archive_t *a, size_t n, archive_error *err)
{
    if (n > ARCHIVE_MAX_ELITES)
        return fail(err, "cannot reserve %zu elites (at most %u)", n, ARCHIVE_MAX_ELITES);
    if (records_reserve(a, n) != 0 || cellmap_reserve(a, n) != 0)
        return fail(err, "out of memory");
    /* at most one block per elite, and no more than the grid has */
    uint64_t blocks = a->cells / 64 + 1 < n ? a->cells / 64 + 1 : n;
    while (a->blockmap_limit < blocks)
        if (blockmap_grow(a) != 0)
            return fail(err, "out of memory");
    return 0;
}

/* Bitwise equality: +0.0 and -0.0 differ, as the stored values would. */
static inline int same_bits(double x, double y)
{
    uint64_t bx, by;
    memcpy(&bx, &x, 8);
    memcpy(&by, &y, 8);
    return bx == by;
}

/* Makes room for one more elite: the record array, the block map, the cell map (which
 * moves every slot when it grows: *slot is then probed again). -1 when out of memory. */
static int reserve_one(archive_t *a, uint64_t cell, cell_slot **slot)
{
    if (a->count >= ARCHIVE_MAX_ELITES)
        return -1;
    if (records_reserve(a, a->count + 1) != 0 || blockmap_reserve(a) != 0)
        return -1;
    if (!*slot || a->count + 1 > a->slot_limit) {
        int found;
        if (cellmap_reserve(a, a->count + 1) != 0)
            return -1;
        *slot = slot_probe(a, cell, &found);
    }
    return 0;
}

/* Appends a new elite record for cell (maps and arena included). slot is the empty slot
 * slot_probe gave for cell, or NULL to probe here. Returns 0, or -1 when memory runs out
 * (nothing changed then). */
static int append_elite(archive_t *a, uint64_t cell, cell_slot *slot, const archive_entry *e,
                        const entry_plan *plan, double threshold)
{
    int room = a->count < a->capacity && slot && a->count < a->slot_limit &&
               a->blockmap_count < a->blockmap_limit;
    if (!room && reserve_one(a, cell, &slot) != 0)
        return -1;
    size_t pos = a->count;
    if (write_record(a, pos, e, plan, threshold) != 0)
        return -1;
    head_at(a, pos)->cell = cell;
    a->count++;
    slot->threshold = threshold;
    slot->key = slot_key(a, cell, a->exact_keys ? 0 : mix64(cell));
    slot->pos1 = (uint32_t)(pos + 1);
    blockmap_set(a, cell);
    if (!same_bits(threshold, e->objective))
        a->thresholds_are_objectives = 0;
    return 0;
}

/* pyribs' running stats after an insert: the sum moves by (objective - previous, 0.0
 * for a new cell), obj_max only ever rises. */
static void note_insert(archive_t *a, double objective, double previous_objective)
{
    a->objective_sum = a->objective_sum + (objective - previous_objective);
    if (!a->has_objective || objective > a->obj_max)
        a->obj_max = objective;
    a->has_objective = 1;
}

/*
 * The add itself, on a validated entry whose cell is known. The decision reads only the
 * cell's slot (its threshold is there); an improvement then writes the record, reading
 * it only when the previous objective is not the slot's threshold (CMA-MAE).
 */
static int add_validated(archive_t *a, const archive_entry *e, const entry_plan *plan,
                         uint64_t cell, archive_add_result *r, archive_error *err)
{
    const archive_options *o = &a->options;
    int found;
    cell_slot *slot = slot_probe(a, cell, &found);
    double threshold = found ? slot->threshold : o->threshold_min;
    r->cell = cell;
    if (!(e->objective > threshold)) {
        r->status = 0;
        r->delta = e->objective - threshold;
        return 0;
    }
    double base = threshold;
    if (!found)
        base = o->threshold_min == -INFINITY ? 0.0 : o->threshold_min;
    double new_threshold;
    if (o->threshold_min == -INFINITY) {
        new_threshold = e->objective;
    } else {
        double ratio = 1.0 - o->learning_rate;
        new_threshold = ratio * base + e->objective * (1.0 - ratio);
    }
    if (!found) {
        if (append_elite(a, cell, slot, e, plan, new_threshold) != 0)
            return fail(err, a->count >= ARCHIVE_MAX_ELITES ? "the archive is full"
                                                             : "out of memory");
        note_insert(a, e->objective, 0.0);
        r->status = 2;
    } else {
        size_t pos = (size_t)slot->pos1 - 1;
        double previous = a->thresholds_are_objectives ? threshold : head_at(a, pos)->objective;
        if (write_record(a, pos, e, plan, new_threshold) != 0)
            return fail(err, "out of memory");
        slot->threshold = new_threshold;
        if (!same_bits(new_threshold, e->objective))
            a->thresholds_are_objectives = 0;
        note_insert(a, e->objective, previous);
        r->status = 1;
    }
    r->delta = e->objective - base;
    return 0;
}

/* A cell map from this size on is taken to miss the cache (the L2 of a core is 1 MB on
 * the development VM; bench/archive.md). */
#define EARLY_PLAN_BYTES ((size_t)1 << 20)

int archive_add(archive_t *a, const archive_entry *e, archive_add_result *r,
                archive_error *err)
{
    if (a->kind == ARCHIVE_GRID) {
        /* The cell first (the grid index is safe on any measures), so that its slot and
         * block are on their way from memory while the entry is checked. When the cell
         * map is too large to stay in the cache, the entry is also planned (its hash
         * packed) meanwhile: work only an insert needs, done before the slot tells
         * whether this is one, because it hides the wait; a small map answers at once,
         * and the work would only slow rejections down. */
        uint64_t cell = cell_of(a, e->measures);
        __builtin_prefetch(slot_home_address(a, cell));
        __builtin_prefetch(blockmap_home_address(a, cell));
        if (check_entry(a, e, err) != 0)
            return -1;
        if (a->slot_count * sizeof(cell_slot) < EARLY_PLAN_BYTES)
            return add_validated(a, e, NULL, cell, r, err);
        entry_plan plan;
        plan_entry(a, e, &plan);
        return add_validated(a, e, &plan, cell, r, err);
    }
    if (check_entry(a, e, err) != 0)
        return -1;
    return add_validated(a, e, NULL, cell_of(a, e->measures), r, err);
}

int archive_add_many(archive_t *a, const archive_entry *entries, size_t n,
                     archive_add_result *results, archive_error *err)
{
    archive_error inner;   /* the message gets its position only when there is one */
    for (size_t i = 0; i < n; i++)
        if (check_entry(a, &entries[i], &inner) != 0)
            return fail(err, "entry %zu: %s", i, inner.message);
    /*
     * Cells first, then a two-stage pipeline: the slot of entry i + SLOT_AHEAD is
     * prefetched; at i + RECORD_AHEAD that slot has arrived, and when the entry looks like
     * an improvement its record is prefetched for writing. Both are hints: the add itself
     * decides on what the slots hold when its turn comes.
     */
    for (size_t i = 0; i < n; i++)
        results[i].cell = cell_of(a, entries[i].measures);
    enum { SLOT_AHEAD = 16, RECORD_AHEAD = 8 };
    for (size_t i = 0; i < n && i < SLOT_AHEAD; i++)
        __builtin_prefetch(slot_home_address(a, results[i].cell));
    for (size_t i = 0; i < n; i++) {
        if (i + SLOT_AHEAD < n)
            __builtin_prefetch(slot_home_address(a, results[i + SLOT_AHEAD].cell));
        if (i + RECORD_AHEAD < n) {
            int found;
            const cell_slot *s = slot_probe(a, results[i + RECORD_AHEAD].cell, &found);
            if (found && entries[i + RECORD_AHEAD].objective > s->threshold) {
                const char *rec = (const char *)head_at(a, (size_t)s->pos1 - 1);
                __builtin_prefetch(rec, 1);
                __builtin_prefetch(rec + a->stride * sizeof(uint64_t) - 1, 1);
            }
        }
        if (add_validated(a, &entries[i], NULL, results[i].cell, &results[i], err) != 0)
            return -1;
    }
    return 0;
}

/* --- reading -------------------------------------------------------------------------------- */

/* Fills the view of the elite at pos: record fields, then the arena entry if any. */
static void fill_elite(const archive_t *a, size_t pos, archive_elite *out)
{
    const elite_head *h = head_at(a, pos);
    out->cell = h->cell;
    out->objective = h->objective;
    out->threshold = h->threshold;
    out->timestamp = h->timestamp;
    out->measures = measures_at(a, pos);
    out->metadata = NULL;
    out->metadata_len = 0;
    out->solution = NULL;
    out->solution_len = 0;
    entry_view v = {0};
    if (h->extra) {
        entry_read(entry_at(a, h), &v);
        out->metadata = v.metadata;
        out->metadata_len = v.metadata_len;
        out->solution = v.solution;
        out->solution_len = v.solution_len;
    }
    if (h->flags & REC_SOL_MEASURES) {
        out->solution = out->measures;
        out->solution_len = a->dim;
    }
    if (h->flags & REC_HASH_HEX) {
        out->commit_hash_len = unpack_hex(out->commit_hash, h->hash, h->hash_len);
    } else if (h->flags & REC_HASH_RAW) {
        memcpy(out->commit_hash, h->hash, h->hash_len);
        out->commit_hash_len = h->hash_len;
    } else if (v.flags & ENTRY_HEX) {
        out->commit_hash_len = unpack_hex(out->commit_hash, v.hash, v.hash_stored);
    } else {
        memcpy(out->commit_hash, v.hash, v.hash_stored);
        out->commit_hash_len = v.hash_stored;
    }
    out->commit_hash[out->commit_hash_len] = '\0';
}

int archive_get(const archive_t *a, uint64_t cell, archive_elite *out)
{
    size_t pos = cellmap_find(a, cell);
    if (pos == SIZE_MAX)
        return 0;
    fill_elite(a, pos, out);
    return 1;
}

void archive_elite_at(const archive_t *a, size_t pos, archive_elite *out)
{
    fill_elite(a, pos, out);
}

uint64_t archive_cell_at(const archive_t *a, size_t pos)
{
    return head_at(a, pos)->cell;
}

void archive_clear(archive_t *a)
{
    a->count = 0;
    memset(a->slots, 0, a->slot_count * sizeof *a->slots);
    a->thresholds_are_objectives = 1;
    if (a->block_bits)
        memset(a->block_bits, 0, a->block_words * sizeof *a->block_bits);
    else
        memset(a->blockmap, 0, (a->blockmap_mask + 1) * sizeof *a->blockmap);
    a->blockmap_count = 0;
    a->arena_used = 0;
    a->objective_sum = 0.0;
    a->has_objective = 0;
    a->obj_max = 0.0;
}

/* --- sampling ------------------------------------------------------------------------------ */

/* A small map from position to position for a sparse Fisher-Yates (the virtual array
 * starts as the identity). Keys are stored +1; capacity is a power of two. */
typedef struct swap_map {
    uint64_t *keys, *values;
    size_t mask;
} swap_map;

/* The value slot of key, inserted (found = 0) when absent. The map never fills: it has
 * at least 4n slots for at most 2n keys. */
static size_t *swap_slot(swap_map *m, uint64_t key, int *found)
{
    size_t i = (size_t)mix64(key) & m->mask;
    for (;;) {
        if (m->keys[i] == key + 1) {
            *found = 1;
            return (size_t *)&m->values[i];
        }
        if (m->keys[i] == 0) {
            *found = 0;
            m->keys[i] = key + 1;
            return (size_t *)&m->values[i];
        }
        i = (i + 1) & m->mask;
    }
}

/* Asks for the record at pos (both of its cache lines), which the caller is about to
 * read: reading n sampled elites then waits for memory about once, not n times. Only
 * the first SAMPLE_PREFETCH draws: more would push the first ones out of the cache
 * before they are read. */
#define SAMPLE_PREFETCH 256

static inline void prefetch_record(const archive_t *a, size_t pos)
{
    const char *record = (const char *)head_at(a, pos);
    __builtin_prefetch(record);
    __builtin_prefetch(record + a->stride * sizeof(uint64_t) - 1);
}

size_t archive_sample(const archive_t *a, rng_t *rng, size_t n, int replace, size_t *out)
{
    size_t size = a->count;
    if (size == 0)
        return 0;
    if (replace) {
        for (size_t i = 0; i < n; i++) {
            out[i] = (size_t)rng_below(rng, size);
            if (i < SAMPLE_PREFETCH)
                prefetch_record(a, out[i]);
        }
        return n;
    }
    if (n > size)
        n = size;
    /* The same draws either way: j = i + below(size - i), swap(v[i], v[j]), out v[i]. */
    if (n * 4 >= size) {
        size_t *v = malloc(size * sizeof *v);
        if (v) {
            for (size_t i = 0; i < size; i++)
                v[i] = i;
            for (size_t i = 0; i < n; i++) {
                size_t j = i + (size_t)rng_below(rng, size - i);
                size_t t = v[i];
                v[i] = v[j];
                v[j] = t;
                out[i] = v[i];
                if (i < SAMPLE_PREFETCH)
                    prefetch_record(a, out[i]);
            }
            free(v);
            return n;
        }
    }
    size_t cap = 16;
    while (cap < 4 * n)
        cap *= 2;
    swap_map m = {calloc(cap, sizeof(uint64_t)), calloc(cap, sizeof(uint64_t)), cap - 1};
    if (!m.keys || !m.values) {
        free(m.keys);
        free(m.values);
        return 0;
    }
    _Static_assert(sizeof(size_t) == sizeof(uint64_t), "size_t is 64 bits");
    for (size_t i = 0; i < n; i++) {
        size_t j = i + (size_t)rng_below(rng, size - i);
        int found_i, found_j;
        size_t *si = swap_slot(&m, i, &found_i);
        size_t vi = found_i ? *si : i;
        size_t *sj = swap_slot(&m, j, &found_j);
        size_t vj = found_j ? *sj : j;
        *si = vj;
        *sj = vi;
        out[i] = vj;
        if (i < SAMPLE_PREFETCH)
            prefetch_record(a, out[i]);
    }
    free(m.keys);
    free(m.values);
    return n;
}

/* --- neighbours ----------------------------------------------------------------------------- */

void archive_cell_list_free(archive_cell_list *list)
{
    free(list->cells);
    list->cells = NULL;
    list->count = list->capacity = 0;
}

/* Appends a cell, growing the list by doubling; -1 when out of memory. */
static int list_push(archive_cell_list *l, uint64_t cell)
{
    if (l->count == l->capacity) {
        size_t cap = l->capacity ? l->capacity * 2 : 64;
        uint64_t *grown = realloc(l->cells, cap * sizeof *grown);
        if (!grown)
            return -1;
        l->cells = grown;
        l->capacity = cap;
    }
    l->cells[l->count++] = cell;
    return 0;
}

static int compare_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* a * b, saturating at UINT64_MAX (ball sizes of wide radii overflow). */
static inline uint64_t sat_mul(uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a)
        return UINT64_MAX;
    return a * b;
}

/* Every occupied cell in [first, last] (one run along the last dimension), centre
 * excluded, in increasing order. */
static int push_run(const archive_t *a, uint64_t first, uint64_t last, uint64_t centre,
                    archive_cell_list *out)
{
    for (uint64_t block = first >> 6; block <= last >> 6; block++) {
        uint64_t bits = blockmap_get(a, block);
        if (!bits)
            continue;
        uint64_t lo = block == first >> 6 ? first & 63 : 0;
        uint64_t hi = block == last >> 6 ? last & 63 : 63;
        uint64_t mask = (hi == 63 ? ~(uint64_t)0 : (((uint64_t)1 << (hi + 1)) - 1)) &
                        ~(((uint64_t)1 << lo) - 1);
        bits &= mask;
        while (bits) {
            uint64_t cell = block << 6 | (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (cell != centre && list_push(out, cell) != 0)
                return -1;
        }
    }
    return 0;
}

/*
 * The ball is the box [lo, hi] per dimension; walking it costs one block lookup per run
 * of cells along the last dimension (per 64 cells of a run), scanning costs one decode
 * per elite. AUTO takes the smaller estimate, so a full 32^4 grid walks ~343 runs and a
 * sparse 64^8 grid scans its elites instead of 5.8 million cells. Both give the same
 * list in increasing order.
 */
static int grid_neighbours(const archive_t *a, uint64_t cell, uint64_t radius,
                           archive_neighbour_strategy strategy, archive_cell_list *out,
                           archive_error *err)
{
    size_t dim = a->dim;
    uint64_t centre[ARCHIVE_MAX_GRID_DIMENSIONS], lo[ARCHIVE_MAX_GRID_DIMENSIONS],
        hi[ARCHIVE_MAX_GRID_DIMENSIONS], at[ARCHIVE_MAX_GRID_DIMENSIONS];
    archive_grid_coordinates(a, cell, centre, NULL);
    uint64_t runs = 1;
    for (size_t d = 0; d < dim; d++) {
        lo[d] = centre[d] > radius ? centre[d] - radius : 0;
        hi[d] = a->grid_dims[d] - 1 - centre[d] > radius ? centre[d] + radius
                                                          : a->grid_dims[d] - 1;
        if (d + 1 < dim)
            runs = sat_mul(runs, hi[d] - lo[d] + 1);
    }
    if (radius == 0)
        return 0;
    uint64_t run_blocks = (hi[dim - 1] - lo[dim - 1]) / 64 + 2;
    if (strategy == ARCHIVE_NEIGHBOURS_AUTO) {
        /* a block lookup costs about as much as checking one elite's D coordinates */
        uint64_t ball = sat_mul(runs, run_blocks);
        uint64_t scan = sat_mul(a->count, (dim + 3) / 4);
        strategy = ball <= scan ? ARCHIVE_NEIGHBOURS_BALL : ARCHIVE_NEIGHBOURS_SCAN;
    }
    if (strategy == ARCHIVE_NEIGHBOURS_SCAN) {
        /* grids of power-of-two sides (Loreley's) decode a cell with shifts and masks */
        int pow2 = 1;
        unsigned shift[ARCHIVE_MAX_GRID_DIMENSIONS];
        for (size_t d = 0; d < dim; d++) {
            pow2 &= (a->grid_dims[d] & (a->grid_dims[d] - 1)) == 0;
            shift[d] = (unsigned)__builtin_ctzll(a->grid_dims[d]);
        }
        for (size_t pos = 0; pos < a->count; pos++) {
            uint64_t c = head_at(a, pos)->cell, rest = c;
            int inside = c != cell;
            for (size_t d = dim; inside && d-- > 0;) {
                uint64_t g;
                if (pow2) {
                    g = rest & (a->grid_dims[d] - 1);
                    rest >>= shift[d];
                } else {
                    g = rest % a->grid_dims[d];
                    rest /= a->grid_dims[d];
                }
                inside = g >= lo[d] && g <= hi[d];
            }
            if (inside && list_push(out, c) != 0)
                return fail(err, "out of memory");
        }
        if (out->count > 1)
            qsort(out->cells, out->count, sizeof *out->cells, compare_u64);
        return 0;
    }
    /* odometer over the first D-1 dimensions; each step is one run in the last */
    for (size_t d = 0; d < dim; d++)
        at[d] = lo[d];
    for (;;) {
        uint64_t base = 0;
        for (size_t d = 0; d + 1 < dim; d++)
            base += at[d] * a->strides[d];
        if (push_run(a, base + lo[dim - 1], base + hi[dim - 1], cell, out) != 0)
            return fail(err, "out of memory");
        size_t d = dim - 1;
        while (d-- > 0) {
            if (at[d] < hi[d]) {
                at[d]++;
                break;
            }
            at[d] = lo[d];
        }
        if (d == SIZE_MAX)
            break;
    }
    return 0;
}

/* The occupied cells among the k centroids nearest to cell's centroid (the centre
 * excluded by index, so a duplicate centroid still counts), nearest first. */
static int cvt_neighbours(const archive_t *a, uint64_t cell, uint64_t k,
                          archive_cell_list *out, archive_error *err)
{
    if (k == 0)
        return 0;
    uint64_t want = k + 1 < a->cells ? k + 1 : a->cells;
    size_t *nearest = malloc(want * sizeof *nearest);
    double *scratch = malloc(want * sizeof *scratch);
    if (!nearest || !scratch) {
        free(nearest);
        free(scratch);
        return fail(err, "out of memory");
    }
    cvt_tree_k_nearest(a->tree, a->centroids + cell * a->dim, want, nearest, scratch);
    size_t taken = 0;
    int rc = 0;
    for (size_t i = 0; i < want && taken < k; i++) {
        if (nearest[i] == cell)
            continue;
        taken++;
        if (cellmap_find(a, nearest[i]) != SIZE_MAX && list_push(out, nearest[i]) != 0) {
            rc = fail(err, "out of memory");
            break;
        }
    }
    free(nearest);
    free(scratch);
    return rc;
}

int archive_neighbours(const archive_t *a, uint64_t cell, uint64_t radius,
                       archive_neighbour_strategy strategy, archive_cell_list *out,
                       archive_error *err)
{
    out->count = 0;
    if (cell >= a->cells)
        return fail(err, "cell %llu is outside the archive (%llu cells)",
                    (unsigned long long)cell, (unsigned long long)a->cells);
    if (a->kind == ARCHIVE_GRID)
        return grid_neighbours(a, cell, radius, strategy, out, err);
    return cvt_neighbours(a, cell, radius, out, err);
}

/* --- stats ---------------------------------------------------------------------------------- */

void archive_get_stats(const archive_t *a, archive_stats *s)
{
    double n = (double)a->count, cells = (double)a->cells;
    s->num_elites = a->count;
    s->cells = a->cells;
    s->coverage = n / cells;
    s->qd_score = a->objective_sum - n * a->options.qd_score_offset;
    s->norm_qd_score = s->qd_score / cells;
    s->has_objective = a->has_objective;
    s->obj_max = a->has_objective ? a->obj_max : NAN;
    s->obj_mean = a->count ? a->objective_sum / n : NAN;
    s->objective_sum = a->objective_sum;
}

int archive_set_running_stats(archive_t *a, double objective_sum, int has_objective,
                              double obj_max, archive_error *err)
{
    if (!isfinite(objective_sum) || (has_objective && !isfinite(obj_max)))
        return fail(err, "running stats must be finite");
    if ((has_objective != 0) != (a->count > 0))
        return fail(err, "obj_max must be present exactly when the archive has elites");
    a->objective_sum = objective_sum;
    a->has_objective = has_objective ? 1 : 0;
    a->obj_max = has_objective ? obj_max : 0.0;
    return 0;
}

/* --- restore (row form) ---------------------------------------------------------------------- */

int archive_restore(archive_t *a, uint64_t cell, const archive_entry *e, double threshold,
                    archive_error *err)
{
    if (cell >= a->cells)
        return fail(err, "cell %llu is outside the archive (%llu cells)",
                    (unsigned long long)cell, (unsigned long long)a->cells);
    if (check_entry(a, e, err) != 0)
        return -1;
    if (!isfinite(threshold))
        return fail(err, "threshold is not finite (%.17g)", threshold);
    uint64_t expected = cell_of(a, e->measures);
    if (expected != cell)
        return fail(err, "cell %llu does not match its measures (they index cell %llu)",
                    (unsigned long long)cell, (unsigned long long)expected);
    int found;
    cell_slot *slot = slot_probe(a, cell, &found);
    if (found)
        return fail(err, "cell %llu is already occupied", (unsigned long long)cell);
    if (append_elite(a, cell, slot, e, NULL, threshold) != 0)
        return fail(err, a->count >= ARCHIVE_MAX_ELITES ? "the archive is full"
                                                         : "out of memory");
    note_insert(a, e->objective, 0.0);
    return 0;
}

/* --- blob ------------------------------------------------------------------------------------ */

/*
 * Blob layout, version 1 (little endian):
 *   magic "LORARCH\0" | u32 version | u32 kind | u64 total length | u32 D | u32 flags
 *   f64 learning_rate, threshold_min, epsilon, qd_score_offset
 *   f64 objective_sum, obj_max | u64 number of elites
 *   f64 lower[D], upper[D]
 *   grid: u64 dims[D] | cvt: u64 k, f64 centroids[k * D]
 *   per elite, in dense order: u64 cell | f64 objective, threshold, timestamp,
 *     measures[D] | u32 entry length | the arena entry (length bytes)
 *   u64 checksum of every byte before it.
 */
#define BLOB_MAGIC "LORARCH"
#define BLOB_VERSION 1u
#define BLOB_HAS_OBJECTIVE 1u
#define BLOB_HEADER 88   /* bytes before the bounds */

uint64_t archive_checksum(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h ^= w * 0x87c37b91114253d5ULL;
        h = (h << 31 | h >> 33) * 0x4cf5ad432745937fULL;
    }
    uint64_t tail = 0;
    for (size_t k = 0; i + k < len; k++)
        tail |= (uint64_t)p[i + k] << (8 * k);
    h ^= tail * 0x87c37b91114253d5ULL;
    return mix64(h);
}

typedef struct writer {
    unsigned char *p;
    size_t len, cap;
} writer;

/* Appends n bytes (or reserves them when data is NULL); -1 when out of memory. */
static int put(writer *w, const void *data, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n)
            cap *= 2;
        unsigned char *grown = realloc(w->p, cap);
        if (!grown)
            return -1;
        w->p = grown;
        w->cap = cap;
    }
    if (data)
        memcpy(w->p + w->len, data, n);   /* NULL: reserve n bytes to be written */
    w->len += n;
    return 0;
}

static int put_u32(writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_f64(writer *w, double v) { return put(w, &v, 8); }

int archive_save(const archive_t *a, unsigned char **blob, size_t *len, archive_error *err)
{
    writer w = {0};
    *blob = NULL;
    *len = 0;
    /* one allocation in the common case: the exact size is cheap to bound */
    size_t estimate = BLOB_HEADER + 16 * a->dim + 8 +
                      (a->centroids ? a->cells * a->dim * 8 : 0) +
                      a->count * (8 * (4 + a->dim) + 4 + 24) + a->arena_used + 4096;
    w.p = malloc(estimate);
    if (!w.p)
        return fail(err, "out of memory");
    w.cap = estimate;
    int bad = put(&w, BLOB_MAGIC, 8) | put_u32(&w, BLOB_VERSION) |
              put_u32(&w, (uint32_t)a->kind) | put_u64(&w, 0) |
              put_u32(&w, (uint32_t)a->dim) |
              put_u32(&w, a->has_objective ? BLOB_HAS_OBJECTIVE : 0) |
              put_f64(&w, a->options.learning_rate) | put_f64(&w, a->options.threshold_min) |
              put_f64(&w, a->options.epsilon) | put_f64(&w, a->options.qd_score_offset) |
              put_f64(&w, a->objective_sum) | put_f64(&w, a->has_objective ? a->obj_max : 0.0) |
              put_u64(&w, a->count) | put(&w, a->lower, a->dim * 8) |
              put(&w, a->upper, a->dim * 8);
    if (a->kind == ARCHIVE_GRID)
        bad |= put(&w, a->grid_dims, a->dim * 8);
    else
        bad |= put_u64(&w, a->cells) | put(&w, a->centroids, a->cells * a->dim * 8);
    for (size_t pos = 0; pos < a->count && !bad; pos++) {
        archive_elite el;
        fill_elite(a, pos, &el);
        archive_entry e = {el.commit_hash, el.commit_hash_len, el.objective, el.measures,
                           el.solution, el.solution_len, el.metadata, el.metadata_len,
                           el.timestamp};
        entry_plan plan;
        plan_entry(a, &e, &plan);
        size_t size = entry_size(&e, &plan, 1);
        bad |= put_u64(&w, el.cell) | put_f64(&w, el.objective) | put_f64(&w, el.threshold) |
               put_f64(&w, el.timestamp) | put(&w, el.measures, a->dim * 8) |
               put_u32(&w, (uint32_t)size) | put(&w, NULL, size);
        if (!bad)
            entry_write(w.p + w.len - size, &e, &plan, 1);
    }
    if (bad) {
        free(w.p);
        return fail(err, "out of memory");
    }
    uint64_t total = w.len + 8;
    memcpy(w.p + 16, &total, 8);
    uint64_t sum = archive_checksum(w.p, w.len);
    if (put_u64(&w, sum) != 0) {
        free(w.p);
        return fail(err, "out of memory");
    }
    *blob = w.p;
    *len = w.len;
    return 0;
}

typedef struct reader {
    const unsigned char *p;
    size_t len, at;
} reader;

/* Copies the next n bytes out, or fails (-1) without moving when fewer remain. */
static int take(reader *r, void *out, size_t n)
{
    if (n > r->len - r->at)
        return -1;
    memcpy(out, r->p + r->at, n);
    r->at += n;
    return 0;
}

/* Validates an untrusted arena entry of `size` bytes at p and decodes it into e (the
 * commit hash is unpacked into hash_buf, the solution copied into *solution_buf). */
static int entry_parse(const unsigned char *p, size_t size, archive_entry *e, char *hash_buf,
                       double **solution_buf, size_t *solution_cap, const double *measures,
                       size_t dim, archive_error *err)
{
    if (size < 8 || size % 8 != 0)
        return fail(err, "entry size %zu is not a positive multiple of 8", size);
    unsigned char flags = p[0];
    size_t stored = p[1], n = 2;
    if (flags & ~(ENTRY_HEX | ENTRY_META | ENTRY_SOL_MASK) ||
        (flags & ENTRY_SOL_MASK) == ENTRY_SOL_MASK)
        return fail(err, "entry has unknown flags 0x%02x", flags);
    if (stored == 0 || n + stored > size)
        return fail(err, "entry's commit hash length %zu is invalid", stored);
    if (flags & ENTRY_HEX) {
        if (2 * stored > ARCHIVE_MAX_COMMIT_HASH)
            return fail(err, "entry's packed commit hash is too long");
        e->commit_hash_len = unpack_hex(hash_buf, p + n, stored);
    } else {
        memcpy(hash_buf, p + n, stored);
        e->commit_hash_len = stored;
    }
    e->commit_hash = hash_buf;
    n += stored;
    e->metadata = NULL;
    e->metadata_len = 0;
    if (flags & ENTRY_META) {
        uint32_t mlen;
        if (4 > size - n)
            return fail(err, "entry's metadata length is truncated");
        memcpy(&mlen, p + n, 4);
        n += 4;
        if (mlen > size - n)
            return fail(err, "entry's metadata length %u exceeds the entry", mlen);
        e->metadata = (const char *)p + n;
        e->metadata_len = mlen;
        n += mlen;
    }
    e->solution = NULL;
    e->solution_len = 0;
    switch (flags & ENTRY_SOL_MASK) {
    case ENTRY_SOL_MEASURES:
        e->solution = measures;
        e->solution_len = dim;
        break;
    case ENTRY_SOL_EXPLICIT: {
        size_t start = align8(n);
        uint64_t count;
        if (start > size || 8 > size - start)
            return fail(err, "entry's solution length is truncated");
        memcpy(&count, p + start, 8);
        n = start + 8;
        if (count > ARCHIVE_MAX_SOLUTION || count * 8 > size - n)
            return fail(err, "entry's solution of %llu values exceeds the entry",
                        (unsigned long long)count);
        if (count > *solution_cap) {
            double *grown = realloc(*solution_buf, (size_t)count * sizeof *grown);
            if (!grown)
                return fail(err, "out of memory");
            *solution_buf = grown;
            *solution_cap = (size_t)count;
        }
        if (count)
            memcpy(*solution_buf, p + n, (size_t)count * 8);
        e->solution = count ? *solution_buf : measures;   /* non-NULL: an empty solution */
        e->solution_len = (size_t)count;
        n += (size_t)count * 8;
        break;
    }
    default:
        break;
    }
    if (align8(n) != size)
        return fail(err, "entry has %zu stray bytes", size - n);
    return 0;
}

/*
 * Order of checks: length and magic and version (cheap, before anything else), the total
 * length against the header, the checksum, then the configuration through the same
 * validation as creation, a count of elites the remaining bytes can hold, and every
 * elite through archive_restore (cell in range, cell = index of its measures, no
 * duplicate, finite values). Only then the running stats. Every failure frees what was
 * built and names the problem.
 */
int archive_load(const void *data, size_t len, archive_t **out, archive_error *err)
{
    reader r = {data, len, 0};
    archive_t *a = NULL;
    double *measures = NULL, *solution = NULL, *bounds = NULL, *centroids = NULL;
    uint64_t *dims = NULL;
    size_t solution_cap = 0;
    char hash[ARCHIVE_MAX_COMMIT_HASH + 1];
    archive_error inner;
    int rc = -1;
    *out = NULL;

    char magic[8];
    uint32_t version = 0, kind = 0, dim32 = 0, flags = 0;   /* take() fills them: the */
    uint64_t total = 0, count = 0, checksum;                /* length was checked first */
    archive_options o;
    double objective_sum, obj_max;
    if (len < BLOB_HEADER + 8)
        return fail(err, "archive blob is truncated (%zu bytes)", len);
    take(&r, magic, 8);
    if (memcmp(magic, BLOB_MAGIC, 8) != 0)
        return fail(err, "not an archive blob (bad magic)");
    take(&r, &version, 4);
    if (version != BLOB_VERSION)
        return fail(err, "archive blob version %u is not supported (this build reads %u)",
                    version, BLOB_VERSION);
    take(&r, &kind, 4);
    take(&r, &total, 8);
    if (total != len)
        return fail(err, "archive blob is %s: header says %llu bytes, got %zu",
                    total > len ? "truncated" : "longer than its header says",
                    (unsigned long long)total, len);
    memcpy(&checksum, (const unsigned char *)data + len - 8, 8);
    if (checksum != archive_checksum(data, len - 8))
        return fail(err, "archive blob is corrupted (checksum mismatch)");
    r.len = len - 8;   /* the checksum is not content */

    take(&r, &dim32, 4);
    take(&r, &flags, 4);
    take(&r, &o.learning_rate, 8);
    take(&r, &o.threshold_min, 8);
    take(&r, &o.epsilon, 8);
    take(&r, &o.qd_score_offset, 8);
    take(&r, &objective_sum, 8);
    take(&r, &obj_max, 8);
    take(&r, &count, 8);
    size_t dim = dim32;
    if (kind != ARCHIVE_GRID && kind != ARCHIVE_CVT)
        return fail(err, "archive blob has unknown kind %u", kind);
    if (dim < 1 || dim > ARCHIVE_MAX_CVT_DIMENSIONS)
        return fail(err, "archive blob has %zu dimensions", dim);
    if (flags & ~BLOB_HAS_OBJECTIVE)
        return fail(err, "archive blob has unknown flags 0x%x", flags);
    bounds = malloc(2 * dim * sizeof *bounds);
    measures = malloc(dim * sizeof *measures);
    if (!bounds || !measures) {
        fail(err, "out of memory");
        goto out;
    }
    if (take(&r, bounds, 2 * dim * 8) != 0) {
        fail(err, "archive blob is truncated in its bounds");
        goto out;
    }
    if (kind == ARCHIVE_GRID) {
        dims = malloc(dim * sizeof *dims);
        if (!dims) {
            fail(err, "out of memory");
            goto out;
        }
        if (take(&r, dims, dim * 8) != 0) {
            fail(err, "archive blob is truncated in its dims");
            goto out;
        }
        if (archive_new_grid(dim, dims, bounds, bounds + dim, &o, &a, &inner) != 0) {
            fail(err, "archive blob has an invalid grid: %s", inner.message);
            goto out;
        }
    } else {
        uint64_t k;
        if (take(&r, &k, 8) != 0 || k < 1 || k > ARCHIVE_MAX_CVT_CELLS ||
            k * dim * 8 > r.len - r.at) {
            fail(err, "archive blob has an invalid or truncated centroid table");
            goto out;
        }
        centroids = malloc((size_t)k * dim * sizeof *centroids);
        if (!centroids) {
            fail(err, "out of memory");
            goto out;
        }
        take(&r, centroids, (size_t)k * dim * 8);
        archive_cvt_config c = {dim, bounds, bounds + dim, centroids, (size_t)k, 0, 0, 0};
        if (archive_new_cvt(&c, &o, &a, &inner) != 0) {
            fail(err, "archive blob has an invalid CVT archive: %s", inner.message);
            goto out;
        }
    }
    /* each elite takes at least 4 + 8 * (4 + D) + 8 bytes: a forged count cannot make
     * us allocate more than the blob could describe */
    size_t min_elite = 4 + 8 * (4 + dim) + 8;
    if (count > a->cells || count > (r.len - r.at) / min_elite) {
        fail(err, "archive blob claims %llu elites, more than it can hold",
             (unsigned long long)count);
        goto out;
    }
    if (archive_reserve(a, (size_t)count, err) != 0)
        goto out;
    /* A scout runs SCOUT elites ahead of the parser, reading only their cells and entry
     * sizes, and prefetches their cell-map slots (a hint: it validates nothing and stops
     * at the first elite that does not fit in the blob). */
    enum { SCOUT = 16 };
    size_t scout = r.at, elite_fixed = 8 * (4 + dim);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t cell;
        uint32_t size;
        archive_entry e;
        double threshold;
        for (; scout != SIZE_MAX && scout <= r.at + SCOUT * (elite_fixed + 12);) {
            uint64_t scout_cell;
            uint32_t scout_size;
            if (elite_fixed + 4 > r.len - scout) {
                scout = SIZE_MAX;
                break;
            }
            memcpy(&scout_cell, r.p + scout, 8);
            memcpy(&scout_size, r.p + scout + elite_fixed, 4);
            if (scout_cell < a->cells)
                __builtin_prefetch(slot_home_address(a, scout_cell), 1);
            scout = scout_size > r.len - scout - elite_fixed - 4
                        ? SIZE_MAX
                        : scout + elite_fixed + 4 + scout_size;
        }
        if (take(&r, &cell, 8) || take(&r, &e.objective, 8) || take(&r, &threshold, 8) ||
            take(&r, &e.timestamp, 8) || take(&r, measures, dim * 8) || take(&r, &size, 4) ||
            size > r.len - r.at) {
            fail(err, "archive blob is truncated in elite %llu", (unsigned long long)i);
            goto out;
        }
        e.measures = measures;
        if (entry_parse(r.p + r.at, size, &e, hash, &solution, &solution_cap, measures, dim,
                        &inner) != 0 ||
            archive_restore(a, cell, &e, threshold, &inner) != 0) {
            fail(err, "archive blob elite %llu: %s", (unsigned long long)i, inner.message);
            goto out;
        }
        r.at += size;
    }
    if (r.at != r.len) {
        fail(err, "archive blob has %zu stray bytes after its elites", r.len - r.at);
        goto out;
    }
    if (archive_set_running_stats(a, objective_sum, flags & BLOB_HAS_OBJECTIVE, obj_max,
                                  &inner) != 0) {
        fail(err, "archive blob has invalid stats: %s", inner.message);
        goto out;
    }
    *out = a;
    a = NULL;
    rc = 0;
out:
    archive_free(a);
    free(measures);
    free(solution);
    free(bounds);
    free(centroids);
    free(dims);
    return rc;
}
