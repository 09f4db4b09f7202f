//! Reading an LLM response as it streams by — JSON or server-sent events,
//! in chunks cut anywhere — without buffering it: a small JSON lexer that
//! keeps, for the keys that report usage, the last number each carried,
//! and collects the text of the keys that carry output text (for the
//! gateway's own count when the upstream reports no usage).
//!
//! It is lenient by design: bytes outside JSON (`data:`, `event:` lines)
//! are skipped, and a key is any string followed by `:`.

use std::collections::HashMap;

/// Longest key remembered (longer strings are not usage keys).
const MAX_KEY: usize = 48;
/// Output text collected at most; past it only its length is counted.
const MAX_TEXT: usize = 1 << 20;

/// The keys whose numbers are usage.
const USAGE_KEYS: &[&str] = &[
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "totalTokenCount",
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
];

/// The keys whose string values are output text: OpenAI's `content`
/// (a message, or a stream's delta), Anthropic's and Gemini's `text`, the
/// Responses API's `delta`.
const TEXT_KEYS: &[&str] = &["content", "text", "delta"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Lex {
    #[default]
    Between,
    /// In a string: after a backslash; in a `\u` escape (hex digits left).
    Str { escape: bool, hex: u8 },
    /// In a number.
    Num,
}

/// What the current string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrKind {
    /// Maybe a key (kept, up to `MAX_KEY` bytes).
    Key,
    /// A text value: collected.
    Text,
    /// Any other value: skipped.
    Other,
}

/// The scanner; feed it every chunk of a response body in order.
#[derive(Debug, Default)]
pub struct UsageScanner {
    lex: Lex,
    kind: Option<StrKind>,
    key: Vec<u8>,
    /// The last complete string (a key once a `:` follows).
    last_string: Option<Vec<u8>>,
    /// The key whose value comes next.
    pending: Option<Vec<u8>>,
    number: u64,
    number_key: Option<Vec<u8>>,
    numbers: HashMap<&'static str, u64>,
    text: Vec<u8>,
    text_overflow: usize,
}

impl UsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        match self.lex {
            Lex::Str { escape, hex } => self.in_string(b, escape, hex),
            Lex::Num => {
                if b.is_ascii_digit() {
                    self.number = self
                        .number
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0'));
                } else {
                    self.end_number();
                    self.lex = Lex::Between;
                    self.byte(b);
                }
            }
            Lex::Between => match b {
                b'"' => {
                    let kind = match &self.pending {
                        Some(k) if TEXT_KEYS.iter().any(|t| t.as_bytes() == k.as_slice()) => {
                            StrKind::Text
                        }
                        Some(_) => StrKind::Other,
                        None => StrKind::Key,
                    };
                    self.pending = None;
                    self.kind = Some(kind);
                    self.key.clear();
                    self.lex = Lex::Str {
                        escape: false,
                        hex: 0,
                    };
                }
                b':' => self.pending = self.last_string.take(),
                b'0'..=b'9' => {
                    self.number_key = self.pending.take();
                    self.number = u64::from(b - b'0');
                    self.lex = Lex::Num;
                }
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ => {
                    // `,` `{` `}` `[` `]`, literals, SSE field names: the
                    // value (if any) is over.
                    self.pending = None;
                    self.last_string = None;
                }
            },
        }
    }

    fn in_string(&mut self, b: u8, escape: bool, hex: u8) {
        if hex > 0 {
            self.lex = Lex::Str {
                escape: false,
                hex: hex - 1,
            };
            if hex == 1 {
                // A \uXXXX escape: one character of text.
                self.push_text(b"?");
            }
            return;
        }
        if escape {
            self.lex = Lex::Str {
                escape: false,
                hex: if b == b'u' { 4 } else { 0 },
            };
            if b != b'u' {
                let c = match b {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    other => other,
                };
                self.push(c);
            }
            return;
        }
        match b {
            b'\\' => {
                self.lex = Lex::Str {
                    escape: true,
                    hex: 0,
                }
            }
            b'"' => {
                self.lex = Lex::Between;
                if self.kind == Some(StrKind::Key) && self.key.len() <= MAX_KEY {
                    self.last_string = Some(std::mem::take(&mut self.key));
                } else {
                    self.last_string = None;
                }
                self.kind = None;
            }
            other => self.push(other),
        }
    }

    fn push(&mut self, b: u8) {
        match self.kind {
            Some(StrKind::Key) if self.key.len() <= MAX_KEY => self.key.push(b),
            Some(StrKind::Text) => self.push_text(&[b]),
            _ => {}
        }
    }

    fn push_text(&mut self, b: &[u8]) {
        if self.text.len() + b.len() <= MAX_TEXT {
            self.text.extend_from_slice(b);
        } else {
            self.text_overflow += b.len();
        }
    }

    fn end_number(&mut self) {
        if let Some(k) = self.number_key.take() {
            if let Some(name) = USAGE_KEYS.iter().find(|u| u.as_bytes() == k.as_slice()) {
                self.numbers.insert(name, self.number);
            }
        }
    }

    /// The last number seen under `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.numbers.get(key).copied()
    }

    /// Whether any usage was seen.
    pub fn has_usage(&self) -> bool {
        !self.numbers.is_empty()
    }

    /// The output text seen (up to 1 MiB), and the bytes past it.
    pub fn text(&self) -> (&[u8], usize) {
        (&self.text, self.text_overflow)
    }

    /// Ends the body (a number at the very end is complete).
    pub fn finish(&mut self) {
        if self.lex == Lex::Num {
            self.end_number();
            self.lex = Lex::Between;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], cut: usize) -> UsageScanner {
        let mut s = UsageScanner::new();
        let cut = cut.min(body.len());
        s.feed(&body[..cut]);
        s.feed(&body[cut..]);
        s.finish();
        s
    }

    #[test]
    fn usage_keys_and_text_in_any_chunking() {
        let body = br#"data: {"choices":[{"delta":{"content":"Hel\"lo"}}]}

data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}

data: [DONE]
"#;
        for cut in 0..body.len() {
            let s = scan_in_pieces(body, cut);
            assert_eq!(s.get("total_tokens"), Some(46), "cut {cut}");
            assert_eq!(s.get("prompt_tokens"), Some(12));
            assert_eq!(s.text().0, b"Hel\"lo", "cut {cut}");
        }
    }

    #[test]
    fn anthropic_stream_keeps_the_last_numbers() {
        let body = br#"event: message_start
data: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}

event: content_block_delta
data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi there"}}

event: message_delta
data: {"type":"message_delta","usage":{"output_tokens":15}}
"#;
        let s = scan_in_pieces(body, 40);
        assert_eq!(s.get("input_tokens"), Some(25));
        assert_eq!(s.get("output_tokens"), Some(15));
        // `delta` is an object here: only `text` is text.
        assert_eq!(s.text().0, b"Hi there");
    }

    #[test]
    fn escaped_keys_inside_text_are_not_keys() {
        let body = br#"{"content":"say \"total_tokens\": 99","usage":{"total_tokens":7}}"#;
        let s = scan_in_pieces(body, 13);
        assert_eq!(s.get("total_tokens"), Some(7));
    }
}
