/* weights.c — model files: format detection, dtype conversion, canonical (OpenAI) tensor names,
 * canonical (OpenAI) tensor names (the tensor container is tensors.c, the architecture read off
 * the tensors clip_config.c).
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

#include "safetensors.h"
#include "torchzip.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// Hugging Face CLIPModel names -> OpenAI names

static int starts(const char *s, const char *pre) { return strncmp(s, pre, strlen(pre)) == 0; }

static _Thread_local const int *g_raw_order;   /* name index of the raw tensors while map_hf runs */
static const wtensor *raw_find(const wtensor *t, int n, const char *name) {
    return wtensor_index_find(t, g_raw_order, n, name);
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
    int *order = wtensor_name_index(raw, n);
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
    f->order = wtensor_name_index(f->t, f->n);
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
    wdt_source_mapped(1);
    carseg_status st = wfile_open_mem(path, m, len, out);
    wdt_source_mapped(0);
    munmap(m, len);
    return st;
}
