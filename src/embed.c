/*
 * embed.c - the local code embedding and the pooling of contract §3.4.
 *
 * The reference asks a hosted model for one vector per chunk. Here a chunk becomes a
 * signed feature-hashing vector of its code tokens:
 *   tokens    identifier words (split at '_', lower->Upper, Upper->Upper+lower and
 *             letter<->digit changes), numbers (a digit, then letters, digits, '_' and
 *             '.'), operators (the longest of a fixed list, else one character);
 *             lower-cased; at most DESCRIPTOR_MAX_CHUNK_TOKENS per chunk. A lone
 *             delimiter ( ) [ ] { } , ; : . ' " ` \ # $ only separates tokens: it
 *             carries little about the code and is a third of all symbols;
 *   features  every unigram and every bigram of consecutive tokens, each a 64-bit hash
 *             of the token bytes (8 bytes at a time, then a splitmix64 finaliser);
 *   vector    per distinct feature, 1 + ln(count) added to bucket hi32(h) * D >> 32 with
 *             the sign of bit 0; then L2 normalisation.
 * Nothing depends on the platform, the locale or a seed: the same text gives the same
 * vector, bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor.h"
#include "pytext.h"

#define SEED_TOKEN 0x243F6A8885A308D3ull    /* digits of pi, to separate the kinds */
#define SEED_BIGRAM 0x13198A2E03707344ull
#define FNV_OFFSET 0xCBF29CE484222325ull
#define FNV_PRIME 0x100000001B3ull

static inline uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

/* ---- byte classes -------------------------------------------------------------------------- */

enum {
    C_OTHER = 0,    /* punctuation and control characters: operator tokens */
    C_SPACE,        /* Python whitespace */
    C_LOWER,        /* a-z */
    C_UPPER,        /* A-Z */
    C_DIGIT,        /* 0-9 */
    C_UNDER,        /* _ */
    C_HIGH,         /* >= 0x80: decode */
};

static unsigned char byte_class[256];
static unsigned char op_second[256];    /* can be the second byte of a listed operator */
static unsigned char delimiter[256];    /* a lone one separates tokens but is none */
static unsigned char ident_ascii[256];  /* [A-Za-z0-9_] */
static unsigned char op_start[256];     /* starts an operator token wherever it is met */
static int tables_ready;

static void init_tables(void)
{
    if (tables_ready)
        return;
    for (int b = 0; b < 256; b++) {
        unsigned char c = C_OTHER;
        if (b >= 0x80)
            c = C_HIGH;
        else if ((b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x20))
            c = C_SPACE;
        else if (b >= 'a' && b <= 'z')
            c = C_LOWER;
        else if (b >= 'A' && b <= 'Z')
            c = C_UPPER;
        else if (b >= '0' && b <= '9')
            c = C_DIGIT;
        else if (b == '_')
            c = C_UNDER;
        byte_class[b] = c;
        ident_ascii[b] = c == C_LOWER || c == C_UPPER || c == C_DIGIT || c == C_UNDER;
    }
    for (const char *p = "=&|>:<+-*/.?"; *p; p++)
        op_second[(unsigned char)*p] = 1;
    for (const char *p = "()[]{},;:.'\"`\\#$"; *p; p++)
        delimiter[(unsigned char)*p] = 1;
    for (int b = 0; b < 256; b++)
        op_start[b] = byte_class[b] == C_OTHER && !delimiter[b];
    tables_ready = 1;
}

/* ---- tokenizer ------------------------------------------------------------------------------ */

typedef struct token {
    uint64_t hash;
    size_t start, end;          /* the token's bytes in the tokenized text */
} token;

/* Tokens are collected into toks; the bytes of the current one are hashed on the fly. */
typedef struct tokenizer {
    size_t count;
    uint64_t h, word;
    size_t nb, start;
    token *toks;
    size_t cap;
    int failed;
} tokenizer;

static inline void tok_begin(tokenizer *t, size_t offset)
{
    t->h = SEED_TOKEN;
    t->word = 0;
    t->nb = 0;
    t->start = offset;
}

static inline void tok_byte(tokenizer *t, unsigned char b)
{
    t->word |= (uint64_t)b << (8 * (t->nb & 7));
    if ((++t->nb & 7) == 0) {
        t->h = (t->h ^ t->word) * 0xFF51AFD7ED558CCDull;
        t->h ^= t->h >> 32;
        t->word = 0;
    }
}

static void tok_cp(tokenizer *t, uint32_t cp)
{
    uint32_t second;
    uint32_t v = pytext_lower(cp, &second);
    for (;;) {
        if (v < 0x80) {
            tok_byte(t, (unsigned char)v);
        } else if (v < 0x800) {
            tok_byte(t, (unsigned char)(0xC0 | (v >> 6)));
            tok_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        } else if (v < 0x10000) {
            tok_byte(t, (unsigned char)(0xE0 | (v >> 12)));
            tok_byte(t, (unsigned char)(0x80 | ((v >> 6) & 0x3F)));
            tok_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        } else {
            tok_byte(t, (unsigned char)(0xF0 | (v >> 18)));
            tok_byte(t, (unsigned char)(0x80 | ((v >> 12) & 0x3F)));
            tok_byte(t, (unsigned char)(0x80 | ((v >> 6) & 0x3F)));
            tok_byte(t, (unsigned char)(0x80 | (v & 0x3F)));
        }
        if (!second)
            break;
        v = second;
        second = 0;
    }
}

/* Ends the current token at byte `end`: its hash is the bytes' (lower-cased) hash. */
static void tok_end(tokenizer *t, size_t end)
{
    uint64_t hash = mix64(t->h ^ t->word ^ ((uint64_t)t->nb << 56));
    if (t->count == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 1024;
        token *p = realloc(t->toks, nc * sizeof *p);
        if (!p) {
            t->failed = 1;
            t->count++;
            return;
        }
        t->toks = p;
        t->cap = nc;
    }
    token *k = &t->toks[t->count++];
    k->hash = hash;
    k->start = t->start;
    k->end = end;
}

/* Class of a decoded non-ASCII code point inside an identifier. */
static int high_class(uint32_t cp)
{
    uint32_t second;
    return pytext_lower(cp, &second) != cp ? C_UPPER : C_LOWER;
}

/* The class of the identifier character at s[pos] (C_SPACE/C_OTHER: not one), its code
 * point and its length. */
static inline int ident_char(const unsigned char *s, size_t len, size_t pos, uint32_t *cp,
                             size_t *k)
{
    unsigned char b = s[pos];
    int c = byte_class[b];
    if (c != C_HIGH) {
        *cp = b;
        *k = 1;
        return c == C_DIGIT || c == C_LOWER || c == C_UPPER || c == C_UNDER ? c : C_OTHER;
    }
    *k = pytext_decode(s + pos, len - pos, cp);
    if (*cp == PYTEXT_INVALID || pytext_is_space(*cp))
        return C_SPACE;
    return high_class(*cp);
}

/* An identifier starting at s[pos]: emits its words; returns the end position. */
static size_t scan_identifier(tokenizer *t, const unsigned char *s, size_t len, size_t pos,
                              size_t max)
{
    int in_word = 0, prev = C_UNDER;
    uint32_t cp;
    size_t k;
    int cls = ident_char(s, len, pos, &cp, &k);
    while (cls != C_SPACE && cls != C_OTHER) {
        size_t next = pos + k;
        uint32_t ncp = 0;
        size_t nk = 0;
        int ncls = next < len ? ident_char(s, len, next, &ncp, &nk) : C_SPACE;
        if (cls == C_UNDER) {
            if (in_word)
                tok_end(t, pos);
            in_word = 0;
        } else {
            int boundary = 0;
            if (in_word) {
                if ((cls == C_DIGIT) != (prev == C_DIGIT))
                    boundary = 1;
                else if (cls == C_UPPER && prev == C_LOWER)
                    boundary = 1;
                else if (cls == C_UPPER && prev == C_UPPER && ncls == C_LOWER)
                    boundary = 1;   /* "HTTPServer": the capital before "erver" */
            }
            if (boundary)
                tok_end(t, pos);
            if (t->count >= max)
                return next;
            if (!in_word || boundary)
                tok_begin(t, pos);
            in_word = 1;
            if (cp < 0x80)
                tok_byte(t, (unsigned char)(cls == C_UPPER ? cp + 32 : cp));
            else
                tok_cp(t, cp);
            if (ncls == C_LOWER && ncp < 0x80 && cls != C_DIGIT) {
                /* Fast path: lower-case ASCII letters after a letter never start a word. */
                while (next < len && byte_class[s[next]] == C_LOWER) {
                    tok_byte(t, s[next]);
                    next++;
                }
                prev = C_LOWER;
                pos = next;
                cls = next < len ? ident_char(s, len, next, &cp, &k) : C_SPACE;
                continue;
            }
        }
        prev = cls;
        pos = next;
        cp = ncp;
        k = nk;
        cls = ncls;
    }
    if (in_word && t->count < max)
        tok_end(t, pos);
    return pos;
}

static const char OPERATORS3[][4] = { "...", "===", "!==", "<<=", ">>=", "**=", "//=", "<=>",
                                      ">>>" };
static const char OPERATORS2[][3] = { "==", "!=", "<=", ">=", "&&", "||", "->", "=>", "::",
                                      "<<", ">>", "+=", "-=", "*=", "/=", "%=", "&=", "|=",
                                      "^=", "++", "--", "**", "//", ":=", "..", "??", "?.",
                                      "|>" };

static size_t operator_length(const unsigned char *s, size_t len, size_t pos)
{
    if (pos + 1 >= len || !op_second[s[pos + 1]])
        return 1;
    if (pos + 2 < len)
        for (size_t i = 0; i < sizeof OPERATORS3 / sizeof OPERATORS3[0]; i++)
            if (memcmp(s + pos, OPERATORS3[i], 3) == 0)
                return 3;
    for (size_t i = 0; i < sizeof OPERATORS2 / sizeof OPERATORS2[0]; i++)
        if (s[pos] == (unsigned char)OPERATORS2[i][0] && s[pos + 1] == (unsigned char)OPERATORS2[i][1])
            return 2;
    return 1;
}

/* ---- eight bytes at a time (SWAR) ------------------------------------------------------ */

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;            /* little-endian hosts: byte i is bits 8i..8i+7 (checked below) */
}

/* 0x80 in each byte of w (all below 0x80) that lies in [lo, hi]. */
static inline uint64_t bytes_between(uint64_t w, unsigned lo, unsigned hi)
{
    return (w + ONES * (0x80 - lo)) & ~(w + ONES * (0x7F - hi)) & HIGHS;
}

/* 0x80 in each identifier byte [A-Za-z0-9_] of w (all below 0x80). */
static inline uint64_t ident_bytes(uint64_t w)
{
    uint64_t y = w ^ (ONES * 0x5F);
    return bytes_between(w | (ONES * 0x20), 'a', 'z') | bytes_between(w, '0', '9') |
           (~(y + ONES * 0x7F) & HIGHS);
}

/* 0x80 in each byte of w that is an upper-case letter, a digit or '_'. */
static inline uint64_t non_lower_ident_bytes(uint64_t w)
{
    uint64_t y = w ^ (ONES * 0x5F);
    return bytes_between(w, 'A', 'Z') | bytes_between(w, '0', '9') | (~(y + ONES * 0x7F) & HIGHS);
}

static int little_endian(void)
{
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* The byte-at-a-time tokenizer: text[0..len), at most max tokens (t->count counts
 * them). The reference the block tokenizer below must agree with, token for token. */
static void tokenize_bytes(tokenizer *t, const char *text, size_t len, size_t max)
{
    init_tables();
    const unsigned char *s = (const unsigned char *)text;
    /* The hot state lives in locals (stores into the token array cannot be mistaken for
     * changes of it); t is synchronised around the rare non-ASCII identifiers. */
    token *toks = t->toks;
    size_t cap = t->cap, count = t->count;
    const int swar = little_endian();
    uint64_t h = 0, word = 0;
    size_t nb = 0, start = 0, pos = 0;
#define TOK_BEGIN(off) (h = SEED_TOKEN, word = 0, nb = 0, start = (off))
#define TOK_BYTE(byte)                                                                   \
    do {                                                                                 \
        word |= (uint64_t)(byte) << (8 * (nb & 7));                                      \
        if ((++nb & 7) == 0) {                                                           \
            h = (h ^ word) * 0xFF51AFD7ED558CCDull;                                      \
            h ^= h >> 32;                                                                \
            word = 0;                                                                    \
        }                                                                                \
    } while (0)
#define TOK_END(endpos)                                                                  \
    do {                                                                                 \
        if (count == cap) {                                                              \
            size_t nc_ = cap ? cap * 2 : 1024;                                           \
            token *p_ = realloc(toks, nc_ * sizeof *p_);                                 \
            if (!p_) {                                                                   \
                t->failed = 1;                                                           \
                goto done;                                                               \
            }                                                                            \
            toks = p_;                                                                   \
            cap = nc_;                                                                   \
        }                                                                                \
        toks[count].hash = mix64(h ^ word ^ ((uint64_t)nb << 56));                       \
        toks[count].start = start;                                                       \
        toks[count].end = (endpos);                                                      \
        if (++count >= max)                                                              \
            goto done;                                                                   \
    } while (0)
    while (pos < len) {
        unsigned char b = s[pos];
        switch (byte_class[b]) {
        case C_SPACE:
            pos++;
            while (pos < len && s[pos] == ' ')
                pos++;
            break;
        case C_DIGIT:
            TOK_BEGIN(pos);
            while (pos < len) {
                int c = byte_class[s[pos]];
                if (c == C_DIGIT || c == C_LOWER || c == C_UNDER || s[pos] == '.')
                    TOK_BYTE(s[pos]);
                else if (c == C_UPPER)
                    TOK_BYTE(s[pos] + 32);
                else
                    break;
                pos++;
            }
            TOK_END(pos);
            break;
        case C_LOWER:
        case C_UPPER:
        case C_UNDER: {
            size_t end = pos;
            uint64_t unusual = 0;        /* upper case, digits or '_' seen in the run */
            if (swar) {
                while (end + 8 <= len) {
                    uint64_t w = load8(s + end);
                    if (w & HIGHS)
                        break;
                    uint64_t id = ident_bytes(w);
                    uint64_t stop = ~id & HIGHS;
                    if (stop) {
                        size_t k = (size_t)__builtin_ctzll(stop) / 8;
                        unusual |= non_lower_ident_bytes(w) & ((1ull << (8 * k)) - 1);
                        end += k;
                        goto run_end;
                    }
                    unusual |= non_lower_ident_bytes(w);
                    end += 8;
                }
            }
            while (end < len && ident_ascii[s[end]]) {
                unusual |= s[end] < 'a' ? HIGHS : 0;
                end++;
            }
        run_end:
            if (!unusual && (end >= len || s[end] < 0x80)) {
                /* One lower-case word: hash it eight bytes at a time. */
                TOK_BEGIN(pos);
                size_t i = pos;
                for (; i + 8 <= end; i += 8) {
                    h = (h ^ load8(s + i)) * 0xFF51AFD7ED558CCDull;
                    h ^= h >> 32;
                }
                for (; i < end; i++)
                    word |= (uint64_t)s[i] << (8 * ((i - pos) & 7));
                nb = end - pos;
                TOK_END(end);
                pos = end;
                break;
            }
            if (end < len && s[end] >= 0x80) {
                t->toks = toks;              /* a non-ASCII identifier: general scanner */
                t->cap = cap;
                t->count = count;
                pos = scan_identifier(t, s, len, pos, max);
                toks = t->toks;
                cap = t->cap;
                count = t->count;
                if (t->failed || count >= max)
                    goto done;
                break;
            }
            /* Words of the ASCII identifier s[pos..end): breaks at '_', lower->Upper,
             * Upper->Upper+lower and letter<->digit (as scan_identifier). */
            int in_word = 0, prev = C_UNDER;
            for (size_t i = pos; i < end; i++) {
                unsigned char c = s[i];
                int cls = byte_class[c];
                if (cls == C_LOWER && in_word && prev != C_DIGIT) {
                    TOK_BYTE(c);             /* the common case: the word goes on */
                    prev = C_LOWER;
                    continue;
                }
                if (cls == C_UNDER) {
                    if (in_word)
                        TOK_END(i);
                    in_word = 0;
                    prev = cls;
                    continue;
                }
                if (in_word && (((cls == C_DIGIT) != (prev == C_DIGIT)) ||
                                (cls == C_UPPER && prev == C_LOWER) ||
                                (cls == C_UPPER && prev == C_UPPER && i + 1 < end &&
                                 byte_class[s[i + 1]] == C_LOWER))) {
                    TOK_END(i);
                    in_word = 0;
                }
                if (!in_word)
                    TOK_BEGIN(i);
                in_word = 1;
                TOK_BYTE(cls == C_UPPER ? c + 32 : c);
                prev = cls;
            }
            if (in_word)
                TOK_END(end);
            pos = end;
            break;
        }
        case C_HIGH: {
            uint32_t cp;
            size_t k = pytext_decode(s + pos, len - pos, &cp);
            if (cp == PYTEXT_INVALID || pytext_is_space(cp)) {
                pos += k;
                break;
            }
            t->toks = toks;
            t->cap = cap;
            t->count = count;
            pos = scan_identifier(t, s, len, pos, max);
            toks = t->toks;
            cap = t->cap;
            count = t->count;
            if (t->failed || count >= max)
                goto done;
            break;
        }
        default: {
            size_t ol = operator_length(s, len, pos);
            if (ol == 1 && delimiter[b]) {
                pos++;               /* brackets, commas, quotes ...: separators */
                break;
            }
            TOK_BEGIN(pos);
            for (size_t i = 0; i < ol; i++)
                TOK_BYTE(s[pos + i]);
            pos += ol;
            TOK_END(pos);
            break;
        }
        }
    }
done:
    t->toks = toks;
    t->cap = cap;
    t->count = count;
#undef TOK_BEGIN
#undef TOK_BYTE
#undef TOK_END
}

/* ---- the block tokenizer ------------------------------------------------------------------ */

/*
 * The same tokens as tokenize_bytes, found 64 bytes at a time. A classifier turns a
 * block into bitmasks (bit i: byte i), and bit operations give every token start and
 * every token end of the block at once, so the scan has no branch per byte and almost
 * none per token:
 *
 *   ID   identifier bytes [A-Za-z0-9_];  M = ID | '.'
 *   N    numbers: from a digit that does not follow an ID byte (a seed), through M
 *        (one addition carries each seed through its run of M);
 *   LUD  letters and digits outside numbers; a word starts where the previous byte is
 *        not one, at a digit/letter change, at lower->Upper, and at the last capital
 *        of a run of capitals followed by a lower-case letter ("HTTPServer");
 *   ops  the operator characters (not the lone delimiters), '.' before '.', ':' before
 *        ':' or '=': a short loop takes the longest listed operator at each.
 *
 * Each token ends at exactly one end bit and starts at exactly one start bit, so the
 * k-th start and the k-th end of a block make the k-th token. A block always begins
 * where the byte scanner would be between two tokens (a fresh position); tokens are
 * taken only when they end inside the block (the byte after them is known), and the
 * next block begins at the first token that does not. Non-ASCII bytes, and tokens of
 * 64 bytes or more, go through the byte scanner's step (scalar_step) and the blocks
 * resume behind them.
 */

typedef struct block_class {
    uint64_t lo, up, dg, id, dot, hi, op;
} block_class;

/*
 * Classifies p[0..64) (p[64] is read as the byte after the last one): the masks in c,
 * and the block lower-cased (ASCII letters only) in low[0..64). Portable version.
 */
static void classify_portable(const unsigned char *p, block_class *c, unsigned char *low)
{
    uint64_t lo = 0, up = 0, dg = 0, id = 0, dot = 0, hi = 0, op = 0;
    for (int i = 0; i < 64; i++) {
        unsigned char b = p[i], n = p[i + 1];
        uint64_t bit = 1ull << i;
        int k = byte_class[b];
        lo |= k == C_LOWER ? bit : 0;
        up |= k == C_UPPER ? bit : 0;
        dg |= k == C_DIGIT ? bit : 0;
        id |= ident_ascii[b] ? bit : 0;
        dot |= b == '.' ? bit : 0;
        hi |= b >= 0x80 ? bit : 0;
        op |= (op_start[b] || (b == '.' && n == '.') || (b == ':' && (n == ':' || n == '=')))
                  ? bit : 0;
        low[i] = (unsigned char)(k == C_UPPER ? b + 32 : b);
    }
    c->lo = lo;
    c->up = up;
    c->dg = dg;
    c->id = id;
    c->dot = dot;
    c->hi = hi;
    c->op = op;
}

#if defined(__SSE2__)
#include <emmintrin.h>

/* 0xFF in each byte of v in [a, b] (an addition maps the range to the bottom of the
 * signed bytes, one comparison tests it). */
static inline __m128i in_range(__m128i v, int a, int b)
{
    __m128i t = _mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - a)));
    return _mm_cmplt_epi8(t, _mm_set1_epi8((char)(0x80 + (b - a) + 1)));
}

static inline __m128i is_byte(__m128i v, int b)
{
    return _mm_cmpeq_epi8(v, _mm_set1_epi8((char)b));
}

/* The same with SSE2 (every x86-64 processor has it), 16 bytes at a time. */
static void classify_sse2(const unsigned char *p, block_class *c, unsigned char *low)
{
    uint64_t lo_m = 0, up_m = 0, dg_m = 0, id_m = 0, dot_m = 0, hi_m = 0, op_m = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
        __m128i n = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k + 1));
        __m128i lo = in_range(v, 'a', 'z'), up = in_range(v, 'A', 'Z');
        __m128i dg = in_range(v, '0', '9');
        __m128i id = _mm_or_si128(_mm_or_si128(lo, up), _mm_or_si128(dg, is_byte(v, '_')));
        __m128i dot = is_byte(v, '.'), colon = is_byte(v, ':');
        __m128i space = _mm_or_si128(in_range(v, 0x09, 0x0D), in_range(v, 0x1C, 0x20));
        /* lone delimiters: " # $  ' ( )  ,  ;  [ \ ]  `  {  } */
        __m128i delim = _mm_or_si128(
            _mm_or_si128(_mm_or_si128(in_range(v, 0x22, 0x24), in_range(v, 0x27, 0x29)),
                         _mm_or_si128(is_byte(v, ','), is_byte(v, ';'))),
            _mm_or_si128(_mm_or_si128(in_range(v, 0x5B, 0x5D), is_byte(v, '`')),
                         _mm_or_si128(is_byte(v, '{'), is_byte(v, '}'))));
        __m128i high = _mm_cmplt_epi8(v, _mm_setzero_si128());
        __m128i not_op = _mm_or_si128(_mm_or_si128(_mm_or_si128(id, dot), _mm_or_si128(colon, space)),
                                      _mm_or_si128(delim, high));
        __m128i op = _mm_andnot_si128(not_op, _mm_set1_epi8(-1));
        op = _mm_or_si128(op, _mm_and_si128(dot, is_byte(n, '.')));
        op = _mm_or_si128(op, _mm_and_si128(colon, _mm_or_si128(is_byte(n, ':'), is_byte(n, '='))));
        _mm_storeu_si128((__m128i *)(void *)(low + 16 * k),
                         _mm_or_si128(v, _mm_and_si128(up, _mm_set1_epi8(0x20))));
        int sh = 16 * k;
        lo_m |= (uint64_t)(unsigned)_mm_movemask_epi8(lo) << sh;
        up_m |= (uint64_t)(unsigned)_mm_movemask_epi8(up) << sh;
        dg_m |= (uint64_t)(unsigned)_mm_movemask_epi8(dg) << sh;
        id_m |= (uint64_t)(unsigned)_mm_movemask_epi8(id) << sh;
        dot_m |= (uint64_t)(unsigned)_mm_movemask_epi8(dot) << sh;
        hi_m |= (uint64_t)(unsigned)_mm_movemask_epi8(v) << sh;
        op_m |= (uint64_t)(unsigned)_mm_movemask_epi8(op) << sh;
    }
    c->lo = lo_m;
    c->up = up_m;
    c->dg = dg_m;
    c->id = id_m;
    c->dot = dot_m;
    c->hi = hi_m;
    c->op = op_m;
}
#define HAVE_SSE2_CLASSIFIER 1
#else
#define HAVE_SSE2_CLASSIFIER 0
#endif

/* One step of the byte scanner at the fresh position pos: the token(s) that start
 * there, or the separator skipped. Returns the next fresh position (> pos). */
static size_t scalar_step(tokenizer *t, const unsigned char *s, size_t len, size_t pos,
                          size_t max)
{
    unsigned char b = s[pos];
    switch (byte_class[b]) {
    case C_SPACE:
        return pos + 1;
    case C_DIGIT:
        tok_begin(t, pos);
        while (pos < len) {
            int c = byte_class[s[pos]];
            if (c == C_DIGIT || c == C_LOWER || c == C_UNDER || s[pos] == '.')
                tok_byte(t, s[pos]);
            else if (c == C_UPPER)
                tok_byte(t, (unsigned char)(s[pos] + 32));
            else
                break;
            pos++;
        }
        tok_end(t, pos);
        return pos;
    case C_LOWER:
    case C_UPPER:
    case C_UNDER:
        return scan_identifier(t, s, len, pos, max);
    case C_HIGH: {
        uint32_t cp;
        size_t k = pytext_decode(s + pos, len - pos, &cp);
        if (cp == PYTEXT_INVALID || pytext_is_space(cp))
            return pos + k;
        return scan_identifier(t, s, len, pos, max);
    }
    default: {
        size_t ol = operator_length(s, len, pos);
        if (ol == 1 && delimiter[b])
            return pos + 1;
        tok_begin(t, pos);
        for (size_t i = 0; i < ol; i++)
            tok_byte(t, s[pos + i]);
        tok_end(t, pos + ol);
        return pos + ol;
    }
    }
}

/* Bits below n (n <= 64). */
static inline uint64_t bits_below(unsigned n)
{
    return n >= 64 ? ~0ull : (1ull << n) - 1;
}

static inline unsigned top_bit(uint64_t x)
{
    return 63u - (unsigned)__builtin_clzll(x);
}

/* Eight bytes as tok_byte packs them: byte i in bits 8i..8i+7, on any host. */
static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t w = load8(p);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* The hash of the token bytes low[0..n) (1 <= n < 64; low has 8 readable bytes past
 * the token), as tok_begin / tok_byte / tok_end compute it. */
static inline uint64_t hash_bytes(const unsigned char *low, size_t n)
{
    uint64_t h = SEED_TOKEN, word;
    if (n < 8) {
        word = load_le64(low) & ((1ull << (8 * n)) - 1);
    } else {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            h = (h ^ load_le64(low + i)) * 0xFF51AFD7ED558CCDull;
            h ^= h >> 32;
        }
        size_t r = n - i;
        word = r ? load_le64(low + i) & ((1ull << (8 * r)) - 1) : 0;
    }
    return mix64(h ^ word ^ ((uint64_t)n << 56));
}

static void tokenize_blocks(tokenizer *t, const char *text, size_t len, size_t max,
                            int portable)
{
    init_tables();
    (void)portable;                  /* without SSE2 every block is classified in plain C */
    const unsigned char *s = (const unsigned char *)text;
    /* tail: the last bytes, padded with spaces (a space ends every token, as the end of
     * the text does); low: the lower-cased block and the 8 bytes hash_bytes may read */
    unsigned char tail[64 + 16], low[64 + 16];
    memset(low + 64, 0, 16);
    size_t pos = 0;
    while (pos < len && t->count < max && !t->failed) {
        const unsigned char *p = s + pos;
        size_t avail = len - pos;
        if (avail < 65) {
            memset(tail, ' ', sizeof tail);
            memcpy(tail, p, avail);
            p = tail;
        }
        block_class c;
#if HAVE_SSE2_CLASSIFIER
        if (!portable)
            classify_sse2(p, &c, low);
        else
#endif
            classify_portable(p, &c, low);

        uint64_t id = c.id;
        uint64_t seeds = c.dg & ~(id << 1), m = id | c.dot;
        uint64_t num = (m & ~(m + seeds)) | seeds;
        uint64_t idn = id & ~num;
        uint64_t lud = idn & (c.lo | c.up | c.dg);
        uint64_t word_start = lud & (~(lud << 1) | (c.dg ^ (c.dg << 1)) | (c.up & (c.lo << 1)) |
                                     (c.up & (c.up << 1) & (c.lo >> 1)));
        uint64_t word_end = (word_start | ~lud) & (lud << 1);
        uint64_t num_start = num & ~(num << 1), num_end = ~num & (num << 1);

        /* The first token that does not end inside the block: a run through bit 63. */
        unsigned limit = 64;
        int step = 0;                /* the byte scanner takes over at limit */
        if (num >> 63) {
            limit = top_bit(num_start);
        } else if (idn >> 63) {
            limit = top_bit(idn & ~(idn << 1));
        }
        if (c.hi) {
            /* a non-ASCII byte: the byte scanner from it, or from the start of the
             * identifier it may continue */
            unsigned h = (unsigned)__builtin_ctzll(c.hi), at = h;
            if (h > 0 && (idn >> (h - 1)) & 1)
                at = top_bit(idn & ~(idn << 1) & bits_below(h));
            if (at <= limit) {
                limit = at;
                step = 1;
            }
        }
        uint64_t ops = c.op & ~num & bits_below(limit), op_start_bits = 0, op_end = 0;
        unsigned next = 0;
        while (ops) {
            unsigned q = (unsigned)__builtin_ctzll(ops);
            ops &= ops - 1;
            if (q < next)
                continue;            /* the second or third byte of the last operator */
            if (q > 60) {            /* its end could fall past the block's last bit */
                limit = q;
                step = 0;
                break;
            }
            unsigned ol = 1;
            if (op_second[low[q + 1]])
                ol = (unsigned)operator_length(low, q + 3, q);
            op_start_bits |= 1ull << q;
            op_end |= 1ull << (q + ol);
            next = q + ol;
        }

        uint64_t starts = (word_start | num_start | op_start_bits) & bits_below(limit);
        uint64_t ends = (word_end | num_end | op_end) & bits_below(limit + 1);
        if (t->cap - t->count < 64) {          /* room for a block's tokens */
            size_t nc = t->cap ? t->cap * 2 : 1024;
            token *np = realloc(t->toks, nc * sizeof *np);
            if (!np) {
                t->failed = 1;
                return;
            }
            t->toks = np;
            t->cap = nc;
        }
        token *out = t->toks + t->count;
        size_t n = 0, room = max - t->count;
        while (starts && n < room) {
            unsigned a = (unsigned)__builtin_ctzll(starts), b = (unsigned)__builtin_ctzll(ends);
            starts &= starts - 1;
            ends &= ends - 1;
            out[n].hash = hash_bytes(low + a, b - a);
            out[n].start = pos + a;
            out[n].end = pos + b;
            n++;
        }
        t->count += n;
        if (t->count >= max)
            return;
        pos += limit;
        if (step || limit == 0)
            pos = scalar_step(t, s, len, pos, max);
    }
}

/* Tokenizes text[0..len), at most max tokens, with the chosen tokenizer. */
static void tokenize(tokenizer *t, const char *text, size_t len, size_t max)
{
    switch (pytext_kernels) {
    case PYTEXT_KERNELS_REFERENCE:
        tokenize_bytes(t, text, len, max);
        break;
    case PYTEXT_KERNELS_PORTABLE:
        tokenize_blocks(t, text, len, max, 1);
        break;
    default:
        tokenize_blocks(t, text, len, max, 0);
        break;
    }
}

void descriptor_tokens(const char *text, size_t len,
                       void (*fn)(const char *token, size_t len, void *ctx), void *ctx)
{
    tokenizer t;
    memset(&t, 0, sizeof t);
    tokenize(&t, text, len, DESCRIPTOR_MAX_CHUNK_TOKENS);
    /* The text of each token: its bytes, lower-cased, split exactly where it was hashed. */
    descriptor_buf b = { 0 };
    size_t n = t.failed ? 0 : t.count;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *s = (const unsigned char *)text;
        size_t pos = t.toks[i].start, end = t.toks[i].end;
        b.len = 0;
        while (pos < end) {
            uint32_t cp, second;
            size_t k = s[pos] < 0x80 ? (cp = s[pos], 1) : pytext_decode(s + pos, end - pos, &cp);
            uint32_t v[2] = { pytext_lower(cp, &second), 0 };
            v[1] = second;
            for (int c = 0; c < 2 && v[c]; c++) {
                char enc[4];
                size_t el = 0;
                if (v[c] < 0x80) {
                    enc[el++] = (char)v[c];
                } else if (v[c] < 0x800) {
                    enc[el++] = (char)(0xC0 | (v[c] >> 6));
                    enc[el++] = (char)(0x80 | (v[c] & 0x3F));
                } else if (v[c] < 0x10000) {
                    enc[el++] = (char)(0xE0 | (v[c] >> 12));
                    enc[el++] = (char)(0x80 | ((v[c] >> 6) & 0x3F));
                    enc[el++] = (char)(0x80 | (v[c] & 0x3F));
                } else {
                    enc[el++] = (char)(0xF0 | (v[c] >> 18));
                    enc[el++] = (char)(0x80 | ((v[c] >> 12) & 0x3F));
                    enc[el++] = (char)(0x80 | ((v[c] >> 6) & 0x3F));
                    enc[el++] = (char)(0x80 | (v[c] & 0x3F));
                }
                if (descriptor_buf_append(&b, enc, el) != 0)
                    goto out;
            }
            pos += k;
        }
        fn(b.len ? b.data : "", b.len, ctx);
    }
out:
    descriptor_buf_free(&b);
    free(t.toks);
}

/* ---- feature counting -------------------------------------------------------------------- */

/*
 * Distinct features of one chunk are counted in an open-addressing table (linear
 * probing) whose entries hold the 64-bit feature key and its count; the slots in the
 * order the features first appeared are listed in `order`, since the vector is summed in
 * that order (floating-point addition is not associative: the order is part of the
 * result). The table has at least four slots per feature of the chunk (at most a
 * quarter full, usually a tenth), so a probe almost always ends at the first slot, and
 * an insert is the same few instructions whether the feature is new or not. Key 0,
 * which marks an empty slot, has its own slot just past the probed ones. The table is
 * cleared entry by entry as the vector is summed, so it is all zero between chunks.
 */
typedef struct feature_slot {
    uint64_t key;
    uint64_t count;
} feature_slot;

struct descriptor_embedder {
    tokenizer tok;
    size_t dims;
    feature_slot *table;        /* cap + 1 entries, all zero between chunks */
    uint32_t *order;            /* cap / 2 entries: slots in first-appearance order */
    size_t cap;                 /* power of two */
    double log_table[64];       /* 1 + ln(c) for c < 64 */
};

#define TABLE_MIN 1024         /* slots; at most 4 * 2 * DESCRIPTOR_MAX_CHUNK_TOKENS (1 MB) */

/* Makes the table hold at least cap slots (cap a power of two). */
static int table_reserve(descriptor_embedder *e, size_t cap)
{
    if (cap <= e->cap)
        return 0;
    feature_slot *table = calloc(cap + 1, sizeof *table);
    uint32_t *order = malloc(cap / 2 * sizeof *order);
    if (!table || !order) {
        free(table);
        free(order);
        return DESCRIPTOR_ENOMEM;
    }
    free(e->table);
    free(e->order);
    e->table = table;
    e->order = order;
    e->cap = cap;
    return 0;
}

/*
 * Counts one feature: its slot is the first, from key & mask on, that holds the key or
 * is empty (key 0 has slot cap). The loop test is a single comparison, min(k, k ^ key)
 * == 0, so the branch does not depend on whether the feature is new. Returns the new
 * number of distinct features.
 */
static inline size_t count_feature(feature_slot *table, uint32_t *order, size_t nused,
                                   size_t mask, size_t cap, uint64_t key)
{
    size_t slot = key ? (size_t)key & mask : cap;
    for (;;) {
        uint64_t k = table[slot].key, x = k ^ key;
        if ((k < x ? k : x) == 0)
            break;
        slot = (slot + 1) & mask;
    }
    uint64_t c = table[slot].count;
    table[slot].key = key;
    table[slot].count = c + 1;
    order[nused] = (uint32_t)slot;
    return nused + (c == 0);
}

/* v[i] /= d for every i; two at a time with SSE2 (the same IEEE division per lane). */
static void divide_all(double *v, size_t n, double d)
{
    size_t i = 0;
#if defined(__SSE2__)
    __m128d dd = _mm_set1_pd(d);
    for (; i + 2 <= n; i += 2)
        _mm_storeu_pd(v + i, _mm_div_pd(_mm_loadu_pd(v + i), dd));
#endif
    for (; i < n; i++)
        v[i] /= d;
}

/* sum[i] += v[i] * w for every i (a product, then a sum, each rounded: as in scalar
 * code compiled with -ffp-contract=off); two at a time with SSE2. */
static void add_scaled(double *sum, const double *v, double w, size_t n)
{
    size_t i = 0;
#if defined(__SSE2__)
    __m128d ww = _mm_set1_pd(w);
    for (; i + 2 <= n; i += 2)
        _mm_storeu_pd(sum + i, _mm_add_pd(_mm_loadu_pd(sum + i),
                                          _mm_mul_pd(_mm_loadu_pd(v + i), ww)));
#endif
    for (; i < n; i++)
        sum[i] += v[i] * w;
}

/*
 * The vector of a token sequence: every unigram and bigram counted, then
 * sign * (1 + ln count) per distinct feature, L2-normalised.
 */
static int embed_tokens(descriptor_embedder *e, const token *toks, size_t n, double *out)
{
    size_t dims = e->dims;
    memset(out, 0, dims * sizeof *out);
    if (n == 0)
        return 0;
    /* Features: u0, b01, u1, b12, u2, ...: 2n - 1 of them. */
    size_t cap = TABLE_MIN;
    while (cap < 4 * (2 * n))
        cap *= 2;
    if (table_reserve(e, cap) != 0)
        return DESCRIPTOR_ENOMEM;
    /* The chunk uses the first cap slots of the (all zero) table: a small chunk touches
     * few cache lines even after a large one grew the table. */
    size_t mask = cap - 1;
    feature_slot *table = e->table;
    uint32_t *order = e->order;
    size_t nused = 0;
    for (size_t j = 0; j < n; j++) {
        uint64_t h = toks[j].hash;
        nused = count_feature(table, order, nused, mask, cap, h);
        if (j + 1 < n) {
            uint64_t key = mix64(h * 0x9E3779B97F4A7C15ull + toks[j + 1].hash + SEED_BIGRAM);
            nused = count_feature(table, order, nused, mask, cap, key);
        }
    }
    for (size_t i = 0; i < nused; i++) {
        feature_slot *f = &table[order[i]];
        uint64_t key = f->key, c = f->count;
        double w = c < 64 ? e->log_table[c] : 1.0 + log((double)c);
        size_t bucket = (size_t)(((key >> 32) * (uint64_t)dims) >> 32);
        uint64_t bits;                   /* the sign of bit 0, without a branch */
        memcpy(&bits, &w, sizeof bits);
        bits ^= (key & 1) << 63;
        memcpy(&w, &bits, sizeof w);
        out[bucket] += w;
        f->key = 0;                      /* clear as we go: empty for the next chunk */
        f->count = 0;
    }
    double norm = 0.0;
    for (size_t i = 0; i < dims; i++)
        norm += out[i] * out[i];
    if (norm > 0.0)
        divide_all(out, dims, sqrt(norm));
    return 0;
}

descriptor_embedder *descriptor_embedder_new(size_t dimensions)
{
    if (dimensions < 1 || dimensions > DESCRIPTOR_MAX_DIMENSIONS)
        return NULL;
    descriptor_embedder *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->dims = dimensions;
    if (table_reserve(e, TABLE_MIN) != 0) {
        descriptor_embedder_free(e);
        return NULL;
    }
    for (int c = 1; c < 64; c++)
        e->log_table[c] = 1.0 + log((double)c);
    return e;
}

void descriptor_embedder_free(descriptor_embedder *e)
{
    if (!e)
        return;
    free(e->table);
    free(e->order);
    free(e->tok.toks);
    free(e);
}

size_t descriptor_embedder_dimensions(const descriptor_embedder *e)
{
    return e->dims;
}

/* Tokenizes text into e->tok (at most max tokens). */
static int tokenize_into(descriptor_embedder *e, const char *text, size_t len, size_t max)
{
    e->tok.count = 0;
    e->tok.failed = 0;
    tokenize(&e->tok, text, len, max);
    return e->tok.failed ? DESCRIPTOR_ENOMEM : 0;
}

int descriptor_embed_chunk(descriptor_embedder *e, const char *text, size_t len, double *out)
{
    if (tokenize_into(e, text, len, DESCRIPTOR_MAX_CHUNK_TOKENS) != 0)
        return DESCRIPTOR_ENOMEM;
    return embed_tokens(e, e->tok.toks, e->tok.count, out);
}

/* ---- pooling (§3.4) ---------------------------------------------------------------------- */

void descriptor_weighted_mean(const double *vectors, const double *weights, size_t n,
                              size_t dims, double *out)
{
    memset(out, 0, dims * sizeof *out);
    double wsum = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!(weights[i] > 0))
            continue;
        for (size_t d = 0; d < dims; d++)
            out[d] += vectors[i * dims + d] * weights[i];
        wsum += weights[i];
    }
    if (wsum == 0.0) {
        if (n == 0)
            return;
        wsum = (double)n;
        memset(out, 0, dims * sizeof *out);
        for (size_t i = 0; i < n; i++)
            for (size_t d = 0; d < dims; d++)
                out[d] += vectors[i * dims + d];
    }
    for (size_t d = 0; d < dims; d++)
        out[d] /= wsum;
}

double descriptor_file_weight(long long change_count, double chunk_weight_sum,
                              size_t total_lines)
{
    if (change_count > 0)
        return (double)change_count;
    if (chunk_weight_sum > 0)
        return chunk_weight_sum;
    return total_lines ? (double)total_lines : 1.0;
}

/*
 * Chunk vectors pooled per file path: the reference groups chunk embeddings by path, so
 * two inputs with the same path pool as one file (whose weight is the later one's).
 */
typedef struct pool_group {
    uint64_t key;
    char *path;
    size_t path_len;
    long long change_count;
    size_t total_lines;
    double weight_sum;          /* chunk weights */
} pool_group;

typedef struct pooler {
    size_t dims;
    pool_group *groups;
    double *sums;               /* groups x dims, chunk-weighted sums */
    size_t count, cap;
} pooler;

static uint64_t path_key(const char *p, size_t n)
{
    uint64_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * FNV_PRIME;
    return h;
}

static void pooler_reset(pooler *p)
{
    for (size_t i = 0; i < p->count; i++)
        free(p->groups[i].path);
    p->count = 0;
}

static void pooler_free(pooler *p)
{
    pooler_reset(p);
    free(p->groups);
    free(p->sums);
    memset(p, 0, sizeof *p);
}

/* The group of path (created when new); NULL on ENOMEM. */
static pool_group *pooler_group(pooler *p, const char *path, size_t len, long long change,
                                size_t total_lines, size_t *index)
{
    uint64_t key = path_key(path, len);
    for (size_t i = 0; i < p->count; i++) {
        pool_group *g = &p->groups[i];
        if (g->key == key && g->path_len == len && memcmp(g->path, path, len) == 0) {
            g->change_count = change;
            g->total_lines = total_lines;
            *index = i;
            return g;
        }
    }
    if (p->count == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 8;
        pool_group *ng = realloc(p->groups, nc * sizeof *ng);
        if (!ng)
            return NULL;
        p->groups = ng;
        double *ns = realloc(p->sums, nc * p->dims * sizeof *ns);
        if (!ns)
            return NULL;
        p->sums = ns;
        p->cap = nc;
    }
    pool_group *g = &p->groups[p->count];
    g->path = malloc(len + 1);
    if (!g->path)
        return NULL;
    memcpy(g->path, path, len);
    g->path[len] = '\0';
    g->path_len = len;
    g->key = key;
    g->change_count = change;
    g->total_lines = total_lines;
    g->weight_sum = 0.0;
    memset(p->sums + p->count * p->dims, 0, p->dims * sizeof(double));
    *index = p->count++;
    return g;
}

static void pooler_add(pooler *p, size_t index, const double *v, double w)
{
    add_scaled(p->sums + index * p->dims, v, w, p->dims);
    p->groups[index].weight_sum += w;
}

/* Commit vector from the groups that received chunks. Returns 0 or ENOMEM. */
static int pooler_finish(pooler *p, double *out)
{
    size_t dims = p->dims, used = 0;
    double *weights = malloc((p->count ? p->count : 1) * sizeof *weights);
    if (!weights)
        return DESCRIPTOR_ENOMEM;
    for (size_t i = 0; i < p->count; i++) {
        pool_group *g = &p->groups[i];
        if (!(g->weight_sum > 0))
            continue;
        double *dst = p->sums + used * dims, *src = p->sums + i * dims;
        for (size_t d = 0; d < dims; d++)
            dst[d] = src[d] / g->weight_sum;
        weights[used++] = descriptor_file_weight(g->change_count, g->weight_sum, g->total_lines);
    }
    descriptor_weighted_mean(p->sums, weights, used, dims, out);
    free(weights);
    return 0;
}

int descriptor_embed_files(descriptor_embedder *e, const descriptor_options *o,
                           const descriptor_chunked_file *files, size_t n, double *out,
                           size_t *chunks_used)
{
    pooler p = { .dims = e->dims };
    size_t cap = o->max_chunks_per_commit > 0 ? (size_t)o->max_chunks_per_commit : (size_t)-1;
    size_t used = 0;
    int rc = DESCRIPTOR_ENOMEM;
    double *v = malloc(e->dims * sizeof *v);
    if (!v)
        goto out;
    for (size_t f = 0; f < n && used < cap; f++) {
        const descriptor_chunked_file *cf = &files[f];
        if (cf->chunk_count == 0)
            continue;
        size_t index;
        if (!pooler_group(&p, cf->path.ptr, cf->path.len, cf->change_count, cf->total_lines,
                          &index))
            goto out;
        for (size_t c = 0; c < cf->chunk_count && used < cap; c++) {
            if (descriptor_embed_chunk(e, cf->chunks[c].ptr, cf->chunks[c].len, v) != 0)
                goto out;
            size_t lc = cf->line_counts[c];
            pooler_add(&p, index, v, (double)(lc > 1 ? lc : 1));
            used++;
        }
    }
    *chunks_used = used;
    if (used == 0) {
        rc = DESCRIPTOR_NO_CHUNKS;
        goto out;
    }
    rc = pooler_finish(&p, out);
out:
    free(v);
    pooler_free(&p);
    return rc;
}

/* ---- the pipeline after loading ------------------------------------------------------------- */

struct descriptor_workspace {
    descriptor_embedder *embedder;
    descriptor_buf clean;
    descriptor_chunks chunks;
    pooler pool;
    double *vector;
    size_t kept, used;          /* files kept and chunks embedded since begin */
};

descriptor_workspace *descriptor_workspace_new(size_t dimensions)
{
    descriptor_workspace *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->embedder = descriptor_embedder_new(dimensions);
    w->vector = malloc(dimensions * sizeof *w->vector);
    w->pool.dims = dimensions;
    if (!w->embedder || !w->vector) {
        descriptor_workspace_free(w);
        return NULL;
    }
    return w;
}

void descriptor_workspace_free(descriptor_workspace *w)
{
    if (!w)
        return;
    descriptor_embedder_free(w->embedder);
    descriptor_buf_free(&w->clean);
    descriptor_chunks_free(&w->chunks);
    pooler_free(&w->pool);
    free(w->vector);
    free(w);
}

void descriptor_workspace_begin(descriptor_workspace *w)
{
    pooler_reset(&w->pool);
    w->kept = 0;
    w->used = 0;
}

int descriptor_workspace_add(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *s, descriptor_file_result *r)
{
    size_t cap = o->max_chunks_per_commit > 0 ? (size_t)o->max_chunks_per_commit : (size_t)-1;
    memset(r, 0, sizeof *r);
    int rc = descriptor_clean(o, s->content.ptr, s->content.len, &w->clean);
    if (rc == DESCRIPTOR_ENOMEM)
        return rc;
    if (rc != 0) {
        r->status = rc;
        return 0;
    }
    w->kept++;
    if (descriptor_chunk_ranges(o, w->clean.data, w->clean.len, &w->chunks) != 0)
        return DESCRIPTOR_ENOMEM;
    r->total_lines = w->chunks.total_lines;
    r->chunk_count = w->chunks.count;
    if (w->chunks.count == 0 || w->used >= cap)
        return 0;
    size_t index;
    if (!pooler_group(&w->pool, s->path.ptr, s->path.len, s->change_count,
                      w->chunks.total_lines, &index))
        return DESCRIPTOR_ENOMEM;
    descriptor_embedder *e = w->embedder;
    for (size_t c = 0; c < w->chunks.count && w->used < cap; c++) {
        const descriptor_chunk *ch = &w->chunks.items[c];
        if (descriptor_embed_chunk(e, w->clean.data + ch->offset, ch->len, w->vector) != 0)
            return DESCRIPTOR_ENOMEM;
        pooler_add(&w->pool, index, w->vector,
                   (double)(ch->line_count > 1 ? ch->line_count : 1));
        w->used++;
    }
    return 0;
}

int descriptor_workspace_finish(descriptor_workspace *w, double *out, size_t *kept,
                                size_t *chunks)
{
    *kept = w->kept;
    *chunks = w->used;
    if (w->kept == 0)
        return DESCRIPTOR_SKIP_EMPTY;
    if (w->used == 0)
        return DESCRIPTOR_NO_CHUNKS;
    return pooler_finish(&w->pool, out);
}

int descriptor_embed_sources(descriptor_workspace *w, const descriptor_options *o,
                             const descriptor_source *sources, size_t n,
                             descriptor_file_result *results, double *out, size_t *kept,
                             size_t *chunks)
{
    descriptor_workspace_begin(w);
    for (size_t i = 0; i < n; i++) {
        int rc = descriptor_workspace_add(w, o, &sources[i], &results[i]);
        if (rc != 0)
            return rc;
    }
    return descriptor_workspace_finish(w, out, kept, chunks);
}
