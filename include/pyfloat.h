/*
 * pyfloat.h - floats written as Python writes them (repr, and so json.dumps): the
 * shortest digits that read back to the same double, fixed notation when the decimal
 * exponent is in (-4, 16] ("6.0", "0.1", "1234.5"), scientific otherwise ("1e-06",
 * "1.5e+16"). Non-finite values give "inf", "-inf" and "nan". Pure C.
 */
#ifndef LORELEY_PYFLOAT_H
#define LORELEY_PYFLOAT_H

#include <stddef.h>

/* Writes the text into out (size >= 32 is always enough). */
void pyfloat_repr(double x, char *out, size_t size);

/* A Lua number as JSON (and SQL) text: integral values below 1e16 as integers ("3"),
 * everything else as pyfloat_repr ("0.1", "1e+16", "-0.0"). x must be finite. */
void pyfloat_number_text(double x, char *out, size_t size);

#endif
