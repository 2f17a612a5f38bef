/* presets.h — per-dataset settings of CaR, the reference's exact values (car_method.md §5).
 *
 * Mirrors clip_as_rnn/configs/{voc,coco,pascal_context,ade_150,refcoco,refcoco+,refcocog,gres}.yaml
 * and the class lists of clip_as_rnn/data/{voc,coco,context,ade,ade847,pascal459}.py. The class lists live in
 * data/presets/NAME.txt; scripts/gen_presets.py turns them into src/car/presets_data.c.
 */
#ifndef CARSEG_PRESETS_H
#define CARSEG_PRESETS_H

#include "carseg.h"

/* A class list: classes in label order (label = index + 1); optional thing/stuff split (0-based
 * ids in the reference's order). */
typedef struct {
    const char *name;
    const char *const *classes;
    int n;
    const int *things;
    int n_things;
    const int *stuff;
    int n_stuff;
} preset_list;

extern const preset_list PRESET_LISTS[];
extern const int PRESET_LISTS_N;

typedef struct {
    const char *name;          /* "voc", "coco-object", "context", "ade150", "refcoco", ... */
    const char *classifier;    /* "ViT-L/14" or "ViT-B/16" */
    float eta;                 /* mask_threshold */
    float theta;               /* confidence_threshold */
    float lambda;              /* clipes_threshold */
    const char *prompts;       /* visual_prompt_type (things, or the only pass) */
    const char *stuff_prompts; /* stuff_visual_prompt_type (NULL without a stuff pass) */
    int templates;             /* 15 = the semantic templates; 0 = "a clean origami {}." only */
    int refer;                 /* seg_mode refer */
    float bg_factor, stuff_bg_factor;
    const preset_list *list;   /* NULL for the referring presets */
} car_preset;

/* NULL when unknown. */
const car_preset *preset_find(const char *name);
/* All presets (for --help and errors). */
const car_preset *preset_all(int *n);

/* The 23 default background words (bg_cls of every config). */
extern const char *const CAR_BG_WORDS[23];
/* The 15 semantic templates; CAR_CAM_TEMPLATE = "a clean origami {}.". */
extern const char *const CAR_TEMPLATES[15];
extern const char *const CAR_CAM_TEMPLATE;

#endif
