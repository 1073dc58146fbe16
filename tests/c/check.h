/*
 * check.h - a minimal harness for the pure-C unit tests in tests/c. Each test program
 * runs its cases, prints a line per failed check, and exits 1 if any failed.
 */
#ifndef LORELEY_CHECK_H
#define LORELEY_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        check_count++;                                                                \
        if (!(cond)) {                                                                \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        check_count++;                                                                \
        if (!(cond)) {                                                                \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                            \
    CHECK_MSG((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a),       \
              (long long)(b))

#define CHECK_STR(a, b) CHECK_MSG(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))

#define CHECK_NEAR(a, b, tol)                                                         \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.17g != %.17g (tol %g)",    \
              (double)(a), (double)(b), (double)(tol))

#define CHECK_DONE()                                                                  \
    (fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures),          \
     check_failures ? 1 : 0)

#endif
