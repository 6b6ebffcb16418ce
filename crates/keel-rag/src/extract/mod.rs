//! Uploaded bytes into a [`Document`]: the file's text and its blocks (paragraphs, code,
//! lists, table rows) under their heading paths.
//!
//! The kind comes from the bytes first (an archive or a binary is refused whatever its name
//! says), then from the file name's extension. For plain text, reStructuredText and
//! Markdown the document's text is the decoded file itself and every block is a slice of
//! it, so a chunk quoted back to a user occurs in the file they uploaded. HTML has no such
//! text: its document text is the visible text, block by block.

mod html;
mod markdown;
mod rst;
mod text;

use std::ops::Range;

use crate::error::ExtractError;

/// The kinds of file Keel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Rst,
    Markdown,
    Html,
    /// A PDF's text layer, as a separate process extracted it (`keel extract-pdf`).
    Pdf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Rst => "rst",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
        }
    }
}

/// A file's text and its blocks, in reading order.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub format: Format,
    pub text: String,
    pub blocks: Vec<Block>,
}

/// A run of text that belongs together (a paragraph, a code block, a list), with the
/// headings it sits under, outermost first.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub headings: Vec<String>,
    /// Byte range in [`Document::text`].
    pub range: Range<usize>,
}

impl Document {
    pub fn block_text(&self, block: &Block) -> &str {
        &self.text[block.range.clone()]
    }
}

/// Longest block handed to the tokenizer at once: a 30 MiB file with no blank line must not
/// become one giant encoding.
pub(crate) const MAX_BLOCK_BYTES: usize = 64 * 1024;

/// Extensions read as plain text: prose and source code.
const TEXT_EXTENSIONS: &[&str] = &[
    "txt", "text", "log", "csv", "tsv", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg",
    "xml", "tex", "py", "rs", "js", "ts", "go", "java", "c", "h", "cpp", "hpp", "cs", "rb", "php",
    "sh", "sql", "css",
];

/// Reads `bytes` as the kind its content and `filename` say.
pub fn extract(bytes: &[u8], filename: &str) -> Result<Document, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Invalid("the file is empty".into()));
    }
    if let Some(kind) = refused_signature(bytes) {
        return Err(ExtractError::Unsupported(format!(
            "{kind} files are not supported; upload text, Markdown, reStructuredText or HTML"
        )));
    }
    let extension = filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    let decoded = text::decode(bytes)?;
    let format = if looks_like_html(&decoded) {
        Format::Html
    } else {
        match extension.as_str() {
            "md" | "markdown" => Format::Markdown,
            "rst" => Format::Rst,
            "html" | "htm" => Format::Html,
            "" => Format::Text,
            ext if TEXT_EXTENSIONS.contains(&ext) => Format::Text,
            ext => {
                return Err(ExtractError::Unsupported(format!(
                    "files ending in .{ext} are not supported; upload text, Markdown, \
                     reStructuredText or HTML"
                )))
            }
        }
    };
    let mut doc = match format {
        // Pdf is never chosen here: its text comes from `from_pdf_text`.
        Format::Text | Format::Pdf => text::parse(decoded),
        Format::Rst => rst::parse(decoded),
        Format::Markdown => markdown::parse(decoded),
        Format::Html => html::parse(&decoded)?,
    };
    doc.blocks = split_long_blocks(&doc.text, std::mem::take(&mut doc.blocks));
    if doc.blocks.is_empty() {
        return Err(ExtractError::Invalid("the file has no text".into()));
    }
    Ok(doc)
}

/// Whether the bytes are a PDF: read through [`from_pdf_text`] once a separate process has
/// extracted the text layer, never parsed in the server itself.
pub fn is_pdf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"%PDF-")
}

/// A PDF's extracted text layer as a document of paragraphs. No text at all means pages
/// that are images (a scan): refused with that reason rather than indexed as nothing.
pub fn from_pdf_text(text: &str) -> Result<Document, ExtractError> {
    // Extraction leaves form feeds between pages and runs of blank lines.
    let cleaned = text.replace('\x0c', "\n\n");
    if cleaned.trim().is_empty() {
        return Err(ExtractError::Unsupported(
            "the PDF has no text layer (scanned pages are images and need OCR first)".into(),
        ));
    }
    let mut doc = text::parse(cleaned);
    doc.format = Format::Pdf;
    doc.blocks = split_long_blocks(&doc.text, std::mem::take(&mut doc.blocks));
    Ok(doc)
}

/// Kinds recognised by their first bytes that Keel does not read.
fn refused_signature(bytes: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"%PDF-", "PDF"),
        (b"PK\x03\x04", "Zip (and Office)"),
        (b"\x1f\x8b", "Gzip"),
        (b"\x89PNG", "PNG"),
        (b"\xff\xd8\xff", "JPEG"),
        (b"GIF8", "GIF"),
        (b"\x7fELF", "Executable"),
        (b"\xd0\xcf\x11\xe0", "Office 97"),
    ];
    SIGNATURES
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, kind)| *kind)
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .trim_start()
        .chars()
        .take(15)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html")
}

/// Splits blocks over [`MAX_BLOCK_BYTES`] at line ends (or, in a line that long, at a
/// character boundary), keeping their headings.
fn split_long_blocks(text: &str, blocks: Vec<Block>) -> Vec<Block> {
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let mut start = block.range.start;
        while block.range.end - start > MAX_BLOCK_BYTES {
            let window = &text[start..floor_char_boundary(text, start + MAX_BLOCK_BYTES)];
            let cut = match window.rfind('\n') {
                Some(i) if i > 0 => start + i + 1,
                _ => start + window.len(),
            };
            out.push(Block {
                headings: block.headings.clone(),
                range: start..cut,
            });
            start = cut;
        }
        if start < block.range.end {
            out.push(Block {
                headings: block.headings,
                range: start..block.range.end,
            });
        }
    }
    out
}

pub(crate) fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Byte ranges of paragraphs (runs of non-blank lines) within `range` of `text`, trimmed.
pub(crate) fn paragraphs(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut current: Option<Range<usize>> = None;
    let mut offset = range.start;
    for line in text[range].split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if line.trim().is_empty() {
            out.extend(current.take());
        } else {
            let end = start + line.trim_end().len();
            let begin = start + (line.len() - line.trim_start().len());
            match &mut current {
                Some(r) => r.end = end,
                None => current = Some(begin..end),
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_and_binaries_are_refused_whatever_their_name() {
        let zip = b"PK\x03\x04\x14\x00rest";
        let err = extract(zip, "notes.txt").unwrap_err();
        assert_eq!(err.code(), "unsupported_file");
        assert!(err.to_string().contains("Zip"), "{err}");
        let pdf = b"%PDF-1.7\n...";
        assert!(extract(pdf, "paper.pdf")
            .unwrap_err()
            .to_string()
            .contains("PDF"));
        assert!(is_pdf(pdf) && !is_pdf(b"PK\x03\x04"));
    }

    #[test]
    fn a_pdf_text_layer_becomes_paragraphs_and_no_text_is_a_scan() {
        let doc = from_pdf_text("Page one text.\n\nSecond paragraph.\x0cPage two.").unwrap();
        assert_eq!(doc.format, Format::Pdf);
        let blocks: Vec<&str> = doc.blocks.iter().map(|b| doc.block_text(b)).collect();
        assert_eq!(blocks, ["Page one text.", "Second paragraph.", "Page two."]);
        let err = from_pdf_text(" \n\x0c\n ").unwrap_err();
        assert_eq!(err.code(), "unsupported_file");
        assert!(err.to_string().contains("no text layer"), "{err}");
    }

    #[test]
    fn unknown_extensions_are_refused_and_known_ones_read() {
        let err = extract(b"hello", "tool.exe").unwrap_err();
        assert_eq!(err.code(), "unsupported_file");
        assert!(err.to_string().contains(".exe"), "{err}");
        assert_eq!(extract(b"hello", "main.py").unwrap().format, Format::Text);
        assert_eq!(extract(b"hello", "README").unwrap().format, Format::Text);
        assert_eq!(
            extract(b"# hi\n\nyo", "a.MD").unwrap().format,
            Format::Markdown
        );
    }

    #[test]
    fn html_content_wins_over_a_text_extension() {
        let doc = extract(b"<!DOCTYPE html><p>Hi there</p>", "page.txt").unwrap();
        assert_eq!(doc.format, Format::Html);
        assert_eq!(doc.text, "Hi there");
    }

    #[test]
    fn empty_and_blank_files_are_invalid() {
        assert_eq!(extract(b"", "a.txt").unwrap_err().code(), "invalid_file");
        assert_eq!(
            extract(b" \n\n\t", "a.txt").unwrap_err().code(),
            "invalid_file"
        );
    }

    #[test]
    fn long_blocks_are_split_at_line_ends_within_the_limit() {
        let line = "word ".repeat(30) + "\n";
        let text = line.repeat(2 * MAX_BLOCK_BYTES / line.len() + 3);
        let doc = extract(text.as_bytes(), "big.txt").unwrap();
        assert!(doc.blocks.len() >= 3);
        for b in &doc.blocks {
            assert!(b.range.len() <= MAX_BLOCK_BYTES);
            let after = doc.text[b.range.end..].chars().next();
            let at_line_end = doc.text[..b.range.end].ends_with('\n');
            assert!(
                at_line_end || after.is_none_or(char::is_whitespace),
                "cut inside a line"
            );
        }
        let joined: usize = doc.blocks.iter().map(|b| b.range.len()).sum();
        assert!(joined >= text.trim_end().len());
    }

    #[test]
    fn a_single_enormous_line_is_split_at_char_boundaries() {
        let text = "é".repeat(MAX_BLOCK_BYTES);
        let doc = extract(text.as_bytes(), "a.txt").unwrap();
        assert_eq!(doc.blocks.len(), 2);
        let total: usize = doc.blocks.iter().map(|b| doc.block_text(b).len()).sum();
        assert_eq!(total, text.len());
    }
}
