//! Where a chunked request body ends (RFC 9112 §7.1), found over bytes
//! that arrive in pieces, without copying them.

/// A chunked body whose framing is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Finds where a chunked body ends, over bytes that arrive in pieces.
#[derive(Debug, Default)]
pub struct ChunkScan {
    state: ChunkState,
    /// Bytes of the body looked at so far.
    seen: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far and whether a digit was seen.
    #[default]
    Size,
    SizeDigits(u64),
    /// After the size: extensions until the line ends.
    Ext(u64),
    /// The CR ending a chunk-size line seen: its LF next.
    SizeLf(u64),
    /// In chunk data: bytes left, then CRLF.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: whether the current line is empty so far.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl ChunkScan {
    /// Bytes of the body consumed by earlier calls.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Feeds the body bytes after the ones seen before. `Ok(Some(n))`: the
    /// body ends `n` bytes into all the bytes seen so far (counted from the
    /// first call); `Err`: the framing is malformed.
    pub fn advance(&mut self, more: &[u8]) -> Result<Option<usize>, Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < more.len() {
            let b = more[i];
            self.state = match self.state {
                Size | SizeDigits(_) => {
                    let acc = match self.state {
                        SizeDigits(a) => Some(a),
                        _ => None,
                    };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            let a = acc.unwrap_or(0);
                            if a > (u64::MAX >> 4) {
                                return Err(Malformed);
                            }
                            SizeDigits(a * 16 + u64::from(d))
                        }
                        None => match (acc, b) {
                            (None, _) => return Err(Malformed),
                            (Some(a), b';' | b' ' | b'\t') => Ext(a),
                            (Some(a), b'\r') => SizeLf(a),
                            _ => return Err(Malformed),
                        },
                    }
                }
                // Lines end in CRLF, as Pingora's parser wants them: a bare
                // LF here would let the two disagree on where the body ends.
                Ext(a) => match b {
                    b'\r' => SizeLf(a),
                    b'\n' => return Err(Malformed),
                    _ => Ext(a),
                },
                SizeLf(a) => match b {
                    b'\n' => after_size(a),
                    _ => return Err(Malformed),
                },
                Data(left) => {
                    let take = (more.len() - i).min(left as usize);
                    i += take;
                    let left = left - take as u64;
                    let next = if left == 0 { DataCr } else { Data(left) };
                    self.state = next;
                    continue;
                }
                DataCr => match b {
                    b'\r' => DataLf,
                    _ => return Err(Malformed),
                },
                DataLf => match b {
                    b'\n' => Size,
                    _ => return Err(Malformed),
                },
                Trailer(empty) => match b {
                    b'\r' => TrailerLf(empty),
                    b'\n' => return Err(Malformed),
                    _ => Trailer(false),
                },
                TrailerLf(empty) => match b {
                    b'\n' if empty => Done,
                    b'\n' => Trailer(true),
                    _ => return Err(Malformed),
                },
                Done => Done,
            };
            i += 1;
            if self.state == Done {
                self.seen += i;
                return Ok(Some(self.seen));
            }
        }
        self.seen += more.len();
        Ok(None)
    }
}

fn after_size(size: u64) -> ChunkState {
    if size == 0 {
        ChunkState::Trailer(true)
    } else {
        ChunkState::Data(size)
    }
}
