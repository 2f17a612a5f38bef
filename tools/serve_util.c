/* serve_util.c — `carseg serve`: byte buffer + JSON writing, form fields, replies. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"

static int sb_grow(sbuf *b, size_t add) {
    if (b->oom) return 0;
    if (b->n + add + 1 <= b->cap) return 1;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + add + 1) {
        if (nc > (SIZE_MAX >> 2)) { b->oom = 1; return 0; }
        nc *= 2;
    }
    char *np = realloc(b->p, nc);
    if (!np) { b->oom = 1; return 0; }
    b->p = np, b->cap = nc;
    return 1;
}

void sb_put(sbuf *b, const void *s, size_t n) {
    if (!sb_grow(b, n)) return;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) { sb_put(b, tmp, (size_t)k); return; }
    if (!sb_grow(b, (size_t)k)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

/* length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one */
static int utf8_len(const unsigned char *s) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (!n || c > 0xF4) return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n == 3 && ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0))) return 0;
    if (n == 4 && ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))) return 0;
    return n;
}

void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    while (*p) {
        unsigned c = *p;
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; sb_put(b, e, 2); p++; }
        else if (c == '\n') { sb_put(b, "\\n", 2); p++; }
        else if (c == '\r') { sb_put(b, "\\r", 2); p++; }
        else if (c == '\t') { sb_put(b, "\\t", 2); p++; }
        else if (c < 0x20 || c == 0x7F) { sb_printf(b, "\\u%04x", c); p++; }
        else {
            int n = utf8_len(p);
            if (!n) { sb_puts(b, "\\ufffd"); p++; }
            else { sb_put(b, p, (size_t)n); p += n; }
        }
    }
    sb_put(b, "\"", 1);
}

void sb_json_num(sbuf *b, double v) {
    if (isfinite(v)) sb_printf(b, "%.9g", v);
    else sb_puts(b, "null");
}

void sb_free(sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

// ---------------------------------------------------------------------------------------------

void form_free(serve_form *f) {
    for (int i = 0; i < f->n; i++) {
        free(f->v[i].name), free(f->v[i].filename), free(f->v[i].ctype), free(f->v[i].data);
    }
    free(f->v);
    memset(f, 0, sizeof *f);
}

const serve_field *form_get(const serve_form *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->v[i].name, name)) return &f->v[i];
    return NULL;
}

const char *form_str(const serve_form *f, const char *name) {
    const serve_field *x = form_get(f, name);
    return x ? (const char *)x->data : NULL;
}

int form_count(const serve_form *f, const char *name) {
    int k = 0;
    for (int i = 0; i < f->n; i++) k += !strcmp(f->v[i].name, name);
    return k;
}

// ---------------------------------------------------------------------------------------------

void reply_free(serve_reply *r) {
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

void reply_take(serve_reply *r, int status, const char *ctype, sbuf *body) {
    reply_free(r);
    if (body->oom) {
        sb_free(body);
        reply_err(r, 500, "out of memory while writing the answer");
        return;
    }
    r->status = status;
    r->ctype = ctype;
    r->body = (uint8_t *)body->p;
    r->len = body->n;
    if (!r->body) {   /* an empty body: still a malloc'd pointer for MHD */
        r->body = malloc(1);
        r->len = 0;
    }
    memset(body, 0, sizeof *body);
}

void reply_err(serve_reply *r, int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sbuf b = {0};
    sb_puts(&b, "{\"error\": ");
    sb_json_str(&b, msg);
    sb_puts(&b, "}\n");
    reply_free(r);
    r->status = status;
    r->ctype = "application/json";
    r->filename[0] = 0;
    if (b.oom) {   /* nothing else to say: a static body is copied */
        sb_free(&b);
        static const char oom[] = "{\"error\": \"out of memory\"}\n";
        r->body = malloc(sizeof oom);
        r->len = r->body ? sizeof oom - 1 : 0;
        if (r->body) memcpy(r->body, oom, sizeof oom);
        r->status = 500;
        return;
    }
    r->body = (uint8_t *)b.p;
    r->len = b.n;
}

double serve_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
