#!/usr/bin/env bash
# test_mpi.sh — the MPI build of `carseg eval`: builds build-mpi/carseg (make MPI=1), runs
# `mpirun -np 2` on a synthetic VOC-layout split (scripts/eval_fixtures.py) and checks that the
# result equals the single-process run, that both ranks did work, and that a resumed MPI run
# (journal already complete / partial) gives the same numbers; then the CaR predictor on 2 and 3
# ranks with other thread counts per rank: bit-identical numbers to one process.
# Prints "N passed, N failed"; exits nonzero on any failure. Skips (exit 0) without mpicc/mpirun.
set -u
cd "$(dirname "$0")/.."
pass=0; fail=0
ok()   { echo "ok   $1"; pass=$((pass + 1)); }
bad()  { echo "FAIL $1"; fail=$((fail + 1)); }
if ! command -v mpicc >/dev/null || ! command -v mpirun >/dev/null; then
    echo "skipped: mpicc/mpirun not installed (apt-get install libopenmpi-dev openmpi-bin)"
    echo "0 passed, 0 failed"; exit 0
fi
if [ ! -x /usr/bin/python3 ]; then
    echo "skipped: /usr/bin/python3 (numpy, PIL) needed for the fixture"; echo "0 passed, 0 failed"; exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ROOTFLAG=""
[ "$(id -u)" = 0 ] && ROOTFLAG="--allow-run-as-root"
mpi() { local n=$1; shift; mpirun $ROOTFLAG --oversubscribe -np "$n" "$@"; }

make -s MPI=1 -j2 >/dev/null || { bad "make MPI=1"; echo "$pass passed, $fail failed"; exit 1; }
make -s -j2 >/dev/null || { bad "make"; echo "$pass passed, $fail failed"; exit 1; }
ok "make MPI=1 builds build-mpi/carseg"

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
/usr/bin/python3 scripts/eval_fixtures.py semantic "$T/data" || { bad "fixture"; echo "$pass passed, $fail failed"; exit 1; }

get() { /usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['n_images'], repr(r['miou']), r['confusion'])" "$1"; }

build/carseg eval --dataset voc --root "$T/data" --predictions "$T/data/pred" --out "$T/single" --quiet >/dev/null
mpi 2 build-mpi/carseg eval --dataset voc --root "$T/data" --predictions "$T/data/pred" \
    --out "$T/mpi" > "$T/mpi.out" 2> "$T/mpi.err"
rc=$?
[ $rc = 0 ] && ok "mpirun -np 2 carseg eval exits 0" || { bad "mpirun -np 2 carseg eval (rc $rc)"; cat "$T/mpi.err"; }
if [ -f "$T/mpi/results.json" ] && [ "$(get "$T/single/results.json")" = "$(get "$T/mpi/results.json")" ]; then
    ok "2 ranks: same n_images, mIoU and confusion matrix as one process"
else
    bad "2 ranks: results differ from one process"
fi
n=$(grep -c '"id"' "$T/mpi/journal.jsonl" 2>/dev/null || echo 0)
[ "$n" = 12 ] && ok "rank 0's journal holds every sample once ($n)" || bad "journal has $n records, want 12"
grep -q "mIoU" "$T/mpi.out" && ok "final table on stdout" || bad "no table on stdout"
per=$(grep -o "samples per rank:[ 0-9]*" "$T/mpi.err")
sum=0; for k in ${per#samples per rank:}; do sum=$((sum + k)); done
[ "$sum" = 12 ] && ok "work spread over the ranks ($per)" || bad "per-rank counts: '$per'"

# resume under MPI: keep the header + 5 records, rerun with 2 ranks
head -n 6 "$T/mpi/journal.jsonl" > "$T/j" && mv "$T/j" "$T/mpi/journal.jsonl"
mpi 2 build-mpi/carseg eval --dataset voc --root "$T/data" --predictions "$T/data/pred" \
    --out "$T/mpi" > /dev/null 2> "$T/resume.err"
if grep -q "resuming: 5 of 12" "$T/resume.err" && [ "$(get "$T/single/results.json")" = "$(get "$T/mpi/results.json")" ]; then
    ok "MPI resume from a partial journal gives the same result"
else
    bad "MPI resume"; cat "$T/resume.err"
fi

# more ranks than samples left: ranks with nothing to do still finish cleanly
mpi 3 build-mpi/carseg eval --dataset voc --root "$T/data" --predictions "$T/data/pred" \
    --out "$T/mpi3" --limit 2 --quiet > /dev/null 2>&1 \
    && [ "$(/usr/bin/python3 -c "import json;print(json.load(open('$T/mpi3/results.json'))['n_images'])")" = 2 ] \
    && ok "3 ranks, 2 samples" || bad "3 ranks, 2 samples"

# the CaR predictor itself (tiny random-weight fixture models): 5 real VOC images (semantic) and
# the refcoco-style fixture split (refer), on 2 and 3 ranks with other thread counts per rank
# (OMP_NUM_THREADS through mpirun's -x, one app context per rank) than the one process's single
# thread: the same numbers, bit for bit (docs/threads.md). With products split by thread count,
# the 4th image's label map moved with OpenBLAS's AVX2 kernels (OPENBLAS_CORETYPE=Haswell).
SH=""
for d in "${CARSEG_SHARED:-}" ../shared ../../shared; do
    [ -n "$d" ] && [ -f "$d/fixtures/clip_sg/model_f16.safetensors" ] && { SH=$d; break; }
done
# every number of results.json but the timing, exactly as written
nums() { /usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r.pop('timing_ms_per_image', None); print(json.dumps(r, sort_keys=True))" "$1"; }
# mpirun with rank k running OMP_NUM_THREADS=<k-th argument>: mpin "1 2 3" CMD...
mpin() {
    local th=$1; shift; local ctx=() sep=""
    for t in $th; do ctx+=($sep -np 1 -x OMP_NUM_THREADS=$t -x OMP_WAIT_POLICY=passive "$@"); sep=":"; done
    mpirun $ROOTFLAG --oversubscribe "${ctx[@]}"
}
if [ -n "$SH" ]; then
    M=(--generator "$SH/fixtures/clip_sg/model_f16.safetensors" --classifier "$SH/fixtures/models/sc_f16.safetensors"
       --vocab "$SH/clip/bpe_simple_vocab_16e6.txt.gz" --quiet)
    A=(--dataset voc --root "$SH/data/voc_mini" --limit 5 "${M[@]}")
    /usr/bin/python3 scripts/eval_fixtures.py refer "$T/refer" || bad "refer fixture"
    R=(--dataset refcoco --root "$T/refer" "${M[@]}")
    OMP_NUM_THREADS=1 build/carseg eval "${A[@]}" --out "$T/car1" > /dev/null 2> "$T/car1.err" || { bad "CaR eval, one process"; cat "$T/car1.err"; }
    OMP_NUM_THREADS=1 build/carseg eval "${R[@]}" --out "$T/ref1" > /dev/null 2> "$T/ref1.err" || { bad "CaR refer eval, one process"; cat "$T/ref1.err"; }
    for th in "2 3" "3 2 4"; do
        np=$(echo $th | wc -w)
        mpin "$th" build-mpi/carseg eval "${A[@]}" --out "$T/car$np" > /dev/null 2> "$T/car$np.err"
        if [ -f "$T/car$np/results.json" ] && [ "$(nums "$T/car1/results.json")" = "$(nums "$T/car$np/results.json")" ]; then
            ok "CaR on $np ranks (threads per rank: $th): every number equals one process's, bit for bit"
        else
            bad "CaR on $np ranks (threads $th) differs from one process"; cat "$T/car$np.err"
            diff <(nums "$T/car1/results.json" | tr ',' '\n') <(nums "$T/car$np/results.json" 2>/dev/null | tr ',' '\n') | head -20
        fi
        mpin "$th" build-mpi/carseg eval "${R[@]}" --out "$T/ref$np" > /dev/null 2> "$T/ref$np.err"
        if [ -f "$T/ref$np/results.json" ] && [ "$(nums "$T/ref1/results.json")" = "$(nums "$T/ref$np/results.json")" ]; then
            ok "CaR refer on $np ranks (threads per rank: $th): the same numbers as one process"
        else
            bad "CaR refer on $np ranks (threads $th) differs from one process"; cat "$T/ref$np.err"
        fi
    done
    # the MPI journal holds the samples in sample order, as one process writes it
    if [ "$(grep -o '"id":"[^"]*"' "$T/car1/journal.jsonl")" = "$(grep -o '"id":"[^"]*"' "$T/car3/journal.jsonl")" ]; then
        ok "3 ranks journal the samples in the order of one process"
    else
        bad "3 ranks: journal order differs from one process"
    fi
else
    echo "skipped: CaR on 2 and 3 ranks (shared fixtures not found; set CARSEG_SHARED)"
fi

echo "$pass passed, $fail failed"
[ $fail = 0 ]
