//! Decoding bytes to text, and plain text into paragraphs.

use super::{paragraphs, Block, Document, Format};
use crate::error::ExtractError;

/// Share of replacement characters above which a file is taken for binary, not for UTF-8
/// text with a few damaged bytes.
const MAX_REPLACEMENT_SHARE: f64 = 0.005;
/// Share of control characters (other than tab, newlines and form feed) above which a file
/// that happens to be valid UTF-8 is still binary.
const MAX_CONTROL_SHARE: f64 = 0.01;

/// UTF-8 (a BOM is dropped) or UTF-16 with a BOM; anything else that is mostly not UTF-8
/// is refused as binary.
pub(super) fn decode(bytes: &[u8]) -> Result<String, ExtractError> {
    let binary = || {
        ExtractError::Unsupported(
            "the file is not text (not UTF-8 or UTF-16 with a byte order mark)".into(),
        )
    };
    let text = if let Some(rest) = bytes.strip_prefix(b"\xef\xbb\xbf") {
        utf8(rest)?
    } else if let Some(rest) = bytes.strip_prefix(b"\xff\xfe") {
        utf16(rest, u16::from_le_bytes)?
    } else if let Some(rest) = bytes.strip_prefix(b"\xfe\xff") {
        utf16(rest, u16::from_be_bytes)?
    } else {
        if bytes.contains(&0) {
            return Err(binary());
        }
        utf8(bytes)?
    };
    let chars = text.chars().count().max(1) as f64;
    let control = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
        .count() as f64;
    if control / chars > MAX_CONTROL_SHARE {
        return Err(binary());
    }
    Ok(text)
}

fn utf8(bytes: &[u8]) -> Result<String, ExtractError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => lossy(String::from_utf8_lossy(bytes).into_owned()),
    }
}

fn utf16(bytes: &[u8], read: fn([u8; 2]) -> u16) -> Result<String, ExtractError> {
    let units: Vec<u16> = bytes.chunks_exact(2).map(|p| read([p[0], p[1]])).collect();
    lossy(String::from_utf16_lossy(&units))
}

fn lossy(text: String) -> Result<String, ExtractError> {
    let chars = text.chars().count().max(1) as f64;
    let replaced = text.chars().filter(|&c| c == '\u{fffd}').count() as f64;
    if replaced / chars > MAX_REPLACEMENT_SHARE {
        return Err(ExtractError::Unsupported(format!(
            "the file is not valid UTF-8 text ({:.1}% of it could not be decoded)",
            100.0 * replaced / chars
        )));
    }
    Ok(text)
}

/// Paragraphs, with no headings.
pub(super) fn parse(text: String) -> Document {
    let blocks = paragraphs(&text, 0..text.len())
        .into_iter()
        .map(|range| Block {
            headings: Vec::new(),
            range,
        })
        .collect();
    Document {
        format: Format::Text,
        text,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_is_dropped_and_utf16_is_decoded() {
        assert_eq!(decode(b"\xef\xbb\xbfhello").unwrap(), "hello");
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("héllo".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "héllo");
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("héllo".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "héllo");
    }

    #[test]
    fn binary_junk_and_invalid_utf8_are_refused() {
        // Deterministic junk: a xorshift stream, which is neither UTF-8 nor text.
        let mut x = 0x2545_f491_u32;
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8 | 0x80
            })
            .collect();
        let err = decode(&junk).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
        assert!(decode(b"text\0with nul").is_err());
        assert!(decode(
            &[b'a'; 10]
                .iter()
                .chain(&[1u8; 5])
                .copied()
                .collect::<Vec<_>>()
        )
        .is_err());
    }

    #[test]
    fn a_few_damaged_bytes_are_replaced_not_refused() {
        let mut bytes = "word ".repeat(400).into_bytes();
        bytes[10] = 0xff;
        let text = decode(&bytes).unwrap();
        assert_eq!(text.matches('\u{fffd}').count(), 1);
    }

    #[test]
    fn paragraphs_are_trimmed_runs_of_lines() {
        let doc = parse("  first line\nsecond line  \n\n\n third\n".into());
        let texts: Vec<&str> = doc.blocks.iter().map(|b| doc.block_text(b)).collect();
        assert_eq!(texts, ["first line\nsecond line", "third"]);
    }
}
