/* main.c — runs every registered test (optionally filtered by name substrings) and prints the
 * summary line "N passed, N failed, N skipped". Exit status 0 only when nothing failed. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

typedef struct { const char *name, *file; test_fn fn; } test_entry;
static test_entry *g_tests;
static int g_n, g_cap;
int test_failed_checks;
int test_skipped;

void test_register(const char *name, const char *file, test_fn fn) {
    if (g_n == g_cap) {
        g_cap = g_cap ? g_cap * 2 : 64;
        g_tests = realloc(g_tests, (size_t)g_cap * sizeof *g_tests);
        if (!g_tests) abort();
    }
    g_tests[g_n++] = (test_entry){name, file, fn};
}

double test_max_abs_diff(const float *got, const float *ref, size_t n, double *max_ref, size_t *at) {
    double maxref = 0, worst = n ? -1 : 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d != d) d = INFINITY;   /* NaN: the worst */
        if (d > worst) worst = d, wi = i;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    if (max_ref) *max_ref = maxref;
    if (at) *at = wi;
    return worst;
}

int check_close_f32(const char *what, const float *got, const float *ref, size_t n, double rtol,
                    double atol, const char *file, int line) {
    double maxref;
    size_t wi;
    double worst = test_max_abs_diff(got, ref, n, &maxref, &wi);
    double tol = rtol * maxref + atol;
    if (n && worst > tol) {
        test_failed_checks++;
        fprintf(stderr, "  %s:%d: %s: max |diff| %.3g at [%zu] (got %.9g, want %.9g) > tol %.3g (max|ref| %.3g)\n",
                file, line, what, worst, wi, got[wi], ref[wi], tol, maxref);
        return 0;
    }
    return 1;
}

int test_run(const char *cmd) {
    int r = system(cmd);
    return r != -1 && WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

char *test_capture(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    if (!p) {
        if (status) *status = -1;
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - 1 - n, p)) > 0)
        if ((n += k) + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    if (buf) buf[n] = 0;
    int r = pclose(p), st = r != -1 && WIFEXITED(r) ? WEXITSTATUS(r) : -1;
    if (status) *status = st;
    else if (st != 0) free(buf), buf = NULL;
    return buf;
}

void test_shq(char *dst, size_t cap, const char *s) {
    size_t n = strlen(dst);
    if (n + 3 >= cap) return;
    dst[n++] = ' ';
    dst[n++] = '\'';
    for (; *s && n + 6 < cap; s++) {
        if (*s == '\'') memcpy(dst + n, "'\\''", 4), n += 4;
        else dst[n++] = *s;
    }
    dst[n++] = '\'';
    dst[n] = 0;
}

static char g_shared[4096];
const char *shared_path(const char *rel) {
    static char bufs[8][4096];
    static int k;
    if (!g_shared[0]) return NULL;
    char *b = bufs[k++ & 7];
    snprintf(b, 4096, "%s/%s", g_shared, rel);
    return b;
}

static char g_tmproot[256];
static int g_tmpn;
static const char *g_cur_test;
const char *test_tmpdir(void) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s.%d", g_tmproot, g_cur_test, g_tmpn++);
    mkdir_p(buf);
    return buf;
}

const char *heavy_skip_reason(void) {
    const char *h = getenv("CARSEG_HEAVY");
    if (!h || !*h) return "set CARSEG_HEAVY=B16,L14 to check full-size random ViT-B/16 / ViT-L/14";
    if (system("/usr/bin/python3 -c 'import torch' 2>/dev/null") != 0) return "/usr/bin/python3 has no torch";
    return NULL;
}

int heavy_fixture(int k, char *dir, size_t n) {
    static const char *names[2][2] = {{"B16", "ViT-B/16"}, {"L14", "ViT-L/14"}};
    const char *h = getenv("CARSEG_HEAVY");
    if (k < 0 || k > 1 || !h || !strstr(h, names[k][0])) return 0;
    char cmd[2000];
    snprintf(dir, n, "%s/%s", test_tmpdir(), names[k][0]);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/gen_clip_fixtures.py %s --shape %s", dir, names[k][1]);
    return system(cmd) == 0 ? 1 : -1;
}

float test_randf(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xFFFFFF) / (float)(1 << 23) - 1.0f;
}

static void find_shared(void) {
    const char *env = getenv("CARSEG_SHARED");
    const char *cands[] = {env, "../shared", "../../shared", NULL};
    for (int i = 0; i < 3; i++) {
        if (!cands[i]) continue;
        char probe[4096];
        snprintf(probe, sizeof probe, "%s/fixtures/README.md", cands[i]);
        if (file_exists(probe)) {
            if (!realpath(cands[i], g_shared)) snprintf(g_shared, sizeof g_shared, "%s", cands[i]);
            return;
        }
    }
}

int main(int argc, char **argv) {
    find_shared();
    if (g_shared[0]) fprintf(stderr, "shared fixtures: %s\n", g_shared);
    else fprintf(stderr, "WARNING: shared fixtures not found (set CARSEG_SHARED or put them at ../shared): "
                         "tests that need them are SKIPPED\n");
    snprintf(g_tmproot, sizeof g_tmproot, "/tmp/carseg-tests.%ld", (long)getpid());
    mkdir_p(g_tmproot);
    int passed = 0, failed = 0, skipped = 0;
    double t0 = now_ms();
    for (int i = 0; i < g_n; i++) {
        int want = argc < 2;
        for (int a = 1; a < argc; a++) if (strstr(g_tests[i].name, argv[a])) want = 1;
        if (!want) continue;
        test_failed_checks = 0;
        test_skipped = 0;
        g_cur_test = g_tests[i].name;
        double t = now_ms();
        g_tests[i].fn();
        t = now_ms() - t;
        const char *verdict = test_failed_checks ? "FAIL" : test_skipped ? "skip" : "ok";
        fprintf(stderr, "%-4s %-48s %8.1f ms  (%s)\n", verdict, g_tests[i].name, t, g_tests[i].file);
        if (test_failed_checks) failed++;
        else if (test_skipped) skipped++;
        else passed++;
    }
    if (!getenv("KEEP_TMP")) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmproot);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmproot);
    }
    fprintf(stderr, "total %.1f s\n", (now_ms() - t0) / 1e3);
    fflush(stderr);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
