//! A document into chunks that the embedding model reads whole.
//!
//! Tokens are counted with the embedding model's own tokenizer (through [`TokenSpans`]), so a
//! chunk is never longer than the model's input limit and nothing in it is silently
//! truncated away. Blocks are grouped into sections by heading path and packed greedily;
//! a chunk never spans two sections, and its heading path (`A > B`) is embedded with it but
//! counted against the budget. A chunk ends, in order of preference, before a block, after a
//! sentence or a line, between words, or (for a run longer than the budget) between tokens.
//! Consecutive chunks of a section overlap by up to `overlap_tokens`, starting on a word.
//! Every chunk is a slice of the document's text, so it can be quoted back verbatim.

use std::ops::Range;

use serde_json::Value;

use crate::error::RagError;
use crate::extract::Document;

/// The embedding model's tokenizer, as chunking needs it.
pub trait TokenSpans {
    /// Byte ranges in `text` of its content tokens: no special tokens, no truncation.
    fn spans(&self, text: &str) -> Result<Vec<Range<usize>>, RagError>;
}

/// OpenAI's `static` chunking strategy, resolved against the embedding model's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStrategy {
    pub max_tokens: u32,
    pub overlap_tokens: u32,
}

/// OpenAI's bounds on `max_chunk_size_tokens`.
const OPENAI_MIN_TOKENS: u32 = 100;
const OPENAI_MAX_TOKENS: u32 = 4096;

impl ChunkStrategy {
    /// The default: the model's whole input limit, overlapping by a quarter. (OpenAI's own
    /// 800/400 would leave most of each chunk past all-MiniLM-L6-v2's 256 tokens unread.)
    pub fn auto(model_limit: u32) -> Self {
        Self {
            max_tokens: model_limit,
            overlap_tokens: model_limit / 4,
        }
    }

    /// Reads `chunking_strategy` (`{"type": "auto"}` or `{"type": "static", "static":
    /// {"max_chunk_size_tokens", "chunk_overlap_tokens"}}`); `path` names it in errors.
    pub fn resolve(param: Option<&Value>, model_limit: u32, path: &str) -> Result<Self, RagError> {
        let invalid = |field: &str, msg: String| RagError::Invalid(format!("{path}{field}: {msg}"));
        let Some(param) = param.filter(|v| !v.is_null()) else {
            return Ok(Self::auto(model_limit));
        };
        let kind = param.get("type").and_then(Value::as_str);
        match kind {
            Some("auto") => return Ok(Self::auto(model_limit)),
            Some("static") => {}
            _ => return Err(invalid(".type", "must be 'auto' or 'static'".into())),
        }
        let Some(fields) = param.get("static").filter(|v| v.is_object()) else {
            return Err(invalid(
                ".static",
                "is required for the 'static' type".into(),
            ));
        };
        let number = |name: &str| -> Result<u32, RagError> {
            fields
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid(&format!(".static.{name}"), "must be a whole number".into()))
        };
        let max = number("max_chunk_size_tokens")?;
        let overlap = number("chunk_overlap_tokens")?;
        let min = OPENAI_MIN_TOKENS.min(model_limit);
        if !(min..=OPENAI_MAX_TOKENS).contains(&max) {
            return Err(invalid(
                ".static.max_chunk_size_tokens",
                format!("{max} is outside {min}..={OPENAI_MAX_TOKENS}"),
            ));
        }
        if max > model_limit {
            return Err(invalid(
                ".static.max_chunk_size_tokens",
                format!(
                    "{max} is more than the embedding model reads ({model_limit} tokens); \
                     the rest of each chunk would never be embedded"
                ),
            ));
        }
        if overlap > max / 2 {
            return Err(invalid(
                ".static.chunk_overlap_tokens",
                format!("{overlap} is more than half of max_chunk_size_tokens ({max})"),
            ));
        }
        Ok(Self {
            max_tokens: max,
            overlap_tokens: overlap,
        })
    }
}

/// A slice of a document, ready to embed and index.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// The heading path, `A > B`; empty when there is none.
    pub headings: String,
    /// Byte range in the document's text.
    pub range: Range<usize>,
    /// Tokens of the text plus those of the heading path: what the model reads.
    pub tokens: u32,
}

impl Chunk {
    /// What is embedded: the heading path gives a short passage its context.
    pub fn embedding_input(&self) -> String {
        if self.headings.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n\n{}", self.headings, self.text)
        }
    }
}

struct Token {
    range: Range<usize>,
    starts_block: bool,
}

/// Chunks `doc` under `strategy`.
pub fn chunk(
    doc: &Document,
    strategy: ChunkStrategy,
    tokenizer: &dyn TokenSpans,
) -> Result<Vec<Chunk>, RagError> {
    let max = strategy.max_tokens as usize;
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < doc.blocks.len() {
        let headings = &doc.blocks[i].headings;
        let mut j = i;
        while j < doc.blocks.len() && doc.blocks[j].headings == *headings {
            j += 1;
        }
        let (breadcrumb, heading_tokens) = breadcrumb(headings, max, tokenizer)?;
        let mut tokens = Vec::new();
        for block in &doc.blocks[i..j] {
            let start = block.range.start;
            let spans = tokenizer.spans(doc.block_text(block))?;
            tokens.extend(spans.into_iter().enumerate().map(|(k, r)| Token {
                range: r.start + start..r.end + start,
                starts_block: k == 0,
            }));
        }
        let budget = max - heading_tokens;
        for window in windows(&doc.text, &tokens, budget, strategy.overlap_tokens as usize) {
            let range = tokens[window.start].range.start..tokens[window.end - 1].range.end;
            chunks.push(Chunk {
                text: doc.text[range.clone()].to_owned(),
                headings: breadcrumb.clone(),
                range,
                tokens: (window.len() + heading_tokens) as u32,
            });
        }
        i = j;
    }
    Ok(chunks)
}

/// The heading path and its token count, shortened to the last heading (or dropped) when it
/// would take more than half of a chunk.
fn breadcrumb(
    headings: &[String],
    max: usize,
    tokenizer: &dyn TokenSpans,
) -> Result<(String, usize), RagError> {
    for candidate in [
        headings.join(" > "),
        headings.last().cloned().unwrap_or_default(),
    ] {
        if candidate.is_empty() {
            break;
        }
        let n = tokenizer.spans(&format!("{candidate}\n\n"))?.len();
        if n <= max / 2 {
            return Ok((candidate, n));
        }
    }
    Ok((String::new(), 0))
}

/// Token windows of at most `budget` tokens covering all of `tokens`.
fn windows(text: &str, tokens: &[Token], budget: usize, overlap: usize) -> Vec<Range<usize>> {
    let n = tokens.len();
    let gap = |j: usize| &text[tokens[j - 1].range.end..tokens[j].range.start];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let end = if n - i <= budget {
            n
        } else {
            let limit = i + budget;
            let floor = i + (budget / 2).max(1);
            let best = |ok: &dyn Fn(usize) -> bool| (floor + 1..=limit).rev().find(|&j| ok(j));
            best(&|j| tokens[j].starts_block)
                .or_else(|| {
                    best(&|j| {
                        let g = gap(j);
                        g.contains('\n')
                            || (!g.is_empty()
                                && text[tokens[j - 1].range.clone()].ends_with(['.', '!', '?']))
                    })
                })
                .or_else(|| best(&|j| !gap(j).is_empty()))
                .unwrap_or(limit)
        };
        out.push(i..end);
        if end == n {
            break;
        }
        let mut next = end.saturating_sub(overlap).max(i + 1);
        while next < end && gap(next).is_empty() {
            next += 1;
        }
        i = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::extract;
    use serde_json::json;

    /// all-MiniLM-L6-v2's tokenizer, as `make models` unpacks it.
    struct MiniLm(tokenizers::Tokenizer);

    impl MiniLm {
        fn load() -> Self {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/all-MiniLM-L6-v2/tokenizer.json"
            );
            let mut t = tokenizers::Tokenizer::from_file(path)
                .unwrap_or_else(|e| panic!("{path}: {e} (run `make models`)"));
            t.with_truncation(None).unwrap();
            t.with_padding(None);
            Self(t)
        }
    }

    impl TokenSpans for MiniLm {
        fn spans(&self, text: &str) -> Result<Vec<Range<usize>>, RagError> {
            let enc = self
                .0
                .encode(text, false)
                .map_err(|e| RagError::Tokenizer(e.to_string()))?;
            Ok(enc.get_offsets().iter().map(|&(a, b)| a..b).collect())
        }
    }

    fn resolve(v: Value, limit: u32) -> Result<ChunkStrategy, String> {
        ChunkStrategy::resolve(Some(&v), limit, "chunking_strategy").map_err(|e| e.to_string())
    }

    #[test]
    fn auto_is_the_model_limit_with_a_quarter_overlap() {
        let auto = ChunkStrategy {
            max_tokens: 254,
            overlap_tokens: 63,
        };
        assert_eq!(ChunkStrategy::resolve(None, 254, "c").unwrap(), auto);
        assert_eq!(resolve(json!({"type": "auto"}), 254).unwrap(), auto);
        let fixed = json!({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}});
        assert_eq!(
            resolve(fixed, 254).unwrap(),
            ChunkStrategy {
                max_tokens: 200,
                overlap_tokens: 100
            }
        );
    }

    #[test]
    fn sizes_openai_refuses_or_the_model_cannot_read_are_refused() {
        let s = |max: u64, overlap: u64| json!({"type": "static", "static": {"max_chunk_size_tokens": max, "chunk_overlap_tokens": overlap}});
        let cases = [
            (s(800, 400), "chunking_strategy.static.max_chunk_size_tokens: 800 is more than the embedding model reads (254 tokens)"),
            (s(4097, 0), "chunking_strategy.static.max_chunk_size_tokens: 4097 is outside 100..=4096"),
            (s(99, 0), "chunking_strategy.static.max_chunk_size_tokens: 99 is outside"),
            (s(200, 101), "chunking_strategy.static.chunk_overlap_tokens: 101 is more than half"),
            (json!({"type": "static"}), "chunking_strategy.static: is required"),
            (json!({"type": "other"}), "chunking_strategy.type: must be 'auto' or 'static'"),
            (json!({"type": "static", "static": {"max_chunk_size_tokens": -1, "chunk_overlap_tokens": 0}}), "chunking_strategy.static.max_chunk_size_tokens: must be a whole number"),
        ];
        for (param, want) in cases {
            let err = resolve(param.clone(), 254).unwrap_err();
            assert!(err.starts_with(want), "{param}: {err}");
        }
    }

    /// A long Markdown document: sections of prose, a long code block and a huge word.
    fn sample() -> String {
        let mut md = String::new();
        for s in 0..4 {
            md.push_str(&format!("# Part {s}\n\n"));
            for p in 0..6 {
                for k in 0..(3 + p * 5) {
                    md.push_str(&format!(
                        "Sentence {k} of paragraph {p} explains routing, sessions and url_for(). "
                    ));
                }
                md.push_str("\n\n");
            }
            md.push_str(&format!("## Code {s}\n\n```python\n"));
            for k in 0..120 {
                md.push_str(&format!("app.add_url_rule('/r{k}', view_func=v{k})\n"));
            }
            md.push_str("```\n\n");
        }
        md.push_str("# Blob\n\n");
        md.push_str(&"abcdefghij".repeat(300));
        md.push('\n');
        md
    }

    #[test]
    fn chunks_fit_the_model_cover_the_text_and_stay_in_their_section() {
        let tok = MiniLm::load();
        let md = sample();
        let doc = extract(md.as_bytes(), "guide.md").unwrap();
        for strategy in [
            ChunkStrategy::auto(254),
            ChunkStrategy {
                max_tokens: 100,
                overlap_tokens: 0,
            },
        ] {
            let chunks = chunk(&doc, strategy, &tok).unwrap();
            assert!(chunks.len() > 10);
            let mut covered = vec![false; doc.text.len()];
            for c in &chunks {
                assert_eq!(c.text, doc.text[c.range.clone()]);
                // Re-tokenized as the model will see it: within the limit.
                let n = tok.spans(&c.embedding_input()).unwrap().len();
                assert!(
                    n <= strategy.max_tokens as usize,
                    "{n} tokens: {:?}",
                    c.embedding_input()
                );
                assert!(c.tokens <= strategy.max_tokens);
                // Inside one section: the range lies within blocks sharing the chunk's path.
                let sections: Vec<&Vec<String>> = doc
                    .blocks
                    .iter()
                    .filter(|b| b.range.start < c.range.end && c.range.start < b.range.end)
                    .map(|b| &b.headings)
                    .collect();
                assert!(sections.windows(2).all(|w| w[0] == w[1]));
                assert!(
                    c.headings.starts_with("Part") || c.headings.starts_with("Blob"),
                    "{}",
                    c.headings
                );
                covered[c.range.clone()].iter_mut().for_each(|x| *x = true);
            }
            for b in &doc.blocks {
                for (k, ch) in doc.block_text(b).char_indices() {
                    assert!(
                        ch.is_whitespace() || covered[b.range.start + k],
                        "byte {} uncovered",
                        b.range.start + k
                    );
                }
            }
        }
    }

    #[test]
    fn chunks_overlap_within_a_section_and_prefer_sentence_ends() {
        let tok = MiniLm::load();
        let text = "One short sentence about sessions here. ".repeat(100);
        let doc = extract(text.as_bytes(), "a.txt").unwrap();
        let strategy = ChunkStrategy {
            max_tokens: 100,
            overlap_tokens: 25,
        };
        let chunks = chunk(&doc, strategy, &tok).unwrap();
        assert!(chunks.len() >= 4);
        for pair in chunks.windows(2) {
            assert!(pair[1].range.start < pair[0].range.end, "no overlap");
            let shared = pair[0].range.end - pair[1].range.start;
            assert!(
                tok.spans(&doc.text[pair[1].range.start..pair[0].range.end])
                    .unwrap()
                    .len()
                    <= 25,
                "{shared}"
            );
        }
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.text.ends_with('.'), "{:?}", c.text);
        }
        let none = chunk(
            &doc,
            ChunkStrategy {
                max_tokens: 100,
                overlap_tokens: 0,
            },
            &tok,
        )
        .unwrap();
        assert!(none.windows(2).all(|p| p[1].range.start >= p[0].range.end));
    }

    #[test]
    fn no_overlap_across_sections() {
        let tok = MiniLm::load();
        let md = format!(
            "# A\n\n{}\n\n# B\n\n{}\n",
            "alpha beta. ".repeat(200),
            "gamma delta. ".repeat(200)
        );
        let doc = extract(md.as_bytes(), "x.md").unwrap();
        let chunks = chunk(&doc, ChunkStrategy::auto(254), &tok).unwrap();
        let first_b = chunks.iter().position(|c| c.headings == "B").unwrap();
        assert!(chunks[first_b].text.starts_with("gamma"));
        assert!(chunks[..first_b].iter().all(|c| !c.text.contains("gamma")));
    }
}
