//! Answering from retrieved passages: the prompt that numbers them, the parser that turns the
//! model's `[n]` markers into citations, and the degraded answer when no model can write one.
//!
//! Citation indexes count Unicode scalar values (code points), as Python's `str` does: the
//! OpenAI SDK's users slice `output_text` with them.

/// A passage retrieved for an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub file_id: String,
    pub filename: String,
    pub text: String,
    pub score: f32,
}

/// A citation of passage `passage` (0-based) at `index` code points into the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Citation {
    pub passage: usize,
    pub index: usize,
}

const RULE: &str = "Answer the question using only the numbered sources below. After each \
    sentence that uses a source, cite it as [n]. If the sources do not contain the answer, \
    say that you do not know.";

/// The system message: the caller's instructions, the rule, then `[n] (filename) text` for
/// as many passages as fit in `budget_chars` (at least one, cut to the budget). Returns the
/// message and how many passages it holds.
pub fn system_prompt(
    instructions: Option<&str>,
    passages: &[Passage],
    budget_chars: usize,
) -> (String, usize) {
    let mut out = String::new();
    if let Some(i) = instructions.filter(|i| !i.trim().is_empty()) {
        out.push_str(i.trim());
        out.push_str("\n\n");
    }
    out.push_str(RULE);
    out.push_str("\n\nSources:\n");
    let mut used = 0;
    let mut spent = 0;
    for (n, p) in passages.iter().enumerate() {
        let entry = format!("\n[{}] ({}) {}\n", n + 1, p.filename, p.text.trim());
        let len = entry.chars().count();
        if used > 0 && spent + len > budget_chars {
            break;
        }
        if used == 0 && len > budget_chars {
            out.extend(entry.chars().take(budget_chars.max(1)));
            out.push('\n');
        } else {
            out.push_str(&entry);
        }
        spent += len;
        used += 1;
    }
    (out, used)
}

/// Longest marker held back while it may still be one: `[12, 34, 5]`.
const MAX_MARKER: usize = 16;

/// Turns `[n]` and `[n, m]` markers in streamed text into citations and removes them.
/// Anything that is not a marker of a passage that exists passes through unchanged.
#[derive(Debug)]
pub struct CitationParser {
    passages: usize,
    held: String,
    emitted: usize,
    citations: Vec<Citation>,
}

impl CitationParser {
    pub fn new(passages: usize) -> Self {
        Self {
            passages,
            held: String::new(),
            emitted: 0,
            citations: Vec::new(),
        }
    }

    /// Feeds a piece of the answer; returns the text that may be shown now and the
    /// citations it completed.
    pub fn feed(&mut self, delta: &str) -> (String, Vec<Citation>) {
        let mut text = String::new();
        let mut found = Vec::new();
        for c in delta.chars() {
            if self.held.is_empty() {
                if c == '[' {
                    self.held.push(c);
                } else {
                    self.emit(&mut text, c);
                }
                continue;
            }
            self.held.push(c);
            if c == ']' {
                let held = std::mem::take(&mut self.held);
                match self.marker(&held) {
                    Some(numbers) => {
                        for n in numbers {
                            let citation = Citation {
                                passage: n,
                                index: self.emitted,
                            };
                            // The same source twice in a row is one citation.
                            if self.citations.last() != Some(&citation) {
                                self.citations.push(citation);
                                found.push(citation);
                            }
                        }
                    }
                    None => self.release(&mut text, &held),
                }
            } else if !(c.is_ascii_digit() || c == ',' || c == ' ') || self.held.len() > MAX_MARKER
            {
                let held = std::mem::take(&mut self.held);
                // The last character may open a marker of its own.
                let (rest, last) = held.split_at(held.len() - c.len_utf8());
                self.release(&mut text, rest);
                if last == "[" {
                    self.held.push('[');
                } else {
                    self.release(&mut text, last);
                }
            }
        }
        (text, found)
    }

    /// Ends the answer: releases anything held back.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        let mut text = String::new();
        self.release(&mut text, &held);
        text
    }

    /// Ends the answer: releases anything held back and, when the model cited nothing,
    /// cites the best files at the end ([`fallback_citations`]). Returns the released text
    /// and the citations this added.
    pub fn finish_citing(&mut self, passages: &[Passage]) -> (String, Vec<Citation>) {
        let tail = self.finish();
        if !self.citations.is_empty() {
            return (tail, Vec::new());
        }
        let added = fallback_citations(passages, self.emitted);
        self.citations.extend_from_slice(&added);
        (tail, added)
    }

    /// Every citation so far, in order.
    pub fn citations(&self) -> &[Citation] {
        &self.citations
    }

    fn emit(&mut self, text: &mut String, c: char) {
        text.push(c);
        self.emitted += 1;
    }

    fn release(&mut self, text: &mut String, s: &str) {
        for c in s.chars() {
            self.emit(text, c);
        }
    }

    /// The 0-based passages a complete `[...]` names, if it is a marker.
    fn marker(&self, held: &str) -> Option<Vec<usize>> {
        let inner = held.strip_prefix('[')?.strip_suffix(']')?;
        let numbers: Option<Vec<usize>> = inner
            .split(',')
            .map(|n| n.trim().parse::<usize>().ok())
            .collect();
        let numbers = numbers?;
        numbers
            .iter()
            .all(|n| (1..=self.passages).contains(n))
            .then(|| numbers.iter().map(|n| n - 1).collect())
    }
}

/// When the model cited nothing: the best passages of up to three distinct files, cited at
/// the end of the answer, so that the reader can still find where it came from.
pub fn fallback_citations(passages: &[Passage], answer_len: usize) -> Vec<Citation> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (i, p) in passages.iter().enumerate() {
        if seen.len() == 3 {
            break;
        }
        if !seen.contains(&p.file_id.as_str()) {
            seen.push(&p.file_id);
            out.push(Citation {
                passage: i,
                index: answer_len,
            });
        }
    }
    out
}

/// The degraded answer: the passages themselves, each followed by its citation.
pub fn degraded_answer(passages: &[Passage]) -> (String, Vec<Citation>) {
    let mut text = String::from(if passages.is_empty() {
        "No answer could be generated right now, and no passages matched the question."
    } else {
        "No answer could be generated right now. These are the passages that match the \
         question best:"
    });
    let mut citations = Vec::new();
    for (i, p) in passages.iter().enumerate() {
        text.push_str(&format!(
            "\n\n[{}] {}: {}",
            i + 1,
            p.filename,
            p.text.trim()
        ));
        citations.push(Citation {
            passage: i,
            index: text.chars().count(),
        });
    }
    (text, citations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(file: &str, text: &str) -> Passage {
        Passage {
            file_id: file.into(),
            filename: format!("{file}.md"),
            text: text.into(),
            score: 1.0,
        }
    }

    fn parse_in_pieces(text: &str, size: usize, passages: usize) -> (String, Vec<Citation>) {
        let mut p = CitationParser::new(passages);
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        for piece in chars.chunks(size) {
            let (t, _) = p.feed(&piece.iter().collect::<String>());
            out.push_str(&t);
        }
        out.push_str(&p.finish());
        (out, p.citations().to_vec())
    }

    #[test]
    fn markers_become_citations_at_code_point_indexes_whatever_the_pieces() {
        let text = "Café opens at 9 [1]. It closes late [2, 1]. Not [9] or [x] or [3.";
        for size in [1, 2, 3, 7, 100] {
            let (out, cites) = parse_in_pieces(text, size, 2);
            assert_eq!(
                out,
                "Café opens at 9 . It closes late . Not [9] or [x] or [3."
            );
            let at = |s: &str| out[..out.find(s).unwrap()].chars().count();
            assert_eq!(
                cites,
                vec![
                    Citation {
                        passage: 0,
                        index: at(". It")
                    },
                    Citation {
                        passage: 1,
                        index: at(". Not")
                    },
                    Citation {
                        passage: 0,
                        index: at(". Not")
                    },
                ],
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn a_bracket_that_is_not_a_marker_is_released_and_may_open_the_next() {
        let (out, cites) = parse_in_pieces("a[b [[1] [1][1] [12345678901234567890]", 1, 1);
        assert_eq!(out, "a[b [  [12345678901234567890]");
        assert_eq!(cites.len(), 2, "{cites:?}");
    }

    #[test]
    fn an_answer_without_markers_cites_the_best_files_at_its_end() {
        let ps = vec![passage("a", "x"), passage("a", "y"), passage("b", "z")];
        let mut p = CitationParser::new(ps.len());
        let (text, _) = p.feed("Plain [x");
        let (tail, added) = p.finish_citing(&ps);
        assert_eq!(format!("{text}{tail}"), "Plain [x");
        let end = Citation {
            passage: 0,
            index: 8,
        };
        assert_eq!(added, vec![end, Citation { passage: 2, ..end }]);
        assert_eq!(p.citations(), &added[..]);
        // A model that cited something gets nothing added.
        let mut p = CitationParser::new(ps.len());
        p.feed("Cited [2].");
        assert_eq!(p.finish_citing(&ps), (String::new(), Vec::new()));
        assert_eq!(p.citations().len(), 1);
    }

    #[test]
    fn the_prompt_numbers_passages_within_the_budget() {
        let ps = vec![passage("a", "alpha text"), passage("b", &"b".repeat(500))];
        let (prompt, used) = system_prompt(Some("Be brief."), &ps, 200);
        assert_eq!(used, 1);
        assert!(prompt.starts_with("Be brief.\n\n"));
        assert!(prompt.contains("[1] (a.md) alpha text"));
        assert!(!prompt.contains("[2]"));
        let (_, used) = system_prompt(None, &ps, 10_000);
        assert_eq!(used, 2);
        // One passage always goes in, cut to the budget.
        let (prompt, used) = system_prompt(None, &ps[1..], 50);
        assert_eq!(used, 1);
        assert!(prompt.len() < RULE.len() + 100);
    }

    #[test]
    fn the_degraded_answer_cites_each_passage_after_its_text() {
        let ps = vec![passage("a", "first passage"), passage("b", "second")];
        let (text, cites) = degraded_answer(&ps);
        let chars: Vec<char> = text.chars().collect();
        let before = |c: &Citation| chars[..c.index].iter().collect::<String>();
        assert!(before(&cites[0]).ends_with("first passage"));
        assert!(before(&cites[1]).ends_with("second"));
        assert_eq!(
            fallback_citations(&[ps[0].clone(), ps[0].clone(), ps[1].clone()], 7),
            vec![
                Citation {
                    passage: 0,
                    index: 7
                },
                Citation {
                    passage: 2,
                    index: 7
                }
            ]
        );
    }
}
