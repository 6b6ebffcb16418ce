"""Answer time over a vector store, split into retrieval and generation, as Keel reports it
(`x-keel-retrieve-ms`, `x-keel-generate-ms`) on `POST /v1/responses` with `file_search`.

    python bench/rag_answer.py [--keel target/release/keel] [--out bench/rag-answer.json]

One server with the default embedding model and the local SmolLM2-135M GGUF (2 slots), the
76 Flask documents in one store (embedded), then the first 20 judged questions asked one at a
time, non-streamed, 5 retrieved passages each, answers capped at 64 tokens. p50/p90 of each
phase and of the whole request as the client saw it.
"""

import argparse
import io
import json
import pathlib
import statistics
import sys
import tempfile
import time

import openai
import requests

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from rag_judged import CORPUS, QUESTIONS, ROOT, start  # noqa: E402

MODELS = ROOT / "models"
LLM = "smollm2-135m-instruct"


def pct(values, p):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default=str(ROOT / "target" / "release" / "keel"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "rag-answer.json"))
    ap.add_argument("--questions", type=int, default=20)
    args = ap.parse_args()
    questions = [q["question"] for q in json.loads(QUESTIONS.read_text())["questions"]][: args.questions]
    env = {
        "MODELS": f"all-MiniLM-L6-v2={MODELS / 'all-MiniLM-L6-v2'},{LLM}={MODELS / 'SmolLM2-135M-Instruct.Q4_1.gguf'}",
        "LLM_SLOTS": "2",
        "LLM_CONTEXT": "4096",
    }
    with tempfile.TemporaryDirectory() as storage:
        proc, base = start(args.keel, storage, env)
        try:
            deadline = time.monotonic() + 300
            while requests.get(base + "/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.2)
            c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
            ids = [c.files.create(file=(p.name, io.BytesIO(p.read_bytes())), purpose="assistants").id
                   for p in sorted(CORPUS.rglob("*.rst"))]
            store = c.vector_stores.create(name="answers")
            batch = c.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=ids)
            assert batch.file_counts.completed == len(ids), batch
            tool = {"type": "file_search", "vector_store_ids": [store.id], "max_num_results": 5}
            retrieve, generate, total, degraded = [], [], [], 0
            for q in questions:
                t0 = time.perf_counter()
                raw = c.responses.with_raw_response.create(model=LLM, input=q, tools=[tool], max_output_tokens=64)
                total.append((time.perf_counter() - t0) * 1000)
                raw.parse()
                retrieve.append(float(raw.headers["x-keel-retrieve-ms"]))
                generate.append(float(raw.headers["x-keel-generate-ms"]))
                degraded += raw.headers.get("x-keel-degraded") == "true"
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result = {
        "questions": len(questions),
        "degraded": degraded,
        "retrieve_ms": {"p50": round(statistics.median(retrieve), 1), "p90": pct(retrieve, 0.9)},
        "generate_ms": {"p50": round(statistics.median(generate), 1), "p90": pct(generate, 0.9)},
        "total_ms": {"p50": round(statistics.median(total), 1), "p90": pct(total, 0.9)},
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
