//! The BM25 analyzer: text into the terms both storage backends index and search.
//!
//! One analyzer for every backend is what makes their lexical scores equal: SQLite's FTS5
//! and PostgreSQL each get the terms already made here, never their own tokenizer's idea
//! of a word. A term is a lowercase run of letters and digits (so `url_for` is `url` and
//! `for`, the same on both backends), minus English stopwords, Snowball-stemmed.

use std::collections::BTreeMap;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation;

/// Lucene's English stopword list (also tantivy's): words too common to rank by.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
];

/// Longer runs are identifiers, hashes or base64, not words anyone searches for.
const MAX_TERM_CHARS: usize = 40;

/// A text's terms with their counts, and its length in terms (BM25's document length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analyzed {
    pub terms: BTreeMap<String, u32>,
    pub len: u32,
}

impl Analyzed {
    /// The terms in text order-free form, each repeated by its count, space-separated: what
    /// an FTS5 column is given so that its token count is [`Analyzed::len`].
    pub fn joined(&self) -> String {
        let mut out = String::new();
        for (term, &n) in &self.terms {
            for _ in 0..n {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(term);
            }
        }
        out
    }
}

/// Terms of `text`, in order, with repeats.
pub fn terms(text: &str) -> Vec<String> {
    let stemmer = Stemmer::create(Algorithm::English);
    let mut out = Vec::new();
    for word in text.unicode_words() {
        for part in word.split(|c: char| !c.is_alphanumeric()) {
            if part.is_empty() || part.chars().count() > MAX_TERM_CHARS {
                continue;
            }
            let lower = part.to_lowercase();
            if STOPWORDS.contains(&lower.as_str()) {
                continue;
            }
            out.push(stemmer.stem(&lower).into_owned());
        }
    }
    out
}

/// A chunk's terms for the index.
pub fn analyze(text: &str) -> Analyzed {
    let mut counts = BTreeMap::new();
    let mut len = 0u32;
    for term in terms(text) {
        *counts.entry(term).or_insert(0) += 1;
        len += 1;
    }
    Analyzed { terms: counts, len }
}

/// A query's distinct terms, in first-seen order.
pub fn analyze_query(text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for term in terms(text) {
        if !seen.contains(&term) {
            seen.push(term);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_split_stemmed_and_stopwords_dropped() {
        assert_eq!(
            terms("The Running of url_for() in Flask's templates, 2 times!"),
            ["run", "url", "flask", "s", "templat", "2", "time"]
        );
    }

    #[test]
    fn counts_and_length_agree_with_the_joined_form() {
        let a = analyze("Routing routes route; the router routed.");
        assert_eq!(a.len, 5);
        assert_eq!(a.terms.get("rout"), Some(&4));
        assert_eq!(a.joined().split(' ').count(), a.len as usize);
    }

    #[test]
    fn queries_are_deduplicated_in_order() {
        assert_eq!(
            analyze_query("session sessions cookie Session"),
            ["session", "cooki"]
        );
        assert!(analyze_query("the of and").is_empty());
    }

    #[test]
    fn non_latin_words_are_terms_and_runaway_tokens_are_not() {
        assert_eq!(terms("Привет мир"), ["привет", "мир"]);
        assert!(terms(&"x".repeat(41)).is_empty());
    }
}
