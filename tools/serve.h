/* serve.h — `carseg serve` internals. Three parts:
 *   serve_http.c  the HTTP side on libmicrohttpd: routing, multipart bodies (MHD's post
 *                 processor), limits, the request queue and its compute threads, timeouts,
 *                 clean shutdown, one log line per request;
 *   serve_car.c   the compute side, on the public carseg API only (carseg.h): /v1/segment,
 *                 /v1/embed, /v1/models;
 *   serve_util.c  what both share: a growable byte buffer with JSON helpers, the parsed form,
 *                 the reply.
 * The page (GET /) is tools/serve_page.html, embedded as serve_page.h (scripts/gen_serve_page.sh). */
#ifndef CARSEG_SERVE_H
#define CARSEG_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "carseg.h"

typedef struct {
    const char *host;          /* listen address (default 127.0.0.1) */
    int port;                  /* 0: any free port (see port_file) */
    const char *port_file;     /* written with the bound port once listening (tests) */
    const char *generator, *classifier, *vocab;
    const char *sam;           /* --sam MODEL: HQ-SAM / SAM for CaR + SAM; NULL: none */
    int max_sam_points;        /* the most generator points per side a request may ask for */
    carseg_precision precision;
    int threads;               /* kernel threads per computation (carseg_set_threads; 0 = all) */
    int workers;               /* requests computed at the same time */
    size_t max_body;           /* request body bytes */
    int64_t max_pixels;        /* image pixels (w * h) */
    int max_classes;           /* classes / phrases a request may give */
    double max_mask_bytes;     /* pixels x (classes + 1): the masks a request may make */
    int max_queue;             /* requests waiting for a compute thread; past it: 503 */
    int max_connections;
    int idle_timeout_s;        /* a connection silent this long is closed */
    int request_timeout_s;     /* a body still arriving after this long: dropped; a request
                                  that waited this long in the queue: 503 */
} serve_cfg;

// ---------------------------------------------------------------------------------------------
// byte buffer (serve_util.c). On allocation failure `oom` is set and later appends are no-ops.

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

void sb_put(sbuf *b, const void *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a JSON string literal of s (quotes added; control characters escaped; invalid UTF-8 bytes
 * become U+FFFD so the output is always valid JSON) */
void sb_json_str(sbuf *b, const char *s);
/* a float as JSON: %.9g (finite), null otherwise */
void sb_json_num(sbuf *b, double v);
void sb_free(sbuf *b);

// ---------------------------------------------------------------------------------------------
// the parsed request body: form fields in arrival order

typedef struct {
    char *name, *filename, *ctype;
    uint8_t *data;             /* always NUL-terminated (data[len] == 0) */
    size_t len, cap;
} serve_field;

typedef struct {
    serve_field *v;
    int n, cap;
    size_t text_bytes;         /* bytes of fields without a file name */
} serve_form;

void form_free(serve_form *f);
const serve_field *form_get(const serve_form *f, const char *name);   /* first one, or NULL */
const char *form_str(const serve_form *f, const char *name);          /* its text, or NULL */
int form_count(const serve_form *f, const char *name);

// ---------------------------------------------------------------------------------------------
// the answer to a request

typedef struct {
    int status;
    const char *ctype;         /* static string */
    uint8_t *body;             /* malloc'd (handed to MHD, which frees it) */
    size_t len;
    char filename[96];         /* Content-Disposition file name, or "" */
} serve_reply;

/* body = the buffer's bytes (taken over); a buffer that ran out of memory gives a 500 */
void reply_take(serve_reply *r, int status, const char *ctype, sbuf *body);
/* {"error": "..."} */
void reply_err(serve_reply *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void reply_free(serve_reply *r);

double serve_now_ms(void);

// ---------------------------------------------------------------------------------------------
// compute side (serve_car.c)

typedef struct serve_engine serve_engine;   /* the models: loaded once, shared */
typedef struct serve_worker serve_worker;   /* one per compute thread */

carseg_status serve_engine_open(const serve_cfg *cfg, serve_engine **out);
void serve_engine_close(serve_engine *e);
/* 1 when the server holds a SAM model (--sam) */
int serve_engine_has_sam(const serve_engine *e);
carseg_status serve_worker_new(serve_engine *e, serve_worker **out);
void serve_worker_free(serve_worker *w);

/* Cheap checks before a request is queued (fields known, numbers in range, class count under the
 * limit, an image present). 0: fine; else *out holds the 4xx answer. */
int serve_segment_check(const serve_engine *e, const serve_form *f, serve_reply *out);
int serve_embed_check(const serve_engine *e, const serve_form *f, serve_reply *out);
/* The work itself, on a compute thread. */
void serve_segment(serve_worker *w, const serve_form *f, int want_png, serve_reply *out);
void serve_embed(serve_worker *w, const serve_form *f, serve_reply *out);
/* GET /v1/models */
void serve_models_json(const serve_engine *e, sbuf *b);

// ---------------------------------------------------------------------------------------------
// HTTP side (serve_http.c): serves until SIGINT / SIGTERM; returns the exit code.
int serve_run(const serve_cfg *cfg, serve_engine *e);
/* SIGINT / SIGTERM handlers that only record the signal (any thread may take it: OpenBLAS starts
 * threads before main, so masks cannot route it); SIGPIPE ignored. 0 = done. */
int serve_signals_install(void);

#endif
