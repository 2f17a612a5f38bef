/* fixtures.h — the one fixture model loader of the C tests, with three outcomes:
 *   the file is missing            -> NULL; the test SKIPs, naming the path (fixture_skip_reason)
 *   the file is there but fails     -> NULL and a failure counted (FAIL with the library's
 *                                      message): a loader regression is never a "skip"
 *   loaded                          -> the model
 * Paths are relative to the shared folder (../shared or $CARSEG_SHARED). */
#ifndef CARSEG_TEST_FIXTURES_H
#define CARSEG_TEST_FIXTURES_H

#include <stdio.h>

#include "check.h"
#include "clip.h"
#include "util.h"

/* Loads an absolute path (the file exists): NULL and a counted failure when it does not load. */
static inline clip_model *fixture_clip_path(const char *path) {
    clip_model *m = NULL;
    if (clip_load(path, &m) != CARSEG_OK) {
        test_failed_checks++;
        fprintf(stderr, "  fixture %s does not load (a failure, not a skip): %s\n", path, carseg_last_error());
        return NULL;
    }
    return m;
}

/* NULL when missing (skip) or when it fails to load (failure counted). */
static inline clip_model *fixture_clip(const char *rel) {
    const char *p = shared_path(rel);
    if (!p || !file_exists(p)) {
        fprintf(stderr, "  fixture missing: %s\n", p ? p : rel);
        return NULL;
    }
    return fixture_clip_path(p);
}

#endif
