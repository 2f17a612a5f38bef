/* util.h — shared plumbing: error reporting, logging, files, timers, NumPy .npy and JSON.
 *
 * Error convention (library-wide): a function that can fail returns carseg_status; on failure
 * it has called set_err(), which formats one line ("FILE: what is wrong") into a thread-local
 * buffer that carseg_last_error() returns. The library never prints to stdout and never exits.
 */
#ifndef CARSEG_UTIL_H
#define CARSEG_UTIL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "carseg.h"

#if defined(__GNUC__)
#define CS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CS_PRINTF(a, b)
#endif

// ---------------------------------------------------------------------------------------------
// errors and logging

/* Records the error message (printf-style) and returns st, so callers write
 * `return set_err(CARSEG_EFORMAT, "%s: truncated header", path);`. */
carseg_status set_err(carseg_status st, const char *fmt, ...) CS_PRINTF(2, 3);
/* Prefixes the current error message with "prefix: " (adds context while unwinding). */
void err_prefix(const char *fmt, ...) CS_PRINTF(1, 2);
/* Log through the user's callback (stderr by default). level: CARSEG_LOG_*. */
void cs_log(int level, const char *fmt, ...) CS_PRINTF(2, 3);

#define TRY(expr) do { carseg_status st_ = (expr); if (st_ != CARSEG_OK) return st_; } while (0)

/* Internal invariant; a failure is a bug in carseg: prints file:line and aborts. */
#define CS_ASSERT(x) do { if (!(x)) cs_assert_fail(__FILE__, __LINE__, #x); } while (0)
void cs_assert_fail(const char *file, int line, const char *expr);

// ---------------------------------------------------------------------------------------------
// memory (NULL on failure; callers turn NULL into CARSEG_ENOMEM)

void *cs_malloc(size_t n);                     /* 64-byte aligned, free with cs_free */
void *cs_calloc(size_t count, size_t size);    /* 64-byte aligned, zeroed, overflow-checked */
void cs_free(void *p);
/* Per-thread spare blocks for call-sized scratch that every call of some kind needs again (a
 * CLIP forward's activations): cs_spare_take returns the calling thread's spare block of this tag
 * when it holds at least n bytes (its size in *cap), else a new cs_malloc block of n bytes (NULL
 * when n == 0); cs_spare_give keeps p as the thread's spare of this tag (the larger of the old and
 * the new; the other is freed). Blocks from the kernel come as fresh pages: page faults and
 * zeroing on every call otherwise. Freed at thread exit and by carseg_release_memory(). */
enum { CS_SPARE_CLIP_ACT = 0, CS_SPARE_GEMM_WORK = 1, CS_SPARE_GEMM_F32 = 2, CS_SPARE_SAM_DEC = 3 };
void *cs_spare_take(int tag, size_t n, size_t *cap);
void cs_spare_give(int tag, void *p, size_t cap);

/* A barrier for the n threads of a team inside one OpenMP parallel region, used instead of
 * `omp barrier` where a region holds many steps (gemm_block: ~10 per transformer block). The
 * waiters spin (pause loop) for up to spin_ns, then sleep (Linux futex; sched_yield elsewhere).
 * libgomp's barriers under OMP_WAIT_POLICY=passive sleep at once, so each costs a wake-up through
 * the kernel; the bounded spin catches a partner that arrives microseconds later and costs a
 * descheduled partner's waiter at most spin_ns of CPU. cs_barrier_init takes spin_ns from
 * CARSEG_SPIN_US (microseconds, read once; default 50; 0 = sleep at once). */
typedef struct {
    atomic_int arrived, gen, sleepers;
    int n;
    long spin_ns;
} cs_barrier;
void cs_barrier_init(cs_barrier *b, int n);
void cs_barrier_wait(cs_barrier *b);
char *cs_strdup(const char *s);
/* a*b*c with overflow check; returns 0 and sets *out only when it fits in size_t */
int cs_mul_ok(size_t *out, size_t a, size_t b, size_t c);

// ---------------------------------------------------------------------------------------------
// files

/* Reads a whole file into a malloc'd, NUL-terminated buffer (free with free()). */
carseg_status read_file(const char *path, uint8_t **data, size_t *len);
/* Atomic write: writes to "path.tmp.PID", fsyncs, renames over path. Nothing half-written. */
carseg_status write_file_atomic(const char *path, const void *data, size_t len);
/* For streaming writers: opens a temp file next to path; commit renames it, abort deletes it. */
typedef struct { FILE *f; char *path; char *tmp; } atomic_file;
carseg_status atomic_open(atomic_file *af, const char *path);
carseg_status atomic_commit(atomic_file *af);   /* closes and renames; on error removes tmp */
void atomic_abort(atomic_file *af);              /* closes and removes tmp; safe to call twice */
int file_exists(const char *path);
carseg_status mkdir_p(const char *path);

// ---------------------------------------------------------------------------------------------
// time

double now_ms(void);   /* monotonic clock in milliseconds */

// ---------------------------------------------------------------------------------------------
// NumPy .npy (format 1.0/2.0/3.0, little-endian, C order)

typedef enum { NPY_F32, NPY_F64, NPY_U8, NPY_I32, NPY_I64, NPY_U16, NPY_BOOL } npy_dtype;
typedef struct {
    npy_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t count;      /* product of shape */
    void *data;        /* malloc'd, count elements of dtype */
} npy_array;

/* Reads any supported .npy; hostile input is rejected with a message naming the file. */
carseg_status npy_read(const char *path, npy_array *out);
/* Reads and converts to float32 (from f32/f64/u8/i32/i64/u16/bool). *out is malloc'd. */
carseg_status npy_read_f32(const char *path, float **out, int *ndim, int64_t shape[8]);
/* Writes atomically. */
carseg_status npy_write(const char *path, npy_dtype dt, const void *data, int ndim,
                        const int64_t *shape);
void npy_free(npy_array *a);

// ---------------------------------------------------------------------------------------------
// JSON (strict RFC 8259 reader into a small DOM; used for safetensors headers, fixtures, journals)

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ } json_type;
typedef struct json json;
struct json {
    json_type type;
    double num;        /* JSON_NUM, JSON_BOOL (0/1) */
    char *str;         /* JSON_STR (NUL-terminated, UTF-8; may contain NUL via \u0000: use len) */
    size_t len;        /* JSON_STR byte length; JSON_ARR/JSON_OBJ number of children */
    char **keys;       /* JSON_OBJ: keys[i] names kids[i] */
    json **kids;       /* JSON_ARR/JSON_OBJ children */
};
/* Parses text[0..len). On error returns NULL and writes "line:col: message" into err. */
json *json_parse(const char *text, size_t len, char *err, size_t errlen);
/* Parses a file; on error sets the carseg error ("path: line:col: ...") and returns NULL. */
json *json_parse_file(const char *path);
void json_free(json *j);
const json *json_get(const json *obj, const char *key);   /* NULL if absent or not an object */
const json *json_at(const json *arr, size_t i);            /* NULL if out of range */
/* Convenience: number/string of a member, or a default. */
double json_num(const json *obj, const char *key, double dflt);
const char *json_str(const json *obj, const char *key, const char *dflt);

/* JSON string writer: escapes s into f as a quoted JSON string. */
void json_write_str(FILE *f, const char *s);
/* The next item of a list separated by commas, spaces or tabs ("circle, blur", "q3,q8"): returns
 * its start and length (*n), and moves *p past it; NULL at the end of the list. */
const char *cs_list_next(const char **p, size_t *n);

#endif
