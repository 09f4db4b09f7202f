// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Generic connection pooling
//!
//! The pool is optimized for high concurrency, high RPS use cases. Each connection group has a
//! lock free hot pool to reduce the lock contention when some connections are reused and released
//! very frequently.

#![warn(clippy::all)]
#![allow(clippy::new_without_default)]
#![allow(clippy::type_complexity)]

mod connection;
mod lru;

/// A hasher for the pool's integer keys (Floodgate patch; see the
/// repository's vendor/README.md): a group key is already a hash of its
/// peer (`Peer::reuse_hash`) and a connection's ID is its file descriptor,
/// neither chosen by a client, so SipHash — the default, about 150
/// instructions a look-up, three or four look-ups a proxied request — buys
/// nothing here. One multiply spreads a key's bits to the high ones
/// (DashMap picks a shard, and hashbrown a control byte, from those), and
/// a shift folds them back into the low ones (a bucket's index, the LRU's
/// shard).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IntKeyHasher(u64);

impl core::hash::Hasher for IntKeyHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Not used by the keys here (integers); correct for any other.
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }

    #[inline]
    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// [`IntKeyHasher`]s for the pool's maps.
pub(crate) type IntKeys = core::hash::BuildHasherDefault<IntKeyHasher>;

pub use connection::{ConnectionMeta, ConnectionPool, PoolNode};

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::{BuildHasher, Hash, Hasher};

    // Floodgate patch: the integer-key hasher spreads keys that differ in
    // few bits — consecutive file descriptors, small group keys — over the
    // LRU's shards (its low bits) and over DashMap's shards and hashbrown's
    // control bytes (its high bits).
    #[test]
    fn int_keys_spread_over_low_and_high_bits() {
        let hash = |k: i32| IntKeys::default().hash_one(k);
        let mut low = [0u32; 16];
        let mut high = [0u32; 16];
        for fd in 0..1600 {
            let h = hash(fd);
            low[(h % 16) as usize] += 1;
            high[(h >> 60) as usize] += 1;
        }
        for (shards, which) in [(low, "low"), (high, "high")] {
            assert!(
                shards.iter().all(|n| (60..=140).contains(n)),
                "{which} bits: {shards:?}"
            );
        }
        // Group keys: a u64 each, as `Peer::reuse_hash` gives them.
        let mut top7 = std::collections::HashSet::new();
        for key in 0..256u64 {
            let mut h = IntKeyHasher::default();
            key.hash(&mut h);
            top7.insert(h.finish() >> 57);
        }
        assert!(top7.len() > 100, "{}", top7.len());
        // Distinct keys, distinct hashes (the multiply is a bijection and
        // so is the fold).
        let all: std::collections::HashSet<u64> = (0..100_000i32).map(hash).collect();
        assert_eq!(all.len(), 100_000);
    }
}
