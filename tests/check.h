/* check.h — the test harness: tests register themselves, run_tests runs them in file order.
 *
 *   TEST(tokenizer_basic) { CHECK(x == 1); CHECK_NEAR(a, b, 1e-6); }
 *
 * Each test file just defines TESTs; a constructor registers them (no central list to edit).
 * `build/run_tests [SUBSTRING...]` runs the tests whose name contains one of the substrings.
 * The last line is "N passed, N failed, N skipped". A test that needs ../shared and cannot find
 * it calls SKIP("why") — the summary says so; it never passes silently.
 */
#ifndef CARSEG_CHECK_H
#define CARSEG_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);

extern int test_failed_checks;   /* failures inside the current test */
extern int test_skipped;         /* set by SKIP */

#define TEST(name)                                                                    \
    static void test_##name(void);                                                    \
    __attribute__((constructor)) static void test_reg_##name(void) {                  \
        test_register(#name, __FILE__, test_##name);                                  \
    }                                                                                 \
    static void test_##name(void)

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            test_failed_checks++;                                                     \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        if (!(cond)) {                                                                \
            test_failed_checks++;                                                     \
            fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                         \
    do {                                                                              \
        double a_ = (a), b_ = (b);                                                    \
        if (!(fabs(a_ - b_) <= (tol))) {                                              \
            test_failed_checks++;                                                     \
            fprintf(stderr, "  %s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g (tol %g)\n", \
                    __FILE__, __LINE__, #a, a_, #b, b_, (double)(tol));               \
        }                                                                             \
    } while (0)

/* Status check for library calls: prints carseg_last_error() on failure. */
#define CHECK_OK(expr)                                                                \
    do {                                                                              \
        carseg_status st_ = (expr);                                                   \
        if (st_ != CARSEG_OK) {                                                       \
            test_failed_checks++;                                                     \
            fprintf(stderr, "  %s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,      \
                    carseg_last_error());                                             \
        }                                                                             \
    } while (0)

/* Stop the current test (after a failed precondition). */
#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            test_failed_checks++;                                                     \
            fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond); \
            return;                                                                   \
        }                                                                             \
    } while (0)

#define SKIP(...)                                                                     \
    do {                                                                              \
        test_skipped = 1;                                                             \
        fprintf(stderr, "  skipped: ");                                               \
        fprintf(stderr, __VA_ARGS__);                                                 \
        fputc('\n', stderr);                                                          \
        return;                                                                       \
    } while (0)

/* Compares two float arrays: max |a-b| <= rtol * max|ref| (+atol). Prints the worst index. */
int check_close_f32(const char *what, const float *got, const float *ref, size_t n, double rtol,
                    double atol, const char *file, int line);
#define CHECK_CLOSE(what, got, ref, n, rtol, atol) \
    check_close_f32(what, got, ref, n, rtol, atol, __FILE__, __LINE__)

/* max |got - ref| over n values (NaN counts as infinite), with max |ref| and the worst index when
 * asked (either may be NULL). */
double test_max_abs_diff(const float *got, const float *ref, size_t n, double *max_ref, size_t *at);

/* Subprocesses, through the shell. test_run: the command's exit status (-1 when it did not exit
 * normally). test_capture: its stdout as a malloc'd NUL-terminated string and its exit status in
 * *status; with status NULL, NULL unless it exited 0. test_shq appends ' ' and s in single quotes
 * (shell-safe) to dst (capacity cap). */
int test_run(const char *cmd);
char *test_capture(const char *cmd, int *status);
void test_shq(char *dst, size_t cap, const char *s);

/* Path of a file under the shared folder (../shared, or $CARSEG_SHARED). Returns a static
 * buffer (rotating among 8), or NULL when the shared folder is missing (the test should SKIP). */
const char *shared_path(const char *rel);
/* A fresh empty temporary directory for the current test (removed at exit unless KEEP_TMP=1). */
const char *test_tmpdir(void);

/* The opt-in full-size CLIP fixtures (CARSEG_HEAVY=B16,L14): heavy_skip_reason() is NULL when
 * they can run (CARSEG_HEAVY set, /usr/bin/python3 with torch), else why not (the test SKIPs with
 * it); heavy_fixture(k, dir, n) for k = 0 (ViT-B/16), 1 (ViT-L/14): 0 when CARSEG_HEAVY does not
 * name it, 1 when scripts/gen_clip_fixtures.py wrote its random-weight fixtures into dir (a fresh
 * temp dir), -1 when that failed. */
const char *heavy_skip_reason(void);
int heavy_fixture(int k, char *dir, size_t n);

/* Uniform random in [-1, 1) from a simple deterministic generator. */
float test_randf(unsigned *state);

/* The thread counts of the thread-count invariance tests (docs/threads.md): above the core count
 * they oversubscribe a small machine, and must still give the same bits. */
#define TEST_THREAD_COUNTS {1, 2, 3, 4, 7, 16, 64}

#endif
