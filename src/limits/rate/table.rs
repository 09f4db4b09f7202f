//! The counts of one window: a sketch (one configured client, or a plain
//! count-min sketch for comparison) or a client table (many clients, exact
//! up to its size).
//!
//! # The client table
//!
//! An open-addressing table keyed by 64-bit fingerprints, with a count-min
//! sketch for the clients that find no place. Its memory comes zeroed from
//! the allocator, so untouched pages cost no RSS (a touched page is 4 KiB:
//! the gateway's allocator does not ask for transparent huge pages, which
//! would make it 2 MiB; docs/limits.md), and a table serves one window
//! only: the
//! background rotation allocates the next window's table, sized from the
//! distinct clients the windows before it saw, and the old one's memory
//! goes back when it is dropped. A gateway with a hundred clients touches
//! at most a hundred pages of a table; one with two million distinct
//! clients a minute stays exact, within `max_client_table_memory`.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::cell::{pack, saturating_sub, unpack, Usage};
use super::sketch::Sketch;

/// Places probed for a client before it spills into the overflow sketch.
const PROBES: usize = 32;
/// Rows of the overflow sketch.
const OVERFLOW_DEPTH: usize = 4;
/// Bytes of one place: `[fingerprint, packed count]`.
const PLACE_BYTES: usize = 16;
/// Places per client kept free: a load of two thirds.
const LOAD_DEN: usize = 2;
const LOAD_NUM: usize = 3;
/// Share of a table's memory given to its overflow sketch.
const OVERFLOW_SHARE: usize = 8;

/// Which count-min sketch counts the clients past a table's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowKind {
    /// Floodgate's [`Sketch`]: one packed cell per position (requests and
    /// tokens in one atomic add), saturating refunds.
    Packed,
    /// Two `pingora_limits::estimator::Estimator`s, one per field.
    Pingora,
}

/// The overflow sketch of a client table.
enum Overflow {
    Packed(Sketch),
    Pingora {
        requests: pingora_limits::estimator::Estimator,
        tokens: pingora_limits::estimator::Estimator,
        bytes: usize,
    },
}

impl Overflow {
    fn new(kind: OverflowKind, bytes: usize) -> Self {
        match kind {
            OverflowKind::Packed => {
                // Rounded down to a power of two columns.
                let width = (bytes / (OVERFLOW_DEPTH * 8)).max(1024);
                let width = 1usize << (usize::BITS - 1 - width.leading_zeros());
                Overflow::Packed(Sketch::new(OVERFLOW_DEPTH, width))
            }
            OverflowKind::Pingora => {
                let slots = (bytes / (2 * OVERFLOW_DEPTH * 8)).max(1024);
                Overflow::Pingora {
                    requests: pingora_limits::estimator::Estimator::new(OVERFLOW_DEPTH, slots),
                    tokens: pingora_limits::estimator::Estimator::new(OVERFLOW_DEPTH, slots),
                    bytes: 2 * OVERFLOW_DEPTH * slots * 8,
                }
            }
        }
    }

    fn get(&self, hash: u64) -> Usage {
        match self {
            Overflow::Packed(s) => s.get(hash),
            Overflow::Pingora {
                requests, tokens, ..
            } => Usage {
                requests: requests.get(hash).max(0) as u64,
                tokens: tokens.get(hash).max(0) as u64,
            },
        }
    }

    fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self {
            Overflow::Packed(s) => s.add(hash, delta),
            Overflow::Pingora {
                requests, tokens, ..
            } => {
                let r = requests.incr(hash, delta.requests as isize);
                let t = tokens.incr(hash, delta.tokens as isize);
                // The estimator's adds are relaxed: order them before the
                // reads that judge this charge (see `RateLimiter`).
                fence(Ordering::SeqCst);
                Usage {
                    requests: r.max(0) as u64,
                    tokens: t.max(0) as u64,
                }
            }
        }
    }

    fn sub(&self, hash: u64, delta: Usage) {
        match self {
            Overflow::Packed(s) => s.sub(hash, delta),
            Overflow::Pingora {
                requests, tokens, ..
            } => {
                requests.decr(hash, delta.requests as isize);
                tokens.decr(hash, delta.tokens as isize);
            }
        }
    }

    fn clear(&self) {
        match self {
            Overflow::Packed(s) => s.clear(),
            Overflow::Pingora {
                requests, tokens, ..
            } => {
                requests.reset();
                tokens.reset();
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        match self {
            Overflow::Packed(s) => s.memory_bytes(),
            Overflow::Pingora { bytes, .. } => *bytes,
        }
    }
}

/// Exact per-client counts keyed by 64-bit fingerprints, with a count-min
/// sketch for the clients that find no place.
pub struct ClientTable {
    /// `[fingerprint, packed count]` per place; fingerprint 0 = free.
    places: Box<[[AtomicU64; 2]]>,
    /// Clients that got a place this window.
    inserted: AtomicU64,
    /// Charges counted in the overflow sketch this window (an upper bound of
    /// the clients it holds).
    spilled: AtomicU64,
    overflow: Overflow,
}

enum Place<'a> {
    Found(&'a AtomicU64),
    Absent,
    Full,
}

/// The memory plan of a limiter's client tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TablePlan {
    /// The fewest places a window's table has (`max_tracked_clients`).
    pub min_places: usize,
    /// The most places a window's table may have: its share of
    /// `max_client_table_memory`. The first windows, which nothing
    /// predicts, get this many.
    pub max_places: usize,
    /// Bytes of a table's overflow sketch.
    pub overflow_bytes: usize,
}

impl TablePlan {
    /// The plan for one of a limiter's three tables: `capacity` clients at
    /// least, all three within `memory` bytes.
    pub fn new(capacity: usize, memory: usize) -> Self {
        let per_table = memory / 3;
        let overflow_bytes = per_table / OVERFLOW_SHARE;
        let min_places = Self::places_for(capacity.max(16));
        let max_places = ((per_table - overflow_bytes) / PLACE_BYTES).max(min_places);
        TablePlan {
            min_places,
            max_places,
            overflow_bytes,
        }
    }

    /// Places that hold `clients` at the table's load.
    pub fn places_for(clients: usize) -> usize {
        clients.saturating_mul(LOAD_NUM).div_ceil(LOAD_DEN)
    }

    /// The memory three tables of `capacity` clients need at least, for
    /// validating `max_tracked_clients` against `max_client_table_memory`.
    pub fn memory_needed(capacity: usize) -> usize {
        let places = Self::places_for(capacity.max(16)).saturating_mul(PLACE_BYTES);
        // Three tables, each giving an eighth to its overflow sketch.
        places
            .saturating_mul(OVERFLOW_SHARE)
            .div_ceil(OVERFLOW_SHARE - 1)
            .saturating_mul(3)
    }
}

impl ClientTable {
    /// A table for `capacity` clients (at a load of two thirds) and a
    /// 4 × 16 384 overflow sketch.
    pub fn new(capacity: usize) -> Result<Self, String> {
        Self::with_places(
            TablePlan::places_for(capacity.max(16)),
            OVERFLOW_DEPTH * (1 << 14) * 8,
            OverflowKind::Packed,
        )
    }

    /// A table of `places` places and an overflow sketch of about
    /// `overflow_bytes`. Fails when the memory cannot be had.
    pub fn with_places(
        places: usize,
        overflow_bytes: usize,
        overflow: OverflowKind,
    ) -> Result<Self, String> {
        // Zeroed by the allocator: pages stay uncommitted until touched.
        let places: Box<[[AtomicU64; 2]]> =
            bytemuck::try_zeroed_slice_box(places.max(1)).map_err(|_| {
                format!(
                    "cannot allocate {} MiB for a client table",
                    (places * PLACE_BYTES) >> 20
                )
            })?;
        Ok(ClientTable {
            places,
            inserted: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            overflow: Overflow::new(overflow, overflow_bytes),
        })
    }

    /// Bytes allocated (touched or not).
    pub fn memory_bytes(&self) -> usize {
        self.places.len() * PLACE_BYTES + self.overflow.memory_bytes()
    }

    /// Places in the table.
    pub fn places(&self) -> usize {
        self.places.len()
    }

    /// Touches every page of the places (the allocator hands them out
    /// zeroed but not yet backed by memory).
    pub fn prefault(&self) {
        const PER_PAGE: usize = 4096 / PLACE_BYTES;
        for place in self.places.iter().step_by(PER_PAGE) {
            place[0].store(0, Ordering::Relaxed);
        }
    }

    /// Whether no client was counted in it.
    pub fn is_unused(&self) -> bool {
        self.demand() == 0
    }

    /// Clients counted this window, an upper bound: those with a place,
    /// and every charge that spilled into the sketch.
    pub fn demand(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed) + self.spilled.load(Ordering::Relaxed)
    }

    /// Starts fetching the first place `hash` probes (see
    /// [`CountTable::touch`]).
    #[inline]
    fn touch(&self, hash: u64) {
        let n = self.places.len();
        let start = ((hash as u128 * n as u128) >> 64) as usize;
        if let Some([key, _]) = self.places.get(start) {
            std::hint::black_box(key.load(Ordering::Relaxed));
        }
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
                    Ok(_) => {
                        self.inserted.fetch_add(1, Ordering::Relaxed);
                        return Place::Found(count);
                    }
                    Err(other) if other == fp => return Place::Found(count),
                    Err(_) => {}
                }
            }
        }
        Place::Full
    }

    pub fn get(&self, hash: u64) -> Usage {
        match self.place(hash, false) {
            Place::Found(c) => unpack(c.load(Ordering::SeqCst)),
            Place::Absent => Usage::default(),
            Place::Full => self.overflow.get(hash),
        }
    }

    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self.place(hash, true) {
            Place::Found(c) => {
                let d = pack(delta.requests, delta.tokens);
                unpack(c.fetch_add(d, Ordering::SeqCst).wrapping_add(d))
            }
            Place::Absent | Place::Full => {
                self.spilled.fetch_add(1, Ordering::Relaxed);
                self.overflow.add(hash, delta)
            }
        }
    }

    pub fn sub(&self, hash: u64, delta: Usage) {
        match self.place(hash, false) {
            Place::Found(c) => saturating_sub(c, delta),
            Place::Absent => {}
            Place::Full => self.overflow.sub(hash, delta),
        }
    }

    /// Adds tokens to `hash`'s count without letting the field pass `cap`
    /// (a settlement: actual usage may be anything an upstream says).
    pub fn add_tokens_capped(&self, hash: u64, tokens: u64, cap: u64) {
        match self.place(hash, true) {
            Place::Found(c) => super::cell::add_tokens_capped(c, tokens, cap),
            Place::Absent | Place::Full => {
                let now = self.overflow.get(hash).tokens;
                let room = cap.saturating_sub(now);
                self.overflow.add(
                    hash,
                    Usage {
                        requests: 0,
                        tokens: tokens.min(room),
                    },
                );
            }
        }
    }

    /// Empties the table (a small one is cleared in place for its next
    /// window; a large one is replaced by a fresh allocation instead).
    pub fn clear(&self) {
        if self.inserted.load(Ordering::Relaxed) > 0 {
            for [k, c] in self.places.iter() {
                k.store(0, Ordering::Relaxed);
                c.store(0, Ordering::Relaxed);
            }
        }
        if self.spilled.load(Ordering::Relaxed) > 0 {
            self.overflow.clear();
        }
        self.inserted.store(0, Ordering::Relaxed);
        self.spilled.store(0, Ordering::Relaxed);
    }
}

/// How a limiter's tables are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// One client, counted exactly.
    Exact,
    /// Many clients: a [`ClientTable`] per window for at least `capacity`
    /// clients, growing with demand, all three within `memory` bytes.
    Clients {
        capacity: usize,
        memory: usize,
        overflow: OverflowKind,
    },
    /// Many clients in a plain count-min sketch (for comparison).
    Sketch { depth: usize, width: usize },
}

/// The counts of one window.
pub enum CountTable {
    Sketch(Sketch),
    Clients(ClientTable),
}

impl CountTable {
    /// The exact counter of one client.
    pub fn exact() -> Self {
        CountTable::Sketch(Sketch::new(1, 1))
    }

    pub fn new(kind: TableKind) -> Result<Self, String> {
        Ok(match kind {
            TableKind::Exact => CountTable::Sketch(Sketch::new(1, 1)),
            TableKind::Clients {
                capacity,
                memory,
                overflow,
            } => {
                let plan = TablePlan::new(capacity, memory);
                CountTable::Clients(ClientTable::with_places(
                    plan.max_places,
                    plan.overflow_bytes,
                    overflow,
                )?)
            }
            TableKind::Sketch { depth, width } => CountTable::Sketch(Sketch::new(depth, width)),
        })
    }

    /// Loads the first place `hash` probes, and nothing else. A decision
    /// reads `hash` in two windows' tables; a table for millions of clients
    /// is far larger than the cache, so each probe is a miss to memory.
    /// Touching both tables before probing either lets the two misses
    /// overlap instead of one waiting for the other.
    #[inline]
    pub fn touch(&self, hash: u64) {
        if let CountTable::Clients(t) = self {
            t.touch(hash);
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

    /// Adds settled tokens, the field never passing `cap`.
    pub fn add_tokens_capped(&self, hash: u64, tokens: u64, cap: u64) {
        match self {
            CountTable::Sketch(t) => t.add_tokens_capped(hash, tokens, cap),
            CountTable::Clients(t) => t.add_tokens_capped(hash, tokens, cap),
        }
    }

    /// Clients counted this window (client tables only).
    pub fn demand(&self) -> Option<u64> {
        match self {
            CountTable::Sketch(_) => None,
            CountTable::Clients(t) => Some(t.demand()),
        }
    }

    /// Empties the table in place.
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
        let t = ClientTable::new(1000).unwrap();
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

    #[test]
    fn both_overflow_sketches_count() {
        for kind in [OverflowKind::Packed, OverflowKind::Pingora] {
            let t = ClientTable::with_places(1, 1 << 16, kind).unwrap();
            let d = Usage {
                requests: 1,
                tokens: 10,
            };
            for i in 2..100u64 {
                t.add(i << 40, d);
            }
            let h = 77u64 << 40;
            assert!(t.get(h).requests >= 1, "{kind:?}");
            t.add_tokens_capped(h, u64::MAX / 4, 1000);
            assert!(t.get(h).tokens <= 1000 + 10, "{kind:?}: {:?}", t.get(h));
            t.sub(h, d);
            t.clear();
            assert_eq!(t.get(h), Usage::default(), "{kind:?}");
        }
    }
}
