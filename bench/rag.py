"""RAG speed, side by side in one run on this machine: ingestion throughput against the raw
embedding throughput of the same server, and search latency at 10k and 100k chunks.

    python bench/rag.py [--keel target/release/keel] [--out bench/rag-results.json]
                        [--stores embedded,postgres] [--sizes 10000,100000]

1. Raw embedding: POST /v1/embeddings with 32 chunk-sized texts per request from two
   clients for --seconds; chunks/s and tokens per chunk.
2. Ingestion: the 76 documents of Flask 3.1.3's docs in one file batch, timed from the batch
   request until it completes; chunks/s (from the store's own counts) and its ratio to (1).
3. Search: a store filled with real sentences from that corpus (Markdown sections of one
   sentence each, so about 40-token chunks), to 10,000 and then 100,000 chunks; the 60 judged questions asked three times each per leg
   mix over one keep-alive connection, after a warm-up. p50/p99 in milliseconds, as a
   client sees them (query embedding included).

Steps 2 and 3 run once per store: the embedded one, then PostgreSQL with pgvector
(tests/pg_server.py starts a throwaway server on loopback), each with its own Keel.
"""

import argparse
import io
import json
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rag_judged import CORPUS, QUESTIONS, ROOT, start  # noqa: E402

MODES = {"hybrid": (1, 1), "dense": (1, 0), "bm25": (0, 1)}


def wait_ready(base):
    deadline = time.monotonic() + 180
    while requests.get(base + "/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.2)


def corpus_files():
    if not (CORPUS / "index.rst").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "fetch-rag-corpus.sh")], check=True)
    return sorted(CORPUS.rglob("*.rst"))


def sentences(files):
    out = []
    for f in files:
        text = re.sub(r"\s+", " ", f.read_text())
        out.extend(s.strip() for s in re.split(r"(?<=[.!?]) ", text) if 40 <= len(s.strip()) <= 400)
    return out


def raw_embedding(base, texts, seconds):
    """Chunks/s of /v1/embeddings, 32 texts a request, two clients (the workers' shape)."""
    done = []
    stop = time.monotonic() + seconds

    def client(offset):
        s = requests.Session()
        i = offset
        while time.monotonic() < stop:
            batch = [texts[(i + k) % len(texts)] for k in range(32)]
            r = s.post(base + "/v1/embeddings", json={"input": batch}, timeout=120)
            r.raise_for_status()
            done.append((32, r.json()["usage"]["prompt_tokens"]))
            i += 32

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n * 997,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    chunks = sum(c for c, _ in done)
    return {"chunks_per_s": round(chunks / elapsed, 1), "tokens_per_chunk": round(sum(t for _, t in done) / chunks, 1),
            "seconds": round(elapsed, 1)}


def upload(s, base, name, data):
    r = s.post(base + "/v1/files", files={"file": (name, io.BytesIO(data))}, data={"purpose": "assistants"}, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def batch_and_wait(s, base, store, ids, strategy=None):
    body = {"file_ids": ids}
    if strategy:
        body["chunking_strategy"] = strategy
    started = time.monotonic()
    r = s.post(f"{base}/v1/vector_stores/{store}/file_batches", json=body, timeout=120)
    r.raise_for_status()
    batch = r.json()["id"]
    while True:
        b = s.get(f"{base}/v1/vector_stores/{store}/file_batches/{batch}", timeout=30).json()
        if b["status"] != "in_progress":
            return time.monotonic() - started, b
        # As the SDK's poll does (openai-poll-after-ms): a tight loop would take CPU from
        # the very ingestion it times.
        time.sleep(0.2)


def chunks_stored(base):
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("keel_rag_ingest_chunks_total"):
            return int(float(line.split()[-1]))
    return 0


def ingestion(base, files):
    s = requests.Session()
    ids = [upload(s, base, f.name, f.read_bytes()) for f in files]
    store = s.post(base + "/v1/vector_stores", json={"name": "ingest"}, timeout=30).json()["id"]
    before = chunks_stored(base)
    seconds, batch = batch_and_wait(s, base, store, ids)
    assert batch["file_counts"]["completed"] == len(ids), batch
    chunks = chunks_stored(base) - before
    return {"files": len(ids), "chunks": chunks, "seconds": round(seconds, 2),
            "chunks_per_s": round(chunks / seconds, 1)}


def fill(base, store, sents, target, rng, s, offset):
    """Adds files of shuffled real sentences until the store holds `target` chunks (counted
    by the ingestion counter, less `offset`: the chunks of other stores)."""
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}
    started = time.monotonic()
    n = 0
    while True:
        count = chunks_stored(base) - offset
        if count >= target:
            return count, time.monotonic() - started
        # Markdown of 200 short sections: chunks never cross a section, so each is a heading
        # and one or two real sentences (about 40 tokens). Embedding cost grows with the
        # chunk's length and a scan's does not, so short chunks fill 100k in minutes, not
        # the half hour full-length ones take on two cores.
        ids = []
        for _ in range(max(1, min(50, (target - count) // 200 + 1))):
            sections = [f"## Note {n}.{i}\n\n{rng.choice(sents)}" for i in range(200)]
            ids.append(upload(s, base, f"fill-{n}.md", "\n\n".join(sections).encode()))
            n += 1
        batch_and_wait(s, base, store, ids, strategy)


def latency(base, store, questions, s):
    out = {}
    for mode, (dense, bm25) in MODES.items():
        body = lambda q: {"query": q, "max_num_results": 10,  # noqa: E731
                          "ranking_options": {"hybrid_search": {"embedding_weight": dense, "text_weight": bm25}}}
        for q in questions[:5]:  # warm-up: the vectors load into memory once
            s.post(f"{base}/v1/vector_stores/{store}/search", json=body(q), timeout=60).raise_for_status()
        times = []
        for _ in range(3):
            for q in questions:
                t0 = time.perf_counter()
                r = s.post(f"{base}/v1/vector_stores/{store}/search", json=body(q), timeout=60)
                times.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
        times.sort()
        out[mode] = {"p50_ms": round(statistics.median(times), 1),
                     "p99_ms": round(times[int(len(times) * 0.99) - 1], 1), "queries": len(times)}
    return out


def query_vectors(base, questions):
    r = requests.post(base + "/v1/embeddings", json={"input": questions}, timeout=120)
    r.raise_for_status()
    return [d["embedding"] for d in r.json()["data"]]


def embedded_recall(storage, store, vectors):
    """Recall@10 of the embedded store's dense search against an exact scan of the same
    vectors (crates/keel-store-sqlite/examples/dense_recall.rs), on the stopped server's
    folder."""
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "dense_recall", "-p", "keel-store-sqlite"],
                   cwd=ROOT, check=True)
    path = os.path.join(storage, "queries.json")
    pathlib.Path(path).write_text(json.dumps(vectors))
    out = subprocess.run([str(ROOT / "target" / "release" / "examples" / "dense_recall"), storage, store, path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def postgres_recall(pg, store, vectors):
    """Recall@10 of pgvector's HNSW search, as the store runs it, against an exact scan (the
    same ORDER BY made unindexable), with the plan's index use checked."""
    database = pg.url.rsplit("/", 1)[1]
    settings = "SET hnsw.ef_search = 100; SET hnsw.iterative_scan = strict_order;"
    found = total = 0
    plan = None
    for v in vectors:
        q = "[" + ",".join(repr(x) for x in v) + "]"
        d = len(v)
        where = f"store_id = '{store}' AND dims = {d}"
        ann = f"SELECT id FROM rag_chunks WHERE {where} ORDER BY embedding::vector({d}) <=> '{q}'::vector({d}) LIMIT 10"
        exact = f"SELECT id FROM rag_chunks WHERE {where} ORDER BY (embedding <=> '{q}'::vector) + 0 LIMIT 10"
        if plan is None:
            plan = pg.psql(settings + " EXPLAIN " + ann, database)
        got = set(pg.psql(settings + ann, database).split())
        want = pg.psql(exact, database).split()
        total += len(want)
        found += sum(1 for i in want if i in got)
    return {"queries": len(vectors), "recall_at_10": round(found / total, 4), "hnsw_index_used": "hnsw" in plan}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default=str(ROOT / "target" / "release" / "keel"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "rag-results.json"))
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--sizes", default="10000,100000", help="store sizes to search; empty: none")
    ap.add_argument("--workers", type=int, default=None, help="RAG_INGEST_WORKERS for the server")
    ap.add_argument("--stores", default="embedded,postgres", help="the RAG stores to measure, in order")
    args = ap.parse_args()
    files = corpus_files()
    sents = sentences(files)
    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())["questions"]]
    # Chunk-sized texts for the raw baseline: runs of sentences of about a chunk's length.
    rng = random.Random(20261202)
    raw_texts = [" ".join(rng.choice(sents) for _ in range(9)) for _ in range(512)]
    result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
              "ingest_workers": args.workers or 2, "stores": {}}
    workers = {"RAG_INGEST_WORKERS": str(args.workers)} if args.workers else {}
    sizes = [int(x) for x in args.sizes.split(",") if x]
    for name in [x for x in args.stores.split(",") if x]:
        with tempfile.TemporaryDirectory() as storage:
            if name == "postgres":
                sys.path.insert(0, str(ROOT / "tests"))
                import pg_server

                pg = pg_server.PgServer(os.path.join(storage, "pg"))
                pg.start()
                env = {**workers, "DATABASE_URL": pg.url}
            else:
                pg, env = None, workers
            proc, base = start(args.keel, storage, env)
            vectors = None
            try:
                wait_ready(base)
                if "raw_embedding" not in result:
                    result["raw_embedding"] = raw_embedding(base, raw_texts, args.seconds)
                    print("raw embedding", result["raw_embedding"], flush=True)
                out = result["stores"][name] = {}
                out["ingestion"] = ingestion(base, files)
                out["ingestion"]["fraction_of_raw"] = round(
                    out["ingestion"]["chunks_per_s"] / result["raw_embedding"]["chunks_per_s"], 3)
                print(name, "ingestion", out["ingestion"], flush=True)
                s = requests.Session()
                store = s.post(base + "/v1/vector_stores", json={"name": "latency"}, timeout=30).json()["id"]
                out["search"] = {}
                offset = chunks_stored(base)
                for size in sizes:
                    count, seconds = fill(base, store, sents, size, rng, s, offset)
                    entry = {"chunks_in_store": count, "fill_seconds": round(seconds, 1),
                             **latency(base, store, questions, s)}
                    out["search"][str(size)] = entry
                    print(name, "search", size, entry, flush=True)
                    # Written after every point, so a run cut short keeps what it measured.
                    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
                vectors = query_vectors(base, questions) if sizes else None
                if pg and vectors:
                    out["dense_recall"] = postgres_recall(pg, store, vectors)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
                if pg:
                    pg.stop()
            if not pg and vectors:
                out["dense_recall"] = embedded_recall(storage, store, vectors)
            if vectors:
                print(name, "dense recall", out["dense_recall"], flush=True)
            pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
