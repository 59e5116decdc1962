//! Rows kept in memory under a budget of bytes, each with its key in one
//! block (the length of the key, the key, the value): the writers' members
//! let go by their decoded tier, and the risk fold's counters.
//!
//! A map of keys to rows costs a key's slot and blocks beside each row (an
//! account's key and fields beside its row weighed ~280 bytes, more than a
//! bench member's row); a set of blocks found by their key costs a pointer
//! and a length and the block's rounding.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

/// A key and its value, in one block.
pub struct Packed(Box<[u8]>);

const KEY_AT: usize = 4;

impl Packed {
    /// `key` and the value that is `parts` one after the other.
    pub fn new(key: &[u8], parts: &[&[u8]]) -> Packed {
        let len = KEY_AT + key.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&u32::try_from(key.len()).expect("a key under 4 GiB").to_le_bytes());
        b.extend_from_slice(key);
        parts.iter().for_each(|p| b.extend_from_slice(p));
        Packed(b.into_boxed_slice())
    }

    fn key_end(&self) -> usize {
        let len = u32::from_le_bytes(self.0[..KEY_AT].try_into().expect("four bytes"));
        KEY_AT + len as usize
    }

    pub fn key(&self) -> &[u8] {
        &self.0[KEY_AT..self.key_end()]
    }

    pub fn value(&self) -> &[u8] {
        &self.0[self.key_end()..]
    }

    /// What it weighs as the allocator holds it: its slot in a set about
    /// two-thirds full, and its block rounded up to 16 bytes.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Packed>() * 3 / 2 + self.0.len().div_ceil(16) * 16
    }
}

impl Borrow<[u8]> for Packed {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl Hash for Packed {
    /// As its key hashes: the set is searched by keys.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Packed {}

/// Rows found by their key, weighing `max` bytes at most.
pub struct PackedSet {
    set: HashSet<Packed, foldhash::fast::RandomState>,
    bytes: usize,
    max: usize,
}

impl PackedSet {
    pub fn new(max: usize) -> PackedSet {
        PackedSet { set: Default::default(), bytes: 0, max }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Packed> {
        self.set.get(key)
    }

    /// Takes a row out.
    pub fn take(&mut self, key: &[u8]) -> Option<Packed> {
        let row = self.set.take(key)?;
        self.bytes -= row.bytes();
        Some(row)
    }

    /// Keeps `rows` within `room` (and the set's own bound), making room
    /// first (down to [`crate::evict::KEPT_AFTER_EVICTION_PERCENT`] of it:
    /// any rows go, in no order); those that do not fit are not kept. A
    /// row replaces one of the same key.
    pub fn keep(&mut self, rows: Vec<Packed>, room: usize) {
        let room = room.min(self.max);
        let mut coming = 0;
        let rows: Vec<_> = rows
            .into_iter()
            .map_while(|row| {
                coming += row.bytes();
                (coming <= room).then_some(row)
            })
            .collect();
        let coming = rows.iter().map(Packed::bytes).sum();
        let over = crate::evict::over(self.bytes, coming, room);
        if over > 0 {
            let mut taken = 0;
            self.set.retain(|row| {
                if taken >= over {
                    return true;
                }
                taken += row.bytes();
                false
            });
            self.bytes -= taken;
        }
        for row in rows {
            if self.bytes + row.bytes() > room {
                continue;
            }
            self.bytes += row.bytes();
            if let Some(was) = self.set.replace(row) {
                self.bytes -= was.bytes();
            }
        }
    }

    pub fn clear(&mut self) {
        self.set.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// What the rows weigh ([`Packed::bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most they may weigh.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize, value: &[u8]) -> Packed {
        Packed::new(format!("key-{i}").as_bytes(), &[value, b"!"])
    }

    #[test]
    fn a_row_gives_back_its_key_and_its_value_in_one_piece() {
        let r = row(7, b"abc");
        assert_eq!((r.key(), r.value()), (&b"key-7"[..], &b"abc!"[..]));
        let empty = Packed::new(b"", &[]);
        assert_eq!((empty.key(), empty.value()), (&b""[..], &b""[..]));
    }

    #[test]
    fn a_row_is_found_by_its_key_and_replaces_one_of_the_same_key() {
        let mut set = PackedSet::new(1 << 20);
        set.keep(vec![row(1, b"a"), row(2, b"b")], usize::MAX);
        set.keep(vec![row(1, b"c")], usize::MAX);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(b"key-1").map(Packed::value), Some(&b"c!"[..]));
        assert_eq!(set.bytes(), 2 * row(1, b"a").bytes());
        let taken = set.take(b"key-2").unwrap();
        assert_eq!(taken.value(), b"b!");
        assert_eq!((set.len(), set.bytes()), (1, row(1, b"c").bytes()));
        assert!(set.take(b"key-2").is_none());
    }

    #[test]
    fn a_full_set_makes_room_and_stays_within_its_bound_and_the_room_given() {
        let one = row(0, b"x").bytes();
        let mut set = PackedSet::new(100 * one);
        for i in 0..1000 {
            set.keep(vec![row(i, b"x")], usize::MAX);
            assert!(set.bytes() <= 100 * one);
            assert!(set.get(format!("key-{i}").as_bytes()).is_some(), "the one coming is kept");
        }
        set.keep(vec![row(5000, b"x")], 10 * one);
        assert!(set.bytes() <= 10 * one);
        set.keep((0..20).map(|i| row(6000 + i, b"x")).collect(), 10 * one);
        assert!(set.bytes() <= 10 * one, "no more than fit are kept");
        assert_eq!(set.bytes(), set.set.iter().map(Packed::bytes).sum::<usize>());
    }
}
