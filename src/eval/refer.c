/* refer.c — RefCOCO / RefCOCO+ / RefCOCOg annotations (the REFER API as used by the
 * reference's data/refcoco.py): the refs(unc|umd).p pickle, instances.json, and the object masks
 * (pycocotools frPyObjects + decode, then the reference's `sum over polygons == 1`).
 *
 * pickle_to_json() is a small, hostile-input-safe pickle *reader* (no code execution: GLOBAL,
 * REDUCE, BUILD and friends are rejected) that turns plain data into the util.h JSON DOM.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

// ---------------------------------------------------------------------------------------------
// pickle -> JSON DOM

typedef struct {
    const uint8_t *p, *end;
    json **stack;          /* values; NULL entries are MARKs */
    size_t sp, scap;
    json **memo;
    unsigned char *memo_owned;   /* 1: memo holds its own copy (scalars); 0: borrowed container */
    size_t nmemo;
    json **grave;                /* popped objects, freed at the end (memo may point at them) */
    size_t ngrave;
    size_t budget;         /* nodes we may still create (bounds memo-copy blow-ups) */
    char *err;
    size_t errlen;
} pk;

static json *pk_fail(pk *k, const char *msg) {
    if (k->err && !k->err[0]) snprintf(k->err, k->errlen, "offset %ld: %s", (long)(k->end - k->p), msg);
    return NULL;
}

static json *pk_new(pk *k, json_type t) {
    if (k->budget == 0) return pk_fail(k, "too many objects");
    k->budget--;
    json *j = calloc(1, sizeof *j);
    if (j) j->type = t;
    return j;
}

static int push(pk *k, json *v) {
    if (k->sp == k->scap) {
        size_t nc = k->scap ? 2 * k->scap : 64;
        json **ns = realloc(k->stack, nc * sizeof *ns);
        if (!ns) return 0;
        k->stack = ns;
        k->scap = nc;
    }
    k->stack[k->sp++] = v;
    return 1;
}

static int append_kid(json *c, json *v, char *key) {
    size_t n = c->len;
    if ((n & (n - 1)) == 0) {   /* grow at powers of two */
        size_t nc = n ? 2 * n : 4;
        json **nk = realloc(c->kids, nc * sizeof *nk);
        if (!nk) return 0;
        c->kids = nk;
        if (c->type == JSON_OBJ) {
            char **nkeys = realloc(c->keys, nc * sizeof *nkeys);
            if (!nkeys) return 0;
            c->keys = nkeys;
        }
    }
    c->kids[n] = v;
    if (c->type == JSON_OBJ) c->keys[n] = key;
    c->len = n + 1;
    return 1;
}

static json *jcopy(pk *k, const json *s) {
    json *d = pk_new(k, s->type);
    if (!d) return NULL;
    d->num = s->num;
    if (s->type == JSON_STR) {
        d->str = malloc(s->len + 1);
        if (!d->str) { free(d); return NULL; }
        memcpy(d->str, s->str, s->len + 1);
        d->len = s->len;
    } else if (s->type == JSON_ARR || s->type == JSON_OBJ) {
        for (size_t i = 0; i < s->len; i++) {
            json *c = jcopy(k, s->kids[i]);
            char *key = s->type == JSON_OBJ ? strdup(s->keys[i]) : NULL;
            if (!c || (s->type == JSON_OBJ && !key) || !append_kid(d, c, key)) {
                json_free(c);
                free(key);
                json_free(d);
                return NULL;
            }
        }
    }
    return d;
}

/* A key for a dict: strings as is, numbers in decimal, others rejected. */
static char *key_of(const json *v) {
    if (v->type == JSON_STR) return strdup(v->str);
    if (v->type == JSON_NUM) {
        char b[64];
        if (v->num == floor(v->num) && fabs(v->num) < 1e18) snprintf(b, sizeof b, "%lld", (long long)v->num);
        else snprintf(b, sizeof b, "%.17g", v->num);
        return strdup(b);
    }
    return NULL;
}

static int need(pk *k, size_t n) { return (size_t)(k->end - k->p) >= n; }

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static json *mk_str(pk *k, const uint8_t *s, size_t n) {
    json *j = pk_new(k, JSON_STR);
    if (!j) return NULL;
    j->str = malloc(n + 1);
    if (!j->str) { free(j); return NULL; }
    memcpy(j->str, s, n);
    j->str[n] = 0;
    j->len = n;
    return j;
}

static json *mk_num(pk *k, double v, json_type t) {
    json *j = pk_new(k, t);
    if (j) j->num = v;
    return j;
}

/* index of the topmost MARK, or -1 */
static long find_mark(pk *k) {
    for (size_t i = k->sp; i > 0; i--)
        if (!k->stack[i - 1]) return (long)(i - 1);
    return -1;
}

static int memo_put(pk *k, size_t idx) {
    if (k->sp == 0 || !k->stack[k->sp - 1]) return 0;
    if (idx > (1u << 24)) return 0;
    if (idx >= k->nmemo) {
        size_t nn = idx + 1 > 2 * k->nmemo ? idx + 1 : 2 * k->nmemo;
        json **nm = realloc(k->memo, nn * sizeof *nm);
        if (!nm) return 0;
        k->memo = nm;
        unsigned char *no = realloc(k->memo_owned, nn);
        if (!no) return 0;
        k->memo_owned = no;
        memset(nm + k->nmemo, 0, (nn - k->nmemo) * sizeof *nm);
        memset(no + k->nmemo, 0, nn - k->nmemo);
        k->nmemo = nn;
    }
    if (k->memo_owned[idx]) json_free(k->memo[idx]);
    k->memo[idx] = NULL;
    k->memo_owned[idx] = 0;
    json *top = k->stack[k->sp - 1];
    if (top->type == JSON_ARR || top->type == JSON_OBJ) {
        k->memo[idx] = top;   /* borrowed: containers live until the end (the tree or grave) */
    } else {
        k->memo[idx] = jcopy(k, top);   /* scalars may be consumed (dict keys): keep a copy */
        if (!k->memo[idx]) return 0;
        k->memo_owned[idx] = 1;
    }
    return 1;
}

json *pickle_to_json(const uint8_t *data, size_t len, char *err, size_t errlen) {
    pk k = {.p = data, .end = data + len, .budget = 64 * len + 1024, .err = err, .errlen = errlen};
    if (err && errlen) err[0] = 0;
    json *result = NULL;
    size_t next_memo = 0;
    while (k.p < k.end) {
        uint8_t op = *k.p++;
        json *v = NULL;
        switch (op) {
        case 0x80: /* PROTO */ if (!need(&k, 1)) goto trunc; k.p++; continue;
        case 0x95: /* FRAME */ if (!need(&k, 8)) goto trunc; k.p += 8; continue;
        case '(': /* MARK */ if (!push(&k, NULL)) goto oom; continue;
        case ']': v = pk_new(&k, JSON_ARR); break;
        case '}': v = pk_new(&k, JSON_OBJ); break;
        case ')': v = pk_new(&k, JSON_ARR); break;
        case 'N': v = pk_new(&k, JSON_NULL); break;
        case 0x88: v = mk_num(&k, 1, JSON_BOOL); break;
        case 0x89: v = mk_num(&k, 0, JSON_BOOL); break;
        case 'K': if (!need(&k, 1)) goto trunc; v = mk_num(&k, k.p[0], JSON_NUM); k.p += 1; break;
        case 'M': if (!need(&k, 2)) goto trunc; v = mk_num(&k, (double)rd_le(k.p, 2), JSON_NUM); k.p += 2; break;
        case 'J': if (!need(&k, 4)) goto trunc; v = mk_num(&k, (double)(int32_t)rd_le(k.p, 4), JSON_NUM); k.p += 4; break;
        case 0x8a: { /* LONG1: n bytes little-endian two's complement */
            if (!need(&k, 1)) goto trunc;
            size_t n = k.p[0];
            if (!need(&k, 1 + n)) goto trunc;
            if (n > 8) { pk_fail(&k, "integer too large"); goto fail; }
            uint64_t u = n ? rd_le(k.p + 1, (int)n) : 0;
            double d;
            if (n && (k.p[n] & 0x80)) d = n == 8 ? (double)(int64_t)u : (double)((int64_t)u - ((int64_t)1 << (8 * n)));
            else d = (double)u;
            v = mk_num(&k, d, JSON_NUM);
            k.p += 1 + n;
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            if (!need(&k, 8)) goto trunc;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = (u << 8) | k.p[i];
            double d;
            memcpy(&d, &u, 8);
            v = mk_num(&k, d, JSON_NUM);
            k.p += 8;
            break;
        }
        case 'X': case 'T': case 0x8d: case 0x8c: case 'U': case 'B': case 'C': case 0x8e: {
            /* BINUNICODE(4) BINSTRING(4) BINUNICODE8(8) SHORT_BINUNICODE(1) SHORT_BINSTRING(1)
             * BINBYTES(4) SHORT_BINBYTES(1) BINBYTES8(8) */
            int lb = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e) ? 8 : 4;
            if (!need(&k, (size_t)lb)) goto trunc;
            uint64_t n = rd_le(k.p, lb);
            k.p += lb;
            if (n > (uint64_t)(k.end - k.p)) goto trunc;
            v = mk_str(&k, k.p, (size_t)n);
            k.p += n;
            break;
        }
        case 'I': case 'L': case 'F': case 'S': case 'V': { /* protocol 0 text values */
            const uint8_t *nl = memchr(k.p, '\n', (size_t)(k.end - k.p));
            if (!nl) goto trunc;
            size_t n = (size_t)(nl - k.p);
            char buf[128];
            if (op == 'S' || op == 'V') {
                const uint8_t *s = k.p;
                if (op == 'S' && n >= 2 && (s[0] == '\'' || s[0] == '"')) { s++; n -= 2; }
                v = mk_str(&k, s, n);   /* escapes are kept verbatim */
            } else {
                if (n >= sizeof buf) { pk_fail(&k, "number too long"); goto fail; }
                memcpy(buf, k.p, n);
                buf[n] = 0;
                if (n && buf[n - 1] == 'L') buf[n - 1] = 0;
                if (!strcmp(buf, "00")) v = mk_num(&k, 0, JSON_BOOL);
                else if (!strcmp(buf, "01")) v = mk_num(&k, 1, JSON_BOOL);
                else {
                    char *e;
                    double d = strtod(buf, &e);
                    if (e == buf || *e) { pk_fail(&k, "bad number"); goto fail; }
                    v = mk_num(&k, d, JSON_NUM);
                }
            }
            k.p = nl + 1;
            break;
        }
        case 'l': case 't': case 'd': { /* LIST TUPLE DICT from MARK */
            long m = find_mark(&k);
            if (m < 0) { pk_fail(&k, "missing MARK"); goto fail; }
            json *c = pk_new(&k, op == 'd' ? JSON_OBJ : JSON_ARR);
            if (!c) goto oom;
            size_t cnt = k.sp - (size_t)m - 1;
            if (op == 'd' && cnt % 2) { json_free(c); pk_fail(&k, "odd dict items"); goto fail; }
            for (size_t i = (size_t)m + 1; i < k.sp; i += op == 'd' ? 2 : 1) {
                char *key = NULL;
                json *val = k.stack[i];
                if (op == 'd') {
                    key = key_of(k.stack[i]);
                    if (!key) { json_free(c); pk_fail(&k, "unsupported dict key"); goto fail; }
                    json_free(k.stack[i]);
                    k.stack[i] = NULL;
                    val = k.stack[i + 1];
                }
                if (!append_kid(c, val, key)) { free(key); json_free(c); goto oom; }
                k.stack[op == 'd' ? i + 1 : i] = NULL;
            }
            k.sp = (size_t)m;
            v = c;
            break;
        }
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t n = (size_t)(op - 0x84);
            if (k.sp < n) { pk_fail(&k, "stack underflow"); goto fail; }
            for (size_t i = k.sp - n; i < k.sp; i++) if (!k.stack[i]) { pk_fail(&k, "MARK in tuple"); goto fail; }
            json *c = pk_new(&k, JSON_ARR);
            if (!c) goto oom;
            for (size_t i = k.sp - n; i < k.sp; i++) {
                if (!append_kid(c, k.stack[i], NULL)) { json_free(c); goto oom; }
                k.stack[i] = NULL;
            }
            k.sp -= n;
            v = c;
            break;
        }
        case 'a': case 'e': case 's': case 'u': { /* APPEND APPENDS SETITEM SETITEMS */
            size_t first, cnt;
            if (op == 'a' || op == 's') {
                cnt = op == 'a' ? 1 : 2;
                if (k.sp < cnt + 1) { pk_fail(&k, "stack underflow"); goto fail; }
                first = k.sp - cnt;
            } else {
                long m = find_mark(&k);
                if (m < 1) { pk_fail(&k, "missing MARK"); goto fail; }
                first = (size_t)m + 1;
                cnt = k.sp - first;
            }
            size_t ci = (op == 'a' || op == 's') ? first - 1 : first - 2;
            json *c = k.stack[ci];
            json_type want = (op == 'a' || op == 'e') ? JSON_ARR : JSON_OBJ;
            if (!c || c->type != want) { pk_fail(&k, "append/setitem on a wrong object"); goto fail; }
            if (want == JSON_OBJ && cnt % 2) { pk_fail(&k, "odd dict items"); goto fail; }
            for (size_t i = first; i < first + cnt; i += want == JSON_OBJ ? 2 : 1) {
                if (!k.stack[i] || (want == JSON_OBJ && !k.stack[i + 1])) { pk_fail(&k, "MARK in items"); goto fail; }
                char *key = NULL;
                json *val = k.stack[i];
                if (want == JSON_OBJ) {
                    key = key_of(k.stack[i]);
                    if (!key) { pk_fail(&k, "unsupported dict key"); goto fail; }
                    json_free(k.stack[i]);
                    k.stack[i] = NULL;
                    val = k.stack[i + 1];
                }
                if (!append_kid(c, val, key)) { free(key); goto oom; }
                k.stack[want == JSON_OBJ ? i + 1 : i] = NULL;
            }
            k.sp = (op == 'a' || op == 's') ? first : first - 1;   /* drops the MARK too */
            continue;
        }
        case 'q': case 'r': case 0x94: case 'p': { /* BINPUT LONG_BINPUT MEMOIZE PUT */
            size_t idx;
            if (op == 'q') { if (!need(&k, 1)) goto trunc; idx = k.p[0]; k.p += 1; }
            else if (op == 'r') { if (!need(&k, 4)) goto trunc; idx = (size_t)rd_le(k.p, 4); k.p += 4; }
            else if (op == 0x94) idx = next_memo;
            else {
                const uint8_t *nl = memchr(k.p, '\n', (size_t)(k.end - k.p));
                if (!nl) goto trunc;
                idx = (size_t)strtoul((const char *)k.p, NULL, 10);
                k.p = nl + 1;
            }
            if (!memo_put(&k, idx)) { pk_fail(&k, "bad memo index"); goto fail; }
            if (idx >= next_memo) next_memo = idx + 1;
            continue;
        }
        case 'h': case 'j': case 'g': { /* BINGET LONG_BINGET GET: a copy (the DOM is a tree) */
            size_t idx;
            if (op == 'h') { if (!need(&k, 1)) goto trunc; idx = k.p[0]; k.p += 1; }
            else if (op == 'j') { if (!need(&k, 4)) goto trunc; idx = (size_t)rd_le(k.p, 4); k.p += 4; }
            else {
                const uint8_t *nl = memchr(k.p, '\n', (size_t)(k.end - k.p));
                if (!nl) goto trunc;
                idx = (size_t)strtoul((const char *)k.p, NULL, 10);
                k.p = nl + 1;
            }
            if (idx >= k.nmemo || !k.memo[idx]) { pk_fail(&k, "memo index not set"); goto fail; }
            v = jcopy(&k, k.memo[idx]);
            break;
        }
        case '0': { /* POP: parked until the end, the memo may still point into it */
            if (k.sp == 0) { pk_fail(&k, "stack underflow"); goto fail; }
            json **ng = realloc(k.grave, (k.ngrave + 1) * sizeof *ng);
            if (!ng) goto oom;
            k.grave = ng;
            k.grave[k.ngrave++] = k.stack[--k.sp];
            continue;
        }
        case '.': /* STOP */
            if (k.sp != 1 || !k.stack[0]) { pk_fail(&k, "STOP with a bad stack"); goto fail; }
            result = k.stack[0];
            k.sp = 0;
            goto done;
        default: {
            char b[64];
            snprintf(b, sizeof b, "unsupported pickle opcode 0x%02x", op);
            pk_fail(&k, b);
            goto fail;
        }
        }
        if (!v) goto oom;
        /* a memo entry may point at an object we are about to move; objects never move (only
         * pointers do), so memo stays valid until the object is freed (POP / failure). */
        if (!push(&k, v)) { json_free(v); goto oom; }
    }
trunc:
    pk_fail(&k, "truncated pickle");
    goto fail;
oom:
    pk_fail(&k, "out of memory or too many objects");
fail:
    for (size_t i = 0; i < k.sp; i++) json_free(k.stack[i]);
    result = NULL;
done:
    free(k.stack);
    for (size_t i = 0; i < k.nmemo; i++) if (k.memo_owned[i]) json_free(k.memo[i]);
    free(k.memo);
    free(k.memo_owned);
    for (size_t i = 0; i < k.ngrave; i++) json_free(k.grave[i]);
    free(k.grave);
    return result;
}

// ---------------------------------------------------------------------------------------------
// REFER database

typedef struct {
    long id;
    int w, h;
    char *file;
} ref_img;

typedef struct {
    long ref_id, ann_id, image_id;
    int n_sent;
    char **raw;
    long *sent_ids;
    int img;            /* index into imgs */
    const json *seg;    /* the annotation's segmentation (owned by db->inst) */
} ref_rec;

struct refer_db {
    json *inst;
    ref_img *imgs;
    size_t n_imgs;
    ref_rec *refs;
    int n_refs;
};

typedef struct { long id; size_t idx; } id_idx;
static int cmp_id(const void *a, const void *b) {
    long x = ((const id_idx *)a)->id, y = ((const id_idx *)b)->id;
    return x < y ? -1 : x > y;
}
static long find_id(const id_idx *t, size_t n, long id) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && t[lo].id == id ? (long)t[lo].idx : -1;
}

static int split_match(const char *want, const char *have) {
    size_t n = strlen(want);
    if (!strcmp(want, "testA") || !strcmp(want, "testB") || !strcmp(want, "testC"))
        return strchr(have, want[n - 1]) != NULL;
    if (!strcmp(want, "test")) return strstr(have, "test") != NULL;
    return !strcmp(want, have);
}

static int num_of(const json *o, const char *key, long *out) {
    const json *v = json_get(o, key);
    if (!v || v->type != JSON_NUM || v->num != floor(v->num) || fabs(v->num) > 9e15) return 0;
    *out = (long)v->num;
    return 1;
}

void refer_close(refer_db *db) {
    if (!db) return;
    for (int i = 0; i < db->n_refs; i++) {
        for (int j = 0; j < db->refs[i].n_sent; j++) free(db->refs[i].raw[j]);
        free(db->refs[i].raw);
        free(db->refs[i].sent_ids);
    }
    free(db->refs);
    for (size_t i = 0; i < db->n_imgs; i++) free(db->imgs[i].file);
    free(db->imgs);
    json_free(db->inst);
    free(db);
}

carseg_status refer_open(refer_db **out, const char *refs_pickle, const char *instances_json,
                         const char *split) {
    *out = NULL;
    uint8_t *pb;
    size_t plen;
    TRY(read_file(refs_pickle, &pb, &plen));
    char perr[256];
    json *refs = pickle_to_json(pb, plen, perr, sizeof perr);
    free(pb);
    if (!refs) return set_err(CARSEG_EFORMAT, "%s: %s", refs_pickle, perr);
    if (refs->type != JSON_ARR) {
        json_free(refs);
        return set_err(CARSEG_EFORMAT, "%s: expected a list of refs", refs_pickle);
    }
    refer_db *db = calloc(1, sizeof *db);
    carseg_status st = CARSEG_OK;
    id_idx *img_t = NULL, *ann_t = NULL;
    if (!db) { json_free(refs); return set_err(CARSEG_ENOMEM, "refer"); }
    db->inst = json_parse_file(instances_json);
    if (!db->inst) { st = CARSEG_EFORMAT; goto out; }
    const json *images = json_get(db->inst, "images"), *anns = json_get(db->inst, "annotations");
    if (!images || images->type != JSON_ARR || !anns || anns->type != JSON_ARR) {
        st = set_err(CARSEG_EFORMAT, "%s: needs 'images' and 'annotations' lists", instances_json);
        goto out;
    }
    db->imgs = calloc(images->len ? images->len : 1, sizeof *db->imgs);
    img_t = calloc(images->len ? images->len : 1, sizeof *img_t);
    ann_t = calloc(anns->len ? anns->len : 1, sizeof *ann_t);
    if (!db->imgs || !img_t || !ann_t) { st = set_err(CARSEG_ENOMEM, "refer"); goto out; }
    for (size_t i = 0; i < images->len; i++) {
        const json *im = images->kids[i];
        long id, w, h;
        const char *fn = json_str(im, "file_name", NULL);
        if (!num_of(im, "id", &id) || !num_of(im, "width", &w) || !num_of(im, "height", &h) ||
            !fn || w <= 0 || h <= 0 || w > 16384 || h > 16384 || strstr(fn, "..") || fn[0] == '/') {
            st = set_err(CARSEG_EFORMAT, "%s: image %zu lacks id/width/height/file_name", instances_json, i);
            goto out;
        }
        db->imgs[i] = (ref_img){id, (int)w, (int)h, strdup(fn)};
        db->n_imgs = i + 1;
        img_t[i] = (id_idx){id, i};
    }
    for (size_t i = 0; i < anns->len; i++) {
        long id;
        if (!num_of(anns->kids[i], "id", &id)) {
            st = set_err(CARSEG_EFORMAT, "%s: annotation %zu lacks an id", instances_json, i);
            goto out;
        }
        ann_t[i] = (id_idx){id, i};
    }
    qsort(img_t, images->len, sizeof *img_t, cmp_id);
    qsort(ann_t, anns->len, sizeof *ann_t, cmp_id);
    db->refs = calloc(refs->len ? refs->len : 1, sizeof *db->refs);
    if (!db->refs) { st = set_err(CARSEG_ENOMEM, "refer"); goto out; }
    for (size_t i = 0; i < refs->len; i++) {
        const json *r = refs->kids[i];
        const char *sp = json_str(r, "split", NULL);
        ref_rec rr = {0};
        const json *sents = json_get(r, "sentences");
        if (!sp || !num_of(r, "ref_id", &rr.ref_id) || !num_of(r, "ann_id", &rr.ann_id) ||
            !num_of(r, "image_id", &rr.image_id) || !sents || sents->type != JSON_ARR) {
            st = set_err(CARSEG_EFORMAT, "%s: ref %zu lacks split/ref_id/ann_id/image_id/sentences", refs_pickle, i);
            goto out;
        }
        if (!split_match(split, sp)) continue;
        long ii = find_id(img_t, images->len, rr.image_id), ai = find_id(ann_t, anns->len, rr.ann_id);
        if (ii < 0 || ai < 0) {
            st = set_err(CARSEG_EFORMAT, "%s: ref %ld names an image or annotation missing from %s",
                         refs_pickle, rr.ref_id, instances_json);
            goto out;
        }
        rr.img = (int)ii;
        rr.seg = json_get(anns->kids[ai], "segmentation");
        if (!rr.seg) {
            st = set_err(CARSEG_EFORMAT, "%s: annotation %ld has no segmentation", instances_json, rr.ann_id);
            goto out;
        }
        rr.raw = calloc(sents->len ? sents->len : 1, sizeof(char *));
        rr.sent_ids = calloc(sents->len ? sents->len : 1, sizeof(long));
        db->refs[db->n_refs++] = rr;   /* owned from here (freed by refer_close) */
        ref_rec *R = &db->refs[db->n_refs - 1];
        if (!R->raw || !R->sent_ids) { st = set_err(CARSEG_ENOMEM, "refer"); goto out; }
        for (size_t j = 0; j < sents->len; j++) {
            const json *s = sents->kids[j];
            const char *raw = json_str(s, "raw", NULL);
            if (!raw) raw = json_str(s, "sent", NULL);
            long sid = (long)j;
            if (!raw) {
                st = set_err(CARSEG_EFORMAT, "%s: ref %ld sentence %zu has no text", refs_pickle, R->ref_id, j);
                goto out;
            }
            num_of(s, "sent_id", &sid);
            R->raw[j] = strdup(raw);
            R->sent_ids[j] = sid;
            R->n_sent = (int)j + 1;
            if (!R->raw[j]) { st = set_err(CARSEG_ENOMEM, "refer"); goto out; }
        }
    }
out:
    free(img_t);
    free(ann_t);
    json_free(refs);
    if (st) { refer_close(db); return st; }
    *out = db;
    return CARSEG_OK;
}

int refer_count(const refer_db *db) { return db->n_refs; }

void refer_ref(const refer_db *db, int k, long *ref_id, const char **file_name, int *n_sent,
               const char *const **sent_raw, const long **sent_ids) {
    const ref_rec *r = &db->refs[k];
    *ref_id = r->ref_id;
    *file_name = db->imgs[r->img].file;
    *n_sent = r->n_sent;
    *sent_raw = (const char *const *)r->raw;
    *sent_ids = r->sent_ids;
}

// ---------------------------------------------------------------------------------------------
// masks: the pycocotools polygon rasteriser (maskApi.c rleFrPoly), re-derived:
// vertices are scaled by 5 and rounded, every edge is walked densely, the crossings of the
// pixel-column centres give the run starts per column (column-major RLE), which are sorted and
// turned into alternating runs. Decoding fills runs in column-major order.

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Adds (+1) the polygon's pixels into cnt (h*w, row-major). */
static carseg_status poly_add(const double *xy, size_t k, int h, int w, uint16_t *cnt) {
    if (k < 1) return CARSEG_OK;
    const double scale = 5;
    int *x = malloc((k + 1) * sizeof(int)), *y = malloc((k + 1) * sizeof(int));
    if (!x || !y) { free(x); free(y); return set_err(CARSEG_ENOMEM, "polygon"); }
    for (size_t j = 0; j < k; j++) {
        double fx = scale * xy[2 * j] + .5, fy = scale * xy[2 * j + 1] + .5;
        if (!(fabs(fx) < 1e8) || !(fabs(fy) < 1e8)) { free(x); free(y); return set_err(CARSEG_EFORMAT, "polygon coordinate out of range"); }
        x[j] = (int)fx;
        y[j] = (int)fy;
    }
    x[k] = x[0];
    y[k] = y[0];
    size_t m = 0;
    for (size_t j = 0; j < k; j++) {
        int ax = abs(x[j] - x[j + 1]), ay = abs(y[j] - y[j + 1]);
        m += (size_t)(ax > ay ? ax : ay) + 1;
    }
    if (m > (size_t)1 << 28) { free(x); free(y); return set_err(CARSEG_EFORMAT, "polygon too large"); }
    int *u = malloc(m * sizeof(int)), *v = malloc(m * sizeof(int));
    if (!u || !v) { free(x); free(y); free(u); free(v); return set_err(CARSEG_ENOMEM, "polygon"); }
    m = 0;
    for (size_t j = 0; j < k; j++) {
        int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
        int dx = abs(xe - xs), dy = abs(ys - ye);
        int flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) { int t = xs; xs = xe; xe = t; t = ys; ys = ye; ye = t; }
        double s = dx >= dy ? (dx ? (double)(ye - ys) / dx : 0) : (double)(xe - xs) / dy;
        if (dx >= dy) {
            for (int d = 0; d <= dx; d++) {
                int t = flip ? dx - d : d;
                u[m] = t + xs;
                v[m] = (int)(ys + s * t + .5);
                m++;
            }
        } else {
            for (int d = 0; d <= dy; d++) {
                int t = flip ? dy - d : d;
                v[m] = t + ys;
                u[m] = (int)(xs + s * t + .5);
                m++;
            }
        }
    }
    free(x);
    free(y);
    /* boundary crossings of pixel-column centres, downsampled */
    uint32_t *a = malloc((m + 1) * sizeof(uint32_t));
    if (!a) { free(u); free(v); return set_err(CARSEG_ENOMEM, "polygon"); }
    size_t na = 0;
    for (size_t j = 1; j < m; j++) {
        if (u[j] == u[j - 1]) continue;
        double xd = (double)(u[j] < u[j - 1] ? u[j] : u[j] - 1);
        xd = (xd + .5) / scale - .5;
        if (floor(xd) != xd || xd < 0 || xd > w - 1) continue;
        double yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]);
        yd = (yd + .5) / scale - .5;
        if (yd < 0) yd = 0;
        else if (yd > h) yd = h;
        yd = ceil(yd);
        a[na++] = (uint32_t)((int)xd * h + (int)yd);
    }
    free(u);
    free(v);
    a[na++] = (uint32_t)((size_t)h * w);
    qsort(a, na, sizeof *a, cmp_u32);
    /* runs: differences; zero-length runs merge their neighbours (as rleFrPoly) */
    uint32_t prev = 0;
    for (size_t j = 0; j < na; j++) { uint32_t t = a[j]; a[j] -= prev; prev = t; }
    uint32_t *b = malloc(na * sizeof(uint32_t));
    if (!b) { free(a); return set_err(CARSEG_ENOMEM, "polygon"); }
    size_t nb = 0, j = 0;
    b[nb++] = a[j++];
    while (j < na) {
        if (a[j] > 0) b[nb++] = a[j++];
        else { j++; if (j < na) b[nb - 1] += a[j++]; }
    }
    free(a);
    /* decode: runs alternate 0/1 starting with 0, column-major */
    size_t pos = 0, total = (size_t)h * w;
    for (size_t r = 0; r < nb; r++) {
        size_t len = b[r];
        if (r & 1)
            for (size_t q = pos; q < pos + len && q < total; q++) {
                size_t col = q / (size_t)h, row = q % (size_t)h;
                cnt[row * (size_t)w + col]++;
            }
        pos += len;
    }
    free(b);
    return CARSEG_OK;
}

/* Uncompressed RLE {"counts": [..], "size": [h, w]} or COCO's compressed string counts. */
static carseg_status rle_add(const json *seg, int h, int w, uint16_t *cnt) {
    const json *c = json_get(seg, "counts");
    size_t total = (size_t)h * w, pos = 0;
    if (!c) return set_err(CARSEG_EFORMAT, "RLE segmentation without counts");
    if (c->type == JSON_ARR) {
        for (size_t r = 0; r < c->len; r++) {
            const json *e = c->kids[r];
            if (e->type != JSON_NUM || e->num < 0 || e->num > (double)total) return set_err(CARSEG_EFORMAT, "bad RLE count");
            size_t len = (size_t)e->num;
            if (r & 1)
                for (size_t q = pos; q < pos + len && q < total; q++) cnt[(q % h) * (size_t)w + q / h]++;
            pos += len;
        }
        return CARSEG_OK;
    }
    if (c->type != JSON_STR) return set_err(CARSEG_EFORMAT, "bad RLE counts");
    /* rleFrString: LEB128-like 5-bit groups, offsets relative to the count two back */
    const char *s = c->str;
    size_t p = 0, m = 0;
    long long prev2[2] = {0, 0};
    while (s[p]) {
        long long x = 0;
        int k = 0, more = 1;
        while (more) {
            if (!s[p] || k > 11) return set_err(CARSEG_EFORMAT, "truncated RLE string");
            long long ch = (long long)s[p] - 48;
            x |= (ch & 0x1f) << (5 * k);
            more = (int)(ch & 0x20);
            p++;
            k++;
            if (!more && (ch & 0x10)) x |= (long long)(~0ULL << (5 * k));
        }
        if (m > 2) x += prev2[m % 2];
        prev2[m % 2] = x;
        if (x < 0 || x > (long long)total) return set_err(CARSEG_EFORMAT, "bad RLE count");
        if (m & 1)
            for (size_t q = pos; q < pos + (size_t)x && q < total; q++) cnt[(q % h) * (size_t)w + q / h]++;
        pos += (size_t)x;
        m++;
    }
    return CARSEG_OK;
}

carseg_status refer_mask(const refer_db *db, int k, int *w, int *h, uint16_t **mask) {
    *mask = NULL;
    if (k < 0 || k >= db->n_refs) return set_err(CARSEG_EINVAL, "ref %d out of range", k);
    const ref_rec *r = &db->refs[k];
    int W = db->imgs[r->img].w, H = db->imgs[r->img].h;
    uint16_t *cnt = calloc((size_t)W * H, sizeof(uint16_t));
    if (!cnt) return set_err(CARSEG_ENOMEM, "mask %dx%d", W, H);
    carseg_status st = CARSEG_OK;
    const json *seg = r->seg;
    if (seg->type == JSON_ARR) {
        for (size_t i = 0; i < seg->len && !st; i++) {
            const json *poly = seg->kids[i];
            if (poly->type != JSON_ARR || poly->len % 2 || poly->len > (1u << 22)) {
                st = set_err(CARSEG_EFORMAT, "ref %ld: polygon must be a flat list of x,y", r->ref_id);
                break;
            }
            double *xy = malloc((poly->len ? poly->len : 1) * sizeof(double));
            if (!xy) { st = set_err(CARSEG_ENOMEM, "polygon"); break; }
            for (size_t j = 0; j < poly->len; j++) {
                if (poly->kids[j]->type != JSON_NUM) { st = set_err(CARSEG_EFORMAT, "ref %ld: non-numeric polygon", r->ref_id); break; }
                xy[j] = poly->kids[j]->num;
            }
            if (!st) st = poly_add(xy, poly->len / 2, H, W, cnt);
            free(xy);
        }
    } else if (seg->type == JSON_OBJ) {
        st = rle_add(seg, H, W, cnt);
    } else {
        st = set_err(CARSEG_EFORMAT, "ref %ld: unsupported segmentation", r->ref_id);
    }
    if (st) { free(cnt); return st; }
    /* data/refcoco.py getMask: m = sum over the per-polygon masks; target = (m == 1) */
    for (size_t i = 0; i < (size_t)W * H; i++) cnt[i] = cnt[i] == 1;
    *w = W;
    *h = H;
    *mask = cnt;
    return CARSEG_OK;
}
