"""The Python reference service for Keel's benchmark.

Written the way a typical "serve a Hugging Face model with FastAPI" production guide writes
it, on purpose: a transformers pipeline and a SentenceTransformer created once at startup,
and inference called directly inside `async def` endpoints, so the event loop runs one
inference at a time. It is served by uvicorn with one worker:

    MODEL_DIR=models/sentiment-minilm-l6 EMBED_DIR=models/all-MiniLM-L6-v2 \
        uvicorn app:app --app-dir bench/reference --host 127.0.0.1 --port 8000 --workers 1

Routes (the same shapes Keel serves):
    POST /predict          {"text": "..."} (or ?text=...)  -> {"label": ..., "score": ...}
    POST /v1/embeddings    {"model": ..., "input": "..." | ["...", ...]} -> OpenAI's shape
    GET  /health, /ready   200 once the models are loaded (they load before the app listens)
"""

import os
from contextlib import asynccontextmanager
from typing import List, Optional, Union

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
from transformers import pipeline

MODEL_DIR = os.environ.get("MODEL_DIR", "models/sentiment-minilm-l6")
EMBED_DIR = os.environ.get("EMBED_DIR", "models/all-MiniLM-L6-v2")
EMBED_NAME = os.environ.get("EMBED_NAME", os.path.basename(os.path.normpath(EMBED_DIR)))

models = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Load the models once, at startup.
    models["classifier"] = pipeline("text-classification", model=MODEL_DIR)
    models["embedder"] = SentenceTransformer(EMBED_DIR, device="cpu")
    yield
    models.clear()


app = FastAPI(title="reference", lifespan=lifespan)


class PredictRequest(BaseModel):
    text: str


class EmbeddingRequest(BaseModel):
    input: Union[str, List[str]]
    model: Optional[str] = None
    encoding_format: Optional[str] = "float"


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.get("/ready")
async def ready():
    return {"status": "ready"}


@app.post("/predict")
async def predict(request: Optional[PredictRequest] = None, text: Optional[str] = None):
    # The guide's shape: {"text": "..."} as a JSON body, or ?text=... in the query string.
    if request is not None:
        text = request.text
    if not text:
        raise HTTPException(status_code=422, detail="text is required")
    result = models["classifier"](text)[0]
    return {"label": result["label"], "score": float(result["score"])}


@app.post("/v1/embeddings")
async def embeddings(request: EmbeddingRequest):
    inputs = [request.input] if isinstance(request.input, str) else request.input
    if not inputs or any(not t for t in inputs):
        raise HTTPException(status_code=422, detail="input must be non-empty")
    embedder = models["embedder"]
    vectors = embedder.encode(inputs)
    tokens = sum(len(ids) for ids in embedder.tokenizer(inputs)["input_ids"])
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector.tolist()}
            for i, vector in enumerate(vectors)
        ],
        "model": request.model or EMBED_NAME,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
