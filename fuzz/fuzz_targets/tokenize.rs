//! Fuzzes the tokenization path: `keel_engine::tokenize::TextTokenizer::encode` on a real
//! model's `tokenizer.json` (`KEEL_FUZZ_MODEL_DIR`, by default `models/all-MiniLM-L6-v2` at
//! the repo root).
//!
//! Input format: the first byte picks the length limit (even, e.g. ASCII `0`: the model's
//! own; odd, e.g. `1`: 8 tokens, so that short inputs truncate too); the rest becomes a
//! string with `String::from_utf8_lossy`, split on ASCII RS (0x1E) into at most 8 texts.
//! Each text is encoded with truncation on and off. Asserted, besides "no panic":
//! - a text that is empty or whitespace is refused with `EmptyInput` for its index;
//! - with truncation, every other text gives 1..=max_tokens ids, as many type ids, and
//!   every id is in the vocabulary;
//! - without truncation, a text gives exactly what truncation gives, or `InputTooLong`
//!   (and then truncation cut it to exactly max_tokens);
//! - a batch of several texts gives, in order, what its texts give one at a time (or the
//!   first failing text's error, with its index).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use keel_engine::tokenize::{TextTokenizer, TokenizedInput};
use keel_engine::{EngineError, ModelSpec};
use libfuzzer_sys::fuzz_target;

const SEPARATOR: char = '\u{1e}';
const MAX_TEXTS: usize = 8;
const SMALL_MAX_TOKENS: usize = 8;

/// Tokenizers for one length limit, truncating and not.
struct Pair {
    max_tokens: usize,
    truncating: TextTokenizer,
    strict: TextTokenizer,
}

struct Harness {
    pairs: Vec<Pair>,
    vocab_size: usize,
}

fn model_dir() -> PathBuf {
    std::env::var_os("KEEL_FUZZ_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        })
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = model_dir();
        let spec = ModelSpec::inspect(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot inspect {} (run `make models`, or set KEEL_FUZZ_MODEL_DIR): {e}",
                dir.display()
            )
        });
        let vocab_size = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .expect("tokenizer.json loads")
            .get_vocab_size(true);
        let pairs = [spec.max_input_tokens, SMALL_MAX_TOKENS]
            .into_iter()
            .map(|max_tokens| Pair {
                max_tokens,
                truncating: TextTokenizer::load(&dir, max_tokens, true).expect("tokenizer loads"),
                strict: TextTokenizer::load(&dir, max_tokens, false).expect("tokenizer loads"),
            })
            .collect();
        Harness { pairs, vocab_size }
    })
}

/// What one text gives alone, through both tokenizers of a pair.
enum Outcome {
    Empty,
    Failed,
    /// The tokens with truncation; `too_long`: refused without it.
    Tokens {
        tokens: TokenizedInput,
        too_long: bool,
    },
}

fn check_one(pair: &Pair, vocab_size: usize, text: &str) -> Outcome {
    let input = [text.to_string()];
    let max = pair.max_tokens;
    let truncated = pair.truncating.encode(&input);
    let strict = pair.strict.encode(&input);
    if text.trim().is_empty() {
        assert!(
            matches!(truncated, Err(EngineError::EmptyInput { index: 0 })),
            "{text:?}: expected EmptyInput with truncation, got {truncated:?}"
        );
        assert!(
            matches!(strict, Err(EngineError::EmptyInput { index: 0 })),
            "{text:?}: expected EmptyInput without truncation, got {strict:?}"
        );
        return Outcome::Empty;
    }
    let tokens = match truncated {
        Ok(mut v) => {
            assert_eq!(v.len(), 1, "{text:?}: one text, {} results", v.len());
            v.pop().unwrap()
        }
        // The tokenizer may refuse a text: an error, not a panic, is all that is asked.
        Err(EngineError::Tokenization(e)) => {
            assert!(
                matches!(strict, Err(EngineError::Tokenization(_))),
                "{text:?}: tokenization failed only with truncation ({e}); without: {strict:?}"
            );
            return Outcome::Failed;
        }
        Err(e) => panic!("{text:?}: unexpected error with truncation: {e:?}"),
    };
    assert!(
        (1..=max).contains(&tokens.len()),
        "{text:?}: {} tokens with truncation at {max}",
        tokens.len()
    );
    assert_eq!(
        tokens.ids.len(),
        tokens.type_ids.len(),
        "{text:?}: ids vs type ids"
    );
    assert!(
        tokens.ids.iter().all(|&id| (id as usize) < vocab_size),
        "{text:?}: an id beyond the vocabulary ({vocab_size}): {:?}",
        tokens.ids
    );
    let too_long = match strict {
        Ok(v) => {
            assert_eq!(
                v.as_slice(),
                std::slice::from_ref(&tokens),
                "{text:?}: truncation changed a text that fits"
            );
            false
        }
        Err(EngineError::InputTooLong { index: 0, max: m }) => {
            assert_eq!(m, max, "{text:?}: InputTooLong reports the wrong limit");
            assert_eq!(
                tokens.len(),
                max,
                "{text:?}: too long without truncation, but truncation gave {} of {max}",
                tokens.len()
            );
            true
        }
        Err(e) => panic!("{text:?}: unexpected error without truncation: {e:?}"),
    };
    Outcome::Tokens { tokens, too_long }
}

/// A batch gives its texts' results in order, or the first text's error with its index.
fn check_batch(tokenizer: &TextTokenizer, texts: &[String], alone: &[Outcome], truncating: bool) {
    let result = tokenizer.encode(texts);
    let mut expected = Vec::with_capacity(texts.len());
    for (index, outcome) in alone.iter().enumerate() {
        let (tokens, too_long) = match outcome {
            Outcome::Empty => {
                assert!(
                    matches!(result, Err(EngineError::EmptyInput { index: i }) if i == index),
                    "batch {texts:?}: text {index} is empty, got {result:?}"
                );
                return;
            }
            Outcome::Failed => {
                assert!(
                    matches!(result, Err(EngineError::Tokenization(_))),
                    "batch {texts:?}: text {index} fails to tokenize, got {result:?}"
                );
                return;
            }
            Outcome::Tokens { tokens, too_long } => (tokens, *too_long),
        };
        if too_long && !truncating {
            assert!(
                matches!(result, Err(EngineError::InputTooLong { index: i, .. }) if i == index),
                "batch {texts:?}: text {index} is too long, got {result:?}"
            );
            return;
        }
        expected.push(tokens.clone());
    }
    match result {
        Ok(v) => assert_eq!(v, expected, "batch {texts:?}: differs from its texts alone"),
        Err(e) => panic!("batch {texts:?}: unexpected error {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let pair = &h.pairs[usize::from(limit) % h.pairs.len()];
    let text = String::from_utf8_lossy(rest);
    let texts: Vec<String> = text
        .splitn(MAX_TEXTS, SEPARATOR)
        .map(str::to_string)
        .collect();
    let alone: Vec<Outcome> = texts
        .iter()
        .map(|t| check_one(pair, h.vocab_size, t))
        .collect();
    // A batch of one is what check_one encoded already.
    if texts.len() > 1 {
        check_batch(&pair.truncating, &texts, &alone, true);
        check_batch(&pair.strict, &texts, &alone, false);
    }
});
