//! An ordered map that is a sorted vector while that is cheap, and a
//! `BTreeMap` once it is not.
//!
//! An account holds a few maps (lots, earns, spends, reservations, the day's
//! actions), and most hold a handful of entries. A `BTreeMap` allocates a
//! node with room for eleven entries for the first one (about 0.6-0.9 KB for
//! a lot or an earn), so a member with one earn took about 2 KB in every
//! cache of decoded accounts. As a vector an entry costs its own size, and
//! inserting in key order (decoding a stored account) is a push. Inserting
//! in the middle of a long vector moves everything after it, which measured
//! slower than a `BTreeMap` when building many accounts at once (a replay:
//! lot ids are request ids, in no order); so a vector of
//! [`VEC_INSERT_LEN_MAX`] entries or more becomes a tree at its first insert
//! in the middle. Either way it iterates in key order and compares equal by
//! its entries.

use std::borrow::Borrow;
use std::collections::{btree_map, BTreeMap};
use std::fmt;

/// Entries a map keeps in its vector when an insert lands in the middle;
/// past this such an insert turns it into a `BTreeMap` (see the module doc).
const VEC_INSERT_LEN_MAX: usize = 16;

#[derive(Clone)]
pub struct VecMap<K, V> {
    repr: Repr<K, V>,
}

#[derive(Clone)]
enum Repr<K, V> {
    /// Sorted by key, no key twice.
    Vec(Vec<(K, V)>),
    Tree(BTreeMap<K, V>),
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { repr: Repr::Vec(Vec::new()) }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub const fn new() -> Self {
        VecMap { repr: Repr::Vec(Vec::new()) }
    }

    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Vec(v) => v.len(),
            Repr::Tree(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes its entries take on the heap, about: a vector's capacity,
    /// or a tree's entries in nodes about two-thirds full. What the entries
    /// hold on the heap themselves is not counted.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(K, V)>();
        match &self.repr {
            Repr::Vec(v) => v.capacity() * entry,
            Repr::Tree(t) => t.len() * entry * 3 / 2,
        }
    }

    fn find<Q: Ord + ?Sized>(v: &[(K, V)], key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        v.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match &self.repr {
            Repr::Vec(v) => Self::find(v, key).ok().map(|i| &v[i].1),
            Repr::Tree(t) => t.get(key),
        }
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match &mut self.repr {
            Repr::Vec(v) => Self::find(v, key).ok().map(|i| &mut v[i].1),
            Repr::Tree(t) => t.get_mut(key),
        }
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// Turns a vector of [`VEC_INSERT_LEN_MAX`] entries or more into a tree
    /// when `key` would go into its middle.
    fn make_room(&mut self, key: &K) {
        if let Repr::Vec(v) = &mut self.repr {
            let long = v.len() >= VEC_INSERT_LEN_MAX;
            if long && v.last().is_some_and(|(last, _)| last > key) && Self::find(v, key).is_err() {
                let entries = std::mem::take(v);
                self.repr = Repr::Tree(entries.into_iter().collect());
            }
        }
    }

    /// Puts `value` at `key`, returning what was there.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.make_room(&key);
        match &mut self.repr {
            Repr::Tree(t) => t.insert(key, value),
            Repr::Vec(v) if v.last().is_none_or(|(last, _)| *last < key) => {
                grow_gently(v);
                v.push((key, value));
                None
            }
            Repr::Vec(v) => match Self::find(v, &key) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) => {
                    grow_gently(v);
                    v.insert(i, (key, value));
                    None
                }
            },
        }
    }

    /// The value at `key`, inserted as `V::default()` first if missing.
    pub fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.make_room(&key);
        match &mut self.repr {
            Repr::Tree(t) => t.entry(key).or_default(),
            Repr::Vec(v) => {
                let i = match Self::find(v, &key) {
                    Ok(i) => i,
                    Err(i) => {
                        grow_gently(v);
                        v.insert(i, (key, V::default()));
                        i
                    }
                };
                &mut v[i].1
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match &mut self.repr {
            Repr::Vec(v) => Self::find(v, key).ok().map(|i| v.remove(i).1),
            Repr::Tree(t) => t.remove(key),
        }
    }

    /// In key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter(match &self.repr {
            Repr::Vec(v) => Either::Vec(v.iter()),
            Repr::Tree(t) => Either::Tree(t.iter()),
        })
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.iter().map(|(_, v)| v)
    }

    pub fn clear(&mut self) {
        self.repr = Repr::Vec(Vec::new());
    }
}

/// Makes room for one more entry in a full vector by half as many again
/// (at least one), not by doubling from four as `Vec` does: most maps of
/// most accounts hold one to three entries and stay so, and a cache of a
/// few hundred thousand decoded accounts paid for three empty slots in each
/// (about 0.7 KB an account).
fn grow_gently<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 2).max(1));
    }
}

/// One of the two representations' iterators.
enum Either<A, B> {
    Vec(A),
    Tree(B),
}

/// Borrowed entries in key order.
pub struct Iter<'a, K, V>(Either<std::slice::Iter<'a, (K, V)>, btree_map::Iter<'a, K, V>>);

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);
    fn next(&mut self) -> Option<(&'a K, &'a V)> {
        match &mut self.0 {
            Either::Vec(i) => i.next().map(|(k, v)| (k, v)),
            Either::Tree(i) => i.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Either::Vec(i) => i.size_hint(),
            Either::Tree(i) => i.size_hint(),
        }
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Either::Vec(i) => i.next_back().map(|(k, v)| (k, v)),
            Either::Tree(i) => i.next_back(),
        }
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

/// Owned entries in key order.
pub struct IntoIter<K, V>(Either<std::vec::IntoIter<(K, V)>, btree_map::IntoIter<K, V>>);

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        match &mut self.0 {
            Either::Vec(i) => i.next(),
            Either::Tree(i) => i.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            Either::Vec(i) => i.size_hint(),
            Either::Tree(i) => i.size_hint(),
        }
    }
}

/// Equal when they hold the same entries, whichever form each has.
impl<K: Ord, V: PartialEq> PartialEq for VecMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<K: Ord, V: Eq> Eq for VecMap<K, V> {}

/// Like `BTreeMap`'s: for a key given twice, the last value wins.
impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable, so equal keys keep their order and the last one is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => out.push(e),
            }
        }
        VecMap { repr: Repr::Vec(out) }
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;
    fn into_iter(self) -> IntoIter<K, V> {
        IntoIter(match self.repr {
            Repr::Vec(v) => Either::Vec(v.into_iter()),
            Repr::Tree(t) => Either::Tree(t.into_iter()),
        })
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

/// Panics when `key` is missing, like `BTreeMap`'s.
impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key in the VecMap")
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::VecMap;

    proptest! {
        /// Any sequence of inserts, removals and increments leaves the same
        /// contents, in the same order, as a `BTreeMap` given the same.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..3, 0u16..40, any::<i32>()), 0..200)) {
            let mut v: VecMap<String, i32> = VecMap::new();
            let mut b: BTreeMap<String, i32> = BTreeMap::new();
            for (op, k, x) in ops {
                let k = format!("k{k}");
                match op {
                    0 => prop_assert_eq!(v.insert(k.clone(), x), b.insert(k, x)),
                    1 => prop_assert_eq!(v.remove(k.as_str()), b.remove(k.as_str())),
                    _ => {
                        *v.entry_or_default(k.clone()) += 1;
                        *b.entry(k).or_default() += 1;
                    }
                }
                prop_assert_eq!(v.len(), b.len());
            }
            prop_assert!(v.iter().eq(b.iter()));
            for k in b.keys() {
                prop_assert_eq!(v.get(k.as_str()), b.get(k));
            }
            let collected: VecMap<String, i32> = b.clone().into_iter().rev().chain(b.clone()).collect();
            prop_assert!(collected.iter().eq(b.iter()));
        }
    }

    #[test]
    fn stays_a_vector_when_filled_in_key_order_and_compares_by_entries() {
        let mut in_order: VecMap<u32, u32> = VecMap::new();
        (0..100).for_each(|k| assert_eq!(in_order.insert(k * 2, k), None));
        assert!(matches!(in_order.repr, super::Repr::Vec(_)));
        let mut tree = in_order.clone();
        assert_eq!(tree.insert(51, 0), None);
        assert!(matches!(tree.repr, super::Repr::Tree(_)));
        assert_eq!(tree.remove(&51), Some(0));
        assert_eq!(tree, in_order);
        // Small vectors take inserts in the middle as they are.
        let mut small: VecMap<u32, u32> = (0..10).map(|k| (k * 2, k)).collect();
        *small.entry_or_default(5) += 1;
        assert!(matches!(small.repr, super::Repr::Vec(_)));
        assert_eq!(small.keys().copied().collect::<Vec<_>>(), [0, 2, 4, 5, 6, 8, 10, 12, 14, 16, 18]);
    }

    #[test]
    fn a_key_given_twice_keeps_the_last_value() {
        let m: VecMap<&str, i32> = [("b", 1), ("a", 2), ("b", 3)].into_iter().collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), [(&"a", &2), (&"b", &3)]);
    }
}
