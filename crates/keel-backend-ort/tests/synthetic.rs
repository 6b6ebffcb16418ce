//! Every architecture and head the graph builder knows, on tiny random checkpoints written
//! here (no download), against the candle backend: this is what covers DistilBERT and
//! XLM-RoBERTa (position ids after the padding index, no token types, their heads) until real
//! checkpoints of those families are in `models/`.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use common::dylib;
use keel_backend_ort::{OrtOptions, Precision};
use keel_engine::{Backend, EncodedBatch, ModelSpec};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

const H: usize = 32;
const HEADS: usize = 4;
const LAYERS: usize = 2;
const FFN: usize = 64;
const VOCAB: usize = 60;
const MAX_POS: usize = 40;
const LABELS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Arch {
    Bert,
    DistilBert,
    XlmRoberta,
}

/// A scratch model folder, removed on drop.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic weights: uniform in ±scale around `center`.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, n: usize, center: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                center + (unit * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

fn tensors(arch: Arch, classifier: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(arch as u64 + 7);
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, center: f32, scale: f32| {
        let n = shape.iter().product();
        out.push((name, shape, rng.fill(n, center, scale)));
    };
    let prefix = match (arch, classifier) {
        (_, false) => "",
        (Arch::Bert, true) => "bert.",
        (Arch::DistilBert, true) => "distilbert.",
        (Arch::XlmRoberta, true) => "roberta.",
    };
    let linear = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), name: String, i, o| {
        add(format!("{name}.weight"), vec![o, i], 0.0, 0.25);
        add(format!("{name}.bias"), vec![o], 0.0, 0.1);
    };
    let norm = |add: &mut dyn FnMut(String, Vec<usize>, f32, f32), name: String| {
        add(format!("{name}.weight"), vec![H], 1.0, 0.2);
        add(format!("{name}.bias"), vec![H], 0.0, 0.1);
    };
    let e = format!("{prefix}embeddings");
    add(
        format!("{e}.word_embeddings.weight"),
        vec![VOCAB, H],
        0.0,
        1.0,
    );
    add(
        format!("{e}.position_embeddings.weight"),
        vec![MAX_POS, H],
        0.0,
        1.0,
    );
    if arch != Arch::DistilBert {
        let types = if arch == Arch::Bert { 2 } else { 1 };
        add(
            format!("{e}.token_type_embeddings.weight"),
            vec![types, H],
            0.0,
            1.0,
        );
    }
    norm(&mut add, format!("{e}.LayerNorm"));
    for l in 0..LAYERS {
        if arch == Arch::DistilBert {
            let p = format!("{prefix}transformer.layer.{l}");
            for name in ["q_lin", "k_lin", "v_lin", "out_lin"] {
                linear(&mut add, format!("{p}.attention.{name}"), H, H);
            }
            norm(&mut add, format!("{p}.sa_layer_norm"));
            linear(&mut add, format!("{p}.ffn.lin1"), H, FFN);
            linear(&mut add, format!("{p}.ffn.lin2"), FFN, H);
            norm(&mut add, format!("{p}.output_layer_norm"));
        } else {
            let p = format!("{prefix}encoder.layer.{l}");
            for name in ["query", "key", "value"] {
                linear(&mut add, format!("{p}.attention.self.{name}"), H, H);
            }
            linear(&mut add, format!("{p}.attention.output.dense"), H, H);
            norm(&mut add, format!("{p}.attention.output.LayerNorm"));
            linear(&mut add, format!("{p}.intermediate.dense"), H, FFN);
            linear(&mut add, format!("{p}.output.dense"), FFN, H);
            norm(&mut add, format!("{p}.output.LayerNorm"));
        }
    }
    if arch != Arch::DistilBert {
        linear(&mut add, format!("{prefix}pooler.dense"), H, H);
    }
    if classifier {
        match arch {
            Arch::Bert => linear(&mut add, "classifier".into(), H, LABELS),
            Arch::DistilBert => {
                linear(&mut add, "pre_classifier".into(), H, H);
                linear(&mut add, "classifier".into(), H, LABELS);
            }
            Arch::XlmRoberta => {
                linear(&mut add, "classifier.dense".into(), H, H);
                linear(&mut add, "classifier.out_proj".into(), H, LABELS);
            }
        }
    }
    out
}

fn write_model(arch: Arch, classifier: bool, cls_pooling: bool) -> Folder {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "keel-ort-synthetic-{}-{n}-{arch:?}-{classifier}-{cls_pooling}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    let folder = Folder(dir.clone());
    let (model_type, class) = match arch {
        Arch::Bert => ("bert", "Bert"),
        Arch::DistilBert => ("distilbert", "DistilBert"),
        Arch::XlmRoberta => ("xlm-roberta", "XLMRoberta"),
    };
    let architecture = if classifier {
        format!("{class}ForSequenceClassification")
    } else {
        format!("{class}Model")
    };
    let id2label: HashMap<String, String> = (0..LABELS)
        .map(|i| (i.to_string(), format!("L{i}")))
        .collect();
    let pad = if arch == Arch::XlmRoberta { 1 } else { 0 };
    // candle's DistilBERT computes "gelu" with the tanh approximation where Hugging Face (and
    // this graph) use erf: ~1e-3 apart on real checkpoints. ReLU keeps this comparison exact.
    let distil_activation = "relu";
    let config = json!({
        "model_type": model_type, "architectures": [architecture], "id2label": id2label,
        "vocab_size": VOCAB, "max_position_embeddings": MAX_POS, "pad_token_id": pad,
        "hidden_size": H, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "intermediate_size": FFN, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
        "type_vocab_size": if arch == Arch::Bert { 2 } else { 1 },
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "dim": H, "n_heads": HEADS, "n_layers": LAYERS, "hidden_dim": FFN,
        "activation": distil_activation,
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if cls_pooling {
        fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        fs::write(
            dir.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true}"#,
        )
        .unwrap();
    }
    let tensors = tensors(arch, classifier);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(n, s, b)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    folder
}

/// Three rows of different lengths, right-padded with the model's padding id.
fn batch(arch: Arch) -> EncodedBatch {
    let pad = if arch == Arch::XlmRoberta { 1 } else { 0 };
    let lengths = [9, 4, 1];
    let seq = 9;
    let mut batch = EncodedBatch {
        input_ids: Vec::new(),
        type_ids: Vec::new(),
        attention_mask: Vec::new(),
        batch_size: lengths.len(),
        seq_len: seq,
    };
    for (row, &len) in lengths.iter().enumerate() {
        for t in 0..seq {
            let real = t < len;
            let id = 2 + ((row * 17 + t * 7) % (VOCAB - 2)) as u32;
            batch.input_ids.push(if real { id } else { pad });
            // BERT rows 0 carry a second segment, to exercise token type embeddings.
            let segment = arch == Arch::Bert && row == 0 && t >= 5;
            batch.type_ids.push(u32::from(segment && real));
            batch.attention_mask.push(u32::from(real));
        }
    }
    batch
}

fn compare(arch: Arch, classifier: bool, cls_pooling: bool) {
    let folder = write_model(arch, classifier, cls_pooling);
    let spec = ModelSpec::inspect(&folder.0).unwrap();
    let batch = batch(arch);
    let reference = keel_backend_candle::load(&spec)
        .unwrap()
        .forward(&batch)
        .unwrap();
    for precision in [Precision::Fp32, Precision::Int8] {
        let options = OrtOptions {
            dylib_path: dylib(),
            intra_threads: 1,
            intra_spinning: false,
            precision,
        };
        let backend: Box<dyn Backend> = keel_backend_ort::load(&spec, &options)
            .unwrap_or_else(|e| panic!("{arch:?} {precision:?}: {e}"));
        let out = backend.forward(&batch).unwrap();
        assert_eq!(out.len(), reference.len());
        let max_diff = out
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let tolerance = match precision {
            Precision::Fp32 => 1e-4,
            // Random weights are harsher on int8 than trained ones; this checks the graph runs
            // and stays close, not the quantization quality (parity.rs does that).
            Precision::Int8 => 0.25,
        };
        println!("{arch:?} classifier={classifier} cls={cls_pooling} {precision:?}: max diff {max_diff:.2e}");
        assert!(
            max_diff < tolerance,
            "{arch:?} classifier={classifier} {precision:?}: max abs diff {max_diff}"
        );
    }
}

#[test]
fn bert_classifier() {
    compare(Arch::Bert, true, false);
}

#[test]
fn bert_cls_embedding() {
    compare(Arch::Bert, false, true);
}

#[test]
fn distilbert_embedding_and_classifier() {
    compare(Arch::DistilBert, false, false);
    compare(Arch::DistilBert, true, false);
}

#[test]
fn xlm_roberta_embedding_and_classifier() {
    compare(Arch::XlmRoberta, false, false);
    compare(Arch::XlmRoberta, true, false);
}

#[test]
fn a_folder_onnx_export_is_preferred_over_safetensors() {
    let folder = write_model(Arch::Bert, false, false);
    let spec = ModelSpec::inspect(&folder.0).unwrap();
    let batch = batch(Arch::Bert);
    let reference = keel_backend_candle::load(&spec)
        .unwrap()
        .forward(&batch)
        .unwrap();
    let onnx = keel_backend_ort::build_onnx(&spec, Precision::Fp32).unwrap();
    fs::create_dir_all(folder.0.join("onnx")).unwrap();
    fs::write(folder.0.join("onnx/model.onnx"), onnx).unwrap();
    // Without safetensors, only the export can be what runs.
    fs::remove_file(folder.0.join("model.safetensors")).unwrap();
    let options = OrtOptions {
        dylib_path: dylib(),
        intra_threads: 1,
        intra_spinning: false,
        precision: Precision::Fp32,
    };
    let out = keel_backend_ort::load(&spec, &options)
        .unwrap()
        .forward(&batch)
        .unwrap();
    let max_diff = out
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "max abs diff {max_diff}");
}
