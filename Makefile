# The two set-up commands: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
TEST_VENV := .cache/test-venv
PORT ?= 8080

.PHONY: run test test-deps build-deps bench bench-llm bench-images bench-rag models build release test-rust test-integration test-images fmt lint clean-models fuzz

## Fetch the default models once, build in release mode, serve on $(PORT).
run: models release
	PORT=$(PORT) ./target/release/keel serve

## Unit tests, then the integration tests against the real server and real models.
test: test-deps models lint test-rust test-integration

## Side-by-side benchmark against the Python reference service; writes BENCHMARKS.md.
bench: models release
	$(CARGO) run --release -q --example bench -p keel-backend-ort -- 5 bench/backend.json
	python3 bench/scale.py
	bash bench/gateway/run.sh | tee bench/gateway-overhead.txt
	python3 bench/overload.py
	python3 bench/run.py --variant keel-ort-fp32: --variant keel-ort-int8:ORT_PRECISION=int8 --variant keel-candle:BACKEND=candle $(BENCH_ARGS)
	$(MAKE) bench-llm
	$(MAKE) bench-images
	$(MAKE) bench-rag

LLM_BENCH_VENV := .cache/bench-llm-venv
KEEL_LLM_CMD := PORT={port} HOST=127.0.0.1 LOG_LEVEL=warn MODELS=smollm2-135m-instruct={model} LLM_SLOTS=8 LLM_THREADS={threads} target/release/keel serve

## Local generation: Keel against llama.cpp's llama-server (built from the same vendored source,
## every -np) and the llama-cpp-python server, same GGUF and threads; bench/llm-results.json.
bench-llm: models release $(LLM_BENCH_VENV)/.installed
	bash bench/llm/build-llama-cpp.sh
	python3 bench/llm.py --variants keel,llama-server-np1,llama-server-np4,llama-server-np8,llama-server-np16,llama-cpp-python \
		--keel-cmd '$(KEEL_LLM_CMD)' --request-model smollm2-135m-instruct $(LLM_BENCH_ARGS)

# llama-cpp-python builds its own llama.cpp from source (cmake; about 15 minutes on 2 cores).
$(LLM_BENCH_VENV)/.installed: bench/llm-requirements.txt
	python3 -m venv $(LLM_BENCH_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(LLM_BENCH_VENV)/bin/pip install -q -r bench/llm-requirements.txt
	touch $@

## RAG on both stores: ingestion against raw embedding throughput, search p50/p99 at 10k and
## 100k chunks and dense recall (bench/rag-results.json), retrieval quality on the judged set
## (bench/rag-judged.json), and answer time split retrieve/generate (bench/rag-answer.json).
bench-rag: models release $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python bench/rag.py --keel target/release/keel
	$(TEST_VENV)/bin/python bench/rag_judged.py --keel target/release/keel
	$(TEST_VENV)/bin/python bench/rag_answer.py --keel target/release/keel

IMAGES_BENCH_VENV := .cache/bench-images-venv

## Image classification: Keel against FastAPI + PIL + ONNX Runtime on EfficientNet-Lite0, 640x480
## JPEG uploads at c=1/8/32; bench/images-results.json and its section of BENCHMARKS.md.
bench-images: models release test-images $(IMAGES_BENCH_VENV)/.installed
	python3 bench/images.py $(IMAGES_BENCH_ARGS)

$(IMAGES_BENCH_VENV)/.installed: bench/images/requirements.txt
	python3 -m venv $(IMAGES_BENCH_VENV)
	$(IMAGES_BENCH_VENV)/bin/pip install -q -r bench/images/requirements.txt
	touch $@

## Fuzz HTTP request parsing and tokenization (cargo-fuzz, on stable), FUZZ_SECONDS each (default 60).
fuzz: models
	bash scripts/fuzz.sh

test-deps: build-deps
	bash scripts/install-test-deps.sh

## cmake and libclang for the llama.cpp build (installed from Debian when missing).
build-deps:
	bash scripts/install-build-deps.sh

models:
	bash scripts/fetch-models.sh
	bash scripts/fetch-onnxruntime.sh

release: build-deps
	$(CARGO) build --release --bin keel

build: build-deps
	$(CARGO) build --bin keel --bin keel-loadgen

lint: build-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## The PostgreSQL store's tests (the only ignored ones) need a server: tests/pg_server.py
## runs them beside one.
test-rust: build-deps test-images $(TEST_VENV)/.installed
	$(CARGO) test --workspace
	$(TEST_VENV)/bin/python tests/pg_server.py -- $(CARGO) test --workspace -- --ignored

$(TEST_VENV)/.installed: tests/requirements.txt
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

## The photos the image tests classify, from scikit-image's hash-pinned wheel.
test-images:
	bash scripts/fetch-test-images.sh

test-integration: build $(TEST_VENV)/.installed test-images
	KEEL_BIN=$(CURDIR)/target/debug/keel $(TEST_VENV)/bin/python -m pytest -q tests/integration
	KEEL_BIN=$(CURDIR)/target/debug/keel $(TEST_VENV)/bin/python -m pytest -q tests/gateway

fmt:
	$(CARGO) fmt --all

clean-models:
	rm -rf models .cache/wheels
