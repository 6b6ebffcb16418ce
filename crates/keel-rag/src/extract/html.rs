//! HTML: the text a browser shows, in blocks, under the page's headings.
//!
//! Parsed by html5ever (through `scraper`), so malformed markup reads as a browser reads it.
//! Scripts, styles and other non-prose elements are dropped with everything inside them;
//! `<title>` is the root of the heading path, `h1`–`h6` nest below it; `<pre>` keeps its
//! whitespace and other text has its whitespace collapsed. The walk is iterative, so a page
//! nested a million elements deep cannot overflow the stack.

use ego_tree::iter::Edge;
use scraper::{Html, Node};

use super::{Block, Document, Format};
use crate::error::ExtractError;

/// Elements whose content is not prose.
const DROPPED: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas", "head",
];

/// Elements that end the block before them and start a new one.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "caption",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

#[derive(Default)]
struct Builder {
    text: String,
    blocks: Vec<Block>,
    /// The title, then the open `h1`–`h6` headings with their levels.
    path: Vec<(u8, String)>,
    buffer: String,
}

impl Builder {
    fn flush(&mut self) {
        let body = self.buffer.trim();
        if !body.is_empty() {
            if !self.text.is_empty() {
                self.text.push_str("\n\n");
            }
            let start = self.text.len();
            self.text.push_str(body);
            self.blocks.push(Block {
                headings: self.path.iter().map(|(_, t)| t.clone()).collect(),
                range: start..self.text.len(),
            });
        }
        self.buffer.clear();
    }

    fn heading(&mut self, level: u8, text: &str) {
        let text = collapse(text);
        if text.is_empty() {
            return;
        }
        while self.path.last().is_some_and(|(l, _)| *l >= level) {
            self.path.pop();
        }
        // A page's first h1 usually repeats its title.
        if self.path.len() == 1 && self.path[0].0 == 0 && self.path[0].1 == text {
            return;
        }
        self.path.push((level, text));
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn push_collapsed(buffer: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_whitespace() {
            if !buffer.is_empty() && !buffer.ends_with([' ', '\n']) {
                buffer.push(' ');
            }
        } else {
            buffer.push(c);
        }
    }
}

/// Deepest nesting parsed. html5ever checks element scopes by walking the stack of open
/// elements, so a page nested n deep costs O(n^2): 200,000 nested `<div>`s take minutes.
/// Real pages nest a few dozen deep.
pub(super) const MAX_DEPTH: usize = 4096;

/// Elements that need no end tag (void, or closed implicitly by their next sibling), which
/// the depth estimate does not count as open.
const SELF_CLOSING: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "!doctype",
];

/// An upper estimate of how deep `source` nests, from its tags alone, stopping once past
/// `limit`.
fn nesting_estimate(source: &str, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let bytes = source.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr(b'<', &bytes[i..]) {
        let tag = &source[i + off + 1..];
        i += off + 1;
        if let Some(rest) = tag.strip_prefix('/') {
            if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
                depth = depth.saturating_sub(1);
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
            .take(16)
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let self_closed = tag.find('>').is_some_and(|end| tag[..end].ends_with('/'));
        if !self_closed && !SELF_CLOSING.contains(&name.as_str()) {
            depth += 1;
            deepest = deepest.max(depth);
            if deepest > limit {
                break;
            }
        }
    }
    deepest
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

pub(super) fn parse(source: &str) -> Result<Document, ExtractError> {
    if nesting_estimate(source, MAX_DEPTH) > MAX_DEPTH {
        return Err(ExtractError::Invalid(format!(
            "the HTML nests deeper than {MAX_DEPTH} elements"
        )));
    }
    let html = Html::parse_document(source);
    let mut b = Builder::default();
    let title = html
        .tree
        .root()
        .descendants()
        .find_map(|n| match n.value() {
            Node::Element(e) if e.name() == "title" => Some(
                n.descendants()
                    .filter_map(|t| t.value().as_text().map(|t| t.to_string()))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .map(|t| collapse(&t))
        .filter(|t| !t.is_empty());
    if let Some(title) = title {
        b.path.push((0, title));
    }
    let mut dropped = 0usize;
    let mut pre = 0usize;
    let mut heading: Option<(u8, String)> = None;
    for edge in html.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(e) => {
                    let name = e.name();
                    if dropped > 0 || DROPPED.contains(&name) {
                        dropped += 1;
                    } else if let Some(level) = heading_level(name) {
                        b.flush();
                        heading = Some((level, String::new()));
                    } else if BLOCKS.contains(&name) {
                        b.flush();
                        pre += usize::from(name == "pre");
                    }
                }
                Node::Text(t) if dropped == 0 => match &mut heading {
                    Some((_, h)) => h.push_str(t),
                    None if pre > 0 => b.buffer.push_str(t),
                    None => push_collapsed(&mut b.buffer, t),
                },
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(e) = node.value() {
                    let name = e.name();
                    if dropped > 0 {
                        dropped -= 1;
                    } else if heading_level(name).is_some() {
                        if let Some((level, text)) = heading.take() {
                            b.heading(level, &text);
                        }
                    } else if BLOCKS.contains(&name) {
                        b.flush();
                        pre -= usize::from(name == "pre" && pre > 0);
                    }
                }
            }
        }
    }
    b.flush();
    Ok(Document {
        format: Format::Html,
        text: b.text,
        blocks: b.blocks,
    })
}

fn heading_level(name: &str) -> Option<u8> {
    match name.as_bytes() {
        [b'h', d @ b'1'..=b'6'] => Some(d - b'0'),
        _ => None,
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
    fn scripts_and_styles_are_dropped_and_headings_nest_under_the_title() {
        let page = r#"<!doctype html><html><head><title>Flask  Docs</title>
            <style>body { color: red }</style><script>var secret = 1;</script></head>
            <body><nav>Home</nav><h1>Flask Docs</h1><p>Welcome   to
            <b>Flask</b>&amp; friends.</p>
            <h2>Install</h2><pre>pip install
    flask</pre><ul><li>one</li><li>two</li></ul>
            <noscript>enable js</noscript><h3>Extras</h3><p>More</p>
            <h2>Use</h2><div>Run it<br>now</div></body></html>"#;
        let doc = parse(page).unwrap();
        assert_eq!(
            outline(&doc),
            [
                ("Flask Docs".into(), "Home"),
                ("Flask Docs".into(), "Welcome to Flask& friends."),
                ("Flask Docs > Install".into(), "pip install\n    flask"),
                ("Flask Docs > Install".into(), "one"),
                ("Flask Docs > Install".into(), "two"),
                ("Flask Docs > Install > Extras".into(), "More"),
                ("Flask Docs > Use".into(), "Run it"),
                ("Flask Docs > Use".into(), "now"),
            ]
        );
        assert!(!doc.text.contains("secret") && !doc.text.contains("color"));
    }

    #[test]
    fn nesting_is_walked_iteratively_up_to_the_limit_and_refused_past_it() {
        let nested = |n: usize| "<div>".repeat(n) + "deep" + &"</div>".repeat(n);
        assert_eq!(parse(&nested(MAX_DEPTH)).unwrap().text, "deep");
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err.code(), "invalid_file");
        // Elements closed implicitly do not count, however many there are.
        let list = "<ul>".to_string() + &"<li>item".repeat(3 * MAX_DEPTH) + "</ul>";
        assert!(parse(&list).unwrap().blocks.len() >= 3 * MAX_DEPTH);
    }
}
