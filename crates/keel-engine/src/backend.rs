//! The seam between the engine and an inference engine (ONNX Runtime, candle).
//!
//! A backend gets a padded batch of tokens, or a stack of preprocessed images, and returns
//! one vector per input: the pooled (not yet normalized) embedding for embedding models, the
//! logits for classifiers. Everything around it (tokenization, decoding, batching, scores,
//! normalization) is shared.

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

/// One preprocessed image, `[3, height, width]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// Images of one size stacked as `[batch, 3, height, width]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub pixels: Vec<f32>,
    pub batch_size: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageBatch {
    /// Stacks images; `None` when they differ in size (one model's images never do).
    pub fn stack(images: &[&ImageTensor]) -> Option<Self> {
        let first = images.first()?;
        let (height, width) = (first.height, first.width);
        if images
            .iter()
            .any(|i| (i.height, i.width) != (height, width) || i.pixels.len() != 3 * height * width)
        {
            return None;
        }
        let mut pixels = Vec::with_capacity(images.len() * 3 * height * width);
        for image in images {
            pixels.extend_from_slice(&image.pixels);
        }
        Some(Self {
            pixels,
            batch_size: images.len(),
            height,
            width,
        })
    }
}

/// One input as the worker queues it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    Text(TokenizedInput),
    Image(ImageTensor),
}

impl ModelInput {
    /// What the input costs in the queue's unit: tokens for text; one for an image (a
    /// model's images all cost the same compute).
    pub fn cost(&self) -> usize {
        match self {
            ModelInput::Text(t) => t.len(),
            ModelInput::Image(_) => 1,
        }
    }
}

/// A batch as the worker hands it to the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    Text(EncodedBatch),
    Images(ImageBatch),
}

impl Batch {
    /// Builds the batch of `rows`, which must all be of one kind (one model's inputs are).
    pub fn of(rows: &[&ModelInput], pad_id: u32) -> Result<Self, BackendError> {
        let texts: Vec<&TokenizedInput> = rows
            .iter()
            .filter_map(|r| match r {
                ModelInput::Text(t) => Some(t),
                ModelInput::Image(_) => None,
            })
            .collect();
        if texts.len() == rows.len() {
            return Ok(Batch::Text(EncodedBatch::pad(&texts, pad_id)));
        }
        let images: Vec<&ImageTensor> = rows
            .iter()
            .filter_map(|r| match r {
                ModelInput::Image(i) => Some(i),
                ModelInput::Text(_) => None,
            })
            .collect();
        if images.len() == rows.len() {
            if let Some(batch) = ImageBatch::stack(&images) {
                return Ok(Batch::Images(batch));
            }
        }
        Err(BackendError::Inference(
            "a batch mixed inputs of different kinds or image sizes".into(),
        ))
    }

    pub fn batch_size(&self) -> usize {
        match self {
            Batch::Text(b) => b.batch_size,
            Batch::Images(b) => b.batch_size,
        }
    }

    /// Tokens for text (padding excluded); one per image.
    pub fn cost(&self) -> usize {
        match self {
            Batch::Text(b) => b.real_tokens(),
            Batch::Images(b) => b.batch_size,
        }
    }

    /// Padded sequence length; zero for images.
    pub fn seq_len(&self) -> usize {
        match self {
            Batch::Text(b) => b.seq_len,
            Batch::Images(_) => 0,
        }
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

    /// Runs a batch of images; only image models' backends take them.
    fn forward_images(&self, batch: &ImageBatch) -> Result<Vec<Vec<f32>>, BackendError> {
        let _ = batch;
        Err(BackendError::Inference(
            "this backend serves text models, not images".into(),
        ))
    }

    /// Runs either kind of batch.
    fn run(&self, batch: &Batch) -> Result<Vec<Vec<f32>>, BackendError> {
        match batch {
            Batch::Text(b) => self.forward(b),
            Batch::Images(b) => self.forward_images(b),
        }
    }
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

    #[test]
    fn images_stack_in_order_and_kinds_do_not_mix() {
        let image = |v: f32| {
            ModelInput::Image(ImageTensor {
                pixels: vec![v; 3 * 2 * 2],
                height: 2,
                width: 2,
            })
        };
        let (a, b) = (image(1.0), image(2.0));
        let Batch::Images(batch) = Batch::of(&[&a, &b], 0).unwrap() else {
            panic!("images make an image batch");
        };
        assert_eq!((batch.batch_size, batch.height, batch.width), (2, 2, 2));
        assert_eq!(batch.pixels[11], 1.0);
        assert_eq!(batch.pixels[12], 2.0);
        let text = ModelInput::Text(TokenizedInput {
            ids: vec![1],
            type_ids: vec![0],
        });
        assert!(Batch::of(&[&a, &text], 0).is_err());
        let small = ModelInput::Image(ImageTensor {
            pixels: vec![0.0; 3],
            height: 1,
            width: 1,
        });
        assert!(Batch::of(&[&a, &small], 0).is_err());
    }
}
