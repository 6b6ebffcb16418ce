//! Markdown: headings (ATX and Setext) form the heading path; every other top-level block
//! (paragraph, list, code fence, table, quote) is kept as its source slice, markup and all,
//! so that a quoted chunk occurs in the uploaded file. Front matter and raw HTML blocks carry
//! no prose and are dropped.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::{Block, Document, Format};

pub(super) fn parse(text: String) -> Document {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    let mut blocks = Vec::new();
    let mut path: Vec<(HeadingLevel, String)> = Vec::new();
    let mut depth = 0usize;
    // The open top-level block: where it starts, and the heading level if it is one.
    let mut open: Option<(usize, Option<HeadingLevel>, bool)> = None;
    let mut heading = String::new();
    for (event, range) in Parser::new_ext(&text, options).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                if depth == 0 {
                    let level = match tag {
                        Tag::Heading { level, .. } => Some(level),
                        _ => None,
                    };
                    let dropped = matches!(tag, Tag::MetadataBlock(_) | Tag::HtmlBlock);
                    open = Some((range.start, level, dropped));
                    heading.clear();
                }
                depth += 1;
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                if depth > 0 {
                    continue;
                }
                let Some((start, level, dropped)) = open.take() else {
                    continue;
                };
                if let (TagEnd::Heading(_), Some(level)) = (end, level) {
                    while path.last().is_some_and(|(l, _)| *l >= level) {
                        path.pop();
                    }
                    path.push((level, heading.trim().to_owned()));
                } else if !dropped {
                    let slice = &text[start..range.end];
                    let lead = slice.len() - slice.trim_start().len();
                    let end = start + slice.trim_end().len();
                    if start + lead < end {
                        blocks.push(Block {
                            headings: path.iter().map(|(_, t)| t.clone()).collect(),
                            range: start + lead..end,
                        });
                    }
                }
            }
            Event::Text(t) | Event::Code(t) if open.is_some_and(|(_, l, _)| l.is_some()) => {
                heading.push_str(&t);
            }
            _ => {}
        }
    }
    Document {
        format: Format::Markdown,
        text,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_nest_and_blocks_keep_their_source() {
        let src = "\
---
title: front matter
---
# Guide

Intro with **bold** and a [link](http://x).

## Install with `pip`

```sh
pip install keel
```

- one
- two

Setext
------

| a | b |
|---|---|
| 1 | 2 |

# Other

<div>raw html</div>

Last.
";
        let doc = parse(src.into());
        let got: Vec<(String, &str)> = doc
            .blocks
            .iter()
            .map(|b| (b.headings.join(" > "), doc.block_text(b)))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "Guide".into(),
                    "Intro with **bold** and a [link](http://x)."
                ),
                (
                    "Guide > Install with pip".into(),
                    "```sh\npip install keel\n```"
                ),
                ("Guide > Install with pip".into(), "- one\n- two"),
                ("Guide > Setext".into(), "| a | b |\n|---|---|\n| 1 | 2 |"),
                ("Other".into(), "Last."),
            ]
        );
    }
}
