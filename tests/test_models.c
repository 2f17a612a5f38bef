/* test_models.c — the model registry, the cache and downloads: names and aliases, cache place,
 * resolve of paths and names, download success (file:// and a loopback HTTP server), checksum
 * mismatch (nothing left behind), unreachable server (fast, clear error), offline mode, cache
 * hits, and the `carseg models` / `carseg tokenize` CLI on a cache filled by `models pull`. */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>


#include "check.h"
#include "models.h"
#include "sha256.h"
#include "util.h"

// ---------------------------------------------------------------------------------------------
// helpers

static const char *ENV_NAMES[] = {"CARSEG_CACHE", "CARSEG_MODELS_URL", "CARSEG_OFFLINE", "XDG_CACHE_HOME", "HOME"};
#define NENV 5
static char *g_saved[NENV];
static int g_saved_set[NENV];

/* Saves the environment the tests touch, points the cache at a fresh directory, no mirror. */
static const char *env_begin(void) {
    for (int i = 0; i < NENV; i++) {
        const char *v = getenv(ENV_NAMES[i]);
        g_saved_set[i] = v != NULL;
        g_saved[i] = v ? cs_strdup(v) : NULL;
    }
    static char cache[1024];
    snprintf(cache, sizeof cache, "%s/cache", test_tmpdir());
    setenv("CARSEG_CACHE", cache, 1);
    unsetenv("CARSEG_MODELS_URL");
    unsetenv("CARSEG_OFFLINE");
    carseg_models_allow_download(-1);
    return cache;
}
static void env_end(void) {
    for (int i = 0; i < NENV; i++) {
        if (g_saved_set[i]) setenv(ENV_NAMES[i], g_saved[i], 1);
        else unsetenv(ENV_NAMES[i]);
        free(g_saved[i]);
        g_saved[i] = NULL;
    }
    carseg_models_allow_download(-1);
    carseg_models_set_progress(carseg_models_progress_stderr, NULL);
}

/* the blobs' sha256 (sha256.c, itself checked against hashlib in util_sha256) */
static void blob_sha256(const void *d, size_t n, char hex[65]) {
    uint8_t dg[32];
    sha256_ctx m;
    sha256_init(&m);
    sha256_update(&m, d, n);
    sha256_final(&m, dg);
    sha256_hex(dg, hex);
}

/* Number of entries in dir (0 when it does not exist). */
static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Writes n deterministic bytes to path; returns them (malloc'd). */
static uint8_t *make_blob(const char *path, size_t n, unsigned seed) {
    uint8_t *b = malloc(n);
    if (!b) return NULL;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)((test_randf(&seed) + 1) * 127.5f);
    if (write_file_atomic(path, b, n) != CARSEG_OK) { free(b); return NULL; }
    return b;
}

static int g_prog_calls, g_prog_finished;
static void count_progress(const char *what, uint64_t done, uint64_t total, int finished, void *u) {
    (void)what; (void)done; (void)total; (void)u;
    g_prog_calls++;
    if (finished) g_prog_finished = finished;
}

// ---------------------------------------------------------------------------------------------

/* the download tests SKIP in a build without a downloader (make NO_CURL=1) */
#ifdef CARSEG_NO_CURL
#define NEED_DOWNLOADER() SKIP("built with NO_CURL=1: no downloader")
#else
#define NEED_DOWNLOADER() ((void)0)
#endif

TEST(models_names) {
    const carseg_model_info *b16 = carseg_models_find("ViT-B/16");
    REQUIRE(b16);
    CHECK(!strcmp(b16->file, "ViT-B-16.pt") && !strcmp(b16->kind, "clip"));
    const char *same[] = {"ViT-B-16", "vit-b16", "VIT_B_16", "ViT-B-16.pt", "vitb16"};
    for (int i = 0; i < 5; i++) CHECK_MSG(carseg_models_find(same[i]) == b16, "%s", same[i]);
    const carseg_model_info *l336 = carseg_models_find("ViT-L/14@336px");
    REQUIRE(l336);
    CHECK(carseg_models_find("vit-l14-336px") == l336 && carseg_models_find("ViT-L-14-336px.pt") == l336);
    CHECK(carseg_models_find("ViT-L/14") != l336 && carseg_models_find("ViT-L/14") != NULL);
    CHECK(carseg_models_find("ViT-B/32") != NULL);
    const carseg_model_info *bpe = carseg_models_find("bpe");
    REQUIRE(bpe);
    CHECK(carseg_models_find("bpe_simple_vocab_16e6.txt.gz") == bpe && !strcmp(bpe->kind, "vocab"));
    CHECK(!strcmp(bpe->sha256, "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"));
    CHECK(carseg_models_find("ViT-H/14") == NULL && carseg_models_find("") == NULL &&
          carseg_models_find(NULL) == NULL && carseg_models_find("--") == NULL);
    /* clip.py's convention: the URL's folder is the file's sha256 */
    for (int i = 0; i < carseg_models_count(); i++) {
        const carseg_model_info *m = carseg_models_get(i);
        if (strcmp(m->kind, "clip")) continue;
        char folder[80];
        snprintf(folder, sizeof folder, "/%s/%s", m->sha256, m->file);
        CHECK_MSG(strstr(m->url, folder) != NULL, "%s", m->name);
    }
    CHECK(carseg_models_get(-1) == NULL && carseg_models_get(carseg_models_count()) == NULL);
}

TEST(models_cache_dir) {
    env_begin();
    char *d = NULL;
    setenv("CARSEG_CACHE", "/x/y", 1);
    CHECK_OK(carseg_models_cache_dir(&d));
    CHECK(d && !strcmp(d, "/x/y"));
    free(d);
    unsetenv("CARSEG_CACHE");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    CHECK_OK(carseg_models_cache_dir(&d));
    CHECK(d && !strcmp(d, "/xdg/carseg"));
    free(d);
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", "/home/u", 1);
    CHECK_OK(carseg_models_cache_dir(&d));
    CHECK(d && !strcmp(d, "/home/u/.cache/carseg"));
    free(d);
    CHECK_OK(carseg_models_cache_path("vit-b16", &d));
    CHECK(d && !strcmp(d, "/home/u/.cache/carseg/ViT-B-16.pt"));
    free(d);
    unsetenv("HOME");
    CHECK(carseg_models_cache_dir(&d) == CARSEG_EINVAL && d == NULL);
    env_end();
}

TEST(models_resolve_paths) {
    const char *cache = env_begin();
    char f[1024], *p = NULL;
    snprintf(f, sizeof f, "%s/my model.pt", test_tmpdir());
    CHECK_OK(write_file_atomic(f, "x", 1));
    CHECK_OK(models_resolve(f, &p));
    CHECK(p && !strcmp(p, f));
    free(p);
    CHECK(models_resolve(test_tmpdir(), &p) == CARSEG_EINVAL && !p);
    CHECK(strstr(carseg_last_error(), "directory"));
    CHECK(models_resolve("ViT-H/14-no-such", &p) == CARSEG_EIO && !p);
    CHECK(strstr(carseg_last_error(), "no such file") && strstr(carseg_last_error(), "ViT-B/16"));
    CHECK(models_resolve("nonsense", &p) == CARSEG_EINVAL && !p);
    CHECK(strstr(carseg_last_error(), "known model") && strstr(carseg_last_error(), "ViT-L/14@336px"));
    CHECK(models_resolve("", &p) == CARSEG_EINVAL && models_resolve(NULL, &p) == CARSEG_EINVAL);
    CHECK(count_files(cache) == 0);
    env_end();
}

TEST(models_download_file_url) {
    NEED_DOWNLOADER();
    const char *cache = env_begin();
    char src[1024], url[1100], hex[65], *p = NULL;
    snprintf(src, sizeof src, "%s/blob-ok.bin", test_tmpdir());
    size_t n = 300000;
    uint8_t *blob = make_blob(src, n, 7);
    REQUIRE(blob);
    blob_sha256(blob, n, hex);
    snprintf(url, sizeof url, "file://%s", src);
    CHECK_OK(models_register("test-blob-ok", url, hex, "clip"));
    g_prog_calls = g_prog_finished = 0;
    carseg_models_set_progress(count_progress, NULL);
    CHECK_OK(models_resolve("Test_Blob_OK", &p));   /* a download (name matching as for the real ones) */
    REQUIRE(p);
    char want[1100];
    snprintf(want, sizeof want, "%s/blob-ok.bin", cache);
    CHECK(!strcmp(p, want));
    uint8_t *got;
    size_t gn;
    CHECK_OK(read_file(p, &got, &gn));
    CHECK(gn == n && !memcmp(got, blob, n));
    free(got);
    CHECK(count_files(cache) == 1);   /* no .part left */
    CHECK(g_prog_calls >= 2 && g_prog_finished == 1);
    free(p);
    /* cache hit: no download even with an unreachable mirror and downloads off */
    setenv("CARSEG_MODELS_URL", "http://127.0.0.1:1", 1);
    carseg_models_allow_download(0);
    g_prog_calls = 0;
    CHECK_OK(models_resolve("test-blob-ok", &p));
    CHECK(p && !strcmp(p, want) && g_prog_calls == 0);
    free(p);
    CHECK_OK(carseg_models_pull("test-blob-ok", NULL));
    CHECK(g_prog_calls == 0);
    free(blob);
    env_end();
}

TEST(models_checksum_mismatch) {
    NEED_DOWNLOADER();
    const char *cache = env_begin();
    carseg_models_set_progress(NULL, NULL);
    char src[1024], url[1100], hex[65], *p = NULL;
    snprintf(src, sizeof src, "%s/blob-bad.bin", test_tmpdir());
    uint8_t *blob = make_blob(src, 5000, 8);
    REQUIRE(blob);
    blob_sha256("something else", 14, hex);
    snprintf(url, sizeof url, "file://%s", src);
    CHECK_OK(models_register("test-blob-bad", url, hex, "clip"));
    CHECK(models_resolve("test-blob-bad", &p) == CARSEG_ENET && !p);
    CHECK_MSG(strstr(carseg_last_error(), "checksum mismatch") && strstr(carseg_last_error(), hex),
              "%s", carseg_last_error());
    CHECK(count_files(cache) == 0);
    /* a known name served wrong bytes through the mirror variable */
    char dir[1024], fake[1100];
    snprintf(dir, sizeof dir, "%s/mirror", test_tmpdir());
    CHECK_OK(mkdir_p(dir));
    snprintf(fake, sizeof fake, "%s/ViT-B-32.pt", dir);
    free(make_blob(fake, 4096, 9));
    snprintf(url, sizeof url, "file://%s/", dir);
    setenv("CARSEG_MODELS_URL", url, 1);
    CHECK(models_resolve("ViT-B/32", &p) == CARSEG_ENET && !p);
    CHECK_MSG(strstr(carseg_last_error(), "checksum mismatch") &&
              strstr(carseg_last_error(), "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
              "%s", carseg_last_error());
    CHECK(count_files(cache) == 0);
    /* a missing file behind a file:// mirror */
    CHECK(models_resolve("ViT-B/16", &p) == CARSEG_ENET && !p);
    CHECK(strstr(carseg_last_error(), "ViT-B-16.pt") != NULL);
    CHECK(count_files(cache) == 0);
    free(blob);
    env_end();
}

TEST(models_unreachable) {
    const char *cache = env_begin();
    carseg_models_set_progress(NULL, NULL);
    char *p = NULL;
    setenv("CARSEG_MODELS_URL", "http://127.0.0.1:1/models", 1);   /* nothing listens on port 1 */
    double t0 = now_ms();
    CHECK(models_resolve("ViT-B/16", &p) == CARSEG_ENET && !p);
    double ms = now_ms() - t0;
    const char *m = carseg_last_error();
    CHECK_MSG(ms < 5000, "took %.0f ms", ms);
    CHECK_MSG(strstr(m, "http://127.0.0.1:1/models/ViT-B-16.pt") && strstr(m, cache) &&
              strstr(m, "Without network") && strstr(m, "file's path"), "%s", m);
    CHECK(count_files(cache) == 0);
    /* the vocabulary the same way */
    CHECK(models_resolve_vocab(NULL, &p) == CARSEG_ENET && !p);
    CHECK(strstr(carseg_last_error(), "bpe_simple_vocab_16e6.txt.gz") != NULL);
    env_end();
}

TEST(models_concurrent_download) {
    NEED_DOWNLOADER();
    const char *cache = env_begin();
    carseg_models_set_progress(NULL, NULL);
    char src[1024], url[1100], hex[65], part[1100], *p = NULL;
    snprintf(src, sizeof src, "%s/blob-lock.bin", test_tmpdir());
    uint8_t *blob = make_blob(src, 1000, 12);
    REQUIRE(blob);
    blob_sha256(blob, 1000, hex);
    snprintf(url, sizeof url, "file://%s", src);
    CHECK_OK(models_register("test-blob-lock", url, hex, "clip"));
    /* another process holds the part file's lock: fail at once, say so, touch nothing */
    CHECK_OK(mkdir_p(cache));
    snprintf(part, sizeof part, "%s/blob-lock.bin.part", cache);
    int pp[2];
    REQUIRE(pipe(pp) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fd = open(part, O_RDWR | O_CREAT, 0644);
        if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(1);
        if (write(pp[1], "L", 1) != 1) _exit(1);   /* tell the parent: locked */
        sleep(30);   /* killed below */
        _exit(0);
    }
    close(pp[1]);
    char c = 0;
    CHECK(read(pp[0], &c, 1) == 1 && c == 'L');
    close(pp[0]);
    CHECK(models_resolve("test-blob-lock", &p) == CARSEG_EIO && !p);
    CHECK_MSG(strstr(carseg_last_error(), "another carseg is downloading"), "%s", carseg_last_error());
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* lock released: the download goes through; the stale part file is reused and renamed */
    CHECK_OK(models_resolve("test-blob-lock", &p));
    CHECK(p && count_files(cache) == 1);
    free(p);
    free(blob);
    env_end();
}

TEST(models_offline) {
    const char *cache = env_begin();
    carseg_models_set_progress(count_progress, NULL);
    g_prog_calls = 0;
    char *p = NULL;
    setenv("CARSEG_OFFLINE", "1", 1);
    CHECK(models_resolve("ViT-L/14", &p) == CARSEG_ENET && !p);
    CHECK(strstr(carseg_last_error(), "downloads are off") &&
          strstr(carseg_last_error(), "https://openaipublic.azureedge.net/clip/models/"));
    unsetenv("CARSEG_OFFLINE");
    carseg_models_allow_download(0);
    CHECK(models_resolve("ViT-L/14", &p) == CARSEG_ENET && !p);
    CHECK(g_prog_calls == 0 && count_files(cache) == 0);
    env_end();
}

/* A loopback-only HTTP server: /usr/bin/python3 -m http.server --bind 127.0.0.1 PORT. */
static pid_t start_server(const char *dir, int *port_out) {
    if (access("/usr/bin/python3", X_OK) != 0) return -1;
    for (int attempt = 0; attempt < 4; attempt++) {
        int port = 20000 + (int)((getpid() * 7919 + attempt * 104729) % 40000);
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) {
            char ps[16];
            snprintf(ps, sizeof ps, "%d", port);
            int devnull = open("/dev/null", O_WRONLY);
            if (devnull >= 0) { dup2(devnull, 1); dup2(devnull, 2); }
            execl("/usr/bin/python3", "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                  dir, ps, (char *)NULL);
            _exit(127);
        }
        for (int k = 0; k < 100; k++) {   /* up to 5 s for it to listen */
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) break;   /* exited: port taken? */
            int s = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((uint16_t)port);
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
            close(s);
            if (ok) { *port_out = port; return pid; }
            usleep(50000);
        }
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    return -1;
}

TEST(models_http_server) {
    NEED_DOWNLOADER();
    const char *cache = env_begin();
    carseg_models_set_progress(count_progress, NULL);
    char dir[1024], src[1100], url[1200], hex[65], *p = NULL;
    snprintf(dir, sizeof dir, "%s/www", test_tmpdir());
    CHECK_OK(mkdir_p(dir));
    snprintf(src, sizeof src, "%s/blob-http.bin", dir);
    size_t n = 2000000;
    uint8_t *blob = make_blob(src, n, 11);
    REQUIRE(blob);
    blob_sha256(blob, n, hex);
    int port = 0;
    pid_t pid = start_server(dir, &port);
    if (pid < 0) { free(blob); env_end(); SKIP("could not start /usr/bin/python3 -m http.server on 127.0.0.1"); }
    snprintf(url, sizeof url, "http://127.0.0.1:%d/blob-http.bin", port);
    CHECK_OK(models_register("test-blob-http", url, hex, "clip"));
    g_prog_finished = 0;
    CHECK_OK(models_resolve("test-blob-http", &p));
    if (p) {
        uint8_t *got;
        size_t gn;
        CHECK_OK(read_file(p, &got, &gn));
        CHECK(gn == n && !memcmp(got, blob, n));
        free(got);
        free(p);
    }
    CHECK(g_prog_finished == 1 && count_files(cache) == 1);
    /* 404 through the mirror variable: a clear error, nothing left */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing-here", port);
    setenv("CARSEG_MODELS_URL", url, 1);
    CHECK(models_resolve("ViT-B/16", &p) == CARSEG_ENET && !p);
    CHECK_MSG(strstr(carseg_last_error(), "404") && strstr(carseg_last_error(), "/nothing-here/ViT-B-16.pt"),
              "%s", carseg_last_error());
    CHECK(g_prog_finished == -1 && count_files(cache) == 1);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    free(blob);
    env_end();
}

TEST(models_cli) {
    NEED_DOWNLOADER();
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run through make test)");
    const char *vocab = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!vocab || !file_exists(vocab)) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    char dir[1024], cache[1024], env[3000], cmd[4096], *out = NULL;
    int rc;
    snprintf(dir, sizeof dir, "%s/mirror", test_tmpdir());
    snprintf(cache, sizeof cache, "%s/cache", test_tmpdir());
    CHECK_OK(mkdir_p(dir));
    uint8_t *v;
    size_t vn;
    REQUIRE(read_file(vocab, &v, &vn) == CARSEG_OK);
    snprintf(cmd, sizeof cmd, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
    CHECK_OK(write_file_atomic(cmd, v, vn));
    free(v);
    snprintf(env, sizeof env, "env -u CARSEG_OFFLINE CARSEG_CACHE='%s' CARSEG_MODELS_URL='file://%s'", cache, dir);
    /* offline and empty cache: tokenize fails, naming the URL and where to put the file */
    snprintf(cmd, sizeof cmd, "%s CARSEG_OFFLINE=1 '%s' tokenize hello 2>&1", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 1);
    CHECK_MSG(strstr(out, "carseg: error:") && strstr(out, "bpe_simple_vocab_16e6.txt.gz") && strstr(out, cache),
              "%s", out);
    snprintf(cmd, sizeof cmd, "%s '%s' models pull BPE 2>/dev/null", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 0);
    CHECK_MSG(strstr(out, cache) && strstr(out, "bpe_simple_vocab_16e6.txt.gz\n"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s '%s' models list 2>/dev/null", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 0);
    CHECK_MSG(strstr(out, "bpe ") && strstr(out, "cached") && strstr(out, "ViT-L/14@336px") &&
              strstr(out, "missing") && strstr(out, "openaipublic.azureedge.net"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s '%s' models path vocab", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 0 && strstr(out, cache));
    snprintf(cmd, sizeof cmd, "%s '%s' models path vit-b16 2>/dev/null", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 1 && strstr(out, "ViT-B-16.pt"));
    snprintf(cmd, sizeof cmd, "%s '%s' models pull nonsense 2>&1", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 1 && strstr(out, "known model"));
    snprintf(cmd, sizeof cmd, "%s '%s' models frobnicate 2>&1", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 2);
    snprintf(cmd, sizeof cmd, "%s '%s' models --help", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 0 && strstr(out, "usage"));
    /* tokenize without --vocab: the cached vocabulary, offline */
    snprintf(cmd, sizeof cmd, "%s CARSEG_OFFLINE=1 '%s' tokenize 'Hello World!' 2>&1", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 0);
    CHECK_MSG(!strcmp(out, "49406 3306 1002 256 49407\n"), "%s", out);
    /* pulling a wrong file: error, nothing in the cache */
    snprintf(cmd, sizeof cmd, "%s/ViT-B-16.pt", dir);
    CHECK_OK(write_file_atomic(cmd, "not a model", 11));
    snprintf(cmd, sizeof cmd, "%s '%s' models pull vit-b16 2>&1", env, bin);
    CHECK((free(out), out = test_capture(cmd, &rc), rc) == 1 && strstr(out, "checksum mismatch"));
    CHECK(count_files(cache) == 1);
    free(out);
}

/* make NO_CURL=1: a name not in the cache fails, saying the build has no downloader; a cached
 * file still resolves by name (scripts/test_nocurl.sh runs this build's tests) */
TEST(models_no_downloader) {
#ifndef CARSEG_NO_CURL
    SKIP("this build has a downloader (scripts/test_nocurl.sh runs the NO_CURL=1 build)");
#else
    const char *dir = test_tmpdir();
    setenv("CARSEG_CACHE", dir, 1);
    carseg_models_allow_download(1);
    char *path = NULL;
    CHECK(carseg_models_pull("ViT-B/16", &path) == CARSEG_ENET && !path);
    CHECK_MSG(strstr(carseg_last_error(), "built without a downloader") != NULL, "%s", carseg_last_error());
    CHECK(carseg_models_resolve("vit-b16", &path) == CARSEG_ENET);
    char file[600];
    snprintf(file, sizeof file, "%s/ViT-B-16.pt", dir);
    CHECK_OK(write_file_atomic(file, "x", 1));
    CHECK_OK(carseg_models_resolve("ViT-B/16", &path));
    CHECK(path && !strcmp(path, file));
    free(path);
    carseg_models_allow_download(-1);
    unsetenv("CARSEG_CACHE");
#endif
}
