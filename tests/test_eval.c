/* test_eval.c — metrics (hand-computed confusion matrices, refer metrics), label files, the
 * journal, the pickle reader, dataset layouts (synthetic fixtures), and `carseg eval` end to end:
 * numbers equal to a numpy re-implementation of evaluate.semantic_iou, kill -9 + resume,
 * shards + merge. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <tiffio.h>
#include <unistd.h>

#include "check.h"
#include "eval.h"

static carseg_confusion cm_from(int n, const int (*gp)[3], int k) {
    carseg_confusion cm;
    carseg_confusion_init(&cm, n);
    for (int i = 0; i < k; i++) {
        uint16_t g = (uint16_t)gp[i][0], p = (uint16_t)gp[i][1];
        for (int c = 0; c < gp[i][2]; c++) carseg_confusion_add(&cm, &g, &p, 1);
    }
    return cm;
}

TEST(eval_miou_perfect) {
    uint16_t gt[12] = {0, 0, 1, 1, 2, 2, 255, 0, 5, 5, 1, 0};
    carseg_confusion cm;
    CHECK_OK(carseg_confusion_init(&cm, 21));
    carseg_confusion_add(&cm, gt, gt, 12);
    carseg_miou m;
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_REFERENCE, &m));
    CHECK_NEAR(m.miou, 100.0, 1e-12);
    CHECK_NEAR(m.pixel_acc, 100.0, 1e-12);
    CHECK(m.n_scored == 4);
    CHECK(isnan(m.iou[3]) && !m.scored[3]);
    carseg_miou_free(&m);
    CHECK_OK(carseg_confusion_score(&cm, 1, CARSEG_MIOU_MMSEG, &m));
    CHECK_NEAR(m.miou, 100.0, 1e-12);
    CHECK(m.n_scored == 3);
    carseg_miou_free(&m);
    carseg_confusion_free(&cm);
}

/* rows g0: [4,1,1], g1: [2,3,0], g2: none; one ignored GT pixel (255) */
static const int HAND[][3] = {{0, 0, 4}, {0, 1, 1}, {0, 2, 1}, {1, 1, 3}, {1, 0, 2}, {255, 1, 1}};

TEST(eval_miou_hand_computed) {
    carseg_confusion cm = cm_from(3, HAND, 6);
    carseg_miou m;
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_REFERENCE, &m));
    CHECK_NEAR(m.iou[0], 50.0, 1e-9);            /* 4 / (6 + 6 - 4) */
    CHECK_NEAR(m.iou[1], 50.0, 1e-9);            /* 3 / (5 + 4 - 3) */
    CHECK_NEAR(m.iou[2], 0.0, 1e-9);             /* predicted, no GT */
    CHECK(!m.scored[2] && m.n_scored == 2);      /* excluded from the mean */
    CHECK_NEAR(m.miou, 50.0, 1e-9);
    CHECK_NEAR(m.pixel_acc, 100.0 * 7 / 11, 1e-9);
    CHECK_NEAR(m.mean_acc, 100.0 * (4.0 / 6 + 3.0 / 5) / 2, 1e-9);
    CHECK_NEAR(m.fwiou, 50.0, 1e-9);
    carseg_miou_free(&m);
    /* mmseg: predicted-but-absent class 2 scores 0 and counts */
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_MMSEG, &m));
    CHECK_NEAR(m.miou, 100.0 / 3, 1e-9);
    carseg_miou_free(&m);
    /* ignore_background, reference (Q13): row and column 0 dropped -> class 1 = 3/3 */
    CHECK_OK(carseg_confusion_score(&cm, 1, CARSEG_MIOU_REFERENCE, &m));
    CHECK(isnan(m.iou[0]));
    CHECK_NEAR(m.iou[1], 100.0, 1e-9);
    CHECK_NEAR(m.miou, 100.0, 1e-9);
    CHECK_NEAR(m.pixel_acc, 100.0, 1e-9);
    carseg_miou_free(&m);
    /* ignore_background, mmseg: predicted 0 on GT 1 is a miss -> 3 / 5 */
    CHECK_OK(carseg_confusion_score(&cm, 1, CARSEG_MIOU_MMSEG, &m));
    CHECK_NEAR(m.iou[1], 60.0, 1e-9);
    CHECK_NEAR(m.miou, 60.0, 1e-9);
    carseg_miou_free(&m);
    /* a prediction outside the classes is a miss of its GT class */
    uint16_t g = 1, p = 7;
    carseg_confusion_add(&cm, &g, &p, 1);
    CHECK(cm.counts[1 * 4 + 3] == 1);
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_REFERENCE, &m));
    CHECK_NEAR(m.iou[1], 100.0 * 3 / 7, 1e-9);
    carseg_miou_free(&m);
    /* merge = sum */
    carseg_confusion c2 = cm_from(3, HAND, 6), c3;
    CHECK_OK(carseg_confusion_merge(&c2, &cm));
    CHECK(c2.counts[0] == 8);
    CHECK_OK(carseg_confusion_init(&c3, 4));
    CHECK(carseg_confusion_merge(&c3, &cm) == CARSEG_EINVAL);
    carseg_confusion_free(&c3);
    carseg_confusion_free(&c2);
    carseg_confusion_free(&cm);
    /* nothing scored -> 0, as the reference */
    CHECK_OK(carseg_confusion_init(&cm, 3));
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_REFERENCE, &m));
    CHECK(m.miou == 0 && m.n_scored == 0);
    carseg_miou_free(&m);
    carseg_confusion_free(&cm);
}

TEST(eval_refer_metrics) {
    carseg_refer_stats s = {0};
    carseg_refer_add(&s, 5, 10);
    carseg_refer_add(&s, 9, 10);
    carseg_refer_add(&s, 0, 0);   /* empty union: IoU 0 */
    carseg_refer_add(&s, 6, 10);
    double mi, oi, pr[5];
    carseg_refer_summary(&s, &mi, &oi, pr);
    CHECK_NEAR(mi, 50.0, 1e-5);
    CHECK_NEAR(oi, 100.0 * 20 / 30, 1e-9);
    CHECK_NEAR(pr[0], 75.0, 1e-9);
    CHECK_NEAR(pr[1], 50.0, 1e-9);   /* 0.6f >= 0.6f */
    CHECK_NEAR(pr[2], 25.0, 1e-9);
    CHECK_NEAR(pr[3], 25.0, 1e-9);
    CHECK_NEAR(pr[4], 25.0, 1e-9);   /* 0.9f >= 0.9f */
    uint8_t a[6] = {1, 1, 0, 0, 1, 0}, b[6] = {1, 0, 0, 1, 1, 0};
    uint64_t I, U;
    carseg_mask_iou(a, b, 6, &I, &U);
    CHECK(I == 2 && U == 4);
}

static void write_tiff16(const char *path, const uint16_t *v, int w, int h) {
    TIFF *t = TIFFOpen(path, "w");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, h);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, h);
    for (int y = 0; y < h; y++) TIFFWriteScanline(t, (void *)(v + (size_t)y * w), (uint32_t)y, 0);
    TIFFClose(t);
}

TEST(eval_labels_io) {
    const char *dir = test_tmpdir();
    char p8[600], p16[600], pt[600], bad[600];
    snprintf(p8, sizeof p8, "%s/a.png", dir);
    snprintf(p16, sizeof p16, "%s/b.png", dir);
    snprintf(pt, sizeof pt, "%s/c.tif", dir);
    snprintf(bad, sizeof bad, "%s/bad.png", dir);
    enum { W = 7, H = 5 };
    uint16_t v8[W * H], v16[W * H];
    for (int i = 0; i < W * H; i++) { v8[i] = (uint16_t)(i * 7 % 256); v16[i] = (uint16_t)(i * 1999 % 65536); }
    CHECK_OK(carseg_labels_save_png(p8, v8, W, H));
    CHECK_OK(carseg_labels_save_png(p16, v16, W, H));
    write_tiff16(pt, v16, W, H);
    int w, h;
    uint16_t *r;
    CHECK_OK(labels_read(p8, &w, &h, &r));
    CHECK(w == W && h == H && r && !memcmp(r, v8, sizeof v8));
    free(r);
    CHECK_OK(labels_read(p16, &w, &h, &r));
    CHECK(w == W && h == H && r && !memcmp(r, v16, sizeof v16));
    free(r);
    CHECK_OK(labels_read(pt, &w, &h, &r));
    CHECK(w == W && h == H && r && !memcmp(r, v16, sizeof v16));
    free(r);
    /* every truncation of a PNG and a TIFF is an error, never a crash */
    const char *srcs[2] = {p16, pt};
    for (int s = 0; s < 2; s++) {
        uint8_t *buf;
        size_t len;
        REQUIRE(read_file(srcs[s], &buf, &len) == CARSEG_OK);
        int fails = 0;
        for (size_t cut = 0; cut < len; cut += (len > 100 ? 5 : 1)) {
            FILE *bf = fopen(bad, "wb");
            REQUIRE(bf);
            fwrite(buf, 1, cut, bf);
            fclose(bf);
            uint16_t *x = NULL;
            if (labels_read(bad, &w, &h, &x) != CARSEG_OK) fails++;
            free(x);
        }
        CHECK(fails > 0);
        free(buf);
    }
    CHECK(labels_read("/nonexistent/x.png", &w, &h, &r) == CARSEG_EIO);
}

TEST(eval_journal_roundtrip) {
    uint16_t gt[8] = {0, 0, 1, 1, 2, 255, 1, 0}, pr[8] = {0, 1, 1, 1, 2, 2, 9, 0};
    journal_rec r;
    CHECK_OK(journal_from_labels(&r, "img \"1\"", gt, pr, 8, 3));
    char *line = journal_format(&r, 0);
    REQUIRE(line && line[strlen(line) - 1] == '\n');
    journal_rec q;
    CHECK(journal_parse(line, strlen(line) - 1, &q, 0) == 0);
    CHECK(q.id && !strcmp(q.id, "img \"1\""));
    carseg_confusion a, b;
    carseg_confusion_init(&a, 3);
    carseg_confusion_init(&b, 3);
    carseg_confusion_add(&a, gt, pr, 8);
    CHECK(journal_add_to(&q, &b) == 0);
    CHECK(!memcmp(a.counts, b.counts, 3 * 4 * sizeof(uint64_t)));
    /* a torn line (any strict prefix) never parses */
    int torn_ok = 0;
    for (size_t cut = 0; cut + 1 < strlen(line); cut++) {
        journal_rec t;
        if (journal_parse(line, cut, &t, 0) == 0) { torn_ok++; journal_rec_free(&t); }
    }
    CHECK(torn_ok == 0);
    /* out-of-range triples are refused */
    carseg_confusion small;
    carseg_confusion_init(&small, 2);
    CHECK(journal_add_to(&q, &small) != 0);
    carseg_confusion_free(&small);
    journal_rec_free(&q);
    free(line);
    r.inter = 3; r.uni = 7;
    line = journal_format(&r, 1);
    CHECK(journal_parse(line, strlen(line) - 1, &q, 1) == 0 && q.inter == 3 && q.uni == 7);
    journal_rec_free(&q);
    CHECK(journal_parse("{\"id\":\"x\",\"i\":8,\"u\":7}", 23, &q, 1) != 0);   /* I > U */
    free(line);
    journal_rec_free(&r);
    carseg_confusion_free(&a);
    carseg_confusion_free(&b);
}

TEST(eval_pickle_reader) {
    /* [ {"a": 5, "b": [1, 300, -2], "s": "val"}, <memo copy of "val">, 1.5, None, True ]
     * written by hand in protocol 2 */
    static const uint8_t pk[] = {
        0x80, 2, ']', 'q', 0, '(', '}', 'q', 1, '(',
        'X', 1, 0, 0, 0, 'a', 'K', 5,
        'X', 1, 0, 0, 0, 'b', ']', 'q', 2, '(', 'K', 1, 'M', 0x2c, 0x01, 'J', 0xfe, 0xff, 0xff, 0xff, 'e',
        'X', 1, 0, 0, 0, 's', 'X', 3, 0, 0, 0, 'v', 'a', 'l', 'q', 3,
        'u', 'h', 3, 'G', 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 'N', 0x88, 'e', '.'};
    char err[128];
    json *j = pickle_to_json(pk, sizeof pk, err, sizeof err);
    REQUIRE(j != NULL);
    CHECK(j->type == JSON_ARR && j->len == 5);
    const json *d = json_at(j, 0);
    CHECK(json_num(d, "a", 0) == 5);
    const json *b = json_get(d, "b");
    CHECK(b && b->len == 3 && b->kids[1]->num == 300 && b->kids[2]->num == -2);
    CHECK(!strcmp(json_str(d, "s", ""), "val"));
    CHECK(json_at(j, 1)->type == JSON_STR && !strcmp(json_at(j, 1)->str, "val"));
    CHECK(json_at(j, 2)->num == 1.5);
    CHECK(json_at(j, 3)->type == JSON_NULL && json_at(j, 4)->type == JSON_BOOL);
    json_free(j);
    /* hostile: every truncation and every single-byte corruption is handled */
    uint8_t buf[sizeof pk];
    for (size_t cut = 0; cut < sizeof pk; cut++) {
        json *x = pickle_to_json(pk, cut, err, sizeof err);
        CHECK(x == NULL);
        json_free(x);
    }
    for (size_t i = 0; i < sizeof pk; i++)
        for (int v = 0; v < 256; v += 17) {
            memcpy(buf, pk, sizeof pk);
            buf[i] = (uint8_t)v;
            json_free(pickle_to_json(buf, sizeof buf, err, sizeof err));
        }
    /* code-executing opcodes are refused */
    static const uint8_t evil[] = {0x80, 2, 'c', 'o', 's', '\n', 's', 'y', 's', 't', 'e', 'm', '\n', '.'};
    CHECK(pickle_to_json(evil, sizeof evil, err, sizeof err) == NULL);
    CHECK(strstr(err, "opcode") != NULL);
}

static int run_py(const char *mode, const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 scripts/eval_fixtures.py %s %s 2>&1", mode, dir);
    if (access("/usr/bin/python3", X_OK) != 0 || access("scripts/eval_fixtures.py", R_OK) != 0) return -1;
    return system(cmd);
}

TEST(eval_refer_dataset) {
    const char *dir = test_tmpdir();
    int rc = run_py("refer", dir);
    if (rc < 0) SKIP("needs /usr/bin/python3 (numpy, PIL) to build the REFER fixture");
    REQUIRE(rc == 0);
    char p[700];
    snprintf(p, sizeof p, "%s/expected.json", dir);
    json *exp = json_parse_file(p);
    REQUIRE(exp);
    const char *pickles[3] = {"refs(unc).p", "refs0.p", "refs4.p"};
    for (int k = 0; k < 3; k++) {
        char refs[700], inst[700];
        snprintf(refs, sizeof refs, "%s/refcoco/%s", dir, pickles[k]);
        snprintf(inst, sizeof inst, "%s/refcoco/instances.json", dir);
        const char *splits[2] = {"val", "testA"};
        for (int s = 0; s < 2; s++) {
            refer_db *db;
            CHECK_OK(refer_open(&db, refs, inst, splits[s]));
            if (!db) continue;
            const json *want = json_get(exp, splits[s]);
            CHECK(refer_count(db) == (int)want->len);
            for (int r = 0; r < refer_count(db); r++) {
                long id;
                const char *file;
                int ns;
                const char *const *raw;
                const long *sids;
                refer_ref(db, r, &id, &file, &ns, &raw, &sids);
                char key[32];
                snprintf(key, sizeof key, "%ld", id);
                const json *m = json_get(want, key);
                REQUIRE(m);
                int w, h;
                uint16_t *mask;
                CHECK_OK(refer_mask(db, r, &w, &h, &mask));
                REQUIRE(mask && h == (int)m->len && w == (int)m->kids[0]->len);
                int diff = 0;
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++) diff += mask[y * w + x] != (uint16_t)m->kids[y]->kids[x]->num;
                CHECK_MSG(diff == 0, "%s ref %ld: %d pixels differ", pickles[k], id, diff);
                free(mask);
                if (id == 5) {
                    CHECK(ns == 2 && sids[1] == 51 && !strcmp(raw[0], "The \"Left\" Box/Thing"));
                    CHECK(strstr(file, "000000000007") != NULL);
                }
            }
            refer_close(db);
        }
    }
    json_free(exp);
    /* the dataset view: grouping by object (reference) or one sample per sentence */
    dataset ds;
    ds_options o = {0};
    CHECK_OK(dataset_open(&ds, "refcoco", dir, &o));
    REQUIRE(ds.n == 2 && ds.kind == DS_REFER && !strcmp(ds.s[0].id, "5"));
    CHECK(ds.s[0].n_sent == 2 && !strcmp(ds.s[0].sent[0], "the left boxthing"));
    dataset_close(&ds);
    o.per_sentence = 1;
    CHECK_OK(dataset_open(&ds, "refcoco", dir, &o));
    REQUIRE(ds.n == 3);
    CHECK(!strcmp(ds.s[1].id, "5_51") && ds.s[1].n_sent == 1);
    dataset_close(&ds);
    /* end to end: ref 5 exact (IoU 1), ref 8 half (IoU 0.5) */
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) return;
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s eval --dataset refcoco --root %s --predictions %s/pred --out %s/out "
             "--quiet > %s/stdout.txt", bin, dir, dir, dir, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(p, sizeof p, "%s/out/results.json", dir);
    json *res = json_parse_file(p);
    REQUIRE(res);
    CHECK_NEAR(json_num(res, "miou", -1), 75.0, 1e-6);
    CHECK_NEAR(json_num(res, "oiou", -1), 100.0 * (6 + 15) / (6 + 30), 1e-6);
    CHECK_NEAR(json_num(json_get(res, "precision"), "0.5", -1), 100.0, 1e-6);
    CHECK_NEAR(json_num(json_get(res, "precision"), "0.6", -1), 50.0, 1e-6);
    CHECK(json_num(res, "n_images", 0) == 2);
    json_free(res);
    /* the usual protocol: one sample per sentence (ids <ref>_<sent>) */
    snprintf(cmd, sizeof cmd, "cd %s/pred && cp 5.png 5_50.png && cp 5.png 5_51.png && cp 8.png 8_80.png && "
             "%s eval --dataset refcoco --root %s --per-sentence --predictions %s/pred --out %s/out_ps --quiet > /dev/null",
             dir, bin, dir, dir, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(p, sizeof p, "%s/out_ps/results.json", dir);
    res = json_parse_file(p);
    REQUIRE(res);
    CHECK(json_num(res, "n_images", 0) == 3);
    CHECK_NEAR(json_num(res, "miou", -1), 100.0 * 2.5 / 3, 1e-4);
    CHECK_NEAR(json_num(res, "oiou", -1), 100.0 * 27 / 42, 1e-6);
    json_free(res);
    /* CLI errors: unknown dataset, bad shard, missing prediction */
    snprintf(cmd, sizeof cmd, "%s eval --dataset nope --root %s --predictions %s/pred 2>/dev/null", bin, dir, dir);
    CHECK(system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "%s eval --dataset refcoco --root %s --predictions %s/pred --shard 3/3 2>/dev/null", bin, dir, dir);
    CHECK(system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "%s eval --dataset refcoco --root %s --split testA --predictions %s/pred --out %s/o3 2>%s/err3.txt",
             bin, dir, dir, dir, dir);
    CHECK(system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "%s eval --help | grep -q refcocog", bin);
    CHECK(system(cmd) == 0);
    /* the CaR predictor in refer mode (tiny fixture model: the masks mean nothing, the plumbing
     * does): every object predicted, masks at the image size */
    const char *gen = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *voc = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!gen || !voc || !file_exists(gen)) return;
    snprintf(cmd, sizeof cmd, "%s eval --dataset refcoco --root %s --generator %s --classifier %s --vocab %s "
             "--out %s/out_car --save-predictions --quiet > /dev/null", bin, dir, gen, gen, voc, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(p, sizeof p, "%s/out_car/results.json", dir);
    res = json_parse_file(p);
    REQUIRE(res);
    CHECK(json_num(res, "n_images", 0) == 2);
    json_free(res);
    snprintf(p, sizeof p, "%s/out_car/predictions/8.png", dir);
    int w, h;
    uint16_t *m = NULL;
    CHECK_OK(labels_read(p, &w, &h, &m));
    CHECK(w == 6 && h == 5);
    for (int k = 0; m && k < w * h; k++) CHECK(m[k] <= 1);
    free(m);
}

/* synthetic layouts of the other datasets */
static void touch(const char *path) {
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
}

TEST(eval_dataset_layouts) {
    const char *dir = test_tmpdir();
    char p[800];
    uint16_t v[6] = {0, 1, 2, 846, 847, 65535};
    /* ADE-847: tif + 1, > 847 -> 0; n_class 847 ignores the last class (Q14) */
    const char *mk[] = {"images_detectron2/validation", "annotations_detectron2/validation",
                        "images/validation", "annotations/validation", "annotations_ctx459/validation",
                        "images/val2017", "annotations/val2017",
                        "VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext",
                        "VOCdevkit/VOC2010/ImageSets/SegmentationContext"};
    for (size_t i = 0; i < sizeof mk / sizeof *mk; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, mk[i]);
        REQUIRE(mkdir_p(p) == CARSEG_OK);
    }
    const char *ids[2] = {"b_img", "a_img"};
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/images_detectron2/validation/%s.jpg", dir, ids[k]); touch(p);
        snprintf(p, sizeof p, "%s/annotations_detectron2/validation/%s.tif", dir, ids[k]); write_tiff16(p, v, 3, 2);
        snprintf(p, sizeof p, "%s/images/validation/%s.jpg", dir, ids[k]); touch(p);
        snprintf(p, sizeof p, "%s/annotations_ctx459/validation/%s.tif", dir, ids[k]); write_tiff16(p, v, 3, 2);
        uint16_t a[6] = {0, 1, 150, 3, 4, 5};
        snprintf(p, sizeof p, "%s/annotations/validation/%s.png", dir, ids[k]); carseg_labels_save_png(p, a, 3, 2);
        snprintf(p, sizeof p, "%s/images/val2017/%s.jpg", dir, ids[k]); touch(p);
        snprintf(p, sizeof p, "%s/annotations/val2017/%s_instanceTrainIds.png", dir, ids[k]); carseg_labels_save_png(p, a, 3, 2);
        snprintf(p, sizeof p, "%s/VOCdevkit/VOC2010/JPEGImages/%s.jpg", dir, ids[k]); touch(p);
        snprintf(p, sizeof p, "%s/VOCdevkit/VOC2010/SegmentationClassContext/%s.png", dir, ids[k]); carseg_labels_save_png(p, a, 3, 2);
    }
    snprintf(p, sizeof p, "%s/images/validation/notes.txt", dir); touch(p);
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", dir);
    write_file_atomic(p, "b_img\r\na_img\n\n", 14);
    dataset ds;
    ds_options o = {0};
    int w, h;
    uint16_t *g;
    CHECK_OK(dataset_open(&ds, "ade847", dir, &o));
    CHECK(ds.n == 2 && !strcmp(ds.s[0].id, "a_img") && ds.n_class == 847 && ds.ignore_background);
    CHECK_OK(dataset_load_gt(&ds, 0, &w, &h, &g));
    CHECK(w == 3 && h == 2 && g[0] == 1 && g[1] == 2 && g[2] == 3 && g[3] == 847 && g[4] == 0 && g[5] == 0);
    free(g);
    dataset_close(&ds);
    o.fix_ade847 = 1;
    CHECK_OK(dataset_open(&ds, "ade847", dir, &o));
    CHECK(ds.n_class == 848);
    dataset_close(&ds);
    o.fix_ade847 = 0;
    CHECK_OK(dataset_open(&ds, "pc459", dir, &o));
    CHECK(ds.n == 2 && ds.n_class == 460);
    CHECK_OK(dataset_load_gt(&ds, 1, &w, &h, &g));
    CHECK(g[0] == 1 && g[3] == 0 && g[5] == 0);   /* 846 + 1 > 459 -> 0 */
    free(g);
    dataset_close(&ds);
    CHECK_OK(dataset_open(&ds, "ade150", dir, &o));
    CHECK(ds.n == 2 && ds.n_class == 151 && ds.ignore_background);
    CHECK(!strcmp(ds.class_names[1], "wall") && !strcmp(ds.class_names[150], "flag") &&
          !strcmp(ds.class_names[92], "dirt track") && !strcmp(ds.class_names[129], "lake"));
    CHECK_OK(dataset_load_gt(&ds, 0, &w, &h, &g));
    CHECK(g[2] == 150);
    free(g);
    dataset_close(&ds);
    CHECK_OK(dataset_open(&ds, "coco_object", dir, &o));
    CHECK(ds.n == 2 && ds.n_class == 81 && !ds.ignore_background && !strcmp(ds.class_names[80], "toothbrush"));
    CHECK(strstr(ds.s[0].label, "a_img_instanceTrainIds.png") != NULL);
    dataset_close(&ds);
    CHECK_OK(dataset_open(&ds, "context59", dir, &o));
    CHECK(ds.n == 2 && !strcmp(ds.s[0].id, "b_img") && ds.n_class == 60 && ds.ignore_background);
    CHECK(!strcmp(ds.class_names[59], "wood"));
    dataset_close(&ds);
    CHECK_OK(dataset_open(&ds, "context", dir, &o));
    CHECK(!ds.ignore_background);
    dataset_close(&ds);
    /* class names from a file */
    snprintf(p, sizeof p, "%s/names.txt", dir);
    write_file_atomic(p, "bg\nzero\n", 8);
    o.class_names = p;
    CHECK(dataset_open(&ds, "ade847", dir, &o) == CARSEG_EFORMAT);
    CHECK(strstr(carseg_last_error(), "class names") != NULL);
    o.class_names = NULL;
    CHECK(dataset_open(&ds, "nope", dir, &o) == CARSEG_EINVAL);
    CHECK(dataset_open(&ds, "voc", dir, &o) != CARSEG_OK);   /* no VOC2012 here */
}

TEST(eval_voc_mini_perfect) {
    const char *root = shared_path("data/voc_mini");
    if (!root) SKIP("shared data missing");
    dataset ds;
    ds_options o = {0};
    CHECK_OK(dataset_open(&ds, "voc", root, &o));
    CHECK(ds.n == 17);
    carseg_confusion cm;
    carseg_confusion_init(&cm, ds.n_class);
    for (int i = 0; i < ds.n; i++) {
        int w, h;
        uint16_t *g;
        CHECK_OK(dataset_load_gt(&ds, i, &w, &h, &g));
        if (!g) continue;
        carseg_confusion_add(&cm, g, g, (size_t)w * h);
        free(g);
    }
    carseg_miou m;
    CHECK_OK(carseg_confusion_score(&cm, 0, CARSEG_MIOU_REFERENCE, &m));
    CHECK_NEAR(m.miou, 100.0, 1e-12);
    CHECK(m.n_scored >= 10);
    carseg_miou_free(&m);
    carseg_confusion_free(&cm);
    dataset_close(&ds);
}

static json *load_json(const char *dir, const char *name) {
    char p[800];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return json_parse_file(p);
}

static void check_same_results(const json *a, const json *b) {
    REQUIRE(a && b);
    CHECK(json_num(a, "n_images", -1) == json_num(b, "n_images", -2));
    CHECK(json_num(a, "miou", -1) == json_num(b, "miou", -2));
    const json *ca = json_get(a, "confusion"), *cb = json_get(b, "confusion");
    REQUIRE(ca && cb && ca->len == cb->len);
    int diff = 0;
    for (size_t i = 0; i < ca->len; i++)
        for (size_t j = 0; j < ca->kids[i]->len; j++) diff += ca->kids[i]->kids[j]->num != cb->kids[i]->kids[j]->num;
    CHECK(diff == 0);
}

TEST(eval_cli_matches_reference_formulas) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run via make test)");
    const char *dir = test_tmpdir();
    int rc = run_py("semantic", dir);
    if (rc < 0) SKIP("needs /usr/bin/python3 (numpy, PIL)");
    REQUIRE(rc == 0);
    json *exp = load_json(dir, "expected.json");
    REQUIRE(exp);
    const char *cases[3][3] = {{"voc", "", "voc"}, {"voc20", "", "voc20"}, {"voc", "--limit 5", "limit5"}};
    for (int c = 0; c < 3; c++) {
        char cmd[2400], out[700];
        snprintf(out, sizeof out, "%s/out_%d", dir, c);
        snprintf(cmd, sizeof cmd, "%s eval --dataset %s --root %s --predictions %s/pred --out %s %s --quiet > %s/table_%d.txt",
                 bin, cases[c][0], dir, dir, out, cases[c][1], dir, c);
        REQUIRE(system(cmd) == 0);
        json *res = load_json(out, "results.json");
        REQUIRE(res);
        const json *e = json_get(exp, cases[c][2]);
        CHECK_NEAR(json_num(res, "miou", -1), json_num(e, "miou", -2), 1e-9);
        CHECK_NEAR(json_num(res, "pixel_acc", -1), json_num(e, "pixel_acc", -2), 1e-9);
        CHECK_NEAR(json_num(res, "mean_acc", -1), json_num(e, "mean_acc", -2), 1e-9);
        CHECK_NEAR(json_num(res, "fwiou", -1), json_num(e, "fwiou", -2), 1e-9);
        const json *iou = json_get(res, "iou"), *eiou = json_get(e, "iou");
        const char *names[3] = {"aeroplane", "bird", "tvmonitor"};
        const char *ids[3] = {"1", "3", "20"};
        for (int k = 0; k < 3; k++) {
            const json *a = json_get(iou, names[k]), *b = json_get(eiou, ids[k]);
            REQUIRE(a && b);
            if (b->type == JSON_NULL) CHECK(a->type == JSON_NULL);
            else CHECK_NEAR(a->num, b->num, 1e-9);
        }
        json_free(res);
    }
    json_free(exp);
}

/* Kill -9 mid-run, resume, compare with a clean run. The run is stopped deterministically: one
 * prediction is a FIFO, so the CLI blocks opening it after journaling the samples before it. */
TEST(eval_cli_kill_resume) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run via make test)");
    const char *dir = test_tmpdir();
    int rc = run_py("semantic", dir);
    if (rc < 0) SKIP("needs /usr/bin/python3 (numpy, PIL)");
    REQUIRE(rc == 0);
    char cmd[2400], clean[700], killed[700], fifo[700], real[700], hold[700];
    snprintf(clean, sizeof clean, "%s/clean", dir);
    snprintf(killed, sizeof killed, "%s/killed", dir);
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s/pred --out %s --quiet > /dev/null",
             bin, dir, dir, clean);
    REQUIRE(system(cmd) == 0);
    /* img_007's prediction becomes a FIFO */
    snprintf(real, sizeof real, "%s/pred/img_007.png", dir);
    snprintf(hold, sizeof hold, "%s/img_007.png.hold", dir);
    snprintf(fifo, sizeof fifo, "%s", real);
    REQUIRE(rename(real, hold) == 0);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    char predd[700];
    snprintf(predd, sizeof predd, "%s/pred", dir);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        dup2(nul, 2);
        execl(bin, bin, "eval", "--dataset", "voc", "--root", dir, "--predictions", predd, "--out",
              killed, (char *)NULL);
        _exit(127);
    }
    char jpath[800];
    snprintf(jpath, sizeof jpath, "%s/journal.jsonl", killed);
    int lines = 0;
    for (int t = 0; t < 2000 && lines < 8; t++) {   /* header + 7 samples, up to 20 s */
        usleep(10000);
        uint8_t *buf;
        size_t len;
        if (read_file(jpath, &buf, &len) != CARSEG_OK) continue;
        lines = 0;
        for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
        free(buf);
    }
    usleep(50000);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    CHECK_MSG(lines == 8, "journal had %d lines when killed", lines);
    /* a torn tail, as a kill in the middle of a write leaves it */
    FILE *f = fopen(jpath, "ab");
    REQUIRE(f);
    fputs("{\"id\":\"img_007\",\"cm\":[[0,0,1", f);
    fclose(f);
    unlink(fifo);
    REQUIRE(rename(hold, real) == 0);
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s/pred --out %s > %s/resume.out 2>&1",
             bin, dir, dir, killed, dir);
    REQUIRE(system(cmd) == 0);
    uint8_t *log;
    size_t len;
    snprintf(cmd, sizeof cmd, "%s/resume.out", dir);
    REQUIRE(read_file(cmd, &log, &len) == CARSEG_OK);
    CHECK(strstr((char *)log, "resuming: 7 of 12") != NULL);
    CHECK(strstr((char *)log, "torn last line dropped") != NULL);
    CHECK(strstr((char *)log, "5 samples this run") != NULL);
    free(log);
    json *a = load_json(clean, "results.json"), *b = load_json(killed, "results.json");
    check_same_results(a, b);
    json_free(a);
    json_free(b);
    /* the journal now holds every sample exactly once */
    uint8_t *buf;
    REQUIRE(read_file(jpath, &buf, &len) == CARSEG_OK);
    int nl = 0;
    for (size_t i = 0; i < len; i++) nl += buf[i] == '\n';
    CHECK(nl == 13 && buf[len - 1] == '\n');
    CHECK(strstr((char *)buf, "[[0,0,1{") == NULL);
    free(buf);

    /* kills at random moments (start-up, mid-sample, mid-write, final results) until a run
     * completes: the result still equals the clean run's */
    char rnd[700];
    snprintf(rnd, sizeof rnd, "%s/random", dir);
    double t0 = now_ms();
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s --out %s/timing --fsync --quiet > /dev/null",
             bin, dir, predd, dir);
    REQUIRE(system(cmd) == 0);   /* time one full run */
    double full_us = (now_ms() - t0) * 1000;
    unsigned seed = 12345;
    int kills = 0, done = 0;
    for (int it = 0; it < 40 && !done; it++) {
        pid_t q = fork();
        REQUIRE(q >= 0);
        if (q == 0) {
            int nul = open("/dev/null", O_WRONLY);
            dup2(nul, 1);
            dup2(nul, 2);
            execl(bin, bin, "eval", "--dataset", "voc", "--root", dir, "--predictions", predd, "--out",
                  rnd, "--fsync", (char *)NULL);
            _exit(127);
        }
        seed = seed * 1103515245u + 12345u;
        usleep((useconds_t)((seed >> 8) % (unsigned)(1 + full_us * (it < 20 ? 0.8 : 3.0))));
        kill(q, SIGKILL);
        waitpid(q, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) done = 1;
        else kills++;
    }
    if (!done) {
        snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s --out %s --fsync --quiet > /dev/null",
                 bin, dir, predd, rnd);
        REQUIRE(system(cmd) == 0);
    }
    a = load_json(clean, "results.json");
    b = load_json(rnd, "results.json");
    check_same_results(a, b);
    json_free(a);
    json_free(b);
    fprintf(stderr, "  (%d random kills before a run completed)\n", kills);
}

TEST(eval_cli_shard_merge) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run via make test)");
    const char *dir = test_tmpdir();
    int rc = run_py("semantic", dir);
    if (rc < 0) SKIP("needs /usr/bin/python3 (numpy, PIL)");
    REQUIRE(rc == 0);
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s/pred --out %s/single --quiet > /dev/null",
             bin, dir, dir, dir);
    REQUIRE(system(cmd) == 0);
    for (int s = 0; s < 3; s++) {
        snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --predictions %s/pred --out %s/sh%d "
                 "--shard %d/3 --quiet --save-predictions > /dev/null", bin, dir, dir, dir, s % 2, s);
        REQUIRE(system(cmd) == 0);
    }
    snprintf(cmd, sizeof cmd, "%s eval merge --out %s/merged %s/sh0 %s/sh1 > %s/merged.txt", bin, dir, dir, dir, dir);
    REQUIRE(system(cmd) == 0);
    char p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/single", dir);
    snprintf(p2, sizeof p2, "%s/merged", dir);
    json *a = load_json(p1, "results.json"), *b = load_json(p2, "results.json");
    check_same_results(a, b);
    json_free(a);
    json_free(b);
    /* saved predictions are the same label maps (shard 1 holds img_001, img_004, ...) */
    snprintf(p1, sizeof p1, "%s/sh1/predictions/img_004.png", dir);
    snprintf(p2, sizeof p2, "%s/pred/img_004.png", dir);
    int w1, h1, w2, h2;
    uint16_t *x = NULL, *y = NULL;
    CHECK_OK(labels_read(p1, &w1, &h1, &x));
    CHECK_OK(labels_read(p2, &w2, &h2, &y));
    CHECK(x && y && w1 == w2 && h1 == h2 && !memcmp(x, y, (size_t)w1 * h1 * 2));
    free(x);
    free(y);
    /* a journal of another dataset refuses to resume */
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc20 --root %s --predictions %s/pred --out %s/single --quiet 2> %s/err.txt",
             bin, dir, dir, dir, dir);
    CHECK(system(cmd) != 0);
}

/* The CaR predictor end to end: a one-image VOC split whose image is the chelsea_voc fixture's
 * input and whose "ground truth" is the upstream pipeline's label map for it (tiny random-weight
 * models, VOC preset). `carseg eval` must reproduce that label map (mIoU ~100). */
TEST(eval_car_predictor_fixture) {
    const char *bin = getenv("CARSEG_BIN");
    if (!bin) SKIP("CARSEG_BIN not set (run via make test)");
    const char *inp = shared_path("fixtures/car/chelsea_voc/input.png");
    const char *lm = shared_path("fixtures/car/chelsea_voc/label_map.npy");
    const char *gen = shared_path("fixtures/clip_sg/model_f16.safetensors");
    const char *cls = shared_path("fixtures/models/sc_f16.safetensors");
    const char *voc = shared_path("clip/bpe_simple_vocab_16e6.txt.gz");
    if (!inp || !lm || !gen || !cls || !voc || !file_exists(inp) || !file_exists(lm))
        SKIP("shared CaR fixtures missing");
    const char *dir = test_tmpdir();
    char p[900], q[900];
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/JPEGImages", dir);
    REQUIRE(mkdir_p(p) == CARSEG_OK);
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/SegmentationClass", dir);
    REQUIRE(mkdir_p(p) == CARSEG_OK);
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/ImageSets/Segmentation", dir);
    REQUIRE(mkdir_p(p) == CARSEG_OK);
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", dir);
    REQUIRE(write_file_atomic(p, "chelsea\n", 8) == CARSEG_OK);
    uint8_t *png;
    size_t len;
    REQUIRE(read_file(inp, &png, &len) == CARSEG_OK);   /* the loader sniffs the format */
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/JPEGImages/chelsea.jpg", dir);
    REQUIRE(write_file_atomic(p, png, len) == CARSEG_OK);
    free(png);
    npy_array ref;
    REQUIRE(npy_read(lm, &ref) == CARSEG_OK);
    REQUIRE(ref.ndim == 2 && (ref.dtype == NPY_I32 || ref.dtype == NPY_I64));
    int H = (int)ref.shape[0], W = (int)ref.shape[1];
    size_t hw = (size_t)W * H;
    uint16_t *gt = malloc(hw * sizeof *gt);
    REQUIRE(gt);
    for (size_t k = 0; k < hw; k++)
        gt[k] = (uint16_t)(ref.dtype == NPY_I32 ? ((int32_t *)ref.data)[k] : ((int64_t *)ref.data)[k]);
    npy_free(&ref);
    snprintf(p, sizeof p, "%s/VOCdevkit/VOC2012/SegmentationClass/chelsea.png", dir);
    REQUIRE(carseg_labels_save_png(p, gt, W, H) == CARSEG_OK);
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "%s eval --dataset voc --root %s --generator %s --classifier %s --vocab %s "
             "--out %s/out --save-predictions --quiet > %s/table.txt 2> %s/err.txt",
             bin, dir, gen, cls, voc, dir, dir, dir);
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(q, sizeof q, "%s/err.txt", dir);
        uint8_t *e;
        if (read_file(q, &e, &len) == CARSEG_OK) { fprintf(stderr, "  %s", (char *)e); free(e); }
    }
    REQUIRE(rc == 0);
    json *res = load_json(dir, "out/results.json");
    REQUIRE(res);
    CHECK(json_num(res, "n_images", 0) == 1);
    double miou = json_num(res, "miou", -1);
    CHECK_MSG(miou >= 99.0, "mIoU %.3f against the upstream label map", miou);
    json_free(res);
    snprintf(p, sizeof p, "%s/out/predictions/chelsea.png", dir);
    int w2, h2;
    uint16_t *pred = NULL;
    CHECK_OK(labels_read(p, &w2, &h2, &pred));
    REQUIRE(pred && w2 == W && h2 == H);
    size_t same = 0;
    for (size_t k = 0; k < hw; k++) same += pred[k] == gt[k];
    CHECK_MSG(same >= hw * 999 / 1000, "prediction equals the upstream label map on %zu of %zu pixels", same, hw);
    fprintf(stderr, "  CaR via eval: mIoU %.3f vs upstream, label map equal on %.4f%% of pixels\n", miou,
            100.0 * same / hw);
    free(pred);
    free(gt);
}
