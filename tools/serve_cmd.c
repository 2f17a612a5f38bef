/* serve_cmd.c — `carseg serve`: options, model loading, then serve_run (serve_http.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "serve.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: carseg serve [--host 127.0.0.1] [--port 8080] [--generator M] [--classifier M]\n"
        "                    [--vocab F] [--threads N] [--workers N] [--max-body MB]\n"
        "                    [--max-pixels N] [--max-classes N] [--sam MODEL] [options]\n"
        "\n"
        "Loads the models once and serves CaR over HTTP until SIGINT / SIGTERM (docs/serve.md):\n"
        "  GET  /             the demo page (no external assets)\n"
        "  GET  /v1/health    {\"status\": \"ok\", ...}\n"
        "  GET  /v1/models    the models, presets, fixes and limits\n"
        "  POST /v1/segment   multipart: image + classes | preset | refer (+ theta, eta, lambda,\n"
        "                     prompts, bg_words, crf, fix, templates; with --sam: sam, sam_points,\n"
        "                     sam_pred_iou, sam_stability, sam_nms, sam_iom, sam_min_pred, sam_iou)\n"
        "                     -> JSON, or the label PNG with 'Accept: image/png'\n"
        "  POST /v1/embed     multipart: text (repeatable) and/or image files -> CLIP features\n"
        "\n"
        "  --host ADDR          IPv4 address to listen on (default 127.0.0.1: this machine only)\n"
        "  --port N             TCP port (default 8080; 0 = any free port, see --port-file)\n"
        "  --port-file F        write the bound port to F once listening\n"
        "  --generator M        mask generator CLIP: a file or a known name (default ViT-B/16)\n"
        "  --classifier M       mask classifier CLIP (default ViT-L/14)\n"
        "  --vocab F            CLIP BPE vocabulary (default: the cached one)\n"
        "  --sam MODEL          an HQ-SAM / SAM checkpoint: CaR + SAM for semantic requests (on by\n"
        "                       default; the field sam=0 turns it off), as carseg segment --sam\n"
        "  --max-sam-points N   the most generator points per side a request may ask for\n"
        "                       (sam_points; default 64, CaR's setting; at most 1024)\n"
        "  --threads N          kernel threads per computation (default: all cores)\n"
        "  --workers N          requests computed at the same time (default 1; each holds its own\n"
        "                       text caches and scratch, the models are shared)\n"
        "  --max-body MB        largest request body (default 20): larger gets 413\n"
        "  --max-pixels N       largest image, in pixels (default 16777216): larger gets 413\n"
        "  --max-classes N      most classes / phrases / texts in one request (default 1000)\n"
        "  --max-queue N        requests waiting for a compute thread (default 64): more get 503\n"
        "  --max-connections N  open connections (default 64)\n"
        "  --request-timeout S  a body still arriving, a wait in the queue or a computation past\n"
        "                       S seconds is answered 408 / 503 (default 120)\n"
        "  --idle-timeout S     a connection silent for S seconds is closed (default 15)\n"
        CLI_PRECISION_HELP
        "Binds to loopback by default: anyone who can reach the port can make it compute.\n");
}

static int int_opt(const char *name, const char *v, double lo, double hi, int *out) {
    double d = cli_num(name, v);
    if (d < lo || d > hi || d != (long long)d) {
        fprintf(stderr, "carseg: error: %s must be an integer in [%.0f, %.0f], got '%s'\n", name, lo, hi, v);
        return 2;
    }
    *out = (int)d;
    return 0;
}

static int cmd_serve(int argc, char **argv) {
    serve_cfg c;
    memset(&c, 0, sizeof c);
    c.host = "127.0.0.1";
    c.port = 8080;
    c.precision = CARSEG_PRECISION_FP32;
    c.workers = 1;
    c.max_body = 20u << 20;
    c.max_pixels = 16777216;
    c.max_classes = 1000;
    c.max_mask_bytes = 4e9;
    c.max_queue = 64;
    c.max_connections = 64;
    c.idle_timeout_s = 15;
    c.request_timeout_s = 120;
    c.max_sam_points = 64;
    const char *v;
    int rc;
    for (int i = 1; i < argc; i++) {
        if (cli_flag(argv, i, "--help") || cli_flag(argv, i, "-h")) { usage(stdout); return 0; }
        else if ((v = cli_opt(argc, argv, &i, "--host"))) c.host = v;
        else if ((v = cli_opt(argc, argv, &i, "--port"))) { if ((rc = int_opt("--port", v, 0, 65535, &c.port))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--port-file"))) c.port_file = v;
        else if ((v = cli_opt(argc, argv, &i, "--generator"))) c.generator = v;
        else if ((v = cli_opt(argc, argv, &i, "--classifier"))) c.classifier = v;
        else if ((v = cli_opt(argc, argv, &i, "--vocab"))) c.vocab = v;
        else if ((v = cli_opt(argc, argv, &i, "--sam"))) c.sam = v;
        else if ((v = cli_opt(argc, argv, &i, "--max-sam-points"))) { if ((rc = int_opt("--max-sam-points", v, 1, 1024, &c.max_sam_points))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--precision"))) c.precision = cli_precision(v);
        else if ((v = cli_opt(argc, argv, &i, "--threads"))) { if ((rc = int_opt("--threads", v, 0, 4096, &c.threads))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--workers"))) { if ((rc = int_opt("--workers", v, 1, 256, &c.workers))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--max-body"))) {
            double mb = cli_num("--max-body", v);
            if (!(mb > 0 && mb <= 4096)) { fprintf(stderr, "carseg: error: --max-body must be in (0, 4096] MB\n"); return 2; }
            c.max_body = (size_t)(mb * 1048576.0);
        }
        else if ((v = cli_opt(argc, argv, &i, "--max-pixels"))) {
            double px = cli_num("--max-pixels", v);
            if (!(px >= 1 && px <= 1e10)) { fprintf(stderr, "carseg: error: --max-pixels must be in [1, 1e10]\n"); return 2; }
            c.max_pixels = (int64_t)px;
        }
        else if ((v = cli_opt(argc, argv, &i, "--max-classes"))) { if ((rc = int_opt("--max-classes", v, 1, 65534, &c.max_classes))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--max-queue"))) { if ((rc = int_opt("--max-queue", v, 0, 100000, &c.max_queue))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--max-connections"))) { if ((rc = int_opt("--max-connections", v, 1, 10000, &c.max_connections))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--request-timeout"))) { if ((rc = int_opt("--request-timeout", v, 1, 86400, &c.request_timeout_s))) return rc; }
        else if ((v = cli_opt(argc, argv, &i, "--idle-timeout"))) { if ((rc = int_opt("--idle-timeout", v, 1, 86400, &c.idle_timeout_s))) return rc; }
        else return cli_fail("serve: unknown argument %s (see carseg serve --help)", argv[i]);
    }
    if (c.max_connections < c.workers) c.max_connections = c.workers;
    /* SIGINT / SIGTERM from here on only set a flag (a Ctrl-C while loading stops before serving) */
    if (serve_signals_install()) return cli_fail("serve: cannot install the signal handlers");
    if (c.threads > 0) carseg_set_threads(c.threads);
    fprintf(stderr, "carseg: loading %s and %s%s%s\n", c.generator ? c.generator : "ViT-B/16",
            c.classifier ? c.classifier : "ViT-L/14", c.sam ? ", SAM " : "", c.sam ? c.sam : "");
    serve_engine *e = NULL;
    carseg_status st = serve_engine_open(&c, &e);
    if (st != CARSEG_OK) return cli_fail_status(st);
    rc = serve_run(&c, e);
    serve_engine_close(e);
    return rc;
}

CLI_COMMAND("serve", "an HTTP service and demo page: models loaded once, CaR per request", cmd_serve)
