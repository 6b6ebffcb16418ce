"""Keel against the reference implementation (transformers / sentence-transformers on PyTorch).

Fixtures and the script that made them live in tests/fixtures/. Inputs are sent in batches
of mixed lengths so that padding is exercised too.
"""

import numpy as np
import pytest
import requests

from conftest import CLASSIFIER, EMBED_MODEL, Keel, load_fixture


@pytest.fixture(scope="module", params=["ort", "candle"])
def url(request, keel):
    """Parity holds for both backends: the session server (ONNX Runtime, the default) and a
    candle server started for this module."""
    if request.param == "ort":
        yield keel.url
        return
    k = Keel({"BACKEND": "candle"}).wait_ready()
    yield k.url
    assert k.stop() == 0


def servable(items, url, route, body):
    """Whitespace-only texts are refused by Keel (422 empty_input), by design; the reference
    embeds them. Check the refusal and compare the rest."""
    keep = []
    for item in items:
        if item["text"].strip():
            keep.append(item)
        else:
            r = requests.post(url(route), json=body(item["text"]))
            assert r.status_code == 422 and r.json()["error"]["code"] == "empty_input"
    return keep


def chunks(items, n):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def test_embeddings_match_sentence_transformers(url):
    fixture = load_fixture("embeddings.json")
    items = servable(fixture["items"], url, "/v1/embeddings", lambda t: {"model": EMBED_MODEL, "input": t})
    assert len(items) >= 50
    worst = 1.0
    for batch in chunks(items, 7):
        r = requests.post(url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": [i["text"] for i in batch]})
        assert r.status_code == 200, r.text
        for item, got in zip(batch, r.json()["data"]):
            want = np.array(item["embedding"], dtype=np.float64)
            got = np.array(got["embedding"], dtype=np.float64)
            cosine = want @ got / (np.linalg.norm(want) * np.linalg.norm(got))
            worst = min(worst, cosine)
            assert cosine >= 0.9999, (item["text"][:80], cosine)
    print(f"worst embedding cosine: {worst:.7f}")


def test_embedding_token_counts_match_the_reference_truncation(url):
    items = load_fixture("embeddings.json")["items"]
    for item in [i for i in items if i["text"].strip()]:
        r = requests.post(url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": item["text"]})
        assert r.json()["usage"]["prompt_tokens"] == item["num_tokens"], item["text"][:80]


def test_classification_matches_the_transformers_pipeline(url):
    fixture = load_fixture("classification.json")
    items = servable(fixture["items"], url, "/predict", lambda t: {"model": CLASSIFIER, "text": t})
    assert len(items) >= 50
    worst = 0.0
    for batch in chunks(items, 7):
        r = requests.post(url("/predict"), json={"model": CLASSIFIER, "inputs": [i["text"] for i in batch], "top_k": 2})
        assert r.status_code == 200, r.text
        for item, ranked in zip(batch, r.json()):
            assert ranked[0]["label"] == item["label"], item["text"][:80]
            for entry in ranked:
                delta = abs(entry["score"] - item["scores"][entry["label"]])
                worst = max(worst, delta)
                assert delta <= 1e-4, (item["text"][:80], entry, item["scores"])
    print(f"worst classification |dscore|: {worst:.2e}")


def test_int8_drift_against_fp32_is_small(start_keel):
    """ORT_PRECISION=int8 trades accuracy for speed; this measures the drift on the fixtures
    (numbers quoted in the README) and guards against it growing."""
    k = start_keel({"ORT_PRECISION": "int8"}).wait_ready()
    emb = [i for i in load_fixture("embeddings.json")["items"] if i["text"].strip()]
    cosines = []
    for batch in chunks(emb, 8):
        r = requests.post(k.url("/v1/embeddings"), json={"model": EMBED_MODEL, "input": [i["text"] for i in batch]})
        for item, got in zip(batch, r.json()["data"]):
            want, got = np.array(item["embedding"]), np.array(got["embedding"])
            cosines.append(want @ got / (np.linalg.norm(want) * np.linalg.norm(got)))
    cls = [i for i in load_fixture("classification.json")["items"] if i["text"].strip()]
    flips, deltas = 0, []
    for batch in chunks(cls, 8):
        r = requests.post(k.url("/predict"), json={"model": CLASSIFIER, "inputs": [i["text"] for i in batch]})
        for item, got in zip(batch, r.json()):
            flips += got["label"] != item["label"]
            deltas.append(abs(got["score"] - item["scores"][got["label"]]) if got["label"] == item["label"] else 1.0)
    print(f"int8 vs fp32 reference: embedding cosine min {min(cosines):.4f} mean {np.mean(cosines):.4f}; "
          f"label flips {flips}/{len(cls)}; median |dscore| {np.median(deltas):.4f}")
    assert min(cosines) >= 0.95 and np.mean(cosines) >= 0.98
    assert flips <= len(cls) // 10
