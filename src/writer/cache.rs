//! The accounts a writer keeps decoded between batches, under a budget of
//! bytes.

use crate::domain::{Account, AccountKey, Millis};
use crate::evict;
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
    /// Put back by a batch since the cache last made room.
    pub(super) recent: bool,
}

impl Kept {
    /// What it holds in memory with its key, about ([`Account::bytes`],
    /// which counts the account's own struct): its slot in the map, the
    /// key's text, its box and the statement bytes not written yet.
    fn bytes(&self, key: &AccountKey) -> usize {
        use std::mem::size_of;
        let key = key.tenant_id.len() + key.programme_id.len() + key.member_id.len();
        let page = self.page.as_ref().map_or(0, |p| p.bytes.capacity());
        size_of::<Slot>() + key + size_of::<Kept>() - size_of::<Account>() + self.account.bytes() + page
    }
}

/// A kept account in the map, boxed: a map's free slots (up to half of
/// them after it grows) then cost a pointer each instead of a whole
/// account, and growing it moves pointers.
type Slot = (AccountKey, (Box<Kept>, usize));

/// The accounts kept, what they weigh, and the most they may.
pub(super) struct Cache {
    kept: FastMap<AccountKey, (Box<Kept>, usize)>,
    bytes: usize,
    bytes_max: usize,
}

impl Cache {
    /// An empty cache that keeps `bytes_max` at most (about: see
    /// [`Account::bytes`]).
    pub(super) fn new(bytes_max: usize) -> Cache {
        Cache { kept: FastMap::default(), bytes: 0, bytes_max }
    }

    pub(super) fn get(&self, key: &AccountKey) -> Option<&Kept> {
        self.kept.get(key).map(|(k, _)| &**k)
    }

    /// Takes an account out (a batch that commits puts it back).
    pub(super) fn take(&mut self, key: &AccountKey) -> Option<Kept> {
        let (kept, bytes) = self.kept.remove(key)?;
        self.bytes -= bytes;
        Some(*kept)
    }

    /// Puts back the accounts a batch committed, making room for them
    /// first: accounts no batch put back since the cache last made room go
    /// first, then any (the store has them all; see [`crate::evict`]).
    pub(super) fn put_back(&mut self, accounts: Vec<(AccountKey, Kept)>) {
        let weighed: Vec<_> = accounts.into_iter().map(|(key, kept)| (kept.bytes(&key), key, kept)).collect();
        let coming = weighed.iter().map(|(bytes, ..)| bytes).sum();
        let over = evict::over(self.bytes, coming, self.bytes_max);
        self.bytes -= evict::evict(&mut self.kept, over, |(_, bytes)| *bytes, |(kept, _)| &mut kept.recent);
        for (bytes, key, kept) in weighed {
            self.bytes += bytes;
            if let Some((_, was)) = self.kept.insert(key, (Box::new(kept), bytes)) {
                self.bytes -= was;
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
    }

    /// Accounts kept, and what they weigh.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.kept.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> Kept {
        Kept { account: Account::default(), due: None, changed: Default::default(), page: None, recent: true }
    }

    fn key(i: usize) -> AccountKey {
        AccountKey::new("t", "p", &format!("m{i:04}"))
    }

    #[test]
    fn a_cache_weighs_what_it_keeps_and_stays_under_its_budget() {
        let one = kept().bytes(&key(0));
        let mut cache = Cache::new(100 * one);
        cache.put_back((0..100).map(|i| (key(i), kept())).collect());
        assert_eq!(cache.size(), (100, 100 * one), "a full budget keeps all");

        let taken = cache.take(&key(7)).unwrap();
        assert_eq!(cache.size(), (99, 99 * one));
        cache.put_back(vec![(key(7), taken)]);
        assert_eq!(cache.size(), (100, 100 * one));

        // Ten more: down to 75 % with them.
        cache.put_back((100..110).map(|i| (key(i), kept())).collect());
        assert_eq!(cache.size(), (75, 75 * one));
        assert!((100..110).all(|i| cache.get(&key(i)).is_some()), "the ones coming are kept");
    }

    #[test]
    fn the_accounts_put_back_since_the_cache_last_made_room_stay() {
        let one = kept().bytes(&key(0));
        let mut cache = Cache::new(100 * one);
        cache.put_back((0..100).map(|i| (key(i), kept())).collect());
        cache.put_back(vec![(key(100), kept())]);
        // Every mark is clear now; the next batch uses a few.
        let used: Vec<_> = (0..75)
            .step_by(5)
            .filter_map(|i| cache.take(&key(i)).map(|k| (key(i), Kept { recent: true, ..k })))
            .collect();
        let keys: Vec<_> = used.iter().map(|(k, _)| k.clone()).collect();
        assert!(keys.len() >= 5, "most of them survived the first eviction");
        cache.put_back(used);
        cache.put_back((200..230).map(|i| (key(i), kept())).collect());
        assert!(keys.iter().all(|k| cache.get(k).is_some()), "the used ones stay");
    }

    #[test]
    fn a_bigger_account_weighs_more() {
        let mut big = kept();
        for i in 0..50 {
            let lot = crate::domain::Lot { earned: 1, remaining: 1, expires_at: None, reminded: false, pending: false };
            big.account.lots.insert(crate::domain::Id::of(&format!("lot-{i}")), lot);
        }
        assert!(big.bytes(&key(0)) > kept().bytes(&key(0)) + 50 * 40);
    }
}
