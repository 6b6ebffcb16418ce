//! The seam between the engine and an inference engine (candle today, ONNX Runtime next).
//!
//! A backend gets a padded batch and returns one vector per input: the pooled (not yet
//! normalized) embedding for embedding models, the logits for classifiers. Everything
//! around it (tokenization, batching, scores, normalization) is shared.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::spec::ModelSpec;
use crate::tokenize::TokenizedInput;

/// Inputs padded to the longest one, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBatch {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

impl EncodedBatch {
    pub fn pad(inputs: &[&TokenizedInput], pad_id: u32) -> Self {
        let seq_len = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
        let n = inputs.len() * seq_len;
        let (mut input_ids, mut type_ids, mut attention_mask) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for input in inputs {
            let pad = seq_len - input.len();
            input_ids.extend_from_slice(&input.ids);
            input_ids.extend(std::iter::repeat_n(pad_id, pad));
            type_ids.extend_from_slice(&input.type_ids);
            type_ids.extend(std::iter::repeat_n(0, pad));
            attention_mask.extend(std::iter::repeat_n(1, input.len()));
            attention_mask.extend(std::iter::repeat_n(0, pad));
        }
        Self {
            input_ids,
            type_ids,
            attention_mask,
            batch_size: inputs.len(),
            seq_len,
        }
    }

    /// Real (unpadded) tokens in the batch.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask.iter().map(|&m| m as usize).sum()
    }
}

/// What a backend reports; the text of each variant is the whole message (callers add no
/// prefix of their own beyond the model's folder).
#[derive(Debug, Error)]
pub enum BackendError {
    /// The inference engine itself could not be set up (e.g. its shared library).
    #[error("{0}")]
    Runtime(String),
    /// A model folder's weights or graph could not be loaded.
    #[error("{}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    /// A forward pass failed.
    #[error("{0}")]
    Inference(String),
}

impl BackendError {
    /// A load failure of the model in `dir`.
    pub fn load(dir: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Load {
            path: dir.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

pub trait Backend: Send {
    /// Runs one batch; returns `batch_size` vectors of the model's output width.
    fn forward(&self, batch: &EncodedBatch) -> Result<Vec<Vec<f32>>, BackendError>;
}

/// Builds the backend for a model folder; chosen by the binary, so the engine stays free of
/// heavy native dependencies.
pub type BackendLoader =
    Arc<dyn Fn(&ModelSpec) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_input_with_a_mask() {
        let a = TokenizedInput {
            ids: vec![101, 7, 102],
            type_ids: vec![0, 0, 0],
        };
        let b = TokenizedInput {
            ids: vec![101, 102],
            type_ids: vec![0, 0],
        };
        let batch = EncodedBatch::pad(&[&a, &b], 0);
        assert_eq!(batch.seq_len, 3);
        assert_eq!(batch.input_ids, [101, 7, 102, 101, 102, 0]);
        assert_eq!(batch.attention_mask, [1, 1, 1, 1, 1, 0]);
        assert_eq!(batch.real_tokens(), 5);
    }
}
