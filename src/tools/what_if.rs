//! `what-if`: a period's recorded activities re-decided under a proposed
//! programme (a rules file), beside what they actually gave: activities,
//! points and growth (in all, by rule, by day), the members whose
//! activities would have earned other points, the members whose level
//! would differ at the end of the period, the activities that would have
//! been refused (by reason code and action), and the change in liability
//! in cash at the proposed programme's ratio. It reads the log read only
//! (beside a running service or after it stopped) and writes nothing.
//!
//! # What is read
//!
//! Every partition of the account log up to its end as of the start, each
//! through the same `Arbiter` and `domain::admissible` check as every other
//! reader (a quarantined record, or one that would break its account, is
//! skipped and named on standard error). The partitions are merged in
//! decision-time order (ties by partition), each in its own log order, so
//! that the programme-wide daily cap sees the day's grants of every
//! partition in the order they were decided. Records of other programmes
//! and records decided after the period are not looked at; records before
//! the period only build the members' accounts. The period is whole
//! programme days in the time zone of the programme as it is configured
//! now.
//!
//! # The actual side
//!
//! From each activity record's own events: its `ActivityRecorded` (each
//! rule's share, after the rule's own daily limits) and the `PointsEarned`
//! it granted (after the programme's daily caps) with its growth, or the
//! `PenaltyApplied` (its points and growth counted negative).
//!
//! # The shadow: what the proposed side models
//!
//! Each member who has a record in the period gets a shadow account: a
//! copy of their account as the log has it right before that first record
//! (balance, lots, debt, growth, level, today's counters), under the
//! proposed programme from then on (its levels are evaluated at once, as
//! the scheduler does after a configuration). Then, record by record:
//!
//! - an activity is decided again with `domain::decide_with`: the proposed
//!   programme, the shadow, the original request id and context, the
//!   record's decision time. So the proposed earning rules (windows,
//!   disabled rules, amount rates, tag, campaign and level multipliers with
//!   the shadow's level), their daily limits (counted from the shadow's own
//!   `ActivityRecorded` events), the member's daily and per-action caps
//!   (from the shadow's day counters), the programme-wide daily cap (one
//!   exact counter of what the shadows were granted per day, over every
//!   partition, as when one instance writes them all) and the cap policy
//!   all apply. The decision's events (and only they) are folded into the
//!   shadow: the earn or penalty, expiries falling due, growth leaving the
//!   window, the level change. A refusal folds nothing and is counted by
//!   its reason code.
//! - a plain earn (`Earn`, not an activity) is folded as it was granted
//!   (the debt it repays recomputed on the shadow, which may owe other
//!   debt): it counts in the day counters, the programme-wide counter and
//!   growth. It is not decided again: the proposed caps could cut it, and
//!   that difference is not reported.
//! - growth that moves without an activity moves in the shadow too: a
//!   reversal's growth is taken from the same earn (at most what the shadow's
//!   earn still holds; folded as a growth adjustment that takes it from that
//!   earn, the same change to the account), an operator's growth adjustment
//!   and a level set
//!   by hand are decided again on the shadow, freezes are folded as they
//!   are, and the scheduler's records (expiry, growth leaving the window,
//!   level re-evaluation) are decided again as a `Tick` on the shadow, as
//!   is a level re-evaluation after every other record.
//!
//! # What it does not model
//!
//! - Spends, holds, captures, refunds, manual point adjustments and the
//!   points of reversals are not folded into the shadow: the shadow's lots
//!   differ from the account's, and those events name the account's lots
//!   (`Account::apply` would panic on them). The shadow's balance is
//!   therefore usually higher than the member's. What that changes: a
//!   proposed penalty beyond the member's real balance is split otherwise
//!   (more taken from lots, less debt or write-off). Penalties count at
//!   their full points on both sides, so the totals hold; the liability
//!   delta counts a penalty's full points even where the books would count
//!   only what was taken or became debt (`CLAWBACK_POLICY_WITHIN_BALANCE`
//!   writes the rest off). An account near `LOTS_WITH_POINTS_MAX` lots
//!   may reach it sooner in the shadow.
//! - What members would have done differently under other rules: the same
//!   activities, at the same instants, are decided again.
//! - A cluster's shares of the programme-wide cap (the counter is exact).
//! - A change of the level window: growth that had left the window before
//!   the period stays out.
//!
//! Shadow events the admissibility check would refuse (none are expected:
//! they are decided against the shadow itself) are left out and counted on
//! standard error, so the shadow never panics.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::Source;
use crate::domain::calendar::{day_to_date, programme_day, start_of_day};
use crate::domain::{
    self, Account, Activity, AppliedRule, Command, CommandBody, Event, Limits, LotAmount, Millis, Points, Programme,
    ProgrammeKey, Rejection, CASH_MINOR_PER_UNIT,
};
use crate::log::arbiter::{report, Admitted, Arbiter, Home};
use crate::log::record::{AccountRecord, Position};
use crate::log::{EventLog, LogReader};
use crate::FastMap;

/// The longest period one run re-decides, in days.
pub const WHAT_IF_DAYS_MAX: i64 = 3660;
/// A progress line on standard error after every this many log records read.
pub const PROGRESS_EVERY_RECORDS: u64 = 100_000;
/// Records read from a partition at a time.
const READ_BATCH_RECORDS: usize = 1024;
/// The reader's name where it reports a record it skips.
const READER: &str = "what-if";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Table,
    /// One JSON object ([`Report`]).
    Json,
}

pub struct Options {
    pub tenant: String,
    pub programme: String,
    /// The proposed programme, in the protobuf JSON mapping.
    pub rules: PathBuf,
    /// The first and the last programme day, inclusive.
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub format: Format,
}

/// Points and growth issued (penalties negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Issued {
    pub points: Points,
    pub growth: i64,
}

impl Issued {
    fn add(&mut self, points: Points, growth: i64) {
        self.points = self.points.saturating_add(points);
        self.growth = self.growth.saturating_add(growth);
    }
}

/// One earning rule's shares of the period's activities, after the rule's
/// own daily limits and before the programme's daily caps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleRow {
    pub rule_id: String,
    /// Activities the rule applied to, actually or under the proposal.
    pub occurrences: u64,
    pub actual_points: Points,
    pub proposed_points: Points,
}

/// One programme day of the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DayRow {
    /// YYYY-MM-DD in the programme's time zone.
    pub date: String,
    pub activities: u64,
    pub actual_points: Points,
    pub proposed_points: Points,
    pub actual_growth: i64,
    pub proposed_growth: i64,
}

/// Members whose level at the end of the period would be `proposed_level`
/// instead of `actual_level` ("" = below every level).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LevelRow {
    pub actual_level: String,
    pub proposed_level: String,
    pub members: u64,
}

/// Activities of `action` the proposed programme would have refused with
/// `reason`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefusedRow {
    pub reason: String,
    pub action: String,
    pub activities: u64,
}

/// What `what-if` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tenant_id: String,
    pub programme_id: String,
    pub from: String,
    pub to: String,
    pub time_zone: String,
    pub records_read: u64,
    /// Activities recorded in the period.
    pub activities: u64,
    /// Members with an activity in the period.
    pub members: u64,
    /// Members at least one of whose activities would have given other points.
    pub members_affected: u64,
    pub actual: Issued,
    pub proposed: Issued,
    pub by_rule: Vec<RuleRow>,
    pub by_day: Vec<DayRow>,
    pub level_changes: Vec<LevelRow>,
    pub refused: Vec<RefusedRow>,
    /// The proposed programme's.
    pub points_per_cash_unit: i64,
    /// (proposed − actual points) in cash minor units, floored.
    pub liability_cash_minor_delta: i64,
}

/// The instants of whole programme days `from..=to` in `tz`: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub start: Millis,
    pub end: Millis,
    pub time_zone: chrono_tz::Tz,
}

/// That `from..=to` is a period one run takes.
pub fn check_period(from: chrono::NaiveDate, to: chrono::NaiveDate) -> anyhow::Result<()> {
    if from > to {
        anyhow::bail!("--from {from} is after --to {to}: the period is --from to --to, both days inclusive");
    }
    if (to - from).num_days() >= WHAT_IF_DAYS_MAX {
        anyhow::bail!("--from {from} --to {to}: at most {WHAT_IF_DAYS_MAX} days at once");
    }
    Ok(())
}

impl Period {
    pub fn of(time_zone: chrono_tz::Tz, from: chrono::NaiveDate, to: chrono::NaiveDate) -> anyhow::Result<Period> {
        check_period(from, to)?;
        let start = start_of_day(time_zone, from).context("--from: out of range")?;
        let end = to.succ_opt().and_then(|d| start_of_day(time_zone, d)).context("--to: out of range")?;
        Ok(Period { start, end, time_zone })
    }
}

/// The proposed programme in `path`: a `Programme` in the protobuf JSON
/// mapping (or a `ConfigureProgramme` request with it under `programme`),
/// validated as `ConfigureProgramme` validates one, for `tenant/programme`.
pub fn load_rules(path: &Path, tenant: &str, programme: &str) -> anyhow::Result<Programme> {
    let file = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("--rules {file}: cannot read it"))?;
    parse_rules(&text, &format!("--rules {file}"), tenant, programme)
}

/// [`load_rules`] of the text itself (`origin` names it in errors).
pub fn parse_rules(text: &str, origin: &str, tenant: &str, programme: &str) -> anyhow::Result<Programme> {
    let file = origin;
    let value: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{file}: not JSON"))?;
    let what = "not a Programme in the protobuf JSON mapping";
    let wire: crate::proto::Programme = match value.get("programme").filter(|p| p.is_object()) {
        Some(inner) => serde_json::from_value(inner.clone()).with_context(|| format!("{file}: {what}"))?,
        None => serde_json::from_str(text).with_context(|| format!("{file}: {what}"))?,
    };
    let proposed =
        crate::api::validate::programme(&wire).map_err(|e| anyhow::anyhow!("{file}: {}: {}", e.field, e.message))?;
    if proposed.tenant_id != tenant || proposed.programme_id != programme {
        anyhow::bail!("{file} is programme {}/{}, not {tenant}/{programme}", proposed.tenant_id, proposed.programme_id);
    }
    Ok(proposed)
}

pub fn run(source: &Source, opts: &Options) -> anyhow::Result<()> {
    check_period(opts.from, opts.to)?;
    let proposed = load_rules(&opts.rules, &opts.tenant, &opts.programme)?;
    let key = ProgrammeKey { tenant_id: opts.tenant.clone(), programme_id: opts.programme.clone() };
    let in_force = source.registry()?.current(&key).with_context(|| {
        format!("programme {}/{} is not configured in {}", opts.tenant, opts.programme, source.data_dir.display())
    })?;
    let period = Period::of(in_force.time_zone, opts.from, opts.to)?;
    let log = source.events()?;
    let report = what_if(log.as_ref(), &proposed, period)?;
    match opts.format {
        Format::Table => print!("{}", table(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// Re-decides the activities of `proposed`'s programme in `period` under
/// it (the module's doc says how) and reports beside what happened.
pub fn what_if(log: &dyn EventLog, proposed: &Programme, period: Period) -> anyhow::Result<Report> {
    let mut fold = Fold::new(proposed, period);
    let mut cursors = Vec::new();
    for partition in 0..log.partitions() {
        cursors.push(Cursor {
            home: Home { partition, partitions: log.partitions() },
            end: log.end_offset(partition)?,
            reader: log.reader(partition, 0)?,
            arbiter: Arbiter::default(),
            buffered: VecDeque::new(),
        });
    }
    let mut progress = Progress::new(cursors.iter().map(|c| c.end).sum());
    let mut heads = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some(at) = c.peek(&fold, &mut progress)? {
            heads.push(Reverse((at, i)));
        }
    }
    while let Some(Reverse((_, i))) = heads.pop() {
        let c = &mut cursors[i];
        let (offset, record) = c.buffered.pop_front().expect("a peeked record");
        fold.record(Position { partition: c.home.partition, offset }, record);
        if let Some(at) = c.peek(&fold, &mut progress)? {
            heads.push(Reverse((at, i)));
        }
    }
    if fold.proposer.not_folded > 0 {
        eprintln!(
            "what-if: {} shadow decisions were not admissible and were left out (a bug: please report it)",
            fold.proposer.not_folded
        );
    }
    Ok(fold.report(progress.read))
}

/// Records read, and a line on standard error every [`PROGRESS_EVERY_RECORDS`].
struct Progress {
    read: u64,
    total: u64,
    next: u64,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { read: 0, total, next: PROGRESS_EVERY_RECORDS, started: Instant::now() }
    }

    fn add(&mut self, n: u64) {
        self.read += n;
        if self.read >= self.next {
            while self.next <= self.read {
                self.next += PROGRESS_EVERY_RECORDS;
            }
            let percent = (self.read * 100).checked_div(self.total).unwrap_or(100);
            eprintln!(
                "what-if: {}/{} records read ({percent} %), {}",
                self.read,
                self.total,
                super::seconds_text(self.started.elapsed().as_millis())
            );
        }
    }
}

/// One partition, read in log order: the counted records of the programme
/// decided before the period's end.
struct Cursor {
    home: Home,
    /// The partition's end when the run started: what it reads up to.
    end: u64,
    reader: Box<dyn LogReader>,
    arbiter: Arbiter,
    buffered: VecDeque<(u64, AccountRecord)>,
}

impl Cursor {
    /// The decision time of the next such record, reading on as needed;
    /// None at the end.
    fn peek(&mut self, fold: &Fold, progress: &mut Progress) -> anyhow::Result<Option<Millis>> {
        while self.buffered.is_empty() {
            let batch = crate::log::read_towards(self.reader.as_mut(), self.end, READ_BATCH_RECORDS)?;
            if batch.is_empty() {
                return Ok(None);
            }
            progress.add(batch.len() as u64);
            for entry in batch {
                match self.arbiter.admit_bytes(&entry.payload, self.home) {
                    Admitted::Record(r) if fold.takes(&r) => self.buffered.push_back((entry.offset, r)),
                    Admitted::Quarantined(q) => {
                        report(READER, Position { partition: self.home.partition, offset: entry.offset }, &q.why)
                    }
                    _ => {}
                }
            }
        }
        Ok(self.buffered.front().map(|(_, r)| r.at))
    }
}

/// What the fold keeps of a member.
#[derive(Default)]
struct Member {
    /// The account as every reader of the log folds it.
    actual: Account,
    /// The account under the proposed programme, from the member's first
    /// record in the period on.
    shadow: Option<Box<Account>>,
    /// Had an activity in the period.
    active: bool,
    /// An activity of theirs would have given other points.
    affected: bool,
}

/// The points, growth and rules' shares one decision of an activity gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outcome {
    applied: Vec<AppliedRule>,
    points: Points,
    growth: i64,
}

impl Outcome {
    /// From a record's (or a decision's) events, the activity's id `id`.
    fn of(events: &[Event], id: &str) -> Outcome {
        let mut out = Outcome::default();
        for e in events {
            match e {
                Event::ActivityRecorded { applied, .. } => out.applied = applied.clone(),
                Event::PointsEarned { lot_id, granted, growth, .. } if lot_id == id => {
                    (out.points, out.growth) = (*granted, *growth)
                }
                Event::PenaltyApplied { penalty_id, points, growth, .. } if penalty_id == id => {
                    (out.points, out.growth) = (-points, -growth)
                }
                _ => {}
            }
        }
        out
    }
}

/// The activity a record recorded, if it is an activity's.
fn activity_of(events: &[Event]) -> Option<&Activity> {
    events.iter().find_map(|e| match e {
        Event::ActivityRecorded { activity, .. } => Some(activity),
        _ => None,
    })
}

/// Decisions under the proposed programme, folded into shadows.
struct Proposer<'a> {
    programme: &'a Programme,
    /// Points the shadows were granted per programme day (the proposed
    /// programme's zone), for its programme-wide daily cap.
    issued: FastMap<i64, Points>,
    /// Shadow folds the admissibility check refused.
    not_folded: u64,
}

impl Proposer<'_> {
    /// Decides `body` as `r`'s command against `shadow` and folds the
    /// events in.
    fn decide(&mut self, shadow: &mut Account, r: &AccountRecord, body: CommandBody) -> Result<Vec<Event>, Rejection> {
        let day = programme_day(self.programme.time_zone, r.at);
        let limits = Limits { programme_issued_today: self.issued.get(&day).copied().unwrap_or(0) };
        let command =
            Command { request_id: r.request_id.clone(), account: r.account.clone(), body, context: r.context.clone() };
        let events = domain::decide_with(Some(self.programme), shadow, &command, r.at, &limits)?;
        self.fold(shadow, &events, day);
        Ok(events)
    }

    /// Folds `events` into `shadow` if they keep it whole (all or none).
    fn fold(&mut self, shadow: &mut Account, events: &[Event], day: i64) {
        if domain::admissible(shadow, events).is_err() {
            self.not_folded += 1;
            return;
        }
        for e in events {
            if let Event::PointsEarned { granted, .. } = e {
                let today = self.issued.entry(day).or_default();
                *today = today.saturating_add(*granted);
            }
            shadow.apply(e);
        }
    }

    /// A record that is not an activity: what of it the caps and levels
    /// read, then a level re-evaluation (and what fell due) as a `Tick`.
    fn other(&mut self, shadow: &mut Account, r: &AccountRecord) {
        if !r.system {
            let day = programme_day(self.programme.time_zone, r.at);
            self.fold(shadow, &shadow_events(shadow, &r.events, &r.request_id), day);
            for body in decided_again(&r.events) {
                // A refusal under the proposed programme leaves the shadow as it is.
                let _ = self.decide(shadow, r, body);
            }
        }
        let _ = self.decide(shadow, r, CommandBody::Tick);
    }
}

/// The events of a caller's record (not an activity) the shadow takes as
/// they are, or nearly: its earns (repaying the debt the shadow owes),
/// freezes, and the growth its reversals take from their earn (as a growth
/// adjustment taking it from that earn: the same change to the account).
fn shadow_events(shadow: &Account, events: &[Event], request_id: &str) -> Vec<Event> {
    let mut out = Vec::new();
    let mut debt = shadow.debt.max(0);
    for e in events {
        match e {
            Event::PointsEarned { .. } => {
                let mut earned = e.clone();
                if let Event::PointsEarned { granted, debt_repaid, .. } = &mut earned {
                    *debt_repaid = (*granted).min(debt).max(0);
                    debt -= *debt_repaid;
                }
                out.push(earned);
            }
            Event::AccountFrozen { .. } | Event::AccountUnfrozen { .. } => out.push(e.clone()),
            Event::EarnReversed { earn_id, growth, .. } if *growth > 0 => {
                let held = shadow.earns.get(&crate::domain::Id::of(earn_id)).map_or(0, |earn| earn.growth_in_window());
                let g = held.min(*growth);
                if g > 0 {
                    out.push(Event::GrowthAdjusted {
                        adjustment_id: request_id.into(),
                        requested: -g,
                        growth: -g,
                        operator: String::new(),
                        reason: String::new(),
                        earns: vec![LotAmount::new(earn_id, g)],
                        day: shadow.day,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The commands of a caller's record that the shadow decides again: an
/// operator's growth adjustment and a level set by hand.
fn decided_again(events: &[Event]) -> Vec<CommandBody> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::GrowthAdjusted { requested, operator, reason, .. } => Some(CommandBody::AdjustGrowth {
                growth: *requested,
                operator: operator.clone(),
                reason: reason.clone(),
            }),
            Event::LevelHeld { level, operator, reason, hold_until } => Some(CommandBody::SetLevel {
                level: level.clone(),
                operator: operator.clone(),
                reason: reason.clone(),
                hold_until: *hold_until,
            }),
            _ => None,
        })
        .collect()
}

/// The sums of the period.
#[derive(Default)]
struct Tally {
    activities: u64,
    actual: Issued,
    proposed: Issued,
    by_rule: BTreeMap<String, RuleRow>,
    by_day: BTreeMap<i64, DayRow>,
    /// (reason, action) → activities.
    refused: BTreeMap<(&'static str, String), u64>,
}

impl Tally {
    fn add(&mut self, day: i64, action: &str, actual: &Outcome, proposed: &Result<Outcome, Rejection>) {
        self.activities += 1;
        let empty = Outcome::default();
        let p = match proposed {
            Ok(p) => p,
            Err(rejection) => {
                *self.refused.entry((rejection.reason.as_str(), action.to_string())).or_default() += 1;
                &empty
            }
        };
        self.actual.add(actual.points, actual.growth);
        self.proposed.add(p.points, p.growth);
        let d = self.by_day.entry(day).or_default();
        d.activities += 1;
        d.actual_points = d.actual_points.saturating_add(actual.points);
        d.proposed_points = d.proposed_points.saturating_add(p.points);
        d.actual_growth = d.actual_growth.saturating_add(actual.growth);
        d.proposed_growth = d.proposed_growth.saturating_add(p.growth);
        let mut rules: Vec<&str> = actual.applied.iter().chain(&p.applied).map(|a| a.rule_id.as_str()).collect();
        rules.sort_unstable();
        rules.dedup();
        for id in rules {
            let share = |o: &Outcome| o.applied.iter().filter(|a| a.rule_id == id).map(|a| a.points).sum::<Points>();
            let row = self.by_rule.entry(id.to_string()).or_default();
            row.occurrences += 1;
            row.actual_points = row.actual_points.saturating_add(share(actual));
            row.proposed_points = row.proposed_points.saturating_add(share(p));
        }
    }
}

/// The fold of the log: every member's account, the shadows, the sums.
struct Fold<'a> {
    period: Period,
    proposer: Proposer<'a>,
    members: FastMap<String, Member>,
    tally: Tally,
}

impl<'a> Fold<'a> {
    fn new(proposed: &'a Programme, period: Period) -> Fold<'a> {
        Fold {
            period,
            proposer: Proposer { programme: proposed, issued: FastMap::default(), not_folded: 0 },
            members: FastMap::default(),
            tally: Tally::default(),
        }
    }

    /// Whether a counted record is the fold's: of the programme, decided
    /// before the period's end.
    fn takes(&self, r: &AccountRecord) -> bool {
        r.at < self.period.end
            && r.account.programme_id == self.proposer.programme.programme_id
            && r.account.tenant_id == self.proposer.programme.tenant_id
    }

    /// One record, in its partition's order.
    fn record(&mut self, at: Position, r: AccountRecord) {
        let member = self.members.entry(r.account.member_id.clone()).or_default();
        if let Err(why) = domain::admissible(&member.actual, &r.events) {
            report(READER, at, &format!("account {}: {why}", r.account));
            return;
        }
        let in_period = r.at >= self.period.start;
        if in_period && member.shadow.is_none() {
            let mut shadow = Box::new(member.actual.clone());
            // The proposed programme in force from here: levels evaluated now.
            let _ = self.proposer.decide(&mut shadow, &r, CommandBody::Tick);
            member.shadow = Some(shadow);
        }
        r.events.iter().for_each(|e| member.actual.apply(e));
        let Some(shadow) = member.shadow.as_mut().filter(|_| in_period) else { return };
        let Some(activity) = activity_of(&r.events) else {
            self.proposer.other(shadow, &r);
            return;
        };
        let actual = Outcome::of(&r.events, &r.request_id);
        let proposed = self
            .proposer
            .decide(shadow, &r, CommandBody::RecordActivity(activity.clone()))
            .map(|events| Outcome::of(&events, &r.request_id));
        member.active = true;
        member.affected |= proposed.as_ref().map_or(0, |p| p.points) != actual.points;
        let day = programme_day(self.period.time_zone, r.at);
        self.tally.add(day, &activity.action, &actual, &proposed);
    }

    fn report(self, records_read: u64) -> Report {
        let programme = self.proposer.programme;
        let mut levels: BTreeMap<(String, String), u64> = BTreeMap::new();
        let (mut members, mut affected) = (0, 0);
        for m in self.members.values() {
            members += u64::from(m.active);
            affected += u64::from(m.affected);
            if let Some(shadow) = m.shadow.as_ref().filter(|s| s.level != m.actual.level) {
                *levels.entry((m.actual.level.clone(), shadow.level.clone())).or_default() += 1;
            }
        }
        let t = self.tally;
        let date = |day: i64| day_to_date(day).map(|d| d.to_string()).unwrap_or_default();
        let delta = t.proposed.points.saturating_sub(t.actual.points);
        Report {
            tenant_id: programme.tenant_id.clone(),
            programme_id: programme.programme_id.clone(),
            from: date(programme_day(self.period.time_zone, self.period.start)),
            to: date(programme_day(self.period.time_zone, self.period.end - 1)),
            time_zone: self.period.time_zone.name().to_string(),
            records_read,
            activities: t.activities,
            members,
            members_affected: affected,
            actual: t.actual,
            proposed: t.proposed,
            by_rule: t.by_rule.into_iter().map(|(rule_id, row)| RuleRow { rule_id, ..row }).collect(),
            by_day: t.by_day.into_iter().map(|(day, row)| DayRow { date: date(day), ..row }).collect(),
            level_changes: levels
                .into_iter()
                .map(|((actual_level, proposed_level), members)| LevelRow { actual_level, proposed_level, members })
                .collect(),
            refused: t
                .refused
                .into_iter()
                .map(|((reason, action), activities)| RefusedRow { reason: reason.to_string(), action, activities })
                .collect(),
            points_per_cash_unit: programme.points_per_cash_unit,
            liability_cash_minor_delta: cash_minor(delta, programme.points_per_cash_unit),
        }
    }
}

/// `points` in cash minor units at `points_per_cash_unit`, floored.
pub fn cash_minor(points: Points, points_per_cash_unit: i64) -> i64 {
    if points_per_cash_unit <= 0 {
        return 0;
    }
    let x = (i128::from(points) * i128::from(CASH_MINOR_PER_UNIT)).div_euclid(i128::from(points_per_cash_unit));
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

/// `+12`, `-3`, `0`.
fn signed(x: i64) -> String {
    if x > 0 {
        format!("+{x}")
    } else {
        x.to_string()
    }
}

/// The report for people.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "what-if {}/{}  {} .. {} ({}), {} records read\n\n",
        r.tenant_id, r.programme_id, r.from, r.to, r.time_zone, r.records_read
    );
    out += &format!("activities  {}\n", r.activities);
    out += &format!(
        "members     {} with activities, {} of them would get other points\n\n",
        r.members, r.members_affected
    );
    out += &format!("{:<28} {:>14} {:>14} {:>14}\n", "", "actual", "proposed", "delta");
    for (name, a, p) in [("points", r.actual.points, r.proposed.points), ("growth", r.actual.growth, r.proposed.growth)]
    {
        out += &format!("{name:<28} {a:>14} {p:>14} {:>14}\n", signed(p.saturating_sub(a)));
    }
    out += &format!(
        "{:<28} {:>14} {:>14} {:>14}   at {} points per cash unit\n",
        "liability (cash minor units)",
        "",
        "",
        signed(r.liability_cash_minor_delta),
        r.points_per_cash_unit
    );
    out += &format!("\n{:<28} {:>14} {:>14} {:>14}\n", "by rule", "occurrences", "actual", "proposed");
    for row in &r.by_rule {
        out += &format!(
            "{:<28} {:>14} {:>14} {:>14}\n",
            row.rule_id, row.occurrences, row.actual_points, row.proposed_points
        );
    }
    out += &format!("\n{:<28} {:>14} {:>14} {:>14}\n", "by day", "activities", "actual", "proposed");
    for row in &r.by_day {
        out +=
            &format!("{:<28} {:>14} {:>14} {:>14}\n", row.date, row.activities, row.actual_points, row.proposed_points);
    }
    out += &table_tail(r);
    out
}

/// The level changes and refusals of [`table`].
fn table_tail(r: &Report) -> String {
    let mut out = String::from("\nlevel at the end of the period (members whose level would differ)\n");
    if r.level_changes.is_empty() {
        out += "  none\n";
    }
    let name = |l: &str| if l.is_empty() { "(none)".to_string() } else { l.to_string() };
    for row in &r.level_changes {
        out += &format!("  {:<24} -> {:<24} {:>10}\n", name(&row.actual_level), name(&row.proposed_level), row.members);
    }
    out += "\nrefused under the proposed rules\n";
    if r.refused.is_empty() {
        out += "  none\n";
    }
    for row in &r.refused {
        out += &format!("  {:<32} {:<24} {:>10}\n", row.reason, row.action, row.activities);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cash_is_floored_also_below_zero() {
        assert_eq!(cash_minor(3, 100), 3);
        assert_eq!(cash_minor(1, 300), 0);
        assert_eq!(cash_minor(-1, 300), -1);
        assert_eq!(cash_minor(-300, 300), -100);
        assert_eq!(cash_minor(5, 0), 0);
    }

    #[test]
    fn a_period_runs_from_the_first_day_to_the_end_of_the_last_in_the_zone() {
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let p = Period::of(chrono_tz::Asia::Shanghai, d("2026-03-10"), d("2026-03-11")).unwrap();
        // 2026-03-09T16:00Z .. 2026-03-11T16:00Z
        assert_eq!((p.start, p.end), (1_773_072_000_000, 1_773_244_800_000));
        assert!(Period::of(chrono_tz::UTC, d("2026-03-11"), d("2026-03-10")).is_err());
    }
}
