//! The accounts a writer keeps decoded between batches.

use crate::domain::{Account, AccountKey, Millis};
use crate::projection::Tail;
use crate::store::accounts;
use crate::FastMap;

/// An account as of the last committed batch.
pub(super) struct Kept {
    pub(super) account: Account,
    /// The instant its due-index row stands at.
    pub(super) due: Option<Millis>,
    /// How it is stored.
    pub(super) changed: accounts::Changed,
    /// The last page of its statement, while it has room.
    pub(super) page: Option<Tail>,
    /// Put back by a batch since the cache last made room (see
    /// [`make_room`]).
    pub(super) recent: bool,
}

/// Share of [`WriterConfig::cache_accounts_max`] a full cache is brought
/// back to, in per cent.
const CACHE_KEPT_AFTER_EVICTION_PERCENT: usize = 75;

/// Brings a cache holding more than `max` accounts (with `coming` about to be
/// put back) down to [`CACHE_KEPT_AFTER_EVICTION_PERCENT`] of `max`: accounts
/// no batch put back since the last time go first, then any (the store has
/// them all). Every account kept loses its mark, so the next time those that
/// were used in between are the ones kept (a clock with one bit). Clearing
/// the whole cache instead made every member a miss again each time a
/// partition's active members outgrew it.
pub(super) fn make_room(cache: &mut FastMap<AccountKey, Kept>, coming: usize, max: usize) {
    if cache.len() + coming <= max {
        return;
    }
    let target = (max * CACHE_KEPT_AFTER_EVICTION_PERCENT / 100).saturating_sub(coming);
    let mut over = cache.len().saturating_sub(target);
    cache.retain(|_, kept| {
        if over > 0 && !kept.recent {
            over -= 1;
            return false;
        }
        kept.recent = false;
        true
    });
    if over > 0 {
        // Every account was used since last time: any go.
        cache.retain(|_, _| {
            if over > 0 {
                over -= 1;
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(recent: bool) -> Kept {
        Kept { account: Account::default(), due: None, changed: Default::default(), page: None, recent }
    }

    fn key(i: usize) -> AccountKey {
        AccountKey::new("t", "p", &format!("m{i}"))
    }

    #[test]
    fn a_full_cache_keeps_the_accounts_used_since_it_last_made_room() {
        let mut cache = FastMap::default();
        for i in 0..100 {
            cache.insert(key(i), kept(i % 4 == 0));
        }
        make_room(&mut cache, 0, 100);
        assert_eq!(cache.len(), 100, "not over: nothing goes");

        make_room(&mut cache, 10, 100);
        assert_eq!(cache.len(), 65, "down to 75 % with the 10 coming");
        assert!((0..100).step_by(4).all(|i| cache.contains_key(&key(i))), "the recent ones stay");
        assert!(cache.values().all(|k| !k.recent), "and lose their mark");

        // Nothing recent now: any go, as many as needed.
        for i in 100..140 {
            cache.insert(key(i), kept(true));
        }
        make_room(&mut cache, 0, 100);
        assert_eq!(cache.len(), 75);
        assert!((100..140).all(|i| cache.contains_key(&key(i))));
    }
}
