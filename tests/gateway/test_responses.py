"""`/v1/responses` with `file_search` answered by a gateway route: the fake provider writes
exactly the `[n]` markers a test needs, so citation indexes, the degraded answer when every
target fails, and a stream that breaks midway are checked to the character."""

import io
import time

import httpx
import openai
import pytest

from conftest import ROOT, start_gateway, stop, unique

EMBED = ROOT / "models" / "all-MiniLM-L6-v2"

SESSIONS = "The session object keeps values for a user across requests, in a signed cookie."
ROUTING = "The route decorator binds a URL rule to a view function."


@pytest.fixture(scope="module")
def rag_gateway(fake_server, tmp_path_factory):
    proc, gw = start_gateway(fake_server, tmp_path_factory.mktemp("rag-gateway"),
                             extra_env={"MODELS": f"all-MiniLM-L6-v2={EMBED}"})
    deadline = time.monotonic() + 120
    while httpx.get(gw.url + "/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the embedding model did not load"
        time.sleep(0.1)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    ids = {}
    for name, text in [("sessions.txt", SESSIONS), ("routing.txt", ROUTING)]:
        ids[name] = c.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants").id
    store = c.vector_stores.create(name="gw")
    batch = c.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=list(ids.values()))
    assert batch.file_counts.completed == 2
    yield gw, c, store, ids
    stop(proc)


def ask(c, store, model, **kw):
    return c.responses.with_raw_response.create(
        model=model, input="Where are session values kept?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
        include=["file_search_call.results"], **kw)


def test_markers_become_annotations_at_their_place_and_the_prompt_numbers_passages(rag_gateway, fake):
    gw, c, store, ids = rag_gateway
    model = unique("fake")
    fake.script(model.split("/", 1)[1], {"text": "In a signed cookie [1]. Also [1][1] and [7] stay."})
    raw = ask(c, store, model)
    r = raw.parse()
    assert raw.headers["x-keel-provider"] == "fake"
    text = r.output_text
    assert text == "In a signed cookie . Also  and [7] stay."
    part = r.output[1].content[0]
    results = r.output[0].results
    assert results[0].filename == "sessions.txt"
    # [1] is the first passage; the repeated [1][1] is one citation; [7] names no passage.
    assert [(a.file_id, a.index) for a in part.annotations] == [
        (results[0].file_id, len("In a signed cookie ")),
        (results[0].file_id, len("In a signed cookie . Also ")),
    ]
    # The upstream saw the numbered passages in a system message, then the question.
    sent = fake.requests(model.split("/", 1)[1])[-1]["body"]
    system = sent["messages"][0]
    assert system["role"] == "system" and f"[1] (sessions.txt) {SESSIONS}" in system["content"]
    assert sent["messages"][1] == {"role": "user", "content": "Where are session values kept?"}
    assert r.usage.input_tokens == 5


def test_every_target_failing_gives_the_passages_marked_degraded(rag_gateway, fake):
    gw, c, store, ids = rag_gateway
    fake.script("dg-first", {"status": 500}, {"status": 500})
    fake.script("dg-second", {"status": 500}, {"status": 500})
    raw = ask(c, store, "degrade")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-keel-degraded"] == "true"
    r = raw.parse()
    assert SESSIONS in r.output_text and ROUTING in r.output_text
    assert r.model_extra["keel"]["degraded"] is True
    assert len(r.output[1].content[0].annotations) == 2


def test_an_upstream_client_error_is_passed_on(rag_gateway, fake):
    gw, c, store, ids = rag_gateway
    model = unique("fake")
    fake.script(model.split("/", 1)[1], {"status": 400})
    with pytest.raises(openai.BadRequestError):
        ask(c, store, model)


def test_a_stream_that_breaks_after_text_ends_with_response_failed(rag_gateway, fake):
    gw, c, store, ids = rag_gateway
    model = unique("fake")
    fake.script(model.split("/", 1)[1], {"text": "one two three four five", "error_after": 3})
    kinds = []
    with c.responses.stream(model=model, input="Where are session values kept?",
                            tools=[{"type": "file_search", "vector_store_ids": [store.id]}]) as s:
        for event in s:
            kinds.append(event.type)
            if event.type == "response.failed":
                assert event.response.status == "failed"
                assert event.response.error.code == "server_error"
    assert kinds[-1] == "response.failed"
    assert "response.output_text.delta" in kinds
    assert "response.completed" not in kinds


def test_a_stream_that_fails_before_text_degrades_to_the_passages(rag_gateway, fake):
    gw, c, store, ids = rag_gateway
    model = unique("fake")
    # Every attempt breaks at its first event: the gateway retries, then gives up.
    fake.script(model.split("/", 1)[1], *[{"text": "never", "error_after": 0}] * 3)
    with c.responses.stream(model=model, input="Where are session values kept?",
                            tools=[{"type": "file_search", "vector_store_ids": [store.id]}]) as s:
        final = s.get_final_response()
    assert final.status == "completed" and final.model_extra["keel"]["degraded"] is True
    assert SESSIONS in final.output_text
