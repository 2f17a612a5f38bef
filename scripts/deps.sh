#!/usr/bin/env bash
# Installs every Debian package carseg's build, tests, benchmarks and fixture tools need.
# Idempotent: does nothing when everything is present.
set -euo pipefail
pkgs=(
  build-essential pkg-config
  libjpeg62-turbo-dev   # JPEG decoding, the same libjpeg-turbo Pillow uses (bit-identical pixels)
  libpng-dev zlib1g-dev # PNG read/write; zlib also inflates the gzipped BPE vocabulary
  libcurl4-openssl-dev  # model downloads (https, redirects, resume); not needed by make NO_CURL=1
  libopenblas-dev       # sgemm for the transformer layers
  libtiff-dev           # 16-bit TIFF labels of ADE-847 / Pascal-Context-459
  libopenmpi-dev openmpi-bin  # `make MPI=1` cluster evaluation
  python3 python3-numpy python3-torch python3-torchvision python3-opencv python3-pil python3-scipy  # fixture/bench tools
  python3-pytest python3-venv python3-pip python3-setuptools python3-wheel  # the Python package: make test-python
  python3-regex         # scripts/clip_tokenizer_oracle.py, gen_tokenizer_tables.py (tokenizer oracle)
  clang libclang-rt-14-dev  # `make fuzz` (libFuzzer)
  libmicrohttpd-dev     # `carseg serve`: the HTTP server library
  chromium              # `make test-serve`: the demo page in headless Chromium
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "deps: all ${#pkgs[@]} packages present"; exit 0; fi
echo "deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
