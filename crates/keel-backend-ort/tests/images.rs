//! EfficientNet-Lite0 on ONNX Runtime and on candle against the independent numpy float64
//! reference (`tests/fixtures/make_image_fixtures.py`), fed the reference's own preprocessed
//! crops: the network alone is compared, so the bound is tight (1e-5 on probabilities). The
//! five photos run as one batch, so batching is exercised too.

mod common;

use std::path::{Path, PathBuf};

use common::{dylib, repo_root, required_model};
use keel_backend_ort::{OrtOptions, Precision};
use keel_engine::{Backend, ImageBatch, ModelSpec};
use serde_json::Value;

const MODEL: &str = "efficientnet-lite0";

struct Reference {
    name: String,
    pixels: Vec<f32>,
    probabilities: Vec<f64>,
}

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The reference crops, normalised as the folder's preprocessor_config.json says.
fn references(model: &Path) -> Vec<Reference> {
    let text = std::fs::read_to_string(fixtures().join("images.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let pre: Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let rescale = pre["rescale_factor"].as_f64().unwrap() as f32;
    let floats = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let (mean, std) = (floats(&pre["image_mean"]), floats(&pre["image_std"]));
    fixture["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let crop = fixtures().join(image["crop"].as_str().unwrap());
            let bytes = std::fs::read(&crop).unwrap();
            let decoded = keel_vision::decode(&bytes, &keel_vision::DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", crop.display()));
            let (w, h) = (decoded.width as usize, decoded.height as usize);
            assert_eq!((w, h), (224, 224), "{}", crop.display());
            let mut pixels = vec![0f32; 3 * h * w];
            for (x, y, p) in decoded.rgb.enumerate_pixels() {
                for c in 0..3 {
                    let v = f32::from(p[c]) * rescale;
                    pixels[c * h * w + y as usize * w + x as usize] = (v - mean[c]) / std[c];
                }
            }
            Reference {
                name: image["name"].as_str().unwrap().to_string(),
                pixels,
                probabilities: image["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect(),
            }
        })
        .collect()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

fn check(backend: &dyn Backend, references: &[Reference], what: &str) {
    let mut pixels = Vec::new();
    for r in references {
        pixels.extend_from_slice(&r.pixels);
    }
    let batch = ImageBatch {
        pixels,
        batch_size: references.len(),
        height: 224,
        width: 224,
    };
    let out = backend
        .forward_images(&batch)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(out.len(), references.len());
    for (logits, r) in out.iter().zip(references) {
        let probs = softmax(logits);
        assert_eq!(probs.len(), r.probabilities.len(), "{what} {}", r.name);
        assert_eq!(
            argmax(&probs),
            argmax(&r.probabilities),
            "{what}: top-1 of {} differs from the reference",
            r.name
        );
        let worst = probs
            .iter()
            .zip(&r.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!("{what} {}: max |p - p_ref| = {worst:.2e}", r.name);
        assert!(
            worst <= 1e-5,
            "{what} {}: max |p - p_ref| = {worst:e}",
            r.name
        );
    }
}

#[test]
fn onnx_runtime_and_candle_match_the_reference_on_its_crops() {
    let Some(dir) = required_model(MODEL) else {
        return;
    };
    let spec = ModelSpec::inspect(&dir).unwrap();
    let references = references(&dir);
    assert_eq!(references.len(), 5, "the fixture has five photos");
    let options = OrtOptions {
        dylib_path: dylib(),
        intra_threads: 2,
        intra_spinning: false,
        precision: Precision::Fp32,
    };
    let ort = keel_backend_ort::load(&spec, &options).expect("ONNX Runtime loads the model");
    check(ort.as_ref(), &references, "onnxruntime");
    let candle = keel_backend_candle::load(&spec).expect("candle loads the model");
    check(candle.as_ref(), &references, "candle");
}
