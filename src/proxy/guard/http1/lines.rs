//! Finding the lines of a request's header block: where each ends, and
//! whether it holds a control character, in one pass over its bytes as
//! they arrive ([`HeadScan`]), so that the look at the header
//! ([`super::inspect`]) searches for no line end and reads no value twice.

use std::ops::Range;

/// Lines whose ends a [`HeadScan`] keeps (a header of more lines is
/// looked at by [`LineIter`], which finds them again).
const KEPT: usize = 32;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of each byte of `x` that is below 0x20 or is DEL, exactly
/// (no byte's result depends on another's: no carry crosses a byte).
#[inline]
fn controls(x: u64) -> u64 {
    let low = x & LOW7;
    let below_space = !((low + ONES * 0x60) | x) & HIGH;
    let y = x ^ (ONES * 0x7f);
    let del = !(((y & LOW7) + LOW7) | y) & HIGH;
    below_space | del
}

/// The scan of a header block as its bytes arrive: it resumes where the
/// last read ended, keeps each line's end and whether the line holds a
/// control character other than HTAB (a CR counts unless a LF follows
/// it; in the request line a tab counts too), and stops at the blank
/// line. Leading empty lines are skipped, as RFC 9112 §2.2 allows, and a
/// line ends at LF with or without CR, as [`super::head_end`] has it.
#[derive(Debug)]
pub struct HeadScan {
    /// Where the scan resumes.
    at: usize,
    /// Where the line being scanned began (`None` while leading empty
    /// lines are skipped).
    line_start: Option<usize>,
    /// The line being scanned holds a control character.
    control: bool,
    /// The first line's start.
    first: usize,
    /// Each line's LF (the first [`KEPT`]).
    ends: [u32; KEPT],
    /// Bit `i`: line `i` holds a control character.
    controls: u32,
    /// Lines seen (more than [`KEPT`]: only the count is right).
    count: usize,
    /// A CR not followed by LF came before the request line: not an empty
    /// line, which is all RFC 9112 §2.2 lets a server skip there.
    pub(super) bare_cr_before: bool,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            at: 0,
            line_start: None,
            control: false,
            first: 0,
            ends: [0; KEPT],
            controls: 0,
            count: 0,
            bare_cr_before: false,
        }
    }
}

impl HeadScan {
    /// Scans what arrived since the last call; the length of the header
    /// block (through its blank line) once it has come.
    pub fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        if self.line_start.is_none() {
            let skip = buf
                .get(self.at..)?
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n');
            let Some(skip) = skip else {
                self.at = buf.len();
                return None;
            };
            self.at += skip;
            self.first = self.at;
            self.line_start = Some(self.at);
            self.bare_cr_before = self.at > 0 && bare_cr(buf.get(..=self.at)?);
        }
        // Eight bytes at a time, each control character of a word handled
        // in turn; then the last few bytes one by one.
        let mut base = self.at;
        let rest = buf.get(base..)?;
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let Ok(bytes) = <[u8; 8]>::try_from(w) else {
                break;
            };
            let mut m = controls(u64::from_le_bytes(bytes));
            while m != 0 {
                let i = base + (m.trailing_zeros() / 8) as usize;
                if let Some(done) = self.control_at(buf, i) {
                    return done;
                }
                m &= m - 1;
            }
            base += 8;
        }
        for (k, b) in words.remainder().iter().enumerate() {
            if *b < 0x20 || *b == 0x7f {
                if let Some(done) = self.control_at(buf, base + k) {
                    return done;
                }
            }
        }
        self.at = buf.len();
        None
    }

    /// The control character at `i`: a line's end, a tab, or one the line
    /// holds. `Some` ends the scan: with the header's length at its blank
    /// line, or with none at a CR whose next byte has not come.
    #[inline(always)]
    fn control_at(&mut self, buf: &[u8], i: usize) -> Option<Option<usize>> {
        match buf.get(i) {
            Some(b'\n') => {
                let line_start = self.line_start.unwrap_or(0);
                let end = match i > line_start && buf.get(i - 1) == Some(&b'\r') {
                    true => i - 1,
                    false => i,
                };
                if end == line_start {
                    return Some(Some(i + 1));
                }
                if let (Some(e), Ok(at)) = (self.ends.get_mut(self.count), u32::try_from(i)) {
                    *e = at;
                    self.controls |= u32::from(self.control) << self.count;
                }
                self.count += 1;
                self.line_start = Some(i + 1);
                self.control = false;
            }
            // A tab is a value's; in the request line it is no separator
            // (RFC 9112 §3) and counts as a control.
            Some(b'\t') => self.control |= self.count == 0,
            Some(b'\r') => match buf.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => self.control = true,
                // Its LF may be in the next read.
                None => {
                    self.at = i;
                    return Some(None);
                }
            },
            _ => self.control = true,
        }
        None
    }

    /// The lines of the header block the scan found, first to last (the
    /// blank line not among them), each with its range (line end
    /// included) and whether it holds a control character.
    pub fn lines<'a>(&'a self, buf: &'a [u8], len: usize) -> Lines<'a> {
        let kept = self.count.min(KEPT);
        Lines {
            buf,
            ends: self.ends.get(..kept).unwrap_or_default(),
            controls: self.controls,
            start: self.first,
            // Lines past those kept are found again.
            more: (self.count > KEPT).then_some(len),
            first: true,
        }
    }
}

/// Whether `lead` (the empty lines before a request line, and the line's
/// first byte) holds a CR that no LF follows.
pub(super) fn bare_cr(lead: &[u8]) -> bool {
    lead.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
}

/// The lines of a header block: those a [`HeadScan`] kept, then (past
/// [`KEPT`]) found again.
pub struct Lines<'a> {
    buf: &'a [u8],
    ends: &'a [u32],
    /// Bit 0: the next kept line holds a control character.
    controls: u32,
    /// The next line's start.
    start: usize,
    /// The header block's length, when lines past those kept are to be
    /// found.
    more: Option<usize>,
    /// The next line is the request line.
    first: bool,
}

impl<'a> Lines<'a> {
    /// The lines of `buf[start..len]`, found as they are taken.
    pub fn found(buf: &'a [u8], start: usize, len: usize) -> Self {
        Lines {
            buf,
            ends: &[],
            controls: 0,
            start,
            more: Some(len),
            first: true,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    /// A line without its end, its range with it, and whether it holds a
    /// control character.
    type Item = (&'a [u8], Range<usize>, bool);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some((&nl, rest)) = self.ends.split_first() {
            self.ends = rest;
            let nl = nl as usize;
            let control = self.controls & 1 != 0;
            self.controls >>= 1;
            let mut line = self.buf.get(self.start..nl)?;
            if let Some((b'\r', rest)) = line.split_last() {
                line = rest;
            }
            let range = self.start..nl + 1;
            self.start = nl + 1;
            self.first = false;
            return Some((line, range, control));
        }
        self.find_next()
    }
}

impl<'a> Lines<'a> {
    /// The next line past those kept.
    #[cold]
    fn find_next(&mut self) -> Option<(&'a [u8], Range<usize>, bool)> {
        let mut it = LineIter {
            buf: self.buf,
            pos: self.start,
            end: self.more?,
        };
        let (line, range) = it.next()?;
        self.start = it.pos;
        let first = std::mem::replace(&mut self.first, false);
        let control = has_control(line) || (first && line.contains(&b'\t'));
        match line.is_empty() {
            true => None,
            false => Some((line, range, control)),
        }
    }
}

/// A control character other than HTAB (or DEL) in a header value. Eight
/// bytes at a time: a word without a byte below 0x20 or equal to 0x7f is
/// clean (tested with the usual bit tricks, exact for "any byte"); one
/// that has one is looked at byte by byte (a tab is allowed).
pub(super) fn has_control(v: &[u8]) -> bool {
    let bad = |b: &u8| (*b < 0x20 && *b != b'\t') || *b == 0x7f;
    let mut words = v.chunks_exact(8);
    for w in &mut words {
        let Ok(bytes) = <[u8; 8]>::try_from(w) else {
            return w.iter().any(bad);
        };
        let x = u64::from_le_bytes(bytes);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGH;
        if (below_space | del) != 0 && w.iter().any(bad) {
            return true;
        }
    }
    words.remainder().iter().any(bad)
}

/// Lines of a header block, without their line endings, with their byte
/// ranges (line ending included).
pub(super) struct LineIter<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
}

impl<'a> Iterator for LineIter<'a> {
    type Item = (&'a [u8], Range<usize>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let rest = &self.buf[self.pos..self.end];
        let nl = memchr::memchr(b'\n', rest)?;
        let mut line = &rest[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let range = self.pos..self.pos + nl + 1;
        self.pos += nl + 1;
        Some((line, range))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{head_end, inspect, inspect_scanned};
    use super::*;

    /// Header blocks of every kind the guard sees: ordinary, bare LF
    /// ends, leading empty lines, CR alone, controls and DEL in values, a
    /// tab, obsolete folding, more lines than are kept, more fields than
    /// are allowed, and no end yet.
    fn blocks() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x y\r\nAccept: */*\r\n\r\nbody"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX:\ta\tb\t\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo\x01st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r",
            b"\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n",
            b"\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        for n in [KEPT - 2, KEPT - 1, KEPT, KEPT + 5, 255, 256, 300] {
            let mut b = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            for i in 0..n {
                b.extend_from_slice(format!("X-{i}: v{i}\r\n").as_bytes());
            }
            if n == KEPT + 5 {
                b.extend_from_slice(b"Y: bad\x02\r\nContent-Length: 3\r\n");
            }
            b.extend_from_slice(b"\r\nabc");
            v.push(b);
        }
        v
    }

    #[test]
    fn the_scan_finds_what_head_end_and_the_line_search_find() {
        for block in blocks() {
            let whole = head_end(&block, 0);
            // Fed in pieces of every size: the same end, and the same look
            // at the header as the search of its lines.
            for piece in 1..=block.len() {
                let mut scan = HeadScan::default();
                let mut found = None;
                let mut upto = 0;
                while upto < block.len() && found.is_none() {
                    upto = (upto + piece).min(block.len());
                    found = scan.feed(&block[..upto]);
                }
                assert_eq!(
                    found,
                    whole,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(&block)
                );
                if let Some(len) = found {
                    assert_eq!(
                        inspect_scanned(&block, len, &scan),
                        inspect(&block, len),
                        "{:?} in pieces of {piece}",
                        String::from_utf8_lossy(&block)
                    );
                }
            }
        }
    }

    #[test]
    fn a_control_or_a_tab_in_the_request_line_is_refused() {
        for line in [
            "GET /a\rb HTTP/1.1",
            "GET /\0 HTTP/1.1",
            "GET /\x7f HTTP/1.1",
            "GET /a\tb HTTP/1.1",
        ] {
            let block = format!("{line}\r\nHost: a\r\n\r\n");
            let mut scan = HeadScan::default();
            let len = scan.feed(block.as_bytes()).unwrap_or_default();
            let r = inspect_scanned(block.as_bytes(), len, &scan).expect_err(line);
            assert_eq!(
                r.message, "control characters in the request line",
                "{line:?}"
            );
        }
        // A tab in a value is the value's.
        let block = b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n";
        let mut scan = HeadScan::default();
        let len = scan.feed(block).unwrap_or_default();
        assert!(inspect_scanned(block, len, &scan).is_ok());
    }

    #[test]
    fn controls_are_found_exactly() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut w = [b'a'; 8];
                w[at] = b;
                let m = controls(u64::from_le_bytes(w));
                let want = match b < 0x20 || b == 0x7f {
                    true => 0x80u64 << (8 * at),
                    false => 0,
                };
                assert_eq!(m, want, "byte {b:#x} at {at}");
            }
        }
    }
}
