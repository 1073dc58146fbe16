/*
 * pytext.h - the few pieces of Python's str semantics the descriptor pipeline must
 * reproduce exactly (contract §3.2, §3.3): Unicode whitespace (strip/rstrip/lstrip),
 * the line breaks of str.splitlines(), str.lower(), and UTF-8 decoding with
 * errors="ignore".
 *
 * Everything works on byte strings that should be UTF-8. Decoding is lenient: a byte
 * that does not start a valid sequence decodes as PYTEXT_INVALID and is consumed alone,
 * so no input can make a caller loop or read out of bounds. Invalid bytes are neither
 * whitespace nor line breaks.
 */
#ifndef LORELEY_PYTEXT_H
#define LORELEY_PYTEXT_H

#include <stddef.h>
#include <stdint.h>

#define PYTEXT_INVALID 0xFFFFFFFFu

/* Decodes the code point at s[0..len) (len >= 1). Stores it in *cp (PYTEXT_INVALID for
 * an invalid or truncated sequence) and returns the bytes consumed (1..4). */
size_t pytext_decode(const unsigned char *s, size_t len, uint32_t *cp);

/* Decodes the code point that ends at s[len-1] (len >= 1), for backward scans. Returns
 * the bytes it occupies; a byte that is not the end of a valid sequence is 1 byte of
 * PYTEXT_INVALID. Agrees with pytext_decode on valid UTF-8. */
size_t pytext_decode_last(const unsigned char *s, size_t len, uint32_t *cp);

/* Python's str.isspace() as used by strip(): the 29 code points listed in the golden
 * file's python_text_semantics (U+0009-U+000D, U+001C-U+0020, U+0085, U+00A0, ...). */
int pytext_is_space(uint32_t cp);

/* A line break of str.splitlines(): \n \v \f \r \x1c \x1d \x1e \x85 U+2028 U+2029
 * (\r\n counts as one break; see pytext_next_line). */
int pytext_is_linebreak(uint32_t cp);

/* str.lower() of one code point. Returns the first code point of the lower-case form
 * and stores the second in *second (0 when there is none; only U+0130 has one). */
uint32_t pytext_lower(uint32_t cp, uint32_t *second);

/* Bytes of leading / trailing whitespace of s[0..len). */
size_t pytext_lstrip_len(const char *s, size_t len);
size_t pytext_rstrip_len(const char *s, size_t len);

/* 1 when s[0..len) is empty or only whitespace (Python: not s.strip()). */
int pytext_is_blank(const char *s, size_t len);

/*
 * One step of str.splitlines(): given the text s[0..len) and a position pos < len,
 * stores the line's byte length (without its break) in *line_len and returns the
 * position of the next line (after the break, or len at the end).
 */
size_t pytext_next_line(const char *s, size_t len, size_t pos, size_t *line_len);

/*
 * bytes.decode("utf-8", errors="ignore") re-encoded: copies s[0..len) to out (which
 * must hold len bytes) dropping every byte that is not part of a valid UTF-8 sequence
 * (overlongs, surrogates and code points above U+10FFFF are invalid, as in Python).
 * Returns the output length.
 */
size_t pytext_drop_invalid_utf8(const char *s, size_t len, char *out);

/* 1 when s[0..len) is valid UTF-8 (then pytext_drop_invalid_utf8 would copy it). */
int pytext_is_valid_utf8(const char *s, size_t len);

/*
 * The lines of str.splitlines() of s[0..len), all at once: appends a (start, length)
 * pair per line to *pairs (2 * *count entries; *cap entries allocated, grown with
 * realloc). Returns 0, or -1 when memory ran out. Same lines as pytext_next_line.
 */
int pytext_split_lines(const char *s, size_t len, size_t **pairs, size_t *cap, size_t *count);

/*
 * Which implementation the scanning kernels of the descriptor pipeline use (the
 * tokenizer, the line splitter, the cleanup scan); tests compare them. AUTO: 64-byte
 * blocks classified with SSE2 where the processor has it (every x86-64), else in plain
 * C; PORTABLE: the same blocks classified in plain C; REFERENCE: the byte-at-a-time
 * code. All give the same results. Set with descriptor_set_kernels (descriptor.h).
 */
enum { PYTEXT_KERNELS_AUTO = 0, PYTEXT_KERNELS_PORTABLE, PYTEXT_KERNELS_REFERENCE };
extern int pytext_kernels;

/* The non-ASCII lower-case mapping, as runs (generated: src/pytext_lower.c). */
typedef struct pytext_lower_run {
    uint32_t first, last;
    int32_t step, delta;
} pytext_lower_run;
extern const pytext_lower_run pytext_lower_runs[];
extern const size_t pytext_lower_run_count;

#endif
