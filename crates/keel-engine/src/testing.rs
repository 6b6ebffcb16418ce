//! Test doubles shared by the engine's unit tests: a scripted backend, model folders on disk,
//! and the Prometheus text the engine's metrics render to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::backend::{Backend, BackendError, EncodedBatch};

/// Echoes each input's length, its batch's size and sequence length (so tests see how
/// batches formed), padded with zeros to `width`; counts its calls and rows, and panics on
/// the calls `panics_on` picks (by 0-based call index).
pub struct ScriptedBackend {
    pub calls: Arc<AtomicUsize>,
    pub rows: Arc<AtomicUsize>,
    width: usize,
    panics_on: Box<dyn Fn(usize) -> bool + Send>,
}

impl ScriptedBackend {
    pub fn new(width: usize) -> Self {
        Self::panicking_on(width, |_| false)
    }

    pub fn panicking_on(width: usize, panics_on: impl Fn(usize) -> bool + Send + 'static) -> Self {
        Self {
            calls: Arc::default(),
            rows: Arc::default(),
            width,
            panics_on: Box::new(panics_on),
        }
    }
}

impl Backend for ScriptedBackend {
    fn forward(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, BackendError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if (self.panics_on)(call) {
            panic!("scripted panic on call {call}");
        }
        self.rows.fetch_add(batch.batch_size, Ordering::SeqCst);
        Ok(batch
            .attention_mask
            .chunks(batch.seq_len.max(1))
            .map(|row| {
                let mut v = vec![
                    row.iter().sum::<u32>() as f32,
                    batch.batch_size as f32,
                    batch.seq_len as f32,
                ];
                v.resize(self.width.max(3), 0.0);
                v.truncate(self.width.max(1));
                v
            })
            .collect())
    }
}

/// The value of counter `name` for `model` in the process's metrics (0 when absent).
pub fn counter(name: &str, model: &str) -> u64 {
    static RENDER: OnceLock<Box<dyn Fn() -> String + Send + Sync>> = OnceLock::new();
    let render = RENDER.get_or_init(|| {
        let handle = keel_telemetry::metrics::install().expect("installing the recorder");
        Box::new(move || handle.render())
    });
    let prefix = format!("{name}{{model=\"{model}\"}} ");
    render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter's value"))
}

/// A folder under the temporary directory, removed when dropped.
pub struct TempFolder(PathBuf);

impl TempFolder {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "keel-engine-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The smallest folder the registry serves: a BERT embedding model of `width` dimensions
/// with a word-level tokenizer (no weights: the test's backend loader needs none).
pub fn embedding_folder(width: usize) -> TempFolder {
    let dir = TempFolder::new();
    let config = format!(
        r#"{{"model_type":"bert","architectures":["BertModel"],"hidden_size":{width},"max_position_embeddings":64}}"#
    );
    let tokenizer = r#"{
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "keel": 2, "warm": 3},
                  "unk_token": "[UNK]"}
    }"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer).unwrap();
    dir
}
