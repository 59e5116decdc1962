//! A bounded map of decoded state kept between batches (writers' accounts,
//! projectors' accounts, risk counters). The store holds everything; the
//! cache only saves reading and decoding it again.
//!
//! Over its bound the cache drops an eighth of its entries, those not used
//! since the previous trim first (a clock, the cheap cousin of LRU), so hot
//! accounts stay decoded. Emptying it wholesale, as it used to, made every
//! account a miss right after each clear: with 100,000 accounts and room for
//! 25,000 per partition, most lookups went to RocksDB.

use std::hash::Hash;

use crate::FastMap;

pub struct Bounded<K, V> {
    /// Each value with its "used since the last trim" bit.
    map: FastMap<K, (V, bool)>,
    max: usize,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    pub fn new(max: usize) -> Bounded<K, V> {
        Bounded { map: FastMap::default(), max }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// The value, marked as used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|(v, used)| {
            *used = true;
            v
        })
    }

    /// Puts a value in, marked as used (it may take the cache over its
    /// bound until the next [`Bounded::trim`]).
    pub fn insert(&mut self, key: K, value: V) {
        self.map.insert(key, (value, true));
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(v, _)| v)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Over the bound: drops entries until 7/8 of it remain, first those not
    /// used since the previous trim, never one `pinned` keeps (e.g. changes
    /// not written yet). Clears every survivor's "used" bit.
    pub fn trim(&mut self, pinned: impl Fn(&V) -> bool) {
        if self.map.len() <= self.max {
            return;
        }
        let mut excess = self.map.len() - self.max / 8 * 7;
        for unused_only in [true, false] {
            self.map.retain(|_, (v, used)| {
                if excess == 0 || pinned(v) || (unused_only && *used) {
                    *used = false;
                    return true;
                }
                excess -= 1;
                false
            });
            if excess == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_keeps_what_was_used_since_the_last_one() {
        let mut c = Bounded::new(80);
        for k in 0..80u32 {
            c.insert(k, k);
        }
        c.trim(|_| false);
        assert_eq!(c.len(), 80, "at the bound nothing goes");
        c.insert(80, 80);
        c.trim(|_| false);
        assert_eq!(c.len(), 70);
        // Every survivor's bit is clear now; use 10 of them, add 11 new.
        let survivors: Vec<u32> = (0..=80).filter(|k| c.contains_key(k)).collect();
        for k in &survivors[..10] {
            c.get_mut(k);
        }
        for k in 100..111 {
            c.insert(k, k);
        }
        c.trim(|_| false);
        assert_eq!(c.len(), 70);
        for k in survivors[..10].iter().chain(&(100..111).collect::<Vec<_>>()) {
            assert!(c.contains_key(k), "{k} was used since the last trim");
        }
    }

    #[test]
    fn pinned_entries_stay_and_used_ones_go_when_nothing_else_can() {
        let mut c = Bounded::new(8);
        for k in 0..16u32 {
            c.insert(k, k);
        }
        // All used: the second pass drops used entries, never pinned ones.
        c.trim(|v| v % 2 == 0);
        assert_eq!(c.len(), 8);
        assert!((0..16).step_by(2).all(|k| c.contains_key(&k)));
    }
}
