#!/bin/sh
# fingerprint.sh — sha256 of carseg's float32 results on the fixture models, to compare machines
# (docs/threads.md): the CLIP features of two texts and two photos (printed with 9 significant
# digits, so equal hashes mean equal bits), and CaR on a fixture image: every round's CAMs (float32
# .npy from --dump), the label map and the JSON (less its timings and the image's path).
# usage: scripts/fingerprint.sh [carseg binary]   (CARSEG_SHARED: the shared folder, default ../shared)
set -eu
BIN=${1:-build/carseg}
S=${CARSEG_SHARED:-../shared}
G=$S/fixtures/clip_sg/model_f16.safetensors
C=$S/fixtures/models/sc_f16.safetensors
V=$S/clip/bpe_simple_vocab_16e6.txt.gz
for f in "$G" "$C" "$V" "$S/fixtures/car/coffee300_voc/input.png"; do
    [ -r "$f" ] || { echo "fingerprint: $f missing (set CARSEG_SHARED)" >&2; exit 2; }
done
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$BIN" embed --model "$G" --vocab "$V" --text "a photo of a cat" --text "a cup of coffee" \
    --image "$S/data/photos/chelsea.png" --image "$S/data/photos/coffee.png" > "$T/features.json"
"$BIN" segment "$S/fixtures/car/coffee300_voc/input.png" --generator "$G" --classifier "$C" --vocab "$V" \
    --preset voc --theta 0.06 --out "$T/seg" --dump "$T/dump" --quiet > /dev/null
grep -v '"timings_ms"\|"image":' "$T/seg/input.json" > "$T/seg.json" || true
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -x -E 'avx2|avx512f|amx_tile' | tr '\n' ' ')
printf 'cpu        %s (%s)\n' "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" "${flags% }"
printf 'features   %s\n' "$(sha256sum < "$T/features.json" | cut -c1-16)"
printf 'CAMs       %s\n' "$(cat "$T"/dump/round*_cams.npy | sha256sum | cut -c1-16)"
printf 'label map  %s\n' "$(sha256sum < "$T/seg/input.png" | cut -c1-16)"
printf 'result     %s\n' "$(sha256sum < "$T/seg.json" | cut -c1-16)"
