"""Files, vector stores and hybrid search through the official OpenAI SDK, against the real
binary and the real embedding model, on each RAG store: the embedded one on disk, and a real
PostgreSQL with pgvector (tests/pg_server.py). Tests on the module's `keel` run once per
store; so do those taking `rag_backend`."""

import io
import signal
import sqlite3

import openai
import pytest
import requests

import pdfs
from conftest import Keel, metric_value, new_database, wait_until

ROUTING = """# Routing

Flask maps URLs to view functions with the route decorator.

## Variable rules

Add variable sections to a URL by marking them with angle brackets, like <username>.
A converter such as int: restricts what the section accepts.

## Redirects

A trailing slash on a rule makes Flask redirect requests without it.
"""

SESSIONS = """Sessions

The session object stores information specific to a user from one request to the next.
It is implemented on top of cookies and signs them cryptographically, so the user can look
at the contents of the cookie but cannot modify it unless they know the secret key.
"""

TEMPLATES_DE = """<!doctype html><html><head><title>Vorlagen</title><style>.x{}</style></head>
<body><h1>Vorlagen</h1><p>Flask rendert Vorlagen mit der Jinja-Engine und render_template.</p>
<script>track()</script></body></html>"""


def client(keel, key="unused"):
    return openai.OpenAI(base_url=keel.url("/v1"), api_key=key, max_retries=0)


def upload(c, name, text):
    data = text if isinstance(text, bytes) else text.encode()
    return c.files.create(file=(name, io.BytesIO(data)), purpose="assistants")


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def keel(request):
    """This module's server, once on each store (its own folder, or its own database)."""
    env = {}
    if request.param == "postgres":
        env["DATABASE_URL"] = new_database(request.getfixturevalue("postgres"))
    k = Keel(env).wait_ready()
    yield k
    assert k.stop() == 0


@pytest.fixture(scope="module")
def corpus(keel):
    c = client(keel)
    files = {
        "routing": upload(c, "routing.md", ROUTING),
        "sessions": upload(c, "sessions.txt", SESSIONS),
        "templates": upload(c, "vorlagen.html", TEMPLATES_DE),
    }
    store = c.vector_stores.create(name="flask-notes")
    langs = {"routing": "en", "sessions": "en", "templates": "de"}
    years = {"routing": 2024, "sessions": 2019, "templates": 2024}
    for key, f in files.items():
        done = c.vector_stores.files.create_and_poll(
            vector_store_id=store.id,
            file_id=f.id,
            attributes={"lang": langs[key], "year": years[key]},
        )
        assert done.status == "completed", done.last_error
    return c, store, files


def test_files_round_trip_and_list(keel):
    c = client(keel)
    f = upload(c, "note.txt", "hello there")
    assert f.object == "file" and f.bytes == 11 and f.filename == "note.txt"
    assert c.files.retrieve(f.id).id == f.id
    assert c.files.content(f.id).content == b"hello there"
    assert f.id in [x.id for x in c.files.list(purpose="assistants")]
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)


def test_search_finds_the_right_file_with_text_from_it(corpus):
    c, store, files = corpus
    s = c.vector_stores.retrieve(store.id)
    assert s.file_counts.completed == 3 and s.status == "completed"
    hits = list(c.vector_stores.search(store.id, query="how do I keep data about a user between requests?"))
    assert hits[0].file_id == files["sessions"].id
    assert hits[0].filename == "sessions.txt"
    assert 0 < hits[0].score <= 1
    assert hits[0].content[0].text in SESSIONS, "a chunk is a slice of the uploaded text"
    # The Markdown file's chunks keep its source; the HTML file's drop scripts and styles.
    md = list(c.vector_stores.search(store.id, query="angle brackets variable URL sections"))
    assert md[0].file_id == files["routing"].id
    de = list(c.vector_stores.search(store.id, query="Jinja render_template Vorlagen"))
    assert de[0].file_id == files["templates"].id
    assert "track()" not in de[0].content[0].text and ".x{}" not in de[0].content[0].text


def test_both_legs_are_reported_and_weights_select_them(corpus, keel):
    c, store, files = corpus
    body = {"query": "signed cookies secret key", "max_num_results": 5}
    r = requests.post(keel.url(f"/v1/vector_stores/{store.id}/search"), json=body, timeout=30)
    top = r.json()["data"][0]
    assert top["file_id"] == files["sessions"].id
    assert top["ranking"]["dense_rank"] == 1 and top["ranking"]["bm25_rank"] == 1
    bm25_only = dict(body, ranking_options={"hybrid_search": {"embedding_weight": 0, "text_weight": 1}})
    data = requests.post(keel.url(f"/v1/vector_stores/{store.id}/search"), json=bm25_only, timeout=30).json()["data"]
    assert data and all(d["ranking"]["dense_rank"] is None for d in data)


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"type": "eq", "key": "lang", "value": "de"}, {"templates"}),
        ({"type": "ne", "key": "lang", "value": "de"}, {"routing", "sessions"}),
        ({"type": "lt", "key": "year", "value": 2020}, {"sessions"}),
        ({"type": "in", "key": "lang", "value": ["de", "fr"]}, {"templates"}),
        (
            {"type": "and", "filters": [{"type": "eq", "key": "lang", "value": "en"}, {"type": "gte", "key": "year", "value": 2024}]},
            {"routing"},
        ),
    ],
)
def test_filters_apply_inside_the_search(corpus, filters, expected):
    c, store, files = corpus
    # The query matches the sessions file best; the filter still yields the others' chunks.
    hits = list(c.vector_stores.search(store.id, query="user session cookies", filters=filters, max_num_results=50))
    names = {k for k, f in files.items() if f.id in {h.file_id for h in hits}}
    assert names == expected


@pytest.mark.parametrize(
    "body, field",
    [
        ({"query": "x", "max_num_results": 51}, "max_num_results"),
        ({"query": "x", "max_num_results": 0}, "max_num_results"),
        ({"query": "x", "filters": {"type": "like", "key": "a", "value": "b"}}, "filters.type"),
        ({"query": "x", "filters": {"type": "gt", "key": "year", "value": "2020"}}, "filters.value"),
        ({"query": ""}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x", "ranking_options": {"score_threshold": 2}}, "ranking_options.score_threshold"),
    ],
)
def test_bad_searches_are_422_naming_the_field(corpus, keel, body, field):
    _, store, _ = corpus
    r = requests.post(keel.url(f"/v1/vector_stores/{store.id}/search"), json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(field), r.text


def test_reattaching_replaces_chunks_and_detaching_removes_them(keel):
    c = client(keel)
    text = " ".join(f"Paragraph {i} talks about blueprints and application factories." for i in range(120))
    f = upload(c, "long.txt", text)
    store = c.vector_stores.create(name="reattach")
    small = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}
    done = c.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id, chunking_strategy=small)
    assert done.chunking_strategy.static.max_chunk_size_tokens == 100
    before = list(c.vector_stores.search(store.id, query="Paragraph 7 blueprints", max_num_results=50))
    again = c.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id)
    assert again.chunking_strategy.static.max_chunk_size_tokens == 254
    after = list(c.vector_stores.search(store.id, query="Paragraph 7 blueprints", max_num_results=50))
    # Fewer, longer chunks, and none of the old ones left behind.
    assert 0 < len(after) < len(before)
    texts = [h.content[0].text for h in after]
    assert len(texts) == len(set(texts)), "duplicates after re-attaching"
    assert all(len(t) > len(before[-1].content[0].text) or t == texts[-1] for t in texts)
    c.vector_stores.files.delete(file_id=f.id, vector_store_id=store.id)
    assert list(c.vector_stores.search(store.id, query="blueprints")) == []
    assert c.files.retrieve(f.id).id == f.id, "detaching keeps the file"


def test_deleting_a_file_removes_it_from_search(keel):
    c = client(keel)
    f = upload(c, "temp.md", "# Signals\n\nFlask signals decouple applications with blinker.")
    store = c.vector_stores.create(name="delete", file_ids=[f.id])
    wait_until(lambda: c.vector_stores.retrieve(store.id).file_counts.completed == 1, what="ingestion")
    assert list(c.vector_stores.search(store.id, query="blinker signals"))
    c.files.delete(f.id)
    assert list(c.vector_stores.search(store.id, query="blinker signals")) == []
    assert c.vector_stores.retrieve(store.id).file_counts.total == 0
    assert c.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.vector_stores.retrieve(store.id)


@pytest.mark.parametrize(
    "name, data, code",
    [
        ("empty.txt", b"", "invalid_file"),
        ("junk.txt", bytes((i * 97 + 13) % 256 | 0x80 for i in range(4096)), "unsupported_file"),
        ("archive.txt", b"PK\x03\x04" + b"\0" * 100, "unsupported_file"),
        ("paper.pdf", b"%PDF-1.7\n" + b"x" * 100, "invalid_file"),
        ("tool.exe", b"MZ hello", "unsupported_file"),
    ],
)
def test_unusable_files_fail_with_a_reason_and_the_server_keeps_serving(keel, name, data, code):
    c = client(keel)
    f = upload(c, name, data)
    store = c.vector_stores.create(name="bad")
    done = c.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=f.id)
    assert done.status == "failed"
    assert done.last_error.code == code, done.last_error
    assert done.last_error.message
    assert requests.get(keel.url("/health"), timeout=5).status_code == 200


def test_bad_attachments_are_refused(keel, corpus):
    c, store, files = corpus
    with pytest.raises(openai.UnprocessableEntityError, match="more than the embedding model reads"):
        c.vector_stores.files.create(
            vector_store_id=store.id,
            file_id=files["routing"].id,
            chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
        )
    with pytest.raises(openai.NotFoundError):
        c.vector_stores.files.create(vector_store_id=store.id, file_id="file-doesnotexist")
    with pytest.raises(openai.UnprocessableEntityError, match="attributes"):
        c.vector_stores.files.create(vector_store_id=store.id, file_id=files["routing"].id, attributes={"a": [1]})
    with pytest.raises(openai.NotFoundError):
        c.vector_stores.create(name="x", file_ids=["file-missing"])


def test_a_file_batch_attaches_many_files_with_their_own_attributes(keel):
    c = client(keel)
    files = [upload(c, f"note-{i}.txt", f"Batch note {i}: the marker word is zq{i}x.") for i in range(200)]
    store = c.vector_stores.create(name="batched")
    body = {"files": [{"file_id": f.id, "attributes": {"n": i}} for i, f in enumerate(files)],
            "attributes": {"shared": "yes"}}
    r = requests.post(keel.url(f"/v1/vector_stores/{store.id}/file_batches"), json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "vector_store.files_batch"
    assert r.json()["file_counts"]["total"] == 200
    batch = wait_until(lambda: (b := c.vector_stores.file_batches.retrieve(r.json()["id"], vector_store_id=store.id))
                       .status != "in_progress" and b, timeout=120, what="the batch")
    assert batch.status == "completed" and batch.file_counts.completed == 200, batch
    listed = c.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id, filter="completed", limit=100)
    assert len(listed.data) == 100 and listed.has_more
    hits = c.vector_stores.search(store.id, query="zq123x", filters={"type": "eq", "key": "n", "value": 123})
    assert [h.filename for h in hits.data] == ["note-123.txt"]
    assert hits.data[0].attributes == {"n": 123}


def test_cancelling_a_batch_leaves_no_cancelled_file_searchable(keel):
    c = client(keel)
    files = [upload(c, f"c-{i}.txt", f"Cancel note {i} with marker cx{i}q.") for i in range(60)]
    store = c.vector_stores.create(name="cancelled")
    batch = c.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[f.id for f in files])
    cancelled = c.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    assert cancelled.status == "cancelled"
    counts = cancelled.file_counts
    assert counts.in_progress == 0 and counts.completed + counts.cancelled == 60 and counts.failed == 0
    # Sixty files take the two workers far longer than the cancel takes to arrive.
    assert counts.cancelled > 0, counts
    gone = [f.id for f in c.vector_stores.file_batches.list_files(
        batch.id, vector_store_id=store.id, filter="cancelled", limit=100).data]
    assert len(gone) == counts.cancelled
    by_id = {f.id: i for i, f in enumerate(files)}
    for file_id in gone[:10]:
        assert c.vector_stores.search(store.id, query=f"cx{by_id[file_id]}q").data == []
    # Counts stay put: a worker that was busy with a cancelled file changes nothing.
    assert c.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).file_counts == counts


def test_bad_batches_are_refused_and_attach_nothing(keel, corpus):
    c, store, files = corpus
    before = c.vector_stores.retrieve(store.id).file_counts.total
    url = keel.url(f"/v1/vector_stores/{store.id}/file_batches")
    too_many = {"file_ids": [f"file-{i:032x}" for i in range(10_001)]}
    for body, field in [
        (too_many, "file_ids: at most 10000"),
        ({"file_ids": [files["routing"].id], "files": []}, "file_ids, files"),
        ({"file_ids": []}, "file_ids: at least one"),
        ({"files": [{"file_id": files["routing"].id, "attributes": {"a": {"b": 1}}}]}, "files[0].attributes"),
    ]:
        r = requests.post(url, json=body, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"].startswith(field), r.text
    r = requests.post(url, json={"file_ids": [files["routing"].id, "file-missing"]}, timeout=30)
    assert r.status_code == 404, r.text
    assert c.vector_stores.retrieve(store.id).file_counts.total == before
    with pytest.raises(openai.NotFoundError):
        c.vector_stores.file_batches.retrieve("vsfb_missing", vector_store_id=store.id)


def test_uploads_past_max_file_bytes_are_413(start_keel):
    k = start_keel({"MAX_FILE_BYTES": "1000"}).wait_ready()
    c = client(k)
    with pytest.raises(openai.APIStatusError) as e:
        upload(c, "big.txt", "x" * 5000)
    assert e.value.status_code == 413
    assert e.value.body["code"] == "file_too_large"
    assert upload(c, "small.txt", "x" * 900).bytes == 900


def test_stores_are_scoped_to_the_api_key(start_keel, rag_backend):
    k = start_keel({"KEEL_API_KEYS": "sk-alice,sk-bob", **rag_backend}).wait_ready()
    alice, bob = client(k, "sk-alice"), client(k, "sk-bob")
    f = upload(alice, "a.txt", "alice's private notes about deployment")
    store = alice.vector_stores.create(name="alice", file_ids=[f.id])
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.retrieve(store.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.search(store.id, query="deployment")
    assert store.id not in [s.id for s in bob.vector_stores.list()]
    assert alice.vector_stores.retrieve(store.id).id == store.id


def test_open_network_without_keys_is_refused(start_keel):
    k = start_keel({"HOST": "0.0.0.0"}).wait_ready()
    r = requests.get(k.url("/v1/vector_stores"), timeout=5)
    assert r.status_code == 403 and r.json()["error"]["code"] == "api_key_required"
    assert "KEEL_ALLOW_OPEN_RAG" in r.json()["error"]["message"]
    assert requests.post(k.url("/v1/embeddings"), json={"input": "still served"}, timeout=30).status_code == 200


def test_files_and_chunks_survive_a_restart(start_keel, rag_backend):
    env = rag_backend
    first = start_keel(env).wait_ready()
    c = client(first)
    f = upload(c, "kept.md", "# Deploying\n\nRun Flask behind gunicorn in production, never the dev server.")
    store = c.vector_stores.create(name="kept", file_ids=[f.id])
    wait_until(lambda: c.vector_stores.retrieve(store.id).file_counts.completed == 1, what="ingestion")
    assert first.stop() == 0
    second = start_keel(env).wait_ready()
    c = client(second)
    hits = list(c.vector_stores.search(store.id, query="gunicorn production server"))
    assert hits and hits[0].file_id == f.id
    assert c.files.content(f.id).content.startswith(b"# Deploying")


def test_kill_9_during_ingestion_loses_nothing_and_duplicates_nothing(start_keel, tmp_path):
    env = {"PERSISTENT_STORAGE_DIR": str(tmp_path), "RAG_INGEST_WORKERS": "1"}
    first = start_keel(env).wait_ready()
    c = client(first)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    ids = []
    for i in range(40):
        marker = f"{words[i % 8]}{i}zulu"
        body = f"File {i} mentions {marker} once.\n\n" + "Filler about Flask configuration. " * 300
        ids.append((upload(c, f"f{i}.txt", body).id, marker))
    store = c.vector_stores.create(name="crash", file_ids=[i for i, _ in ids])
    wait_until(lambda: c.vector_stores.retrieve(store.id).file_counts.completed >= 1, what="some ingestion")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    with sqlite3.connect(tmp_path / "rag.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        pending = db.execute("SELECT count(*) FROM store_files WHERE status = 'in_progress'").fetchone()[0]
    assert pending > 0, "the kill came after ingestion finished; nothing was tested"

    second = start_keel(env).wait_ready()
    c = client(second)
    wait_until(lambda: c.vector_stores.retrieve(store.id).file_counts.completed == 40, timeout=120, what="recovery")
    bm25 = {"hybrid_search": {"embedding_weight": 0, "text_weight": 1}}
    for file_id, marker in ids:
        hits = list(c.vector_stores.search(store.id, query=marker, max_num_results=50, ranking_options=bm25))
        assert [h.file_id for h in hits] == [file_id], marker


def test_two_replicas_on_one_postgres_share_files_and_finish_a_killed_replicas_work(start_keel, postgres):
    url = new_database(postgres)
    database = url.rsplit("/", 1)[1]
    env = {"DATABASE_URL": url, "RAG_INGEST_WORKERS": "1", "RAG_INGEST_LEASE_MS": "5000"}
    a, b = start_keel(env), start_keel(env)
    a.wait_ready(), b.wait_ready()
    ca, cb = client(a), client(b)

    # A file uploaded through one replica is read and searched through the other.
    note = upload(cb, "shared.md", "# Shared\n\nThe walrus configuration lives in one database.")
    store = ca.vector_stores.create(name="replicas", file_ids=[note.id])
    wait_until(lambda: cb.vector_stores.retrieve(store.id).file_counts.completed == 1, what="ingestion")
    assert ca.files.content(note.id).content.startswith(b"# Shared")
    assert [h.file_id for h in ca.vector_stores.search(store.id, query="walrus configuration")] == [note.id]

    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    ids = []
    for i in range(24):
        marker = f"{words[i % 8]}{i}yankee"
        body = f"File {i} mentions {marker} once.\n\n" + "Filler about Flask configuration. " * 100
        ids.append((upload(ca if i % 2 else cb, f"r{i}.txt", body).id, marker))
    batch = cb.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[i for i, _ in ids])

    def frozen_holding_a_lease():
        # Frozen, A cannot finish the file between this look and the kill.
        a.proc.send_signal(signal.SIGSTOP)
        held = postgres.psql("SELECT file_id FROM rag_store_files WHERE status = 'in_progress' "
                             f"AND lease_owner LIKE '{a.proc.pid}-%'", database)
        if not held:
            a.proc.send_signal(signal.SIGCONT)
        return held

    orphaned = wait_until(frozen_holding_a_lease, timeout=60, interval=0.01, what="A holding a lease")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()

    # The survivor takes the dead replica's file once its lease runs out, and the rest.
    done = wait_until(lambda: (lambda b_: b_ if b_.status == "completed" else None)(
        cb.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)), timeout=120, what="recovery")
    assert done.file_counts.completed == 24 and done.file_counts.failed == 0
    assert orphaned in [i for i, _ in ids]
    bm25 = {"hybrid_search": {"embedding_weight": 0, "text_weight": 1}}
    for file_id, marker in ids:
        hits = list(cb.vector_stores.search(store.id, query=marker, max_num_results=50, ranking_options=bm25))
        assert [h.file_id for h in hits] == [file_id], marker
    chunks = int(postgres.psql("SELECT count(*) FROM rag_chunks", database))
    stored = int(postgres.psql("SELECT sum(chunk_count) FROM rag_stores", database))
    assert chunks == stored, "the stores' BM25 statistics match their chunks"


def test_metrics_show_files_by_status_chunks_and_the_queue(start_keel, rag_backend):
    k = start_keel(rag_backend).wait_ready()
    c = client(k)
    good = [upload(c, f"m-{i}.md", f"# Metric note {i}\n\nIngested text number {i}.") for i in range(3)]
    bad = upload(c, "m-bad.txt", b"")
    store = c.vector_stores.create(name="metrics")
    c.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=[f.id for f in good + [bad]])
    c.vector_stores.search(store.id, query="metric note")

    def scraped():
        text = requests.get(k.url("/metrics"), timeout=5).text
        values = {
            "completed": metric_value(text, "keel_rag_files", status="completed"),
            "failed": metric_value(text, "keel_rag_files", status="failed"),
            "queue": metric_value(text, "keel_rag_ingest_queue_depth"),
            "chunks": metric_value(text, "keel_rag_chunks"),
        }
        return values if values["completed"] == 3 else None

    values = wait_until(scraped, timeout=15, what="the RAG gauges")
    assert values == {"completed": 3, "failed": 1, "queue": 0, "chunks": 3}
    text = requests.get(k.url("/metrics"), timeout=5).text
    assert metric_value(text, "keel_rag_ingest_files_total", status="failed") == 1
    assert metric_value(text, "keel_rag_ingest_chunks_total") == 3
    assert 'keel_rag_search_seconds_count{leg="dense"} 1' in text
    # No store, file or key id is ever a label.
    assert store.id not in text and good[0].id not in text


def test_an_upload_that_is_not_a_form_gets_a_json_error(keel):
    r = requests.post(keel.url("/v1/files"), data=b"just bytes", timeout=10)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    r = requests.post(keel.url("/v1/files"), data=b"--x--", timeout=10,
                      headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed_multipart"


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pdfs_are_read_in_a_separate_process_and_bad_ones_fail_with_a_reason(keel):
    c = client(keel)
    lines = ["Blueprints register view functions on an application later.",
             "The zebrafish marker sentence lives on this page."]
    store = c.vector_stores.create(name="pdfs")
    good = c.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=upload(c, "guide.pdf", pdfs.text_pdf(lines)).id)
    assert good.status == "completed", good.last_error
    hits = c.vector_stores.search(store.id, query="zebrafish marker").data
    assert hits and hits[0].filename == "guide.pdf"
    assert "The zebrafish marker sentence lives on this page." in hits[0].content[0].text

    scanned = c.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=upload(c, "scan.pdf", pdfs.scanned_pdf()).id)
    assert scanned.status == "failed"
    assert scanned.last_error.code == "unsupported_file" and "no text layer" in scanned.last_error.message

    # 1.5 MB that inflates to 1.5 GiB: the extractor hits its own memory cap, the server
    # does not grow, and the file fails with the reason.
    before = rss_kib(keel.proc.pid)
    bomb = c.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=upload(c, "bomb.pdf", pdfs.bomb_pdf()).id)
    assert bomb.status == "failed"
    assert bomb.last_error.code == "invalid_file", bomb.last_error
    assert "limits" in bomb.last_error.message, bomb.last_error
    assert rss_kib(keel.proc.pid) - before < 100 * 1024
    assert requests.get(keel.url("/health"), timeout=5).status_code == 200
    assert c.vector_stores.search(store.id, query="zebrafish").data
