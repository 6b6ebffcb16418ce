"""POST /v1/embeddings through the official OpenAI Python SDK, and its raw shape."""

import math

import numpy as np
import openai
import pytest
import requests

from conftest import CLASSIFIER, EMBED_MODEL


@pytest.fixture(scope="module")
def client(keel):
    return openai.OpenAI(base_url=keel.url("/v1"), api_key="unused", max_retries=0)


def test_sdk_default_base64_and_float_agree(client):
    texts = ["The quick brown fox.", "Ein schneller brauner Fuchs 🦊", "速い茶色の狐"]
    b64 = client.embeddings.create(model=EMBED_MODEL, input=texts)
    flt = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in b64.data] == [0, 1, 2]
    assert b64.model == EMBED_MODEL
    assert b64.usage.prompt_tokens == flt.usage.prompt_tokens > len(texts) * 2
    for a, b in zip(b64.data, flt.data):
        assert len(a.embedding) == 384
        assert np.allclose(a.embedding, b.embedding, atol=1e-7)
        assert math.isclose(float(np.linalg.norm(a.embedding)), 1.0, rel_tol=1e-5)


def test_single_string_input(client):
    r = client.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="float")
    assert len(r.data) == 1 and len(r.data[0].embedding) == 384


def test_similar_texts_are_closer(client):
    r = client.embeddings.create(
        model=EMBED_MODEL,
        input=["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."],
        encoding_format="float",
    )
    e = [np.array(d.embedding) for d in r.data]
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_sdk_surfaces_errors_as_status_errors(client):
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=CLASSIFIER, input="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=EMBED_MODEL, input=[])


def test_raw_shape_and_errors(url):
    r = requests.post(url("/v1/embeddings"), json={"input": ["a", "b"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == EMBED_MODEL
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    bad = [
        {"input": [1, 2, 3]},
        {"input": None},
        {"input": ["ok", 5]},
        {"input": "ok", "encoding_format": "hex"},
        {"input": "ok", "dimensions": 12},
        {"model": EMBED_MODEL},
    ]
    for body in bad:
        r = requests.post(url("/v1/embeddings"), json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"]


def test_models_and_info(url):
    models = requests.get(url("/v1/models")).json()
    assert {m["id"] for m in models["data"]} == {EMBED_MODEL, CLASSIFIER}
    info = requests.get(url("/info")).json()
    by_name = {m["name"]: m for m in info["models"]}
    assert by_name[EMBED_MODEL]["task"] == "embedding"
    assert by_name[EMBED_MODEL]["max_input_tokens"] == 256
    assert by_name[CLASSIFIER]["task"] == "classification"
    assert by_name[CLASSIFIER]["labels"] == ["NEGATIVE", "POSITIVE"]
    assert info["settings"]["max_batch_size"] >= 1
    assert info["version"]
    spec = requests.get(url("/openapi.json")).json()
    for path in ["/health", "/ready", "/predict", "/v1/embeddings", "/v1/models", "/info"]:
        assert path in spec["paths"]
