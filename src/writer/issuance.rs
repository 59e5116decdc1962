//! The programme-wide daily issuance cap across this instance's partitions.
//!
//! `programme_daily_issuance_cap` is the one rule that counts across
//! partitions. Every partition's writer persists what it granted per
//! programme day (in its `meta`, with its checkpoint); in memory the counts
//! of all partitions, plus the grants of batches in flight, are summed here.
//! An earn under a cap is decided optimistically: against the count as it
//! stood, then counted only if nobody counted in between (otherwise decided
//! again with the new count), so no lock is held while deciding and two
//! partitions never grant past the cap together. Exact while one instance
//! owns every partition (the only deployment the log arbitration supports
//! today).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::{self, AccountKey, Points, ProgrammeKey};
use crate::store;

/// Granted points per (programme, programme day).
pub type Granted = HashMap<(ProgrammeKey, i64), Points>;

#[derive(Default)]
pub struct Issuance(Mutex<Granted>);

impl Issuance {
    pub fn add(&self, amounts: &Granted, sign: i64) {
        let mut t = self.0.lock().expect("issuance lock");
        for (k, v) in amounts {
            // Saturating: a day's issuance past 9.2 × 10^18 (10^12 a command)
            // stays at the top rather than wrap below the cap.
            let e = t.entry(k.clone()).or_default();
            *e = e.saturating_add(v.saturating_mul(sign));
        }
    }

    /// Issued so far on a programme day (all partitions of this instance).
    pub fn today(&self, programme: &ProgrammeKey, day: i64) -> Points {
        self.0.lock().expect("issuance lock").get(&(programme.clone(), day)).copied().unwrap_or(0)
    }

    /// Counts `granted` if the day's count is still `seen` (what the grant
    /// was decided against); false when another partition counted first.
    pub fn add_if_unchanged(&self, programme: &ProgrammeKey, day: i64, seen: Points, granted: &Granted) -> bool {
        let mut t = self.0.lock().expect("issuance lock");
        if t.get(&(programme.clone(), day)).copied().unwrap_or(0) != seen {
            return false;
        }
        for (k, v) in granted {
            let e = t.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
        true
    }
}

pub use crate::store::writer::issued_key;

/// A partition's persisted issuance.
pub fn load(db: &store::Db, partition: u32) -> Result<Granted, store::StoreError> {
    let prefix = store::writer::issued_prefix(partition);
    let mut persisted = Granted::new();
    for (k, v) in db.scan(store::Cf::Issuance, &prefix, &prefix, usize::MAX)? {
        let Ok((p, day)) = store::writer::parse_issued_key(partition, &k) else {
            tracing::warn!(partition, key = %crate::hex(&k), "issuance row with a key of another layout skipped");
            continue;
        };
        persisted.insert((p, day), store::read_i64(&v, "issued points")?);
    }
    Ok(persisted)
}

/// Granted points per (programme, day) in a record's events.
pub fn earned_in(account: &AccountKey, events: &[domain::Event], into: &mut Granted) {
    for e in events {
        if let domain::Event::PointsEarned { granted, day, .. } = e {
            let e = into.entry((account.programme(), *day)).or_default();
            *e = e.saturating_add(*granted);
        }
    }
}
