/* test_header.c — include/carseg.h is a self-contained public header: it compiles on its own as
 * strict C99 and as C++, with no internal header behind it. */
#include <stdio.h>
#include <stdlib.h>

#include "check.h"

static int compile(const char *compiler, const char *flags, const char *src_ext) {
    const char *dir = test_tmpdir();
    char src[700], cmd[2000];
    snprintf(src, sizeof src, "%s/use.%s", dir, src_ext);
    FILE *f = fopen(src, "w");
    if (!f) return -1;
    fputs("#include \"carseg.h\"\n"
          "int main(void) {\n"
          "    carseg_options o;\n"
          "    carseg_status st = carseg_options_preset(&o, \"voc\");\n"
          "    return st == CARSEG_OK ? 0 : (int)carseg_status_str(st)[0];\n"
          "}\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s %s -Wall -Wextra -Werror -fsyntax-only -Iinclude '%s' 2>&1", compiler,
             flags, src);
    int rc = system(cmd);
    return rc;
}

TEST(header_compiles_as_c99) {
    if (system("command -v cc >/dev/null 2>&1") != 0) SKIP("no C compiler on PATH");
    CHECK(compile("cc", "-std=c99 -pedantic", "c") == 0);
}

TEST(header_compiles_as_cpp) {
    if (system("command -v c++ >/dev/null 2>&1") != 0) SKIP("no C++ compiler on PATH");
    CHECK(compile("c++", "-std=c++11 -pedantic", "cpp") == 0);
}
