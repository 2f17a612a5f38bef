/* torchzip.c — PyTorch zip archives: TorchScript modules as OpenAI's clip.load downloads them
 * (torch.jit.save: <prefix>/data.pkl pickles `__torch__.…` module objects, <prefix>/data/N hold
 * the storages) and torch.save(state_dict) files (<prefix>/data.pkl pickles an OrderedDict).
 *
 * Mirrors torch/serialization.py `_load` and torch/csrc/jit/serialization/unpickler.cpp, reduced
 * to what those two writers emit: a zip central-directory reader (stored entries, data
 * descriptors, zip64; the local header is read only to find where the data starts; CRC-32 of
 * every entry read is checked) and a pickle (protocol 2..4) subset interpreter with
 * persistent_load of ('storage', torch.XStorage, key, location, numel),
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter and collections.OrderedDict.
 * Everything the pickle builds lives in one arena, freed at the end; memory is bounded by the
 * sizes of the file (memo indices, element counts, nesting are all checked).
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "torchzip.h"
#include "util.h"

int tz_verify_crc = 1;

// ---------------------------------------------------------------------------------------------
// zip central directory

typedef struct {
    const char *name;       /* into the file buffer, not NUL-terminated */
    size_t name_len;
    uint64_t csize, usize, lho;
    uint32_t crc;
    int method;
    int verified;           /* CRC already checked */
} zentry;

typedef struct {
    const char *path;
    const uint8_t *buf;
    size_t len;
    zentry *e;
    size_t n;
} zarchive;

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int zname_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

static int zentry_cmp(const void *a, const void *b) {
    const zentry *x = a, *y = b;
    return zname_cmp(x->name, x->name_len, y->name, y->name_len);
}

static carseg_status zip_open(zarchive *z) {
    const uint8_t *b = z->buf;
    size_t len = z->len;
    if (len < 22) return set_err(CARSEG_EFORMAT, "%s: zip archive truncated (no end of central directory)", z->path);
    size_t eocd = (size_t)-1;
    size_t lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len - 22 + 1; i-- > lo;)
        if (b[i] == 'P' && b[i + 1] == 'K' && b[i + 2] == 5 && b[i + 3] == 6) { eocd = i; break; }
    if (eocd == (size_t)-1)
        return set_err(CARSEG_EFORMAT, "%s: zip end of central directory not found (truncated?)", z->path);
    uint64_t n = rd16(b + eocd + 10), cdsize = rd32(b + eocd + 12), cdoff = rd32(b + eocd + 16);
    if (n == 0xffff || cdsize == 0xffffffffu || cdoff == 0xffffffffu) {
        if (eocd < 20 || rd32(b + eocd - 20) != 0x07064b50u)
            return set_err(CARSEG_EFORMAT, "%s: zip64 end of central directory locator missing", z->path);
        uint64_t off = rd64(b + eocd - 20 + 8);
        if (off > len - 56 || len < 56 || rd32(b + off) != 0x06064b50u)
            return set_err(CARSEG_EFORMAT, "%s: bad zip64 end of central directory record", z->path);
        n = rd64(b + off + 32);
        cdsize = rd64(b + off + 40);
        cdoff = rd64(b + off + 48);
    }
    if (cdoff > len || cdsize > len - cdoff)
        return set_err(CARSEG_EFORMAT, "%s: zip central directory past the end of the file", z->path);
    if (n > cdsize / 46)
        return set_err(CARSEG_EFORMAT, "%s: zip central directory claims %llu entries in %llu bytes", z->path,
                       (unsigned long long)n, (unsigned long long)cdsize);
    z->e = calloc(n ? n : 1, sizeof *z->e);
    if (!z->e) return set_err(CARSEG_ENOMEM, "%s: out of memory", z->path);
    const uint8_t *p = b + cdoff, *end = b + cdoff + cdsize;
    for (uint64_t i = 0; i < n; i++) {
        if (end - p < 46 || rd32(p) != 0x02014b50u)
            return set_err(CARSEG_EFORMAT, "%s: bad zip central directory entry %llu", z->path, (unsigned long long)i);
        zentry *e = &z->e[i];
        e->method = (int)rd16(p + 10);
        e->crc = rd32(p + 16);
        e->csize = rd32(p + 20);
        e->usize = rd32(p + 24);
        size_t nl = rd16(p + 28), xl = rd16(p + 30), cl = rd16(p + 32);
        e->lho = rd32(p + 42);
        if ((size_t)(end - p) - 46 < nl + xl + cl)
            return set_err(CARSEG_EFORMAT, "%s: zip central directory entry %llu truncated", z->path, (unsigned long long)i);
        e->name = (const char *)p + 46;
        e->name_len = nl;
        /* zip64 extra field: the 0xffffffff fields, in the order usize, csize, offset */
        const uint8_t *x = p + 46 + nl, *xe = x + xl;
        while (xe - x >= 4) {
            uint32_t id = rd16(x), sz = rd16(x + 2);
            if ((size_t)(xe - x - 4) < sz) break;
            if (id == 1) {
                const uint8_t *q = x + 4, *qe = q + sz;
                if (e->usize == 0xffffffffu) { if (qe - q < 8) break; e->usize = rd64(q); q += 8; }
                if (e->csize == 0xffffffffu) { if (qe - q < 8) break; e->csize = rd64(q); q += 8; }
                if (e->lho == 0xffffffffu) { if (qe - q < 8) break; e->lho = rd64(q); q += 8; }
            }
            x += 4 + sz;
        }
        p += 46 + nl + xl + cl;
        z->n++;
    }
    qsort(z->e, z->n, sizeof *z->e, zentry_cmp);
    return CARSEG_OK;
}

/* z->e is sorted by name after zip_open */
static zentry *zip_find(const zarchive *z, const char *name) {
    size_t nl = strlen(name), lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = zname_cmp(z->e[mid].name, z->e[mid].name_len, name, nl);
        if (c == 0) return &z->e[mid];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

/* Data of a stored entry, bounds- and CRC-checked. what: for the message ("(tensor X)" etc.). */
static carseg_status zip_data(const zarchive *z, zentry *e, const uint8_t **data, const char *what) {
    if (e->method != 0)
        return set_err(CARSEG_EFORMAT, "%s: zip entry %.*s is compressed (method %d); PyTorch writes stored "
                       "entries only%s", z->path, (int)e->name_len, e->name, e->method, what);
    if (e->csize != e->usize)
        return set_err(CARSEG_EFORMAT, "%s: zip entry %.*s: stored sizes differ%s", z->path, (int)e->name_len,
                       e->name, what);
    if (e->lho > z->len || z->len - e->lho < 30 || rd32(z->buf + e->lho) != 0x04034b50u)
        return set_err(CARSEG_EFORMAT, "%s: zip entry %.*s: bad local header offset%s", z->path,
                       (int)e->name_len, e->name, what);
    uint64_t start = e->lho + 30 + rd16(z->buf + e->lho + 26) + rd16(z->buf + e->lho + 28);
    if (start > z->len || e->csize > z->len - start)
        return set_err(CARSEG_EFORMAT, "%s: zip entry %.*s past the end of the file (truncated?)%s", z->path,
                       (int)e->name_len, e->name, what);
    /* zlib's crc32 takes a uInt length: feed it in chunks */
    uLong crc = crc32(0L, Z_NULL, 0);
    const uint8_t *q = z->buf + start;
    for (uint64_t left = tz_verify_crc && !e->verified ? e->csize : 0; left;) {
        uInt k = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, q, k);
        q += k;
        left -= k;
    }
    if (tz_verify_crc && !e->verified && (uint32_t)crc != e->crc)
        return set_err(CARSEG_EFORMAT, "%s: zip entry %.*s: CRC-32 mismatch (corrupted)%s", z->path,
                       (int)e->name_len, e->name, what);
    e->verified = 1;
    *data = z->buf + start;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// pickle values

typedef enum {
    PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL, PV_OBJ,
    PV_STORAGE, PV_TENSOR, PV_REDUCED
} pv_kind;

typedef struct pval pval;
struct pval {
    pv_kind k;
    int64_t i;              /* INT, BOOL */
    double f;               /* FLOAT */
    char *s;                /* STR; GLOBAL "module.name"; STORAGE key */
    pval **it;              /* TUPLE/LIST items; DICT keys and values alternating */
    size_t n, cap;
    pval *cls, *state;      /* OBJ: class and BUILD state; REDUCED: callable and args */
    /* STORAGE */
    int dt;                 /* wdtype; -1: integer storage (not a weight); -2: unsupported */
    const char *dtname;
    uint64_t numel;
    /* TENSOR */
    pval *storage;
    int64_t offset;
    int ndim;
    int64_t size[4], stride[4];
};

typedef struct {
    const char *path;
    const uint8_t *p, *end;
    pval **arena;
    size_t narena, carena;
    pval **stack;
    size_t sn, scap;
    size_t *marks;
    size_t mn, mcap;
    pval **memo;
    size_t memo_n, memo_cnt;   /* allocated slots, slots set (MEMOIZE's index) */
    size_t memo_max;
    const uint8_t *start;
} unpickler;

static pval *pv_new(unpickler *u, pv_kind k) {
    if (u->narena == u->carena) {
        size_t c = u->carena ? u->carena * 2 : 256;
        pval **a = realloc(u->arena, c * sizeof *a);
        if (!a) return NULL;
        u->arena = a;
        u->carena = c;
    }
    pval *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->k = k;
    u->arena[u->narena++] = v;
    return v;
}

static void unpickler_free(unpickler *u) {
    for (size_t i = 0; i < u->narena; i++) {
        free(u->arena[i]->s);
        free(u->arena[i]->it);
        free(u->arena[i]);
    }
    free(u->arena);
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

static int pv_push_item(pval *c, pval *x) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        pval **it = realloc(c->it, cap * sizeof *it);
        if (!it) return 0;
        c->it = it;
        c->cap = cap;
    }
    c->it[c->n++] = x;
    return 1;
}

static int push(unpickler *u, pval *v) {
    if (!v) return 0;
    if (u->sn == u->scap) {
        size_t c = u->scap ? u->scap * 2 : 64;
        pval **s = realloc(u->stack, c * sizeof *s);
        if (!s) return 0;
        u->stack = s;
        u->scap = c;
    }
    u->stack[u->sn++] = v;
    return 1;
}

/* the dict's value for a string key, or NULL */
static pval *dict_get(const pval *d, const char *key) {
    if (!d || d->k != PV_DICT) return NULL;
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->it[i]->k == PV_STR && strcmp(d->it[i]->s, key) == 0) return d->it[i + 1];
    return NULL;
}

/* Appends (no search for an existing key: linear time on hostile input). The writers never repeat
 * a key; a repeated tensor name is reported as a duplicate later. */
static int dict_set(pval *d, pval *k, pval *v) { return pv_push_item(d, k) && pv_push_item(d, v); }

#define PERR(...) return set_err(CARSEG_EFORMAT, __VA_ARGS__)

static int tuple_int(const pval *t, int64_t *out, int *n) {
    if (!t || t->k != PV_TUPLE || t->n > 4) return 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->it[i]->k != PV_INT) return 0;
        out[i] = t->it[i]->i;
    }
    *n = (int)t->n;
    return 1;
}

/* persistent_load(('storage', torch.XStorage, key, location, numel)) */
static carseg_status persistent_load(unpickler *u, pval *pid, pval **out) {
    if (pid->k != PV_TUPLE || pid->n < 5 || pid->it[0]->k != PV_STR || strcmp(pid->it[0]->s, "storage") != 0 ||
        pid->it[1]->k != PV_GLOBAL || pid->it[2]->k != PV_STR || pid->it[4]->k != PV_INT || pid->it[4]->i < 0)
        PERR("%s: data.pkl: persistent id is not ('storage', type, key, location, numel)", u->path);
    pval *s = pv_new(u, PV_STORAGE);
    if (!s) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    const char *cls = pid->it[1]->s;
    s->dtname = cls;
    if (strcmp(cls, "torch.FloatStorage") == 0) s->dt = WDT_F32;
    else if (strcmp(cls, "torch.HalfStorage") == 0) s->dt = WDT_F16;
    else if (strcmp(cls, "torch.BFloat16Storage") == 0) s->dt = WDT_BF16;
    else if (strcmp(cls, "torch.LongStorage") == 0 || strcmp(cls, "torch.IntStorage") == 0 ||
             strcmp(cls, "torch.ShortStorage") == 0 || strcmp(cls, "torch.CharStorage") == 0 ||
             strcmp(cls, "torch.ByteStorage") == 0 || strcmp(cls, "torch.BoolStorage") == 0)
        s->dt = -1;   /* integer buffers (input_resolution, position_ids): not weights */
    else s->dt = -2;  /* float64, complex, quantized...: skipped with a warning */
    s->s = cs_strdup(pid->it[2]->s);
    if (!s->s) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    s->numel = (uint64_t)pid->it[4]->i;
    *out = s;
    return CARSEG_OK;
}

static carseg_status do_reduce(unpickler *u, pval *fn, pval *args, pval **out) {
    if (args->k != PV_TUPLE) PERR("%s: data.pkl: REDUCE arguments are not a tuple", u->path);
    const char *name = fn->k == PV_GLOBAL ? fn->s : "";
    if (strcmp(name, "torch._utils._rebuild_tensor_v2") == 0 || strcmp(name, "torch._utils._rebuild_tensor") == 0) {
        if (args->n < 4 || args->it[0]->k != PV_STORAGE || args->it[1]->k != PV_INT)
            PERR("%s: data.pkl: bad _rebuild_tensor_v2 arguments", u->path);
        pval *t = pv_new(u, PV_TENSOR);
        if (!t) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
        int nd1 = 0, nd2 = 0;
        if (!tuple_int(args->it[2], t->size, &nd1) || !tuple_int(args->it[3], t->stride, &nd2) || nd1 != nd2)
            PERR("%s: data.pkl: tensor size/stride are not matching tuples of at most 4 ints", u->path);
        t->storage = args->it[0];
        t->offset = args->it[1]->i;
        t->ndim = nd1;
        *out = t;
        return CARSEG_OK;
    }
    if (strcmp(name, "torch._utils._rebuild_parameter") == 0 ||
        strcmp(name, "torch._utils._rebuild_parameter_with_state") == 0) {
        if (args->n < 1 || args->it[0]->k != PV_TENSOR) PERR("%s: data.pkl: bad _rebuild_parameter arguments", u->path);
        *out = args->it[0];
        return CARSEG_OK;
    }
    if (strcmp(name, "collections.OrderedDict") == 0 || strcmp(name, "builtins.dict") == 0) {
        pval *d = pv_new(u, PV_DICT);
        if (!d) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
        *out = d;
        return CARSEG_OK;
    }
    /* anything else: an opaque value; a tensor hidden in it is reported when the walk meets it */
    pval *r = pv_new(u, PV_REDUCED);
    if (!r) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    r->cls = fn;
    r->state = args;
    *out = r;
    return CARSEG_OK;
}

static carseg_status need(unpickler *u, size_t n, const char *op) {
    size_t base = u->mn ? u->marks[u->mn - 1] : 0;
    if (u->sn < base + n) PERR("%s: data.pkl: stack underflow at %s", u->path, op);
    return CARSEG_OK;
}

static carseg_status pop_mark(unpickler *u, size_t *mark, const char *op) {
    if (!u->mn) PERR("%s: data.pkl: %s without MARK", u->path, op);
    *mark = u->marks[--u->mn];
    return CARSEG_OK;
}

static carseg_status mk_str(unpickler *u, const uint8_t *s, size_t n) {
    pval *v = pv_new(u, PV_STR);
    if (!v || !(v->s = malloc(n + 1)) || !push(u, v)) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    memcpy(v->s, s, n);
    v->s[n] = 0;
    return CARSEG_OK;
}

static carseg_status mk_int(unpickler *u, int64_t x) {
    pval *v = pv_new(u, PV_INT);
    if (!v) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    v->i = x;
    if (!push(u, v)) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    return CARSEG_OK;
}

static carseg_status memo_put(unpickler *u, uint64_t idx) {
    if (!u->sn) PERR("%s: data.pkl: memo store of an empty stack", u->path);
    if (idx > u->memo_max) PERR("%s: data.pkl: memo index %llu too large", u->path, (unsigned long long)idx);
    if (idx >= u->memo_n) {
        size_t n = (size_t)idx + 1 > u->memo_n * 2 ? (size_t)idx + 1 : u->memo_n * 2;
        if (n > u->memo_max + 1) n = u->memo_max + 1;
        pval **m = realloc(u->memo, n * sizeof *m);
        if (!m) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
        memset(m + u->memo_n, 0, (n - u->memo_n) * sizeof *m);
        u->memo = m;
        u->memo_n = n;
    }
    if (!u->memo[idx]) u->memo_cnt++;
    u->memo[idx] = u->stack[u->sn - 1];
    return CARSEG_OK;
}

static carseg_status memo_get(unpickler *u, uint64_t idx) {
    if (idx >= u->memo_n || !u->memo[idx]) PERR("%s: data.pkl: memo index %llu not set", u->path, (unsigned long long)idx);
    if (!push(u, u->memo[idx])) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    return CARSEG_OK;
}

/* takes the items above the top mark into a new tuple/list */
static carseg_status collect(unpickler *u, pv_kind k, const char *op) {
    size_t m = 0;
    TRY(pop_mark(u, &m, op));
    if (m > u->sn) PERR("%s: data.pkl: bad MARK", u->path);
    pval *t = pv_new(u, k);
    if (!t) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    for (size_t i = m; i < u->sn; i++)
        if (!pv_push_item(t, u->stack[i])) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    u->sn = m;
    if (!push(u, t)) return set_err(CARSEG_ENOMEM, "%s: out of memory", u->path);
    return CARSEG_OK;
}

static carseg_status unpickle(unpickler *u, pval **result) {
    const char *P = u->path;
    for (;;) {
        if (u->p >= u->end) PERR("%s: data.pkl truncated (no STOP)", P);
        uint8_t op = *u->p++;
        size_t avail = (size_t)(u->end - u->p);
#define NEED(k) do { if (avail < (size_t)(k)) PERR("%s: data.pkl truncated inside opcode 0x%02x", P, op); } while (0)
#define OOM() set_err(CARSEG_ENOMEM, "%s: out of memory", P)
        switch (op) {
        case 0x80: NEED(1); u->p++; break;                         /* PROTO */
        case 0x95: NEED(8); u->p += 8; break;                      /* FRAME */
        case '.':                                                  /* STOP */
            if (u->sn < 1) PERR("%s: data.pkl: STOP with an empty stack", P);
            *result = u->stack[u->sn - 1];
            return CARSEG_OK;
        case '(':                                                  /* MARK */
            if (u->mn == u->mcap) {
                size_t c = u->mcap ? u->mcap * 2 : 64;
                size_t *m = realloc(u->marks, c * sizeof *m);
                if (!m) return OOM();
                u->marks = m;
                u->mcap = c;
            }
            u->marks[u->mn++] = u->sn;
            break;
        case '0': TRY(need(u, 1, "POP")); u->sn--; break;          /* POP */
        case '1': { size_t m = 0; TRY(pop_mark(u, &m, "POP_MARK")); if (m > u->sn) PERR("%s: data.pkl: bad MARK", P); u->sn = m; break; }
        case '2': TRY(need(u, 1, "DUP")); if (!push(u, u->stack[u->sn - 1])) return OOM(); break;
        case 'N': if (!push(u, pv_new(u, PV_NONE))) return OOM(); break;
        case 0x88: case 0x89: {                                    /* NEWTRUE / NEWFALSE */
            pval *v = pv_new(u, PV_BOOL);
            if (!v) return OOM();
            v->i = op == 0x88;
            if (!push(u, v)) return OOM();
            break;
        }
        case 'J': { NEED(4); int32_t x = (int32_t)rd32(u->p); u->p += 4; TRY(mk_int(u, x)); break; }
        case 'K': NEED(1); TRY(mk_int(u, u->p[0])); u->p += 1; break;
        case 'M': NEED(2); TRY(mk_int(u, rd16(u->p))); u->p += 2; break;
        case 0x8a: {                                               /* LONG1 */
            NEED(1);
            size_t n = u->p[0];
            NEED(1 + n);
            if (n > 8) PERR("%s: data.pkl: integer wider than 64 bits", P);
            uint64_t x = 0;
            for (size_t i = 0; i < n; i++) x |= (uint64_t)u->p[1 + i] << (8 * i);
            if (n && n < 8 && (u->p[n] & 0x80)) x |= ~(uint64_t)0 << (8 * n);   /* sign-extend */
            u->p += 1 + n;
            TRY(mk_int(u, (int64_t)x));
            break;
        }
        case 'G': {                                                /* BINFLOAT, big-endian */
            NEED(8);
            uint64_t b = 0;
            for (int i = 0; i < 8; i++) b = b << 8 | u->p[i];
            u->p += 8;
            pval *v = pv_new(u, PV_FLOAT);
            if (!v) return OOM();
            memcpy(&v->f, &b, 8);
            if (!push(u, v)) return OOM();
            break;
        }
        case 'X': case 'T': case 'B': {                            /* BINUNICODE, BINSTRING, BINBYTES */
            NEED(4);
            size_t n = rd32(u->p);
            NEED(4 + n);
            TRY(mk_str(u, u->p + 4, n));
            u->p += 4 + n;
            break;
        }
        case 0x8c: case 'U': case 'C': {                           /* SHORT_BINUNICODE/STRING/BYTES */
            NEED(1);
            size_t n = u->p[0];
            NEED(1 + n);
            TRY(mk_str(u, u->p + 1, n));
            u->p += 1 + n;
            break;
        }
        case 0x8d: case 0x8e: {                                    /* BINUNICODE8, BINBYTES8 */
            NEED(8);
            uint64_t n = rd64(u->p);
            if (n > avail - 8) PERR("%s: data.pkl truncated inside a string", P);
            TRY(mk_str(u, u->p + 8, (size_t)n));
            u->p += 8 + n;
            break;
        }
        case ')': if (!push(u, pv_new(u, PV_TUPLE))) return OOM(); break;
        case ']': if (!push(u, pv_new(u, PV_LIST))) return OOM(); break;
        case '}': if (!push(u, pv_new(u, PV_DICT))) return OOM(); break;
        case 't': TRY(collect(u, PV_TUPLE, "TUPLE")); break;
        case 'l': TRY(collect(u, PV_LIST, "LIST")); break;
        case 0x85: case 0x86: case 0x87: {                         /* TUPLE1..3 */
            size_t n = (size_t)(op - 0x84);
            TRY(need(u, n, "TUPLEn"));
            pval *t = pv_new(u, PV_TUPLE);
            if (!t) return OOM();
            for (size_t i = u->sn - n; i < u->sn; i++) if (!pv_push_item(t, u->stack[i])) return OOM();
            u->sn -= n;
            if (!push(u, t)) return OOM();
            break;
        }
        case 'a': {                                                /* APPEND */
            TRY(need(u, 2, "APPEND"));
            pval *l = u->stack[u->sn - 2];
            if (l->k != PV_LIST) PERR("%s: data.pkl: APPEND to a non-list", P);
            if (!pv_push_item(l, u->stack[u->sn - 1])) return OOM();
            u->sn--;
            break;
        }
        case 'e': {                                                /* APPENDS */
            size_t m = 0;
            TRY(pop_mark(u, &m, "APPENDS"));
            if (m < 1 || m > u->sn) PERR("%s: data.pkl: bad MARK", P);
            pval *l = u->stack[m - 1];
            if (l->k != PV_LIST) PERR("%s: data.pkl: APPENDS to a non-list", P);
            for (size_t i = m; i < u->sn; i++) if (!pv_push_item(l, u->stack[i])) return OOM();
            u->sn = m;
            break;
        }
        case 'd': case 'u': {                                      /* DICT, SETITEMS */
            size_t m = 0;
            TRY(pop_mark(u, &m, op == 'd' ? "DICT" : "SETITEMS"));
            if (m > u->sn || (u->sn - m) % 2 || (op == 'u' && m < 1)) PERR("%s: data.pkl: bad MARK", P);
            pval *d = op == 'd' ? pv_new(u, PV_DICT) : u->stack[m - 1];
            if (!d) return OOM();
            if (d->k != PV_DICT) PERR("%s: data.pkl: SETITEMS on a non-dict", P);
            for (size_t i = m; i < u->sn; i += 2) if (!dict_set(d, u->stack[i], u->stack[i + 1])) return OOM();
            u->sn = m;
            if (op == 'd' && !push(u, d)) return OOM();
            break;
        }
        case 's': {                                                /* SETITEM */
            TRY(need(u, 3, "SETITEM"));
            pval *d = u->stack[u->sn - 3];
            if (d->k != PV_DICT) PERR("%s: data.pkl: SETITEM on a non-dict", P);
            if (!dict_set(d, u->stack[u->sn - 2], u->stack[u->sn - 1])) return OOM();
            u->sn -= 2;
            break;
        }
        case 'c': {                                                /* GLOBAL "module\nname\n" */
            const uint8_t *nl1 = memchr(u->p, '\n', avail);
            if (!nl1) PERR("%s: data.pkl truncated inside GLOBAL", P);
            const uint8_t *nl2 = memchr(nl1 + 1, '\n', (size_t)(u->end - nl1 - 1));
            if (!nl2) PERR("%s: data.pkl truncated inside GLOBAL", P);
            size_t a = (size_t)(nl1 - u->p), b = (size_t)(nl2 - nl1 - 1);
            pval *g = pv_new(u, PV_GLOBAL);
            if (!g || !(g->s = malloc(a + b + 2))) return OOM();
            memcpy(g->s, u->p, a);
            g->s[a] = '.';
            memcpy(g->s + a + 1, nl1 + 1, b);
            g->s[a + 1 + b] = 0;
            u->p = nl2 + 1;
            if (!push(u, g)) return OOM();
            break;
        }
        case 0x93: {                                               /* STACK_GLOBAL */
            TRY(need(u, 2, "STACK_GLOBAL"));
            pval *mod = u->stack[u->sn - 2], *nm = u->stack[u->sn - 1];
            if (mod->k != PV_STR || nm->k != PV_STR) PERR("%s: data.pkl: STACK_GLOBAL of non-strings", P);
            size_t a = strlen(mod->s), b = strlen(nm->s);
            pval *g = pv_new(u, PV_GLOBAL);
            if (!g || !(g->s = malloc(a + b + 2))) return OOM();
            memcpy(g->s, mod->s, a);
            g->s[a] = '.';
            memcpy(g->s + a + 1, nm->s, b + 1);
            u->sn -= 2;
            if (!push(u, g)) return OOM();
            break;
        }
        case 'Q': {                                                /* BINPERSID */
            TRY(need(u, 1, "BINPERSID"));
            pval *s = NULL;
            TRY(persistent_load(u, u->stack[u->sn - 1], &s));
            u->stack[u->sn - 1] = s;
            break;
        }
        case 'R': {                                                /* REDUCE */
            TRY(need(u, 2, "REDUCE"));
            pval *r = NULL;
            TRY(do_reduce(u, u->stack[u->sn - 2], u->stack[u->sn - 1], &r));
            u->sn -= 2;
            if (!push(u, r)) return OOM();
            break;
        }
        case 0x81: {                                               /* NEWOBJ */
            TRY(need(u, 2, "NEWOBJ"));
            pval *o = pv_new(u, PV_OBJ);
            if (!o) return OOM();
            o->cls = u->stack[u->sn - 2];
            u->sn -= 2;
            if (!push(u, o)) return OOM();
            break;
        }
        case 'b': {                                                /* BUILD */
            TRY(need(u, 2, "BUILD"));
            pval *o = u->stack[u->sn - 2], *st = u->stack[u->sn - 1];
            if (o->k == PV_OBJ) o->state = st;   /* other targets (dicts, tensors): state ignored */
            u->sn--;
            break;
        }
        case 0x94: TRY(memo_put(u, u->memo_cnt)); break;            /* MEMOIZE */
        case 'q': NEED(1); TRY(memo_put(u, u->p[0])); u->p += 1; break;
        case 'r': NEED(4); TRY(memo_put(u, rd32(u->p))); u->p += 4; break;
        case 'h': NEED(1); TRY(memo_get(u, u->p[0])); u->p += 1; break;
        case 'j': NEED(4); TRY(memo_get(u, rd32(u->p))); u->p += 4; break;
        default:
            PERR("%s: data.pkl: unsupported pickle opcode 0x%02x at byte %zu", P, op,
                 (size_t)(u->p - 1 - u->start));
        }
#undef NEED
#undef OOM
    }
}

// ---------------------------------------------------------------------------------------------
// tensors

typedef struct {
    const zarchive *z;
    const char *prefix;
    wfile *f;
    uint64_t budget;        /* float elements we may still allocate (bounded by the file size) */
    uint64_t visits;        /* walk steps left: shared sub-objects must not blow the walk up */
} tctx;

static carseg_status materialize(tctx *c, const pval *t, const char *name) {
    const char *P = c->z->path;
    const pval *s = t->storage;
    if (s->dt == -1) return CARSEG_OK;   /* integer / bool storage: not a weight (e.g. input_resolution) */
    if (s->dt < 0) {   /* skipped with a warning: if CLIP needs it, clip_load names it as missing */
        cs_log(CARSEG_LOG_WARN, "%s: skipping tensor %s: unsupported storage type %s (need float32, float16 "
               "or bfloat16)", P, name, s->dtname);
        return CARSEG_OK;
    }
    size_t esz = wdt_size((wdtype)s->dt);
    char ename[512];
    snprintf(ename, sizeof ename, "%s/data/%s", c->prefix, s->s);
    zentry *e = zip_find(c->z, ename);
    if (!e) return set_err(CARSEG_EFORMAT, "%s: storage %s missing from the archive (tensor %s)", P, ename, name);
    char what[300];
    snprintf(what, sizeof what, " (tensor %s)", name);
    const uint8_t *data;
    TRY(zip_data(c->z, e, &data, what));
    if (s->numel > e->usize / esz)
        return set_err(CARSEG_EFORMAT, "%s: storage %s holds %llu bytes, %llu %s elements claimed (tensor %s)", P,
                       ename, (unsigned long long)e->usize, (unsigned long long)s->numel, s->dtname, name);
    uint64_t numel = s->numel;
    size_t count = 1;
    uint64_t maxoff = 0;
    if (t->offset < 0) return set_err(CARSEG_EFORMAT, "%s: negative storage offset (tensor %s)", P, name);
    int empty = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->size[d] < 0 || t->stride[d] < 0)
            return set_err(CARSEG_EFORMAT, "%s: negative size or stride (tensor %s)", P, name);
        if (t->size[d] == 0) empty = 1;
    }
    if (empty) count = 0;
    for (int d = 0; d < t->ndim && !empty; d++) {
        uint64_t span;
        if (!cs_mul_ok(&count, count, (size_t)t->size[d], 1) || count > numel ||
            __builtin_mul_overflow((uint64_t)(t->size[d] - 1), (uint64_t)t->stride[d], &span) ||
            __builtin_add_overflow(maxoff, span, &maxoff))
            return set_err(CARSEG_EFORMAT, "%s: view larger than its storage of %llu elements (tensor %s)", P,
                           (unsigned long long)numel, name);
    }
    if (count > 0 && ((uint64_t)t->offset >= numel || maxoff >= numel - (uint64_t)t->offset))
        return set_err(CARSEG_EFORMAT, "%s: view of %zu elements at offset %lld exceeds its storage of %llu "
                       "elements (tensor %s)", P, count, (long long)t->offset, (unsigned long long)numel, name);
    if (count > c->budget)
        return set_err(CARSEG_EFORMAT, "%s: tensors alias more data than the file holds (tensor %s)", P, name);
    c->budget -= count;
    float *out = cs_malloc(count * sizeof(float) + 1);
    char *nm = cs_strdup(name);
    if (!out || !nm) { cs_free(out); free(nm); return set_err(CARSEG_ENOMEM, "%s: out of memory (tensor %s)", P, name); }
    /* strided gather (contiguous in the common case: one conversion call) */
    int64_t sz[4] = {1, 1, 1, 1}, sd[4] = {0, 0, 0, 0};
    int nd = t->ndim;
    for (int d = 0; d < nd; d++) { sz[4 - nd + d] = t->size[d]; sd[4 - nd + d] = t->stride[d]; }
    int contiguous = 1;
    int64_t expect = 1;
    for (int d = 3; d >= 0; d--) {
        if (sz[d] != 1 && sd[d] != expect) contiguous = 0;
        expect *= sz[d];
    }
    const uint8_t *base = data + (size_t)t->offset * esz;
    if (contiguous) {
        wdt_to_f32((wdtype)s->dt, base, count, out);
    } else if (count) {
        size_t k = 0;
        for (int64_t a = 0; a < sz[0]; a++)
            for (int64_t b = 0; b < sz[1]; b++)
                for (int64_t i = 0; i < sz[2]; i++)
                    for (int64_t j = 0; j < sz[3]; j++) {
                        size_t off = (size_t)(a * sd[0] + b * sd[1] + i * sd[2] + j * sd[3]);
                        wdt_to_f32((wdtype)s->dt, base + off * esz, 1, out + k++);
                    }
    }
    return wfile_add(c->f, nm, t->ndim, t->size, (wdtype)s->dt, out);
}

/* TorchScript: the module object tree; names are attribute paths. */
static carseg_status walk(tctx *c, const pval *v, char *name, size_t nlen, size_t cap, int depth) {
    if (!c->visits--)
        return set_err(CARSEG_EFORMAT, "%s: module tree revisits shared objects too often (tensor %s)", c->z->path, name);
    if (v->k == PV_TENSOR) return materialize(c, v, name);
    if (v->k == PV_REDUCED && v->cls && v->cls->k == PV_GLOBAL && strncmp(v->cls->s, "torch._utils._rebuild", 21) == 0)
        return set_err(CARSEG_EFORMAT, "%s: unsupported tensor kind %s (tensor %s)", c->z->path, v->cls->s, name);
    if (v->k != PV_OBJ && v->k != PV_DICT) return CARSEG_OK;
    const pval *d = v->k == PV_OBJ ? v->state : v;
    if (!d || d->k != PV_DICT) return CARSEG_OK;
    if (depth > 32) return set_err(CARSEG_EFORMAT, "%s: module tree nested too deep (tensor %s)", c->z->path, name);
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const pval *k = d->it[i], *x = d->it[i + 1];
        if (k->k != PV_STR) continue;
        if (x->k != PV_TENSOR && x->k != PV_OBJ && x->k != PV_REDUCED) continue;   /* training flags, hooks, ints, ... */
        size_t kl = strlen(k->s);
        if (nlen + kl + 2 > cap) return set_err(CARSEG_EFORMAT, "%s: tensor name too long (tensor %s)", c->z->path, name);
        size_t n2 = nlen;
        if (nlen) name[n2++] = '.';
        memcpy(name + n2, k->s, kl + 1);
        TRY(walk(c, x, name, n2 + kl, cap, depth + 1));
        name[nlen] = 0;
    }
    return CARSEG_OK;
}

carseg_status tz_read(wfile *f, const uint8_t *buf, size_t len) {
    zarchive z = {f->path, buf, len, NULL, 0};
    carseg_status st = zip_open(&z);
    if (st != CARSEG_OK) { free(z.e); return st; }
    /* <prefix>/data.pkl */
    zentry *pk = NULL;
    for (size_t i = 0; i < z.n && !pk; i++) {
        zentry *e = &z.e[i];
        const char *sl = memchr(e->name, '/', e->name_len);
        if (sl && e->name_len - (size_t)(sl - e->name) == 9 && memcmp(sl, "/data.pkl", 9) == 0 && sl > e->name)
            pk = e;
    }
    if (!pk) { free(z.e); return set_err(CARSEG_EFORMAT, "%s: zip archive has no <name>/data.pkl: not a PyTorch file", f->path); }
    char prefix[256];
    size_t pl = pk->name_len - 9;
    if (pl >= sizeof prefix) { free(z.e); return set_err(CARSEG_EFORMAT, "%s: archive prefix too long", f->path); }
    memcpy(prefix, pk->name, pl);
    prefix[pl] = 0;
    /* torch >= 2.1 records the byte order of the storages; the storages are read little-endian */
    char bo_name[300];
    snprintf(bo_name, sizeof bo_name, "%s/byteorder", prefix);
    zentry *bo = zip_find(&z, bo_name);
    const uint8_t *bod;
    if (bo && zip_data(&z, bo, &bod, "") == CARSEG_OK && bo->usize >= 3 && memcmp(bod, "big", 3) == 0) {
        free(z.e);
        return set_err(CARSEG_EFORMAT, "%s: big-endian storages (byteorder \"big\") are not supported", f->path);
    }
    const uint8_t *pkl;
    st = zip_data(&z, pk, &pkl, "");
    if (st != CARSEG_OK) { free(z.e); return st; }
    unpickler u = {0};
    u.path = f->path;
    u.p = u.start = pkl;
    u.end = pkl + pk->usize;
    u.memo_max = pk->usize + 16;
    pval *root = NULL;
    st = unpickle(&u, &root);
    if (st == CARSEG_OK) {
        tctx c = {&z, prefix, f, (uint64_t)len + 1024, 4 * (uint64_t)u.narena + 1024};
        char name[1024] = {0};
        if (root->k == PV_OBJ) {
            f->format = WF_TORCHSCRIPT;
            st = walk(&c, root, name, 0, sizeof name, 0);
        } else if (root->k == PV_DICT) {
            f->format = WF_TORCH_STATE;
            pval *sd = dict_get(root, "state_dict");   /* training checkpoints wrap the weights */
            if (sd && sd->k == PV_DICT) root = sd;
            for (size_t i = 0; i + 1 < root->n && st == CARSEG_OK; i += 2) {
                const pval *k = root->it[i], *x = root->it[i + 1];
                if (k->k != PV_STR) continue;
                if (x->k == PV_TENSOR) st = materialize(&c, x, k->s);
                else if (x->k == PV_REDUCED && x->cls && x->cls->k == PV_GLOBAL &&
                         strncmp(x->cls->s, "torch._utils._rebuild", 21) == 0)
                    st = set_err(CARSEG_EFORMAT, "%s: unsupported tensor kind %s (tensor %s)", f->path, x->cls->s, k->s);
            }
        } else {
            st = set_err(CARSEG_EFORMAT, "%s: data.pkl holds neither a module nor a state dict", f->path);
        }
    }
    unpickler_free(&u);
    free(z.e);
    return st;
}
