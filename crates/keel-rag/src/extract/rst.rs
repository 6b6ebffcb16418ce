//! reStructuredText: section titles from their adornment lines, paragraphs below them.
//!
//! A title is a line of text underlined (and optionally overlined) by one repeated
//! punctuation character; as in docutils, levels go by the order in which adornment styles
//! first appear. Everything else stays as written: directives and roles are part of the
//! text a reader sees in the source.

use std::ops::Range;

use super::{paragraphs, Block, Document, Format};

struct Line<'a> {
    start: usize,
    text: &'a str,
}

pub(super) fn parse(text: String) -> Document {
    let lines: Vec<Line> = {
        let mut offset = 0;
        text.split_inclusive('\n')
            .map(|l| {
                let line = Line {
                    start: offset,
                    text: l.trim_end_matches(['\n', '\r']),
                };
                offset += l.len();
                line
            })
            .collect()
    };
    let mut styles: Vec<(char, bool)> = Vec::new();
    let mut headings: Vec<String> = Vec::new();
    let mut blocks = Vec::new();
    let mut body_start = 0;
    let mut i = 0;
    while i < lines.len() {
        let Some((title, style, consumed)) = title_at(&lines, i) else {
            i += 1;
            continue;
        };
        push_body(&text, body_start..lines[i].start, &headings, &mut blocks);
        let level = styles.iter().position(|s| *s == style).unwrap_or_else(|| {
            styles.push(style);
            styles.len() - 1
        });
        headings.truncate(level);
        headings.push(title.trim().to_owned());
        i += consumed;
        body_start = lines.get(i).map_or(text.len(), |l| l.start);
    }
    push_body(&text, body_start..text.len(), &headings, &mut blocks);
    Document {
        format: Format::Rst,
        text,
        blocks,
    }
}

/// A title starting at line `i`: its text, adornment style and the lines it spans.
fn title_at<'a>(lines: &[Line<'a>], i: usize) -> Option<(&'a str, (char, bool), usize)> {
    let line = |k: usize| lines.get(k).map(|l| l.text);
    // Overline, title, underline of the same character.
    if let (Some(over), Some(title), Some(under)) = (line(i), line(i + 1), line(i + 2)) {
        if let (Some(a), Some(b)) = (adornment(over), adornment(under)) {
            if a == b
                && is_title_text(title)
                && over.trim_end().len() >= title.trim().chars().count()
            {
                return Some((title, (a, true), 3));
            }
        }
    }
    let (title, under) = (line(i)?, line(i + 1)?);
    let c = adornment(under)?;
    if is_title_text(title)
        && !title.starts_with(char::is_whitespace)
        && under.trim_end().len() >= title.trim_end().chars().count().min(4)
    {
        return Some((title, (c, false), 2));
    }
    None
}

/// The character of a line made of one repeated punctuation character, at least 2 long.
fn adornment(line: &str) -> Option<char> {
    let line = line.trim_end();
    let first = line.chars().next()?;
    (first.is_ascii_punctuation() && line.len() >= 2 && line.chars().all(|c| c == first))
        .then_some(first)
}

fn is_title_text(line: &str) -> bool {
    !line.trim().is_empty() && adornment(line).is_none()
}

fn push_body(text: &str, range: Range<usize>, headings: &[String], blocks: &mut Vec<Block>) {
    for para in paragraphs(text, range) {
        let body = &text[para.clone()];
        // Link targets (`.. _name:`) and bare transitions carry no text.
        let target = body.starts_with(".. _") && !body.contains('\n');
        if target || adornment(body).is_some() {
            continue;
        }
        blocks.push(Block {
            headings: headings.to_vec(),
            range: para,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline(doc: &Document) -> Vec<(String, &str)> {
        doc.blocks
            .iter()
            .map(|b| (b.headings.join(" > "), doc.block_text(b)))
            .collect()
    }

    #[test]
    fn titles_form_heading_paths_by_first_seen_style() {
        let src = "\
==========
Quickstart
==========

Intro text.

.. _routing:

Routing
-------

Use the route decorator::

    @app.route(\"/\")

Variable Rules
~~~~~~~~~~~~~~

Add <name>.

HTTP Methods
------------

GET by default.
";
        let doc = parse(src.into());
        assert_eq!(
            outline(&doc),
            [
                ("Quickstart".into(), "Intro text."),
                ("Quickstart > Routing".into(), "Use the route decorator::"),
                ("Quickstart > Routing".into(), "@app.route(\"/\")"),
                (
                    "Quickstart > Routing > Variable Rules".into(),
                    "Add <name>."
                ),
                ("Quickstart > HTTP Methods".into(), "GET by default."),
            ]
        );
    }

    #[test]
    fn blocks_are_slices_of_the_source() {
        let src = "Title\n=====\n\nOne\ntwo.\n\nThree.\n";
        let doc = parse(src.into());
        for b in &doc.blocks {
            assert!(src.contains(doc.block_text(b)));
        }
        assert_eq!(doc.blocks.len(), 2);
    }

    #[test]
    fn an_indented_line_over_dashes_is_not_a_title() {
        let doc = parse("    code\n    ----\n".into());
        assert!(doc.blocks.iter().all(|b| b.headings.is_empty()));
    }
}
