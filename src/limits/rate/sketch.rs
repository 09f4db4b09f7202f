//! A count-min sketch of packed (requests, tokens) cells.

use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::{pack, saturating_sub, unpack, Usage};

/// A count-min sketch of packed (requests, tokens) cells.
pub struct Sketch {
    cells: Box<[AtomicU64]>,
    depth: usize,
    mask: usize,
}

impl Sketch {
    /// `width` is rounded up to a power of two.
    pub fn new(depth: usize, width: usize) -> Self {
        let depth = depth.max(1);
        let width = width.max(1).next_power_of_two();
        Sketch {
            // Zeroed by the allocator: pages stay uncommitted until touched.
            cells: bytemuck::zeroed_slice_box(depth * width),
            depth,
            mask: width - 1,
        }
    }

    /// Bytes held by the cells.
    pub fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU64>()
    }

    /// The cell of `hash` in each row (double hashing: one hash, `depth`
    /// independent-enough positions).
    #[inline]
    fn cells_of(&self, hash: u64) -> impl Iterator<Item = &AtomicU64> {
        let h1 = hash as usize;
        let h2 = ((hash >> 32) as usize) | 1;
        let width = self.mask + 1;
        (0..self.depth).map(move |r| {
            let col = h1.wrapping_add(r.wrapping_mul(h2)) & self.mask;
            &self.cells[r * width + col]
        })
    }

    /// The estimate for `hash`: the smallest count in its cells, per field.
    pub fn get(&self, hash: u64) -> Usage {
        let mut u = Usage {
            requests: u64::MAX,
            tokens: u64::MAX,
        };
        for c in self.cells_of(hash) {
            let v = unpack(c.load(Ordering::SeqCst));
            u.requests = u.requests.min(v.requests);
            u.tokens = u.tokens.min(v.tokens);
        }
        u
    }

    /// Adds `delta` and returns the new estimate.
    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        let d = pack(delta.requests, delta.tokens);
        let mut u = Usage {
            requests: u64::MAX,
            tokens: u64::MAX,
        };
        for c in self.cells_of(hash) {
            let v = unpack(c.fetch_add(d, Ordering::SeqCst).wrapping_add(d));
            u.requests = u.requests.min(v.requests);
            u.tokens = u.tokens.min(v.tokens);
        }
        u
    }

    /// Adds settled tokens, the field never passing `cap`.
    pub fn add_tokens_capped(&self, hash: u64, tokens: u64, cap: u64) {
        for c in self.cells_of(hash) {
            super::cell::add_tokens_capped(c, tokens, cap);
        }
    }

    /// Takes `delta` back, never below zero in any field.
    pub fn sub(&self, hash: u64, delta: Usage) {
        for c in self.cells_of(hash) {
            saturating_sub(c, delta);
        }
    }

    pub fn clear(&self) {
        for c in self.cells.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}
