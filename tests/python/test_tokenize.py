import json

import numpy as np
import pytest

import carseg
from conftest import shared


def test_tokenize_equals_upstream_cases(vocab):
    d = json.load(open(shared("fixtures/tokenizer_cases.json")))
    texts = [c["text"] for c in d["cases"]]
    t = carseg.tokenize(texts, vocab=vocab)
    assert t.dtype == np.int64 and t.shape == (len(texts), 77)
    for row, c in zip(t, d["cases"]):
        ids = c["context_ids"]
        assert list(row[:len(ids)]) == ids, c["text"]
        assert not row[len(ids):].any(), c["text"]
    tok = carseg.tokenizer(vocab)
    for c in d["cases"]:
        assert tok.encode(c["text"]) == c["bpe_ids"], c["text"]


def test_tokenize_truncate_and_context(vocab):
    long = "a " * 100
    t = carseg.tokenize(long, vocab=vocab)
    assert t.shape == (1, 77) and t[0, 0] == 49406 and t[0, 76] == 49407
    with pytest.raises(ValueError, match="too long for context length 77"):
        carseg.tokenize([long], truncate=False, vocab=vocab)
    t = carseg.tokenize(["a photo of a cat."], context_length=10, vocab=vocab)
    assert t.shape == (1, 10) and t[0, 7] == 49407
    with pytest.raises(TypeError):
        carseg.tokenize([b"bytes"], vocab=vocab)


def test_tokenizer_missing_vocab():
    with pytest.raises(OSError) as e:
        carseg.tokenize("x", vocab="/nonexistent/vocab.txt.gz")
    assert "/nonexistent/vocab.txt.gz" in str(e.value)


def test_package_is_the_one_under_test():
    import os
    if os.environ.get("CARSEG_TEST_INSTALLED"):
        assert "site-packages" in carseg.__file__, carseg.__file__
        assert carseg.library_path.startswith(os.path.dirname(carseg.__file__))
    assert carseg.ABI_VERSION == 1 and carseg.__version__
