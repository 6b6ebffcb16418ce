//! Where the integration tests find ONNX Runtime's library and the real model folders:
//! `models/` at the repository root, or `ORT_DYLIB_PATH` and `KEEL_MODELS_DIR`.

#![allow(dead_code)] // each test file uses its own share

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn dylib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/onnxruntime/libonnxruntime.so"))
}

pub fn model_dir(name: &str) -> PathBuf {
    std::env::var_os("KEEL_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"))
        .join(name)
}

/// The model's folder; None (after saying so) only when it is missing and
/// `KEEL_ALLOW_MISSING_MODELS=1`. Otherwise a missing model fails the test.
pub fn required_model(name: &str) -> Option<PathBuf> {
    let dir = model_dir(name);
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    let allowed = std::env::var_os("KEEL_ALLOW_MISSING_MODELS").is_some_and(|v| v == "1");
    assert!(
        allowed,
        "{} is missing: run scripts/fetch-models.sh, or set KEEL_ALLOW_MISSING_MODELS=1 to skip \
         the tests that need it",
        dir.display()
    );
    println!(
        "skipping: {} is missing and KEEL_ALLOW_MISSING_MODELS=1",
        dir.display()
    );
    None
}
