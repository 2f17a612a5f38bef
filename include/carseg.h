/* carseg.h — CLIP as RNN (CaR): training-free open-vocabulary segmentation in C.
 *
 * This header is the library's manual. Every function that can fail returns a carseg_status;
 * carseg_last_error() then holds one line naming the file/tensor/argument and the problem.
 * The library never exits and never writes to stdout; diagnostics go to the log callback
 * (stderr by default). Objects opened with an _open or _new call are released with the matching _close or _free,
 * which accept NULL. A loaded model is immutable and may be shared by threads; scratch state
 * belongs to one thread at a time.
 *
 * The whole method: examples/segment.c, verbatim (the tests build it and run it on the fixture
 * models; examples/embed.c and examples/refer.c show embeddings and referring segmentation):
 *
 *     // segment.c — semantic segmentation with CaR: the example at the top of carseg.h.
 *     // usage: segment IMAGE OUT.png [GENERATOR CLASSIFIER [VOCAB]] (models: names or paths)
 *     #include <stdio.h>
 *     #include <stdlib.h>
 *     #include "carseg.h"
 *
 *     int main(int argc, char **argv) {
 *         if (argc != 3 && argc != 5 && argc != 6) {
 *             fprintf(stderr, "usage: segment IMAGE OUT.png [GENERATOR CLASSIFIER [VOCAB]]\n");
 *             return 2;
 *         }
 *         const char *gen = argc > 3 ? argv[3] : "ViT-B/16";   // names are pulled into the model cache,
 *         const char *cls = argc > 3 ? argv[4] : "ViT-L/14";   // file paths are used as they are
 *         const char *vocab = argc > 5 ? argv[5] : NULL;       // NULL: OpenAI's BPE vocabulary
 *         carseg_car_model *model = NULL;   // the weights: open once, share between threads
 *         carseg_segmenter *seg = NULL;     // text caches and scratch: one per thread
 *         carseg_result *res = NULL;
 *         uint8_t *rgb = NULL;
 *         int w, h, rc = 1;
 *         carseg_options opts;
 *         carseg_options_preset(&opts, "voc");   // eta, theta, lambda, prompts of a reference config
 *         const char *classes[] = {"cat", "dog", "sofa"};
 *         if (carseg_car_model_open(gen, cls, vocab, &model) != CARSEG_OK ||
 *             carseg_segmenter_new(model, &seg) != CARSEG_OK ||
 *             carseg_image_load(argv[1], &rgb, &w, &h) != CARSEG_OK ||
 *             carseg_segment_rgb(seg, rgb, w, h, classes, 3, &opts, &res) != CARSEG_OK ||
 *             carseg_labels_save_png(argv[2], carseg_result_labels(res), w, h) != CARSEG_OK) {
 *             fprintf(stderr, "segment: %s\n", carseg_last_error());
 *             goto out;
 *         }
 *         for (int k = 0; k < carseg_result_count(res); k++)   // label k + 1 = classes[k], 0 = background
 *             printf("%s: score %.4f\n", carseg_result_class(res, k), carseg_result_score(res, k));
 *         rc = 0;
 *     out:
 *         carseg_result_free(res);
 *         carseg_image_free(rgb);
 *         carseg_segmenter_free(seg);
 *         carseg_car_model_close(model);
 *         return rc;
 *     }
 */
#ifndef CARSEG_H
#define CARSEG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
/* The library is built with -fvisibility=hidden: the declarations of this header (between the push
 * and the pop) are its whole exported interface. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define CARSEG_VERSION "0.1.0"

/* ABI version: bumped whenever a public struct's layout or a function's signature changes.
 * carseg_abi_version() returns the value the linked library was built with; a program compares it
 * with the CARSEG_ABI_VERSION it was compiled against before relying on the library. */
#define CARSEG_ABI_VERSION 1
int carseg_abi_version(void);
/* The library's version string (CARSEG_VERSION of the build). */
const char *carseg_version(void);

// ---------------------------------------------------------------------------------------------
// Status and diagnostics

typedef enum {
    CARSEG_OK = 0,
    CARSEG_EIO,       /* a file could not be opened, read or written                      */
    CARSEG_EFORMAT,   /* a file is malformed (weights, vocabulary, image, .npy, JSON)      */
    CARSEG_EMODEL,    /* weights lack a tensor, have an unexpected shape or wrong kind     */
    CARSEG_ENOMEM,    /* allocation failed                                                 */
    CARSEG_EINVAL,    /* bad argument: a caller error                                      */
    CARSEG_ENET       /* a download failed (no network, HTTP error, checksum mismatch)     */
} carseg_status;

/* Static name of a status ("ok", "i/o error", ...). Never NULL. */
const char *carseg_status_str(carseg_status st);
/* The message of the last failure in this thread ("" if none). Valid until the next failure. */
const char *carseg_last_error(void);

enum { CARSEG_LOG_ERROR = 0, CARSEG_LOG_WARN = 1, CARSEG_LOG_INFO = 2, CARSEG_LOG_DEBUG = 3 };
typedef void (*carseg_log_fn)(int level, const char *msg, void *user);
/* Replaces the log sink (default: messages up to `max_level` CARSEG_LOG_WARN go to stderr).
 * fn = NULL silences the library. */
void carseg_set_log(carseg_log_fn fn, void *user);
void carseg_set_log_level(int max_level);

/* Threads used by compute kernels (0 = all cores; default 0). */
void carseg_set_threads(int n);
int carseg_get_threads(void);

/* Each thread that runs a CLIP tower keeps that call's activation buffers (about 20 MB for one
 * ViT-L/14 image, more for batches) for its next call instead of returning them to the system:
 * fresh pages cost ~5 % of a ViT-L/14 forward. They are freed when the thread exits, or now, for
 * the calling thread, by carseg_release_memory(). */
void carseg_release_memory(void);

// ---------------------------------------------------------------------------------------------
// Models: known checkpoints, cache, download (models.c)

/* Known files: OpenAI's CLIP checkpoints ViT-B/16, ViT-L/14, ViT-B/32, ViT-L/14@336px (kind
 * "clip"), the BPE vocabulary "bpe" (kind "vocab") and HQ-SAM's sam_hq_vit_b, sam_hq_vit_l,
 * sam_hq_vit_h (kind "sam": the authors' files on Hugging Face, lkeab/hq-sam). Names are matched
 * ignoring case and punctuation: "ViT-B/16", "ViT-B-16", "vit-b16", "ViT-B-16.pt" are the same
 * model. A loader given a known name of another kind refuses it before any download.
 *
 * Cache directory: $CARSEG_CACHE, else $XDG_CACHE_HOME/carseg, else ~/.cache/carseg. A file is
 * renamed into the cache only after its sha256 matched, so a cached file is complete.
 * Environment: CARSEG_MODELS_URL=BASE fetches BASE/FILE instead of each official URL (a mirror,
 * or a local server / file:// directory in tests); CARSEG_OFFLINE=1 turns automatic downloads
 * off. Downloads (libcurl) follow redirects, give up on connect after 10 s, and stream into
 * FILE.part while hashing. The registry functions are not thread-safe while downloading. */
typedef struct {
    const char *name;     /* canonical name: "ViT-B/16", ..., "bpe"                          */
    const char *kind;     /* "clip" (checkpoint), "vocab" (BPE vocabulary) or "sam" (HQ-SAM) */
    const char *file;     /* file name in the cache: "ViT-B-16.pt"                           */
    const char *url;      /* official URL (CARSEG_MODELS_URL replaces all before the file)   */
    const char *sha256;   /* expected sha256, 64 hex digits                                  */
} carseg_model_info;

int carseg_models_count(void);
const carseg_model_info *carseg_models_get(int i);          /* NULL when out of range */
const carseg_model_info *carseg_models_find(const char *name);   /* NULL when unknown */
/* The cache directory / where a known model's file lives (or will). Free with free(). */
carseg_status carseg_models_cache_dir(char **dir_out);
carseg_status carseg_models_cache_path(const char *name, char **path_out);
/* An existing file path is returned as is; a known name gives its cached file, downloaded first
 * when missing (unless downloads are off). *path_out: free with free(). Without network this
 * fails fast with a message naming the URL to fetch and where to put the file. */
carseg_status carseg_models_resolve(const char *name_or_path, char **path_out);
/* The vocabulary: path_or_null = NULL means OpenAI's bpe_simple_vocab_16e6.txt.gz. */
carseg_status carseg_models_resolve_vocab(const char *path_or_null, char **path_out);
/* Downloads a known model into the cache unless present (even when downloads are off: this is
 * the explicit request). path_out may be NULL. */
carseg_status carseg_models_pull(const char *name, char **path_out);
/* Automatic downloads in _resolve: 1 = allowed, 0 = off, -1 = the default: allowed unless
 * $CARSEG_OFFLINE is set (to anything but 0). */
void carseg_models_allow_download(int allow);
/* Download progress: called with the file name, bytes so far, total (0 if unknown) and
 * `finished`: 0 during the transfer (first with done = 0), then once 1 (downloaded and
 * verified) or -1 (failed). The default,
 * carseg_models_progress_stderr, draws a bar on stderr when it is a terminal and prints a
 * line every 10% otherwise. fn = NULL silences progress. */
typedef void (*carseg_progress_fn)(const char *what, uint64_t done, uint64_t total, int finished,
                                   void *user);
void carseg_models_set_progress(carseg_progress_fn fn, void *user);
void carseg_models_progress_stderr(const char *what, uint64_t done, uint64_t total, int finished,
                                   void *user);


// ---------------------------------------------------------------------------------------------
// Tokenizer (tokenizer.c)

/* OpenAI CLIP's BPE tokenizer (simple_tokenizer.py + clip.tokenize), exact except that
 * ftfy.fix_text is not applied (it is the identity on ordinary text; see the README).
 * Text is UTF-8; invalid bytes count as U+FFFD. An open tokenizer is immutable: share it freely
 * between threads. */
typedef struct carseg_tokenizer carseg_tokenizer;
#define CARSEG_TOKEN_SOT 49406   /* <|startoftext|> */
#define CARSEG_TOKEN_EOT 49407   /* <|endoftext|> */
#define CARSEG_CONTEXT 77        /* CLIP's text context length */

/* Opens a vocabulary: OpenAI's bpe_simple_vocab_16e6.txt.gz or a Hugging Face merges.txt (the
 * same merges, plain text; told apart by the gzip magic). vocab = NULL opens the default one from
 * the model cache, downloading it when missing (carseg_models_resolve_vocab). */
carseg_status carseg_tokenizer_open(const char *vocab, carseg_tokenizer **out);
void carseg_tokenizer_close(carseg_tokenizer *t);
/* SimpleTokenizer.encode: the BPE ids of text, without SOT/EOT. Returns how many there are
 * (only the first `max` are written to ids), or -1 on error. */
int carseg_tokenizer_encode(const carseg_tokenizer *t, const char *text, int32_t *ids, int max);
/* clip.tokenize(text, context_length=ctx, truncate=True): out[0..ctx) = SOT, ids, EOT, zeros;
 * when too long, the ids are cut so that EOT stays last. Returns the number of tokens before the
 * padding (SOT..EOT inclusive), or -1 on error. ctx >= 2 (CLIP: CARSEG_CONTEXT). */
int carseg_tokenize(const carseg_tokenizer *t, const char *text, int32_t *out, int ctx);


// ---------------------------------------------------------------------------------------------
// Images (image.c)

/* Loads a JPEG or PNG as 8-bit RGB, pixel-identical to Pillow's Image.open(p).convert("RGB").
 * *rgb: (h, w, 3) bytes, top row first; free with carseg_image_free. */
carseg_status carseg_image_load(const char *path, uint8_t **rgb, int *w, int *h);
void carseg_image_free(uint8_t *rgb);
/* Writes a label map as a PNG (atomically): 8-bit with the VOC palette when every label is
 * < 256, else 16-bit gray. labels: (h, w). */
carseg_status carseg_labels_save_png(const char *path, const uint16_t *labels, int w, int h);
/* An RGB image (h, w, 3) as an 8-bit PNG (atomically). */
carseg_status carseg_image_save_png(const char *path, const uint8_t *rgb, int w, int h);
/* A JPEG or PNG held in memory, decoded as carseg_image_load does. max_pixels > 0: an image of
 * more than max_pixels pixels is refused from its header, before its pixels are allocated
 * (CARSEG_EFORMAT "image too large (WxH > N pixels)"); 0 = the decoder's own limit. */
carseg_status carseg_image_decode(const uint8_t *data, size_t len, int64_t max_pixels,
                                  uint8_t **rgb, int *w, int *h);
/* The label PNG in memory, byte for byte the file carseg_labels_save_png (n_labels 0) or
 * `carseg segment` (n_labels = classes + 1) writes: 8-bit VOC palette when n_labels <= 256, else
 * 16-bit gray; n_labels 0 = the largest label + 1. *png: free with free(). */
carseg_status carseg_labels_encode_png(const uint16_t *labels, int w, int h, int n_labels,
                                       uint8_t **png, size_t *len);


// ---------------------------------------------------------------------------------------------
// Model files and CLIP encoders (weights.c, clip.c)

/* A CLIP model (OpenAI ViT architecture; the file formats are in the README: safetensors with
 * OpenAI or Hugging Face names, OpenAI's TorchScript archives, torch.save state dicts). Computation
 * is float32; a loaded model is immutable and may be shared between threads.
 *
 *   carseg_clip *m;  carseg_tokenizer *tok;
 *   carseg_clip_load("ViT-B/16", &m);  carseg_tokenizer_open(NULL, &tok);
 *   float t[2 * 512], im[512];
 *   const char *texts[2] = {"a photo of a cat.", "a photo of a dog."};
 *   carseg_clip_encode_texts(m, tok, texts, 2, t);
 *   carseg_clip_encode_image_rgb(m, rgb, w, h, 0, im);   // CLIP's standard 224 preprocessing
 */
typedef struct clip_model carseg_clip;
/* name_or_path: a file, or a known model name (carseg_models_resolve: cache, download). */
carseg_status carseg_clip_load(const char *name_or_path, carseg_clip **out);
void carseg_clip_free(carseg_clip *m);
int carseg_clip_embed_dim(const carseg_clip *m);        /* E, the joint embedding size */
int carseg_clip_image_size(const carseg_clip *m);       /* native input size (224) */
float carseg_clip_logit_scale(const carseg_clip *m);    /* exp(logit_scale): 100 for OpenAI's */
/* Unnormalised text features (OpenAI encode_text) of n UTF-8 strings: out (n, E). Each text is
 * encoded on its own: its features never depend on the other texts of the call. */
carseg_status carseg_clip_encode_texts(const carseg_clip *m, const carseg_tokenizer *tok,
                                       const char *const *texts, int n, float *out);
/* Unnormalised image features (encode_image) of an interleaved 8-bit RGB image (w x h), after
 * CLIP's preprocessing (bicubic resize of the shorter side, center crop, CLIP mean/std).
 * n_blocks: 0 = all; CaR's classifier runs layers - 1. out: (E). */
carseg_status carseg_clip_encode_image_rgb(const carseg_clip *m, const uint8_t *rgb, int w, int h,
                                           int n_blocks, float *out);

/* Lower-level pieces of the same encoders (for bindings that batch their own work):
 * tokens: (n, ctx) as carseg_tokenize writes them, ctx = CARSEG_CONTEXT -> out (n, E), encoded
 * batch-invariantly like carseg_clip_encode_texts. EINVAL for a token outside the vocabulary
 * (naming the text and position) or a ctx other than the model's. */
carseg_status carseg_clip_encode_tokens(const carseg_clip *m, const int32_t *tokens, int n, int ctx,
                                        float *out);
/* CLIP's standard preprocessing (bicubic resize of the shorter side, centre crop, mean/std) of an
 * RGB image to out (3, R, R) floats, R = carseg_clip_image_size(m). */
carseg_status carseg_clip_preprocess(const carseg_clip *m, const uint8_t *rgb, int w, int h, float *out);
/* n preprocessed images x (n, 3, R, R) -> unnormalised features out (n, E), one batch (the same
 * bits as n single calls). n_blocks as above; a NaN or Inf in x -> EINVAL naming the image. */
carseg_status carseg_clip_encode_images(const carseg_clip *m, const float *x, int n, int n_blocks,
                                        float *out);
/* The same at another input size, as CaR's mask generator runs its images (and as Hugging Face's
 * interpolate_pos_encoding): x (n, 3, H, W), H and W positive multiples of the patch size; at
 * another grid than the native one the positional embedding is resized bilinearly
 * (align_corners=False) and rounded through fp16, as CaR's clip_wrapper.py does. At H = W =
 * carseg_clip_image_size(m) the result is carseg_clip_encode_images's, bit for bit. The cost grows
 * with the tokens: (H/P)(W/P) + 1, P the patch (carseg_clip_config_json). */
carseg_status carseg_clip_encode_images_hw(const carseg_clip *m, const float *x, int n, int H, int W,
                                           int n_blocks, float *out);
/* The architecture as a JSON object ({"embed": 512, "image_size": 224, "patch": 16, "vision_width":
 * 768, "vision_layers": 12, "vision_heads": 12, "text_width": 512, "text_layers": 12,
 * "text_heads": 8, "context": 77, "vocab": 49408, "logit_scale": 100, "precision": "fp32"}).
 * *out: free with free(). */
carseg_status carseg_clip_config_json(const carseg_clip *m, char **out);

/* Zero-shot classification, the standard CLIP recipe: per class, the mean over the templates
 * ("a photo of a {}." with {} replaced by the class name; NULL / 0 = CaR's 15 semantic templates)
 * of the L2-normalised text features, renormalised; probs (n_classes) = softmax(logit_scale *
 * cos(image, class)). The image gets CLIP's standard preprocessing; n_blocks as above. */
carseg_status carseg_clip_classify(const carseg_clip *m, const carseg_tokenizer *tok,
                                   const uint8_t *rgb, int w, int h, int n_blocks,
                                   const char *const *classes, int n_classes,
                                   const char *const *templates, int n_templates, float *probs);
/* CaR's 15 semantic templates (static strings); returns 15. */
int carseg_car_templates(const char *const **templates);

/* Precision of the image tower's matrix products (patch embedding, attention in/out projections,
 * MLP; the attention products q k^T and P v, LayerNorm, softmax and the text tower stay float32).
 *   CARSEG_PRECISION_FP32    the default: float32 products (OpenBLAS sgemm)
 *   CARSEG_PRECISION_BF16X3  "near fp32" on Intel AMX: each float x = hi + lo (two bf16),
 *                            x y ~ hi_x hi_y + hi_x lo_y + lo_x hi_y accumulated in float32;
 *                            ~1e-5 relative error per product (fp16 checkpoints' weights are
 *                            exactly hi + lo), a few times faster than FP32
 *   CARSEG_PRECISION_BF16    one bf16 product (~3e-3 relative error per product; fastest)
 * The AMX modes need a CPU with AMX-TILE and AMX-BF16 (Intel Xeon Sapphire Rapids or later) and
 * Linux >= 5.16; elsewhere carseg_clip_set_precision fails with CARSEG_EINVAL saying what is
 * missing (no silent fallback; AUTO below is the explicit fallback). Setting a mode packs the
 * weights once (ViT-L/14: about 0.8 s); it is not thread-safe: set it before sharing the
 * model. CARSEG_NO_AMX=1 in the environment makes the AMX modes unavailable.
 *   CARSEG_PRECISION_AUTO    bf16x3 where AMX runs, else fp32 (never an error for want of AMX:
 *                            for scripts that run on mixed machines); get_precision then says
 *                            which mode was taken.
 * Memory: bf16x3 keeps the planes of matrices that hi + lo holds exactly (every weight of an fp16
 * checkpoint, and of float32 files converted from one) in the float32 matrices' own memory, so a
 * model loaded with carseg_clip_load costs only its last block's and patch embedding's packs
 * more (ViT-L/14: 53 MB); back to fp32 restores those matrices bit for bit. bf16 packs take half
 * the tower's float32 bytes beside them. */
typedef enum {
    CARSEG_PRECISION_FP32 = 0,
    CARSEG_PRECISION_BF16X3 = 1,
    CARSEG_PRECISION_BF16 = 2,
    CARSEG_PRECISION_AUTO = 3
} carseg_precision;
carseg_status carseg_clip_set_precision(carseg_clip *m, carseg_precision p);
carseg_precision carseg_clip_get_precision(const carseg_clip *m);   /* never AUTO */
/* "fp32", "bf16x3", "bf16", "auto" <-> the enum (parse: EINVAL naming the accepted values). */
carseg_status carseg_precision_parse(const char *name, carseg_precision *out);
const char *carseg_precision_name(carseg_precision p);


// ---------------------------------------------------------------------------------------------
// Mask proposals: Grad-CAM + affinity (cam.c)
//
// Internal (src/car/cam.h). Each round's CAMs reach users through the round observer of
// carseg_options (carseg_round.cams) and, with keep_cams, the result (carseg_result_cams);
// `carseg segment --dump DIR` writes them as round<k>_cams.npy.

// ---------------------------------------------------------------------------------------------
// Dense CRF (crf.c, lattice.c)

/* Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011) as CaR runs it
 * through pydensecrf's DenseCRF2D: Potts compatibility, symmetric normalisation, mean field on the
 * permutohedral lattice. Kernels: a Gaussian on (x/pos_sxy, y/pos_sxy) with weight pos_w and a
 * bilateral one on (x/bi_sxy, y/bi_sxy, f0/bi_srgb, f1/bi_srgb, f2/bi_srgb) with weight bi_w,
 * x the column, f0..f2 the three feature channels in the order given. */
typedef struct carseg_crf_params {
    int iters;                        /* mean-field iterations (CaR: 10) */
    float pos_sxy, pos_w;             /* Gaussian kernel: sxy 1, weight 3 */
    float bi_sxy, bi_srgb, bi_w;      /* bilateral kernel: sxy 67, srgb 3, weight 4 */
} carseg_crf_params;

/* CaR's parameters (10 iterations; 1, 3; 67, 3, 4). */
carseg_crf_params carseg_crf_defaults(void);

/* probs: (C, H, W) float probabilities, used as given (unary = -log(clip(p, 1e-5, 1)), no
 * renormalisation); NaN is rejected. feat: (H, W, 3) uint8 colour features, used as-is.
 * labels: (H, W) argmax of the marginals (first maximum), or NULL. q: (C, H, W) marginals after the
 * last iteration, or NULL. Any C >= 1 (labels hold up to 65535). Uses carseg_set_threads threads. */
carseg_status carseg_crf(const float *probs, int C, int H, int W, const uint8_t *feat,
                         const carseg_crf_params *p, uint16_t *labels, float *q);

/* CaR's colour features (its quirk Q4): RGB -> BGR, minus (104.008, 116.669, 122.675), truncated
 * to an integer and wrapped modulo 256 as NumPy's uint8 cast does. rgb, feat: (H, W, 3). */
void carseg_crf_features_car(const uint8_t *rgb, int W, int H, uint8_t *feat);


// ---------------------------------------------------------------------------------------------
// CaR segmentation: models, segmenters, options, prepared images, results (src/api/segmenter.c)
//
// Model apart from state:
//   carseg_car_model   the mask generator CLIP (ViT-B/16 in the paper), the mask classifier CLIP
//                      (ViT-L/14 for semantic presets, ViT-B/16 for referring) and the tokenizer.
//                      Immutable once opened (set the precision before sharing it): any number of
//                      threads may use one model at the same time.
//   carseg_segmenter   the state of one thread: text-feature caches of both towers and scratch.
//                      It borrows the model (close the model after its segmenters). A segmenter
//                      is used by one thread at a time; make one per thread.
//   carseg_prepared    an image with the generator trunk, the affinity and the prompt
//                      backgrounds computed once; segment it with as many class lists as wanted.
//                      It belongs to the segmenter's model and to one thread at a time (it keeps
//                      lazily computed caches).
//   carseg_result      labels, per-class masks, scores, the record of the rounds, optionally the
//                      CAMs, timings; read through accessors; freed with carseg_result_free.
// Results depend only on (model, image, classes, options): never on the thread, on which
// segmenter ran them, on what its caches saw before or on which texts were encoded together.

typedef struct carseg_car_model carseg_car_model;
/* generator / classifier: a file path or a known name ("ViT-B/16", resolved through the model
 * cache, downloaded when missing unless downloads are off: carseg_models_resolve); NULL = the
 * paper's "ViT-B/16" / "ViT-L/14". The same file for both is loaded once. vocab: NULL = OpenAI's
 * BPE vocabulary (carseg_models_resolve_vocab), else a path. */
carseg_status carseg_car_model_open(const char *generator, const char *classifier,
                                    const char *vocab, carseg_car_model **out);
/* Precision of both image towers (carseg_clip_set_precision); not thread-safe: call it before
 * the model is shared. */
carseg_status carseg_car_model_set_precision(carseg_car_model *m, carseg_precision p);
carseg_precision carseg_car_model_precision(const carseg_car_model *m);   /* the classifier's */
void carseg_car_model_close(carseg_car_model *m);
/* The parts, borrowed (for embeddings: carseg_clip_encode_texts on the classifier, ...). */
const carseg_clip *carseg_car_model_generator(const carseg_car_model *m);
const carseg_clip *carseg_car_model_classifier(const carseg_car_model *m);
const carseg_tokenizer *carseg_car_model_tokenizer(const carseg_car_model *m);

typedef struct carseg_segmenter carseg_segmenter;
carseg_status carseg_segmenter_new(const carseg_car_model *m, carseg_segmenter **out);
void carseg_segmenter_free(carseg_segmenter *s);

/* Quirks of the reference implementation (README, car_method.md): every one is kept by default;
 * each has a fix. CARSEG_FIX_BUGS are the ones that are bugs; Q1 is a design choice. */
#define CARSEG_FIX_Q1  0x01u   /* raw class names in the CAM text in every round            */
#define CARSEG_FIX_Q3  0x02u   /* the gray prompt with RGB weights (reference: BGR2GRAY)      */
#define CARSEG_FIX_Q4  0x04u   /* the CRF's colour features are the RGB image                 */
#define CARSEG_FIX_Q7  0x08u   /* Grad-CAM boxes include the last grid row/column             */
#define CARSEG_FIX_Q8  0x10u   /* the classifier sees the whole prompted image (no centre crop) */
#define CARSEG_FIX_Q9  0x20u   /* the all-zero guard keeps the same queries' previous masks   */
#define CARSEG_FIX_Q17 0x40u   /* duplicate class names keep their own masks                  */
#define CARSEG_FIX_BUGS (CARSEG_FIX_Q3 | CARSEG_FIX_Q4 | CARSEG_FIX_Q7 | CARSEG_FIX_Q8 | \
                         CARSEG_FIX_Q9 | CARSEG_FIX_Q17)
#define CARSEG_FIX_ALL (CARSEG_FIX_BUGS | CARSEG_FIX_Q1)
/* "q1,q3" (comma separated, case ignored), "bugs", "all", "" or "none" -> bits. EINVAL names the
 * bad item and the accepted ones. */
carseg_status carseg_fixes_parse(const char *list, unsigned *fixes);
/* "q3" for CARSEG_FIX_Q3; NULL unless exactly one known bit is set. */
const char *carseg_fix_name(unsigned one_fix);

/* Settings of a run. Initialise with carseg_options_init (which sets `size`, the ABI check:
 * a call given a struct of another size fails with EINVAL), then change what you want.
 * Unset values (NaN, NULL, -1) take the preset's value; without a preset, the VOC config's for
 * semantic segmentation and refcoco's (one template) for referring. */
/* One round of the recurrence, as the optional observer of carseg_options sees it (valid during
 * the call only). */
typedef struct carseg_round {
    int pass;                  /* 0: the thing pass (or the only one), 1: the stuff pass      */
    int n_passes;              /* 1 or 2 (a preset with a thing/stuff split)                  */
    int round;                 /* 1-based, within the pass                                    */
    int n_live;                /* live queries at the round's start                           */
    const int *live;           /* (n_live) class (phrase) indices of the call                 */
    const float *scores;       /* (n_live) the classifier's P[i,i]                            */
    const uint8_t *survived;   /* (n_live) 1: kept by the filter (> theta, or the argmax)     */
    const float *cams;         /* (n_live, h, w) the round's mask proposals                   */
    int w, h;
} carseg_round;
/* Return 0 to go on; anything else stops the run (the call fails with CARSEG_EINVAL). */
typedef int (*carseg_round_fn)(const carseg_round *r, void *user);

/* CaR + SAM (car_method.md §4.3): the SAM automatic-mask-generator masks of the image being
 * segmented, computed beforehand (once per image, whatever the class list), as COCO RLE runs
 * (column-major, first run zeros; h*w pixels each). Each CRF class mask is then replaced by the
 * union of the SAM masks that match it (see the SAM section for the generator). */
typedef struct carseg_sam_masks {
    int h, w, n;
    const uint32_t *const *counts;   /* n runs arrays */
    const size_t *n_counts;          /* n lengths */
} carseg_sam_masks;
typedef struct carseg_sam_params {
    double iom_thres;     /* φ_iom: 0.7 (paper); the VOC config's 0.6 */
    double min_pred;      /* min-pred threshold: 0.05 */
    double iou_thres;     /* φ_iou: 0.7 (paper); the reference code's default 0.9 */
} carseg_sam_params;

typedef struct carseg_options {
    size_t size;                /* sizeof(carseg_options), set by carseg_options_init */
    const char *preset;         /* NULL or "voc", "coco-object", "context", "ade150", "pc459",
                                   "refcoco", "refcoco+", "refcocog", "gres": its eta, theta,
                                   lambda, prompts, templates, CRF background factors and, when
                                   no class list is given, its classes (thing + stuff passes) */
    float eta;                  /* mask binarisation threshold of the visual prompt, [0, 1]   */
    float theta;                /* query filter: keep query i iff P[i,i] > theta, [-1, 1]     */
    float lambda;               /* Grad-CAM box threshold, [0, 1]                             */
    const char *prompts;        /* visual prompts "circle,blur" (blur gray black circle
                                   rectangle contour)                                          */
    const char *stuff_prompts;  /* the stuff pass's (NULL: prompts if set, else the preset's) */
    const char *const *bg_words;/* background words (NULL: the reference's 23)                */
    int n_bg_words;
    const char *templates;      /* "semantic" (the 15 templates, double softmax) or "single"
                                   ("a clean origami {}.", one softmax); NULL: the preset's    */
    int crf;                    /* 1 dense CRF (default), 0 argmax of (background, CAMs)      */
    carseg_crf_params crf_params;   /* the CRF's parameters (init: carseg_crf_defaults())    */
    unsigned fixes;             /* CARSEG_FIX_* bits (init 0: the reference's behaviour)      */
    int keep_cams;              /* 1: the result keeps each class's last-round CAM            */
    carseg_precision precision; /* read only by code that opens models for a run (the CLI,
                                   Python, serve): carseg_car_model_set_precision              */
    int threads;                /* > 0: carseg_set_threads(threads) in the calling thread
                                   before the run; 0 = leave as is                            */
    carseg_round_fn on_round;   /* observer called after each round's filter; NULL: none      */
    void *on_round_user;
    const carseg_sam_masks *sam_masks;   /* CaR + SAM with these masks (the image's size); NULL off */
    carseg_sam_params sam;      /* matching thresholds (init: 0.7, 0.05, 0.7)                 */
} carseg_options;

void carseg_options_init(carseg_options *o);
/* The checks carseg_segment (refer 0) / carseg_refer (refer 1) make of the options, without a
 * model: for tools that validate everything before loading weights. */
carseg_status carseg_options_check(const carseg_options *o, int refer);
/* carseg_options_init + o->preset = name (EINVAL naming the known presets if unknown). */
carseg_status carseg_options_preset(carseg_options *o, const char *name);
/* A preset's class list (label k = classes[k-1]); *n = 0 and *classes = NULL for the referring
 * presets. EINVAL for an unknown name. The strings are static. */
carseg_status carseg_preset_classes(const char *name, const char *const **classes, int *n);
/* The known preset names: i in [0, count); NULL out of range. */
int carseg_presets_count(void);
const char *carseg_preset_name(int i);
/* The classifier the preset's config uses ("ViT-L/14", "ViT-B/16"); 1 for the referring presets.
 * NULL / -1 for an unknown name. */
const char *carseg_preset_classifier(const char *name);
int carseg_preset_is_refer(const char *name);

typedef struct carseg_prepared carseg_prepared;
/* rgb: (h, w, 3) bytes, top row first, copied. o may be NULL (its threads is the only field
 * read here). */
carseg_status carseg_prepare(carseg_segmenter *s, const uint8_t *rgb, int w, int h,
                             const carseg_options *o, carseg_prepared **out);
void carseg_prepared_free(carseg_prepared *p);
int carseg_prepared_width(const carseg_prepared *p);
int carseg_prepared_height(const carseg_prepared *p);

typedef struct carseg_result carseg_result;
/* Semantic segmentation of a prepared image: classes are n names (label k = classes[k-1]);
 * classes NULL (n 0) with o->preset set: the preset's list and its thing + stuff passes.
 * o NULL: the defaults. The image must come from a segmenter of the same model. */
carseg_status carseg_segment(carseg_segmenter *s, carseg_prepared *im, const char *const *classes,
                             int n, const carseg_options *o, carseg_result **out);
/* carseg_prepare + carseg_segment in one call. */
carseg_status carseg_segment_rgb(carseg_segmenter *s, const uint8_t *rgb, int w, int h,
                                 const char *const *classes, int n, const carseg_options *o,
                                 carseg_result **out);
/* Referring segmentation: n phrases describing one object. The result has count n (one entry
 * per phrase with its score and mask) and labels holding the merged mask (1 inside, 0 outside:
 * the reference's merge_masks_simple). */
carseg_status carseg_refer(carseg_segmenter *s, carseg_prepared *im, const char *const *phrases,
                           int n, const carseg_options *o, carseg_result **out);
void carseg_result_free(carseg_result *r);

int carseg_result_width(const carseg_result *r);
int carseg_result_height(const carseg_result *r);
int carseg_result_is_refer(const carseg_result *r);
/* Classes (semantic) or phrases (refer); k in [0, count). Out of range: NULL / 0 / -1. */
int carseg_result_count(const carseg_result *r);
const char *carseg_result_class(const carseg_result *r, int k);
float carseg_result_score(const carseg_result *r, int k);        /* final score; 0 = dropped */
/* (h, w) label map: 0 background, k = class k-1 (refer: 1 = the merged mask). */
const uint16_t *carseg_result_labels(const carseg_result *r);
/* (h, w) 0/1: class (phrase) k's final mask, before the label map resolves overlaps. The masks
 * are one block: mask(k) = mask(0) + k * w * h. */
const uint8_t *carseg_result_mask(const carseg_result *r, int k);
/* (h, w) float: class (phrase) k's CAM in the last round (zeros if it was dropped); NULL
 * without keep_cams. */
const float *carseg_result_cams(const carseg_result *r, int k);
/* The rounds of the recurrence (all passes, in order). carseg_result_round: round i's n live
 * queries as class indices of the result (*live), their scores P[i,i] (*scores) and whether
 * each survived the filter (*survived, 0/1); returns n, or -1 when i is out of range. Pointers
 * are owned by the result; any of them may be NULL. */
int carseg_result_rounds(const carseg_result *r);
int carseg_result_round(const carseg_result *r, int i, const int **live, const float **scores,
                        const uint8_t **survived);
int carseg_result_round_pass(const carseg_result *r, int i);   /* 0 thing or only pass, 1 stuff */
/* Wall-clock ms of a stage: "prepare" (generator trunk + affinity; 0 for an image prepared
 * earlier), "text", "cam", "prompt", "classify", "crf", "sam", "total" (the call); -1 when unknown.
 * "prepare.cpu", "text.cpu", "cam.cpu", "prompt.cpu", "classify.cpu", "crf.cpu": the process's
 * CPU ms in that stage (all its threads, so other work of the process counts too): on a loaded
 * machine the figure that does not depend on when the threads got a core.
 * "roundK.cam", "roundK.prompt", "roundK.classify" and "roundK.cam.cpu", "roundK.classify.cpu":
 * round K's share (K = 1..8, of the last pass: the stuff pass when there are two); -1 for a
 * round that did not run. */
double carseg_result_timing(const carseg_result *r, const char *stage);
/* The per-image JSON `carseg segment` writes as NAME.json, with "image" set to image_name
 * (may be NULL: null) and "precision" to the classifier's. *out: free with free(). */
carseg_status carseg_result_json(const carseg_result *r, const char *image_name, char **out);


// ---------------------------------------------------------------------------------------------
// SAM and HQ-SAM (src/sam/; exact to SysCV/sam-hq's segment_anything) and its automatic mask
// generator, for CaR + SAM (carseg_options.sam_masks) and on their own.

/* A SAM or HQ-SAM checkpoint: torch.save state dicts as released (sam_hq_vit_{h,l,b}.pth,
 * sam_vit_{h,l,b}_*.pth) or safetensors; the architecture is read off the tensor shapes (the
 * decoder's head count: 8, unless a safetensors __metadata__ "sam_config" says otherwise).
 * path: a file, or a known name of kind "sam" (sam_hq_vit_b, ...: carseg_models_resolve).
 * Immutable once loaded: share it between threads. */
typedef struct sam_model carseg_sam;
carseg_status carseg_sam_load(const char *path, carseg_sam **out);
void carseg_sam_free(carseg_sam *m);
int carseg_sam_is_hq(const carseg_sam *m);
/* Masks per prompt carseg_sam_predict gives: HQ-SAM 1 (multimask: the best SAM mask by IoU
 * fused with the HQ mask); SAM 3 with multimask, else 1. */
int carseg_sam_masks_per_prompt(const carseg_sam *m, int multimask);

/* SamPredictor.set_image: ResizeLongestSide(1024), normalise, pad, the image encoder. One
 * thread at a time per image (it caches decoder inputs). */
typedef struct sam_image carseg_sam_image;
carseg_status carseg_sam_set_image(const carseg_sam *m, const uint8_t *rgb, int w, int h,
                                   carseg_sam_image **out);
void carseg_sam_image_free(carseg_sam_image *im);

/* One prompt: points (x, y in the image's pixels; labels 1 foreground, 0 background) and/or a
 * box (x0, y0, x1, y1; NULL for none). */
typedef struct carseg_sam_prompt {
    int n_points;
    const float *points;    /* 2 * n_points */
    const int *labels;      /* n_points */
    const float *box;       /* 4 or NULL */
} carseg_sam_prompt;
/* SamPredictor.predict for n prompts, each decoded as it would be alone. k =
 * carseg_sam_masks_per_prompt(m, multimask): iou (n, k) predicted IoUs; logits (n, k, h, w) at
 * the image's size (mask = logit > 0), or NULL. hq_only: HQ-SAM's hq_token_only. */
carseg_status carseg_sam_predict(const carseg_sam *m, carseg_sam_image *im,
                                 const carseg_sam_prompt *prompts, int n, int multimask,
                                 int hq_only, float *iou, float *logits);

/* SamAutomaticMaskGenerator (crop_n_layers 0, the mode CaR uses). carseg_sam_amg_init: CaR's
 * settings (64 points per side, 64 per batch, predicted IoU 0.88, stability 0.95 with offset 1,
 * box NMS 0.7, no small-region removal); upstream's own default is 32 points per side. */
typedef struct carseg_sam_amg_params {
    int points_per_side, points_per_batch;
    double pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh;
    int min_mask_region_area;      /* > 0: remove holes and islands smaller than this */
} carseg_sam_amg_params;
void carseg_sam_amg_init(carseg_sam_amg_params *p);
/* The generator's records, in upstream's order. */
typedef struct carseg_sam_records carseg_sam_records;
carseg_status carseg_sam_generate(const carseg_sam *m, carseg_sam_image *im,
                                  const carseg_sam_amg_params *p, carseg_sam_records **out);
void carseg_sam_records_free(carseg_sam_records *r);
int carseg_sam_records_count(const carseg_sam_records *r);
/* Record k: its mask as COCO RLE runs (column-major, first run zeros: the image's h*w pixels),
 * bbox XYWH as upstream (w = x1 - x0 with x1 inclusive), area, predicted IoU, stability score,
 * and the grid point (x, y) that prompted it. Returns 0, or -1 when k is out of range. */
int carseg_sam_record(const carseg_sam_records *r, int k, const uint32_t **counts,
                      size_t *n_counts, int bbox[4], uint64_t *area, float *predicted_iou,
                      float *stability_score, double point[2]);
/* The records as the masks CaR + SAM takes (carseg_options.sam_masks); valid while r lives. */
carseg_status carseg_sam_records_masks(const carseg_sam_records *r, carseg_sam_masks *out);

// ---------------------------------------------------------------------------------------------
// Evaluation: datasets and metrics (eval.c, datasets.c)

/* Semantic segmentation: a confusion matrix accumulated over a split, scored the way the
 * reference's evaluate.semantic_iou does (or the mmsegmentation way). Rows are ground-truth
 * classes 0..n_class-1; columns are predicted classes 0..n_class-1 plus one last column for
 * predicted ids outside [0, n_class) (they count as misses of the GT class). Ground-truth pixels
 * outside [0, n_class) (255, 65535, ...) are ignored, as in the reference. */
typedef struct {
    int n_class;
    uint64_t *counts;   /* n_class x (n_class + 1), row-major: counts[gt * (n_class + 1) + pred] */
} carseg_confusion;

carseg_status carseg_confusion_init(carseg_confusion *cm, int n_class);   /* zeroed */
void carseg_confusion_free(carseg_confusion *cm);
/* Adds one image (n_px pixels of ground truth and prediction, same layout). */
void carseg_confusion_add(carseg_confusion *cm, const uint16_t *gt, const uint16_t *pred,
                          size_t n_px);
/* cm += other (same n_class, else CARSEG_EINVAL). */
carseg_status carseg_confusion_merge(carseg_confusion *cm, const carseg_confusion *other);

typedef enum {
    /* evaluate.semantic_iou: with ignore_background, row AND column 0 are dropped (pixels
     * predicted 0 are not counted at all, quirk Q13); IoU over classes with >= 1 GT pixel. */
    CARSEG_MIOU_REFERENCE = 0,
    /* mmsegmentation: with ignore_background only GT 0 is ignored (predicting 0 is a miss);
     * IoU over classes with a non-empty union (predicted-but-absent classes score 0). */
    CARSEG_MIOU_MMSEG = 1
} carseg_miou_convention;

typedef struct {
    double miou;          /* percent; 0 when no class is scored (as the reference)           */
    double pixel_acc;     /* percent: correctly labelled / counted pixels                     */
    double mean_acc;      /* percent: mean over classes with GT of per-class recall            */
    double fwiou;         /* percent: frequency-weighted IoU                                    */
    int n_scored;         /* classes that entered the mIoU mean                                 */
    double *iou;          /* n_class values in percent; NAN where 0/0 or dropped (class 0)      */
    unsigned char *scored;/* n_class flags: 1 if the class entered the mIoU mean                */
    int n_class;
} carseg_miou;

carseg_status carseg_confusion_score(const carseg_confusion *cm, int ignore_background,
                                     carseg_miou_convention conv, carseg_miou *out);
void carseg_miou_free(carseg_miou *m);

/* Referring segmentation (evaluate.py refer mode): per-sample IoU of binary masks,
 * mean IoU, overall IoU (sum I / sum U) and precision at IoU >= 0.5, 0.6, 0.7, 0.8, 0.9.
 * A sample with an empty union scores IoU 0 (as the reference). */
typedef struct {
    uint64_t n, cum_i, cum_u;
    double sum_iou;
    uint64_t correct[5];
} carseg_refer_stats;

void carseg_refer_add(carseg_refer_stats *s, uint64_t inter, uint64_t uni);
/* Percentages. */
void carseg_refer_summary(const carseg_refer_stats *s, double *miou, double *oiou,
                          double prec[5]);
/* Intersection and union of two binary masks (nonzero = inside). */
void carseg_mask_iou(const uint8_t *pred, const uint8_t *gt, size_t n_px, uint64_t *inter,
                     uint64_t *uni);



// --- COCO RLE (src/rle.c; label helper, issue #15) -------------------------------------------
/* COCO compressed run-length encoding of a binary mask, byte-identical to pycocotools
 * (mask.encode / mask.decode on a Fortran-order uint8 array): runs are counted column by
 * column starting with zeros, coded as deltas in 5-bit groups + 48. A 4x5 mask (h=4, w=5) with
 * rows 1-2, columns 1-3 set encodes as "5220003".
 *
 * carseg_rle_encode: mask is row-major h*w bytes (nonzero = in); *rle_out is a malloc'd
 *   NUL-terminated string (free with free()). CARSEG_EINVAL when h*w is negative or >= 2^32.
 * carseg_rle_decode: rle is untrusted text; mask receives h*w bytes of 0/1, row-major.
 *   CARSEG_EFORMAT (message says why) when rle is malformed or its runs do not cover h*w exactly;
 *   optional area / bbox [x, y, w, h] out (as pycocotools' area / toBbox), NULL to skip. */
carseg_status carseg_rle_encode(const uint8_t *mask, int h, int w, char **rle_out);
carseg_status carseg_rle_decode(const char *rle, int h, int w, uint8_t *mask, uint64_t *area,
                                double bbox[4]);
// --- end COCO RLE ------------------------------------------------------------------------------

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
#endif /* CARSEG_H */
