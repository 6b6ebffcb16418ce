"""Check the assembled classifier (models/sentiment-minilm-l6) against the training run.

Loads the folder written by scripts/fetch-models.sh with a plain
`transformers.pipeline("text-classification", ...)`, fails if transformers reports
missing, unexpected or mismatched weights, scores the same held-out split as
train_sentiment.py and records `assembled_heldout_accuracy` in training/results.json.

Usage (from the repository root, after scripts/fetch-models.sh):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python training/eval_assembled.py
    # options: --model DIR --data FILE --workdir DIR --results FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sentiment_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "models", "sentiment-minilm-l6"))
    ap.add_argument("--workdir", default=os.path.join(REPO, ".cache", "train-work"))
    ap.add_argument("--data", help="movieReviewSnippets_GroundTruth.txt (skips the sdist download)")
    ap.add_argument("--results", default=os.path.join(REPO, "training", "results.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from transformers import BertForSequenceClassification, pipeline

    capture = _Capture()
    logging.getLogger("transformers").addHandler(capture)

    _, info = BertForSequenceClassification.from_pretrained(args.model, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    clf = pipeline("text-classification", model=args.model, device="cpu")
    suspicious = [m for m in capture.records if any(w in m.lower() for w in ("missing", "unexpected", "newly initialized", "mismatch"))]
    if problems or suspicious:
        raise SystemExit(f"assembled model does not load cleanly: {problems} {suspicious}")
    print(f"loaded cleanly; tokenizer model_max_length={clf.tokenizer.model_max_length}", flush=True)

    data_path = args.data or sentiment_data.fetch_snippets(args.workdir)
    _, heldout = sentiment_data.split(sentiment_data.load_snippets(data_path))
    preds = clf([r[2] for r in heldout], truncation=True)
    label2id = clf.model.config.label2id
    correct = sum(label2id[p["label"]] == r[3] for p, r in zip(preds, heldout))
    acc = correct / len(heldout)
    print(f"assembled held-out accuracy: {acc:.4f} ({correct}/{len(heldout)})", flush=True)

    results = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    results["assembled_heldout_accuracy"] = acc
    results["assembled_eval_transformers"] = transformers.__version__
    with open(args.results, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    trained = results.get("heldout_accuracy")
    if trained is not None and abs(trained - acc) > 1e-9:
        raise SystemExit(f"assembled accuracy {acc} differs from training's {trained}")


if __name__ == "__main__":
    main()
