/* serve_http.c — `carseg serve`: the HTTP side, on libmicrohttpd (no HTTP parsing of our own).
 *
 * Threads: MHD runs one thread per connection (at most --max-connections); a connection's thread
 * reads the request, parses its multipart body with MHD's post processor into memory (bounded by
 * --max-body), checks it, then queues it for one of the compute threads (--workers) and waits for
 * the answer. A slow or silent client thus only holds its own thread (and is closed after
 * --idle-timeout of silence, or when its body is still arriving after --request-timeout), while
 * the compute threads only ever see complete, checked requests. The queue is bounded
 * (--max-queue: 503 past it) and a request that waited --request-timeout in it gets 503.
 *
 * Shutdown (SIGINT / SIGTERM): the listening socket closes, requests being computed finish and
 * are answered, queued ones and new ones on open connections get 503, then the process exits 0.
 * One log line per request on stderr: method, path, status, milliseconds. */
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "serve.h"
#include "serve_page.h"

typedef enum { EP_PAGE, EP_HEALTH, EP_MODELS, EP_SEGMENT, EP_EMBED } endpoint;

enum { ST_NEW, ST_UPLOAD, ST_QUEUED, ST_RUNNING, ST_DONE };

#define MAX_FIELDS 4096
#define MAX_TEXT_BYTES (1u << 20)   /* all fields that are not files together */

typedef struct req {
    struct req *next;                /* queue link */
    double t0, t_queued;
    char method[16], path[200];
    endpoint ep;
    int state, want_png, status;
    const char *close_why;           /* the connection was dropped: why (for the log) */
    struct MHD_PostProcessor *pp;
    serve_form form;
    size_t received;
    int bad_status;
    char bad_msg[256];
    serve_reply reply;
} req;

typedef struct {
    const serve_cfg *cfg;
    serve_engine *eng;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    req *head, *tail;
    int queued, running, active, draining, stopping;
    long served;
    double t_start;
} server;

// ---------------------------------------------------------------------------------------------
// replies

static enum MHD_Result send_reply(server *S, struct MHD_Connection *c, req *r, serve_reply *rep) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(rep->len, rep->body, MHD_RESPMEM_MUST_FREE);
    if (!resp) { r->close_why = "out of memory"; return MHD_NO; }
    rep->body = NULL;   /* MHD frees it */
    MHD_add_response_header(resp, "Content-Type", rep->ctype ? rep->ctype : "application/octet-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (rep->filename[0]) {
        char cd[160];
        snprintf(cd, sizeof cd, "inline; filename=\"%s\"", rep->filename);
        MHD_add_response_header(resp, "Content-Disposition", cd);
    }
    if (rep->status == 405)
        MHD_add_response_header(resp, "Allow", r->ep == EP_SEGMENT || r->ep == EP_EMBED ? "POST" : "GET, HEAD");
    if (S->draining || rep->status == 413) MHD_add_response_header(resp, "Connection", "close");
    r->status = rep->status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)rep->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_err(server *S, struct MHD_Connection *c, req *r, int status,
                                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_err(server *S, struct MHD_Connection *c, req *r, int status,
                                const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    serve_reply rep = {0};
    reply_err(&rep, status, "%s", msg);
    enum MHD_Result ok = send_reply(S, c, r, &rep);
    reply_free(&rep);
    return ok;
}

static void health_json(server *S, sbuf *b) {
    pthread_mutex_lock(&S->mu);
    int q = S->queued, run = S->running, dr = S->draining;
    long served = S->served;
    pthread_mutex_unlock(&S->mu);
    sb_printf(b, "{\"status\": \"%s\", \"version\": ", dr ? "shutting down" : "ok");
    sb_json_str(b, carseg_version());
    sb_printf(b, ", \"abi\": %d, \"uptime_s\": %.1f, \"workers\": %d, \"running\": %d, \"queued\": %d, "
                 "\"served\": %ld, \"sam\": %s}\n", carseg_abi_version(), (serve_now_ms() - S->t_start) / 1e3,
              S->cfg->workers, run, q, served, serve_engine_has_sam(S->eng) ? "true" : "false");
}

// ---------------------------------------------------------------------------------------------
// the body: MHD's post processor calls this with each field's bytes

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *ctype, const char *enc,
                                 const char *data, uint64_t off, size_t size) {
    req *r = cls;
    serve_form *f = &r->form;
    (void)kind, (void)enc;
    serve_field *x = f->n ? &f->v[f->n - 1] : NULL;
    if (off == 0 || !x || strcmp(x->name, key ? key : "")) {   /* a new field */
        if (f->n >= MAX_FIELDS) {
            snprintf(r->bad_msg, sizeof r->bad_msg, "too many form fields (more than %d)", MAX_FIELDS);
            r->bad_status = 400;
            return MHD_NO;
        }
        if (f->n == f->cap) {
            int nc = f->cap ? 2 * f->cap : 16;
            serve_field *nv = realloc(f->v, sizeof *nv * (size_t)nc);
            if (!nv) goto oom;
            f->v = nv, f->cap = nc;
        }
        x = &f->v[f->n];
        memset(x, 0, sizeof *x);
        x->name = strdup(key ? key : "");
        x->filename = filename ? strdup(filename) : NULL;
        x->ctype = ctype ? strdup(ctype) : NULL;
        x->data = malloc(1);
        if (!x->name || !x->data || (filename && !x->filename) || (ctype && !x->ctype)) {
            free(x->name), free(x->filename), free(x->ctype), free(x->data);
            goto oom;
        }
        x->data[0] = 0;
        x->cap = 1;
        f->n++;
    }
    if (!x->filename) {
        f->text_bytes += size;
        if (f->text_bytes > MAX_TEXT_BYTES) {
            snprintf(r->bad_msg, sizeof r->bad_msg, "form fields other than files exceed %u bytes",
                     MAX_TEXT_BYTES);
            r->bad_status = 413;
            return MHD_NO;
        }
    }
    if (x->len + size + 1 > x->cap) {
        size_t nc = x->cap;
        while (nc < x->len + size + 1) nc *= 2;
        uint8_t *nd = realloc(x->data, nc);
        if (!nd) goto oom;
        x->data = nd, x->cap = nc;
    }
    memcpy(x->data + x->len, data, size);
    x->len += size;
    x->data[x->len] = 0;
    return MHD_YES;
oom:
    snprintf(r->bad_msg, sizeof r->bad_msg, "out of memory reading the request body");
    r->bad_status = 500;
    return MHD_NO;
}

// ---------------------------------------------------------------------------------------------
// routing

static int route(const char *url, const char *method, endpoint *ep) {
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    static const struct { const char *path; endpoint ep; int post; } R[] = {
        {"/", EP_PAGE, 0},           {"/index.html", EP_PAGE, 0}, {"/v1/health", EP_HEALTH, 0},
        {"/v1/models", EP_MODELS, 0}, {"/v1/segment", EP_SEGMENT, 1}, {"/v1/embed", EP_EMBED, 1}};
    for (size_t i = 0; i < sizeof R / sizeof *R; i++)
        if (!strcmp(url, R[i].path)) {
            *ep = R[i].ep;
            return (R[i].post ? post : get) ? 200 : 405;
        }
    return 404;
}

static int header_has(struct MHD_Connection *c, const char *name, const char *what) {
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    if (!v) return 0;
    size_t n = strlen(what);
    for (const char *p = v; *p; p++)
        if (!strncasecmp(p, what, n)) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// the queue and the compute threads

typedef struct {
    server *S;
    serve_worker *w;
    pthread_t tid;
} worker_slot;

static void *worker_main(void *arg) {
    worker_slot *ws = arg;
    server *S = ws->S;
    pthread_mutex_lock(&S->mu);
    for (;;) {
        while (!S->head && !S->stopping) pthread_cond_wait(&S->cv_work, &S->mu);
        if (!S->head) break;
        req *r = S->head;
        S->head = r->next;
        if (!S->head) S->tail = NULL;
        S->queued--;
        S->running++;
        r->state = ST_RUNNING;
        int draining = S->draining;
        pthread_mutex_unlock(&S->mu);
        double waited = serve_now_ms() - r->t_queued;
        if (draining) reply_err(&r->reply, 503, "the server is shutting down");
        else if (waited > S->cfg->request_timeout_s * 1e3)
            reply_err(&r->reply, 503, "the request waited %.0f s in the queue (limit %d s: --request-timeout)",
                      waited / 1e3, S->cfg->request_timeout_s);
        else if (r->ep == EP_SEGMENT) serve_segment(ws->w, &r->form, r->want_png, &r->reply);
        else serve_embed(ws->w, &r->form, &r->reply);
        pthread_mutex_lock(&S->mu);
        S->running--;
        S->served++;
        r->state = ST_DONE;
        pthread_cond_broadcast(&S->cv_done);
    }
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

/* queues r and waits for its answer (this is the connection's own thread); 0, or the 503 reason */
static const char *run_queued(server *S, req *r) {
    pthread_mutex_lock(&S->mu);
    if (S->draining) { pthread_mutex_unlock(&S->mu); return "the server is shutting down"; }
    if (S->queued >= S->cfg->max_queue) {
        pthread_mutex_unlock(&S->mu);
        return "the server is busy (the queue is full: --max-queue); try again later";
    }
    r->state = ST_QUEUED;
    r->t_queued = serve_now_ms();
    r->next = NULL;
    if (S->tail) S->tail->next = r;
    else S->head = r;
    S->tail = r;
    S->queued++;
    pthread_cond_signal(&S->cv_work);
    while (r->state != ST_DONE) pthread_cond_wait(&S->cv_done, &S->mu);
    pthread_mutex_unlock(&S->mu);
    return NULL;
}

// ---------------------------------------------------------------------------------------------
// MHD callbacks

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *data,
                                 size_t *size, void **con_cls) {
    server *S = cls;
    req *r = *con_cls;
    (void)version;
    if (!r) {   /* the headers are in */
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        r->t0 = serve_now_ms();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        pthread_mutex_lock(&S->mu);
        S->active++;
        pthread_mutex_unlock(&S->mu);
        int rs = route(url, method, &r->ep);
        if (rs == 404) return send_err(S, c, r, 404, "no such resource: %s %s (see GET /v1/models and docs/serve.md)", method, r->path);
        if (rs == 405) return send_err(S, c, r, 405, "%s is not allowed on %s", method, r->path);
        if (r->ep == EP_PAGE) {
            serve_reply rep = {200, "text/html; charset=utf-8", NULL, 0, ""};
            if (!(rep.body = malloc(sizeof SERVE_PAGE))) return MHD_NO;
            memcpy(rep.body, SERVE_PAGE, sizeof SERVE_PAGE);
            rep.len = sizeof SERVE_PAGE - 1;
            return send_reply(S, c, r, &rep);
        }
        if (r->ep == EP_HEALTH || r->ep == EP_MODELS) {
            sbuf b = {0};
            serve_reply rep = {0};
            if (r->ep == EP_HEALTH) health_json(S, &b);
            else serve_models_json(S->eng, &b);
            reply_take(&rep, S->draining && r->ep == EP_HEALTH ? 503 : 200, "application/json", &b);
            enum MHD_Result ok = send_reply(S, c, r, &rep);
            reply_free(&rep);
            return ok;
        }
        /* POST /v1/segment, /v1/embed */
        if (S->draining) return send_err(S, c, r, 503, "the server is shutting down");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end == cl || *end) return send_err(S, c, r, 400, "bad Content-Length '%.40s'", cl);
            if (n > S->cfg->max_body)
                return send_err(S, c, r, 413, "the request body (%llu bytes) exceeds the limit of %zu bytes (--max-body)",
                                n, S->cfg->max_body);
        }
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!ct || (strncasecmp(ct, "multipart/form-data", 19) &&
                    strncasecmp(ct, "application/x-www-form-urlencoded", 33)))
            return send_err(S, c, r, 415, "expected a multipart/form-data body, got Content-Type '%.80s'",
                            ct ? ct : "(none)");
        r->want_png = r->ep == EP_SEGMENT && header_has(c, "Accept", "image/png");
        r->pp = MHD_create_post_processor(c, 64 * 1024, post_iter, r);
        if (!r->pp) return send_err(S, c, r, 400, "malformed Content-Type '%.80s' (a multipart body needs a boundary)", ct);
        r->state = ST_UPLOAD;
        return MHD_YES;
    }
    if (r->state != ST_UPLOAD) return MHD_NO;   /* a GET with a body: not ours to read */
    if (*size) {   /* more of the body */
        r->received += *size;
        if (r->received > S->cfg->max_body) {   /* no Content-Length (chunked): drop it */
            r->status = 413;
            r->close_why = "body over --max-body";
            return MHD_NO;
        }
        if (serve_now_ms() - r->t0 > S->cfg->request_timeout_s * 1e3) {
            r->status = 408;
            r->close_why = "body still arriving after --request-timeout";
            return MHD_NO;
        }
        if (!r->bad_status && MHD_post_process(r->pp, data, *size) != MHD_YES && !r->bad_status) {
            r->bad_status = 400;
            snprintf(r->bad_msg, sizeof r->bad_msg, "malformed multipart body");
        }
        *size = 0;
        return MHD_YES;
    }
    /* the whole body is in */
    if (MHD_destroy_post_processor(r->pp) != MHD_YES && !r->bad_status) {
        r->bad_status = 400;
        snprintf(r->bad_msg, sizeof r->bad_msg, "malformed multipart body (truncated, or no closing boundary)");
    }
    r->pp = NULL;
    r->state = ST_DONE;
    if (r->bad_status) return send_err(S, c, r, r->bad_status, "%s", r->bad_msg);
    int bad = r->ep == EP_SEGMENT ? serve_segment_check(S->eng, &r->form, &r->reply)
                                  : serve_embed_check(S->eng, &r->form, &r->reply);
    if (!bad) {
        const char *why = run_queued(S, r);
        if (why) return send_err(S, c, r, 503, "%s", why);
    }
    form_free(&r->form);
    return send_reply(S, c, r, &r->reply);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    server *S = cls;
    req *r = *con_cls;
    (void)c;
    if (!r) return;
    static const char *why[] = {"", "error", "timed out", "server stopping", "read error", "client closed"};
    const char *w = r->close_why ? r->close_why
                    : toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && (int)toe < 6 ? why[toe] : "";
    char st[16];
    if (r->status) snprintf(st, sizeof st, "%d", r->status);
    else snprintf(st, sizeof st, "-");
    fprintf(stderr, "carseg serve: %s %s %s %.0f ms%s%s%s\n", r->method, r->path, st,
            serve_now_ms() - r->t0, *w ? " (closed: " : "", w, *w ? ")" : "");
    if (r->pp) MHD_destroy_post_processor(r->pp);
    form_free(&r->form);
    reply_free(&r->reply);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&S->mu);
    S->active--;
    pthread_cond_broadcast(&S->cv_done);
    pthread_mutex_unlock(&S->mu);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    fprintf(stderr, "carseg serve: http: %s\n", msg);
}

// ---------------------------------------------------------------------------------------------
// signals: the handler records the signal and wakes serve_run through a pipe

static int g_sigpipe[2] = {-1, -1};
static volatile sig_atomic_t g_signal;

static void on_signal(int sig) {
    int e = errno;
    g_signal = sig;
    char c = 1;
    if (g_sigpipe[1] >= 0 && write(g_sigpipe[1], &c, 1) < 0) {}   /* full pipe: already woken */
    errno = e;
}

int serve_signals_install(void) {
    if (g_sigpipe[0] < 0) {
        if (pipe2(g_sigpipe, O_CLOEXEC) != 0) return -1;
        fcntl(g_sigpipe[1], F_SETFL, fcntl(g_sigpipe[1], F_GETFL) | O_NONBLOCK);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

// ---------------------------------------------------------------------------------------------

int serve_run(const serve_cfg *cfg, serve_engine *eng) {
    server S;
    memset(&S, 0, sizeof S);
    S.cfg = cfg;
    S.eng = eng;
    S.t_start = serve_now_ms();
    pthread_mutex_init(&S.mu, NULL);
    pthread_cond_init(&S.cv_work, NULL);
    pthread_cond_init(&S.cv_done, NULL);

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (serve_signals_install() != 0) {
        fprintf(stderr, "carseg: error: cannot install the signal handlers\n");
        return 1;
    }
    if (inet_pton(AF_INET, cfg->host, &sa.sin_addr) != 1) {
        fprintf(stderr, "carseg: error: --host '%s' is not an IPv4 address\n", cfg->host);
        return 2;
    }
    int rc = 1, nw = 0;
    worker_slot *ws = calloc((size_t)cfg->workers, sizeof *ws);
    struct MHD_Daemon *d = NULL;
    if (!ws) { fprintf(stderr, "carseg: error: out of memory\n"); goto out; }
    for (; nw < cfg->workers; nw++) {
        ws[nw].S = &S;
        if (serve_worker_new(eng, &ws[nw].w) != CARSEG_OK) {
            fprintf(stderr, "carseg: error: %s\n", carseg_last_error());
            goto out;
        }
        if (pthread_create(&ws[nw].tid, NULL, worker_main, &ws[nw])) {
            serve_worker_free(ws[nw].w);
            fprintf(stderr, "carseg: error: cannot start a compute thread\n");
            goto out;
        }
    }
    if (g_signal) {   /* a Ctrl-C while the models were loading: stop before listening */
        fprintf(stderr, "carseg: interrupted before serving\n");
        rc = 130;
        goto out;
    }
    d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                             MHD_USE_ITC | MHD_USE_ERROR_LOG,
                         0, NULL, NULL, on_access, &S,
                         MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, &S,
                         MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "carseg: error: cannot listen on %s:%d: %s\n", cfg->host, cfg->port,
                errno ? strerror(errno) : "libmicrohttpd refused to start");
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : cfg->port;
    fprintf(stderr, "carseg: serving on http://%s:%d/ (%d compute thread%s; Ctrl-C stops)\n", cfg->host,
            port, cfg->workers, cfg->workers == 1 ? "" : "s");
    if (cfg->port_file) {   /* atomically: a reader never sees half a number */
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", cfg->port_file, (int)getpid());
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, cfg->port_file) != 0) {
            fprintf(stderr, "carseg: error: %s: cannot write the port file\n", cfg->port_file);
            goto out;
        }
    }
    char ch;
    while (read(g_sigpipe[0], &ch, 1) != 1) {}   /* until a signal (EINTR: again) */
    int sig = g_signal;
    fprintf(stderr, "carseg: %s: finishing the requests being computed, refusing new ones\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    MHD_socket lfd = MHD_quiesce_daemon(d);   /* no new connections */
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    pthread_mutex_lock(&S.mu);
    S.draining = 1;
    /* computations finish; requests still uploading get their 503 when they are in (a few s) */
    double t_end = serve_now_ms() + 1e3 * (cfg->idle_timeout_s + 5);
    while (S.queued || S.running || S.active) {
        if (!S.queued && !S.running && serve_now_ms() > t_end) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&S.cv_done, &S.mu, &ts);
    }
    pthread_mutex_unlock(&S.mu);
    rc = 0;
out:
    pthread_mutex_lock(&S.mu);
    S.draining = 1;
    S.stopping = 1;
    pthread_cond_broadcast(&S.cv_work);
    pthread_mutex_unlock(&S.mu);
    for (int i = 0; i < nw; i++) {
        pthread_join(ws[i].tid, NULL);
        serve_worker_free(ws[i].w);
    }
    if (d) MHD_stop_daemon(d);   /* closes idle keep-alive connections */
    free(ws);
    if (rc == 0) fprintf(stderr, "carseg: stopped (%ld requests computed)\n", S.served);
    return rc;
}
