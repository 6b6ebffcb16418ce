//! Milliseconds per batch of 32 inputs x 128 tokens on all-MiniLM-L6-v2: ONNX Runtime fp32,
//! ONNX Runtime int8 and candle, each with 2 intra-op threads (candle: 2 rayon threads).
//!
//! `cargo run --release --example bench -p keel-backend-ort [-- ITERATIONS [OUT.json]]`, from
//! the repository root (or set `KEEL_MODELS_DIR` / `ORT_DYLIB_PATH`). With OUT.json, the
//! results are also written there for BENCHMARKS.md (`make bench` writes bench/backend.json).
//! ONNX Runtime's pool spins as Keel's would with 2 threads on this machine;
//! `BENCH_SPINNING=1` or `=0` forces it on or off to compare.

use std::path::PathBuf;
use std::time::Instant;

use keel_backend_ort::{OrtOptions, Precision};
use keel_engine::{Backend, EncodedBatch, ModelSpec};

const BATCH: usize = 32;
const SEQ: usize = 128;
const THREADS: usize = 2;

/// A full batch of plausible token ids: `[CLS] ... [SEP]`, no padding.
fn batch() -> EncodedBatch {
    batch_of(SEQ)
}

/// Like [`batch`], `BATCH` inputs of `seq` tokens: the shapes of `make bench`'s short (~18
/// tokens) and long (~160 tokens) texts, to weigh the server's overhead against.
fn batch_of(seq: usize) -> EncodedBatch {
    let seq_len = seq;
    let mut state = 0x2545_f491_u32;
    let mut ids = Vec::with_capacity(BATCH * seq_len);
    for _ in 0..BATCH {
        ids.push(101);
        for _ in 1..seq_len - 1 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ids.push(1996 + (state >> 8) % 26_000);
        }
        ids.push(102);
    }
    EncodedBatch {
        input_ids: ids,
        type_ids: vec![0; BATCH * seq_len],
        attention_mask: vec![1; BATCH * seq_len],
        batch_size: BATCH,
        seq_len,
    }
}

fn time(name: &str, backend: &dyn Backend, batch: &EncodedBatch, iterations: usize) -> f64 {
    backend.forward(batch).expect("warm-up");
    let start = Instant::now();
    for _ in 0..iterations {
        backend.forward(batch).expect("forward");
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / iterations as f64;
    println!("{name:<16} {ms:>8.1} ms/batch ({iterations} iterations)");
    ms
}

/// Forward FLOPs per token of all-MiniLM-L6-v2 at 128 tokens (about 21 M: 2 x 22.7 M
/// parameters in the encoder's matmuls, minus embeddings, plus attention).
const FLOP_PER_TOKEN: f64 = 21e6;

fn row(name: &str, ms: f64) -> String {
    let tokens_per_s = (BATCH * SEQ) as f64 / (ms / 1e3);
    format!(
        "{{\"backend\": \"{name}\", \"ms_per_batch_32x128\": {ms:.1}, \"tokens_per_s\": {tokens_per_s:.0}, \"gflop_per_s\": {:.1}}}",
        tokens_per_s * FLOP_PER_TOKEN / 1e9
    )
}

fn main() {
    let iterations = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let models = std::env::var_os("KEEL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    let dylib = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| models.join("onnxruntime/libonnxruntime.so"));
    let spec = ModelSpec::inspect(&models.join("all-MiniLM-L6-v2")).expect("model folder");
    let batch = batch();
    let mut rows = Vec::new();
    let mut shapes = Vec::new();

    let spinning = match std::env::var("BENCH_SPINNING").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => keel_backend_ort::spinning_default(THREADS),
    };
    println!("ort intra-op pool: {THREADS} threads, spinning {spinning}");
    for (name, precision) in [("ort fp32", Precision::Fp32), ("ort int8", Precision::Int8)] {
        let options = OrtOptions {
            dylib_path: dylib.clone(),
            intra_threads: THREADS,
            intra_spinning: spinning,
            precision,
        };
        let backend = keel_backend_ort::load(&spec, &options).expect("ort backend");
        rows.push(row(name, time(name, backend.as_ref(), &batch, iterations)));
        for seq in [18, 160] {
            let label = format!("{name} 32x{seq}");
            let ms = time(&label, backend.as_ref(), &batch_of(seq), iterations);
            shapes.push(format!(
                "{{\"backend\": \"{name}\", \"batch\": \"32x{seq}\", \"ms_per_batch\": {ms:.1}, \"inputs_per_s\": {:.0}}}",
                BATCH as f64 / (ms / 1e3)
            ));
        }
    }

    // candle parallelizes through rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build_global()
        .expect("rayon pool");
    let candle = keel_backend_candle::load(&spec).expect("candle backend");
    rows.push(row(
        "candle",
        time("candle", candle.as_ref(), &batch, iterations),
    ));
    if let Some(out) = std::env::args().nth(2) {
        let json = format!(
            "{{\"command\": \"cargo run --release --example bench -p keel-backend-ort -- {iterations} {out}\", \"threads\": {THREADS}, \"ort_spinning\": {spinning}, \"flop_per_token\": {FLOP_PER_TOKEN:e}, \"results\": [{}], \"bench_shapes\": [{}]}}\n",
            rows.join(", "),
            shapes.join(", ")
        );
        std::fs::write(&out, json).expect("writing the results");
    }
}
