/* image_fixtures.h — shared by test_image.c and test_imgproc.c: runs
 * scripts/gen_image_fixtures.py (Pillow 9.4 / OpenCV 4.6 on /usr/bin/python3) once per section
 * into a temporary directory and hands back its manifest. */
#ifndef CARSEG_TEST_IMAGE_FIXTURES_H
#define CARSEG_TEST_IMAGE_FIXTURES_H

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "util.h"

/* Returns the parsed manifest of `section` (cached; never freed), or NULL with *why set. */
static inline const json *image_fixtures(const char *section, const char **why) {
    static struct { char name[16]; json *j; int tried; } cache[8];
    static char whybuf[256];
    int i = 0;
    for (; i < 8 && cache[i].name[0]; i++)
        if (!strcmp(cache[i].name, section)) break;
    if (i == 8) { *why = "fixture cache full"; return NULL; }
    if (cache[i].tried) {
        *why = whybuf;
        return cache[i].j;
    }
    snprintf(cache[i].name, sizeof cache[i].name, "%s", section);
    cache[i].tried = 1;
    *why = whybuf;
    const char *shared = shared_path("data");
    if (!shared) { snprintf(whybuf, sizeof whybuf, "shared folder missing"); return NULL; }
    if (access("/usr/bin/python3", X_OK) || access("scripts/gen_image_fixtures.py", R_OK)) {
        snprintf(whybuf, sizeof whybuf, "needs /usr/bin/python3 and scripts/gen_image_fixtures.py");
        return NULL;
    }
    char root[600], cmd[2048], man[700];
    snprintf(root, sizeof root, "%s", shared);
    root[strlen(root) - 5] = 0;   /* strip "/data" */
    const char *dir = test_tmpdir();
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -W ignore scripts/gen_image_fixtures.py '%s' '%s' %s >'%s/gen.log' 2>&1",
             dir, root, section, dir);
    if (system(cmd) != 0) {
        snprintf(whybuf, sizeof whybuf, "generator failed (Pillow/OpenCV missing?), see %s/gen.log", dir);
        return NULL;
    }
    snprintf(man, sizeof man, "%s/manifest_%s.json", dir, section);
    cache[i].j = json_parse_file(man);
    if (!cache[i].j) snprintf(whybuf, sizeof whybuf, "%s", carseg_last_error());
    return cache[i].j;
}

/* Loads an .npy of the given dtype; returns NULL (and a failed check) on error. */
static inline void *fx_npy(const char *path, npy_dtype dt, npy_array *a) {
    if (npy_read(path, a) != CARSEG_OK) {
        test_failed_checks++;
        fprintf(stderr, "  cannot read %s: %s\n", path, carseg_last_error());
        return NULL;
    }
    if (a->dtype != dt) {
        test_failed_checks++;
        fprintf(stderr, "  %s: unexpected dtype\n", path);
        npy_free(a);
        return NULL;
    }
    return a->data;
}

#endif
