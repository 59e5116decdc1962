//! The pure core of the ledger: programmes, accounts, commands, events, and the
//! two functions that give them meaning.
//!
//! - [`decide`] takes an account's state, a command and the time, and returns
//!   the events that the command causes, or a [`Rejection`]. Every business
//!   rule lives there.
//! - [`Account::apply`] folds one event into the state. It cannot fail: a
//!   well-formed history is always applicable, and an ill-formed one is a bug
//!   that panics loudly rather than bending the books.
//!
//! This module never does IO, never reads the clock, never draws a random
//! number, and knows nothing of protobuf, gRPC, Kafka or RocksDB. Time enters
//! as an argument; wire types are converted in `codec`.

mod account;
mod admit;
pub mod calendar;
mod decide;
mod fingerprint;
mod id;
pub mod rules;
mod vecmap;

use std::collections::BTreeMap;

pub use account::{
    Account, EarnRecord, EarningsHold, Extra, ExtraState, Lot, PendingAdjustment, PurchaseMonth, ReservationRecord,
    ReservationStatus, Share, SpendRecord, Totals, PURCHASE_MONTHS_KEPT,
};
pub use admit::admissible;
#[cfg(test)]
use decide::rfm_next_evaluation;
pub use decide::{decide, decide_with, due_at, level_status, next_reminder, LevelStatus, Limits};
pub use id::Id;
pub use rules::{
    Activity, AmountRate, AppliedMultiplier, AppliedRule, Campaign, EarningRule, GrowthModel, RfmBand, RfmRules,
    RuleDay,
};
pub use vecmap::VecMap;

/// A number of points. Signed so that debts and adjustments read naturally;
/// every sum is checked.
pub type Points = i64;

/// An instant: milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Limits the domain enforces itself (the API enforces the string limits).
pub const RESERVATION_TIMEOUT_SECONDS_MAX: i64 = 7 * 24 * 3600;
/// The most lots with points one account holds (every earn and credit is a
/// lot until its points are spent or expire): an earn that would make one
/// more is refused (`TOO_MANY_LOTS`). Far beyond an honest member, and it
/// bounds what a spend or an expiry may have to list.
pub const LOTS_WITH_POINTS_MAX: usize = 100_000;
/// The most timed-out holds, due lots or earns leaving the level window that
/// one record settles, and the most lots one recycling takes: what is due
/// beyond it is settled by the scheduler's next ticks, a record at a time,
/// so that every record fits the log (2,000 lots with 128-character ids
/// are ~300 KB, under Kafka's default 1 MB).
pub const DUE_ITEMS_PER_RECORD_MAX: usize = 2_000;
/// Minor units of cash in one unit (fen per yuan, cents per dollar).
pub const CASH_MINOR_PER_UNIT: i64 = 100;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    pub tenant_id: String,
    pub programme_id: String,
    pub member_id: String,
}

impl AccountKey {
    pub fn new(tenant: &str, programme: &str, member: &str) -> Self {
        AccountKey { tenant_id: tenant.into(), programme_id: programme.into(), member_id: member.into() }
    }

    pub fn programme(&self) -> ProgrammeKey {
        ProgrammeKey { tenant_id: self.tenant_id.clone(), programme_id: self.programme_id.clone() }
    }
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant_id, self.programme_id, self.member_id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProgrammeKey {
    pub tenant_id: String,
    pub programme_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidityRounding {
    None,
    EndOfMonth,
    EndOfQuarter,
    EndOfYear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapPolicy {
    Truncate,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClawbackPolicy {
    WithinBalance,
    AllowDebt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelThreshold {
    pub name: String,
    pub min_growth: i64,
}

/// One version of a programme's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Programme {
    pub tenant_id: String,
    pub programme_id: String,
    pub unit_name: String,
    pub points_per_cash_unit: i64,
    /// 0 = points never expire.
    pub validity_days: u32,
    pub validity_rounding: ValidityRounding,
    pub reminder_days: u32,
    pub time_zone: chrono_tz::Tz,
    /// 0 = no cap.
    pub member_daily_earn_cap: Points,
    pub action_daily_earn_caps: BTreeMap<String, Points>,
    /// 0 = no cap.
    pub programme_daily_issuance_cap: Points,
    pub cap_policy: CapPolicy,
    /// 0 = no limit.
    pub max_order_share_percent: u32,
    pub clawback_policy: ClawbackPolicy,
    pub levels: Vec<LevelThreshold>,
    /// 0 = lifetime.
    pub level_window_days: u32,
    pub version: u64,
    pub configured_at: Millis,
    pub risk: RiskRules,
    /// What `RecordActivity`'s actions are worth.
    pub earning_rules: Vec<EarningRule>,
    pub campaigns: Vec<Campaign>,
    /// By level name: percent for activities of a member of that level.
    pub level_multipliers_percent: BTreeMap<String, u32>,
    pub growth_model: GrowthModel,
    /// The RFM rules (`GrowthModel::Rfm` only; boxed: most programmes have none).
    pub rfm: Option<Box<RfmRules>>,
    /// This version was allowed to change `points_per_cash_unit`.
    pub allow_ratio_change: bool,
    /// Manual adjustments of more points than this wait for a second admin
    /// client's approval (0 = none do).
    pub adjustment_approval_points: Points,
}

/// Thresholds of the alert rules (0 = the rule is off). Alerts are derived
/// from events by the risk view; `decide` does not read these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RiskRules {
    /// Issuance on a day above this percentage of the trailing 7-day average.
    pub issuance_spike_percent: u32,
    pub issuance_spike_min_points: Points,
    /// More than this many spends within `dense_spend_minutes`.
    pub dense_spend_count: u32,
    pub dense_spend_minutes: u32,
    /// One address earning for more than this many members in a day.
    pub shared_address_members: u32,
    /// One member from more than this many addresses within the minutes.
    pub member_addresses: u32,
    pub member_addresses_minutes: u32,
    /// A member's earnings in a day reaching this.
    pub member_daily_earn_alert: Points,
    /// A member's spending in a day reaching this.
    pub member_daily_spend_alert: Points,
    /// The rules whose alert also holds the member's new earns, one bit
    /// each in the order of [`HOLDING_RULES`].
    pub hold_earnings_on: u8,
    /// Redemption on a day above this percentage of the trailing 7-day
    /// average and at least the minimum.
    pub redemption_spike_percent: u32,
    pub redemption_spike_min_points: Points,
    /// One address spending for more than this many members in a day.
    pub shared_spend_address_members: u32,
}

/// The rules an alert of which may hold a member's earns.
pub const HOLDING_RULES: [&str; 5] =
    ["dense_spend", "shared_address", "member_addresses", "member_daily_earn", "member_daily_spend"];

impl RiskRules {
    /// Whether an alert of `rule` holds the member's new earns.
    pub fn holds(&self, rule: &str) -> bool {
        HOLDING_RULES.iter().position(|r| *r == rule).is_some_and(|i| self.hold_earnings_on & (1 << i) != 0)
    }

    /// The holding rules by name, in [`HOLDING_RULES`] order.
    pub fn holding_rules(&self) -> Vec<String> {
        HOLDING_RULES.iter().filter(|r| self.holds(r)).map(|r| r.to_string()).collect()
    }

    /// The bits of `names` (`Err`: a name that is not a holding rule).
    pub fn holding_bits<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u8, &'a str> {
        names.into_iter().try_fold(0u8, |bits, name| {
            HOLDING_RULES.iter().position(|r| *r == name).map(|i| bits | (1 << i)).ok_or(name)
        })
    }
}

impl Programme {
    /// The highest level whose threshold `growth` meets ("" below all).
    pub fn level_for(&self, growth: i64) -> &str {
        self.levels.iter().rev().find(|l| growth >= l.min_growth).map(|l| l.name.as_str()).unwrap_or_default()
    }

    pub fn key(&self) -> ProgrammeKey {
        ProgrammeKey { tenant_id: self.tenant_id.clone(), programme_id: self.programme_id.clone() }
    }

    /// Rules of thumb for a new programme: 100 points = 1 unit, a year's
    /// validity rounded to the end of the month, no caps.
    pub fn example(tenant: &str, programme: &str) -> Programme {
        Programme {
            tenant_id: tenant.into(),
            programme_id: programme.into(),
            unit_name: "points".into(),
            points_per_cash_unit: 100,
            validity_days: 365,
            validity_rounding: ValidityRounding::None,
            reminder_days: 15,
            time_zone: chrono_tz::Asia::Shanghai,
            member_daily_earn_cap: 0,
            action_daily_earn_caps: BTreeMap::new(),
            programme_daily_issuance_cap: 0,
            cap_policy: CapPolicy::Truncate,
            max_order_share_percent: 0,
            clawback_policy: ClawbackPolicy::WithinBalance,
            levels: Vec::new(),
            level_window_days: 0,
            version: 1,
            configured_at: 0,
            risk: RiskRules::default(),
            earning_rules: Vec::new(),
            campaigns: Vec::new(),
            level_multipliers_percent: BTreeMap::new(),
            growth_model: GrowthModel::Behaviour,
            rfm: None,
            allow_ratio_change: false,
            adjustment_approval_points: 0,
        }
    }
}

/// Where a command came from, for risk rules and audit. Not interpreted by
/// `decide` yet, but part of the command's content (and fingerprint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandContext {
    /// The authenticated client that sent it (its name in the clients
    /// file), for the audit log; not part of the fingerprint (a retry by
    /// another client of the same content is the same command).
    pub client: String,
    pub client_ip: String,
    pub device_id: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The idempotency key, unique per account. Empty for commands the writer
    /// issues itself.
    pub request_id: String,
    pub account: AccountKey,
    pub body: CommandBody,
    pub context: CommandContext,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBody {
    Earn {
        points: Points,
        reason: String,
        order_ref: Option<String>,
        growth: i64,
        expires_at: Option<Millis>,
    },
    Spend {
        points: Points,
        order_ref: Option<String>,
        order_cash_amount: Option<i64>,
    },
    Reserve {
        points: Points,
        order_ref: String,
        timeout_seconds: i64,
        order_cash_amount: Option<i64>,
    },
    Capture {
        reservation_id: String,
        points: Option<Points>,
    },
    Release {
        reservation_id: String,
    },
    Refund {
        spend_id: String,
        points: Points,
    },
    ReverseEarn {
        earn_id: String,
        points: Points,
        growth: i64,
    },
    Expire {
        all_points: bool,
        reason: String,
        /// Who recycles the points (required with `all_points`).
        operator: String,
    },
    Adjust {
        points: Points,
        operator: String,
        reason: String,
    },
    /// What happened; the programme's earning rules decide its worth.
    RecordActivity(Activity),
    /// Growth up (a new earn of no points) or down (from the newest earns,
    /// never below zero), by an operator.
    AdjustGrowth {
        growth: i64,
        operator: String,
        reason: String,
    },
    /// A level set by hand, held against evaluation until `hold_until`.
    SetLevel {
        level: String,
        operator: String,
        reason: String,
        hold_until: Option<Millis>,
    },
    Freeze {
        earning: bool,
        spending: bool,
        operator: String,
        reason: String,
    },
    Unfreeze {
        earning: bool,
        spending: bool,
        operator: String,
        reason: String,
    },
    /// An alert the risk view raised for this member (its request id is
    /// `alert:<alert_id>`, so raising it again changes nothing); with
    /// `hold`, the member's new earns are held from then on.
    RaiseAlert {
        alert_id: String,
        rule: String,
        detail: String,
        hold: bool,
    },
    /// The member's pending points become ordinary lots (with their original
    /// expiry), and the hold on new earns is lifted.
    ReleasePending {
        operator: String,
        reason: String,
    },
    /// The member's pending points are forfeited, and the hold on new earns
    /// is lifted.
    ForfeitPending {
        operator: String,
        reason: String,
    },
    /// The hold on new earns is lifted; pending points stay pending.
    Unhold {
        operator: String,
        reason: String,
    },
    /// A pending adjustment (maker-checker) is applied, by a client other
    /// than the one that asked for it.
    ApproveAdjustment {
        /// The request id of the `Adjust` waiting.
        approval_id: String,
        operator: String,
        reason: String,
    },
    /// A pending adjustment is dropped.
    RejectAdjustment {
        approval_id: String,
        operator: String,
        reason: String,
    },
    /// Issued by the writer's scheduler: expire due lots and time out due
    /// reservations. Never sent by callers.
    Tick,
}

impl CommandBody {
    /// Whether the writer's scheduler issued it (no idempotency key).
    pub fn is_system(&self) -> bool {
        matches!(self, CommandBody::Tick)
    }
}

/// A lot's share in a movement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LotAmount {
    pub lot_id: String,
    pub points: Points,
}

impl LotAmount {
    pub fn new(lot_id: &(impl ToString + ?Sized), points: Points) -> Self {
        LotAmount { lot_id: lot_id.to_string(), points }
    }
}

/// A lot a reminder names: its points left and when they expire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LotExpiry {
    pub lot_id: String,
    pub points: Points,
    pub expires_at: Millis,
}

pub fn sum(lots: &[LotAmount]) -> Points {
    lots.iter().map(|l| l.points).sum()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseCause {
    Requested,
    TimedOut,
    /// Released so that an `Expire { all_points }` can recycle every point.
    Recycled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryCause {
    Due,
    AllPoints,
}

/// Facts, in the past tense. Each carries every number a reader needs, so
/// folding an event never consults the programme's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PointsEarned {
        lot_id: String,
        reason: String,
        order_ref: Option<String>,
        requested: Points,
        granted: Points,
        forfeited: Points,
        /// Part of `granted` that repaid debt; the lot holds the rest.
        debt_repaid: Points,
        expires_at: Option<Millis>,
        growth: i64,
        /// Programme day of the earn, for daily caps.
        day: i64,
        /// The member's earns were held (`EarningsHeld`): the lot is
        /// pending, not spendable and not issued until released.
        pending: bool,
    },
    PointsSpent {
        spend_id: String,
        order_ref: Option<String>,
        points: Points,
        lots: Vec<LotAmount>,
        /// The order's cash part in minor units (0: points only).
        order_cash_minor: i64,
    },
    PointsReserved {
        reservation_id: String,
        order_ref: String,
        points: Points,
        lots: Vec<LotAmount>,
        expires_at: Millis,
        /// The order's cash part in minor units (0: points only).
        order_cash_minor: i64,
    },
    ReservationCaptured {
        reservation_id: String,
        spend_id: String,
        points: Points,
        lots: Vec<LotAmount>,
        released_points: Points,
        released_lots: Vec<LotAmount>,
        /// The reserved order's cash part in minor units (0: points only).
        order_cash_minor: i64,
    },
    ReservationReleased {
        reservation_id: String,
        points: Points,
        lots: Vec<LotAmount>,
        cause: ReleaseCause,
    },
    SpendRefunded {
        refund_id: String,
        spend_id: String,
        points: Points,
        lots: Vec<LotAmount>,
    },
    EarnReversed {
        reversal_id: String,
        earn_id: String,
        /// Clawed back in all: taken + debt_added + written_off.
        points: Points,
        taken: Vec<LotAmount>,
        debt_added: Points,
        written_off: Points,
        growth: i64,
    },
    /// Points that came back into lots (a refund, a released hold) taken
    /// again at once for what reversals left unrecovered: written-off
    /// reversals first, then the member's debt. Without it a refund after a
    /// reversal would mint points.
    PointsRecovered {
        /// Taken from these lots (they sum to `points`).
        lots: Vec<LotAmount>,
        points: Points,
        /// Part of `points` that repaid the member's debt.
        debt_repaid: Points,
        /// Part of `points` that claws back written-off reversals.
        written_off: Points,
    },
    PointsExpired {
        points: Points,
        lots: Vec<LotAmount>,
        cause: ExpiryCause,
        reason: String,
        /// Who recycled the points (`AllPoints`; empty for due lots).
        operator: String,
    },
    PointsAdjusted {
        adjustment_id: String,
        points: Points,
        operator: String,
        reason: String,
        /// For a credit: the new lot (at most one); for a debit: the lots taken.
        lots: Vec<LotAmount>,
        debt_repaid: Points,
        expires_at: Option<Millis>,
    },
    AccountFrozen {
        earning: bool,
        spending: bool,
        operator: String,
        reason: String,
    },
    AccountUnfrozen {
        earning: bool,
        spending: bool,
        operator: String,
        reason: String,
    },
    /// Growth of earns older than the programme's level window left the
    /// window (each earn's share in `earns`, lot id = earn id).
    GrowthExpired {
        earns: Vec<LotAmount>,
        growth: i64,
    },
    /// The member's level, re-evaluated from the growth in the window.
    LevelChanged {
        from: String,
        to: String,
        /// Growth in the window at the evaluation.
        growth: i64,
        why: String,
    },
    /// An activity a business service reported and what the earning rules
    /// made of it; a `PointsEarned` (lot id = `activity_id`) or a
    /// `PenaltyApplied` follows when it is worth something.
    ActivityRecorded {
        activity_id: String,
        activity: Activity,
        applied: Vec<AppliedRule>,
        /// The sums over the rules, before the programme's daily caps.
        points: Points,
        growth: i64,
        /// Programme day, for the rules' daily limits.
        day: i64,
        /// A purchase under the programme's RFM rules (its action is one of
        /// their purchase actions; `amount_minor` is its value).
        purchase: bool,
    },
    /// The member's RFM growth, measured at the end of a period (the first
    /// instant of the next one in the programme's zone): it replaces the
    /// previous one, and levels follow it.
    GrowthEvaluated {
        /// Programme day of the period's first day.
        period_start: i64,
        /// Days from the last purchase to the end of the period.
        recency_days: i64,
        /// Purchases in the period.
        frequency: i64,
        /// Their amount in the period (minor units).
        monetary_minor: i64,
        /// R score + F score + M score.
        growth: i64,
        previous_growth: i64,
    },
    /// An activity that penalises: points taken from lots soonest-expiring
    /// first, beyond the balance debt (`AllowDebt`) or written off
    /// (`WithinBalance`); growth taken from the newest earns, never below 0.
    PenaltyApplied {
        penalty_id: String,
        action: String,
        /// taken + debt_added + written_off (> 0).
        points: Points,
        taken: Vec<LotAmount>,
        debt_added: Points,
        written_off: Points,
        /// Growth taken (>= 0), by earn.
        growth: i64,
        growth_earns: Vec<LotAmount>,
    },
    /// Growth an operator added (`growth` > 0: an earn of no points, id
    /// `adjustment_id`, holds it) or took (`growth` < 0: from `earns`).
    GrowthAdjusted {
        adjustment_id: String,
        requested: i64,
        growth: i64,
        operator: String,
        reason: String,
        earns: Vec<LotAmount>,
        /// Programme day of a growth credit (the level window counts from it).
        day: i64,
    },
    /// A level set by hand; evaluation leaves it alone until `hold_until`.
    LevelHeld {
        level: String,
        operator: String,
        reason: String,
        hold_until: Option<Millis>,
    },
    /// The scheduler could not settle what fell due (its record would not
    /// fit in the log, or the decision refused) and tries again at
    /// `retry_at`. Changes nothing; the risk view raises an alert from it.
    SettlementSetAside {
        /// The refusal's reason code.
        reason: String,
        retry_at: Millis,
    },
    /// Lots entered the programme's reminder window (`reminder_days` before
    /// their expiry, from the start of that programme day): the scheduler
    /// tells the member once per lot. Moves no points; the lots are marked
    /// reminded.
    ExpiryReminderDue {
        /// The lots, their points left and their expiry.
        lots: Vec<LotExpiry>,
        /// Their sum.
        points: Points,
        /// Programme day of the reminder (an account gets one a day at most).
        day: i64,
    },
    /// An alert rule fired for this member (`alert_id` as `ListAlerts`
    /// names it). Moves nothing.
    AlertRaised {
        alert_id: String,
        rule: String,
        detail: String,
    },
    /// From now on the member's earns land as pending lots.
    EarningsHeld {
        /// The rule whose alert holds them, and the alert.
        rule: String,
        alert_id: String,
    },
    /// The hold on new earns is lifted (pending lots stay pending).
    EarningsUnheld {
        operator: String,
        reason: String,
    },
    /// A manual adjustment above the programme's `adjustment_approval_points`
    /// waits for a second admin client (`approval_id` = its request id);
    /// `client` asked for it. Moves nothing.
    AdjustmentRequested {
        approval_id: String,
        points: Points,
        operator: String,
        reason: String,
        client: String,
    },
    /// A second client approved it: a `PointsAdjusted` with the request's
    /// points, operator and reason follows in the same record.
    AdjustmentApproved {
        approval_id: String,
        operator: String,
        reason: String,
        client: String,
    },
    /// A second client (or the maker) rejected it: nothing is adjusted.
    AdjustmentRejected {
        approval_id: String,
        operator: String,
        reason: String,
        client: String,
    },
    /// Pending lots became ordinary lots (their original expiry): issued
    /// now. Lifts the hold.
    PendingPointsReleased {
        lots: Vec<LotAmount>,
        points: Points,
        operator: String,
        reason: String,
    },
    /// Pending lots were forfeited: never issued. Lifts the hold.
    PendingPointsForfeited {
        lots: Vec<LotAmount>,
        points: Points,
        operator: String,
        reason: String,
    },
}

/// An event an operator caused by hand (for the audit log): what, who,
/// why, and the points or growth it moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAct<'a> {
    pub action: &'static str,
    pub operator: &'a str,
    pub reason: &'a str,
    pub amount: i64,
}

impl Event {
    /// The admin act this event records, if an operator caused it.
    pub fn admin_act(&self) -> Option<AdminAct<'_>> {
        fn act<'e>(action: &'static str, operator: &'e str, reason: &'e str, amount: i64) -> Option<AdminAct<'e>> {
            Some(AdminAct { action, operator, reason, amount })
        }
        match self {
            Event::PointsExpired { points, reason, operator, .. } if !operator.is_empty() => {
                act("recycle", operator, reason, -points)
            }
            Event::PointsAdjusted { points, operator, reason, .. } => act("adjust", operator, reason, *points),
            Event::AccountFrozen { operator, reason, .. } => act("freeze", operator, reason, 0),
            Event::AccountUnfrozen { operator, reason, .. } => act("unfreeze", operator, reason, 0),
            Event::GrowthAdjusted { growth, operator, reason, .. } => act("adjust_growth", operator, reason, *growth),
            Event::LevelHeld { operator, reason, .. } => act("set_level", operator, reason, 0),
            Event::EarningsUnheld { operator, reason } => act("unhold", operator, reason, 0),
            Event::AdjustmentRequested { points, operator, reason, .. } => {
                act("request_adjustment", operator, reason, *points)
            }
            Event::AdjustmentApproved { operator, reason, .. } => act("approve_adjustment", operator, reason, 0),
            Event::AdjustmentRejected { operator, reason, .. } => act("reject_adjustment", operator, reason, 0),
            Event::PendingPointsReleased { points, operator, reason, .. } => {
                act("release_pending", operator, reason, *points)
            }
            Event::PendingPointsForfeited { points, operator, reason, .. } => {
                act("forfeit_pending", operator, reason, -points)
            }
            _ => None,
        }
    }

    /// The signed change this event makes to available + reserved − debt
    /// (the member's net balance), for statements and books.
    pub fn net_delta(&self) -> Points {
        match self {
            Event::PointsEarned { granted, pending: false, .. } => *granted,
            Event::PointsEarned { pending: true, .. } => 0,
            Event::PendingPointsReleased { points, .. } => *points,
            Event::PendingPointsForfeited { .. }
            | Event::AdjustmentRequested { .. }
            | Event::AdjustmentApproved { .. }
            | Event::AdjustmentRejected { .. }
            | Event::AlertRaised { .. }
            | Event::EarningsHeld { .. }
            | Event::EarningsUnheld { .. } => 0,
            Event::PointsSpent { points, .. } => -points,
            Event::PointsReserved { .. } | Event::ReservationReleased { .. } => 0,
            Event::ReservationCaptured { points, .. } => -points,
            Event::SpendRefunded { points, .. } => *points,
            Event::EarnReversed { points, written_off, .. } => -(points - written_off),
            Event::PointsRecovered { written_off, .. } => -written_off,
            Event::PointsExpired { points, .. } => -points,
            Event::PointsAdjusted { points, .. } => *points,
            Event::AccountFrozen { .. } | Event::AccountUnfrozen { .. } => 0,
            Event::PenaltyApplied { points, written_off, .. } => -(points - written_off),
            Event::GrowthExpired { .. }
            | Event::LevelChanged { .. }
            | Event::SettlementSetAside { .. }
            | Event::ActivityRecorded { .. }
            | Event::GrowthEvaluated { .. }
            | Event::GrowthAdjusted { .. }
            | Event::LevelHeld { .. }
            | Event::ExpiryReminderDue { .. } => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::PointsEarned { .. } => "PointsEarned",
            Event::PointsSpent { .. } => "PointsSpent",
            Event::PointsReserved { .. } => "PointsReserved",
            Event::ReservationCaptured { .. } => "ReservationCaptured",
            Event::ReservationReleased { .. } => "ReservationReleased",
            Event::SpendRefunded { .. } => "SpendRefunded",
            Event::EarnReversed { .. } => "EarnReversed",
            Event::PointsRecovered { .. } => "PointsRecovered",
            Event::PointsExpired { .. } => "PointsExpired",
            Event::PointsAdjusted { .. } => "PointsAdjusted",
            Event::AccountFrozen { .. } => "AccountFrozen",
            Event::AccountUnfrozen { .. } => "AccountUnfrozen",
            Event::GrowthExpired { .. } => "GrowthExpired",
            Event::LevelChanged { .. } => "LevelChanged",
            Event::SettlementSetAside { .. } => "SettlementSetAside",
            Event::ActivityRecorded { .. } => "ActivityRecorded",
            Event::GrowthEvaluated { .. } => "GrowthEvaluated",
            Event::PenaltyApplied { .. } => "PenaltyApplied",
            Event::GrowthAdjusted { .. } => "GrowthAdjusted",
            Event::LevelHeld { .. } => "LevelHeld",
            Event::ExpiryReminderDue { .. } => "ExpiryReminderDue",
            Event::AlertRaised { .. } => "AlertRaised",
            Event::EarningsHeld { .. } => "EarningsHeld",
            Event::EarningsUnheld { .. } => "EarningsUnheld",
            Event::PendingPointsReleased { .. } => "PendingPointsReleased",
            Event::PendingPointsForfeited { .. } => "PendingPointsForfeited",
            Event::AdjustmentRequested { .. } => "AdjustmentRequested",
            Event::AdjustmentApproved { .. } => "AdjustmentApproved",
            Event::AdjustmentRejected { .. } => "AdjustmentRejected",
        }
    }
}

/// Why a command was refused. Stable, machine-readable; the API maps each to
/// a gRPC status code in one exhaustive match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // The command is malformed for the domain.
    InvalidAmount,
    Overflow,
    InvalidExpiry,
    InvalidTimeout,
    MissingField,
    OrderCashAmountRequired,
    // A reference to something that does not exist.
    ProgrammeNotFound,
    EarningRuleNotFound,
    SpendNotFound,
    EarnNotFound,
    ReservationNotFound,
    LevelNotFound,
    // The account's state does not allow it.
    InsufficientPoints,
    AccountFrozen,
    ReservationSettled,
    CaptureExceedsReservation,
    RefundExceedsSpend,
    ReversalExceedsEarn,
    GrowthReversalExceedsEarn,
    OrderShareExceeded,
    TooManyLots,
    /// The earn is pending (held): release or forfeit it first.
    EarnPending,
    /// Nothing is pending and the account is not held.
    NothingPending,
    /// No adjustment waits for approval under that id.
    AdjustmentNotFound,
    /// The client that asked for an adjustment cannot approve it.
    ApproverIsMaker,
    /// Too many adjustments wait for approval on the account.
    TooManyPendingAdjustments,
    /// The action's earning rules are disabled or outside their window.
    EarningRuleNotActive,
    /// More is due than one record holds; the scheduler is settling it.
    SettlingDue,
    // A cap under the reject policy.
    DailyEarnCapReached,
    ActionDailyCapReached,
    ProgrammeDailyCapReached,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidAmount => "INVALID_AMOUNT",
            Reason::Overflow => "OVERFLOW",
            Reason::InvalidExpiry => "INVALID_EXPIRY",
            Reason::InvalidTimeout => "INVALID_TIMEOUT",
            Reason::MissingField => "MISSING_FIELD",
            Reason::OrderCashAmountRequired => "ORDER_CASH_AMOUNT_REQUIRED",
            Reason::ProgrammeNotFound => "PROGRAMME_NOT_FOUND",
            Reason::EarningRuleNotFound => "EARNING_RULE_NOT_FOUND",
            Reason::EarningRuleNotActive => "EARNING_RULE_NOT_ACTIVE",
            Reason::SpendNotFound => "SPEND_NOT_FOUND",
            Reason::EarnNotFound => "EARN_NOT_FOUND",
            Reason::ReservationNotFound => "RESERVATION_NOT_FOUND",
            Reason::LevelNotFound => "LEVEL_NOT_FOUND",
            Reason::InsufficientPoints => "INSUFFICIENT_POINTS",
            Reason::AccountFrozen => "ACCOUNT_FROZEN",
            Reason::ReservationSettled => "RESERVATION_SETTLED",
            Reason::CaptureExceedsReservation => "CAPTURE_EXCEEDS_RESERVATION",
            Reason::RefundExceedsSpend => "REFUND_EXCEEDS_SPEND",
            Reason::ReversalExceedsEarn => "REVERSAL_EXCEEDS_EARN",
            Reason::GrowthReversalExceedsEarn => "GROWTH_REVERSAL_EXCEEDS_EARN",
            Reason::OrderShareExceeded => "ORDER_SHARE_EXCEEDED",
            Reason::TooManyLots => "TOO_MANY_LOTS",
            Reason::EarnPending => "EARN_PENDING",
            Reason::NothingPending => "NOTHING_PENDING",
            Reason::AdjustmentNotFound => "ADJUSTMENT_NOT_FOUND",
            Reason::ApproverIsMaker => "APPROVER_IS_MAKER",
            Reason::TooManyPendingAdjustments => "TOO_MANY_PENDING_ADJUSTMENTS",
            Reason::SettlingDue => "SETTLING_DUE",
            Reason::DailyEarnCapReached => "DAILY_EARN_CAP_REACHED",
            Reason::ActionDailyCapReached => "ACTION_DAILY_CAP_REACHED",
            Reason::ProgrammeDailyCapReached => "PROGRAMME_DAILY_CAP_REACHED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: Reason,
    /// The request field at fault, for INVALID_ARGUMENT details.
    pub field: Option<&'static str>,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection { reason, field: None, message: message.into() }
    }

    pub fn field(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Rejection { reason, field: Some(field), message: message.into() }
    }
}

pub use fingerprint::{fingerprint, fingerprint_alert_action, fingerprint_programme, fingerprint_webhook};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod activity_tests;
#[cfg(test)]
mod pending_tests;
#[cfg(test)]
mod reminder_tests;
#[cfg(test)]
mod rfm_tests;
