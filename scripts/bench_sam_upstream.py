#!/usr/bin/python3
"""bench_sam_upstream.py — upstream's automatic mask generator (SysCV/sam-hq segment_anything, run
beside the project: SAMHQ_ROOT=folder holding segment_anything/) against `carseg sam --auto` on the
same random-weight HQ-SAM of a real architecture, the same image and points, in one sitting.

  SAMHQ_ROOT=/path/to/sam-hq /usr/bin/python3 scripts/bench_sam_upstream.py [vit_b|vit_l|vit_h]
      [points_per_side] [image]

Writes the random checkpoint (torch.save state dict, as released) to $TMPDIR, times upstream's
generate() with its set_image (the encoder) and its batches (decoder + selection) timed inside
it, and carseg's `sam --auto` (wall, both at the same thread count, OMP_NUM_THREADS /
torch.set_num_threads), and prints the ratio and both peak memories (carseg's from a small
wrapper process). The thresholds are 0 so that the selection keeps work comparable; the CPU is
printed from /proc/cpuinfo."""
import os, resource, subprocess, sys, tempfile, time

root = os.environ.get("SAMHQ_ROOT")
if not root or not os.path.isdir(os.path.join(root, "segment_anything")):
    sys.exit("set SAMHQ_ROOT to a folder holding SysCV/sam-hq's segment_anything/")
sys.path.insert(0, root)
import numpy as np
import torch
from PIL import Image

try:   # sam-hq imports timm for TinyViT (Light HQ-SAM) only; a stand-in when it is missing
    import timm  # noqa: F401
except ImportError:
    import types
    class _DropPath(torch.nn.Identity):
        def __init__(self, *a, **k):
            super().__init__()
    _layers = types.ModuleType("timm.models.layers")
    _layers.DropPath = _DropPath
    _layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    _layers.trunc_normal_ = torch.nn.init.trunc_normal_
    _registry = types.ModuleType("timm.models.registry")
    _registry.register_model = lambda f: f
    for _n, _m in (("timm", types.ModuleType("timm")), ("timm.models", types.ModuleType("timm.models")),
                   ("timm.models.layers", _layers), ("timm.models.registry", _registry)):
        sys.modules[_n] = _m
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
arch = sys.argv[1] if len(sys.argv) > 1 else "vit_b"
pps = int(sys.argv[2]) if len(sys.argv) > 2 else 8
img = sys.argv[3] if len(sys.argv) > 3 else os.path.join(REPO, "data", "examples", "chelsea.jpg")
threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(threads)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")

torch.manual_seed(0)
sam = sam_model_registry[arch]()
sam.eval()
ck = os.path.join(tempfile.gettempdir(), "carseg_bench_samhq_%s.pth" % arch)
if not os.path.exists(ck):
    torch.save(sam.state_dict(), ck)
rgb = np.asarray(Image.open(img).convert("RGB"))
params = dict(points_per_side=pps, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.7)

# generate() once, with its own set_image (the encoder) and each _process_batch (a batch of
# points through the decoder and the selection) timed inside it
gen = SamAutomaticMaskGenerator(sam, **params)
timed = {"set_image": 0.0, "_process_batch": 0.0}
def timer(obj, name):
    f = getattr(obj, name)
    def run(*a, **k):
        t = time.time()
        r = f(*a, **k)
        timed[name] += time.time() - t
        return r
    setattr(obj, name, run)
timer(gen.predictor, "set_image")
timer(gen, "_process_batch")
with torch.no_grad():
    t0 = time.time()
    recs = gen.generate(rgb)
    t_gen = time.time() - t0
t_enc = timed["set_image"]

out = tempfile.mkdtemp(prefix="carseg-bench-sam-")
cmd = [os.path.join(REPO, "build", "carseg"), "sam", img, "--model", ck, "--auto",
       "--points-per-side", str(pps), "--pred-iou", "0", "--stability", "0", "--nms", "0.7",
       "--out", out]
env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="passive")
# carseg's peak memory: its ru_maxrss from a small wrapper process (a child forked from this
# process would count this process's pages until its exec)
WRAP = ("import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "sys.stderr.write('carseg-maxrss-kb %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n")
t0 = time.time()
r = subprocess.run([sys.executable, "-c", WRAP] + cmd, env=env, capture_output=True, text=True)
t_car = time.time() - t0
if r.returncode:
    sys.exit("carseg failed: " + r.stderr)
car_kb = next((int(l.split()[1]) for l in r.stderr.splitlines() if l.startswith("carseg-maxrss-kb ")), 0)
print("CPU: %s, %d threads; %s HQ-SAM (random weights), %s %dx%d, %d x %d points"
      % (cpu, threads, arch, os.path.basename(img), rgb.shape[1], rgb.shape[0], pps, pps))
print("upstream: generate() %.1f s (its set_image, the encoder: %.1f s), %d masks" % (t_gen, t_enc, len(recs)))
print("carseg sam --auto (load + encoder + generator + outputs): %.1f s" % t_car)
print("generate() / carseg: x%.2f" % (t_gen / t_car))
print("upstream per prompt (its _process_batch calls: decoder + selection): %.1f ms"
      % (timed["_process_batch"] * 1e3 / (pps * pps)))
print("peak resident memory: upstream (this process) %.0f MB, carseg %.0f MB"
      % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, car_kb / 1024.0))
