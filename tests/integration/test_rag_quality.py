"""Retrieval quality on the judged set (tests/fixtures/rag: 60 questions over Flask's own
docs), on both stores, through the real server: the numbers bench/rag_judged.py reports, held
to what the RAG design promises."""

import json
import subprocess
import sys

from conftest import FIXTURES, ROOT, keel_bin, new_database

sys.path.insert(0, str(ROOT / "bench"))
import rag_judged  # noqa: E402


def test_hybrid_beats_both_legs_and_postgres_ranks_as_the_embedded_store(postgres):
    if not (rag_judged.CORPUS / "index.rst").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "fetch-rag-corpus.sh")], check=True)
    judged = json.loads((FIXTURES / "rag" / "flask-questions.json").read_text())["questions"]
    assert len(judged) >= 50
    embedded = rag_judged.evaluate(keel_bin(), judged)
    shared = rag_judged.evaluate(keel_bin(), judged, {"DATABASE_URL": new_database(postgres)})
    for results in (embedded, shared):
        assert results["documents"] == 76
        hybrid = results["hybrid"]["recall@5"]
        assert hybrid > results["dense"]["recall@5"], results
        assert hybrid > results["bm25"]["recall@5"], results
        assert hybrid >= 0.95, results
    for mode in rag_judged.MODES:
        for metric in ("recall@1", "recall@5", "mrr@10"):
            assert abs(embedded[mode][metric] - shared[mode][metric]) <= 0.02, (mode, metric)
