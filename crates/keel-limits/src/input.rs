//! Limits on the shape of a request body, checked before it is parsed.

/// Deepest nesting of JSON arrays and objects a body may have. Keel's own requests need 5
/// (chat content parts); tool schemas a few more. serde_json would stop at 128 anyway, but
/// deep nesting is only ever an attack, and the limit is cheaper to check on the raw bytes.
pub const MAX_JSON_DEPTH: usize = 64;

/// Whether `body` nests arrays and objects deeper than `max`, found in one pass over the bytes
/// (brackets inside strings do not count). Says nothing else about the body's validity.
pub fn json_too_deep(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The refusal of a body nested deeper than [`MAX_JSON_DEPTH`], as the message for the
/// client's 400 `json_too_deep`; the same words on every route.
pub fn check_json_depth(body: &[u8]) -> Result<(), String> {
    if json_too_deep(body, MAX_JSON_DEPTH) {
        Err(format!(
            "the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_brackets_outside_strings_only() {
        assert!(!json_too_deep(br#"{"a":[{"b":[1]}]}"#, 4));
        assert!(json_too_deep(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!json_too_deep(br#"{"text":"[[[[[[[[{{{{{{"}"#, 1));
        assert!(!json_too_deep(br#"{"text":"\"[[[[\\"}"#, 1));
        assert!(json_too_deep(&b"[".repeat(100_000), MAX_JSON_DEPTH));
        assert!(!json_too_deep(b"", 0));
    }
}
