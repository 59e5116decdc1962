//! Making room in a map of decoded state kept between batches (the writers'
//! accounts, the risk fold's counters): a clock with one bit.
//!
//! Each entry carries a mark, set whenever a batch uses it. A full map is
//! brought back to [`KEPT_AFTER_EVICTION_PERCENT`] of its bound: entries not
//! marked go first, then any (the store has them all), and every entry kept
//! loses its mark, so the next time those used in between are the ones kept.
//! Clearing the whole map instead made every member a miss again each time a
//! partition's active members outgrew it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Share of its bound a full map is brought back to, in per cent.
pub const KEPT_AFTER_EVICTION_PERCENT: usize = 75;

/// How much of `map` (weighed by `weight`) to take out so that, with
/// `coming` about to be added, it weighs no more than `max`: nothing while
/// it fits, else down to [`KEPT_AFTER_EVICTION_PERCENT`] of `max`.
pub fn over(now: usize, coming: usize, max: usize) -> usize {
    if now.saturating_add(coming) <= max {
        return 0;
    }
    let kept = max as u128 * KEPT_AFTER_EVICTION_PERCENT as u128 / 100;
    let target = (kept as usize).saturating_sub(coming);
    now.saturating_sub(target)
}

/// Takes at least `over` of weight out of `map`: entries whose mark
/// (`recent`) is clear first, then any; clears the mark of every entry
/// kept. Returns the weight taken out.
pub fn evict<K: Eq + Hash, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    over: usize,
    weight: impl Fn(&V) -> usize,
    recent: impl Fn(&mut V) -> &mut bool,
) -> usize {
    evict_into(map, over, weight, recent, |_, _| {})
}

/// [`evict`], handing each entry taken out to `gone`.
pub fn evict_into<K: Eq + Hash, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    over: usize,
    weight: impl Fn(&V) -> usize,
    recent: impl Fn(&mut V) -> &mut bool,
    mut gone: impl FnMut(K, V),
) -> usize {
    if over == 0 {
        return 0;
    }
    let mut taken = 0;
    let first = map.extract_if(|_, v| {
        let mark = recent(v);
        if taken < over && !*mark {
            taken += weight(v);
            return true;
        }
        *mark = false;
        false
    });
    first.for_each(|(k, v)| gone(k, v));
    if taken < over {
        // Every entry was used since last time: any go.
        let rest = map.extract_if(|_, v| {
            if taken < over {
                taken += weight(v);
                return true;
            }
            false
        });
        rest.for_each(|(k, v)| gone(k, v));
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = HashMap<usize, (usize, bool)>;

    fn map(n: usize, recent: impl Fn(usize) -> bool) -> Map {
        (0..n).map(|i| (i, (1, recent(i)))).collect()
    }

    fn evict_over(m: &mut Map, coming: usize, max: usize) -> usize {
        let now = m.values().map(|v| v.0).sum();
        evict(m, over(now, coming, max), |v| v.0, |v| &mut v.1)
    }

    #[test]
    fn a_map_that_fits_loses_nothing() {
        let mut m = map(100, |_| false);
        assert_eq!(evict_over(&mut m, 0, 100), 0);
        assert_eq!(m.len(), 100);
        assert!(m.values().all(|v| !v.1));
    }

    #[test]
    fn a_full_map_keeps_the_entries_used_since_it_last_made_room() {
        let mut m = map(100, |i| i % 4 == 0);
        assert_eq!(evict_over(&mut m, 10, 100), 35, "down to 75 % with the 10 coming");
        assert_eq!(m.len(), 65);
        assert!((0..100).step_by(4).all(|i| m.contains_key(&i)), "the recent ones stay");
        assert!(m.values().all(|v| !v.1), "and lose their mark");
    }

    #[test]
    fn when_every_entry_was_used_any_go() {
        let mut m = map(100, |_| true);
        assert_eq!(evict_over(&mut m, 0, 80), 40);
        assert_eq!(m.len(), 60);
    }

    #[test]
    fn heavy_entries_count_by_their_weight() {
        let mut m: Map = (0..10).map(|i| (i, (100, false))).collect();
        // 1,000 against 800: down to 600, four entries of 100 out.
        assert_eq!(evict_over(&mut m, 0, 800), 400);
        assert_eq!(m.len(), 6);
    }
}
