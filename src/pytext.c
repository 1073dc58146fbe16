/*
 * pytext.c - Python str semantics for the descriptor pipeline (see pytext.h).
 *
 * The sets below are facts about CPython 3.11-3.13 (recorded in the golden file's
 * python_text_semantics); the lower-case runs are generated into pytext_lower.c.
 */
#include <stdlib.h>
#include <string.h>

#include "pytext.h"

/* Second-byte range of a multi-byte sequence, by lead byte (Unicode Table 3-7). */
static int second_byte_ok(unsigned char lead, unsigned char b)
{
    switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default:   return b >= 0x80 && b <= 0xBF;
    }
}

/* Sequence length announced by a lead byte, 0 when it cannot start one. */
static size_t sequence_length(unsigned char lead)
{
    if (lead < 0x80)
        return 1;
    if (lead >= 0xC2 && lead <= 0xDF)
        return 2;
    if (lead >= 0xE0 && lead <= 0xEF)
        return 3;
    if (lead >= 0xF0 && lead <= 0xF4)
        return 4;
    return 0;
}

size_t pytext_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char lead = s[0];
    size_t n = sequence_length(lead);
    if (n == 1) {
        *cp = lead;
        return 1;
    }
    if (n == 0 || len < n || !second_byte_ok(lead, s[1])) {
        *cp = PYTEXT_INVALID;
        return 1;
    }
    uint32_t v = lead & (0xFF >> (n + 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = PYTEXT_INVALID;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return n;
}

size_t pytext_decode_last(const unsigned char *s, size_t len, uint32_t *cp)
{
    if (s[len - 1] < 0x80) {
        *cp = s[len - 1];
        return 1;
    }
    /* Find a lead byte at most 3 bytes back and check that it decodes to the end. */
    for (size_t back = 2; back <= 4 && back <= len; back++) {
        unsigned char lead = s[len - back];
        if ((lead & 0xC0) == 0x80)
            continue;
        uint32_t v;
        if (sequence_length(lead) == back && pytext_decode(s + len - back, back, &v) == back) {
            *cp = v;
            return back;
        }
        break;
    }
    *cp = PYTEXT_INVALID;
    return 1;
}

int pytext_is_space(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F:
    case 0x205F: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

int pytext_is_linebreak(uint32_t cp)
{
    return (cp >= 0x0A && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1E) || cp == 0x85 ||
           cp == 0x2028 || cp == 0x2029;
}

uint32_t pytext_lower(uint32_t cp, uint32_t *second)
{
    *second = 0;
    if (cp < 0x80)
        return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    if (cp == 0x130) {              /* LATIN CAPITAL LETTER I WITH DOT ABOVE */
        *second = 0x307;
        return 'i';
    }
    size_t lo = 0, hi = pytext_lower_run_count;
    while (lo < hi) {               /* the last run whose first <= cp */
        size_t mid = (lo + hi) / 2;
        if (pytext_lower_runs[mid].first <= cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return cp;
    const pytext_lower_run *r = &pytext_lower_runs[lo - 1];
    if (cp <= r->last && (cp - r->first) % (uint32_t)r->step == 0)
        return (uint32_t)((int64_t)cp + r->delta);
    return cp;
}

/* ASCII whitespace of str.isspace(): \t \n \v \f \r, \x1c-\x1f and space. */
static inline int ascii_space(unsigned char b)
{
    return (b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x20);
}

size_t pytext_lstrip_len(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t pos = 0;
    while (pos < len) {
        unsigned char b = u[pos];
        if (b < 0x80) {
            if (!ascii_space(b))
                break;
            pos++;
            continue;
        }
        uint32_t cp;
        size_t n = pytext_decode(u + pos, len - pos, &cp);
        if (!pytext_is_space(cp))
            break;
        pos += n;
    }
    return pos;
}

size_t pytext_rstrip_len(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t end = len;
    while (end > 0) {
        unsigned char b = u[end - 1];
        if (b < 0x80) {
            if (!ascii_space(b))
                break;
            end--;
            continue;
        }
        uint32_t cp;
        size_t n = pytext_decode_last(u, end, &cp);
        if (!pytext_is_space(cp))
            break;
        end -= n;
    }
    return len - end;
}

int pytext_is_blank(const char *s, size_t len)
{
    return pytext_lstrip_len(s, len) == len;
}

/* 1 when a byte of w is below 0x20 or at least 0x80 (a possible line break). */
static int word_may_break(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    return ((w - ones * 0x20) | w) & highs ? 1 : 0;
}

size_t pytext_next_line(const char *s, size_t len, size_t pos, size_t *line_len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = pos;
    /* Byte scan: every break is either one ASCII control byte or one of the sequences
     * C2 85, E2 80 A8, E2 80 A9, whose lead bytes never occur inside another sequence.
     * Eight plain printable ASCII bytes are skipped at once. */
    while (i < len) {
        if (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (!word_may_break(w)) {
                i += 8;
                continue;
            }
        }
        unsigned char b = u[i];
        if (b < 0x20) {
            if ((b >= 0x0A && b <= 0x0D) || (b >= 0x1C && b <= 0x1E)) {
                *line_len = i - pos;
                if (b == '\r' && i + 1 < len && u[i + 1] == '\n')
                    return i + 2;
                return i + 1;
            }
        } else if (b == 0xC2) {
            if (i + 1 < len && u[i + 1] == 0x85) {
                *line_len = i - pos;
                return i + 2;
            }
        } else if (b == 0xE2) {
            if (i + 2 < len && u[i + 1] == 0x80 && (u[i + 2] == 0xA8 || u[i + 2] == 0xA9)) {
                *line_len = i - pos;
                return i + 3;
            }
        }
        i++;
    }
    *line_len = len - pos;
    return len;
}

size_t pytext_drop_invalid_utf8(const char *s, size_t len, char *out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < len) {
        if (u[i] < 0x80) {
            out[o++] = (char)u[i++];
            continue;
        }
        uint32_t cp;
        size_t n = pytext_decode(u + i, len - i, &cp);
        if (cp != PYTEXT_INVALID)
            for (size_t k = 0; k < n; k++)
                out[o++] = (char)u[i + k];
        i += n;
    }
    return o;
}

int pytext_is_valid_utf8(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len) {         /* eight ASCII bytes at a time */
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        i += pytext_decode(u + i, len - i, &cp);
        if (cp == PYTEXT_INVALID)
            return 0;
    }
    return 1;
}

/* ---- all the lines at once ---------------------------------------------------------- */

int pytext_kernels = PYTEXT_KERNELS_AUTO;

/* Bit i set when byte p[i] (i < 64) may be a line break or start one: \n \v \f \r,
 * \x1c-\x1e, and the lead bytes C2 and E2 of U+0085 and U+2028 / U+2029. */
static uint64_t break_candidates_portable(const unsigned char *p)
{
    uint64_t m = 0;
    for (int i = 0; i < 64; i++) {
        unsigned char b = p[i];
        int c = (b >= 0x0A && b <= 0x0D) || (b >= 0x1C && b <= 0x1E) || b == 0xC2 || b == 0xE2;
        m |= (uint64_t)c << i;
    }
    return m;
}

#if defined(__SSE2__)
#include <emmintrin.h>

static uint64_t break_candidates_sse2(const unsigned char *p)
{
    uint64_t m = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
        /* [0x0A, 0x0D] and [0x1C, 0x1E]: shifted to the bottom of the signed range */
        __m128i a = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 0x0A))),
                                   _mm_set1_epi8((char)(0x80 + 4)));
        __m128i b = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 0x1C))),
                                   _mm_set1_epi8((char)(0x80 + 3)));
        __m128i c = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xC2)),
                                 _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xE2)));
        m |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), c)) << (16 * k);
    }
    return m;
}
#define HAVE_SSE2_BREAKS 1
#else
#define HAVE_SSE2_BREAKS 0
#endif

static int push_line(size_t **pairs, size_t *cap, size_t *count, size_t start, size_t len)
{
    if (2 * (*count + 1) > *cap) {
        size_t nc = *cap ? *cap * 2 : 512;
        size_t *p = realloc(*pairs, nc * sizeof *p);
        if (!p)
            return -1;
        *pairs = p;
        *cap = nc;
    }
    (*pairs)[2 * *count] = start;
    (*pairs)[2 * *count + 1] = len;
    (*count)++;
    return 0;
}

int pytext_split_lines(const char *s, size_t len, size_t **pairs, size_t *cap, size_t *count)
{
    const unsigned char *u = (const unsigned char *)s;
    *count = 0;
    if (pytext_kernels == PYTEXT_KERNELS_REFERENCE) {
        for (size_t pos = 0; pos < len;) {
            size_t ll, next = pytext_next_line(s, len, pos, &ll);
            if (push_line(pairs, cap, count, pos, ll) != 0)
                return -1;
            pos = next;
        }
        return 0;
    }
    /* Blocks of 64 bytes give the candidate bytes; each one is checked in order, as
     * pytext_next_line checks every byte (a break's other bytes are never candidates,
     * except the \n of \r\n, which `start` skips). */
    unsigned char tail[64];
    size_t start = 0;                /* of the current line */
    for (size_t base = 0; base < len; base += 64) {
        const unsigned char *p = u + base;
        if (len - base < 64) {
            memset(tail, 0, sizeof tail);
            memcpy(tail, p, len - base);
            p = tail;
        }
        uint64_t m;
#if HAVE_SSE2_BREAKS
        if (pytext_kernels == PYTEXT_KERNELS_AUTO)
            m = break_candidates_sse2(p);
        else
#endif
            m = break_candidates_portable(p);
        while (m) {
            size_t i = base + (size_t)__builtin_ctzll(m);
            m &= m - 1;
            if (i < start)
                continue;            /* the \n of a \r\n */
            unsigned char b = u[i];
            size_t next;
            if (b < 0x80)
                next = b == '\r' && i + 1 < len && u[i + 1] == '\n' ? i + 2 : i + 1;
            else if (b == 0xC2)
                next = i + 1 < len && u[i + 1] == 0x85 ? i + 2 : 0;
            else
                next = i + 2 < len && u[i + 1] == 0x80 && (u[i + 2] == 0xA8 || u[i + 2] == 0xA9)
                           ? i + 3 : 0;
            if (!next)
                continue;
            if (push_line(pairs, cap, count, start, i - start) != 0)
                return -1;
            start = next;
        }
    }
    if (start < len && push_line(pairs, cap, count, start, len - start) != 0)
        return -1;
    return 0;
}
