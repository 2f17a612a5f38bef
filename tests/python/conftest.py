"""pytest set-up for the carseg Python package: the shared fixtures (../shared or $CARSEG_SHARED)
and the CLI (build/carseg) it is compared with. Missing fixtures skip with the path named."""

import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if os.path.join(REPO, "python") not in sys.path and not os.environ.get("CARSEG_TEST_INSTALLED"):
    sys.path.insert(0, os.path.join(REPO, "python"))


def shared_dir():
    env = os.environ.get("CARSEG_SHARED")
    for d in ([env] if env else []) + [os.path.join(REPO, "..", "shared")]:
        if d and os.path.isdir(d):
            return os.path.abspath(d)
    return None


def shared(rel):
    d = shared_dir()
    p = os.path.join(d, rel) if d else None
    if not p or not os.path.exists(p):
        pytest.skip("shared fixture %s not found (set CARSEG_SHARED or put them at ../shared)"
                    % rel)
    return p


@pytest.fixture(scope="session")
def vocab():
    return shared("clip/bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="session")
def sg():
    return shared("fixtures/clip_sg/model_f16.safetensors")


@pytest.fixture(scope="session")
def sc():
    return shared("fixtures/models/sc_f16.safetensors")


@pytest.fixture(scope="session")
def cli():
    p = os.path.join(REPO, "build", "carseg")
    if not os.path.exists(p):
        pytest.fail("%s missing: run `make` first" % p)
    return p


def run_cli(cli, *args):
    r = subprocess.run([cli] + list(args), capture_output=True, text=True)
    assert r.returncode == 0, "carseg %s failed: %s" % (" ".join(args), r.stderr)
    return r
