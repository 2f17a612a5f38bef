/* presets.c — the reference's configs (car_method.md §5): thresholds, prompts, classifier,
 * templates, background words. Class lists: presets_data.c (generated from data/presets). */
#include "presets.h"

#include <string.h>

const char *const CAR_BG_WORDS[23] = {
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road",
    "rock", "street", "valley", "bridge"};

const char *const CAR_TEMPLATES[15] = {
    "a clean origami {}.",
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene."};

const char *const CAR_CAM_TEMPLATE = "a clean origami {}.";

static const preset_list *list_named(const char *n) {
    for (int i = 0; i < PRESET_LISTS_N; i++)
        if (!strcmp(PRESET_LISTS[i].name, n)) return &PRESET_LISTS[i];
    return NULL;
}

enum { NPRESETS = 10 };
static car_preset g_presets[NPRESETS] = {
    /* name          classifier   eta   theta  lambda prompts        stuff prompts  tpl refer */
    {"voc",          "ViT-L/14", 0.4f, 0.6f,  0.4f, "circle,blur", NULL,          15, 0, 1, 1, NULL},
    {"coco-object",  "ViT-L/14", 0.5f, 0.3f,  0.5f, "blur,gray",   NULL,          15, 0, 1, 1, NULL},
    {"context",      "ViT-L/14", 0.6f, 0.25f, 0.4f, "blur,circle", "blur,gray",   15, 0, 1, 1, NULL},
    {"ade150",       "ViT-L/14", 0.6f, 0.25f, 0.7f, "gray,blur",   "gray,blur",   15, 0, 1, 1, NULL},
    {"ade847",       "ViT-L/14", 0.6f, 0.25f, 0.7f, "gray,blur",   "gray,blur",   15, 0, 1, 1, NULL},
    {"pc459",        "ViT-L/14", 0.4f, 0.25f, 0.7f, "gray,blur",   "gray,blur",   15, 0, 1, 1, NULL},
    {"refcoco",      "ViT-B/16", 0.5f, 0.3f,  0.5f, "circle",      NULL,           0, 1, 1, 1, NULL},
    {"refcoco+",     "ViT-B/16", 0.2f, 0.1f,  0.5f, "circle,blur", NULL,           0, 1, 1, 1, NULL},
    {"refcocog",     "ViT-B/16", 0.5f, 0.1f,  0.6f, "circle,blur", NULL,           0, 1, 1, 1, NULL},
    {"gres",         "ViT-L/14", 0.5f, 0.0f,  0.3f, "circle",      NULL,           0, 1, 1, 1, NULL},
};
static int g_init;
static int g_n;
static car_preset g_avail[NPRESETS];

/* Semantic presets whose class list is missing from data/presets are left out. */
static void init(void) {
    if (g_init) return;
    g_n = 0;
    for (int i = 0; i < NPRESETS; i++) {
        car_preset p = g_presets[i];
        if (!p.refer) {
            p.list = list_named(p.name);
            if (!p.list) continue;
        }
        g_avail[g_n++] = p;
    }
    g_init = 1;
}

const car_preset *preset_find(const char *name) {
    init();
    for (int i = 0; i < g_n; i++)
        if (!strcmp(g_avail[i].name, name)) return &g_avail[i];
    return NULL;
}

const car_preset *preset_all(int *n) {
    init();
    *n = g_n;
    return g_avail;
}
