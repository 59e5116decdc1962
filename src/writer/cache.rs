//! The accounts a writer keeps between batches, under a budget of bytes:
//! the most recently used decoded, in a tenth of it, and behind them, in
//! the rest, as many more as fit as the one row they are stored as.
//!
//! A decoded account weighs three to five times its row (a bench member
//! 1,144 bytes against 232: `cargo bench --bench footprint`). An account
//! the decoded tier lets go is kept in the second tier as the one row of a
//! small account (whether the store has it so or as pieces; with its key
//! and the rest in one block: [`crate::store::packed`]), so that using
//! it again is a decode instead of lookups through the memtables and table
//! files (most of what a command cost once members outgrew the cache). The
//! row is the one the batch that last changed the account wrote to the
//! store, when it was stored as one row (or the one the rows tier had,
//! while the account is unchanged); else it is encoded when let go.
//! Only this writer writes its partition's accounts, and an account is in
//! one tier at a time (it moves to the decoded one when taken), so a kept
//! row is always what the store has.

use crate::domain::{Account, AccountKey, Millis};
use crate::evict;
use crate::projection::Tail;
use crate::store::packed::{Packed, PackedSet};
use crate::store::{accounts, snapshot};
use crate::FastMap;

/// Share of the budget the decoded tier may have at most, in per cent. A
/// member kept decoded costs no decode on its next command, but weighs
/// three to five rows: with most of the budget as rows, 4-minute runs on
/// 1,000,000 members peaked 60-230 MiB lower in RSS, and runs on 100,000
/// (every member kept either way) took ~5 % more CPU a command
/// (docs/benchmarks-log.md, twenty-eighth session).
pub const DECODED_SHARE_PERCENT: usize = 10;
/// Share of the budget the rows may have at most, in per cent: the rest
/// (so the decoded tier always has its share; the measured build let the
/// rows have all of it).
pub const ROWS_SHARE_PERCENT: usize = 100 - DECODED_SHARE_PERCENT;

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
    /// The account and its statement's last page as one row, when at hand
    /// (the batch that changed it encoded it so for the store, or the rows
    /// tier had it): what the rows tier keeps of it once it is let go.
    pub(super) row: Option<Box<[u8]>>,
}

impl Kept {
    /// What it holds in memory with its key, about ([`Account::bytes`],
    /// which counts the account's own struct): its slot in the map, the
    /// key's text, its box, the statement bytes not written yet and its row
    /// when it carries one.
    fn bytes(&self, key: &AccountKey) -> usize {
        use std::mem::size_of;
        let page = self.page.as_ref().map_or(0, |p| p.bytes.capacity());
        let row = self.row.as_ref().map_or(0, |r| r.len());
        size_of::<Slot>() + key_bytes(key) + size_of::<Kept>() - size_of::<Account>()
            + self.account.bytes()
            + page
            + row
    }
}

fn key_bytes(key: &AccountKey) -> usize {
    key.tenant_id.len() + key.programme_id.len() + key.member_id.len()
}

/// A kept account in the map, boxed: a map's free slots (up to half of
/// them after it grows) then cost a pointer each instead of a whole
/// account, and growing it moves pointers.
type Slot = (AccountKey, (Box<Kept>, usize));

/// `key` as the rows tier finds it: as the store does.
fn key_of(key: &AccountKey) -> Vec<u8> {
    crate::store::account_key(key)
}

/// An account let go by the decoded tier, as a row of the rows tier
/// ([`accounts::kept_row`]; a member kept so weighs its row, its key and
/// ~50 bytes), or `None` when it has changes not written (never so: a
/// batch puts back what it wrote).
fn row_of(key: &AccountKey, kept: Kept) -> Option<Packed> {
    debug_assert!(kept.changed.at_rest().is_some(), "an account put back with changes not written");
    let row = match kept.row {
        Some(row) => row,
        None => snapshot::encode_account_with(&kept.account, kept.page.as_ref()).into(),
    };
    accounts::kept_row(&key_of(key), &kept.changed, kept.due, &row)
}

/// The account and its statement's last page, as stored.
fn stored(row: &Packed) -> Option<&[u8]> {
    accounts::read_kept_row(row).map(|(_, _, stored)| stored)
}

/// The accounts kept, decoded and as rows, what they weigh, and the most
/// they may.
pub(super) struct Cache {
    kept: FastMap<AccountKey, (Box<Kept>, usize)>,
    bytes: usize,
    rows: PackedSet,
    /// Both tiers together.
    bytes_max: usize,
    decoded_max: usize,
}

impl Cache {
    /// An empty cache that keeps `bytes_max` at most (about: see
    /// [`Account::bytes`]), up to [`DECODED_SHARE_PERCENT`] of it decoded
    /// and up to [`ROWS_SHARE_PERCENT`] as rows.
    pub(super) fn new(bytes_max: usize) -> Cache {
        Cache::with_shares(bytes_max, DECODED_SHARE_PERCENT, ROWS_SHARE_PERCENT)
    }

    /// The decoded tier within `decoded_percent` of the budget, the rows
    /// within `rows_percent`.
    fn with_shares(bytes_max: usize, decoded_percent: usize, rows_percent: usize) -> Cache {
        let share = |percent: usize| (bytes_max as u128 * percent as u128 / 100) as usize;
        Cache {
            kept: FastMap::default(),
            bytes: 0,
            rows: PackedSet::new(share(rows_percent)),
            bytes_max,
            decoded_max: share(decoded_percent),
        }
    }

    /// A decoded account.
    pub(super) fn get(&self, key: &AccountKey) -> Option<&Kept> {
        self.kept.get(key).map(|(k, _)| &**k)
    }

    /// An account kept as a row, decoded, left where it is (a preview's);
    /// `None` when it is not kept so or its row does not decode.
    pub(super) fn read_row(&self, key: &AccountKey) -> Option<Account> {
        snapshot::decode_account(stored(self.rows.get(&key_of(key))?)?).ok()
    }

    /// Takes an account out, decoding it if the cache kept its row (a
    /// batch that commits puts it back). A row that does not decode (never
    /// seen: the writer encoded it) is named and left to the store.
    pub(super) fn take(&mut self, key: &AccountKey) -> Option<Kept> {
        if let Some((kept, bytes)) = self.kept.remove(key) {
            self.bytes -= bytes;
            return Some(*kept);
        }
        let row = self.rows.take(&key_of(key))?;
        let Some((changed, due, stored)) = accounts::read_kept_row(&row) else {
            tracing::error!(account = %key, "an account the writer kept as a row is cut short; reading it from the store");
            return None;
        };
        match snapshot::decode_account_with_tail(stored) {
            Ok((account, page)) => Some(Kept { account, due, changed, page, recent: false, row: Some(stored.into()) }),
            Err(e) => {
                tracing::error!(account = %key, error = %e, "an account the writer kept as a row does not decode; reading it from the store");
                None
            }
        }
    }

    /// Puts back the accounts a batch committed, making room for them
    /// first: accounts no batch put back since the cache last made room go
    /// first, then any (see [`crate::evict`]), as rows to the second tier
    /// (any row can go: the store has them all).
    pub(super) fn put_back(&mut self, accounts: Vec<(AccountKey, Kept)>) {
        let weighed: Vec<_> = accounts.into_iter().map(|(key, kept)| (kept.bytes(&key), key, kept)).collect();
        let coming = weighed.iter().map(|(bytes, ..)| bytes).sum();
        let over =
            evict::over(self.bytes, coming, self.decoded_max.min(self.bytes_max.saturating_sub(self.rows.bytes())));
        let mut gone = Vec::new();
        self.bytes -= evict::evict_into(
            &mut self.kept,
            over,
            |(_, bytes)| *bytes,
            |(kept, _)| &mut kept.recent,
            |key, (kept, _)| gone.push((key, kept)),
        );
        for (bytes, key, kept) in weighed {
            self.bytes += bytes;
            if let Some((_, was)) = self.kept.insert(key, (Box::new(kept), bytes)) {
                self.bytes -= was;
            }
        }
        self.keep_rows(gone);
    }

    /// Keeps the rows of accounts the decoded tier let go, making room.
    fn keep_rows(&mut self, gone: Vec<(AccountKey, Box<Kept>)>) {
        let room = self.bytes_max.saturating_sub(self.bytes);
        self.rows.keep(gone.into_iter().filter_map(|(key, kept)| row_of(&key, *kept)).collect(), room);
    }

    pub(super) fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
        self.rows.clear();
    }

    /// Accounts kept (decoded or as rows), and what they weigh.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.kept.len() + self.rows.len(), self.bytes + self.rows.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Event, Id, Lot};

    fn kept() -> Kept {
        Kept {
            account: Account::default(),
            due: None,
            changed: Default::default(),
            page: None,
            recent: true,
            row: None,
        }
    }

    /// An account with `lots` lots, stored as one row while they are few.
    fn with_lots(lots: usize) -> Kept {
        let mut k = kept();
        for i in 0..lots {
            let lot = Lot { earned: 5, remaining: 5, expires_at: Some(1_000), reminded: false, pending: false };
            k.account.lots.insert(Id::of(&format!("lot-{i}")), lot);
        }
        k.account.recount();
        k.due = Some(1_000);
        k
    }

    fn key(i: usize) -> AccountKey {
        AccountKey::new("t", "p", &format!("m{i:04}"))
    }

    fn has_row(c: &Cache, key: &AccountKey) -> bool {
        c.rows.get(&key_of(key)).is_some()
    }

    /// The decoded tier's accounts and what they weigh.
    fn decoded(c: &Cache) -> (usize, usize) {
        (c.kept.len(), c.bytes)
    }

    /// A cache that keeps `bytes` at most, all of it decoded if it can and
    /// up to half of it as rows (how each tier makes room shows best).
    fn cache(bytes: usize) -> Cache {
        Cache::with_shares(bytes, 100, 50)
    }

    #[test]
    fn a_cache_weighs_what_it_keeps_and_stays_under_its_budget() {
        let one = kept().bytes(&key(0));
        let mut cache = cache(100 * one);
        cache.put_back((0..100).map(|i| (key(i), kept())).collect());
        assert_eq!(decoded(&cache), (100, 100 * one), "a full budget keeps all");

        let taken = cache.take(&key(7)).unwrap();
        assert_eq!(decoded(&cache), (99, 99 * one));
        cache.put_back(vec![(key(7), taken)]);
        assert_eq!(decoded(&cache), (100, 100 * one));

        // Ten more: down to 75 % with them.
        cache.put_back((100..110).map(|i| (key(i), kept())).collect());
        assert_eq!(decoded(&cache), (75, 75 * one));
        assert!((100..110).all(|i| cache.get(&key(i)).is_some()), "the ones coming are kept");
    }

    #[test]
    fn the_accounts_put_back_since_the_cache_last_made_room_stay() {
        let one = kept().bytes(&key(0));
        let mut cache = cache(100 * one);
        cache.put_back((0..100).map(|i| (key(i), kept())).collect());
        cache.put_back(vec![(key(100), kept())]);
        // Every mark is clear now; the next batch uses a few.
        let mut used = Vec::new();
        for i in (0..75).step_by(5) {
            if !cache.kept.contains_key(&key(i)) {
                continue;
            }
            used.push((key(i), Kept { recent: true, ..cache.take(&key(i)).unwrap() }));
        }
        let keys: Vec<_> = used.iter().map(|(k, _)| k.clone()).collect();
        assert!(keys.len() >= 5, "most of them survived the first eviction");
        cache.put_back(used);
        cache.put_back((200..230).map(|i| (key(i), kept())).collect());
        assert!(keys.iter().all(|k| cache.get(k).is_some()), "the used ones stay");
    }

    /// A cache with room for ten accounts of three lots, given thirteen:
    /// some of the first ten let go.
    fn some_let_go() -> Cache {
        let mut cache = cache(10 * with_lots(3).bytes(&key(0)));
        cache.put_back((0..10).map(|i| (key(i), with_lots(3))).collect());
        cache.put_back((10..13).map(|i| (key(i), with_lots(3))).collect());
        cache
    }

    #[test]
    fn an_account_the_decoded_tier_lets_go_comes_back_from_its_row() {
        let mut cache = some_let_go();
        let gone: Vec<_> = (0..10).filter(|i| cache.get(&key(*i)).is_none()).collect();
        assert!(!gone.is_empty());
        assert_eq!(cache.size().0, 13, "the ones let go are kept as rows");
        for i in gone {
            let back = cache.take(&key(i)).expect("kept as a row");
            let want = with_lots(3);
            assert_eq!((back.account, back.due, back.changed.is_inline()), (want.account, want.due, true));
        }
        assert_eq!(cache.rows.len(), 0);
        assert_eq!(cache.rows.bytes(), 0);
    }

    #[test]
    fn an_account_let_go_is_kept_as_the_row_its_batch_wrote_not_encoded_again() {
        let one = with_lots(3).bytes(&key(0));
        let written: Box<[u8]> = snapshot::encode_account_with(&with_lots(4).account, None).into();
        let with_row = || Kept { row: Some(written.clone()), ..with_lots(3) };
        let mut cache = cache(10 * (one + written.len()));
        cache.put_back((0..10).map(|i| (key(i), with_row())).collect());
        cache.put_back((10..13).map(|i| (key(i), with_row())).collect());
        let gone = (0..10).find(|i| has_row(&cache, &key(*i))).expect("one kept as a row");
        let back = cache.take(&key(gone)).unwrap();
        assert_eq!(back.account, with_lots(4).account, "the row it came with");
        assert_eq!(back.row, Some(written), "and it keeps it while unchanged");
    }

    #[test]
    fn by_default_a_tenth_of_the_budget_is_decoded_and_the_rest_holds_more_members_as_rows() {
        let one = with_lots(3).bytes(&key(0));
        let mut cache = Cache::new(100 * one);
        for i in 0..1000 {
            cache.put_back(vec![(key(i), with_lots(3))]);
            assert!(cache.bytes <= 10 * one && cache.bytes + cache.rows.bytes() <= cache.bytes_max);
        }
        assert!(cache.size().0 > 100, "more members than the budget holds decoded: {:?}", cache.size());
    }

    #[test]
    fn an_account_kept_as_a_row_reads_without_leaving_the_tier() {
        let cache = some_let_go();
        let gone = (0..10).find(|i| has_row(&cache, &key(*i))).expect("one kept as a row");
        assert_eq!(cache.read_row(&key(gone)), Some(with_lots(3).account));
        assert!(has_row(&cache, &key(gone)));
        assert_eq!(cache.read_row(&key(99)), None, "not kept");
    }

    #[test]
    fn the_rows_stay_under_their_share_of_the_budget() {
        let one = with_lots(3).bytes(&key(0));
        let mut cache = Cache::new(4 * one);
        for i in 0..200 {
            cache.put_back(vec![(key(i), with_lots(3))]);
            assert!(cache.rows.bytes() <= cache.rows.max() && cache.bytes + cache.rows.bytes() <= cache.bytes_max);
        }
        assert!(cache.rows.len() > cache.kept.len(), "a row weighs less than a decoded account");
    }

    #[test]
    fn an_account_stored_as_pieces_comes_back_from_its_row_as_stored_so() {
        let big = accounts::INLINE_PIECES_MAX + 1;
        let mut stored = with_lots(big);
        // A write that found it past one row's pieces.
        let freeze = Event::AccountFrozen { earning: true, spending: false, operator: "o".into(), reason: "r".into() };
        stored.changed.note(&freeze);
        stored.changed = stored.changed.written(&stored.account);
        assert!(!stored.changed.is_inline());
        let one = stored.bytes(&key(0));
        let mut cache = cache(2 * one);
        cache.put_back(vec![(key(0), with_lots(big)), (key(1), with_lots(big))]);
        cache.put_back(vec![(key(0), stored)]);
        cache.put_back(vec![(key(2), with_lots(big))]);
        assert!(cache.get(&key(0)).is_none() && has_row(&cache, &key(0)));
        let back = cache.take(&key(0)).expect("kept as a row");
        assert_eq!(back.account, with_lots(big).account);
        assert!(!back.changed.is_inline(), "still stored as pieces");
    }

    #[test]
    fn a_kept_row_that_does_not_decode_is_left_to_the_store() {
        let mut cache = some_let_go();
        let gone = (0..10).find(|i| has_row(&cache, &key(*i))).expect("one kept as a row");
        let rows = cache.rows.len();
        let row = cache.rows.take(&key_of(&key(gone))).unwrap();
        let head = row.value().len() - stored(&row).unwrap().len();
        let mangled = Packed::new(row.key(), &[&row.value()[..head], &[0xff; 7]]);
        cache.rows.keep(vec![mangled], usize::MAX);
        assert!(cache.take(&key(gone)).is_none(), "read from the store instead");
        assert_eq!(cache.rows.len(), rows - 1);
    }

    #[test]
    fn an_account_let_go_is_kept_with_its_key_due_instant_and_row() {
        let written: Box<[u8]> = snapshot::encode_account_with(&with_lots(2).account, None).into();
        let kept = Kept { due: Some(-7), row: Some(written.clone()), ..with_lots(2) };
        let row = row_of(&key(3), kept).expect("at rest");
        let (changed, due, stored) = accounts::read_kept_row(&row).unwrap();
        assert_eq!(
            (row.key(), due, changed.is_inline(), stored),
            (key_of(&key(3)).as_slice(), Some(-7), true, &written[..])
        );
    }

    #[test]
    fn keys_whose_ids_split_differently_are_different_rows() {
        let (a, b) = (AccountKey::new("ab", "c", "m"), AccountKey::new("a", "bc", "m"));
        assert_ne!(key_of(&a), key_of(&b));
        let mut cache = cache(1 << 20);
        cache.rows.keep(vec![row_of(&a, with_lots(1)).unwrap()], usize::MAX);
        assert!(has_row(&cache, &a) && !has_row(&cache, &b));
    }

    #[test]
    fn a_member_kept_as_a_row_weighs_its_row_and_little_more() {
        let row = row_of(&key(0), with_lots(3)).unwrap();
        let stored = snapshot::encode_account(&with_lots(3).account).len();
        assert!(row.bytes() <= stored + key_bytes(&key(0)) + 64, "{} for a row of {stored}", row.bytes());
    }

    #[test]
    fn a_bigger_account_weighs_more() {
        assert!(with_lots(50).bytes(&key(0)) > kept().bytes(&key(0)) + 50 * 40);
    }
}
