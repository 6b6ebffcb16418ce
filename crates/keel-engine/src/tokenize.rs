//! Text to token ids, with Keel's own length policy.
//!
//! A folder's `tokenizer.json` may carry its own padding and truncation (all-MiniLM-L6-v2's
//! pads every input to 128); both are replaced here: batches are padded to their longest
//! input by the worker, and truncation follows the model's limit and the `TRUNCATE` setting.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{EngineError, LoadError};

/// One tokenized input, ready for batching.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedInput {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl TokenizedInput {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
    truncate: bool,
    pad_id: u32,
}

impl TextTokenizer {
    pub fn load(dir: &Path, max_tokens: usize, truncate: bool) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        let failed = |e: tokenizers::Error| LoadError::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut inner = Tokenizer::from_file(&path).map_err(failed)?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(failed)?;
        let pad_id = ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        Ok(Self {
            inner,
            max_tokens,
            truncate,
            pad_id,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes `texts` in order. CPU-bound: call from a blocking thread.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedInput>, EngineError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                if text.trim().is_empty() {
                    return Err(EngineError::EmptyInput { index });
                }
                let enc = self
                    .inner
                    .encode(text.as_str(), true)
                    .map_err(|e| EngineError::Tokenization(e.to_string()))?;
                if !self.truncate && !enc.get_overflowing().is_empty() {
                    return Err(EngineError::InputTooLong {
                        index,
                        max: self.max_tokens,
                    });
                }
                Ok(TokenizedInput {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                })
            })
            .collect()
    }
}
