/* cmd_crf.c — `carseg crf`: the dense CRF on its own (CaR's post-processing, pydensecrf DenseCRF2D
 * with CaR's parameters by default). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "crf.h"
#include "image.h"
#include "util.h"

static const char *USAGE =
    "usage: carseg crf --features F --probs P.npy --out-labels L.png [--out-marginals Q.npy]\n"
    "                  [--iters 10 --pos-sxy 1 --pos-w 3 --bi-sxy 67 --bi-srgb 3 --bi-w 4] [--threads N]\n"
    "\n"
    "Fully connected CRF (Krähenbühl & Koltun 2011) as CaR runs it: unary -log(clip(P, 1e-5, 1)),\n"
    "Gaussian kernel on (x, y)/pos-sxy with weight pos-w, bilateral kernel on (x, y)/bi-sxy and the\n"
    "three feature channels / bi-srgb with weight bi-w, Potts, symmetric normalisation, mean field.\n"
    "\n"
    "  --features F       colour features used as-is: an (H, W, 3) uint8 .npy (exactly the array\n"
    "                     the reference hands to addPairwiseBilateral: CaR's BGR mean-subtracted,\n"
    "                     wrapped image) or a PNG/JPEG (its RGB bytes)\n"
    "  --car-features     compute CaR's features from F (an RGB image): BGR, minus the mean,\n"
    "                     wrapped to uint8 (quirk Q4)\n"
    "  --probs P.npy      (C, H, W) float32 probabilities (float64 is converted), any C >= 1\n"
    "  --out-labels L     argmax label map: .png (8-bit palette for C <= 256, else 16-bit gray)\n"
    "                     or .npy (int32 (H, W))\n"
    "  --out-marginals Q  (C, H, W) float32 marginals after the last iteration (.npy)\n";

static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    return n >= e && !strcasecmp(path + n - e, ext);
}

/* Colour features: (H, W, 3) uint8, from .npy or an image file. */
static carseg_status load_features(const char *path, int car, uint8_t **out, int *h, int *w) {
    *out = NULL;
    if (has_ext(path, ".npy")) {
        npy_array a;
        TRY(npy_read(path, &a));
        if (a.dtype != NPY_U8 || a.ndim != 3 || a.shape[2] != 3) {
            npy_free(&a);
            return set_err(CARSEG_EFORMAT, "%s: colour features must be a uint8 (H, W, 3) array", path);
        }
        if (a.shape[0] < 1 || a.shape[1] < 1) {
            npy_free(&a);
            return set_err(CARSEG_EFORMAT, "%s: empty image (%lld x %lld)", path, (long long)a.shape[1],
                           (long long)a.shape[0]);
        }
        if (a.shape[0] > 65535 || a.shape[1] > 65535) {
            npy_free(&a);
            return set_err(CARSEG_EFORMAT, "%s: image too large (%lld x %lld)", path,
                           (long long)a.shape[1], (long long)a.shape[0]);
        }
        *h = (int)a.shape[0];
        *w = (int)a.shape[1];
        *out = a.data;
    } else {
        image_u8 im = {0};
        TRY(image_load_rgb(path, &im));
        if (im.c != 3 || im.w < 1 || im.h < 1) {
            image_free(&im);
            return set_err(CARSEG_EFORMAT, "%s: not an RGB image", path);
        }
        *h = im.h;
        *w = im.w;
        *out = im.px;   /* taken over: image_free would release it */
    }
    if (car) {
        uint8_t *f = malloc((size_t)*h * *w * 3);
        if (!f) {
            free(*out);
            *out = NULL;
            return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
        }
        crf_features_car(*out, *w, *h, f);
        free(*out);
        *out = f;
    }
    return CARSEG_OK;
}

static carseg_status load_probs(const char *path, float **out, int *c, int *h, int *w) {
    npy_array a;
    *out = NULL;
    TRY(npy_read(path, &a));
    if (a.dtype != NPY_F32 && a.dtype != NPY_F64) {
        npy_free(&a);
        return set_err(CARSEG_EFORMAT, "%s: probabilities must be float32 (C, H, W), not an integer or bool array", path);
    }
    if (a.ndim != 3) {
        npy_free(&a);
        return set_err(CARSEG_EFORMAT, "%s: probabilities must be (C, H, W), got %d dimensions", path, a.ndim);
    }
    if (a.shape[0] < 1 || a.shape[1] < 1 || a.shape[2] < 1) {
        npy_free(&a);
        return set_err(CARSEG_EFORMAT, "%s: empty probabilities (%lld, %lld, %lld)", path,
                       (long long)a.shape[0], (long long)a.shape[1], (long long)a.shape[2]);
    }
    if (a.shape[0] > 65535) {
        npy_free(&a);
        return set_err(CARSEG_EFORMAT, "%s: %lld labels (at most 65535)", path, (long long)a.shape[0]);
    }
    if (a.shape[1] > 65535 || a.shape[2] > 65535) {
        npy_free(&a);
        return set_err(CARSEG_EFORMAT, "%s: image too large", path);
    }
    *c = (int)a.shape[0];
    *h = (int)a.shape[1];
    *w = (int)a.shape[2];
    if (a.dtype == NPY_F64) {
        float *f = malloc(a.count * sizeof *f);
        if (!f) {
            npy_free(&a);
            return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
        }
        const double *src = a.data;
        for (size_t i = 0; i < a.count; i++) f[i] = (float)src[i];
        npy_free(&a);
        *out = f;
    } else {
        *out = a.data;
    }
    return CARSEG_OK;
}

static carseg_status save_labels(const char *path, const uint16_t *lab, int C, int H, int W) {
    size_t n = (size_t)H * W;
    carseg_status st;
    if (has_ext(path, ".npy")) {
        int32_t *v = malloc(n * sizeof *v);
        if (!v) return set_err(CARSEG_ENOMEM, "%s: out of memory", path);
        for (size_t i = 0; i < n; i++) v[i] = lab[i];
        int64_t shape[2] = {H, W};
        st = npy_write(path, NPY_I32, v, 2, shape);
        free(v);
        return st;
    }
    return image_save_labels(path, lab, W, H, C);
}

static int cmd_crf(int argc, char **argv) {
    const char *fpath = NULL, *ppath = NULL, *lpath = NULL, *qpath = NULL, *v;
    int car = 0;
    crf_params prm = crf_default_params();
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if ((v = cli_opt(argc, argv, &i, "--features"))) fpath = v;
        else if ((v = cli_opt(argc, argv, &i, "--probs"))) ppath = v;
        else if ((v = cli_opt(argc, argv, &i, "--out-labels"))) lpath = v;
        else if ((v = cli_opt(argc, argv, &i, "--out-marginals"))) qpath = v;
        else if (cli_flag(argv, i, "--car-features")) car = 1;
        else if ((v = cli_opt(argc, argv, &i, "--iters"))) {
            double it = cli_num("--iters", v);
            if (it < 0 || it > 100000 || it != (int)it) return cli_fail("--iters must be an integer in 0..100000, got %s", v);
            prm.iters = (int)it;
        } else if ((v = cli_opt(argc, argv, &i, "--pos-sxy"))) prm.pos_sxy = (float)cli_num("--pos-sxy", v);
        else if ((v = cli_opt(argc, argv, &i, "--pos-w"))) prm.pos_w = (float)cli_num("--pos-w", v);
        else if ((v = cli_opt(argc, argv, &i, "--bi-sxy"))) prm.bi_sxy = (float)cli_num("--bi-sxy", v);
        else if ((v = cli_opt(argc, argv, &i, "--bi-srgb"))) prm.bi_srgb = (float)cli_num("--bi-srgb", v);
        else if ((v = cli_opt(argc, argv, &i, "--bi-w"))) prm.bi_w = (float)cli_num("--bi-w", v);
        else if ((v = cli_opt(argc, argv, &i, "--threads"))) {
            double t = cli_num("--threads", v);
            if (t < 0 || t > 4096 || t != (int)t) return cli_fail("--threads must be an integer >= 0, got %s", v);
            carseg_set_threads((int)t);
        } else {
            fprintf(stderr, "carseg crf: unknown argument '%s'\n%s", argv[i], USAGE);
            return 2;
        }
    }
    if (!fpath || !ppath || !lpath) {
        fprintf(stderr, "carseg crf: --features, --probs and --out-labels are required\n%s", USAGE);
        return 2;
    }
    if (qpath && !has_ext(qpath, ".npy")) return cli_fail("%s: marginals output must end in .npy", qpath);
    if (!has_ext(lpath, ".npy") && !has_ext(lpath, ".png"))
        return cli_fail("%s: label output must end in .png or .npy", lpath);

    uint8_t *feat = NULL;
    float *probs = NULL, *q = NULL;
    uint16_t *lab = NULL;
    int fh = 0, fw = 0, C = 0, H = 0, W = 0, rc = 1;
    carseg_status st;
    if ((st = load_features(fpath, car, &feat, &fh, &fw)) != CARSEG_OK) goto fail;
    if ((st = load_probs(ppath, &probs, &C, &H, &W)) != CARSEG_OK) goto fail;
    if (fh != H || fw != W) {
        rc = cli_fail("%s: probabilities are %d x %d (W x H) but the features %s are %d x %d", ppath, W, H,
                      fpath, fw, fh);
        goto done;
    }
    size_t n = (size_t)H * W;
    lab = malloc(n * sizeof *lab);
    q = qpath ? malloc(n * C * sizeof *q) : NULL;
    if (!lab || (qpath && !q)) {
        rc = cli_fail("out of memory (%d x %d, %d labels)", W, H, C);
        goto done;
    }
    double t0 = now_ms();
    if ((st = crf_run(probs, C, H, W, feat, &prm, lab, q)) != CARSEG_OK) {
        err_prefix("%s", ppath);
        goto fail;
    }
    fprintf(stderr, "crf: %d x %d, %d labels, %d iterations: %.0f ms\n", W, H, C, prm.iters, now_ms() - t0);
    if (qpath) {
        int64_t shape[3] = {C, H, W};
        if ((st = npy_write(qpath, NPY_F32, q, 3, shape)) != CARSEG_OK) goto fail;
    }
    if ((st = save_labels(lpath, lab, C, H, W)) != CARSEG_OK) {
        if (qpath) unlink(qpath);   /* nothing half-written: both outputs or neither */
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    rc = cli_fail_status(st);
done:
    free(feat);
    free(probs);
    free(q);
    free(lab);
    return rc;
}

CLI_COMMAND("crf", "dense CRF on probabilities + colour features (CaR's post-processing)", cmd_crf)
