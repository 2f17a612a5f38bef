/* util.c — errors, logging, memory, files, timers, .npy and JSON. See util.h. */
#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// ---------------------------------------------------------------------------------------------
// errors and logging

static _Thread_local char g_err[1024];

const char *carseg_status_str(carseg_status st) {
    switch (st) {
    case CARSEG_OK: return "ok";
    case CARSEG_EIO: return "i/o error";
    case CARSEG_EFORMAT: return "malformed file";
    case CARSEG_EMODEL: return "unsuitable model";
    case CARSEG_ENOMEM: return "out of memory";
    case CARSEG_EINVAL: return "invalid argument";
    case CARSEG_ENET: return "download failed";
    }
    return "unknown status";
}

const char *carseg_last_error(void) { return g_err; }

carseg_status set_err(carseg_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

void err_prefix(const char *fmt, ...) {
    char pre[512], old[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    snprintf(g_err, sizeof g_err, "%s: %s", pre, old);
}

static void default_log(int level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "carseg: %s: %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

static carseg_log_fn g_log_fn = default_log;
static void *g_log_user;
static int g_log_level = CARSEG_LOG_WARN;

void carseg_set_log(carseg_log_fn fn, void *user) { g_log_fn = fn; g_log_user = user; }
void carseg_set_log_level(int max_level) { g_log_level = max_level; }

void cs_log(int level, const char *fmt, ...) {
    if (!g_log_fn || level > g_log_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    g_log_fn(level, msg, g_log_user);
}

void cs_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "carseg: internal error at %s:%d: assertion '%s' failed\n", file, line, expr);
    abort();
}

static int g_threads;
void carseg_set_threads(int n) {
    g_threads = n > 0 ? n : 0;
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#endif
}
int carseg_get_threads(void) {
#ifdef _OPENMP
    return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

// ---------------------------------------------------------------------------------------------
// memory

void *cs_malloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 1) != 0) return NULL;
    return p;
}
/* Per-thread spare blocks (util.h): one per tag and thread, handed back to the same thread's next
 * call; freed at thread exit and by carseg_release_memory. Off under AddressSanitizer, so that a
 * use after give stays visible. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CS_UNDER_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CS_UNDER_ASAN 1
#endif
#ifndef CS_UNDER_ASAN
#include <pthread.h>
#define CS_SPARE_TAGS 4
typedef struct {
    void *p[CS_SPARE_TAGS];
    size_t n[CS_SPARE_TAGS];
} spare_set;
static pthread_key_t g_spare_key;
static pthread_once_t g_spare_once = PTHREAD_ONCE_INIT;
static int g_spare_ok;
static void spare_destroy(void *v) {
    spare_set *s = v;
    for (int i = 0; i < CS_SPARE_TAGS; i++) cs_free(s->p[i]);
    free(s);
}
static void spare_key_init(void) { g_spare_ok = pthread_key_create(&g_spare_key, spare_destroy) == 0; }
static spare_set *spare_get(int create) {
    pthread_once(&g_spare_once, spare_key_init);
    if (!g_spare_ok) return NULL;
    spare_set *s = pthread_getspecific(g_spare_key);
    if (!s && create) {
        s = calloc(1, sizeof *s);
        if (s && pthread_setspecific(g_spare_key, s) != 0) {
            free(s);
            s = NULL;
        }
    }
    return s;
}
#endif

void *cs_spare_take(int tag, size_t n, size_t *cap) {
#ifndef CS_UNDER_ASAN
    spare_set *s = tag >= 0 && tag < CS_SPARE_TAGS ? spare_get(0) : NULL;
    if (s && s->p[tag] && s->n[tag] >= n) {
        void *p = s->p[tag];
        *cap = s->n[tag];
        s->p[tag] = NULL;
        s->n[tag] = 0;
        return p;
    }
#else
    (void)tag;
#endif
    *cap = 0;
    if (!n) return NULL;
    void *p = cs_malloc(n);
    if (p) *cap = n;
    return p;
}

void cs_spare_give(int tag, void *p, size_t cap) {
    if (!p) return;
#ifndef CS_UNDER_ASAN
    spare_set *s = tag >= 0 && tag < CS_SPARE_TAGS ? spare_get(1) : NULL;
    if (s) {
        if (s->p[tag] && s->n[tag] >= cap) {   /* keep the larger block */
            cs_free(p);
            return;
        }
        cs_free(s->p[tag]);
        s->p[tag] = p;
        s->n[tag] = cap;
        return;
    }
#else
    (void)tag, (void)cap;
#endif
    cs_free(p);
}

void carseg_release_memory(void) {
#ifndef CS_UNDER_ASAN
    spare_set *s = spare_get(0);
    for (int i = 0; s && i < CS_SPARE_TAGS; i++) {
        cs_free(s->p[i]);
        s->p[i] = NULL;
        s->n[i] = 0;
    }
#endif
}

static long g_spin_ns = -1;
void cs_barrier_init(cs_barrier *b, int n) {
    long v = __atomic_load_n(&g_spin_ns, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *e = getenv("CARSEG_SPIN_US");
        v = e && *e ? atol(e) * 1000 : 50000;
        v = v < 0 ? 0 : v > 10000000 ? 10000000 : v;
        __atomic_store_n(&g_spin_ns, v, __ATOMIC_RELAXED);
    }
    atomic_init(&b->arrived, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->sleepers, 0);
    b->n = n;
    b->spin_ns = v;
}

static long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Arrivals are counted; the last arrival resets the count and bumps the generation (release),
 * the others wait for the generation to change (acquire). The count is reset before the bump,
 * so a thread that leaves and arrives at the next barrier at once counts for that one. A waiter
 * registers as a sleeper before its last check of the generation, and the last arrival reads the
 * sleepers after its bump (all sequentially consistent): either the waiter sees the new
 * generation, or the last arrival sees the sleeper and wakes it. */
void cs_barrier_wait(cs_barrier *b) {
    if (b->n <= 1) return;
    const int g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->arrived, 1) == b->n - 1) {
        atomic_store(&b->arrived, 0);
        atomic_fetch_add(&b->gen, 1);
#ifdef __linux__
        if (atomic_load(&b->sleepers) > 0) syscall(SYS_futex, (int *)&b->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
        return;
    }
    if (b->spin_ns > 0) {
        const long t0 = mono_ns();
        for (int i = 1;; i++) {
            if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return;
            cpu_relax();
            if (!(i & 63) && mono_ns() - t0 > b->spin_ns) break;
        }
    }
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->gen) == g) {
#ifdef __linux__
        syscall(SYS_futex, (int *)&b->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
    atomic_fetch_sub(&b->sleepers, 1);
}

void *cs_calloc(size_t count, size_t size) {
    size_t n;
    if (!cs_mul_ok(&n, count, size, 1)) return NULL;
    void *p = cs_malloc(n);
    if (p) memset(p, 0, n);
    return p;
}
void cs_free(void *p) { free(p); }
char *cs_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}
int cs_mul_ok(size_t *out, size_t a, size_t b, size_t c) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r) || __builtin_mul_overflow(r, c, &r)) return 0;
    *out = r;
    return 1;
}

// ---------------------------------------------------------------------------------------------
// files

carseg_status read_file(const char *path, uint8_t **data, size_t *len) {
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(CARSEG_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap + 1);
    if (!buf) { fclose(f); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
    for (;;) {
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap * 2 + 1);
            if (!nb) { free(buf); fclose(f); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return set_err(CARSEG_EIO, "%s: read error", path); }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return CARSEG_OK;
}

carseg_status atomic_open(atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path) + 32;
    af->path = cs_strdup(path);
    af->tmp = malloc(n);
    if (!af->path || !af->tmp) {   /* nothing was created yet: just release */
        free(af->path);
        free(af->tmp);
        memset(af, 0, sizeof *af);
        return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
    }
    snprintf(af->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) {
        carseg_status st = set_err(CARSEG_EIO, "%s: cannot create: %s", af->tmp, strerror(errno));
        atomic_abort(af);
        return st;
    }
    return CARSEG_OK;
}

void atomic_abort(atomic_file *af) {
    if (af->f) { fclose(af->f); af->f = NULL; }
    if (af->tmp) { remove(af->tmp); free(af->tmp); af->tmp = NULL; }
    free(af->path);
    af->path = NULL;
}

carseg_status atomic_commit(atomic_file *af) {
    if (!af->f) return set_err(CARSEG_EINVAL, "atomic_commit: file not open");
    int bad = fflush(af->f) != 0 || ferror(af->f);
    if (!bad) fsync(fileno(af->f));
    bad |= fclose(af->f) != 0;
    af->f = NULL;
    if (bad) {
        carseg_status st = set_err(CARSEG_EIO, "%s: write failed: %s", af->path, strerror(errno));
        atomic_abort(af);
        return st;
    }
    if (rename(af->tmp, af->path) != 0) {
        carseg_status st = set_err(CARSEG_EIO, "%s: cannot rename into place: %s", af->path, strerror(errno));
        atomic_abort(af);
        return st;
    }
    free(af->tmp);
    af->tmp = NULL;
    free(af->path);
    af->path = NULL;
    return CARSEG_OK;
}

carseg_status write_file_atomic(const char *path, const void *data, size_t len) {
    atomic_file af = {0};
    TRY(atomic_open(&af, path));
    if (len && fwrite(data, 1, len, af.f) != len) {
        atomic_abort(&af);
        return set_err(CARSEG_EIO, "%s: write failed", path);
    }
    return atomic_commit(&af);
}

int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

carseg_status mkdir_p(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return set_err(CARSEG_EINVAL, "%s: bad directory name", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return set_err(CARSEG_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return set_err(CARSEG_EIO, "%s: not a directory", path);
    return CARSEG_OK;
}

double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// ---------------------------------------------------------------------------------------------
// .npy

static size_t npy_size(npy_dtype d) {
    switch (d) {
    case NPY_F32: case NPY_I32: return 4;
    case NPY_F64: case NPY_I64: return 8;
    case NPY_U16: return 2;
    case NPY_U8: case NPY_BOOL: return 1;
    }
    return 0;
}
static const char *npy_descr(npy_dtype d) {
    switch (d) {
    case NPY_F32: return "<f4";
    case NPY_F64: return "<f8";
    case NPY_I32: return "<i4";
    case NPY_I64: return "<i8";
    case NPY_U16: return "<u2";
    case NPY_U8: return "|u1";
    case NPY_BOOL: return "|b1";
    }
    return "?";
}

void npy_free(npy_array *a) {
    if (!a) return;
    free(a->data);
    a->data = NULL;
}

/* Finds 'key': in the header dict and returns a pointer just after the colon and spaces. */
static const char *npy_field(const char *hdr, const char *key) {
    const char *p = strstr(hdr, key);
    if (!p) return NULL;
    p += strlen(key);
    while (*p == ' ' || *p == ':') p++;
    return p;
}

carseg_status npy_read(const char *path, npy_array *out) {
    memset(out, 0, sizeof *out);
    uint8_t *buf;
    size_t len;
    TRY(read_file(path, &buf, &len));
    carseg_status st = CARSEG_EFORMAT;
    const char *why = NULL;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) { why = "not a .npy file (bad magic)"; goto bad; }
    int major = buf[6];
    size_t hlen, hoff;
    if (major == 1) { hlen = buf[8] | (size_t)buf[9] << 8; hoff = 10; }
    else if (major == 2 || major == 3) {
        if (len < 12) { why = "truncated header"; goto bad; }
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        hoff = 12;
    } else { why = "unsupported format version"; goto bad; }
    if (hlen > len - hoff || hlen > (1u << 20)) { why = "header length past end of file"; goto bad; }
    char *hdr = malloc(hlen + 1);
    if (!hdr) { st = CARSEG_ENOMEM; why = "out of memory"; goto bad; }
    memcpy(hdr, buf + hoff, hlen);
    hdr[hlen] = 0;
    const char *d = npy_field(hdr, "'descr'"), *fo = npy_field(hdr, "'fortran_order'"),
               *sh = npy_field(hdr, "'shape'");
    if (!d || !fo || !sh) { free(hdr); why = "header lacks descr/fortran_order/shape"; goto bad; }
    static const struct { const char *s; npy_dtype t; } types[] = {
        {"'<f4'", NPY_F32}, {"'<f8'", NPY_F64}, {"'|u1'", NPY_U8}, {"'<u1'", NPY_U8},
        {"'<i4'", NPY_I32}, {"'<i8'", NPY_I64}, {"'<u2'", NPY_U16}, {"'|b1'", NPY_BOOL}};
    int found = 0;
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strncmp(d, types[i].s, strlen(types[i].s)) == 0) { out->dtype = types[i].t; found = 1; }
    if (!found) { free(hdr); why = "unsupported dtype (need <f4 <f8 u1 <i4 <i8 <u2 b1)"; goto bad; }
    int fortran = strncmp(fo, "True", 4) == 0;
    if (!fortran && strncmp(fo, "False", 5) != 0) { free(hdr); why = "bad fortran_order"; goto bad; }
    if (*sh != '(') { free(hdr); why = "bad shape"; goto bad; }
    sh++;
    size_t count = 1;
    out->ndim = 0;
    for (;;) {
        while (*sh == ' ' || *sh == ',') sh++;
        if (*sh == ')') break;
        if (*sh < '0' || *sh > '9' || out->ndim == 8) { free(hdr); why = "bad shape"; goto bad; }
        char *end;
        long long v = strtoll(sh, &end, 10);
        sh = end;
        if (v < 0 || v > (1LL << 40) || !cs_mul_ok(&count, count, (size_t)v, 1)) {
            free(hdr); why = "shape too large"; goto bad;
        }
        out->shape[out->ndim++] = v;
    }
    free(hdr);
    size_t bytes;
    if (!cs_mul_ok(&bytes, count, npy_size(out->dtype), 1) || bytes != len - hoff - hlen) {
        why = "data size does not match the shape (truncated or trailing bytes)";
        goto bad;
    }
    out->count = count;
    out->data = malloc(bytes ? bytes : 1);
    if (!out->data) { st = CARSEG_ENOMEM; why = "out of memory"; goto bad; }
    if (fortran && out->ndim > 1) {
        /* column-major on disk: element (i0..in-1) sits at sum i_k * prod(shape[0..k-1]) */
        size_t es = npy_size(out->dtype), idx[8] = {0};
        const uint8_t *src = buf + hoff + hlen;
        for (size_t c = 0; c < count; c++) {
            size_t off = 0, stride = 1;
            for (int k = 0; k < out->ndim; k++) { off += idx[k] * stride; stride *= (size_t)out->shape[k]; }
            memcpy((uint8_t *)out->data + c * es, src + off * es, es);
            for (int k = out->ndim - 1; k >= 0; k--) {   /* advance the C-order index */
                if (++idx[k] < (size_t)out->shape[k]) break;
                idx[k] = 0;
            }
        }
    } else {
        memcpy(out->data, buf + hoff + hlen, bytes);
    }
    free(buf);
    return CARSEG_OK;
bad:
    free(buf);
    return set_err(st, "%s: %s", path, why);
}

carseg_status npy_read_f32(const char *path, float **out, int *ndim, int64_t shape[8]) {
    npy_array a;
    TRY(npy_read(path, &a));
    float *f = malloc(a.count ? a.count * sizeof(float) : 1);
    if (!f) { npy_free(&a); return set_err(CARSEG_ENOMEM, "%s: out of memory", path); }
    for (size_t i = 0; i < a.count; i++) {
        switch (a.dtype) {
        case NPY_F32: f[i] = ((float *)a.data)[i]; break;
        case NPY_F64: f[i] = (float)((double *)a.data)[i]; break;
        case NPY_I32: f[i] = (float)((int32_t *)a.data)[i]; break;
        case NPY_I64: f[i] = (float)((int64_t *)a.data)[i]; break;
        case NPY_U16: f[i] = ((uint16_t *)a.data)[i]; break;
        case NPY_U8: case NPY_BOOL: f[i] = ((uint8_t *)a.data)[i]; break;
        }
    }
    if (ndim) *ndim = a.ndim;
    if (shape) memcpy(shape, a.shape, sizeof a.shape);
    npy_free(&a);
    *out = f;
    return CARSEG_OK;
}

carseg_status npy_write(const char *path, npy_dtype dt, const void *data, int ndim,
                        const int64_t *shape) {
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", npy_descr(dt));
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(hdr + n, sizeof hdr - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
        count *= (size_t)shape[i];
    }
    if (ndim == 1) n += snprintf(hdr + n, sizeof hdr - n, ",");
    n += snprintf(hdr + n, sizeof hdr - n, "), }");
    size_t total = 10 + n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = n + pad + 1;
    atomic_file af = {0};
    TRY(atomic_open(&af, path));
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 255), (uint8_t)(hlen >> 8)};
    fwrite(pre, 1, 10, af.f);
    fwrite(hdr, 1, n, af.f);
    for (size_t i = 0; i < pad; i++) fputc(' ', af.f);
    fputc('\n', af.f);
    if (count) fwrite(data, npy_size(dt), count, af.f);
    return atomic_commit(&af);
}

// ---------------------------------------------------------------------------------------------
// JSON

typedef struct {
    const char *s, *end, *start;
    char *err;
    size_t errlen;
    int depth;
} jparser;

static json *jfail(jparser *p, const char *msg) {
    if (p->err && p->err[0] == 0) {
        int line = 1, col = 1;
        for (const char *q = p->start; q < p->s && q < p->end; q++) {
            if (*q == '\n') { line++; col = 1; } else col++;
        }
        snprintf(p->err, p->errlen, "%d:%d: %s", line, col, msg);
    }
    return NULL;
}

static void jskip(jparser *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static json *jnew(json_type t) {
    json *j = calloc(1, sizeof *j);
    if (j) j->type = t;
    return j;
}

static int jpush(json *j, json *kid, char *key) {
    if ((j->len & (j->len - 1)) == 0) {  /* grow at powers of two */
        size_t cap = j->len ? j->len * 2 : 4;
        json **k = realloc(j->kids, cap * sizeof *k);
        if (!k) return 0;
        j->kids = k;
        if (j->type == JSON_OBJ) {
            char **ks = realloc(j->keys, cap * sizeof *ks);
            if (!ks) return 0;
            j->keys = ks;
        }
    }
    j->kids[j->len] = kid;
    if (j->type == JSON_OBJ) j->keys[j->len] = key;
    j->len++;
    return 1;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static char *jstring(jparser *p, size_t *outlen) {
    /* p->s at the opening quote */
    p->s++;
    size_t cap = 16, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
    for (;;) {
        if (p->s >= p->end) { free(b); jfail(p, "unterminated string"); return NULL; }
        unsigned char c = (unsigned char)*p->s++;
        if (c == '"') break;
        if (c < 0x20) { free(b); jfail(p, "control character in string"); return NULL; }
        uint32_t cp = c;
        int raw = 1;
        if (c == '\\') {
            if (p->s >= p->end) { free(b); jfail(p, "bad escape"); return NULL; }
            char e = *p->s++;
            raw = 0;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                if (p->end - p->s < 4) { free(b); jfail(p, "bad \\u escape"); return NULL; }
                cp = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hexval(p->s[i]);
                    if (h < 0) { free(b); jfail(p, "bad \\u escape"); return NULL; }
                    cp = cp << 4 | (uint32_t)h;
                }
                p->s += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && p->end - p->s >= 6 && p->s[0] == '\\' && p->s[1] == 'u') {
                    uint32_t lo = 0;
                    int ok = 1;
                    for (int i = 0; i < 4; i++) {
                        int h = hexval(p->s[2 + i]);
                        if (h < 0) ok = 0; else lo = lo << 4 | (uint32_t)h;
                    }
                    if (ok && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        p->s += 6;
                    }
                }
                break;
            }
            default: free(b); jfail(p, "bad escape"); return NULL;
            }
        }
        char tmp[4];
        int k = 0;
        if (raw || cp < 0x80) tmp[k++] = (char)cp;
        else if (cp < 0x800) { tmp[k++] = (char)(0xC0 | cp >> 6); tmp[k++] = (char)(0x80 | (cp & 63)); }
        else if (cp < 0x10000) {
            tmp[k++] = (char)(0xE0 | cp >> 12); tmp[k++] = (char)(0x80 | (cp >> 6 & 63)); tmp[k++] = (char)(0x80 | (cp & 63));
        } else {
            tmp[k++] = (char)(0xF0 | cp >> 18); tmp[k++] = (char)(0x80 | (cp >> 12 & 63));
            tmp[k++] = (char)(0x80 | (cp >> 6 & 63)); tmp[k++] = (char)(0x80 | (cp & 63));
        }
        if (n + k + 1 > cap) {
            cap = cap * 2 + k;
            char *nb = realloc(b, cap);
            if (!nb) { free(b); return NULL; }
            b = nb;
        }
        memcpy(b + n, tmp, k);
        n += k;
    }
    b[n] = 0;
    if (outlen) *outlen = n;
    return b;
}

static json *jvalue(jparser *p) {
    jskip(p);
    if (p->s >= p->end) return jfail(p, "unexpected end of input");
    if (++p->depth > 256) return jfail(p, "nesting too deep");
    json *j = NULL;
    char c = *p->s;
    if (c == '{' || c == '[') {
        int obj = c == '{';
        j = jnew(obj ? JSON_OBJ : JSON_ARR);
        if (!j) return jfail(p, "out of memory");
        p->s++;
        jskip(p);
        if (p->s < p->end && *p->s == (obj ? '}' : ']')) { p->s++; p->depth--; return j; }
        for (;;) {
            char *key = NULL;
            jskip(p);
            if (obj) {
                if (p->s >= p->end || *p->s != '"') { json_free(j); return jfail(p, "expected a key string"); }
                key = jstring(p, NULL);
                if (!key) { json_free(j); return jfail(p, "bad key"); }
                jskip(p);
                if (p->s >= p->end || *p->s != ':') { free(key); json_free(j); return jfail(p, "expected ':'"); }
                p->s++;
            }
            json *kid = jvalue(p);
            if (!kid) { free(key); json_free(j); return NULL; }
            if (!jpush(j, kid, key)) { free(key); json_free(kid); json_free(j); return jfail(p, "out of memory"); }
            jskip(p);
            if (p->s < p->end && *p->s == ',') { p->s++; continue; }
            if (p->s < p->end && *p->s == (obj ? '}' : ']')) { p->s++; break; }
            json_free(j);
            return jfail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    } else if (c == '"') {
        j = jnew(JSON_STR);
        if (!j) return jfail(p, "out of memory");
        j->str = jstring(p, &j->len);
        if (!j->str) { free(j); return jfail(p, "bad string"); }
    } else if (c == 't' && p->end - p->s >= 4 && memcmp(p->s, "true", 4) == 0) {
        j = jnew(JSON_BOOL); if (j) j->num = 1; p->s += 4;
    } else if (c == 'f' && p->end - p->s >= 5 && memcmp(p->s, "false", 5) == 0) {
        j = jnew(JSON_BOOL); p->s += 5;
    } else if (c == 'n' && p->end - p->s >= 4 && memcmp(p->s, "null", 4) == 0) {
        j = jnew(JSON_NULL); p->s += 4;
    } else if (c == 'N' && p->end - p->s >= 3 && memcmp(p->s, "NaN", 3) == 0) {
        j = jnew(JSON_NUM); if (j) j->num = NAN; p->s += 3;   /* Python's json emits NaN */
    } else if ((c == '-' || c == 'I') && p->end - p->s >= 8 + (c == '-') &&
               memcmp(p->s + (c == '-'), "Infinity", 8) == 0) {
        j = jnew(JSON_NUM); if (j) j->num = c == '-' ? -INFINITY : INFINITY; p->s += 8 + (c == '-');
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        char tmp[64];
        size_t k = 0;
        while (p->s + k < p->end && k < sizeof tmp - 1 &&
               strchr("+-0123456789.eE", p->s[k]) != NULL) { tmp[k] = p->s[k]; k++; }
        tmp[k] = 0;
        char *end;
        double v = strtod(tmp, &end);
        if (end == tmp || (size_t)(end - tmp) != k) return jfail(p, "bad number");
        j = jnew(JSON_NUM);
        if (j) j->num = v;
        p->s += k;
    } else {
        return jfail(p, "unexpected character");
    }
    if (!j) return jfail(p, "out of memory");
    p->depth--;
    return j;
}

json *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    jparser p = {text, text + len, text, err, errlen, 0};
    if (err && errlen) err[0] = 0;
    json *j = jvalue(&p);
    if (!j) return NULL;
    jskip(&p);
    if (p.s != p.end) { json_free(j); return jfail(&p, "trailing characters after the value"); }
    return j;
}

json *json_parse_file(const char *path) {
    uint8_t *buf;
    size_t len;
    if (read_file(path, &buf, &len) != CARSEG_OK) return NULL;
    char err[256];
    json *j = json_parse((const char *)buf, len, err, sizeof err);
    free(buf);
    if (!j) set_err(CARSEG_EFORMAT, "%s: invalid JSON at %s", path, err);
    return j;
}

void json_free(json *j) {
    if (!j) return;
    for (size_t i = 0; i < j->len && (j->type == JSON_ARR || j->type == JSON_OBJ); i++) {
        json_free(j->kids[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->kids);
    free(j->keys);
    free(j->str);
    free(j);
}

const json *json_get(const json *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJ) return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (strcmp(obj->keys[i], key) == 0) return obj->kids[i];
    return NULL;
}

const json *json_at(const json *arr, size_t i) {
    if (!arr || (arr->type != JSON_ARR && arr->type != JSON_OBJ) || i >= arr->len) return NULL;
    return arr->kids[i];
}

double json_num(const json *obj, const char *key, double dflt) {
    const json *v = json_get(obj, key);
    return v && (v->type == JSON_NUM || v->type == JSON_BOOL) ? v->num : dflt;
}

const char *json_str(const json *obj, const char *key, const char *dflt) {
    const json *v = json_get(obj, key);
    return v && v->type == JSON_STR ? v->str : dflt;
}

const char *cs_list_next(const char **p, size_t *n) {
    const char *s = *p;
    while (*s == ',' || *s == ' ' || *s == '\t') s++;
    if (!*s) {
        *p = s;
        return NULL;
    }
    const char *e = s;
    while (*e && *e != ',' && *e != ' ' && *e != '\t') e++;
    *n = (size_t)(e - s);
    *p = e;
    return s;
}

void json_write_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}
