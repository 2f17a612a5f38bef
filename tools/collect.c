/* collect.c — the inputs of `carseg segment`: files, folders and @lists, expanded in order into
 * images with a path relative to their input root and a unique output name (label.h). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "label.h"
#include "util.h"

int label_is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return 0;
    static const char *ext[] = {".jpg", ".jpeg", ".jpe", ".png"};
    for (size_t k = 0; k < sizeof ext / sizeof *ext; k++)
        if (!strcasecmp(dot, ext[k])) return 1;
    return 0;
}

static carseg_status push(label_inputs *in, const char *path, const char *rel) {
    if (in->n == in->cap) {
        int nc = in->cap ? in->cap * 2 : 64;
        label_item *nv = realloc(in->v, sizeof *nv * (size_t)nc);
        if (!nv) return set_err(CARSEG_ENOMEM, "input list: out of memory");
        in->v = nv, in->cap = nc;
    }
    label_item *it = &in->v[in->n];
    memset(it, 0, sizeof *it);
    it->path = cs_strdup(path);
    it->rel = cs_strdup(rel);
    if (!it->path || !it->rel) {
        free(it->path), free(it->rel);
        return set_err(CARSEG_ENOMEM, "input list: out of memory");
    }
    in->n++;
    return CARSEG_OK;
}

void label_inputs_free(label_inputs *in) {
    for (int i = 0; i < in->n; i++) free(in->v[i].path), free(in->v[i].rel), free(in->v[i].name);
    free(in->v);
    memset(in, 0, sizeof *in);
}

// ---------------------------------------------------------------------------------------------
// folder walk

typedef struct { dev_t dev; ino_t ino; } dev_ino;
typedef struct {
    dev_ino *seen;      /* folders walked (a folder reached twice, by a symlink loop or not, once) */
    int n_seen, cap;
    int have_out;
    dev_ino out;        /* the output folder: never walked into */
} walk_state;

static int seen_add(walk_state *w, const struct stat *st) {
    for (int i = 0; i < w->n_seen; i++)
        if (w->seen[i].dev == st->st_dev && w->seen[i].ino == st->st_ino) return 0;
    if (w->n_seen == w->cap) {
        int nc = w->cap ? w->cap * 2 : 32;
        dev_ino *nv = realloc(w->seen, sizeof *nv * (size_t)nc);
        if (!nv) return -1;
        w->seen = nv, w->cap = nc;
    }
    w->seen[w->n_seen++] = (dev_ino){st->st_dev, st->st_ino};
    return 1;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static carseg_status walk(walk_state *w, label_inputs *in, const char *dir, const char *rel) {
    DIR *d = opendir(dir);
    if (!d) return set_err(CARSEG_EIO, "%s: cannot read the folder: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0;
    carseg_status st = CARSEG_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;   /* ".", "..", hidden files and folders */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(names, sizeof *nv * (size_t)cap);
            if (!nv) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", dir); break; }
            names = nv;
        }
        if (!(names[n] = cs_strdup(e->d_name))) { st = set_err(CARSEG_ENOMEM, "%s: out of memory", dir); break; }
        n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n && st == CARSEG_OK; i++) {
        size_t lp = strlen(dir) + strlen(names[i]) + 2, lr = strlen(rel) + strlen(names[i]) + 2;
        char *p = malloc(lp), *r = malloc(lr);
        if (!p || !r) { free(p), free(r); st = set_err(CARSEG_ENOMEM, "%s: out of memory", dir); break; }
        snprintf(p, lp, "%s/%s", dir, names[i]);
        snprintf(r, lr, "%s%s%s", rel, *rel ? "/" : "", names[i]);
        struct stat sb;
        if (stat(p, &sb) != 0) {
            /* a dangling symlink or an entry removed meanwhile: an image name becomes a failed
             * image at load time, anything else is ignored */
            if (label_is_image_name(names[i])) st = push(in, p, r);
        } else if (S_ISDIR(sb.st_mode)) {
            int fresh = (w->have_out && sb.st_dev == w->out.dev && sb.st_ino == w->out.ino) ? 0
                        : seen_add(w, &sb);
            if (fresh < 0) st = set_err(CARSEG_ENOMEM, "%s: out of memory", dir);
            else if (fresh) st = walk(w, in, p, r);
        } else if (label_is_image_name(names[i])) {
            st = push(in, p, r);
        }
        free(p), free(r);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

// ---------------------------------------------------------------------------------------------
// one input (file or folder); list entries come with the list's folder as base

static const char *base_of(const char *p) {
    const char *b = strrchr(p, '/');
    return b ? b + 1 : p;
}

/* rel as written for a list entry, unless it is absolute or climbs out ("..") */
static int rel_is_safe(const char *r) {
    if (r[0] == '/' || !r[0]) return 0;
    for (const char *p = r; *p;) {
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 2 && p[0] == '.' && p[1] == '.') return 0;
        p += l + (e != NULL);
    }
    return 1;
}

/* "./a//b/" -> "a/b" */
static void normalize_rel(char *r) {
    char *o = r;
    const char *p = r;
    while (*p) {
        while (*p == '/') p++;
        if (p[0] == '.' && (p[1] == '/' || !p[1])) { p++; continue; }
        if (!*p) break;
        if (o != r) *o++ = '/';
        while (*p && *p != '/') *o++ = *p++;
    }
    *o = 0;
}

static carseg_status add_input(walk_state *w, label_inputs *in, const char *path, const char *rel_hint,
                               const char *origin) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (origin) return set_err(CARSEG_EIO, "%s: %s (listed in %s)", path, strerror(errno), origin);
        return set_err(CARSEG_EIO, "%s: %s", path, strerror(errno));
    }
    if (S_ISDIR(sb.st_mode)) {
        int fresh = seen_add(w, &sb);
        if (fresh < 0) return set_err(CARSEG_ENOMEM, "out of memory");
        if (!fresh) return CARSEG_OK;   /* the same folder given twice */
        size_t l = strlen(path);
        char *p = cs_strdup(path);
        if (!p) return set_err(CARSEG_ENOMEM, "out of memory");
        while (l > 1 && p[l - 1] == '/') p[--l] = 0;
        carseg_status st = walk(w, in, p, "");
        free(p);
        return st;
    }
    return push(in, path, rel_hint ? rel_hint : base_of(path));
}

static carseg_status add_list(walk_state *w, label_inputs *in, const char *list) {
    uint8_t *d;
    size_t len;
    TRY(read_file(list, &d, &len));
    const char *slash = strrchr(list, '/');
    size_t dl = slash ? (size_t)(slash - list) : 0;
    const char *p = (const char *)d, *end = p + len;
    carseg_status st = CARSEG_OK;
    while (p < end && st == CARSEG_OK) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e) e = end;
        const char *a = p, *b = e;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r')) b--;
        p = e + 1;
        if (a == b || *a == '#') continue;
        size_t l = (size_t)(b - a);
        char *entry = malloc(l + 1), *full = malloc(dl + l + 2);
        if (!entry || !full) { free(entry), free(full); st = set_err(CARSEG_ENOMEM, "out of memory"); break; }
        memcpy(entry, a, l);
        entry[l] = 0;
        int absolute = entry[0] == '/';
        if (absolute || !slash) snprintf(full, dl + l + 2, "%s", entry);
        else snprintf(full, dl + l + 2, "%.*s/%s", (int)dl, list, entry);
        normalize_rel(entry);
        struct stat sb;
        if (stat(full, &sb) == 0 && S_ISDIR(sb.st_mode)) st = add_input(w, in, full, NULL, list);
        else st = add_input(w, in, full, !absolute && rel_is_safe(entry) ? entry : base_of(full), list);
        free(entry), free(full);
    }
    free(d);
    return st;
}

// ---------------------------------------------------------------------------------------------
// unique output names

typedef struct { const char *s; int i; } name_ent;
static int cmp_ent(const void *a, const void *b) {
    const name_ent *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

static char *strip_ext(const char *rel) {
    char *s = cs_strdup(rel);
    if (!s) return NULL;
    char *dot = strrchr(s, '.'), *sl = strrchr(s, '/');
    if (dot && dot != s && (!sl || dot > sl + 1)) *dot = 0;
    return s;
}

/* marks dup[i] = 1 for every entry whose name collides with another one */
static int find_dups(label_inputs *in, unsigned char *dup) {
    name_ent *t = malloc(sizeof *t * (size_t)(in->n ? in->n : 1));
    if (!t) return -1;
    for (int i = 0; i < in->n; i++) t[i] = (name_ent){in->v[i].name, i};
    qsort(t, (size_t)in->n, sizeof *t, cmp_ent);
    int any = 0;
    memset(dup, 0, (size_t)in->n);
    for (int i = 1; i < in->n; i++)
        if (!strcmp(t[i].s, t[i - 1].s)) dup[t[i].i] = dup[t[i - 1].i] = 1, any = 1;
    free(t);
    return any;
}

static carseg_status name_items(label_inputs *in) {
    for (int i = 0; i < in->n; i++)
        if (!(in->v[i].name = strip_ext(in->v[i].rel))) return set_err(CARSEG_ENOMEM, "out of memory");
    unsigned char *dup = malloc((size_t)(in->n ? in->n : 1));
    if (!dup) return set_err(CARSEG_ENOMEM, "out of memory");
    int r = find_dups(in, dup);
    if (r > 0) {   /* keep the extension where names collide */
        for (int i = 0; i < in->n; i++)
            if (dup[i]) {
                char *s = cs_strdup(in->v[i].rel);
                if (!s) { free(dup); return set_err(CARSEG_ENOMEM, "out of memory"); }
                free(in->v[i].name);
                in->v[i].name = s;
            }
        r = find_dups(in, dup);
    }
    if (r > 0) {   /* still: the same rel under two roots; "~2", "~3" in input order */
        for (int i = 0; i < in->n; i++) {
            if (!dup[i]) continue;
            int k = 1;
            for (int j = 0; j < i; j++) k += dup[j] && !strcmp(in->v[j].rel, in->v[i].rel);
            if (k == 1) continue;
            for (;; k++) {   /* a suffix no other item uses */
                size_t l = strlen(in->v[i].rel) + 16;
                char *s = malloc(l);
                if (!s) { free(dup); return set_err(CARSEG_ENOMEM, "out of memory"); }
                snprintf(s, l, "%s~%d", in->v[i].rel, k);
                int clash = 0;
                for (int j = 0; j < in->n && !clash; j++) clash = j != i && !strcmp(in->v[j].name, s);
                if (!clash) { free(in->v[i].name); in->v[i].name = s; break; }
                free(s);
            }
        }
    }
    free(dup);
    return r < 0 ? set_err(CARSEG_ENOMEM, "out of memory") : CARSEG_OK;
}

carseg_status label_collect(char *const *args, int nargs, const char *out_dir, label_inputs *in) {
    memset(in, 0, sizeof *in);
    walk_state w = {0};
    struct stat ob;
    if (out_dir && stat(out_dir, &ob) == 0) w.have_out = 1, w.out = (dev_ino){ob.st_dev, ob.st_ino};
    carseg_status st = CARSEG_OK;
    for (int a = 0; a < nargs && st == CARSEG_OK; a++)
        st = args[a][0] == '@' && args[a][1] ? add_list(&w, in, args[a] + 1)
                                              : add_input(&w, in, args[a], NULL, NULL);
    free(w.seen);
    if (st == CARSEG_OK) st = name_items(in);
    if (st != CARSEG_OK) label_inputs_free(in);
    return st;
}
