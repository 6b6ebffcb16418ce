"""Build models/sentiment-minilm-l6/ from the base model and the LoRA artefact.

Needs only numpy and safetensors (run by scripts/fetch-models.sh in its small venv).

Input:
  --base     HF folder of all-MiniLM-L6-v2 (BertModel checkpoint, keys without prefix)
  --adapter  assets/sentiment-minilm-l6/adapter.safetensors, made by
             training/train_sentiment.py: `<W>.lora_A` (r x in), `<W>.lora_B` (out x r),
             `lora_scale` in the metadata, and full tensors for bert.pooler.dense.* and
             classifier.*
Output (--out, written to a temporary folder beside it and renamed into place):
  model.safetensors  standard BertForSequenceClassification names, with
                     W' = W + lora_scale * (lora_B @ lora_A), float32
  config.json        base config + architectures/id2label/label2id/problem_type
  tokenizer.json, tokenizer_config.json, vocab.txt, special_tokens_map.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

LORA_A, LORA_B = ".lora_A", ".lora_B"
PREFIX = "bert."
# Buffers that some checkpoints carry but that are not weights of the model.
DROP = {"embeddings.position_ids"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
MAX_LENGTH = 512


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with safe_open(path, framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def base_weights(base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Base BertModel tensors under `bert.`-prefixed names, whatever prefix they came with."""
    out = {}
    for key, value in base.items():
        bare = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if bare in DROP:
            continue
        if not bare.startswith(("embeddings.", "encoder.", "pooler.")):
            raise SystemExit(f"unexpected tensor in base checkpoint: {key}")
        out[PREFIX + bare] = value
    return out


def merge(weights: dict[str, np.ndarray], adapter: dict[str, np.ndarray], scale: float) -> int:
    """Merge LoRA factors and copy full tensors from the adapter into `weights`, in place."""
    merged = 0
    for key, value in adapter.items():
        if key.endswith(LORA_B):
            continue
        if key.endswith(LORA_A):
            name = key[: -len(LORA_A)]
            a, b = value.astype(np.float32), adapter[name + LORA_B].astype(np.float32)
            w = weights.get(name)
            if w is None:
                raise SystemExit(f"adapter adapts {name}, which the base checkpoint lacks")
            if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != w.shape:
                raise SystemExit(f"shape mismatch for {name}: W {w.shape}, A {a.shape}, B {b.shape}")
            weights[name] = (w.astype(np.float32) + np.float32(scale) * (b @ a)).astype(np.float32)
            merged += 1
        else:
            if key in weights and weights[key].shape != value.shape:
                raise SystemExit(f"shape mismatch for {key}: {weights[key].shape} vs {value.shape}")
            weights[key] = value.astype(np.float32)
    orphans = [k for k in adapter if k.endswith(LORA_B) and k[: -len(LORA_B)] + LORA_A not in adapter]
    if orphans:
        raise SystemExit(f"lora_B without lora_A: {orphans}")
    return merged


def write_folder(base_dir: str, out_dir: str, weights: dict[str, np.ndarray]) -> None:
    with open(os.path.join(base_dir, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {str(i): label for i, label in LABELS.items()}
    config["label2id"] = {label: i for i, label in LABELS.items()}
    config["problem_type"] = "single_label_classification"

    with open(os.path.join(base_dir, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    if not isinstance(tok_config.get("model_max_length"), int) or tok_config["model_max_length"] > MAX_LENGTH:
        tok_config["model_max_length"] = MAX_LENGTH

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        save_file({k: np.ascontiguousarray(weights[k]) for k in sorted(weights)},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        for name in TOKENIZER_FILES:
            if name == "tokenizer_config.json":
                with open(os.path.join(tmp, name), "w") as f:
                    json.dump(tok_config, f, indent=2)
                    f.write("\n")
            else:
                shutil.copyfile(os.path.join(base_dir, name), os.path.join(tmp, name))
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        os.chmod(tmp, 0o755)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--adapter", default="assets/sentiment-minilm-l6/adapter.safetensors")
    ap.add_argument("--out", default="models/sentiment-minilm-l6")
    args = ap.parse_args(argv)

    base, _ = load(os.path.join(args.base, "model.safetensors"))
    adapter, meta = load(args.adapter)
    if "lora_scale" not in meta:
        raise SystemExit(f"{args.adapter}: metadata has no lora_scale")
    weights = base_weights(base)
    n = merge(weights, adapter, float(meta["lora_scale"]))
    for required in ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"):
        if required not in weights:
            raise SystemExit(f"assembled model lacks {required}")
    write_folder(args.base, args.out, weights)
    print(f"assembled {args.out}: {len(weights)} tensors, {n} LoRA-merged", file=sys.stderr)


if __name__ == "__main__":
    main()
