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
    /// The same tokenizer without truncation, for [`TextTokenizer::content_spans`].
    untruncated: Tokenizer,
    max_tokens: usize,
    /// Tokens the post-processor adds around one input ([CLS] and [SEP] for BERT).
    specials: usize,
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
        let mut untruncated = inner.clone();
        untruncated.with_truncation(None).map_err(failed)?;
        let specials = match (
            untruncated.encode("a", true),
            untruncated.encode("a", false),
        ) {
            (Ok(with), Ok(without)) => with.len().saturating_sub(without.len()),
            (Err(e), _) | (_, Err(e)) => return Err(failed(e)),
        };
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
            untruncated,
            max_tokens,
            specials,
            truncate,
            pad_id,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Content tokens one input can hold: the limit less the special tokens around it
    /// (254 for all-MiniLM-L6-v2). A chunk this long is embedded whole.
    pub fn content_limit(&self) -> usize {
        self.max_tokens.saturating_sub(self.specials)
    }

    /// Byte ranges of the content tokens of `text`: no special tokens, no truncation. For
    /// cutting text into model-sized pieces; callers bound the text they pass.
    pub fn content_spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, EngineError> {
        let enc = self
            .untruncated
            .encode(text, false)
            .map_err(|e| EngineError::Tokenization(e.to_string()))?;
        Ok(enc.get_offsets().iter().map(|&(a, b)| a..b).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> TextTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
        TextTokenizer::load(&dir, 256, true).expect("run `make models`")
    }

    #[test]
    fn content_limit_leaves_room_for_the_special_tokens() {
        assert_eq!(minilm().content_limit(), 254);
    }

    #[test]
    fn content_spans_cover_long_text_untruncated_and_slice_back_to_it() {
        let tok = minilm();
        let text = "Flask's url_for() builds URLs. ".repeat(100);
        let spans = tok.content_spans(&text).unwrap();
        assert!(spans.len() > 256, "{} spans", spans.len());
        assert_eq!(spans[0].start, 0);
        assert!(spans.windows(2).all(|w| w[0].end <= w[1].start));
        let rebuilt: String = spans.iter().map(|r| &text[r.clone()]).collect();
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(rebuilt, squeezed);
        // The request path still truncates at the limit.
        assert_eq!(tok.encode(&[text]).unwrap()[0].len(), 256);
    }
}
