//! Hash maps keyed by kernel ids: inode numbers, process ids, descriptor
//! numbers, kernel addresses.
//!
//! The standard hasher (SipHash) resists keys chosen to collide, at about
//! twenty nanoseconds a key; every traced event looks up a dozen ids, so
//! it took a tenth of sockspy's time under load. These keys are handed out
//! by the kernel, not chosen by whoever sends traffic, so a multiply-fold
//! hash does: one 64x64->128-bit multiply per word, high and low halves
//! folded so that every bit of the key reaches the low bits the table
//! indexes with (kernel addresses are aligned, their low bits all zero).
//! Keys that outsiders choose (socket addresses, names) stay in standard
//! maps.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

/// A map from kernel ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A set of kernel ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// An odd constant with its bits well spread (the golden ratio's, 2^64/φ).
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The multiply-fold hasher of [`IdMap`].
#[derive(Default)]
pub struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_i32(&mut self, n: i32) {
        self.add(u64::from(n as u32));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash<T: std::hash::Hash>(key: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(key)
    }

    /// Aligned kernel addresses differ only in high bits; a table of 1024
    /// buckets indexes with the low ten bits of the hash, which must still
    /// spread them.
    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let buckets: IdSet<u64> = (0..1024u64)
            .map(|i| hash(0xffff_8880_0000_0000 + i * 1024) & 1023)
            .collect();
        assert!(
            buckets.len() > 600,
            "{} buckets of 1024 used",
            buckets.len()
        );
    }

    #[test]
    fn equal_keys_hash_alike_and_tuples_see_every_part() {
        assert_eq!(hash(42u64), hash(42u64));
        assert_ne!(hash((7u64, true)), hash((7u64, false)));
        assert_ne!(hash(1u32), hash(2u32));
        let mut map: IdMap<u64, u32> = IdMap::default();
        map.insert(0xffff_8880_0000_0400, 1);
        map.insert(0xffff_8880_0000_0800, 2);
        assert_eq!(map.get(&0xffff_8880_0000_0800), Some(&2));
    }
}
