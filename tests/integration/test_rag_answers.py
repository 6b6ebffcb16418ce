"""Answers over a vector store: `client.responses.create(..., tools=[file_search])` through
the official OpenAI SDK against the real binary, the real embedding model and the real local
GGUF model; its streaming form; and the degraded answer when the generator is down."""

import io

import openai
import pytest
import requests

from conftest import EMBED_MODEL, MODELS, Keel, wait_until

GGUF = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLM = "smollm2-135m-instruct"

SESSIONS = """Sessions

The session object stores information specific to a user from one request to the next.
It is implemented on top of cookies and signs them cryptographically, so the user can look
at the contents of the cookie but cannot modify it unless they know the secret key.
"""

ROUTING = """# Routing

Flask maps URLs to view functions with the route decorator.

## Redirects

A trailing slash on a rule makes Flask redirect requests without it.
"""

QUESTION = "How are sessions kept between requests?"


def make_corpus(keel):
    c = openai.OpenAI(base_url=keel.url("/v1"), api_key="unused", max_retries=0, timeout=120)
    files = {}
    for name, text in [("sessions.txt", SESSIONS), ("routing.md", ROUTING)]:
        files[name] = c.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")
    store = c.vector_stores.create(name="answers")
    batch = c.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[f.id for f in files.values()])
    assert batch.status == "completed", batch
    assert batch.file_counts.completed == 2
    return c, store, files


@pytest.fixture(scope="module")
def answering():
    k = Keel({
        "MODELS": f"{EMBED_MODEL}={MODELS / EMBED_MODEL},{LLM}={GGUF}",
        "LLM_SLOTS": "2", "LLM_CONTEXT": "2048",
    }).wait_ready()
    c, store, files = make_corpus(k)
    yield k, c, store, files
    assert k.stop() == 0


def tool(store, **extra):
    return [{"type": "file_search", "vector_store_ids": [store.id], **extra}]


def check_citations(c, response, files):
    """Every annotation cites a retrieved file at an index inside the text, and every
    retrieved passage occurs in its file."""
    call, message = response.output
    assert call.type == "file_search_call" and call.status == "completed"
    assert call.queries == [QUESTION]
    assert call.results, "include asked for the results"
    by_id = {f.id: f for f in files.values()}
    for r in call.results:
        assert r.text in c.files.content(r.file_id).text, r
    assert message.type == "message" and message.status == "completed"
    part = message.content[0]
    assert part.type == "output_text" and part.text == response.output_text
    assert part.annotations, "an answer over passages cites them"
    retrieved = {r.file_id for r in call.results}
    for a in part.annotations:
        assert a.type == "file_citation"
        assert a.file_id in retrieved and a.filename == by_id[a.file_id].filename
        assert 0 <= a.index <= len(part.text)
    return call, part


def test_a_local_model_answers_with_citations_of_retrieved_files(answering):
    keel, c, store, files = answering
    raw = c.responses.with_raw_response.create(
        model=LLM, input=QUESTION, tools=tool(store), include=["file_search_call.results"],
        max_output_tokens=48, temperature=0)
    response = raw.parse()
    assert raw.headers.get("x-keel-degraded") is None
    assert int(raw.headers["x-keel-retrieve-ms"]) >= 0
    assert response.status == "completed" and response.model == LLM
    call, part = check_citations(c, response, files)
    # Retrieval put the sessions document first.
    assert call.results[0].filename == "sessions.txt"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    # The passages really were in the prompt: the model's answer comes from a prompt holding
    # the top passage (its input is far longer than the question alone).
    assert response.usage.input_tokens > len(QUESTION.split()) + 60


def test_the_stream_follows_the_responses_event_order(answering):
    keel, c, store, files = answering
    kinds, deltas = [], []
    with c.responses.stream(model=LLM, input=QUESTION, tools=tool(store, max_num_results=3),
                            include=["file_search_call.results"], max_output_tokens=32,
                            temperature=0) as stream:
        sequence = []
        for event in stream:
            kinds.append(event.type)
            sequence.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert sequence == list(range(len(sequence)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:7] == [
        "response.output_item.added", "response.file_search_call.in_progress",
        "response.file_search_call.searching", "response.file_search_call.completed",
        "response.output_item.done",
    ]
    assert kinds[7:9] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert final.output_text == "".join(deltas)
    assert len(final.output[0].results) <= 3
    check_citations(c, final, files)


def test_without_the_tool_it_is_a_plain_answer(answering):
    keel, c, store, files = answering
    r = c.responses.create(model=LLM, input=[{"role": "user", "content": "Say hello."}],
                           max_output_tokens=16, temperature=0)
    assert [o.type for o in r.output] == ["message"]
    assert r.output_text
    # tool_choice none skips the search even when the tool is given.
    r = c.responses.create(model=LLM, input=QUESTION, tools=tool(store), tool_choice="none",
                           max_output_tokens=16, temperature=0)
    assert [o.type for o in r.output] == ["message"]


@pytest.mark.parametrize("extra, field", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].vector_store_ids"),
    ({"tools": "TOOL", "tool_choice": "auto"}, "tools"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["VS"], "max_num_results": 0}]},
     "tools[0].max_num_results"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["VS"],
                 "filters": {"type": "like", "key": "a", "value": 1}}]}, "tools[0].filters"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": ""}, "input"),
    ({"max_output_tokens": -1}, "max_output_tokens"),
])
def test_bad_requests_are_422_naming_the_field(answering, extra, field):
    keel, c, store, files = answering
    body = {"model": LLM, "input": QUESTION, **extra}
    if isinstance(body.get("tools"), list):
        for t in body["tools"]:
            if t.get("vector_store_ids") == ["VS"]:
                t["vector_store_ids"] = [store.id]
    if body.get("tools") == "TOOL":
        body["tools"] = "not a list"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.post("/responses", body=body, cast_to=object)
    assert e.value.body["code"] == "invalid_request"
    assert e.value.body["message"].startswith(field), e.value.body


def test_unknown_models_and_other_keys_stores_are_404(answering):
    keel, c, store, files = answering
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="no-such-model", input=QUESTION)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=LLM, input=QUESTION,
                           tools=[{"type": "file_search", "vector_store_ids": ["vs_" + "0" * 32]}])


def test_with_the_generator_down_the_answer_is_the_passages_marked_degraded(start_keel, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    keel = start_keel({"MODELS": f"{EMBED_MODEL}={MODELS / EMBED_MODEL},{LLM}={broken}"})
    keel.wait_listening()
    wait_until(lambda: requests.get(keel.url("/ready"), timeout=5).json()["models"]
               .get(EMBED_MODEL, {}).get("state") == "ready", timeout=120, what="the embedder")
    assert keel.wait_status("failed")["models"][LLM]["state"] == "failed"
    c, store, files = make_corpus(keel)
    raw = c.responses.with_raw_response.create(
        model=LLM, input=QUESTION, tools=tool(store), include=["file_search_call.results"])
    assert raw.http_response.status_code == 200
    assert raw.headers["x-keel-degraded"] == "true"
    response = raw.parse()
    call, part = check_citations(c, response, files)
    # The answer holds each passage's text, each followed by its citation.
    assert len(part.annotations) == len(call.results)
    for a, r in zip(part.annotations, call.results):
        assert part.text[:a.index].endswith(r.text.strip())
        assert a.file_id == r.file_id

    # Streamed, the same degraded answer arrives as events the SDK accumulates.
    with c.responses.stream(model=LLM, input=QUESTION, tools=tool(store)) as stream:
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == response.output_text
    # The server kept serving.
    assert c.vector_stores.search(store.id, query="cookies").data
