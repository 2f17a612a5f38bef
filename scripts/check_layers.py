#!/usr/bin/python3
"""check_layers.py [--src DIR] [--bench DIR] [BUILD] — the layer rule of src/, read off the sources and (with BUILD) the objects.

Layers, lowest first: util < image < clip < crf < car < sam < eval < api. A file in src/<layer>/
may include headers of its own layer and of lower layers only; sam may not include car (car reaches
sam through its seam). Headers that are not in src/ (carseg.h, system headers) are outside the rule;
tools/ and tests/ are outside too.
The benchmarks (bench/) are public-API programs: a file there may include "carseg.h", its own
folder's headers (bench_common.h) and system headers, never a header of src/ (by any path).
With BUILD (the build folder), the same rule at link level: an object of a layer must not use a
symbol defined in a higher layer (nm), and the objects' use of each other has no cycle
(A uses B uses ... uses A), within a layer too.
Prints every violation as FILE:LINE: message and exits 1 when there is one."""
import os, re, subprocess, sys

ORDER = ["util", "image", "clip", "crf", "car", "sam", "eval", "api"]
FORBIDDEN = {("sam", "car")}          # (from, to) pairs refused even though to is lower/equal
RANK = {l: i for i, l in enumerate(ORDER)}
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
src = os.path.join(root, "src")
bench = os.path.join(root, "bench")
while len(sys.argv) > 2 and sys.argv[1] in ("--src", "--bench"):   # another tree (the checker's own test)
    if sys.argv[1] == "--src":
        src = sys.argv[2]
    else:
        bench = sys.argv[2]
    del sys.argv[1:3]

bad = []
layer_of_header = {}
files = []
for layer in sorted(os.listdir(src)):
    d = os.path.join(src, layer)
    if not os.path.isdir(d):
        continue
    if layer not in RANK:
        bad.append(f"src/{layer}/: not a known layer (known: {', '.join(ORDER)})")
        continue
    for f in sorted(os.listdir(d)):
        if f.endswith((".c", ".h", ".inc")):
            files.append((layer, f))
            if not f.endswith(".c"):
                if f in layer_of_header:
                    bad.append(f"src/{layer}/{f}: header name also in src/{layer_of_header[f]}/")
                layer_of_header[f] = layer
for f in sorted(os.listdir(src)):
    if f.endswith((".c", ".h")):
        bad.append(f"src/{f}: outside every layer folder")

inc = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
for layer, f in files:
    path = os.path.join(src, layer, f)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            m = inc.match(line)
            if not m:
                continue
            h = os.path.basename(m.group(1))
            to = layer_of_header.get(h)
            if to is None:
                continue
            if RANK[to] > RANK[layer]:
                bad.append(f"src/{layer}/{f}:{n}: includes {h} of the higher layer {to}")
            elif (layer, to) in FORBIDDEN:
                bad.append(f"src/{layer}/{f}:{n}: includes {h} of {to} ({layer} may not use {to})")

# the benchmarks: carseg.h, bench/'s own headers and system headers only
any_inc = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')
bench_files = sorted(f for f in os.listdir(bench) if f.endswith((".c", ".h"))) if os.path.isdir(bench) else []
for f in bench_files:
    with open(os.path.join(bench, f), encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            m = any_inc.match(line)
            if not m:
                continue
            h = os.path.basename(m.group(2))
            if h in layer_of_header:
                bad.append(f"bench/{f}:{n}: includes {h} of src/{layer_of_header[h]}/ "
                           "(benchmarks use the public API, include/carseg.h, only)")
            elif m.group(1) == '"' and m.group(2) != "carseg.h" and m.group(2) not in bench_files:
                bad.append(f"bench/{f}:{n}: includes \"{m.group(2)}\" (benchmarks include \"carseg.h\", "
                           "their own headers and system headers only)")

if len(sys.argv) > 1:
    build = sys.argv[1]
    defs, uses = {}, {}
    objs = []
    for layer, f in files:
        if not f.endswith(".c"):
            continue
        o = os.path.join(build, "src", layer, f[:-2] + ".o")
        if not os.path.exists(o):
            bad.append(f"{o}: missing (build first)")
            continue
        objs.append((layer, f, o))
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        uses[o] = set()
        for line in out.splitlines():
            p = line.split()
            if len(p) == 2 and p[0] == "U":
                uses[o].add(p[1])
            elif len(p) == 3 and p[1] in "TDBRGSVWi":   # defined globals (i: an ifunc)
                defs.setdefault(p[2], o)
    name = {o: (layer, f) for layer, f, o in objs}
    graph = {o: set() for o in uses}
    for o, us in uses.items():
        lo = name[o][0]
        for s in sorted(us):
            d = defs.get(s)
            if not d or d == o:
                continue
            graph[o].add(d)
            ld = name[d][0]
            if RANK[ld] > RANK[lo]:
                bad.append(f"src/{lo}/{name[o][1]}: uses {s} of src/{ld}/{name[d][1]} (a higher layer)")
            elif (lo, ld) in FORBIDDEN:
                bad.append(f"src/{lo}/{name[o][1]}: uses {s} of src/{ld}/{name[d][1]} ({lo} may not use {ld})")
    # cycles among objects (Tarjan's strongly connected components)
    index, low, stack, on, comps = {}, {}, [], set(), []
    def strong(v, counter=[0]):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop(); on.discard(w); c.append(w)
                if w == v:
                    break
            if len(c) > 1:
                comps.append(c)
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    for c in comps:
        names = ", ".join(f"src/{name[o][0]}/{name[o][1]}" for o in sorted(c))
        bad.append(f"link-level cycle among {names}")

for b in bad:
    print(b)
if bad:
    print(f"check_layers: {len(bad)} violation(s)", file=sys.stderr)
    sys.exit(1)
print(f"check_layers: {len(files)} files in {len(set(l for l, _ in files))} layers, "
      + ("includes and objects" if len(sys.argv) > 1 else "includes") + " follow " + " < ".join(ORDER)
      + f"; {len(bench_files)} benchmark files include carseg.h only")
