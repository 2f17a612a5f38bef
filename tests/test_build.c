/* test_build.c — the built libraries as a user sees them: build/libcarseg.so and build/libcarseg.a
 * export carseg_* only (nm), and a program that defines its own read_file, set_err, json_parse
 * (internal names of the library) links against either one and gets the library's behaviour.
 * `make test` passes the build folder, compiler and link flags (CARSEG_BUILD_DIR, CARSEG_CC,
 * CARSEG_LDLIBS, CARSEG_LDFLAGS); without them these tests SKIP. */
#define _POSIX_C_SOURCE 200809L
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char *build_dir(void) {
    const char *b = getenv("CARSEG_BUILD_DIR");
    return b && *b ? b : NULL;
}

/* Runs `nm` on a library; counts the defined global symbols and the ones not named carseg_*
 * (printing the first few). Returns -1 when nm cannot run. */
static int nm_check(const char *cmd, int *n_ok, int *n_bad) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[1024];
    *n_ok = *n_bad = 0;
    while (fgets(line, sizeof line, p)) {
        /* "ADDR T name" (defined) — archive member headers "x.o:" and blank lines skipped */
        char addr[64], type[8], name[900];
        if (sscanf(line, "%63s %7s %899s", addr, type, name) != 3) continue;
        if (strchr("Uvw", type[0])) continue;       /* undefined / weak undefined */
        if (strncmp(name, "carseg_", 7) == 0) (*n_ok)++;
        else {
            if (*n_bad < 20) fprintf(stderr, "  exported non-carseg_ symbol: %s %s\n", type, name);
            (*n_bad)++;
        }
    }
    return pclose(p) == 0 ? 0 : -1;
}

TEST(build_shared_exports_only_carseg) {
    const char *b = build_dir();
    if (!b) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    char cmd[1200];
    int ok = 0, bad = 0;
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s/libcarseg.so'", b);
    REQUIRE(nm_check(cmd, &ok, &bad) == 0);
    CHECK_MSG(bad == 0, "libcarseg.so exports %d symbols without the carseg_ prefix", bad);
    CHECK_MSG(ok > 40, "libcarseg.so exports only %d carseg_ symbols", ok);
    /* the soname */
    snprintf(cmd, sizeof cmd, "objdump -p '%s/libcarseg.so' | grep -q 'SONAME *libcarseg\\.so\\.[0-9]'", b);
    CHECK_MSG(system(cmd) == 0, "libcarseg.so has no libcarseg.so.N soname");
}

TEST(build_static_globals_only_carseg) {
    const char *b = build_dir();
    if (!b) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    char cmd[1200];
    int ok = 0, bad = 0;
    snprintf(cmd, sizeof cmd, "nm -g --defined-only '%s/libcarseg.a'", b);
    REQUIRE(nm_check(cmd, &ok, &bad) == 0);
    CHECK_MSG(bad == 0, "libcarseg.a defines %d global symbols without the carseg_ prefix", bad);
    CHECK_MSG(ok > 40, "libcarseg.a defines only %d carseg_ symbols", ok);
}

/* A user program with functions named like the library's internals. carseg_image_load of a
 * missing file goes through the library's read_file and set_err: the error must be the library's
 * message, and the user's functions must not have been called. */
static const char *user_prog =
    "#include <stdio.h>\n#include <string.h>\n#include <stdint.h>\n#include \"carseg.h\"\n"
    "static int user_calls;\n"
    "int read_file(const char *p, void *a, void *b) { (void)p; (void)a; (void)b; user_calls++; return 0; }\n"
    "int set_err(int st, const char *fmt, ...) { (void)fmt; user_calls++; return st; }\n"
    "void *json_parse(const char *s, size_t n) { (void)s; (void)n; user_calls++; return 0; }\n"
    "int now_ms, cs_log, image_free;\n"   /* data symbols with internal names */
    "int main(int argc, char **argv) {\n"
    "    uint8_t *rgb = 0; int w = 0, h = 0;\n"
    "    carseg_status st = carseg_image_load(argv[1], &rgb, &w, &h);\n"
    "    const char *e = carseg_last_error();\n"
    "    if (st != CARSEG_EIO || !strstr(e, argv[1]) || user_calls) {\n"
    "        fprintf(stderr, \"status %d, error '%s', user functions called %d times\\n\", st, e, user_calls);\n"
    "        return 1;\n"
    "    }\n"
    "    printf(\"%s\\n\", carseg_status_str(CARSEG_EFORMAT));\n"
    "    return argc == 2 ? 0 : 1;\n"
    "}\n";

static void link_and_run(const char *how) {
    const char *b = build_dir();
    if (!b) SKIP("CARSEG_BUILD_DIR not set (run through make test)");
    const char *cc = getenv("CARSEG_CC"), *libs = getenv("CARSEG_LDLIBS"), *ldf = getenv("CARSEG_LDFLAGS");
    if (!cc || !*cc) cc = "cc";
    const char *dir = test_tmpdir();
    char src[600], exe[600], cmd[4000];
    snprintf(src, sizeof src, "%s/user.c", dir);
    snprintf(exe, sizeof exe, "%s/user", dir);
    REQUIRE(write_file_atomic(src, user_prog, strlen(user_prog)) == CARSEG_OK);
    if (!strcmp(how, "static"))
        snprintf(cmd, sizeof cmd, "%s -std=c11 -Iinclude %s -o '%s' '%s' '%s/libcarseg.a' %s", cc, ldf ? ldf : "",
                 exe, src, b, libs ? libs : "");
    else
        snprintf(cmd, sizeof cmd, "%s -std=c11 -Iinclude %s -o '%s' '%s' -L'%s' -Wl,-rpath,'%s' -lcarseg", cc,
                 ldf ? ldf : "", exe, src, b, b);
    CHECK_MSG(system(cmd) == 0, "%s link failed: %s", how, cmd);
    snprintf(cmd, sizeof cmd, "'%s' '%s/no such image.png' > '%s/out.txt'", exe, dir, dir);
    CHECK_MSG(system(cmd) == 0, "%s: the program did not see the library's own read_file/set_err", how);
    char out[600];
    snprintf(out, sizeof out, "%s/out.txt", dir);
    uint8_t *d = NULL;
    size_t n = 0;
    CHECK_OK(read_file(out, &d, &n));
    CHECK(d && n > 0 && strstr((char *)d, "malformed"));
    free(d);
}

TEST(build_user_symbols_link_static) { link_and_run("static"); }
TEST(build_user_symbols_link_shared) { link_and_run("shared"); }

/* `make install`'s script into DESTDIR/PREFIX, then a program built with
 * `pkg-config --cflags --libs carseg` (shared) and with the static library plus
 * `pkg-config --static --libs` against the installed copy: it tokenizes a text with the fixture
 * vocabulary (or, without ../shared, only checks the status names). */
static const char *installed_prog =
    "#include <stdio.h>\n#include <string.h>\n#include <stdint.h>\n#include <carseg.h>\n"
    "int main(int argc, char **argv) {\n"
    "    if (strcmp(carseg_status_str(CARSEG_EIO), \"i/o error\")) return 3;\n"
    "    if (argc < 2) { puts(\"ok\"); return 0; }\n"
    "    carseg_tokenizer *t;\n"
    "    if (carseg_tokenizer_open(argv[1], &t) != CARSEG_OK) { fprintf(stderr, \"%s\\n\", carseg_last_error()); return 1; }\n"
    "    int32_t ids[77];\n"
    "    int n = carseg_tokenize(t, \"a photo of a cat\", ids, 77);\n"
    "    for (int i = 0; i < n; i++) printf(\"%d%c\", ids[i], i + 1 < n ? ' ' : '\\n');\n"
    "    carseg_tokenizer_close(t);\n"
    "    return 0;\n"
    "}\n";

TEST(build_install_pkg_config) {
    const char *b = build_dir(), *ienv = getenv("CARSEG_INSTALL_ENV");
    if (!b || !ienv) SKIP("CARSEG_BUILD_DIR / CARSEG_INSTALL_ENV not set (run through make test)");
    if (system("pkg-config --version > /dev/null 2>&1") != 0) SKIP("pkg-config is not installed");
    const char *cc = getenv("CARSEG_CC"), *ldf = getenv("CARSEG_LDFLAGS");
    if (!cc || !*cc) cc = "cc";
    if (!ldf) ldf = "";
    const char *dir = test_tmpdir();
    char dest[600], prefix[] = "/opt/carseg-test", cmd[6000];
    snprintf(dest, sizeof dest, "%s/stage", dir);
    snprintf(cmd, sizeof cmd, "%s sh scripts/install.sh '%s' %s '%s' > '%s/install.log' 2>&1", ienv, b, prefix,
             dest, dir);
    REQUIRE(system(cmd) == 0);
    static const char *files[] = {"include/carseg.h", "lib/libcarseg.a", "lib/libcarseg.so", "lib/libcarseg.so.1",
                                  "lib/pkgconfig/carseg.pc", "bin/carseg", "share/man/man1/carseg.1"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[800];
        snprintf(p, sizeof p, "%s%s/%s", dest, prefix, files[i]);
        CHECK_MSG(file_exists(p), "%s not installed", p);
    }
    /* the man page is valid roff with the sections a man page needs */
    snprintf(cmd, sizeof cmd, "for s in NAME SYNOPSIS DESCRIPTION OPTIONS ENVIRONMENT FILES 'EXIT STATUS'; do "
             "grep -q \"^.SH $s\" '%s%s/share/man/man1/carseg.1' || exit 1; done", dest, prefix);
    CHECK_MSG(system(cmd) == 0, "carseg.1 lacks a section");
    snprintf(cmd, sizeof cmd, "'%s%s/bin/carseg' --version | grep -q '^carseg '", dest, prefix);
    CHECK_MSG(system(cmd) == 0, "the installed CLI does not run");

    char src[700];
    snprintf(src, sizeof src, "%s/prog.c", dir);
    REQUIRE(write_file_atomic(src, installed_prog, strlen(installed_prog)) == CARSEG_OK);
    const char *vocab = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (vocab && !file_exists(vocab)) vocab = NULL;
    char pc[1600];
    snprintf(pc, sizeof pc, "PKG_CONFIG_PATH='%s%s/lib/pkgconfig' PKG_CONFIG_SYSROOT_DIR='%s'", dest, prefix, dest);
    for (int stat = 0; stat < 2; stat++) {
        if (!stat)
            snprintf(cmd, sizeof cmd, "%s -std=c11 %s -o '%s/prog0' '%s' $(%s pkg-config --cflags --libs carseg) > '%s/cc0.log' 2>&1",
                     cc, ldf, dir, src, pc, dir);
        else
            snprintf(cmd, sizeof cmd, "%s -std=c11 %s -o '%s/prog1' '%s' $(%s pkg-config --cflags carseg) '%s%s/lib/libcarseg.a' "
                     "$(%s pkg-config --static --libs-only-l --libs-only-other carseg | sed 's/-lcarseg//') > '%s/cc1.log' 2>&1",
                     cc, ldf, dir, src, pc, dest, prefix, pc, dir);
        CHECK_MSG(system(cmd) == 0, "building against the installed copy failed: %s", cmd);
        snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s%s/lib' '%s/prog%d' %s%s%s > '%s/out%d.txt'", dest, prefix, dir,
                 stat, vocab ? "'" : "", vocab ? vocab : "", vocab ? "'" : "", dir, stat);
        CHECK_MSG(system(cmd) == 0, "the program built against the installed copy failed (%s)", stat ? "static" : "shared");
        char out[700];
        snprintf(out, sizeof out, "%s/out%d.txt", dir, stat);
        uint8_t *d = NULL;
        size_t n = 0;
        CHECK_OK(read_file(out, &d, &n));
        /* clip.tokenize("a photo of a cat") */
        const char *want = vocab ? "49406 320 1125 539 320 2368 49407\n" : "ok\n";
        CHECK_MSG(d && !strcmp((char *)d, want), "%s program printed '%s', want '%s'", stat ? "static" : "shared",
                  d ? (char *)d : "", want);
        free(d);
    }
    /* the shared program really uses the installed libcarseg.so.1 */
    snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s%s/lib' ldd '%s/prog0' | grep -q '%s%s/lib/libcarseg.so.1'", dest,
             prefix, dir, dest, prefix);
    CHECK_MSG(system(cmd) == 0, "prog0 does not load the installed libcarseg.so.1");
}

/* The layer rule holds (scripts/check_layers.py on the sources and the built objects, and the
 * benchmarks on carseg.h alone), and the checker fails on a tree where util includes a car header
 * and sam includes car, and on a benchmark that includes src/ headers. */
TEST(build_layers) {
    const char *b = build_dir();
    if (system("/usr/bin/python3 -c 1 2>/dev/null") != 0) SKIP("/usr/bin/python3 missing");
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/check_layers.py %s%s%s >&2", b ? "'" : "", b ? b : "",
             b ? "'" : "");
    CHECK_MSG(system(cmd) == 0, "the layer rule is broken (above)");
    const char *dir = test_tmpdir();
    snprintf(cmd, sizeof cmd, "cp -r src '%s/src' && printf '#include \"car.h\"\\n' >> '%s/src/util/util.c' && "
             "mkdir -p '%s/src/sam' && printf '#include \"cam.h\"\\n' > '%s/src/sam/x.c' && "
             "/usr/bin/python3 scripts/check_layers.py --src '%s/src' > '%s/out.txt' 2>&1; test $? = 1 && "
             "grep -q 'util/util.c:.*car.h of the higher layer car' '%s/out.txt' && "
             "grep -q 'sam/x.c:1: includes cam.h of car' '%s/out.txt'",
             dir, dir, dir, dir, dir, dir, dir, dir);
    CHECK_MSG(system(cmd) == 0, "check_layers.py did not catch an upward include / sam including car");
    /* the benchmarks: a src/ header, by bare name or by path, is refused */
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/bench' && cp bench/*.c bench/*.h '%s/bench/' && "
             "printf '#include \"nn.h\"\n#include \"../src/car/car.h\"\n' >> '%s/bench/bench_api.c' && "
             "/usr/bin/python3 scripts/check_layers.py --bench '%s/bench' > '%s/outb.txt' 2>&1; test $? = 1 && "
             "grep -q 'bench/bench_api.c:.*includes nn.h of src/clip/' '%s/outb.txt' && "
             "grep -q 'bench/bench_api.c:.*includes car.h of src/car/' '%s/outb.txt' && "
             "test $(grep -c '^bench/' '%s/outb.txt') = 2",
             dir, dir, dir, dir, dir, dir, dir, dir);
    CHECK_MSG(system(cmd) == 0, "check_layers.py did not catch a benchmark including internal headers");
}
