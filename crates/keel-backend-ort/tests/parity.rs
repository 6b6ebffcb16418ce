//! ONNX Runtime against candle on the real models, one padded batch of texts of very
//! different lengths (so padding and masking are exercised).
//!
//! Needs `models/onnxruntime/libonnxruntime.so` (`scripts/fetch-onnxruntime.sh`) and the model
//! folders (`scripts/fetch-models.sh`); a missing library or model fails with the path it
//! looked at, so a test run without them cannot pass by accident. `KEEL_ALLOW_MISSING_MODELS=1`
//! says the run means it: a test whose model is missing then prints that it skips, and passes.
//! `ORT_DYLIB_PATH` and `KEEL_MODELS_DIR` override the two locations.

mod common;

use std::path::PathBuf;

use common::{dylib, required_model};

use keel_backend_ort::{OrtOptions, Precision};
use keel_engine::tokenize::TextTokenizer;
use keel_engine::{Backend, EncodedBatch, ModelSpec};

const TEXTS: &[&str] = &[
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, the acting was wonderful and the story kept me hooked.",
    "Terrible service. The food arrived cold and the waiter was rude to us.",
    "Rust's ownership model prevents data races at compile time.",
    "ok",
    "A very long input that keeps going so that the batch has a long tail of padding for the \
     short rows: it talks about databases, distributed systems, consensus protocols, \
     vector search, tokenizers, attention, and a cat that sat on a mat near the window.",
    "¿Dónde está la biblioteca? Je ne sais pas.",
    "Numbers 3.14159 and dates 2024-01-01 tokenize into many pieces.",
    "not bad at all, actually pretty good",
];

fn options(precision: Precision) -> OrtOptions {
    OrtOptions {
        dylib_path: dylib(),
        intra_threads: 2,
        intra_spinning: false,
        precision,
    }
}

fn batch(spec: &ModelSpec) -> EncodedBatch {
    let tokenizer = TextTokenizer::load(&spec.dir, spec.max_input_tokens, true).unwrap();
    let texts: Vec<String> = TEXTS.iter().map(|t| t.to_string()).collect();
    let inputs = tokenizer.encode(&texts).unwrap();
    let refs: Vec<_> = inputs.iter().collect();
    EncodedBatch::pad(&refs, tokenizer.pad_id())
}

fn ort(spec: &ModelSpec, precision: Precision) -> Box<dyn Backend> {
    keel_backend_ort::load(spec, &options(precision))
        .unwrap_or_else(|e| panic!("ONNX Runtime backend ({precision:?}) failed to load: {e}"))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn embeddings_match_candle() {
    let Some(dir) = required_model("all-MiniLM-L6-v2") else {
        return;
    };
    let spec = ModelSpec::inspect(&dir).unwrap();
    let batch = batch(&spec);
    let reference = keel_backend_candle::load(&spec)
        .unwrap()
        .forward(&batch)
        .unwrap();

    let fp32 = ort(&spec, Precision::Fp32).forward(&batch).unwrap();
    assert_eq!(fp32.len(), TEXTS.len());
    let cosines: Vec<f32> = fp32
        .iter()
        .zip(&reference)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let min = cosines.iter().copied().fold(f32::MAX, f32::min);
    println!(
        "fp32 cosine vs candle: min {min:.7} (seq_len {})",
        batch.seq_len
    );
    for (i, c) in cosines.iter().enumerate() {
        assert!(*c >= 0.9999, "text {i}: fp32 cosine {c}");
    }
    // Not normalized, like candle: the norms must agree too.
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (a, b) in fp32.iter().zip(&reference) {
        assert!((norm(a) - norm(b)).abs() / norm(b) < 1e-3);
    }

    let int8 = ort(&spec, Precision::Int8).forward(&batch).unwrap();
    let cosines: Vec<f32> = int8
        .iter()
        .zip(&reference)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let min = cosines.iter().copied().fold(f32::MAX, f32::min);
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    println!("int8 cosine vs candle: min {min:.4}, mean {mean:.4}, each {cosines:.4?}");
    // Dynamic int8 costs most on very short inputs ("ok" is 3 tokens): ~0.97 there, ~0.99 on
    // sentences.
    assert!(
        min >= 0.95 && mean >= 0.98,
        "int8 cosine min {min}, mean {mean}"
    );
}

#[test]
fn classifier_logits_match_candle() {
    let Some(dir) = required_model("sentiment-minilm-l6") else {
        return;
    };
    let spec = ModelSpec::inspect(&dir).unwrap();
    let batch = batch(&spec);
    let reference = keel_backend_candle::load(&spec)
        .unwrap()
        .forward(&batch)
        .unwrap();

    let fp32 = ort(&spec, Precision::Fp32).forward(&batch).unwrap();
    let max_diff = fp32
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("fp32 logits max abs diff vs candle: {max_diff:.2e}");
    assert!(max_diff < 1e-3, "fp32 logits differ by {max_diff}");

    let int8 = ort(&spec, Precision::Int8).forward(&batch).unwrap();
    let flips = int8
        .iter()
        .zip(&reference)
        .filter(|(a, b)| argmax(a) != argmax(b))
        .count();
    let max_diff = int8
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "int8: {flips}/{} label flips, logits max abs diff {max_diff:.3}",
        TEXTS.len()
    );
    assert!(flips <= 1, "int8 flipped {flips} labels");
}

#[test]
fn empty_batches_and_a_wrong_library_path_are_errors_not_panics() {
    let Some(dir) = required_model("all-MiniLM-L6-v2") else {
        return;
    };
    let spec = ModelSpec::inspect(&dir).unwrap();
    let backend = ort(&spec, Precision::Fp32);
    let empty = EncodedBatch::pad(&[], 0);
    assert!(backend.forward(&empty).unwrap().is_empty());

    // ONNX Runtime is loaded once per process: another library path is refused, clearly.
    let mut other = options(Precision::Fp32);
    other.dylib_path = PathBuf::from("/nonexistent/libonnxruntime.so");
    let err = keel_backend_ort::load(&spec, &other)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("already loaded"), "{err}");
}
