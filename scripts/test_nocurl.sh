#!/usr/bin/env bash
# test_nocurl.sh — the build without a downloader (make NO_CURL=1): it builds, neither the
# libraries nor the CLI need libcurl (or OpenSSL), a model name not in the cache fails with a
# message saying the build has no downloader, a cached file resolves by name, and the model and
# tokenizer tests pass in that build.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/nocurl
make -j2 NO_CURL=1 BUILD=$B libs $B/carseg $B/run_tests > /dev/null
fail() { echo "test_nocurl: FAIL: $*" >&2; exit 1; }
for f in $B/libcarseg.so $B/carseg; do
  if ldd "$f" | grep -E 'libcurl|libcrypto|libssl'; then fail "$f links libcurl/OpenSSL"; fi
done
if nm -u $B/libcarseg.a | grep -E ' (curl_|EVP_)'; then fail "libcarseg.a needs curl/OpenSSL symbols"; fi
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
if out=$(CARSEG_CACHE=$cache $B/carseg models pull ViT-B/16 2>&1); then fail "models pull succeeded without a downloader"; fi
grep -q "built without a downloader" <<< "$out" || fail "unclear error: $out"
echo "test_nocurl: pull says: $out"
vocab=../shared/clip/bpe_simple_vocab_16e6.txt.gz
if [ -f "$vocab" ]; then
  cp "$vocab" "$cache/"
  got=$(CARSEG_CACHE=$cache $B/carseg tokenize "a photo of a cat")
  [ "$got" = "49406 320 1125 539 320 2368 49407" ] || fail "tokenize with the cached vocabulary gave '$got'"
  echo "test_nocurl: the cached vocabulary resolves by name"
else
  echo "test_nocurl: $vocab missing: cache resolution not checked"
fi
make NO_CURL=1 BUILD=$B test T="models tokenizer build_ util_sha256" 2>&1 | tail -1
