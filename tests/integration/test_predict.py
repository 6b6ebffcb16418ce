"""POST /predict: the guide's shapes, batches, top_k, and clear errors."""

import requests

from conftest import CLASSIFIER, EMBED_MODEL

LABELS = {"NEGATIVE", "POSITIVE"}


def test_single_text_gives_label_and_score(url):
    r = requests.post(url("/predict"), json={"text": "A warm, funny and beautifully acted film."})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"label", "score"}
    assert body["label"] == "POSITIVE" and 0.5 < body["score"] <= 1.0


def test_guide_query_form_works(url):
    r = requests.post(url("/predict"), params={"text": "a dull, lifeless and tedious mess"})
    assert r.status_code == 200
    assert r.json()["label"] == "NEGATIVE"


def test_batch_answers_in_input_order(url):
    texts = ["terrible, boring, a waste of time", "an absolute delight", "awful acting", "moving and brilliant"]
    r = requests.post(url("/predict"), json={"inputs": texts})
    assert r.status_code == 200
    labels = [a["label"] for a in r.json()]
    assert labels == ["NEGATIVE", "POSITIVE", "NEGATIVE", "POSITIVE"]
    # Each answer equals the one the text gets alone (batching and padding change nothing).
    for text, answer in zip(texts, r.json()):
        alone = requests.post(url("/predict"), json={"text": text}).json()
        assert alone["label"] == answer["label"]
        assert abs(alone["score"] - answer["score"]) < 1e-4


def test_top_k_returns_all_scores_sorted(url):
    r = requests.post(url("/predict"), json={"text": "fine", "top_k": 5, "model": CLASSIFIER})
    assert r.status_code == 200
    ranked = r.json()
    assert {a["label"] for a in ranked} == LABELS
    assert ranked[0]["score"] >= ranked[1]["score"]
    assert abs(sum(a["score"] for a in ranked) - 1.0) < 1e-5


def error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_malformed_json_is_400(url):
    error(requests.post(url("/predict"), data=b'{"text": "unterminated', headers={"content-type": "application/json"}), 400, "malformed_json")


def test_wrong_content_type_is_415(url):
    error(requests.post(url("/predict"), data=b"text=hi", headers={"content-type": "text/plain"}), 415)
    error(requests.post(url("/predict"), data=b'{"text":"hi"}'), 415)


def test_body_over_the_limit_is_413(url):
    error(requests.post(url("/predict"), json={"text": "x" * (3 * 1024 * 1024)}), 413, "body_too_large")


def test_invalid_fields_are_422(url):
    post = lambda body: requests.post(url("/predict"), json=body)
    error(post({}), 422)
    error(post({"text": ""}), 422, "empty_input")
    error(post({"text": "   "}), 422, "empty_input")
    error(post({"text": 42}), 422)
    error(post({"inputs": []}), 422)
    error(post({"inputs": ["ok", ""]}), 422, "empty_input")
    error(post({"text": "ok", "inputs": ["ok"]}), 422)
    error(post({"text": "ok", "top_k": 0}), 422)
    error(post({"text": "ok", "top_k": -1}), 422)
    error(post({"inputs": ["a"] * 257}), 422)
    error(post({"text": "ok", "model": "no-such-model"}), 422, "model_not_found")
    error(post({"text": "ok", "model": EMBED_MODEL}), 422, "wrong_task")
    error(requests.post(url("/predict"), params={"text": "ok", "top_k": "many"}), 422)


def test_unknown_routes_and_methods_answer_json(url):
    error(requests.get(url("/nope")), 404)
    error(requests.get(url("/predict")), 405)


def test_long_input_is_truncated_by_default(url):
    r = requests.post(url("/predict"), json={"text": "good " * 3000})
    assert r.status_code == 200
