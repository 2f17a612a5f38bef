/* test_tokenizer.c — the CLIP tokenizer against upstream outputs: the shared golden fixtures, the
 * committed oracle cases (scripts/clip_tokenizer_oracle.py), the HF merges.txt form, hostile
 * vocabulary files and a deterministic corruption loop, and the `carseg tokenize` CLI. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <zlib.h>

#include "check.h"
#include "tokenizer.h"
#include "util.h"

static const char *vocab_path(void) {
    const char *p = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    return p && file_exists(p) ? p : NULL;
}

static tokenizer *g_tok;   /* opened once: every test below shares it (read-only) */
static tokenizer *shared_tok(void) {
    if (!g_tok && vocab_path()) {
        carseg_status st = tok_open(vocab_path(), &g_tok);
        if (st) fprintf(stderr, "  tok_open: %s\n", carseg_last_error());
    }
    return g_tok;
}

/* Compares tok_encode and tok_tokenize of text (n bytes: may hold no NUL) with a case. */
static int check_case(tokenizer *t, const char *text, const json *c, const char *what) {
    const json *bpe = json_get(c, "bpe_ids"), *ctx = json_get(c, "context_ids");
    if (!bpe || !ctx) { CHECK_MSG(0, "%s: case lacks ids", what); return 0; }
    int32_t ids[4096], tk[CLIP_CONTEXT];
    int n = tok_encode(t, text, ids, 4096);
    int ok = n == (int)bpe->len;
    for (int i = 0; ok && i < n; i++) ok = ids[i] == (int32_t)json_at(bpe, (size_t)i)->num;
    int m = tok_tokenize(t, text, tk, CLIP_CONTEXT);
    int ok2 = m == (int)ctx->len;
    for (int i = 0; ok2 && i < m; i++) ok2 = tk[i] == (int32_t)json_at(ctx, (size_t)i)->num;
    for (int i = m > 0 ? m : 0; ok2 && i < CLIP_CONTEXT; i++) ok2 = tk[i] == 0;
    CHECK_MSG(ok, "%s: bpe ids differ for %s (got %d ids, want %zu)", what, text, n, bpe->len);
    CHECK_MSG(ok2, "%s: context ids differ for %s (got %d, want %zu)", what, text, m, ctx->len);
    return ok && ok2;
}

TEST(tokenizer_fixtures) {
    const char *cases = shared_path("fixtures/tokenizer_cases.json");
    const char *expected = shared_path("fixtures/clip_sg/expected.json");
    if (!cases || !vocab_path()) SKIP("shared fixtures or clip/bpe_simple_vocab_16e6.txt.gz missing");
    tokenizer *t = shared_tok();
    REQUIRE(t);
    CHECK(tok_is_openai(t));
    json *j = json_parse_file(cases);
    REQUIRE(j);
    const json *arr = json_get(j, "cases");
    REQUIRE(arr && arr->len >= 30);
    for (size_t i = 0; i < arr->len; i++)
        check_case(t, json_str(json_at(arr, i), "text", ""), json_at(arr, i), "tokenizer_cases.json");
    json_free(j);

    j = json_parse_file(expected);
    REQUIRE(j);
    const json *texts = json_get(j, "texts"), *toks = json_get(j, "tokens");
    REQUIRE(texts && toks && texts->len == toks->len && texts->len > 0);
    for (size_t i = 0; i < texts->len; i++) {
        int32_t tk[CLIP_CONTEXT];
        const json *want = json_at(toks, i);
        int m = tok_tokenize(t, json_at(texts, i)->str, tk, CLIP_CONTEXT);
        int ok = m == (int)want->len;
        for (int k = 0; ok && k < m; k++) ok = tk[k] == (int32_t)json_at(want, (size_t)k)->num;
        CHECK_MSG(ok, "clip_sg/expected.json tokens of '%s'", json_at(texts, i)->str);
    }
    json_free(j);
}

static int unhex(const char *h, char *out, size_t cap) {
    size_t n = strlen(h) / 2;
    if (n + 1 > cap) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (char)v;
    }
    out[n] = 0;
    return (int)n;
}

TEST(tokenizer_oracle_cases) {
    const char *f = "tests/data/tokenizer/oracle_cases.json";
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    if (!file_exists(f)) SKIP("%s not found (run the tests from the repository root)", f);
    tokenizer *t = shared_tok();
    REQUIRE(t);
    json *j = json_parse_file(f);
    REQUIRE(j);
    const json *arr = json_get(j, "cases");
    REQUIRE(arr && arr->len >= 800);
    int bad = 0;
    for (size_t i = 0; i < arr->len; i++) {
        const json *c = json_at(arr, i);
        const char *hex = json_str(c, "hex", NULL);
        char buf[256];
        const char *text = json_str(c, "text", NULL);
        if (hex) {
            REQUIRE(unhex(hex, buf, sizeof buf) >= 0);
            text = buf;
        }
        REQUIRE(text);
        if (!check_case(t, text, c, "oracle_cases.json") && ++bad > 5) break;
    }
    json_free(j);
}

/* the decompressed vocabulary: header + every line */
static char *vocab_text(size_t *n) {
    gzFile g = gzopen(vocab_path(), "rb");
    if (!g) return NULL;
    size_t cap = 4 << 20, len = 0;
    char *buf = malloc(cap);
    int r;
    while (buf && (r = gzread(g, buf + len, (unsigned)(cap - len))) > 0) {
        len += (size_t)r;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    gzclose(g);
    *n = len;
    return buf;
}

/* offset just past line `lines` (0-based count of '\n') */
static size_t line_end(const char *s, size_t n, int lines) {
    size_t i = 0;
    for (int k = 0; k < lines && i < n; i++) if (s[i] == '\n') k++;
    return i;
}

static const char *SAMPLES[] = {
    "a photo of a cat.", "There is a large sofa in the scene.", "café naïve résumé", "日本語のテキスト",
    "&amp; &lt;html&gt;", "ΟΔΟΣ", "emoji 🐱🐶", "supercalifragilisticexpialidocious"};

static void same_as_gz(tokenizer *a, tokenizer *b, const char *what) {
    for (size_t i = 0; i < sizeof SAMPLES / sizeof *SAMPLES; i++) {
        int32_t x[CLIP_CONTEXT], y[CLIP_CONTEXT];
        int n = tok_tokenize(a, SAMPLES[i], x, CLIP_CONTEXT), m = tok_tokenize(b, SAMPLES[i], y, CLIP_CONTEXT);
        CHECK_MSG(n == m && n > 2 && !memcmp(x, y, sizeof x), "%s: '%s'", what, SAMPLES[i]);
    }
}

TEST(tokenizer_merges_txt) {
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    tokenizer *gz = shared_tok();
    REQUIRE(gz);
    size_t n;
    char *txt = vocab_text(&n);
    REQUIRE(txt);
    /* Hugging Face merges.txt: "#version: 0.2" + the 48894 merges */
    size_t hdr = line_end(txt, n, 1), body = line_end(txt, n, 1 + CLIP_NMERGES);
    char path[1024];
    snprintf(path, sizeof path, "%s/merges.txt", test_tmpdir());
    size_t cap = 32 + 2 * (body - hdr);
    char *hf = malloc(cap);
    REQUIRE(hf);
    int l = snprintf(hf, cap, "#version: 0.2\n");
    memcpy(hf + l, txt + hdr, body - hdr);
    CHECK_OK(write_file_atomic(path, hf, (size_t)l + body - hdr));
    tokenizer *t = NULL;
    CHECK_OK(tok_open(path, &t));
    if (t) {
        CHECK(tok_is_openai(t));
        same_as_gz(gz, t, "merges.txt");
        tok_close(t);
    }
    /* CRLF line endings, no final newline */
    size_t k = 0;
    k += (size_t)snprintf(hf, cap, "#version: 0.2\r\n");
    for (size_t i = hdr; i < body - 1; i++) {
        if (txt[i] == '\n') hf[k++] = '\r';
        hf[k++] = txt[i];
    }
    CHECK_OK(tok_open_mem(hf, k, "crlf merges.txt", &t));
    if (t) {
        same_as_gz(gz, t, "CRLF merges.txt");
        tok_close(t);
    }
    /* the same vocabulary with other merges: opens, with a warning, and is flagged */
    memcpy(hf, "#version: 0.2\n", 14);
    memcpy(hf + 14, txt + hdr, body - hdr);
    char *p = strstr(hf + 14, "\nt h\n");
    REQUIRE(p);
    p[1] = 'h'; p[3] = 't';   /* "t h" -> "h t" */
    carseg_set_log_level(CARSEG_LOG_ERROR);   /* silence the expected warning */
    CHECK_OK(tok_open_mem(hf, 14 + body - hdr, "other merges", &t));
    carseg_set_log_level(CARSEG_LOG_WARN);
    if (t) { CHECK(!tok_is_openai(t)); tok_close(t); }
    free(hf);
    free(txt);
}

static void expect_fail(const void *data, size_t n, const char *name, const char *needle) {
    tokenizer *t = NULL;
    carseg_status st = tok_open_mem(data, n, name, &t);
    CHECK_MSG(st != CARSEG_OK && t == NULL, "%s: opened", name);
    const char *m = carseg_last_error();
    CHECK_MSG(strstr(m, name) != NULL, "%s: message does not name it: %s", name, m);
    CHECK_MSG(!needle || strstr(m, needle), "%s: message lacks '%s': %s", name, needle, m);
    tok_close(t);
}

TEST(tokenizer_hostile_files) {
    tokenizer *t = NULL;
    CHECK(tok_open("/nonexistent/vocab.txt.gz", &t) == CARSEG_EIO && !t);
    CHECK(strstr(carseg_last_error(), "/nonexistent/vocab.txt.gz") != NULL);
    CHECK(tok_open(test_tmpdir(), &t) != CARSEG_OK);   /* a directory */
    expect_fail("", 0, "empty.txt", "empty");
    expect_fail("hello\nworld\n", 12, "nohdr.txt", "#version");
    expect_fail("#version: 0.2\n", 14, "hdronly.txt", "truncated");
    expect_fail("#version: 0.2\ni n\nt h\n", 22, "short.txt", "2 merges");
    expect_fail("#version: 0.2\ni n\nt\n", 20, "onesym.txt", "line 3");
    expect_fail("#version: 0.2\ni n x\n", 20, "threesym.txt", "line 2");
    expect_fail("#version: 0.2\n\xd0\x80 n\n", 19, "badchar.txt", "alphabet");
    expect_fail("#version: 0.2\n\xff n\n", 18, "badutf8.txt", "UTF-8");
    expect_fail("#version: 0.2\ni\0n\n", 18, "nul.txt", "NUL");
    expect_fail("\x1f\x8b", 2, "tiny.gz", "gzip");
    expect_fail("\x1f\x8b\x08\0\0\0\0\0\0\x03garbage", 18, "garbage.gz", "gzip");
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing: skipped the gzip cases");
    uint8_t *gz;
    size_t n;
    REQUIRE(read_file(vocab_path(), &gz, &n) == CARSEG_OK);
    expect_fail(gz, n / 2, "half.gz", "truncated");
    expect_fail(gz, n - 4, "nolen.gz", NULL);   /* no ISIZE trailer */
    gz[n / 3] ^= 0x55;
    expect_fail(gz, n, "flipped.gz", NULL);
    gz[n / 3] ^= 0x55;
    gz[n - 6] ^= 1;   /* CRC */
    expect_fail(gz, n, "crc.gz", "corrupt");
    gz[n - 6] ^= 1;
    /* trailing garbage vs zero padding vs a second member */
    uint8_t *big = malloc(2 * n + 16);
    REQUIRE(big);
    memcpy(big, gz, n);
    memset(big + n, 0, 16);
    CHECK_OK(tok_open_mem(big, n + 16, "padded.gz", &t));
    tok_close(t);
    memcpy(big + n, "junk", 4);
    expect_fail(big, n + 4, "junk.gz", "garbage");
    memcpy(big + n, gz, n);
    CHECK_OK(tok_open_mem(big, 2 * n, "twomembers.gz", &t));
    tok_close(t);
    free(big);
    free(gz);
}

/* Deterministic corruption: flipped bytes, truncations, spliced lines in the gzip and in the
 * plain text. Every outcome must be a clean error or a working tokenizer (ASan checks the rest). */
TEST(tokenizer_corruption_loop) {
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    uint8_t *gz;
    size_t n, tn;
    REQUIRE(read_file(vocab_path(), &gz, &n) == CARSEG_OK);
    char *txt = vocab_text(&tn);
    REQUIRE(txt);
    tn = line_end(txt, tn, 1 + CLIP_NMERGES);   /* what is used, plus nothing after */
    uint8_t *buf = malloc(n > tn ? n : tn);
    REQUIRE(buf);
    unsigned seed = 12345;
    int opened = 0, failed = 0;
    carseg_set_log_level(CARSEG_LOG_ERROR);   /* "not OpenAI's merges" warnings */
    for (int it = 0; it < 48; it++) {
        int plain = it & 1;
        const uint8_t *src = plain ? (const uint8_t *)txt : gz;
        size_t len = plain ? tn : n;
        memcpy(buf, src, len);
        int kind = (it / 2) % 4;
        uint32_t r = (uint32_t)((test_randf(&seed) + 1) * 0.5f * 16777216.0f);
        size_t pos = len ? (size_t)r % len : 0;
        if (kind == 0) buf[pos] ^= (uint8_t)(1 + r % 255);                 /* flip one byte */
        else if (kind == 1) len = pos;                                     /* truncate */
        else if (kind == 2) for (int k = 0; k < 8; k++) buf[(pos + 997u * (unsigned)k) % len] = (uint8_t)(r >> k); /* spray */
        else if (len > 64) memmove(buf + pos / 2, buf + pos, len - pos), len -= pos - pos / 2;   /* cut a span */
        tokenizer *t = NULL;
        carseg_status st = tok_open_mem(buf, len, "corrupt", &t);
        if (st == CARSEG_OK) {
            opened++;
            int32_t ids[CLIP_CONTEXT];
            for (size_t i = 0; i < sizeof SAMPLES / sizeof *SAMPLES; i++)
                CHECK(tok_tokenize(t, SAMPLES[i], ids, CLIP_CONTEXT) >= 2);
            tok_close(t);
        } else {
            failed++;
            CHECK(t == NULL);
            CHECK(strstr(carseg_last_error(), "corrupt") != NULL);
        }
    }
    carseg_set_log_level(CARSEG_LOG_WARN);
    CHECK(failed > 10);   /* most corruptions are caught */
    fprintf(stderr, "  corruption loop: %d opened, %d rejected\n", opened, failed);
    free(buf);
    free(txt);
    free(gz);
}

TEST(tokenizer_api) {
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    tokenizer *t = shared_tok();
    REQUIRE(t);
    int32_t ids[CLIP_CONTEXT];
    CHECK(tok_tokenize(t, "a photo of a cat.", ids, 2) == 2 && ids[0] == CLIP_SOT && ids[1] == CLIP_EOT);
    CHECK(tok_tokenize(t, "a photo of a cat.", ids, 4) == 4 && ids[1] == 320 && ids[2] == 1125 &&
          ids[3] == CLIP_EOT);
    CHECK(tok_tokenize(t, "x", ids, 1) == -1);
    CHECK(tok_tokenize(NULL, "x", ids, 77) == -1);
    CHECK(tok_tokenize(t, NULL, ids, 77) == -1);
    CHECK(tok_encode(t, "a photo of a cat.", NULL, 0) == 6);   /* count only */
    CHECK(tok_encode(t, "a photo of a cat.", ids, 2) == 6 && ids[0] == 320 && ids[1] == 1125);
    CHECK(tok_encode(t, "<|startoftext|>hi<|endoftext|>", ids, 10) == 3 && ids[0] == CLIP_SOT &&
          ids[2] == CLIP_EOT);
    /* public names */
    carseg_tokenizer *pt = NULL;
    CHECK_OK(carseg_tokenizer_open(vocab_path(), &pt));
    CHECK(carseg_tokenize(pt, "sky", ids, CARSEG_CONTEXT) == 3 && ids[1] == 2390 && ids[3] == 0);
    CHECK(carseg_tokenizer_encode(pt, "sky", ids, 1) == 1);
    carseg_tokenizer_close(pt);
    carseg_tokenizer_close(NULL);
}

TEST(tokenizer_long_input) {
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    tokenizer *t = shared_tok();
    REQUIRE(t);
    size_t n = 1 << 20;   /* one 1 MiB word, then 1 MiB of short words: bounded time */
    char *s = malloc(n + 1);
    REQUIRE(s);
    for (size_t i = 0; i < n; i++) s[i] = (char)('a' + (i * 7 + i / 13) % 26);
    s[n] = 0;
    double t0 = now_ms();
    int32_t ids[CLIP_CONTEXT];
    int c = tok_encode(t, s, NULL, 0);
    CHECK(c > 1000);
    CHECK(tok_tokenize(t, s, ids, CLIP_CONTEXT) == CLIP_CONTEXT && ids[76] == CLIP_EOT);
    for (size_t i = 0; i < n; i++) s[i] = i % 4 == 3 ? ' ' : 'q';
    CHECK(tok_tokenize(t, s, ids, CLIP_CONTEXT) == CLIP_CONTEXT);
    double ms = now_ms() - t0;
    CHECK_MSG(ms < 20000, "long input took %.0f ms", ms);
    free(s);
}

TEST(tokenize_cli) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run through make test)");
    if (!vocab_path()) SKIP("clip/bpe_simple_vocab_16e6.txt.gz missing from the shared folder");
    char cmd[4096], out[4096] = "";
    snprintf(cmd, sizeof cmd, "'%s' tokenize --vocab '%s' 'a photo of a cat.' 'Hello World!' '' 2>&1", bin,
             vocab_path());
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    CHECK(pclose(p) == 0);
    CHECK_MSG(!strcmp(out, "49406 320 1125 539 320 2368 269 49407\n49406 3306 1002 256 49407\n49406 49407\n"),
              "got: %s", out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --vocab '%s' --bpe -- '--dash' 2>&1", bin, vocab_path());
    p = popen(cmd, "r");
    REQUIRE(p);
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    CHECK(pclose(p) == 0);
    CHECK_MSG(strlen(out) > 2 && !strchr(out, ':'), "got: %s", out);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --vocab /nonexistent/v.gz hi 2>&1", bin);
    p = popen(cmd, "r");
    REQUIRE(p);
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    CHECK(WEXITSTATUS(pclose(p)) == 1);
    CHECK_MSG(strstr(out, "carseg: error: /nonexistent/v.gz: no such file") != NULL, "got: %s", out);
}

__attribute__((destructor)) static void close_shared_tok(void) { tok_close(g_tok); }
