//! Reading actual token usage from a response body as it streams by.
//!
//! `response_body_filter` is synchronous and sees the body in chunks, so the
//! scanner never buffers the body: it looks for the last `"total_tokens":
//! N` (an OpenAI-style `usage` object, in a JSON body or in a server-sent
//! event) in each chunk, keeping only a short tail so that a key split
//! across two chunks is still found.

/// The key whose value is the request's actual token count.
const KEY: &[u8] = b"\"total_tokens\"";
/// Enough to hold the key, a colon with some spaces, and 20 digits.
const TAIL: usize = 64;

#[derive(Debug, Default)]
pub struct UsageScanner {
    tail: Vec<u8>,
    last: Option<u64>,
}

/// What parsing at one match found.
enum At {
    Value(u64),
    /// The value may go on past the end of the data seen.
    Incomplete,
    NotAValue,
}

impl UsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last total seen so far.
    pub fn total(&self) -> Option<u64> {
        self.last
    }

    /// Scans the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        // Matches that start in the tail, completed by this chunk's start.
        let mut joined = std::mem::take(&mut self.tail);
        let tail_len = joined.len();
        if tail_len > 0 {
            joined.extend_from_slice(&chunk[..chunk.len().min(TAIL)]);
            let mut from = 0;
            while let Some(i) = find(&joined[from..], KEY).map(|i| i + from) {
                if i >= tail_len {
                    break;
                }
                if let At::Value(v) = parse_at(&joined, i) {
                    self.last = Some(v);
                }
                from = i + 1;
            }
        }
        let mut from = 0;
        while let Some(i) = find(&chunk[from..], KEY).map(|i| i + from) {
            match parse_at(chunk, i) {
                At::Value(v) => self.last = Some(v),
                // Left for the next chunk, through the tail.
                At::Incomplete | At::NotAValue => {}
            }
            from = i + 1;
        }
        // The new tail: the last TAIL bytes of what has been seen.
        if chunk.len() >= TAIL {
            joined.clear();
            joined.extend_from_slice(&chunk[chunk.len() - TAIL..]);
        } else {
            joined.truncate(tail_len);
            joined.extend_from_slice(chunk);
            let excess = joined.len().saturating_sub(TAIL);
            joined.drain(..excess);
        }
        self.tail = joined;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `: N` after the key at `i`. A key preceded by a backslash is
/// inside a JSON string, not a key.
fn parse_at(buf: &[u8], i: usize) -> At {
    if i > 0 && buf[i - 1] == b'\\' {
        return At::NotAValue;
    }
    let mut j = i + KEY.len();
    let skip_ws = |j: &mut usize| {
        while *j < buf.len() && matches!(buf[*j], b' ' | b'\t' | b'\r' | b'\n') {
            *j += 1;
        }
    };
    skip_ws(&mut j);
    if j >= buf.len() {
        return At::Incomplete;
    }
    if buf[j] != b':' {
        return At::NotAValue;
    }
    j += 1;
    skip_ws(&mut j);
    let start = j;
    while j < buf.len() && buf[j].is_ascii_digit() {
        j += 1;
    }
    if j == buf.len() {
        return At::Incomplete;
    }
    if j == start {
        return At::NotAValue;
    }
    std::str::from_utf8(&buf[start..j])
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(At::NotAValue, At::Value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = UsageScanner::new();
        for c in chunks {
            s.feed(c);
        }
        s.total()
    }

    #[test]
    fn json_body() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":32,"total_tokens":42}}"#;
        assert_eq!(scan(&[body]), Some(42));
        // Split at every position.
        for i in 1..body.len() {
            assert_eq!(scan(&[&body[..i], &body[i..]]), Some(42), "split at {i}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes), Some(42));
    }

    #[test]
    fn last_sse_event_wins() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"usage\":{\"total_tokens\": 7}}\n\ndata: {\"usage\":{\"total_tokens\" : 19}}\n\ndata: [DONE]\n\n";
        assert_eq!(scan(&[body]), Some(19));
        for i in 1..body.len() {
            assert_eq!(scan(&[&body[..i], &body[i..]]), Some(19), "split at {i}");
        }
    }

    #[test]
    fn keys_inside_strings_and_absent_usage() {
        assert_eq!(
            scan(&[br#"{"text":"say \"total_tokens\": 99","n":1}"#]),
            None
        );
        assert_eq!(scan(&[br#"{"usage":{"total_tokens":"many"}}"#]), None);
        assert_eq!(scan(&[b"plain text"]), None);
        // The number running to the end of the body is not trusted.
        assert_eq!(scan(&[br#"{"total_tokens":12"#]), None);
    }
}
