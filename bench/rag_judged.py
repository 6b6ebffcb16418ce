"""Retrieval quality on the judged set: recall@1, recall@5 and MRR@10 for the dense leg alone,
BM25 alone and the hybrid fusion, through the real server and the OpenAI SDK.

    python bench/rag_judged.py [--keel target/debug/keel] [--out bench/rag-judged.json]

Runs twice, on the embedded store and on PostgreSQL with pgvector (tests/pg_server.py), and
reports the largest difference between them. Each run starts Keel with the default embedding
model on a fresh store, uploads the 76 documents
of Flask 3.1.3's docs (scripts/fetch-rag-corpus.sh), waits for ingestion, then asks each
question of tests/fixtures/rag/flask-questions.json three times with the legs weighted
1/0, 0/1 and 1/1. Documents are ranked by their best chunk among 50 results.
"""

import argparse
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import openai
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / ".cache" / "rag-corpus" / "flask-3.1.3" / "docs"
QUESTIONS = ROOT / "tests" / "fixtures" / "rag" / "flask-questions.json"
MODES = {"dense": (1, 0), "bm25": (0, 1), "hybrid": (1, 1)}


def start(binary, storage, extra_env=None):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_FORMAT": "json",
        "MODELS": f"all-MiniLM-L6-v2={ROOT / 'models' / 'all-MiniLM-L6-v2'}",
        "PERSISTENT_STORAGE_DIR": storage,
        **(extra_env or {}),
    }
    log = open(os.path.join(storage, "keel.log"), "w+")
    proc = subprocess.Popen([binary, "serve"], env=env, cwd=ROOT, stdout=log, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        log.seek(0)
        for line in log:
            entry = json.loads(line)
            if entry.get("message") == "listening":
                return proc, f"http://127.0.0.1:{entry['port']}"
        time.sleep(0.1)
    raise SystemExit("keel did not start listening")


def doc_ranking(hits, doc_of):
    seen = []
    for h in hits:
        d = doc_of[h["file_id"]]
        if d not in seen:
            seen.append(d)
    return seen


def evaluate(binary, judged, extra_env=None):
    """Ingests the corpus into a fresh store of a new server and scores every mode."""
    with tempfile.TemporaryDirectory() as storage:
        proc, base = start(binary, storage, extra_env)
        try:
            deadline = time.monotonic() + 180
            while requests.get(base + "/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.2)
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
            doc_of = {}
            t0 = time.monotonic()
            for path in sorted(CORPUS.rglob("*.rst")):
                rel = str(path.relative_to(CORPUS))
                f = client.files.create(file=(rel.replace("/", "__"), io.BytesIO(path.read_bytes())), purpose="assistants")
                doc_of[f.id] = rel
            store = client.vector_stores.create(name="flask-docs", file_ids=list(doc_of))
            while True:
                counts = client.vector_stores.retrieve(store.id).file_counts
                if counts.in_progress == 0:
                    break
                time.sleep(0.2)
            ingest_s = time.monotonic() - t0
            assert counts.completed == len(doc_of), counts
            results = {"documents": len(doc_of), "questions": len(judged), "ingest_seconds": round(ingest_s, 1)}
            per_question = []
            for mode, (dw, tw) in MODES.items():
                r1 = r5 = mrr = 0.0
                for item in judged:
                    body = {
                        "query": item["question"],
                        "max_num_results": 50,
                        "ranking_options": {"hybrid_search": {"embedding_weight": dw, "text_weight": tw}},
                    }
                    resp = requests.post(f"{base}/v1/vector_stores/{store.id}/search", json=body, timeout=60)
                    resp.raise_for_status()
                    docs = doc_ranking(resp.json()["data"], doc_of)
                    rank = docs.index(item["gold"]) + 1 if item["gold"] in docs else None
                    r1 += rank == 1
                    r5 += rank is not None and rank <= 5
                    mrr += 1 / rank if rank is not None and rank <= 10 else 0
                    per_question.append({"mode": mode, "question": item["question"], "gold": item["gold"], "rank": rank})
                n = len(judged)
                results[mode] = {"recall@1": round(r1 / n, 3), "recall@5": round(r5 / n, 3), "mrr@10": round(mrr / n, 3)}
            results["per_question"] = per_question
            return results
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default=str(ROOT / "target" / "debug" / "keel"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "rag-judged.json"))
    args = ap.parse_args()
    if not (CORPUS / "index.rst").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "fetch-rag-corpus.sh")], check=True)
    judged = json.loads(QUESTIONS.read_text())["questions"]
    results = {"embedded": evaluate(args.keel, judged)}
    sys.path.insert(0, str(ROOT / "tests"))
    import pg_server

    with tempfile.TemporaryDirectory(prefix="keel-pg-") as tmp, pg_server.PgServer(os.path.join(tmp, "data")) as pg:
        results["postgres"] = evaluate(args.keel, judged, {"DATABASE_URL": pg.url})
    # The PostgreSQL store must rank as the embedded one does: every metric within 0.02.
    results["largest_difference"] = max(
        abs(results["embedded"][mode][metric] - results["postgres"][mode][metric])
        for mode in MODES
        for metric in ("recall@1", "recall@5", "mrr@10")
    )
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for backend in ("embedded", "postgres"):
        for mode in MODES:
            print(backend, mode, results[backend][mode])
        print(backend, "ingest seconds", results[backend]["ingest_seconds"], "documents", results[backend]["documents"])
    print("largest difference between the stores", round(results["largest_difference"], 3))


if __name__ == "__main__":
    sys.exit(main())
