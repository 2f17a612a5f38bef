/* datasets.c — benchmark datasets in the layouts the reference's data loaders (data/voc.py etc.) expect.
 *
 * Mirrors data/voc.py (torchvision VOCSegmentation), data/context.py (VOC2010
 * SegmentationClassContext), data/coco_stuff.py (GroupViT COCO-Object: *_instanceTrainIds.png),
 * data/ade.py (ADEChallengeData2016), data/ade847.py and data/pascal459.py (detectron2 16-bit
 * TIFFs, +1 and clamp), data/refcoco.py (REFER refs pickle + instances.json; refer.c).
 * Samples are listed in a deterministic order: the split file's order where the dataset has one,
 * sorted file names otherwise (the reference's os.listdir order is arbitrary).
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eval.h"

/* ADE-847 / PC-459 class names come from the CaR presets' class lists (presets.c). */
#include "presets.h"

const char *const DATASET_NAMES[] = {"voc", "voc20", "coco_object", "context", "context59",
                                     "ade150", "ade847", "pc459", "refcoco", "refcoco+",
                                     "refcocog", NULL};
const char *const DATASET_INFO[] = {
    "Pascal VOC 2012 (21 classes incl. background, 255 ignored): ROOT/VOCdevkit/VOC2012",
    "Pascal VOC 2012 without background (20 classes scored, background ignored)",
    "COCO-Object (81 classes incl. background): ROOT/images/val2017, ROOT/annotations/val2017/*_instanceTrainIds.png",
    "Pascal Context-60 (incl. background): ROOT/VOCdevkit/VOC2010/SegmentationClassContext",
    "Pascal Context-59 (background ignored), same files as context",
    "ADE20K-150 (0 = other, ignored): ROOT/images/validation, ROOT/annotations/validation",
    "ADE20K-847: ROOT/images_detectron2/validation, ROOT/annotations_detectron2/validation/*.tif",
    "Pascal Context-459: ROOT/images/validation, ROOT/annotations_ctx459/validation/*.tif",
    "RefCOCO (REFER): ROOT/refcoco/refs(unc).p + instances.json, ROOT/images/mscoco/images/train2014",
    "RefCOCO+ (REFER): ROOT/refcoco+/refs(unc).p + instances.json",
    "RefCOCOg (REFER, umd split): ROOT/refcocog/refs(umd).p + instances.json",
    NULL};

static const char *const VOC_NAMES[21] = {
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor"};

static const char *const COCO_NAMES[81] = {
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"};

static const char *const CONTEXT_NAMES[60] = {
    "background", "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "plant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "monitor", "wall", "water",
    "window", "wood"};

static const char *const ADE150_NAMES[151] = {
    "other", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag"};

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static carseg_status push_sample(dataset *ds, int *cap, char *id, char *image, char *label) {
    if (!id || !image || (!label && ds->kind == DS_SEMANTIC)) {
        free(id); free(image); free(label);
        return set_err(CARSEG_ENOMEM, "dataset listing");
    }
    if (ds->n == *cap) {
        int nc = *cap ? 2 * *cap : 256;
        ds_sample *ns = realloc(ds->s, (size_t)nc * sizeof *ns);
        if (!ns) { free(id); free(image); free(label); return set_err(CARSEG_ENOMEM, "dataset listing"); }
        ds->s = ns;
        *cap = nc;
    }
    ds->s[ds->n++] = (ds_sample){.id = id, .image = image, .label = label, .ann = -1};
    return CARSEG_OK;
}

static char *fmt3(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* VOC-style: ids from a split file, image DIR/<id>.jpg, label LDIR/<id>.png. */
static carseg_status list_split_file(dataset *ds, const char *split_file, const char *img_dir,
                                     const char *lbl_dir) {
    uint8_t *txt;
    size_t len;
    TRY(read_file(split_file, &txt, &len));
    int cap = 0;
    char *p = (char *)txt, *end = p + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *a = p, *b = le;
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\r')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
        if (b > a) {
            char *sp = memchr(a, ' ', (size_t)(b - a));   /* "id flag" lines: keep the id */
            if (sp) b = sp;
            char *id = strndup(a, (size_t)(b - a));
            if (!id || strchr(id, '/')) {
                free(id);
                free(txt);
                return set_err(CARSEG_EFORMAT, "%s: bad image id", split_file);
            }
            char *im = id ? fmt3(img_dir, "/", id) : NULL, *img = im ? fmt3(im, ".jpg", "") : NULL;
            char *lb = id ? fmt3(lbl_dir, "/", id) : NULL, *lbl = lb ? fmt3(lb, ".png", "") : NULL;
            free(im);
            free(lb);
            carseg_status st = push_sample(ds, &cap, id, img, lbl);
            if (st) { free(txt); return st; }
        }
        p = le + 1;
    }
    free(txt);
    if (ds->n == 0) return set_err(CARSEG_EFORMAT, "%s: no image ids", split_file);
    return CARSEG_OK;
}

/* Directory layouts: every image file in img_dir with extension img_ext; its label is
 * lbl_dir/<stem><lbl_suffix>. Sorted by name. */
static carseg_status list_dir(dataset *ds, const char *img_dir, const char *img_ext,
                              const char *lbl_dir, const char *lbl_suffix) {
    DIR *d = opendir(img_dir);
    if (!d) return set_err(CARSEG_EIO, "%s: cannot open image directory", img_dir);
    char **names = NULL;
    size_t n = 0, cap = 0, el = strlen(img_ext);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l <= el || e->d_name[0] == '.' || strcmp(e->d_name + l - el, img_ext)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        names[n] = strndup(e->d_name, l - el);
        if (names[n]) n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int icap = 0;
    carseg_status st = CARSEG_OK;
    for (size_t i = 0; i < n; i++) {
        char *b1 = fmt3(img_dir, "/", names[i]), *img = b1 ? fmt3(b1, img_ext, "") : NULL;
        char *b2 = fmt3(lbl_dir, "/", names[i]), *lbl = b2 ? fmt3(b2, lbl_suffix, "") : NULL;
        free(b1);
        free(b2);
        if (!st) st = push_sample(ds, &icap, names[i], img, lbl);
        else { free(names[i]); free(img); free(lbl); }
    }
    free(names);
    if (!st && ds->n == 0) st = set_err(CARSEG_EFORMAT, "%s: no *%s images", img_dir, img_ext);
    return st;
}

static carseg_status set_names(dataset *ds, const char *const *names, int n_names,
                               const char *file) {
    ds->class_names = calloc((size_t)ds->n_class, sizeof(char *));
    if (!ds->class_names) return set_err(CARSEG_ENOMEM, "class names");
    if (file) {
        uint8_t *txt;
        size_t len;
        TRY(read_file(file, &txt, &len));
        char *p = (char *)txt;
        int k = 0;
        while (*p && k < ds->n_class) {
            char *nl = strchr(p, '\n');
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            if (l && p[l - 1] == '\r') l--;
            ds->class_names[k++] = strndup(p, l);
            p = nl ? nl + 1 : p + strlen(p);
        }
        free(txt);
        if (k != ds->n_class) {
            for (int i = k; i < ds->n_class; i++) ds->class_names[i] = NULL;
            return set_err(CARSEG_EFORMAT, "%s: %d class names, dataset %s has %d classes", file,
                           k, ds->name, ds->n_class);
        }
    }
    for (int i = 0; i < ds->n_class; i++) {
        if (ds->class_names[i]) continue;
        if (i < n_names) ds->class_names[i] = strdup(names[i]);
        else {
            char b[32];
            snprintf(b, sizeof b, i == 0 ? "background" : "class_%d", i);
            ds->class_names[i] = strdup(b);
        }
        if (!ds->class_names[i]) return set_err(CARSEG_ENOMEM, "class names");
    }
    return CARSEG_OK;
}

/* Accepts ROOT, ROOT/VOCdevkit or ROOT/VOCdevkit/VOCyyyy. */
static char *voc_dir(const char *root, const char *year) {
    char sub[64];
    snprintf(sub, sizeof sub, "VOCdevkit/VOC%s", year);
    char *a = join(root, sub);
    if (a && is_dir(a)) return a;
    free(a);
    snprintf(sub, sizeof sub, "VOC%s", year);
    a = join(root, sub);
    if (a && is_dir(a)) return a;
    free(a);
    return strdup(root);
}

static carseg_status open_refer(dataset *ds, const char *root, const ds_options *opt) {
    const char *by = strcmp(ds->name, "refcocog") ? "unc" : "umd";
    char sub[128], refs_rel[160];
    snprintf(sub, sizeof sub, "%s", ds->name);
    snprintf(refs_rel, sizeof refs_rel, "%s/refs(%s).p", ds->name, by);
    char *refs = join(root, refs_rel);
    snprintf(sub, sizeof sub, "%s/instances.json", ds->name);
    char *inst = join(root, sub);
    char *imgdir = join(root, "images/mscoco/images/train2014");
    if (!refs || !inst || !imgdir) {
        free(refs); free(inst); free(imgdir);
        return set_err(CARSEG_ENOMEM, "refer dataset");
    }
    const char *split = opt && opt->split ? opt->split : "val";
    carseg_status st = refer_open(&ds->refer, refs, inst, split);
    free(refs);
    free(inst);
    if (st) { free(imgdir); return st; }
    ds->kind = DS_REFER;
    ds->n_class = 2;
    int cap = 0;
    for (int k = 0; k < refer_count(ds->refer) && !st; k++) {
        long ref_id;
        const char *file;
        int ns;
        const char *const *raw;
        const long *sids;
        refer_ref(ds->refer, k, &ref_id, &file, &ns, &raw, &sids);
        /* the sentences the reference intended (data/refcoco.py: ref['sentences'][i]['raw'],
         * lower-cased, '"' and '/' removed, as its older loader did) */
        char **clean = calloc((size_t)(ns ? ns : 1), sizeof(char *));
        if (!clean) { st = set_err(CARSEG_ENOMEM, "refer sentences"); break; }
        for (int j = 0; j < ns; j++) {
            size_t l = strlen(raw[j]);
            char *c = malloc(l + 1), *q = c;
            if (!c) { st = set_err(CARSEG_ENOMEM, "refer sentences"); break; }
            for (size_t t = 0; t < l; t++) {
                char ch = raw[j][t];
                if (ch == '"' || ch == '/') continue;
                *q++ = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
            }
            *q = 0;
            clean[j] = c;
        }
        int groups = opt && opt->per_sentence ? ns : 1;
        for (int gi = 0; gi < groups && !st; gi++) {
            char idb[64];
            if (opt && opt->per_sentence) snprintf(idb, sizeof idb, "%ld_%ld", ref_id, sids[gi]);
            else snprintf(idb, sizeof idb, "%ld", ref_id);
            st = push_sample(ds, &cap, strdup(idb), join(imgdir, file), NULL);
            if (st) break;
            ds_sample *s = &ds->s[ds->n - 1];
            s->ann = k;
            if (opt && opt->per_sentence) {
                s->n_sent = 1;
                s->sent = malloc(sizeof(char *));
                if (s->sent) s->sent[0] = strdup(clean[gi]);
                if (!s->sent || !s->sent[0]) st = set_err(CARSEG_ENOMEM, "refer sentences");
            } else {
                s->n_sent = ns;
                s->sent = clean;
                clean = NULL;
            }
        }
        if (clean) {
            for (int j = 0; j < ns; j++) free(clean[j]);
            free(clean);
        }
    }
    free(imgdir);
    if (!st && ds->n == 0) st = set_err(CARSEG_EFORMAT, "%s: no referring expressions in split %s", ds->name, split);
    if (!st) {
        static const char *const nm[2] = {"background", "object"};
        st = set_names(ds, nm, 2, NULL);
    }
    return st;
}

carseg_status dataset_open(dataset *ds, const char *name, const char *root, const ds_options *opt) {
    memset(ds, 0, sizeof *ds);
    if (!name || !root) return set_err(CARSEG_EINVAL, "dataset: name and root are required");
    snprintf(ds->name, sizeof ds->name, "%s", name);
    const char *split = opt ? opt->split : NULL;
    const char *names_file = opt ? opt->class_names : NULL;
    carseg_status st;
    if (!strcmp(name, "voc") || !strcmp(name, "voc20") || !strcmp(name, "context") ||
        !strcmp(name, "context59")) {
        int voc = name[0] == 'v';
        char *base = voc_dir(root, voc ? "2012" : "2010");
        char sf[256];
        snprintf(sf, sizeof sf, "ImageSets/%s/%s.txt", voc ? "Segmentation" : "SegmentationContext",
                 split ? split : "val");
        char *split_file = join(base, sf);
        char *img = join(base, "JPEGImages");
        char *lbl = join(base, voc ? "SegmentationClass" : "SegmentationClassContext");
        st = split_file && img && lbl ? list_split_file(ds, split_file, img, lbl)
                                      : set_err(CARSEG_ENOMEM, "dataset paths");
        free(base); free(split_file); free(img); free(lbl);
        ds->n_class = voc ? 21 : 60;
        ds->ignore_background = !strcmp(name, "voc20") || !strcmp(name, "context59");
        if (!st) st = set_names(ds, voc ? VOC_NAMES : CONTEXT_NAMES, voc ? 21 : 60, names_file);
    } else if (!strcmp(name, "coco_object") || !strcmp(name, "coco-object")) {
        snprintf(ds->name, sizeof ds->name, "coco_object");
        char sub[128];
        snprintf(sub, sizeof sub, "images/%s2017", split ? split : "val");
        char *img = join(root, sub);
        snprintf(sub, sizeof sub, "annotations/%s2017", split ? split : "val");
        char *lbl = join(root, sub);
        st = img && lbl ? list_dir(ds, img, ".jpg", lbl, "_instanceTrainIds.png")
                        : set_err(CARSEG_ENOMEM, "dataset paths");
        free(img); free(lbl);
        ds->n_class = 81;
        if (!st) st = set_names(ds, COCO_NAMES, 81, names_file);
    } else if (!strcmp(name, "ade150") || !strcmp(name, "ade847") || !strcmp(name, "pc459")) {
        const char *sp = split ? (!strcmp(split, "val") ? "validation" : split) : "validation";
        const char *idir = !strcmp(name, "ade847") ? "images_detectron2" : "images";
        const char *ldir = !strcmp(name, "ade150") ? "annotations"
                           : !strcmp(name, "ade847") ? "annotations_detectron2" : "annotations_ctx459";
        char sub[160];
        snprintf(sub, sizeof sub, "%s/%s", idir, sp);
        char *img = join(root, sub);
        snprintf(sub, sizeof sub, "%s/%s", ldir, sp);
        char *lbl = join(root, sub);
        st = img && lbl ? list_dir(ds, img, ".jpg", lbl, !strcmp(name, "ade150") ? ".png" : ".tif")
                        : set_err(CARSEG_ENOMEM, "dataset paths");
        free(img); free(lbl);
        ds->ignore_background = 1;
        if (!strcmp(name, "ade150")) {
            ds->n_class = 151;
            if (!st) st = set_names(ds, ADE150_NAMES, 151, names_file);
        } else {
            /* data/ade847.py, data/pascal459.py: target = tif + 1 (65535 ignore -> 65536),
             * values > 847 (459) -> 0. n_class 847 drops class 847 (quirk Q14). */
            int ade = !strcmp(name, "ade847");
            ds->label_shift = 1;
            ds->label_max = ade ? 847 : 459;
            ds->n_class = ade ? (opt && opt->fix_ade847 ? 848 : 847) : 460;
            const char *const *pn = NULL;
            char **tmp = NULL;
            int npn = 0, ntmp = 0;
            for (int k = 0; k < PRESET_LISTS_N; k++) {
                const preset_list *L = &PRESET_LISTS[k];
                if (strcmp(L->name, ade ? "ade847" : "pc459") || L->n + 1 > ds->n_class + 1) continue;
                /* label = index + 1; the first synonym names the class ("person, individual" -> person) */
                tmp = calloc((size_t)L->n + 1, sizeof(char *));
                if (!tmp) break;
                ntmp = L->n + 1;
                tmp[0] = strdup("background");
                for (int c = 0; c < L->n; c++) tmp[c + 1] = strndup(L->classes[c], strcspn(L->classes[c], ","));
                npn = L->n + 1;
                for (int c = 0; c < npn; c++) if (!tmp[c]) npn = 0;
                pn = (const char *const *)tmp;
                break;
            }
            if (!st) st = set_names(ds, pn, npn, names_file);
            for (int c = 0; c < ntmp; c++) free(tmp[c]);
            free(tmp);
        }
    } else if (!strcmp(name, "refcoco") || !strcmp(name, "refcoco+") || !strcmp(name, "refcocog")) {
        st = open_refer(ds, root, opt);
    } else {
        return set_err(CARSEG_EINVAL, "unknown dataset '%s' (see carseg eval --help)", name);
    }
    if (st) dataset_close(ds);
    return st;
}

void dataset_close(dataset *ds) {
    if (!ds) return;
    for (int i = 0; i < ds->n; i++) {
        free(ds->s[i].id);
        free(ds->s[i].image);
        free(ds->s[i].label);
        for (int j = 0; j < ds->s[i].n_sent; j++) free(ds->s[i].sent[j]);
        free(ds->s[i].sent);
    }
    free(ds->s);
    if (ds->class_names)
        for (int i = 0; i < ds->n_class; i++) free(ds->class_names[i]);
    free(ds->class_names);
    if (ds->refer) refer_close(ds->refer);
    memset(ds, 0, sizeof *ds);
}

carseg_status dataset_load_gt(const dataset *ds, int i, int *w, int *h, uint16_t **out) {
    *out = NULL;
    if (i < 0 || i >= ds->n) return set_err(CARSEG_EINVAL, "sample %d out of range", i);
    if (ds->kind == DS_REFER) return refer_mask(ds->refer, ds->s[i].ann, w, h, out);
    TRY(labels_read(ds->s[i].label, w, h, out));
    if (ds->label_shift || ds->label_max) {
        size_t n = (size_t)*w * *h;
        uint16_t *v = *out;
        for (size_t k = 0; k < n; k++) {
            unsigned x = (unsigned)v[k] + (unsigned)ds->label_shift;
            if (ds->label_max && x > (unsigned)ds->label_max) x = 0;
            v[k] = (uint16_t)x;
        }
    }
    return CARSEG_OK;
}
