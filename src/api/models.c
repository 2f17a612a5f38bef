/* models.c — the known-model registry, the local cache and downloads. Mirrors clip.load's
 * _MODELS table and _download() (openai/CLIP clip/clip.py: the URL's folder name is the file's
 * sha256, checked before use), with carseg's own cache place and atomic writes.
 *
 * Cache: $CARSEG_CACHE, else $XDG_CACHE_HOME/carseg, else ~/.cache/carseg. A file is only ever
 * renamed into the cache after its sha256 matched, so presence means complete and verified.
 * Downloads stream into NAME.part (locked with flock against a concurrent carseg), hashing as they
 * go; a mismatch deletes the part file. $CARSEG_MODELS_URL replaces every URL up to the file
 * name (mirrors, tests with a local server or file:// URLs); $CARSEG_OFFLINE=1 turns automatic
 * downloads off. Built with NO_CURL=1 (CARSEG_NO_CURL) there is no downloader: names resolve in
 * the cache only, and a download is an error saying so.
 */
#include "models.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef CARSEG_NO_CURL
#include <curl/curl.h>
#endif

#include "sha256.h"
#include "util.h"

#define CONNECT_TIMEOUT_S 10L   /* fail fast without network */
#define STALL_TIMEOUT_S 60L     /* abort when under 1 KiB/s for this long */

typedef struct {
    carseg_model_info info;   /* name, kind, file, url, sha256 */
    const char *aliases;      /* extra names, normalised (see norm_name), space-separated */
} entry;

static const entry builtin[] = {
    {{"ViT-B/16", "clip", "ViT-B-16.pt",
      "https://openaipublic.azureedge.net/clip/models/"
      "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
      "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"},
     "vitb16 vitb16pt b16"},
    {{"ViT-L/14", "clip", "ViT-L-14.pt",
      "https://openaipublic.azureedge.net/clip/models/"
      "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
      "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"},
     "vitl14 vitl14pt l14"},
    {{"ViT-B/32", "clip", "ViT-B-32.pt",
      "https://openaipublic.azureedge.net/clip/models/"
      "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
      "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"},
     "vitb32 vitb32pt b32"},
    {{"ViT-L/14@336px", "clip", "ViT-L-14-336px.pt",
      "https://openaipublic.azureedge.net/clip/models/"
      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
      "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"},
     "vitl14336px vitl14336 vitl14336pxpt l14336"},
    {{"bpe", "vocab", "bpe_simple_vocab_16e6.txt.gz",
      "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz",
      "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"},
     "bpe vocab vocabulary bpesimplevocab16e6 bpesimplevocab16e6txt bpesimplevocab16e6txtgz"},
    /* HQ-SAM (SysCV/sam-hq's README: "hugging face", lkeab/hq-sam, the first author's). The
     * sha256 is each file's Git LFS oid in that repository's upload commits (8a94b5e, 519b37f,
     * 67ab824 of 2023-06-13; sizes 379335069, 1254865805, 2570940653 bytes). */
    {{"sam_hq_vit_b", "sam", "sam_hq_vit_b.pth",
      "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_b.pth",
      "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57"},
     "hqsamvitb"},
    {{"sam_hq_vit_l", "sam", "sam_hq_vit_l.pth",
      "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_l.pth",
      "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343"},
     "hqsamvitl"},
    {{"sam_hq_vit_h", "sam", "sam_hq_vit_h.pth",
      "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_h.pth",
      "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35"},
     "hqsamvith"},
};
#define NBUILTIN ((int)(sizeof builtin / sizeof *builtin))
#define MAX_EXTRA 16

static entry g_extra[MAX_EXTRA];   /* models_register (tests); not thread-safe */
static int g_nextra;
static int g_allow = -1;           /* -1: from $CARSEG_OFFLINE */
static carseg_progress_fn g_progress = carseg_models_progress_stderr;
static void *g_progress_user;

// ---------------------------------------------------------------------------------------------
// registry

/* lower-case alphanumerics only: "ViT-L/14@336px" -> "vitl14336px" */
static void norm_name(const char *s, char *out, size_t cap) {
    size_t k = 0;
    for (; *s && k + 1 < cap; s++)
        if (isalnum((unsigned char)*s)) out[k++] = (char)tolower((unsigned char)*s);
    out[k] = 0;
}

static const entry *entry_at(int i) {
    if (i < 0) return NULL;
    if (i < NBUILTIN) return &builtin[i];
    if (i < NBUILTIN + g_nextra) return &g_extra[i - NBUILTIN];
    return NULL;
}

static const entry *find_entry(const char *name) {
    char key[256], k2[256];
    if (!name || strlen(name) >= sizeof key) return NULL;
    norm_name(name, key, sizeof key);
    if (!key[0]) return NULL;
    for (int i = 0; i < NBUILTIN + g_nextra; i++) {
        const entry *e = entry_at(i);
        norm_name(e->info.name, k2, sizeof k2);
        if (!strcmp(k2, key)) return e;
        norm_name(e->info.file, k2, sizeof k2);
        if (!strcmp(k2, key)) return e;
        for (const char *a = e->aliases; a && *a;) {
            const char *sp = strchr(a, ' ');
            size_t l = sp ? (size_t)(sp - a) : strlen(a);
            if (l == strlen(key) && !memcmp(a, key, l)) return e;
            a = sp ? sp + 1 : a + l;
        }
    }
    return NULL;
}

int carseg_models_count(void) { return NBUILTIN + g_nextra; }
const carseg_model_info *carseg_models_get(int i) {
    const entry *e = entry_at(i);
    return e ? &e->info : NULL;
}
const carseg_model_info *carseg_models_find(const char *name) {
    const entry *e = find_entry(name);
    return e ? &e->info : NULL;
}

static int hex64(const char *s) {
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++) if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

carseg_status models_register(const char *name, const char *url, const char *sha256, const char *kind) {
    if (!name || !url || !hex64(sha256))
        return set_err(CARSEG_EINVAL, "models_register: need a name, a URL and a 64-digit sha256");
    const char *file = strrchr(url, '/');
    file = file ? file + 1 : url;
    if (!*file || !strcmp(file, ".") || !strcmp(file, ".."))
        return set_err(CARSEG_EINVAL, "models_register: %s: the URL names no file", url);
    if (g_nextra == MAX_EXTRA) return set_err(CARSEG_EINVAL, "models_register: registry full");
    entry *e = &g_extra[g_nextra];
    e->info.name = cs_strdup(name);
    e->info.kind = cs_strdup(kind ? kind : "clip");
    e->info.file = cs_strdup(file);
    e->info.url = cs_strdup(url);
    e->info.sha256 = cs_strdup(sha256);
    e->aliases = NULL;
    if (!e->info.name || !e->info.kind || !e->info.file || !e->info.url || !e->info.sha256)
        return set_err(CARSEG_ENOMEM, "models_register: out of memory");
    g_nextra++;
    return CARSEG_OK;
}

// ---------------------------------------------------------------------------------------------
// cache

static char *join2(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

carseg_status carseg_models_cache_dir(char **dir_out) {
    if (!dir_out) return set_err(CARSEG_EINVAL, "carseg_models_cache_dir: out is NULL");
    *dir_out = NULL;
    const char *env = getenv("CARSEG_CACHE");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char *d;
    if (env && *env) d = cs_strdup(env);
    else if (xdg && xdg[0] == '/') d = join2(xdg, "carseg");
    else if (home && *home) d = join2(home, ".cache/carseg");
    else return set_err(CARSEG_EINVAL, "no cache directory: set CARSEG_CACHE (or HOME)");
    if (!d) return set_err(CARSEG_ENOMEM, "out of memory");
    *dir_out = d;
    return CARSEG_OK;
}

static carseg_status cache_path(const entry *e, char **out) {
    char *dir;
    TRY(carseg_models_cache_dir(&dir));
    *out = join2(dir, e->info.file);
    free(dir);
    return *out ? CARSEG_OK : set_err(CARSEG_ENOMEM, "out of memory");
}

static carseg_status need_entry(const char *name, const entry **out) {
    *out = find_entry(name);
    if (*out) return CARSEG_OK;
    char known[512] = "";
    for (int i = 0; i < NBUILTIN + g_nextra; i++) {
        size_t l = strlen(known);
        snprintf(known + l, sizeof known - l, "%s%s", i ? ", " : "", entry_at(i)->info.name);
    }
    if (name && strchr(name, '/'))
        return set_err(CARSEG_EIO, "%s: no such file (nor a known model name: %s)", name, known);
    return set_err(CARSEG_EINVAL, "'%s' is neither an existing file nor a known model (known: %s)",
                   name ? name : "(null)", known);
}

carseg_status carseg_models_cache_path(const char *name, char **path_out) {
    if (!path_out) return set_err(CARSEG_EINVAL, "carseg_models_cache_path: out is NULL");
    *path_out = NULL;
    const entry *e;
    TRY(need_entry(name, &e));
    return cache_path(e, path_out);
}

/* The URL to fetch: CARSEG_MODELS_URL + "/" + file when set. */
static char *entry_url(const entry *e) {
    const char *base = getenv("CARSEG_MODELS_URL");
    if (!base || !*base) return cs_strdup(e->info.url);
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/') n--;
    size_t cap = n + strlen(e->info.file) + 2;
    char *u = malloc(cap);
    if (u) snprintf(u, cap, "%.*s/%s", (int)n, base, e->info.file);
    return u;
}

// ---------------------------------------------------------------------------------------------
// download

void carseg_models_progress_stderr(const char *what, uint64_t done, uint64_t total, int finished,
                                   void *user) {
    (void)user;
    static double last_ms, start_ms;
    static int last_decile = -1, tty = -1, drawn;
    double t = now_ms();
    if (tty < 0) tty = isatty(2);
    if (done == 0 && !finished) {   /* a new transfer */
        start_ms = t;
        last_ms = t;
        last_decile = 0;
        return;
    }
    if (finished < 0) {   /* failed: end the bar's line */
        if (tty && drawn) fputc('\n', stderr);
        drawn = 0;
        return;
    }
    double mb = (double)done / 1e6, tot = (double)total / 1e6;
    double rate = t > start_ms ? mb / ((t - start_ms) / 1000.0) : 0;
    if (tty) {
        if (!finished && t - last_ms < 100) return;
        last_ms = t;
        char bar[31];
        int fill = total ? (int)(30.0 * (double)done / (double)total) : 0;
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        if (total)
            fprintf(stderr, "\r%s [%s] %5.1f%% %7.1f/%.1f MB %6.1f MB/s", what, bar,
                    100.0 * (double)done / (double)total, mb, tot, rate);
        else
            fprintf(stderr, "\r%s %7.1f MB %6.1f MB/s", what, mb, rate);
        drawn = !finished;
        if (finished) fputc('\n', stderr);
        fflush(stderr);
    } else {   /* a line per 10% (or per 10 s when the size is unknown), and one at the end */
        int dec = total ? (int)(10 * done / total) : 0;
        if (!finished && (total ? dec == last_decile || dec >= 10 : t - last_ms < 10000)) return;
        last_decile = dec;
        last_ms = t;
        if (total)
            fprintf(stderr, "carseg: %s: %3d%% (%.1f of %.1f MB)%s\n", what,
                    (int)(100 * done / total), mb, tot, finished ? ", done" : "");
        else
            fprintf(stderr, "carseg: %s: %.1f MB%s\n", what, mb, finished ? ", done" : "");
    }
}

void carseg_models_set_progress(carseg_progress_fn fn, void *user) {
    g_progress = fn;
    g_progress_user = user;
}

void carseg_models_allow_download(int allow) { g_allow = allow < 0 ? -1 : allow ? 1 : 0; }

static int downloads_allowed(void) {
    if (g_allow >= 0) return g_allow;
    const char *e = getenv("CARSEG_OFFLINE");
    return !(e && *e && strcmp(e, "0") != 0);
}

#ifndef CARSEG_NO_CURL
typedef struct {
    int fd;
    sha256_ctx md;
    int write_err;
    const char *what;
    uint64_t done;
} dl_ctx;

static size_t dl_write(char *p, size_t sz, size_t nm, void *u) {
    dl_ctx *c = u;
    size_t n = sz * nm, off = 0;
    while (off < n) {
        ssize_t w = write(c->fd, p + off, n - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            c->write_err = errno;
            return 0;   /* makes curl fail with CURLE_WRITE_ERROR */
        }
        off += (size_t)w;
    }
    sha256_update(&c->md, p, n);
    c->done += n;
    return n;
}

static int dl_progress(void *u, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ul, curl_off_t uln) {
    (void)ul; (void)uln;
    dl_ctx *c = u;
    if (g_progress) g_progress(c->what, (uint64_t)dlnow, (uint64_t)(dltotal > 0 ? dltotal : 0), 0, g_progress_user);
    return 0;
}

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

#endif

static carseg_status offline_hint(carseg_status st, const entry *e, const char *url, const char *path,
                                  const char *why) {
    return set_err(st, "%s: %s. Without network: download %s yourself and put it at %s "
                   "(or give the file's path instead of the name '%s')",
                   e->info.name, why, url, path, e->info.name);
}

static int is_regular(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

#ifndef CARSEG_NO_CURL
static carseg_status download(const entry *e, const char *path) {
    char *url = entry_url(e);
    char *dir = NULL;
    if (!url) return set_err(CARSEG_ENOMEM, "out of memory");
    carseg_status st = carseg_models_cache_dir(&dir);
    if (!st) st = mkdir_p(dir);
    free(dir);
    if (st) { free(url); return st; }
    size_t pl = strlen(path) + 8;
    char *part = malloc(pl);
    if (!part) { free(url); return set_err(CARSEG_ENOMEM, "out of memory"); }
    snprintf(part, pl, "%s.part", path);
    int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = set_err(CARSEG_EIO, "%s: cannot create: %s", part, strerror(errno));
        free(part); free(url);
        return st;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        st = set_err(CARSEG_EIO, "%s: another carseg is downloading it right now (%s is locked); "
                     "wait for it to finish", e->info.name, part);
        close(fd); free(part); free(url);
        return st;
    }
    if (is_regular(path)) {   /* another process finished while we were starting */
        unlink(part);
        close(fd); free(part); free(url);
        return CARSEG_OK;
    }
    if (ftruncate(fd, 0) != 0) {
        st = set_err(CARSEG_EIO, "%s: cannot truncate: %s", part, strerror(errno));
        unlink(part); close(fd); free(part); free(url);
        return st;
    }
    pthread_once(&g_curl_once, curl_init_once);
    dl_ctx c = {.fd = fd, .what = e->info.file};
    sha256_init(&c.md);
    CURL *h = curl_easy_init();
    char errbuf[CURL_ERROR_SIZE] = "";
    if (!h) {
        st = set_err(CARSEG_ENOMEM, "%s: cannot start the download (curl init failed)", e->info.name);
        goto out;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, STALL_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "carseg/" CARSEG_VERSION);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, dl_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, dl_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (g_progress) g_progress(c.what, 0, 0, 0, g_progress_user);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK && g_progress) g_progress(c.what, c.done, 0, -1, g_progress_user);
    if (rc != CURLE_OK) {
        char why[CURL_ERROR_SIZE + 128];
        if (c.write_err)
            snprintf(why, sizeof why, "writing %s failed: %s", part, strerror(c.write_err));
        else
            snprintf(why, sizeof why, "download from %s failed: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        st = c.write_err ? set_err(CARSEG_EIO, "%s: %s", e->info.name, why)
                         : offline_hint(CARSEG_ENET, e, url, path, why);
        goto out;
    }
    uint8_t dg[32];
    char hex[65];
    sha256_final(&c.md, dg);
    sha256_hex(dg, hex);
    if (strcasecmp(hex, e->info.sha256) != 0) {
        st = set_err(CARSEG_ENET, "%s: checksum mismatch for %s (%llu bytes): sha256 %s, expected %s; "
                     "the download was deleted", e->info.name, url, (unsigned long long)c.done, hex,
                     e->info.sha256);
        goto out;
    }
    if (g_progress) g_progress(c.what, c.done, c.done, 1, g_progress_user);
    if (fsync(fd) != 0 || rename(part, path) != 0) {
        st = set_err(CARSEG_EIO, "%s: cannot move the download into place: %s", path, strerror(errno));
        goto out;
    }
out:
    if (st) unlink(part);
    if (h) curl_easy_cleanup(h);
    close(fd);
    free(part);
    free(url);
    return st;
}
#else
/* a build without libcurl (make NO_CURL=1): no downloader */
static carseg_status download(const entry *e, const char *path) {
    char *url = entry_url(e);
    carseg_status st = offline_hint(CARSEG_ENET, e, url ? url : e->info.url, path,
                                    "not in the cache, and this carseg was built without a downloader "
                                    "(make NO_CURL=1)");
    free(url);
    return st;
}
#endif

// ---------------------------------------------------------------------------------------------
// resolve

static carseg_status get_entry_file(const entry *e, int allow, char **path_out) {
    char *path;
    TRY(cache_path(e, &path));
    if (is_regular(path)) { *path_out = path; return CARSEG_OK; }
    carseg_status st;
    if (!allow) {
        char *url = entry_url(e);
        st = offline_hint(CARSEG_ENET, e, url ? url : e->info.url, path,
                          "not in the cache and downloads are off (CARSEG_OFFLINE)");
        free(url);
    } else {
        st = download(e, path);
    }
    if (st) { free(path); return st; }
    *path_out = path;
    return CARSEG_OK;
}

carseg_status models_resolve(const char *name_or_path, char **path_out) {
    if (!path_out) return set_err(CARSEG_EINVAL, "models_resolve: out is NULL");
    *path_out = NULL;
    if (!name_or_path || !*name_or_path) return set_err(CARSEG_EINVAL, "no model name or path given");
    struct stat sb;
    if (stat(name_or_path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return set_err(CARSEG_EINVAL, "%s: is a directory, not a model file", name_or_path);
        *path_out = cs_strdup(name_or_path);
        return *path_out ? CARSEG_OK : set_err(CARSEG_ENOMEM, "out of memory");
    }
    const entry *e;
    TRY(need_entry(name_or_path, &e));
    return get_entry_file(e, downloads_allowed(), path_out);
}

carseg_status models_resolve_kind(const char *name_or_path, const char *kind, char **path_out) {
    struct stat sb;
    const entry *e = name_or_path && stat(name_or_path, &sb) != 0 ? find_entry(name_or_path) : NULL;
    if (path_out) *path_out = NULL;
    if (e && kind && strcmp(e->info.kind, kind))
        return set_err(CARSEG_EINVAL, "'%s' names the known model %s of kind %s; this needs a %s model",
                       name_or_path, e->info.name, e->info.kind, kind);
    return models_resolve(name_or_path, path_out);
}

carseg_status models_resolve_vocab(const char *path_or_null, char **path_out) {
    return models_resolve(path_or_null ? path_or_null : "bpe", path_out);
}

carseg_status carseg_models_resolve(const char *name_or_path, char **path_out) {
    return models_resolve(name_or_path, path_out);
}
carseg_status carseg_models_resolve_vocab(const char *path_or_null, char **path_out) {
    return models_resolve_vocab(path_or_null, path_out);
}

carseg_status carseg_models_pull(const char *name, char **path_out) {
    if (path_out) *path_out = NULL;
    const entry *e;
    TRY(need_entry(name, &e));
    char *p;
    TRY(get_entry_file(e, 1, &p));
    if (path_out) *path_out = p; else free(p);
    return CARSEG_OK;
}
