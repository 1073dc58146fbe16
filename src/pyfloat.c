/*
 * pyfloat.c - Python's repr() of a float. See pyfloat.h.
 */
#include "pyfloat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Writes Python's repr() of a float into out (at least 32 bytes): the shortest digits that
 * read back to the same double, in fixed notation when the decimal exponent is in
 * (-4, 16], otherwise in scientific notation with a signed two-digit exponent.
 * Non-finite values give "inf", "-inf" and "nan".
 */
void pyfloat_repr(double x, char *out, size_t size)
{
    if (isnan(x)) {
        snprintf(out, size, "nan");
        return;
    }
    if (isinf(x)) {
        snprintf(out, size, x < 0 ? "-inf" : "inf");
        return;
    }
    if (x == 0) {
        snprintf(out, size, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    /* The shortest round-trip digits. A normal double that some string of <= 15
     * significant digits reads back to prints as that string padded with zeros at 15
     * digits (it is within half an ulp of it, far less than half a unit of the 15th
     * digit), so 15, 16, 17 are the only precisions to try; the trailing zeros are
     * stripped below. */
    char sci[40];
    /* Subnormals carry fewer significant bits, so shorter strings than the padded
     * 15-digit one read back to them (5e-324): search those from one digit. */
    int first = fabs(x) < 2.2250738585072014e-308 ? 1 : 15;
    for (int precision = first; precision <= 17; precision++) {
        snprintf(sci, sizeof sci, "%.*e", precision - 1, x);
        if (strtod(sci, NULL) == x)
            break;
    }
    /* sci is "-d.ddde+XX": collect the digits and the exponent. */
    char digits[24];
    size_t nd = 0;
    const char *p = sci;
    int negative = *p == '-';
    if (negative)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1;   /* value = 0.DIGITS x 10^decpt */
    char *o = out;
    size_t left = size;
#define PUT(c) do { if (left > 1) { *o++ = (c); left--; } } while (0)
    if (negative)
        PUT('-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -decpt; i++)
                PUT('0');
            for (size_t i = 0; i < nd; i++)
                PUT(digits[i]);
        } else {
            for (int i = 0; i < decpt; i++)
                PUT((size_t)i < nd ? digits[i] : '0');
            PUT('.');
            if ((size_t)decpt < nd)
                for (size_t i = (size_t)decpt; i < nd; i++)
                    PUT(digits[i]);
            else
                PUT('0');
        }
        *o = '\0';
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        *o = '\0';
        snprintf(o, left, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    }
#undef PUT
}

void pyfloat_number_text(double x, char *out, size_t size)
{
    if (isfinite(x) && x == floor(x) && fabs(x) < 1e16 && !(x == 0 && signbit(x)))
        snprintf(out, size, "%.0f", x);
    else
        pyfloat_repr(x, out, size);
}
