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

/// `issued/<partition BE>/<tenant \0 programme \0><day>`: a partition's
/// persisted issuance per programme day (the `issuance` column family).
pub fn issued_key(partition: u32, p: &ProgrammeKey, day: i64) -> Vec<u8> {
    let mut k = issued_prefix(partition);
    k.extend_from_slice(&store::programme_prefix(&p.tenant_id, &p.programme_id));
    k.extend_from_slice(&store::millis_key(day));
    k
}

pub fn issued_prefix(partition: u32) -> Vec<u8> {
    let mut k = b"issued/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Splits `tenant \0 programme \0` off the front of a key.
pub fn parse_programme_prefix(b: &[u8]) -> Option<(ProgrammeKey, &[u8])> {
    let i = b.iter().position(|&x| x == 0)?;
    let j = i + 1 + b[i + 1..].iter().position(|&x| x == 0)?;
    let tenant = String::from_utf8(b[..i].to_vec()).ok()?;
    let programme = String::from_utf8(b[i + 1..j].to_vec()).ok()?;
    Some((ProgrammeKey { tenant_id: tenant, programme_id: programme }, &b[j + 1..]))
}

/// A partition's persisted issuance.
pub fn load(db: &store::Db, partition: u32) -> Result<Granted, store::StoreError> {
    let prefix = issued_prefix(partition);
    let mut persisted = Granted::new();
    for (k, v) in db.scan(store::Cf::Issuance, &prefix, &prefix, usize::MAX)? {
        let Some((p, rest)) = parse_programme_prefix(&k[prefix.len()..]) else { continue };
        let value = i64::from_be_bytes(v[..8].try_into().expect("stored issuance"));
        persisted.insert((p, store::millis_from_key(rest)), value);
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
