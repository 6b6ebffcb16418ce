"""The Python reference service for Keel's image classification benchmark.

Written the way a typical "serve an image classifier with FastAPI" guide writes it, on
purpose: an ONNX Runtime session created once at startup (default thread settings), an
`async def` endpoint that takes the upload as `UploadFile`, opens it with PIL, does
torchvision's `Resize(256)` + `CenterCrop(224)` with PIL, normalises with numpy and runs the
session, all on the event loop (one request at a time). Served by uvicorn with one worker:

    ONNX_PATH=.cache/bench-images/efficientnet-lite0.onnx MODEL_DIR=models/efficientnet-lite0 \
        uvicorn app:app --app-dir bench/images/reference --host 127.0.0.1 --port 8000 --workers 1

The ONNX file is built from the same model folder Keel serves by `build_onnx.py` beside this
file; the labels and the preprocessing numbers come from that folder's config.json and
preprocessor_config.json.

Routes:
    POST /predict      multipart/form-data with one `file` part -> {"label": ..., "score": ...}
    GET  /health, /ready  200 once the model is loaded (it loads before the app listens)
    GET  /stats        cumulative seconds spent in each step, for the harness to difference:
                       {"requests", "decode_s", "preprocess_s", "inference_s", "handler_s"}

The timers are the only thing a guide would not have; they cost a few perf_counter calls.
"""

import io
import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

ONNX_PATH = os.environ.get("ONNX_PATH", ".cache/bench-images/efficientnet-lite0.onnx")
MODEL_DIR = Path(os.environ.get("MODEL_DIR", "models/efficientnet-lite0"))

state = {}
stats = {"requests": 0, "decode_s": 0.0, "preprocess_s": 0.0, "inference_s": 0.0,
         "handler_s": 0.0}


def load_preprocessing(model_dir: Path) -> dict:
    """The preprocessor_config.json numbers, as torchvision's Resize / CenterCrop and a
    per-channel (x * rescale - mean) / std would use them."""
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    rescale = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    mean = np.array(cfg.get("image_mean", [0.0] * 3), np.float32)
    std = np.array(cfg.get("image_std", [1.0] * 3), np.float32)
    if not cfg.get("do_normalize", True):
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    crop = cfg.get("crop_size", {"height": 224, "width": 224})
    return {
        "shortest_edge": int(cfg.get("size", {}).get("shortest_edge", 256)),
        "crop": (int(crop["height"]), int(crop["width"])),
        "resample": int(cfg.get("resample", Image.BILINEAR)),
        # (x * rescale - mean) / std = x * scale + shift, folded once.
        "scale": (rescale / std).astype(np.float32),
        "shift": (-mean / std).astype(np.float32),
    }


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Load the model once, at startup.
    config = json.loads((MODEL_DIR / "config.json").read_text())
    state["labels"] = config["id2label"]
    state["pre"] = load_preprocessing(MODEL_DIR)
    state["session"] = ort.InferenceSession(ONNX_PATH, providers=["CPUExecutionProvider"])
    state["input"] = state["session"].get_inputs()[0].name
    yield
    state.clear()


app = FastAPI(title="reference-images", lifespan=lifespan)


def preprocess(image: Image.Image, pre: dict) -> np.ndarray:
    # torchvision.transforms.Resize(256): the shorter side to 256, the longer one scaled and
    # truncated; PIL's bilinear filter (antialiased when shrinking, as torchvision's is).
    w, h = image.size
    short = pre["shortest_edge"]
    if w <= h:
        size = (short, int(short * h / w))
    else:
        size = (int(short * w / h), short)
    image = image.resize(size, pre["resample"])
    # torchvision.transforms.CenterCrop(224).
    ch, cw = pre["crop"]
    top = int(round((size[1] - ch) / 2.0))
    left = int(round((size[0] - cw) / 2.0))
    image = image.crop((left, top, left + cw, top + ch))
    x = np.asarray(image, dtype=np.float32) * pre["scale"] + pre["shift"]  # HWC
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]  # NCHW, N = 1


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/ready")
async def ready():
    return {"status": "ready"}


@app.get("/stats")
async def get_stats():
    return stats


@app.post("/predict")
async def predict(file: UploadFile = File(...)):
    started = time.perf_counter()
    data = await file.read()
    t0 = time.perf_counter()
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")  # convert() decodes
    except (UnidentifiedImageError, OSError) as e:
        raise HTTPException(status_code=422, detail=f"cannot decode the image: {e}")
    t1 = time.perf_counter()
    x = preprocess(image, state["pre"])
    t2 = time.perf_counter()
    logits = state["session"].run(None, {state["input"]: x})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    t3 = time.perf_counter()
    stats["requests"] += 1
    stats["decode_s"] += t1 - t0
    stats["preprocess_s"] += t2 - t1
    stats["inference_s"] += t3 - t2
    stats["handler_s"] += t3 - started
    return {"label": state["labels"][str(best)], "score": float(probs[best])}
