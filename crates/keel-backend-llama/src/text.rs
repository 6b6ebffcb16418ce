//! From token bytes to the text a client receives. A token may end in the middle of a UTF-8
//! character (byte-fallback vocabularies split emoji and CJK), and a stop string may span
//! several tokens: text is released only in whole characters, and whatever could still be
//! the start of a stop string is held back until the next token decides. A stop string is
//! never sent.

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text to send now (possibly empty); generation goes on.
    Send(String),
    /// A stop string was met: send this last text, then end.
    Stopped(String),
}

pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an unfinished UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text not sent yet (it may begin a stop string).
    held: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            partial: Vec::new(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, piece: &[u8]) -> Step {
        self.partial.extend_from_slice(piece);
        self.decode();
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            return Step::Stopped(std::mem::take(&mut self.held));
        }
        let keep = self
            .stops
            .iter()
            .map(|stop| longest_suffix_prefix(&self.held, stop))
            .max()
            .unwrap_or(0);
        let send_len = self.held.len() - keep;
        let rest = self.held.split_off(send_len);
        Step::Send(std::mem::replace(&mut self.held, rest))
    }

    /// Everything still held, at the end of generation (an unfinished character becomes
    /// U+FFFD rather than being lost silently).
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        out
    }

    /// Moves every complete character from `partial` to `held`; invalid bytes become U+FFFD.
    fn decode(&mut self) {
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(text) => {
                    self.held.push_str(text);
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let text = std::str::from_utf8(&self.partial[..valid]).unwrap_or_default();
                    self.held.push_str(text);
                    match e.error_len() {
                        // Truncated: wait for the next token's bytes.
                        None => {
                            self.partial.drain(..valid);
                            return;
                        }
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}

/// The length of the longest end of `text` that is a proper beginning of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match s.push(p) {
                Step::Send(t) => out.push_str(&t),
                Step::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_across_tokens_is_found_and_never_sent() {
        assert_eq!(
            run(&["END"], &[b"Paris is", b" nice E", b"N", b"D more"]),
            ("Paris is nice ".into(), true)
        );
    }

    #[test]
    fn text_that_only_looks_like_a_stop_start_is_released() {
        let mut s = TextStream::new(vec!["###".into()]);
        assert_eq!(s.push(b"a#"), Step::Send("a".into()));
        assert_eq!(s.push(b"#b"), Step::Send("##b".into()));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &[b"a", b"bzz"]), ("a".into(), true));
    }

    #[test]
    fn split_utf8_characters_are_joined_before_sending() {
        let euro = "€".as_bytes();
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&euro[..1]), Step::Send(String::new()));
        assert_eq!(s.push(&euro[1..]), Step::Send("€".into()));
        assert_eq!(
            run(&[], &[b"ok", &[0xff], b"!"]),
            ("ok\u{fffd}!".into(), false)
        );
        assert_eq!(run(&[], &[b"x", &euro[..2]]), ("x\u{fffd}".into(), false));
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        assert_eq!(run(&["STOP"], &[b"go ST"]), ("go ST".into(), false));
    }
}
