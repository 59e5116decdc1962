//! The risk view and alerts, derived from events (their decision times,
//! never the wall clock) by the reconciliation consumer, in the same
//! WriteBatch as the books.
//!
//! Every stored value is written from one partition only (an account's
//! counters and windows, a partition's share of a day's issuance, a member's
//! first earn from an address on a day, alerts keyed by their record's
//! position), so any interleaving of partitions, live or in a replay, gives
//! byte-identical results. Rules that span partitions (issuance spikes, one
//! address earning for many members) are evaluated when alerts are listed,
//! as pure functions of those stored facts.
//!
//! Rules (thresholds in the programme's `RiskRules`; 0 = off):
//! - `member_daily_earn`: a member's earnings in a programme day reach the
//!   threshold (once per day);
//! - `member_daily_spend`: a member's spending (spends and captures) in a
//!   programme day reaches the threshold (once per day);
//! - `dense_spend`: more than N spends (and captures) within M minutes (once
//!   per burst: not again within M minutes of the last alert);
//! - `member_addresses`: more than N distinct addresses (client_ip,
//!   device_id) within M minutes (once per burst);
//! - `shared_address`: one address earning for more than N members in a day;
//!   `shared_spend_address`: one address spending (redeeming) for more than
//!   N members in a day (a mall account farm cashing out);
//! - `issuance_spike`: a day's issuance above k% of the trailing 7-day daily
//!   average and at least a minimum; `redemption_spike`: the same of a day's
//!   redemption (spends and captures);
//! - `log_record_quarantined`: a record of the log that every reader skips
//!   (it does not decode, names another partition's account, or would break
//!   its account's invariants), naming its partition, offset and why; under
//!   the programme it names, or, when it does not decode, under none: such
//!   an alert is listed with every programme's (nobody can tell whose it
//!   was) whatever the time range;
//! - `scheduled_settlement_set_aside`: the writer could not settle what fell
//!   due for a member (its `SettlementSetAside` record names why and when it
//!   tries again); once a programme day per member.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{calendar, AccountKey, Event, Millis, Programme, ProgrammeKey, RiskRules};
use crate::log::record::AccountRecord;
use crate::proto::state;
use crate::store::packed::{Packed, PackedSet};
use crate::store::{self, Batch, Cf, Db, StoreError};
use crate::FastMap;

/// Days the issuance-spike rule averages over.
pub const SPIKE_TRAILING_DAYS: i64 = 7;
/// Positions an alert lists at most.
pub const ALERT_EVENTS_MAX: usize = 32;
const MINUTE_MS: i64 = 60_000;
/// The rule of a record every reader skips.
pub const QUARANTINED_RULE: &str = "log_record_quarantined";
/// The rule of a scheduled settlement the writer set aside.
pub const SET_ASIDE_RULE: &str = "scheduled_settlement_set_aside";
/// Alerts of records that did not decode listed with a programme's, at most.
pub const UNATTRIBUTED_ALERTS_LISTED_MAX: usize = 1000;

/// The alerts' key prefix of records that name no programme.
fn unattributed() -> ProgrammeKey {
    ProgrammeKey { tenant_id: String::new(), programme_id: String::new() }
}

pub use crate::store::risk::RAISE_PREFIX;
use crate::store::risk::{
    account_row, alert_row, day_prefix, day_sum_row, raise_row, shared_row, Seen, ISSUANCE, REDEMPTION, SHARED_EARN,
    SHARED_SPEND,
};

// A member's alert to raise in their partition is an outbox row
// (`store::risk::raise_row`), written when the rule fires and deleted when
// the fold meets the member's `AlertRaised` of it ([`crate::finance::raiser`]).

fn programme_of(a: &AccountKey) -> ProgrammeKey {
    ProgrammeKey { tenant_id: a.tenant_id.clone(), programme_id: a.programme_id.clone() }
}

/// Accounts' risk counters a fold keeps decoded between batches, per
/// partition (about 370 bytes each with the key: ~15 MB a partition when
/// full); behind them, those it lets go are kept as rows
/// ([`RISK_ROWS_BYTES`]), a decode and an encoding away: with 10,000, at
/// 100,000 members (25,000 a partition) the fold took ~15 % more CPU a
/// command than with every member decoded.
pub const RISK_CACHE_ACCOUNTS: usize = 40_000;
/// Accounts' counters a rebuild from offset zero keeps per partition before
/// writing them out (~185 MB when full; two partitions fold at a time).
pub const REBUILD_RISK_CACHE_ACCOUNTS: usize = 500_000;
/// What the counters the live fold lets go may weigh in all, kept as their
/// rows, shared among the partitions ([`RiskFold::live`]): a bench member's
/// counters are a row of a few dozen bytes (~90 with its key), so this
/// keeps ~1,000,000 members, where decoded they would weigh ~370 bytes
/// each. A member not kept is a lookup in the books' database (at
/// 1,000,000 members most of them were).
pub const RISK_ROWS_BYTES: usize = 96 << 20;

/// A partition's risk fold: the counters of the accounts it has seen (kept
/// between batches, up to [`RISK_CACHE_ACCOUNTS`] decoded and behind them,
/// up to [`RISK_ROWS_BYTES`], as their rows) and what the current
/// batch changes, put into the batch by [`RiskFold::write`]. After a batch
/// that was not written, [`RiskFold::clear`] it.
pub struct RiskFold {
    /// Counters as stored (or about to be), whether listed in `dirty`, and
    /// whether used since the cache last made room ([`crate::evict`]).
    accounts: FastMap<AccountKey, (state::RiskState, bool, bool)>,
    /// Counters `accounts` let go, as stored or about to be (as `accounts`:
    /// [`RiskFold::clear`] after a batch not written), found by their row's
    /// key (a rebuild keeps none: it writes what it lets go).
    rows: PackedSet,
    dirty: Vec<AccountKey>,
    issuance: HashMap<(ProgrammeKey, i64), i64>,
    redemption: HashMap<(ProgrammeKey, i64), i64>,
    shared: BTreeMap<Vec<u8>, Vec<u8>>,
    alerts: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Members' alerts to raise (Some) or raised (None): `Cf::Outbox`.
    outbox: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Accounts kept at most; over it, the least used go (a rebuild's cache
    /// starts again empty: it writes what it keeps only when full).
    max: usize,
    /// A rebuild into an empty database ([`RiskFold::rebuild`]).
    rebuild: bool,
    /// A rebuild that has not written an account's counters yet: an account
    /// not in the cache has none stored either.
    nothing_written: bool,
}

impl RiskFold {
    /// The live fold of one of `partitions`: its share of [`RISK_ROWS_BYTES`].
    pub fn live(partitions: u32) -> RiskFold {
        RiskFold { rows: PackedSet::new(RISK_ROWS_BYTES / partitions.max(1) as usize), ..RiskFold::default() }
    }
}

impl Default for RiskFold {
    /// The live fold: every batch writes the counters it changed (keeping
    /// the whole of [`RISK_ROWS_BYTES`] for the rows it lets go).
    fn default() -> RiskFold {
        RiskFold {
            accounts: FastMap::default(),
            rows: PackedSet::new(RISK_ROWS_BYTES),
            dirty: Vec::new(),
            issuance: HashMap::new(),
            redemption: HashMap::new(),
            shared: BTreeMap::new(),
            alerts: BTreeMap::new(),
            outbox: BTreeMap::new(),
            max: RISK_CACHE_ACCOUNTS,
            rebuild: false,
            nothing_written: false,
        }
    }
}

fn position(partition: u32, offset: u64) -> state::Position {
    state::Position { partition, offset }
}

fn date_of(day: i64) -> String {
    calendar::day_to_date(day).map(|d| d.to_string()).unwrap_or_default()
}

/// What one record moved, as the rules count it.
struct Movements {
    earned: i64,
    /// Spends and captures.
    spends: usize,
    spent: i64,
}

impl Movements {
    fn of(record: &AccountRecord) -> Movements {
        let mut m = Movements { earned: 0, spends: 0, spent: 0 };
        for e in &record.events {
            match e {
                Event::PointsEarned { granted, .. } => m.earned = m.earned.saturating_add(*granted),
                Event::PointsSpent { points, .. } | Event::ReservationCaptured { points, .. } => {
                    m.spends += 1;
                    m.spent = m.spent.saturating_add(*points);
                }
                _ => {}
            }
        }
        m
    }
}

/// Where an alert comes from: the record that triggered it.
struct Trigger<'a> {
    key: &'a AccountKey,
    at: Millis,
    day: i64,
    partition: u32,
    offset: u64,
}

impl Trigger<'_> {
    fn alert(
        &self,
        rule: &str,
        subject: String,
        figures: Vec<(&str, i64)>,
        events: Vec<state::Position>,
    ) -> state::Alert {
        state::Alert {
            rule: rule.into(),
            at: Some(crate::log::codec::instant(self.at)),
            accounts: vec![crate::log::codec::account_key_to_wire(self.key)],
            figures: figures.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            events,
            subject,
            date: date_of(self.day),
        }
    }

    fn here(&self) -> state::Position {
        position(self.partition, self.offset)
    }
}

/// A member's earnings of the day reaching the threshold (once a day: when
/// this record crosses it).
fn member_daily_earn(rules: &RiskRules, t: &Trigger, before: i64, s: &state::RiskState) -> Option<state::Alert> {
    let threshold = rules.member_daily_earn_alert;
    (threshold > 0 && before < threshold && s.earned >= threshold).then(|| {
        t.alert(
            "member_daily_earn",
            t.key.to_string(),
            vec![("earned_today", s.earned), ("threshold", threshold)],
            vec![t.here()],
        )
    })
}

/// A scheduled settlement the writer set aside (once a programme day per
/// member: it tries again every few minutes).
fn settlement_set_aside(t: &Trigger, record: &AccountRecord, s: &mut state::RiskState) -> Option<state::Alert> {
    let (reason, retry_at) = record.events.iter().find_map(|e| match e {
        Event::SettlementSetAside { reason, retry_at } => Some((reason, *retry_at)),
        _ => None,
    })?;
    if s.set_aside_alerted {
        return None;
    }
    s.set_aside_alerted = true;
    let subject = format!("{}: {reason}", t.key);
    Some(t.alert(SET_ASIDE_RULE, subject, vec![("retry_at_ms", retry_at)], vec![t.here()]))
}

/// A member's spending of the day reaching the threshold (once a day: when
/// this record crosses it).
fn member_daily_spend(rules: &RiskRules, t: &Trigger, before: i64, s: &state::RiskState) -> Option<state::Alert> {
    let threshold = rules.member_daily_spend_alert;
    (threshold > 0 && before < threshold && s.spent >= threshold).then(|| {
        t.alert(
            "member_daily_spend",
            t.key.to_string(),
            vec![("spent_today", s.spent), ("threshold", threshold)],
            vec![t.here()],
        )
    })
}

/// More spends than the threshold within the window (once per window).
fn dense_spend(rules: &RiskRules, t: &Trigger, spends: usize, s: &mut state::RiskState) -> Option<state::Alert> {
    if rules.dense_spend_count == 0 || spends == 0 {
        return None;
    }
    let window = i64::from(rules.dense_spend_minutes) * MINUTE_MS;
    for _ in 0..spends {
        s.spend_at_ms.push(t.at);
        s.spend_offsets.push(t.offset);
    }
    let keep = s.spend_at_ms.iter().position(|x| *x > t.at - window).unwrap_or(s.spend_at_ms.len());
    s.spend_at_ms.drain(..keep);
    s.spend_offsets.drain(..keep);
    let n = s.spend_at_ms.len();
    let mut alert = None;
    if n > rules.dense_spend_count as usize && s.dense_alerted_at_ms <= t.at - window {
        s.dense_alerted_at_ms = t.at;
        let events = s.spend_offsets.iter().take(ALERT_EVENTS_MAX).map(|o| position(t.partition, *o)).collect();
        let figures = vec![
            ("spends", n as i64),
            ("threshold", rules.dense_spend_count.into()),
            ("minutes", rules.dense_spend_minutes.into()),
        ];
        alert = Some(t.alert("dense_spend", t.key.to_string(), figures, events));
    }
    // Only the last `count + 1` spends can matter for the next alert.
    let excess = s.spend_at_ms.len().saturating_sub(rules.dense_spend_count as usize + 1);
    s.spend_at_ms.drain(..excess);
    s.spend_offsets.drain(..excess);
    alert
}

/// A member seen from more addresses than the threshold within the window
/// (once per window).
fn member_addresses(
    rules: &RiskRules,
    t: &Trigger,
    addresses: &[String],
    s: &mut state::RiskState,
) -> Option<state::Alert> {
    if rules.member_addresses == 0 || addresses.is_empty() {
        return None;
    }
    let window = i64::from(rules.member_addresses_minutes) * MINUTE_MS;
    // One entry per address, its latest use last (records come in time
    // order), and no more of them than the rule needs to fire (the newest):
    // a member's week of commands costs the threshold, not the commands.
    for a in addresses {
        if let Some(i) = s.addresses.iter().position(|x| x == a) {
            s.address_at_ms.remove(i);
            s.addresses.remove(i);
            s.address_offsets.remove(i);
        }
        s.address_at_ms.push(t.at);
        s.addresses.push(a.clone());
        s.address_offsets.push(t.offset);
    }
    let expired = s.address_at_ms.iter().position(|x| *x > t.at - window).unwrap_or(s.address_at_ms.len());
    let over = s.addresses.len().saturating_sub(expired).saturating_sub(rules.member_addresses as usize + 1);
    let keep = expired + over;
    s.address_at_ms.drain(..keep);
    s.addresses.drain(..keep);
    s.address_offsets.drain(..keep);
    let mut distinct: Vec<&String> = s.addresses.iter().collect();
    distinct.sort();
    if distinct.len() <= rules.member_addresses as usize || s.addresses_alerted_at_ms > t.at - window {
        return None;
    }
    s.addresses_alerted_at_ms = t.at;
    let mut offsets = s.address_offsets.clone();
    offsets.sort_unstable();
    offsets.dedup();
    let subject = distinct.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",");
    let figures = vec![
        ("addresses", distinct.len() as i64),
        ("threshold", rules.member_addresses.into()),
        ("minutes", rules.member_addresses_minutes.into()),
    ];
    let events = offsets.iter().take(ALERT_EVENTS_MAX).map(|o| position(t.partition, *o)).collect();
    Some(t.alert("member_addresses", subject, figures, events))
}

impl RiskFold {
    /// A member's counters as stored (or about to be), for programme `day`,
    /// marked to be written.
    fn counters(&mut self, db: &Db, key: &AccountKey, day: i64) -> Result<&mut state::RiskState, StoreError> {
        if !self.accounts.contains_key(key) {
            let row = account_row(key);
            let s = match self.rows.take(&row) {
                Some(kept) => store::decode_row::<state::RiskState>(kept.value())?,
                None => match if self.nothing_written { None } else { db.get(Cf::Risk, &row)? } {
                    Some(b) => store::decode_row::<state::RiskState>(&b)?,
                    None => state::RiskState::default(),
                },
            };
            self.accounts.insert(key.clone(), (s, false, true));
        }
        let (s, dirty, recent) = self.accounts.get_mut(key).expect("loaded");
        *recent = true;
        if !*dirty {
            *dirty = true;
            self.dirty.push(key.clone());
        }
        if s.day != day {
            *s = state::RiskState { day, ..std::mem::take(s) };
            s.earned = 0;
            s.spent = 0;
            s.commands = 0;
            s.set_aside_alerted = false;
        }
        Ok(s)
    }

    /// The programme's issuance of the day and, per address, the first earn
    /// of each member: the facts the programme-wide rules read.
    fn count_earn(
        &mut self,
        db: &Db,
        rules: &RiskRules,
        t: &Trigger,
        earned: i64,
        addresses: &[String],
    ) -> Result<(), StoreError> {
        let pk = programme_of(t.key);
        let sum = self.issuance.entry((pk.clone(), t.day)).or_insert(i64::MIN);
        if *sum == i64::MIN {
            *sum = match db.get(Cf::Risk, &day_sum_row(ISSUANCE, &pk, t.day, t.partition))? {
                Some(b) => store::risk::day_sum(&b)?,
                None => 0,
            };
        }
        *sum = sum.saturating_add(earned);
        for a in addresses {
            let row = shared_row(SHARED_EARN, &pk, t.day, a, &t.key.member_id);
            if !self.shared.contains_key(&row) && db.get(Cf::Risk, &row)?.is_none() {
                let v = Seen { at: t.at, partition: t.partition, offset: t.offset }.encode();
                self.shared.insert(row.clone(), v);
                self.raise_shared(db, rules, t, a, &row)?;
            }
        }
        Ok(())
    }

    /// A member's first earn of the day from an address that has now earned
    /// for more than the rule's members: the member's `shared_address` alert
    /// to raise in their partition, and, when this member is the one that
    /// crossed, those of the members before. Each alert's time is that
    /// member's first earn from the address that day, so its id is the same
    /// whichever partition's fold sees the crossing first. (The listed
    /// alert is computed when alerts are listed, from the same rows.)
    fn raise_shared(
        &mut self,
        db: &Db,
        rules: &RiskRules,
        t: &Trigger,
        address: &str,
        row: &[u8],
    ) -> Result<(), StoreError> {
        let n = rules.shared_address_members as usize;
        if n == 0 || !rules.holds("shared_address") {
            return Ok(());
        }
        let pk = programme_of(t.key);
        let mut prefix = day_prefix(SHARED_EARN, &pk, t.day);
        prefix.extend_from_slice(address.as_bytes());
        prefix.push(0);
        let mut members: BTreeMap<Vec<u8>, Vec<u8>> = db.scan(Cf::Risk, &prefix, &prefix, n + 2)?.into_iter().collect();
        members.extend(
            self.shared
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if members.len() <= n {
            return Ok(());
        }
        let crossed = members.len() == n + 1;
        for (k, v) in members.iter().filter(|(k, _)| crossed || k.as_slice() == row) {
            let member = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            // A row that does not read raises nothing; the fold goes on.
            let Ok(Seen { at, partition, .. }) = Seen::decode(v) else { continue };
            let account = AccountKey::new(&pk.tenant_id, &pk.programme_id, &member);
            let alert = state::Alert {
                rule: "shared_address".into(),
                at: Some(crate::log::codec::instant(at)),
                accounts: vec![crate::log::codec::account_key_to_wire(&account)],
                figures: [("threshold".to_string(), n as i64)].into_iter().collect(),
                events: Vec::new(),
                subject: address.to_string(),
                date: date_of(t.day),
            };
            self.outbox.insert(raise_row(partition, &account, &alert_id(&alert)), Some(store::encode_row(&alert)));
        }
        Ok(())
    }

    /// Per address, the first spend of the day of each member (what
    /// `shared_spend_address` reads when alerts are listed).
    fn count_spend_addresses(&mut self, db: &Db, t: &Trigger, addresses: &[String]) -> Result<(), StoreError> {
        let pk = programme_of(t.key);
        for a in addresses {
            let row = shared_row(SHARED_SPEND, &pk, t.day, a, &t.key.member_id);
            if !self.shared.contains_key(&row) && db.get(Cf::Risk, &row)?.is_none() {
                let v = Seen { at: t.at, partition: t.partition, offset: t.offset }.encode();
                self.shared.insert(row, v);
            }
        }
        Ok(())
    }

    /// The programme's redemption of the day, this partition's share.
    fn count_spend(&mut self, db: &Db, t: &Trigger, spent: i64) -> Result<(), StoreError> {
        let pk = programme_of(t.key);
        let sum = self.redemption.entry((pk.clone(), t.day)).or_insert(i64::MIN);
        if *sum == i64::MIN {
            *sum = match db.get(Cf::Risk, &day_sum_row(REDEMPTION, &pk, t.day, t.partition))? {
                Some(b) => store::risk::day_sum(&b)?,
                None => 0,
            };
        }
        *sum = sum.saturating_add(spent);
        Ok(())
    }

    /// Folds one counted record of `partition` decided on programme `day`:
    /// the member's counters, the rules on one member, and the facts the
    /// programme-wide rules read when alerts are listed.
    pub fn record(
        &mut self,
        db: &Db,
        programme: &Programme,
        partition: u32,
        offset: u64,
        record: &AccountRecord,
        day: i64,
    ) -> Result<(), StoreError> {
        let rules = programme.risk;
        for e in &record.events {
            if let Event::AlertRaised { alert_id, .. } = e {
                self.outbox.insert(raise_row(partition, &record.account, alert_id), None);
            }
        }
        // An alert raised is the risk view's own doing, not the member's:
        // it counts for nothing (nor moves the member's day).
        if record.events.iter().all(|e| matches!(e, Event::AlertRaised { .. } | Event::EarningsHeld { .. })) {
            return Ok(());
        }
        let t = Trigger { key: &record.account, at: record.at, day, partition, offset };
        let m = Movements::of(record);
        let addresses: Vec<String> = [("ip", &record.context.client_ip), ("device", &record.context.device_id)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(kind, v)| format!("{kind}:{v}"))
            .collect();
        let s = self.counters(db, &record.account, day)?;
        let (before, spent_before) = (s.earned, s.spent);
        s.earned = s.earned.saturating_add(m.earned);
        s.spent = s.spent.saturating_add(m.spent);
        if !record.system {
            s.commands += 1;
        }
        let alerts: Vec<state::Alert> = [
            member_daily_earn(&rules, &t, before, s),
            member_daily_spend(&rules, &t, spent_before, s),
            dense_spend(&rules, &t, m.spends, s),
            member_addresses(&rules, &t, &addresses, s),
            settlement_set_aside(&t, record, s),
        ]
        .into_iter()
        .flatten()
        .collect();
        if m.earned > 0 {
            self.count_earn(db, &rules, &t, m.earned, &addresses)?;
        }
        if m.spent > 0 {
            self.count_spend(db, &t, m.spent)?;
        }
        if m.spends > 0 && rules.shared_spend_address_members > 0 {
            self.count_spend_addresses(db, &t, &addresses)?;
        }
        let pk = programme_of(&record.account);
        for a in alerts {
            let raise = raise_row(partition, &record.account, &alert_id(&a));
            self.outbox.insert(raise, Some(store::encode_row(&a)));
            self.alerts.insert(alert_row(&pk, t.at, partition, offset, &a.rule), store::encode_row(&a));
        }
        Ok(())
    }

    /// A record of `partition` at `offset` that every reader skips: an
    /// alert naming it and why, under the programme the record names (at
    /// its decision time) or under none when it did not decode.
    pub fn quarantined(&mut self, partition: u32, offset: u64, record: Option<&AccountRecord>, why: &str) {
        let (pk, at) = record.map_or((unattributed(), 0), |r| (programme_of(&r.account), r.at));
        let alert = state::Alert {
            rule: QUARANTINED_RULE.into(),
            at: record.map(|r| crate::log::codec::instant(r.at)),
            accounts: record.map(|r| crate::log::codec::account_key_to_wire(&r.account)).into_iter().collect(),
            figures: [("partition", i64::from(partition)), ("offset", i64::try_from(offset).unwrap_or(i64::MAX))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            events: vec![position(partition, offset)],
            subject: format!("partition {partition} offset {offset}: {why}"),
            date: String::new(),
        };
        self.alerts.insert(alert_row(&pk, at, partition, offset, QUARANTINED_RULE), store::encode_row(&alert));
    }

    /// A fold from offset zero into an empty database (`replay`, `verify`):
    /// an account's counters are written once, when the cache is full or
    /// at the end ([`RiskFold::finish`]), not with every batch, and none is
    /// looked up before the first such write. A rebuild of 7M records over
    /// 1,000,000 accounts spent two thirds of its time putting and getting
    /// them through the memtable (BENCHMARKS.md).
    pub fn rebuild() -> RiskFold {
        RiskFold {
            max: REBUILD_RISK_CACHE_ACCOUNTS,
            rows: PackedSet::new(0),
            rebuild: true,
            nothing_written: true,
            ..RiskFold::default()
        }
    }

    /// The counters changed since they were last written, as rows.
    fn changed_accounts(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        if self.rebuild && !self.dirty.is_empty() {
            self.nothing_written = false;
        }
        let mut rows = Vec::with_capacity(self.dirty.len());
        for k in std::mem::take(&mut self.dirty) {
            let (s, dirty, _) = self.accounts.get_mut(&k).expect("a dirty account is cached");
            *dirty = false;
            rows.push((account_row(&k), Some(store::encode_row(s))));
        }
        rows
    }

    /// Adds the fold's changes to `batch` (a rebuild's counters only when
    /// its cache is full).
    pub fn write(&mut self, batch: &mut Batch, partition: u32) {
        let full = self.accounts.len() > self.max;
        if !self.rebuild || full {
            for (k, v) in self.changed_accounts() {
                batch.put_or_delete(Cf::Risk, k, v);
            }
        }
        if full {
            // Every counter is written now: the least used go (all of them in
            // a rebuild, which would otherwise write those it keeps again at
            // every fill), kept as their rows in the live fold.
            let over = match self.rebuild {
                true => self.accounts.len(),
                false => crate::evict::over(self.accounts.len(), 0, self.max),
            };
            let mut gone = Vec::new();
            let keep = self.rows.max() > 0;
            crate::evict::evict_into(
                &mut self.accounts,
                over,
                |_| 1,
                |(_, _, recent)| recent,
                |key, (s, ..)| {
                    if keep {
                        gone.push(Packed::new(&account_row(&key), &[&store::encode_row(&s)]));
                    }
                },
            );
            self.rows.keep(gone, usize::MAX);
        }
        for ((p, day), sum) in self.issuance.drain() {
            batch.put(Cf::Risk, &day_sum_row(ISSUANCE, &p, day, partition), &store::points_row(sum));
        }
        for ((p, day), sum) in self.redemption.drain() {
            batch.put(Cf::Risk, &day_sum_row(REDEMPTION, &p, day, partition), &store::points_row(sum));
        }
        for (k, v) in std::mem::take(&mut self.shared) {
            batch.put(Cf::Risk, &k, &v);
        }
        for (k, v) in std::mem::take(&mut self.alerts) {
            batch.put(Cf::Alerts, &k, &v);
        }
        for (k, v) in std::mem::take(&mut self.outbox) {
            batch.put_or_delete(Cf::Outbox, k, v);
        }
    }

    /// The end of a rebuild: the counters not written yet, as rows to
    /// ingest (they are the latest of their keys).
    pub fn finish(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.changed_accounts()
    }

    /// Forgets everything (the store is the truth again).
    pub fn clear(&mut self) {
        let rows = PackedSet::new(self.rows.max());
        *self = RiskFold { max: self.max, rows, rebuild: self.rebuild, ..RiskFold::default() };
    }
}

/// A programme's issuance on one day, all partitions.
pub fn issuance(db: &Db, p: &ProgrammeKey, day: i64) -> Result<i64, StoreError> {
    day_sum(db, ISSUANCE, p, day)
}

/// A programme's day sum of the rows of `tag` (issuance, redemption), all
/// partitions.
fn day_sum(db: &Db, tag: u8, p: &ProgrammeKey, day: i64) -> Result<i64, StoreError> {
    let prefix = day_prefix(tag, p, day);
    let rows = db.scan(Cf::Risk, &prefix, &prefix, usize::MAX)?;
    rows.iter().try_fold(0i64, |sum, (_, v)| Ok(sum.saturating_add(store::risk::day_sum(v)?)))
}

/// A member's counters, when its latest record fell on `day` (or any day).
pub fn account_risk(db: &Db, key: &AccountKey) -> Result<Option<state::RiskState>, StoreError> {
    Ok(match db.get(Cf::Risk, &account_row(key))? {
        Some(b) => Some(store::decode_row::<state::RiskState>(&b)?),
        None => None,
    })
}

/// An alert's id, stable under replay: its rule, its time and what it is
/// about (a checksum of the subject, which may be long).
pub fn alert_id(a: &state::Alert) -> String {
    let at = a.at.as_ref().and_then(crate::log::codec::instant_millis).unwrap_or_default();
    format!("{}-{at}-{:08x}", a.rule, crc32c::crc32c(a.subject.as_bytes()))
}

/// Alerts of a programme decided in `[from, to)`: the stored ones and those
/// evaluated from the stored facts for every programme day the range
/// touches, sorted by (time, rule, subject).
pub fn alerts(db: &Db, programme: &Programme, from: Millis, to: Millis) -> Result<Vec<state::Alert>, StoreError> {
    let pk = programme.key();
    let prefix = store::programme_prefix(&pk.tenant_id, &pk.programme_id);
    let mut start = prefix.clone();
    start.extend_from_slice(&store::millis_key(from));
    let mut out = Vec::new();
    for (k, v) in db.scan(Cf::Alerts, &prefix, &start, usize::MAX)? {
        if store::risk::alert_time(prefix.len(), &k)? >= to {
            break;
        }
        out.push(store::decode_row::<state::Alert>(&v)?);
    }
    let none = unattributed();
    let none = store::programme_prefix(&none.tenant_id, &none.programme_id);
    for (_, v) in db.scan(Cf::Alerts, &none, &none, UNATTRIBUTED_ALERTS_LISTED_MAX)? {
        out.push(store::decode_row::<state::Alert>(&v)?);
    }
    let tz = programme.time_zone;
    let rules = programme.risk;
    for day in calendar::programme_day(tz, from)..=calendar::programme_day(tz, to - 1) {
        let Some(start_of_day) = calendar::day_to_date(day).and_then(|d| calendar::start_of_day(tz, d)) else {
            continue;
        };
        if (from..to).contains(&start_of_day) {
            let spikes = [
                (
                    ISSUANCE,
                    "issuance_spike",
                    "issued_today",
                    rules.issuance_spike_percent,
                    rules.issuance_spike_min_points,
                ),
                (
                    REDEMPTION,
                    "redemption_spike",
                    "redeemed_today",
                    rules.redemption_spike_percent,
                    rules.redemption_spike_min_points,
                ),
            ];
            for (tag, rule, figure, percent, min) in spikes.into_iter().filter(|s| s.3 > 0) {
                out.extend(spike(db, &pk, day, start_of_day, (tag, rule, figure), percent, min)?);
            }
        }
        if rules.shared_address_members > 0 {
            let n = rules.shared_address_members as usize;
            out.extend(shared_address_alerts(db, programme, day, from, to, (SHARED_EARN, "shared_address", n))?);
        }
        if rules.shared_spend_address_members > 0 {
            let n = rules.shared_spend_address_members as usize;
            out.extend(shared_address_alerts(db, programme, day, from, to, (SHARED_SPEND, "shared_spend_address", n))?);
        }
    }
    out.sort_by(|a, b| {
        let t = |x: &state::Alert| x.at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap_or_default();
        (t(a), &a.rule, &a.subject).cmp(&(t(b), &b.rule, &b.subject))
    });
    Ok(out)
}

/// A day's sum (issuance or redemption: `tag`) above `percent`% of the
/// trailing 7-day daily average and at least `min`: the alert `rule`, at
/// the start of the day.
fn spike(
    db: &Db,
    pk: &ProgrammeKey,
    day: i64,
    start_of_day: Millis,
    (tag, rule, figure): (u8, &str, &str),
    percent: u32,
    min: i64,
) -> Result<Option<state::Alert>, StoreError> {
    let today = day_sum(db, tag, pk, day)?;
    let mut trailing = 0i64;
    for d in day - SPIKE_TRAILING_DAYS..day {
        trailing = trailing.saturating_add(day_sum(db, tag, pk, d)?);
    }
    // today > percent% of trailing / 7, in integers.
    let spike = i128::from(today) * 100 * i128::from(SPIKE_TRAILING_DAYS) > i128::from(percent) * i128::from(trailing);
    if !spike || today < min || today <= 0 {
        return Ok(None);
    }
    Ok(Some(state::Alert {
        rule: rule.into(),
        at: Some(crate::log::codec::instant(start_of_day)),
        accounts: Vec::new(),
        figures: [
            (figure, today),
            ("trailing_7_day_total", trailing),
            ("trailing_daily_average", trailing / SPIKE_TRAILING_DAYS),
            ("threshold_percent", percent.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        events: Vec::new(),
        subject: date_of(day),
        date: date_of(day),
    }))
}

/// Addresses that earned (tag `s`) or spent (tag `p`) for more than N
/// members on `day`: the alert `rule`, at the first earn (or spend) of the
/// member who crossed N (by time, then position).
fn shared_address_alerts(
    db: &Db,
    programme: &Programme,
    day: i64,
    from: Millis,
    to: Millis,
    (tag, rule, n): (u8, &str, usize),
) -> Result<Vec<state::Alert>, StoreError> {
    let pk = programme.key();
    let prefix = day_prefix(tag, &pk, day);
    let mut by_address: BTreeMap<String, Vec<(Millis, u32, u64, String)>> = BTreeMap::new();
    for (k, v) in db.scan(Cf::Risk, &prefix, &prefix, usize::MAX)? {
        let Some((address, member)) = store::risk::parse_shared_row(prefix.len(), &k) else { continue };
        let Seen { at, partition, offset } = Seen::decode(&v)?;
        by_address.entry(address).or_default().push((at, partition, offset, member));
    }
    let mut out = Vec::new();
    for (address, mut members) in by_address {
        if members.len() <= n {
            continue;
        }
        members.sort();
        let at = members[n].0;
        if !(from..to).contains(&at) {
            continue;
        }
        out.push(state::Alert {
            rule: rule.into(),
            at: Some(crate::log::codec::instant(at)),
            accounts: members
                .iter()
                .map(|(_, _, _, m)| {
                    crate::log::codec::account_key_to_wire(&AccountKey::new(&pk.tenant_id, &pk.programme_id, m))
                })
                .collect(),
            figures: [("members", members.len() as i64), ("threshold", n as i64)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            events: members.iter().take(ALERT_EVENTS_MAX).map(|(_, p, o, _)| position(*p, *o)).collect(),
            subject: address,
            date: date_of(day),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CommandContext, LotAmount};

    const DAY_MS: Millis = 86_400_000;
    const T0: Millis = 1_773_100_800_000;

    /// Earns and spends of 7 members over three days, from a few addresses,
    /// so every rule keeps counters and some alert.
    fn records() -> Vec<AccountRecord> {
        (0..300u64)
            .map(|i| {
                let account = AccountKey::new("shop", "points", &format!("m{}", i % 7));
                let event = if i % 3 == 2 {
                    Event::PointsSpent {
                        spend_id: format!("r{i}"),
                        order_ref: None,
                        points: 5,
                        lots: vec![LotAmount::new(&format!("r{}", i - 2), 5)],
                        order_cash_minor: 0,
                    }
                } else {
                    Event::PointsEarned {
                        lot_id: format!("r{i}"),
                        reason: "purchase".into(),
                        order_ref: None,
                        requested: 40,
                        granted: 40,
                        forfeited: 0,
                        debt_repaid: 0,
                        expires_at: None,
                        growth: 1,
                        day: 0,
                        pending: false,
                    }
                };
                AccountRecord {
                    epoch: 0,
                    request_id: format!("r{i}"),
                    account,
                    programme_version: 1,
                    at: T0 + (i as i64) * DAY_MS / 100,
                    fingerprint: i,
                    system: false,
                    events: vec![event],
                    context: CommandContext {
                        client: String::new(),
                        client_ip: format!("10.0.0.{}", i % 4),
                        device_id: format!("d{}", i % 5),
                        ..Default::default()
                    },
                    cap_mode: Default::default(),
                }
            })
            .collect()
    }

    fn fold_all(db: &Db, records: &[AccountRecord], mut risk: RiskFold, programme: &Programme) {
        let mut offset = 0;
        for chunk in records.chunks(11) {
            let mut batch = Batch::default();
            for r in chunk {
                risk.record(db, programme, 0, offset, r, (r.at - T0) / DAY_MS).unwrap();
                offset += 1;
            }
            risk.write(&mut batch, 0);
            db.write(batch).unwrap();
        }
        db.ingest(Cf::Risk, &mut risk.finish()).unwrap();
    }

    #[test]
    fn a_rebuild_writes_the_same_counters_and_alerts_as_the_live_fold() {
        let mut programme = Programme::example("shop", "points");
        programme.risk = RiskRules {
            dense_spend_count: 2,
            dense_spend_minutes: 60,
            member_addresses: 2,
            member_addresses_minutes: 60,
            member_daily_earn_alert: 300,
            shared_address_members: 3,
            ..RiskRules::default()
        };
        let records = records();
        let dir = tempfile::tempdir().unwrap();
        let live = Db::open(&dir.path().join("live"), store::BOOK_CFS).unwrap();
        fold_all(&live, &records, RiskFold { max: 4, ..RiskFold::default() }, &programme);
        // A tiny cache: the rebuild writes out and forgets counters on the
        // way, then reads them back.
        let rebuilt = Db::open_rebuild(&dir.path().join("rebuilt"), store::BOOK_CFS).unwrap();
        fold_all(&rebuilt, &records, RiskFold { max: 3, ..RiskFold::rebuild() }, &programme);
        rebuilt.finish_rebuild().unwrap();
        let whole = Db::open_rebuild(&dir.path().join("whole"), store::BOOK_CFS).unwrap();
        fold_all(&whole, &records, RiskFold::rebuild(), &programme);
        whole.finish_rebuild().unwrap();
        // A live fold that keeps no rows of the counters it lets go reads
        // them all back from the store.
        let unkept = Db::open(&dir.path().join("unkept"), store::BOOK_CFS).unwrap();
        fold_all(&unkept, &records, RiskFold { max: 2, rows: PackedSet::new(0), ..RiskFold::default() }, &programme);
        let digest = live.digest().unwrap();
        let rows = |cf: &str| digest.iter().find(|(name, _, _)| *name == cf).unwrap().2;
        assert!(rows("risk") >= 7 && rows("alerts") > 0, "{digest:?}");
        assert_eq!(rebuilt.digest().unwrap(), digest);
        assert_eq!(whole.digest().unwrap(), digest);
        assert_eq!(unkept.digest().unwrap(), digest);
    }

    #[test]
    fn counters_the_live_fold_lets_go_are_read_back_from_their_row_not_the_store() {
        let programme = Programme::example("shop", "points");
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), store::BOOK_CFS).unwrap();
        let mut risk = RiskFold { max: 1, ..RiskFold::default() };
        let records = records();
        // m0's earn and m1's, folded in batches the store never gets.
        for (offset, r) in records.iter().take(2).enumerate() {
            risk.record(&db, &programme, 0, offset as u64, r, 0).unwrap();
            risk.write(&mut Batch::default(), 0);
        }
        assert!(risk.rows.get(&account_row(&records[0].account)).is_some(), "m0 let go as a row");
        assert_eq!(db.get(Cf::Risk, &account_row(&records[0].account)).unwrap(), None);
        let s = risk.counters(&db, &records[0].account, 0).unwrap();
        assert_eq!((s.earned, s.commands), (40, 1));
        assert!(risk.rows.get(&account_row(&records[0].account)).is_none(), "taken back out");
    }
}
