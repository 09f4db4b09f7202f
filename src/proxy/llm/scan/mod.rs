//! Reading an LLM response as it streams by — JSON or server-sent events,
//! in chunks cut anywhere — without buffering it: a small JSON lexer that
//! keeps, for the keys that report usage, the last number each carried,
//! and collects the text of the keys that carry output text (for the
//! gateway's own count when the upstream reports no usage).
//!
//! It is lenient by design: bytes outside JSON (`data:`, `event:` lines)
//! are skipped, and a key is any string followed by `:`.

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

/// A key, once its string has ended: only what the scanner needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// `USAGE_KEYS[i]`.
    Usage(usize),
    /// One of `TEXT_KEYS`.
    Text,
    /// Any other.
    Other,
}

impl Key {
    fn of(bytes: &[u8]) -> Key {
        // Usage keys are 12 bytes or more, text keys 7 or fewer: most
        // keys are compared with one list only.
        if bytes.len() >= 12 {
            return match USAGE_KEYS.iter().position(|u| u.as_bytes() == bytes) {
                Some(i) => Key::Usage(i),
                None => Key::Other,
            };
        }
        match TEXT_KEYS.iter().any(|t| t.as_bytes() == bytes) {
            true => Key::Text,
            false => Key::Other,
        }
    }
}

/// Whether `chunk` may hold a key the scanner keeps: a string that ends
/// as one does (every usage key ends in `tokens` or `Count`; the text
/// keys are `content`, `text` and `delta`), or an escape (which could
/// spell one). Eight bytes at a time: a word is checked for a backslash
/// and a quote at once, and only its quotes are looked at one by one (the
/// endings compared only before a quote that follows an `s`, a `t` or an
/// `a`); a byte at a time, this check cost more than the rest of the
/// skipped chunk's path (~11 instructions a byte under callgrind).
fn may_hold_key(chunk: &[u8]) -> bool {
    let mut words = chunk.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        if word_may_hold_key(chunk, at, u64::from_le_bytes(word)) {
            return true;
        }
        at += 8;
    }
    // The last bytes, padded with zeros (which match nothing).
    let rest = words.remainder();
    let mut word = [0u8; 8];
    if let Some(to) = word.get_mut(..rest.len()) {
        to.copy_from_slice(rest);
    }
    !rest.is_empty() && word_may_hold_key(chunk, at, u64::from_le_bytes(word))
}

/// [`may_hold_key`] for the eight bytes of `chunk` at `at`, read as
/// `word` (little-endian: byte `i` is bits `8i..8i+8`).
#[inline(always)]
fn word_may_hold_key(chunk: &[u8], at: usize, word: u64) -> bool {
    if bytes_equal(word, b'\\') != 0 {
        return true;
    }
    let mut quotes = bytes_equal(word, b'"');
    while quotes != 0 {
        let i = at + (quotes.trailing_zeros() / 8) as usize;
        if closes_kept_key(chunk.get(..i).unwrap_or_default()) {
            return true;
        }
        quotes &= quotes - 1;
    }
    false
}

/// The high bit of each byte of `word` that is `b`, and nothing else (no
/// carry crosses bytes: each byte's low seven bits plus 0x7f stay within
/// it).
#[inline(always)]
fn bytes_equal(word: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ (0x0101_0101_0101_0101 * u64::from(b));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Whether a quote after `before` ends a string that ends as a kept key.
#[inline(always)]
fn closes_kept_key(before: &[u8]) -> bool {
    fn ends<const N: usize>(before: &[u8], with: &[u8; N]) -> bool {
        before
            .len()
            .checked_sub(N)
            .and_then(|at| before.get(at..))
            .is_some_and(|end| end == with)
    }
    match before.last() {
        Some(b's') => ends(before, b"tokens"),
        Some(b't') => ends(before, b"Count") || ends(before, b"content") || ends(before, b"text"),
        Some(b'a') => ends(before, b"delta"),
        _ => false,
    }
}

/// The scanner; feed it every chunk of a response body in order. It
/// allocates nothing but the output text it collects: a key is read into
/// room of its own and known by what it is, usage by its key's place (a
/// response that is not an LLM API's, scanned because its client has a
/// token quota, costs no allocation).
#[derive(Debug)]
pub struct UsageScanner {
    lex: Lex,
    kind: Option<StrKind>,
    /// The string being read, when it may be a key: its first bytes, and
    /// its length (past `MAX_KEY`: too long to be one).
    key: [u8; MAX_KEY],
    key_len: usize,
    /// The last complete string, when it may be a key (a key once a `:`
    /// follows).
    last_string: Option<Key>,
    /// The key whose value comes next.
    pending: Option<Key>,
    number: u64,
    number_key: Option<Key>,
    /// The last number seen under each of `USAGE_KEYS`.
    numbers: [Option<u64>; USAGE_KEYS.len()],
    text: Vec<u8>,
    text_overflow: usize,
    /// Whether output text is collected (only an LLM route's answer has
    /// its text counted; any other is read for usage numbers only).
    collect_text: bool,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageScanner {
    pub fn new() -> Self {
        UsageScanner {
            lex: Lex::Between,
            kind: None,
            key: [0; MAX_KEY],
            key_len: 0,
            last_string: None,
            pending: None,
            number: 0,
            number_key: None,
            numbers: [None; USAGE_KEYS.len()],
            text: Vec::new(),
            text_overflow: 0,
            collect_text: true,
        }
    }

    /// A scanner that reads usage numbers only: text keys' values are
    /// skipped like any other value (an answer that is not an LLM API's:
    /// its `content` or `text` may be large, and is never counted).
    pub fn usage_only() -> Self {
        UsageScanner {
            collect_text: false,
            ..Self::new()
        }
    }

    /// Scans the next chunk of the body. Each state takes its bytes in a
    /// loop of its own: between values, the bytes up to the next string
    /// or number; inside a string, its plain bytes up to its next quote or
    /// backslash as one run (an answer is mostly text; found by a plain
    /// loop: `memchr2`'s set-up cost more than it saved on the short
    /// strings of most answers); a number's digits. What this does is
    /// what [`Self::byte`] does a byte at a time (a test compares them).
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match self.lex {
                Lex::Between => {
                    let mut taken = rest.len();
                    for (i, &b) in rest.iter().enumerate() {
                        match b {
                            b' ' | b'\t' | b'\r' | b'\n' => {}
                            b':' => self.pending = self.last_string.take(),
                            b'"' | b'0'..=b'9' => {
                                self.byte(b);
                                taken = i + 1;
                                break;
                            }
                            _ => {
                                self.pending = None;
                                self.last_string = None;
                            }
                        }
                    }
                    rest = rest.get(taken..).unwrap_or_default();
                }
                Lex::Str {
                    escape: false,
                    hex: 0,
                } => {
                    let run = rest
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\')
                        .unwrap_or(rest.len());
                    let (plain, after) = rest.split_at(run);
                    if !plain.is_empty() {
                        self.push_run(plain);
                    }
                    rest = match after.split_first() {
                        Some((&b, after)) => {
                            self.in_string(b, false, 0);
                            after
                        }
                        None => after,
                    };
                }
                Lex::Num => {
                    let digits = rest
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .unwrap_or(rest.len());
                    let (number, after) = rest.split_at(digits);
                    for &d in number {
                        self.number = self
                            .number
                            .saturating_mul(10)
                            .saturating_add(u64::from(d - b'0'));
                    }
                    if !after.is_empty() {
                        // The number is over; the byte after it is read
                        // between values.
                        self.end_number();
                        self.lex = Lex::Between;
                    }
                    rest = after;
                }
                Lex::Str { escape, hex } => {
                    if let Some((&b, after)) = rest.split_first() {
                        self.in_string(b, escape, hex);
                        rest = after;
                    }
                }
            }
        }
    }

    /// Scans the last chunk of the body, as [`Self::feed`] does, but skips
    /// one where it could find nothing: nothing read before it leads into
    /// it (between values, no key it keeps waiting for its value), and it
    /// holds no key it keeps (see [`may_hold_key`]). Most answers that
    /// are not an LLM API's are one chunk of this kind.
    pub fn feed_last(&mut self, chunk: &[u8]) {
        let kept = |k: Option<Key>| matches!(k, Some(Key::Usage(_) | Key::Text));
        let waiting = kept(self.pending) || kept(self.last_string);
        if self.lex == Lex::Between && !waiting && !may_hold_key(chunk) {
            return;
        }
        self.feed(chunk);
    }

    /// Plain bytes of a string, as [`Self::push`] takes them one by one.
    fn push_run(&mut self, run: &[u8]) {
        match self.kind {
            Some(StrKind::Key) => {
                let at = self.key_len.min(MAX_KEY);
                let take = run.len().min(MAX_KEY - at);
                if let (Some(to), Some(from)) = (self.key.get_mut(at..at + take), run.get(..take)) {
                    to.copy_from_slice(from);
                }
                self.key_len = (self.key_len + run.len()).min(MAX_KEY + 1);
            }
            Some(StrKind::Text) => self.push_text(run),
            _ => {}
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
                    let kind = match self.pending {
                        Some(Key::Text) if self.collect_text => StrKind::Text,
                        Some(_) => StrKind::Other,
                        None => StrKind::Key,
                    };
                    self.pending = None;
                    self.kind = Some(kind);
                    self.key_len = 0;
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

    #[inline(always)]
    fn in_string(&mut self, b: u8, escape: bool, hex: u8) {
        if hex > 0 {
            self.lex = Lex::Str {
                escape: false,
                hex: hex - 1,
            };
            if hex == 1 {
                // A \uXXXX escape: one character, of whatever the string
                // is (it was pushed as text whatever the string: found by
                // a hostile-upstream run, an id of 20 000 escapes charged
                // 2 500 tokens).
                self.push(b'?');
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
                self.last_string = match (self.kind, self.key.get(..self.key_len)) {
                    (Some(StrKind::Key), Some(key)) => Some(Key::of(key)),
                    _ => None,
                };
                self.kind = None;
            }
            other => self.push(other),
        }
    }

    fn push(&mut self, b: u8) {
        match self.kind {
            Some(StrKind::Key) => {
                // One byte past `MAX_KEY` marks the string too long.
                if let Some(at) = self.key.get_mut(self.key_len) {
                    *at = b;
                }
                self.key_len = (self.key_len + 1).min(MAX_KEY + 1);
            }
            Some(StrKind::Text) => self.push_text(&[b]),
            _ => {}
        }
    }

    /// Output text, up to `MAX_TEXT` bytes; past it only counted.
    fn push_text(&mut self, b: &[u8]) {
        let take = b.len().min(MAX_TEXT - self.text.len().min(MAX_TEXT));
        if let Some(kept) = b.get(..take) {
            self.text.extend_from_slice(kept);
        }
        self.text_overflow += b.len() - take;
    }

    fn end_number(&mut self) {
        if let Some(Key::Usage(i)) = self.number_key.take() {
            if let Some(n) = self.numbers.get_mut(i) {
                *n = Some(self.number);
            }
        }
    }

    /// The last number seen under `key`.
    pub fn get(&self, key: &str) -> Option<u64> {
        let i = USAGE_KEYS.iter().position(|u| *u == key)?;
        self.numbers.get(i).copied().flatten()
    }

    /// Whether any usage was seen.
    pub fn has_usage(&self) -> bool {
        self.numbers.iter().any(Option::is_some)
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
mod tests;
