/* weights.c — model files: format detection, dtype conversion, canonical (OpenAI) tensor names,
 * and the CLIP architecture read off the tensors.
 *
 * Mirrors what OpenAI's clip.load + build_model and Hugging Face's convert_clip_original_pytorch
 * _to_hf.py agree on: the OpenAI state-dict names are canonical; a Hugging Face CLIPModel file
 * (q/k/v split, Linear projections stored transposed) is mapped back onto them here, once, so
 * clip.c sees one layout. The format readers (safetensors.c, torchzip.c) only append tensors
 * under the names found in the file.
 */
#include "weights.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip.h"
#include "util.h"

const char *wformat_name(wformat f) {
    switch (f) {
    case WF_SAFETENSORS: return "safetensors";
    case WF_TORCHSCRIPT: return "torchscript";
    case WF_TORCH_STATE: return "torch-state-dict";
    }
    return "?";
}

const char *wdtype_name(wdtype d) {
    switch (d) {
    case WDT_F32: return "F32";
    case WDT_F16: return "F16";
    case WDT_BF16: return "BF16";
    }
    return "?";
}

size_t wdt_size(wdtype d) { return d == WDT_F32 ? 4 : 2; }

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);                   /* inf / nan */
    } else if (exp == 0) {
        if (man == 0) bits = sign;                                  /* +-0 */
        else {                                                      /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void wdt_to_f32(wdtype src, const uint8_t *p, size_t count, float *out) {
    const int par = count >= (1u << 20);   /* big tensors only: threads cost more than small copies */
    switch (src) {
    case WDT_F32:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) {
            uint32_t b = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&out[i], &b, 4);
        }
        break;
    case WDT_F16:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case WDT_BF16:
        #pragma omp parallel for if (par) schedule(static)
        for (size_t i = 0; i < count; i++) {
            uint32_t b = ((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8) << 16;
            memcpy(&out[i], &b, 4);
        }
        break;
    }
}

carseg_status wfile_add(wfile *f, char *name, int ndim, const int64_t *shape, wdtype src,
                        float *data) {
    if (!name || ndim < 0 || ndim > 4) {
        carseg_status st = name ? set_err(CARSEG_EFORMAT, "%s: %d dimensions, at most 4 supported (tensor %s)",
                                          f->path, ndim, name)
                                : set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
        free(name);
        cs_free(data);
        return st;
    }
    free(f->order);   /* the name index is rebuilt by finish() */
    f->order = NULL;
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 64;
        wtensor *t = realloc(f->t, (size_t)cap * sizeof *t);
        if (!t) {
            free(name);
            cs_free(data);
            return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
        }
        f->t = t;
        f->cap = cap;
    }
    wtensor *t = &f->t[f->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->ndim = ndim;
    t->count = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->count *= (size_t)shape[i]; }
    t->src_dtype = src;
    t->data = data;
    return CARSEG_OK;
}

static void wfile_free_tensors(wtensor *t, int n) {
    for (int i = 0; i < n; i++) { free(t[i].name); cs_free(t[i].data); }
    free(t);
}

void wfile_close(wfile *f) {
    if (!f) return;
    wfile_free_tensors(f->t, f->n);
    free(f->order);
    free(f->path);
    free(f);
}

/* sorting an index array by tensor name (qsort has no context pointer: a thread-local one) */
static _Thread_local const wtensor *g_sort_t;
static int cmp_idx(const void *a, const void *b) {
    return strcmp(g_sort_t[*(const int *)a].name, g_sort_t[*(const int *)b].name);
}

static int *name_index(const wtensor *t, int n) {
    int *o = malloc((size_t)(n ? n : 1) * sizeof *o);
    if (!o) return NULL;
    for (int i = 0; i < n; i++) o[i] = i;
    g_sort_t = t;
    qsort(o, (size_t)n, sizeof *o, cmp_idx);
    return o;
}

static const wtensor *index_find(const wtensor *t, const int *o, int n, const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(t[o[mid]].name, name);
        if (c == 0) return &t[o[mid]];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const wtensor *wfile_get(const wfile *f, const char *name) {
    if (!f || !name) return NULL;
    if (f->order) return index_find(f->t, f->order, f->n, name);
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// Hugging Face CLIPModel names -> OpenAI names

static int starts(const char *s, const char *pre) { return strncmp(s, pre, strlen(pre)) == 0; }

static _Thread_local const int *g_raw_order;   /* name index of the raw tensors while map_hf runs */
static const wtensor *raw_find(const wtensor *t, int n, const char *name) {
    return index_find(t, g_raw_order, n, name);
}

static char *xstrcat3(const char *a, const char *b, const char *c) {
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (!s) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

/* Moves raw tensor r into f under `name` (r gives up its data). */
static carseg_status move_as(wfile *f, wtensor *r, char *name) {
    float *d = r->data;
    r->data = NULL;
    carseg_status st = wfile_add(f, name, r->ndim, r->shape, r->src_dtype, d);
    return st;
}

/* q/k/v of one layer: (C, C) x3 -> (3C, C); biases (C) x3 -> (3C). */
static carseg_status hf_qkv(wfile *f, wtensor *raw, int n, const char *layer_prefix,
                            const char *canon_prefix, const char *kind /* "weight"|"bias" */) {
    const char *qkv[3] = {"q_proj.", "k_proj.", "v_proj."};
    const wtensor *p[3];
    for (int i = 0; i < 3; i++) {
        char nm[512];
        snprintf(nm, sizeof nm, "%sself_attn.%s%s", layer_prefix, qkv[i], kind);
        p[i] = raw_find(raw, n, nm);
        if (!p[i] || !p[i]->data)
            return set_err(CARSEG_EMODEL, "%s: Hugging Face attention lacks %s (tensor %s)", f->path,
                           qkv[i], nm);
    }
    int want_nd = strcmp(kind, "weight") == 0 ? 2 : 1;
    for (int i = 0; i < 3; i++) {
        if (p[i]->ndim != want_nd || p[i]->shape[0] != p[0]->shape[0] ||
            (want_nd == 2 && (p[i]->shape[1] != p[0]->shape[1] || p[i]->shape[0] != p[i]->shape[1])))
            return set_err(CARSEG_EMODEL, "%s: q/k/v projections have mismatched shapes (tensor %s)",
                           f->path, p[i]->name);
    }
    size_t cnt = p[0]->count;
    float *d = cs_malloc(3 * cnt * sizeof(float) + 1);
    char *nm = xstrcat3(canon_prefix, "attn.in_proj_", kind);
    if (!d || !nm) { cs_free(d); free(nm); return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path); }
    for (int i = 0; i < 3; i++) memcpy(d + i * cnt, p[i]->data, cnt * sizeof(float));
    int64_t shape[2] = {3 * p[0]->shape[0], want_nd == 2 ? p[0]->shape[1] : 0};
    return wfile_add(f, nm, want_nd, shape, p[0]->src_dtype, d);
}

/* A 2-D Linear weight (out, in) -> (in, out). */
static carseg_status move_transposed(wfile *f, wtensor *r, const char *name) {
    if (r->ndim != 2)
        return set_err(CARSEG_EMODEL, "%s: expected a 2-D projection (tensor %s)", f->path, r->name);
    size_t R = (size_t)r->shape[0], C = (size_t)r->shape[1];
    float *d = cs_malloc(R * C * sizeof(float) + 1);
    char *nm = cs_strdup(name);
    if (!d || !nm) { cs_free(d); free(nm); return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path); }
    for (size_t i = 0; i < R; i++)
        for (size_t j = 0; j < C; j++) d[j * R + i] = r->data[i * C + j];
    int64_t shape[2] = {(int64_t)C, (int64_t)R};
    return wfile_add(f, nm, 2, shape, r->src_dtype, d);
}

static const char *const hf_layer_map[][2] = {
    {"self_attn.out_proj.weight", "attn.out_proj.weight"},
    {"self_attn.out_proj.bias", "attn.out_proj.bias"},
    {"layer_norm1.weight", "ln_1.weight"}, {"layer_norm1.bias", "ln_1.bias"},
    {"layer_norm2.weight", "ln_2.weight"}, {"layer_norm2.bias", "ln_2.bias"},
    {"mlp.fc1.weight", "mlp.c_fc.weight"}, {"mlp.fc1.bias", "mlp.c_fc.bias"},
    {"mlp.fc2.weight", "mlp.c_proj.weight"}, {"mlp.fc2.bias", "mlp.c_proj.bias"},
};

static const char *const hf_top_map[][2] = {
    {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
    {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
    {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"},
    {"vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"},   /* sic: HF's spelling */
    {"vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"},
    {"vision_model.post_layernorm.weight", "visual.ln_post.weight"},
    {"vision_model.post_layernorm.bias", "visual.ln_post.bias"},
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.weight", "ln_final.weight"},
    {"text_model.final_layer_norm.bias", "ln_final.bias"},
    {"logit_scale", "logit_scale"},
};

/* Parses "<tower>.encoder.layers.<N>.<rest>": returns rest and fills the layer prefix (through
 * the dot after N) and the canonical block prefix; NULL when name is not a layer tensor. */
static const char *hf_layer(const char *name, char *lp, size_t lpn, char *cp, size_t cpn) {
    const char *tower_hf, *tower_c;
    if (starts(name, "vision_model.encoder.layers.")) {
        tower_hf = "vision_model.encoder.layers."; tower_c = "visual.transformer.resblocks.";
    } else if (starts(name, "text_model.encoder.layers.")) {
        tower_hf = "text_model.encoder.layers."; tower_c = "transformer.resblocks.";
    } else return NULL;
    const char *s = name + strlen(tower_hf);
    const char *e = s;
    while (isdigit((unsigned char)*e)) e++;
    if (e == s || *e != '.' || e - s > 6) return NULL;
    snprintf(lp, lpn, "%.*s", (int)(e + 1 - name), name);
    snprintf(cp, cpn, "%s%.*s", tower_c, (int)(e + 1 - s), s);
    return e + 1;
}

static carseg_status map_hf(wfile *f) {
    wtensor *raw = f->t;
    int n = f->n;
    int *order = name_index(raw, n);
    if (!order) return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
    g_raw_order = order;
    f->t = NULL;
    f->n = f->cap = 0;
    carseg_status st = CARSEG_OK;
    for (int i = 0; i < n && st == CARSEG_OK; i++) {
        wtensor *r = &raw[i];
        const char *nm = r->name;
        char lp[256], cp[256];
        const char *rest = hf_layer(nm, lp, sizeof lp, cp, sizeof cp);
        if (rest) {
            if (strcmp(rest, "self_attn.q_proj.weight") == 0) { st = hf_qkv(f, raw, n, lp, cp, "weight"); continue; }
            if (strcmp(rest, "self_attn.q_proj.bias") == 0) { st = hf_qkv(f, raw, n, lp, cp, "bias"); continue; }
            if (starts(rest, "self_attn.k_proj.") || starts(rest, "self_attn.v_proj.")) {
                /* consumed with q; q must exist */
                char q[512];
                snprintf(q, sizeof q, "%sself_attn.q_proj.%s", lp, rest + strlen("self_attn.k_proj."));
                if (!raw_find(raw, n, q))
                    st = set_err(CARSEG_EMODEL, "%s: Hugging Face attention lacks q_proj (tensor %s)", f->path, nm);
                continue;
            }
            int done = 0;
            for (size_t k = 0; k < sizeof hf_layer_map / sizeof *hf_layer_map; k++)
                if (strcmp(rest, hf_layer_map[k][0]) == 0) {
                    char *cn = xstrcat3(cp, hf_layer_map[k][1], "");
                    st = cn ? move_as(f, r, cn) : set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
                    done = 1;
                    break;
                }
            if (!done) cs_log(CARSEG_LOG_WARN, "%s: ignoring unknown Hugging Face CLIP tensor %s", f->path, nm);
            continue;
        }
        if (strcmp(nm, "visual_projection.weight") == 0) { st = move_transposed(f, r, "visual.proj"); continue; }
        if (strcmp(nm, "text_projection.weight") == 0) { st = move_transposed(f, r, "text_projection"); continue; }
        int done = 0;
        for (size_t k = 0; k < sizeof hf_top_map / sizeof *hf_top_map; k++)
            if (strcmp(nm, hf_top_map[k][0]) == 0) {
                char *cn = cs_strdup(hf_top_map[k][1]);
                st = cn ? move_as(f, r, cn) : set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
                done = 1;
                break;
            }
        if (!done) cs_log(CARSEG_LOG_WARN, "%s: ignoring unknown Hugging Face CLIP tensor %s", f->path, nm);
    }
    wfile_free_tensors(raw, n);
    free(order);
    g_raw_order = NULL;
    return st;
}

// ---------------------------------------------------------------------------------------------
// open

static carseg_status finish(wfile *f) {
    /* "module." prefixes (DataParallel checkpoints) */
    for (int i = 0; i < f->n; i++) {
        char *nm = f->t[i].name;
        if (starts(nm, "module.")) memmove(nm, nm + 7, strlen(nm + 7) + 1);
    }
    for (int i = 0; i < f->n; i++)
        if (starts(f->t[i].name, "vision_model.") || starts(f->t[i].name, "text_model.")) {
            f->hf_names = 1;
            break;
        }
    if (f->hf_names) TRY(map_hf(f));
    f->order = name_index(f->t, f->n);
    if (!f->order) return set_err(CARSEG_ENOMEM, "%s: out of memory", f->path);
    for (int i = 0; i + 1 < f->n; i++)
        if (strcmp(f->t[f->order[i]].name, f->t[f->order[i + 1]].name) == 0)
            return set_err(CARSEG_EFORMAT, "%s: duplicate tensor name (tensor %s)", f->path,
                           f->t[f->order[i]].name);
    if (f->n == 0) return set_err(CARSEG_EMODEL, "%s: no float tensors in the file", f->path);
    return CARSEG_OK;
}

carseg_status wfile_open_mem(const char *path, const uint8_t *buf, size_t len, wfile **out) {
    *out = NULL;
    if (!path) path = "(memory)";
    wfile *f = calloc(1, sizeof *f);
    if (!f) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    f->path = cs_strdup(path);
    if (!f->path) { free(f); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
    carseg_status st;
    if (len >= 4 && memcmp(buf, "PK\x03\x04", 4) == 0) {
        st = tz_read(f, buf, len);
    } else if (len >= 9 && buf[8] == '{') {
        f->format = WF_SAFETENSORS;
        st = st_read(f, buf, len);
    } else if (len >= 2 && buf[0] == 0x80 && buf[1] <= 5) {
        st = set_err(CARSEG_EFORMAT, "%s: legacy (pre-1.6, non-zip) torch.save file: not supported; "
                     "re-save it with a newer torch or convert it to safetensors", path);
    } else {
        st = set_err(CARSEG_EFORMAT, "%s: not a safetensors file, a TorchScript archive or a "
                     "torch.save zip", path);
    }
    if (st == CARSEG_OK) st = finish(f);
    if (st != CARSEG_OK) { wfile_close(f); return st; }
    *out = f;
    return CARSEG_OK;
}

carseg_status wfile_open(const char *path, wfile **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return set_err(CARSEG_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return set_err(CARSEG_EIO, "%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    if (len == 0) { close(fd); return set_err(CARSEG_EFORMAT, "%s: empty file", path); }
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return set_err(CARSEG_EIO, "%s: cannot map: %s", path, strerror(errno));
    carseg_status st = wfile_open_mem(path, m, len, out);
    munmap(m, len);
    return st;
}

// ---------------------------------------------------------------------------------------------
// architecture

static const wtensor *need(const wfile *f, const char *name, int ndim, carseg_status *st) {
    const wtensor *t = wfile_get(f, name);
    if (*st != CARSEG_OK) return t;
    if (!t) *st = set_err(CARSEG_EMODEL, "%s: missing tensor (tensor %s)", f->path, name);
    else if (t->ndim != ndim)
        *st = set_err(CARSEG_EMODEL, "%s: expected %d dimensions, found %d (tensor %s)", f->path, ndim,
                      t->ndim, name);
    return t;
}

static int count_blocks(const wfile *f, const char *prefix) {
    int n = 0;
    for (;;) {
        char nm[256];
        snprintf(nm, sizeof nm, "%s%d.attn.in_proj_weight", prefix, n);
        if (!wfile_get(f, nm)) return n;
        n++;
    }
}

carseg_status clip_config_from_weights(const wfile *f, struct clip_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    carseg_status st = CARSEG_OK;
    if (wfile_get(f, "visual.attnpool.positional_embedding") || wfile_get(f, "visual.layer1.0.conv1.weight"))
        return set_err(CARSEG_EMODEL, "%s: ResNet CLIP image towers are not supported, only ViT (tensor "
                       "visual.attnpool.positional_embedding)", f->path);
    const wtensor *conv1 = need(f, "visual.conv1.weight", 4, &st);
    const wtensor *vpos = need(f, "visual.positional_embedding", 2, &st);
    const wtensor *vproj = need(f, "visual.proj", 2, &st);
    const wtensor *tok = need(f, "token_embedding.weight", 2, &st);
    const wtensor *tpos = need(f, "positional_embedding", 2, &st);
    const wtensor *tproj = need(f, "text_projection", 2, &st);
    const wtensor *ls = need(f, "logit_scale", 0, &st);
    if (st != CARSEG_OK) return st;
    int C = (int)conv1->shape[0];
    if (conv1->shape[1] != 3 || conv1->shape[2] != conv1->shape[3] || conv1->shape[2] < 1)
        return set_err(CARSEG_EMODEL, "%s: conv1 must be (width, 3, P, P) (tensor visual.conv1.weight)", f->path);
    cfg->v_width = C;
    cfg->v_patch = (int)conv1->shape[2];
    int64_t rows = vpos->shape[0] - 1, g = 0;
    while ((g + 1) * (g + 1) <= rows) g++;
    if (rows < 1 || g * g != rows || vpos->shape[1] != C)
        return set_err(CARSEG_EMODEL, "%s: positional embedding must be (1 + grid^2, %d) (tensor "
                       "visual.positional_embedding)", f->path, C);
    cfg->v_grid = (int)g;
    cfg->v_layers = count_blocks(f, "visual.transformer.resblocks.");
    if (cfg->v_layers < 1)
        return set_err(CARSEG_EMODEL, "%s: missing tensor (tensor visual.transformer.resblocks.0.attn.in_proj_weight)", f->path);
    const wtensor *vfc = need(f, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, &st);
    if (st != CARSEG_OK) return st;
    cfg->v_mlp = (int)vfc->shape[0];
    if (C % 64 != 0)
        return set_err(CARSEG_EMODEL, "%s: vision width %d is not a multiple of 64 (heads = width/64) "
                       "(tensor visual.conv1.weight)", f->path, C);
    cfg->v_heads = C / 64;
    int Ct = (int)tok->shape[1];
    cfg->t_width = Ct;
    cfg->t_vocab = (int)tok->shape[0];
    cfg->t_ctx = (int)tpos->shape[0];
    if (tpos->shape[1] != Ct)
        return set_err(CARSEG_EMODEL, "%s: text positional embedding width %lld != %d (tensor positional_embedding)",
                       f->path, (long long)tpos->shape[1], Ct);
    cfg->t_layers = count_blocks(f, "transformer.resblocks.");
    if (cfg->t_layers < 1)
        return set_err(CARSEG_EMODEL, "%s: missing tensor (tensor transformer.resblocks.0.attn.in_proj_weight)", f->path);
    if (Ct % 64 != 0)
        return set_err(CARSEG_EMODEL, "%s: text width %d is not a multiple of 64 (heads = width/64) "
                       "(tensor token_embedding.weight)", f->path, Ct);
    cfg->t_heads = Ct / 64;
    if (vproj->shape[0] != C)
        return set_err(CARSEG_EMODEL, "%s: projection rows %lld != vision width %d (tensor visual.proj)",
                       f->path, (long long)vproj->shape[0], C);
    if (tproj->shape[0] != Ct || tproj->shape[1] != vproj->shape[1])
        return set_err(CARSEG_EMODEL, "%s: text projection must be (%d, %lld) (tensor text_projection)",
                       f->path, Ct, (long long)vproj->shape[1]);
    cfg->embed = (int)vproj->shape[1];
    cfg->logit_scale = expf(ls->data[0]);
    return CARSEG_OK;
}
