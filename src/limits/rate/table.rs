//! The counts of one window: a sketch (one configured client, or a plain
//! count-min sketch for comparison) or a client table (many clients, exact
//! up to its capacity).

use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::{pack, saturating_sub, unpack, Usage};
use super::sketch::Sketch;

/// Places probed for a client before it spills into the overflow sketch.
const PROBES: usize = 32;
/// Rows and width of the overflow sketch of a [`ClientTable`].
const OVERFLOW_DEPTH: usize = 4;
const OVERFLOW_WIDTH: usize = 1 << 14;

/// Exact per-client counts in an open-addressing table keyed by 64-bit
/// fingerprints, with a count-min sketch for the clients that find no place.
pub struct ClientTable {
    /// `[fingerprint, packed count]` per place; fingerprint 0 = free.
    places: Box<[[AtomicU64; 2]]>,
    overflow: Sketch,
}

enum Place<'a> {
    Found(&'a AtomicU64),
    Absent,
    Full,
}

impl ClientTable {
    /// A table for `capacity` clients (at a load of two thirds).
    pub fn new(capacity: usize) -> Self {
        let n = (capacity.max(16) * 3).div_ceil(2);
        ClientTable {
            places: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            overflow: Sketch::new(OVERFLOW_DEPTH, OVERFLOW_WIDTH),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.places.len() * 16 + self.overflow.memory_bytes()
    }

    /// Finds the count of `hash`, claiming a free place if `insert`.
    #[inline]
    fn place(&self, hash: u64, insert: bool) -> Place<'_> {
        let fp = hash.max(1);
        let n = self.places.len();
        let start = ((hash as u128 * n as u128) >> 64) as usize;
        for i in 0..PROBES.min(n) {
            let [key, count] = &self.places[(start + i) % n];
            let k = key.load(Ordering::Acquire);
            if k == fp {
                return Place::Found(count);
            }
            if k == 0 {
                if !insert {
                    return Place::Absent;
                }
                match key.compare_exchange(0, fp, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Place::Found(count),
                    Err(other) if other == fp => return Place::Found(count),
                    Err(_) => {}
                }
            }
        }
        Place::Full
    }

    pub fn get(&self, hash: u64) -> Usage {
        match self.place(hash, false) {
            Place::Found(c) => unpack(c.load(Ordering::Acquire)),
            Place::Absent => Usage::default(),
            Place::Full => self.overflow.get(hash),
        }
    }

    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self.place(hash, true) {
            Place::Found(c) => {
                let d = pack(delta.requests, delta.tokens);
                unpack(c.fetch_add(d, Ordering::AcqRel).wrapping_add(d))
            }
            Place::Absent | Place::Full => self.overflow.add(hash, delta),
        }
    }

    pub fn sub(&self, hash: u64, delta: Usage) {
        match self.place(hash, false) {
            Place::Found(c) => saturating_sub(c, delta),
            Place::Absent => {}
            Place::Full => self.overflow.sub(hash, delta),
        }
    }

    pub fn clear(&self) {
        for [k, c] in self.places.iter() {
            k.store(0, Ordering::Relaxed);
            c.store(0, Ordering::Relaxed);
        }
        self.overflow.clear();
    }
}

/// How a limiter's tables are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// One client, counted exactly.
    Exact,
    /// Many clients: a [`ClientTable`] for this many per window.
    Clients { capacity: usize },
    /// Many clients in a plain count-min sketch (for comparison).
    Sketch { depth: usize, width: usize },
}

/// The counts of one window.
pub enum CountTable {
    Sketch(Sketch),
    Clients(ClientTable),
}

impl CountTable {
    pub fn new(kind: TableKind) -> Self {
        match kind {
            TableKind::Exact => CountTable::Sketch(Sketch::new(1, 1)),
            TableKind::Clients { capacity } => CountTable::Clients(ClientTable::new(capacity)),
            TableKind::Sketch { depth, width } => CountTable::Sketch(Sketch::new(depth, width)),
        }
    }

    #[inline]
    pub fn get(&self, hash: u64) -> Usage {
        match self {
            CountTable::Sketch(t) => t.get(hash),
            CountTable::Clients(t) => t.get(hash),
        }
    }

    #[inline]
    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self {
            CountTable::Sketch(t) => t.add(hash, delta),
            CountTable::Clients(t) => t.add(hash, delta),
        }
    }

    #[inline]
    pub fn sub(&self, hash: u64, delta: Usage) {
        match self {
            CountTable::Sketch(t) => t.sub(hash, delta),
            CountTable::Clients(t) => t.sub(hash, delta),
        }
    }

    pub fn clear(&self) {
        match self {
            CountTable::Sketch(t) => t.clear(),
            CountTable::Clients(t) => t.clear(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            CountTable::Sketch(t) => t.memory_bytes(),
            CountTable::Clients(t) => t.memory_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_table_is_exact_to_capacity_then_spills() {
        let t = ClientTable::new(1000);
        let one = Usage {
            requests: 1,
            tokens: 2,
        };
        let hashes: Vec<u64> = (1..=5000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for h in &hashes {
            assert_eq!(t.add(*h, one), one);
        }
        // Past capacity, every client is still counted at least once.
        for h in &hashes {
            assert!(t.get(*h).requests >= 1);
        }
        for h in &hashes[..1000] {
            assert_eq!(t.get(*h), one);
            t.sub(*h, one);
            assert_eq!(t.get(*h), Usage::default());
        }
        t.clear();
        assert_eq!(t.get(hashes[0]), Usage::default());
    }
}
