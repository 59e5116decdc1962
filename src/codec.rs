//! The one place where domain types meet their protobuf form: log records,
//! state snapshots and programme rules. Snapshots keep repeated fields sorted,
//! so equal states always encode to equal bytes (replays compare by digest).

use prost::Message;

use crate::domain::{
    Account, AccountKey, CapPolicy, ClawbackPolicy, EarnRecord, Event, ExpiryCause, LevelThreshold, Lot, LotAmount,
    Millis, Programme, ReleaseCause, ReservationRecord, ReservationStatus, RiskRules, SpendRecord, Totals,
    ValidityRounding,
};
use crate::proto as pb;
use crate::proto::ledger_event::Event as PbEvent;
use crate::record::{AccountRecord, Claim, ControlRecord, PartitionRecord};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable record: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("record is missing {0}")]
    Missing(&'static str),
    #[error("invalid programme in record: {0}")]
    Programme(#[from] FieldError),
    #[error("unknown enum value {1} for {0}")]
    Enum(&'static str, i32),
}

/// A request field that does not hold a valid value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

// ---- small pieces ----

pub fn account_key_to_pb(k: &AccountKey) -> pb::AccountKey {
    pb::AccountKey {
        tenant_id: k.tenant_id.clone(),
        programme_id: k.programme_id.clone(),
        member_id: k.member_id.clone(),
    }
}

pub fn account_key_from_pb(k: &pb::AccountKey) -> AccountKey {
    AccountKey { tenant_id: k.tenant_id.clone(), programme_id: k.programme_id.clone(), member_id: k.member_id.clone() }
}

fn lots_to_pb(lots: Vec<LotAmount>) -> Vec<pb::LotAmount> {
    lots.into_iter().map(|l| pb::LotAmount { lot_id: l.lot_id, points: l.points }).collect()
}

fn lots_from_pb(lots: Vec<pb::LotAmount>) -> Vec<LotAmount> {
    lots.into_iter().map(|l| LotAmount { lot_id: l.lot_id, points: l.points }).collect()
}

fn opt_at(at: i64) -> Option<Millis> {
    (at != 0).then_some(at)
}

fn opt_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub fn timestamp(at: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn millis(t: &prost_types::Timestamp) -> Option<Millis> {
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)
}

// ---- events ----

pub fn event_to_pb(e: Event) -> pb::LedgerEvent {
    let event = match e {
        Event::PointsEarned {
            lot_id,
            reason,
            order_ref,
            requested,
            granted,
            forfeited,
            debt_repaid,
            expires_at,
            growth,
            day,
        } => PbEvent::PointsEarned(pb::PointsEarned {
            lot_id,
            reason,
            order_ref: order_ref.unwrap_or_default(),
            requested_points: requested,
            granted_points: granted,
            forfeited_points: forfeited,
            debt_repaid,
            expires_at_ms: expires_at.unwrap_or(0),
            growth,
            day,
        }),
        Event::PointsSpent { spend_id, order_ref, points, lots } => PbEvent::PointsSpent(pb::PointsSpent {
            spend_id,
            order_ref: order_ref.unwrap_or_default(),
            points,
            lots: lots_to_pb(lots),
        }),
        Event::PointsReserved { reservation_id, order_ref, points, lots, expires_at } => {
            PbEvent::PointsReserved(pb::PointsReserved {
                reservation_id,
                order_ref,
                points,
                lots: lots_to_pb(lots),
                expires_at_ms: expires_at,
            })
        }
        Event::ReservationCaptured { reservation_id, spend_id, points, lots, released_points, released_lots } => {
            PbEvent::ReservationCaptured(pb::ReservationCaptured {
                reservation_id,
                spend_id,
                points,
                lots: lots_to_pb(lots),
                released_points,
                released_lots: lots_to_pb(released_lots),
            })
        }
        Event::ReservationReleased { reservation_id, points, lots, cause } => {
            PbEvent::ReservationReleased(pb::ReservationReleased {
                reservation_id,
                points,
                lots: lots_to_pb(lots),
                cause: match cause {
                    ReleaseCause::Requested => pb::ReleaseCause::Requested,
                    ReleaseCause::TimedOut => pb::ReleaseCause::TimedOut,
                    ReleaseCause::Recycled => pb::ReleaseCause::Recycled,
                } as i32,
            })
        }
        Event::SpendRefunded { refund_id, spend_id, points, lots } => {
            PbEvent::SpendRefunded(pb::SpendRefunded { refund_id, spend_id, points, lots: lots_to_pb(lots) })
        }
        Event::EarnReversed { reversal_id, earn_id, points, taken, debt_added, written_off, growth } => {
            PbEvent::EarnReversed(pb::EarnReversed {
                reversal_id,
                earn_id,
                points,
                taken_lots: lots_to_pb(taken),
                debt_added,
                written_off,
                growth,
            })
        }
        Event::PointsExpired { points, lots, cause, reason, operator } => PbEvent::PointsExpired(pb::PointsExpired {
            points,
            lots: lots_to_pb(lots),
            cause: match cause {
                ExpiryCause::Due => pb::ExpiryCause::Due,
                ExpiryCause::AllPoints => pb::ExpiryCause::AllPoints,
            } as i32,
            reason,
            operator,
        }),
        Event::PointsAdjusted { adjustment_id, points, operator, reason, lots, debt_repaid, expires_at } => {
            PbEvent::PointsAdjusted(pb::PointsAdjusted {
                adjustment_id,
                points,
                operator,
                reason,
                lots: lots_to_pb(lots),
                debt_repaid,
                expires_at_ms: expires_at.unwrap_or(0),
            })
        }
        Event::AccountFrozen { earning, spending, operator, reason } => {
            PbEvent::AccountFrozen(pb::AccountFrozen { earning, spending, operator, reason })
        }
        Event::AccountUnfrozen { earning, spending, operator, reason } => {
            PbEvent::AccountUnfrozen(pb::AccountUnfrozen { earning, spending, operator, reason })
        }
        Event::GrowthExpired { earns, growth } => {
            PbEvent::GrowthExpired(pb::GrowthExpired { earns: lots_to_pb(earns), growth })
        }
        Event::LevelChanged { from, to, growth, why } => {
            PbEvent::LevelChanged(pb::LevelChanged { from, to, growth, why })
        }
    };
    pb::LedgerEvent { event: Some(event) }
}

pub fn event_from_pb(e: pb::LedgerEvent) -> Result<Event, CodecError> {
    Ok(match e.event.ok_or(CodecError::Missing("event"))? {
        PbEvent::PointsEarned(x) => Event::PointsEarned {
            order_ref: opt_str(&x.order_ref),
            lot_id: x.lot_id,
            reason: x.reason,
            requested: x.requested_points,
            granted: x.granted_points,
            forfeited: x.forfeited_points,
            debt_repaid: x.debt_repaid,
            expires_at: opt_at(x.expires_at_ms),
            growth: x.growth,
            day: x.day,
        },
        PbEvent::PointsSpent(x) => Event::PointsSpent {
            order_ref: opt_str(&x.order_ref),
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_pb(x.lots),
        },
        PbEvent::PointsReserved(x) => Event::PointsReserved {
            reservation_id: x.reservation_id,
            order_ref: x.order_ref,
            points: x.points,
            lots: lots_from_pb(x.lots),
            expires_at: x.expires_at_ms,
        },
        PbEvent::ReservationCaptured(x) => Event::ReservationCaptured {
            reservation_id: x.reservation_id,
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_pb(x.lots),
            released_points: x.released_points,
            released_lots: lots_from_pb(x.released_lots),
        },
        PbEvent::ReservationReleased(x) => Event::ReservationReleased {
            cause: match pb::ReleaseCause::try_from(x.cause) {
                Ok(pb::ReleaseCause::Requested) => ReleaseCause::Requested,
                Ok(pb::ReleaseCause::TimedOut) => ReleaseCause::TimedOut,
                Ok(pb::ReleaseCause::Recycled) => ReleaseCause::Recycled,
                Ok(pb::ReleaseCause::Unspecified) | Err(_) => return Err(CodecError::Enum("ReleaseCause", x.cause)),
            },
            reservation_id: x.reservation_id,
            points: x.points,
            lots: lots_from_pb(x.lots),
        },
        PbEvent::SpendRefunded(x) => Event::SpendRefunded {
            refund_id: x.refund_id,
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_pb(x.lots),
        },
        PbEvent::EarnReversed(x) => Event::EarnReversed {
            reversal_id: x.reversal_id,
            earn_id: x.earn_id,
            points: x.points,
            taken: lots_from_pb(x.taken_lots),
            debt_added: x.debt_added,
            written_off: x.written_off,
            growth: x.growth,
        },
        PbEvent::PointsExpired(x) => Event::PointsExpired {
            cause: match pb::ExpiryCause::try_from(x.cause) {
                Ok(pb::ExpiryCause::Due) => ExpiryCause::Due,
                Ok(pb::ExpiryCause::AllPoints) => ExpiryCause::AllPoints,
                Ok(pb::ExpiryCause::Unspecified) | Err(_) => return Err(CodecError::Enum("ExpiryCause", x.cause)),
            },
            points: x.points,
            lots: lots_from_pb(x.lots),
            reason: x.reason,
            operator: x.operator,
        },
        PbEvent::PointsAdjusted(x) => Event::PointsAdjusted {
            adjustment_id: x.adjustment_id,
            points: x.points,
            operator: x.operator,
            reason: x.reason,
            lots: lots_from_pb(x.lots),
            debt_repaid: x.debt_repaid,
            expires_at: opt_at(x.expires_at_ms),
        },
        PbEvent::AccountFrozen(x) => {
            Event::AccountFrozen { earning: x.earning, spending: x.spending, operator: x.operator, reason: x.reason }
        }
        PbEvent::AccountUnfrozen(x) => {
            Event::AccountUnfrozen { earning: x.earning, spending: x.spending, operator: x.operator, reason: x.reason }
        }
        PbEvent::GrowthExpired(x) => Event::GrowthExpired { earns: lots_from_pb(x.earns), growth: x.growth },
        PbEvent::LevelChanged(x) => Event::LevelChanged { from: x.from, to: x.to, growth: x.growth, why: x.why },
    })
}

// ---- records ----

pub fn account_record_to_pb(r: &AccountRecord) -> pb::AccountRecord {
    pb::AccountRecord {
        epoch: r.epoch,
        request_id: r.request_id.clone(),
        account: Some(account_key_to_pb(&r.account)),
        programme_version: r.programme_version,
        at_ms: r.at,
        fingerprint: r.fingerprint,
        system: r.system,
        events: r.events.iter().cloned().map(event_to_pb).collect(),
        client_ip: r.context.client_ip.clone(),
        device_id: r.context.device_id.clone(),
        metadata: r.context.metadata.clone().into_iter().collect(),
        claim: None,
    }
}

pub fn encode_claim(c: &Claim) -> Vec<u8> {
    pb::AccountRecord {
        epoch: c.epoch,
        at_ms: c.at,
        claim: Some(pb::WriterClaim { writer: c.writer.clone() }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Decodes a record of an account partition: a command's record or a claim.
pub fn decode_partition_record(bytes: &[u8]) -> Result<PartitionRecord, CodecError> {
    let r = pb::AccountRecord::decode(bytes)?;
    if let Some(c) = r.claim {
        return Ok(PartitionRecord::Claim(Claim { epoch: r.epoch, writer: c.writer, at: r.at_ms }));
    }
    account_record_from_pb(r).map(PartitionRecord::Account)
}

pub fn encode_account_record(r: &AccountRecord) -> Vec<u8> {
    account_record_to_pb(r).encode_to_vec()
}

/// Decodes a command's record (a claim marker is an error here; readers of
/// partitions use [`decode_partition_record`] through the arbiter).
pub fn decode_account_record(bytes: &[u8]) -> Result<AccountRecord, CodecError> {
    match decode_partition_record(bytes)? {
        PartitionRecord::Account(r) => Ok(r),
        PartitionRecord::Claim(_) => Err(CodecError::Missing("account (this is a claim marker)")),
    }
}

fn account_record_from_pb(r: pb::AccountRecord) -> Result<AccountRecord, CodecError> {
    Ok(AccountRecord {
        epoch: r.epoch,
        account: r
            .account
            .map(|k| AccountKey { tenant_id: k.tenant_id, programme_id: k.programme_id, member_id: k.member_id })
            .ok_or(CodecError::Missing("account"))?,
        request_id: r.request_id,
        programme_version: r.programme_version,
        at: r.at_ms,
        fingerprint: r.fingerprint,
        system: r.system,
        events: r.events.into_iter().map(event_from_pb).collect::<Result<_, _>>()?,
        context: crate::domain::CommandContext {
            client_ip: r.client_ip,
            device_id: r.device_id,
            metadata: r.metadata.into_iter().collect(),
        },
    })
}

pub fn encode_control_record(r: &ControlRecord) -> Vec<u8> {
    pb::ControlRecord {
        epoch: r.epoch,
        request_id: r.request_id.clone(),
        at_ms: r.at,
        fingerprint: r.fingerprint,
        operator: r.operator.clone(),
        event: Some(pb::control_record::Event::ProgrammeConfigured(programme_to_pb(&r.programme))),
    }
    .encode_to_vec()
}

pub fn decode_control_record(bytes: &[u8]) -> Result<ControlRecord, CodecError> {
    let r = pb::ControlRecord::decode(bytes)?;
    let pb::control_record::Event::ProgrammeConfigured(p) = r.event.ok_or(CodecError::Missing("event"))?;
    let mut programme = programme_from_pb(&p)?;
    programme.version = p.version;
    programme.configured_at = p.configured_at.as_ref().and_then(millis).unwrap_or(r.at_ms);
    Ok(ControlRecord {
        epoch: r.epoch,
        request_id: r.request_id,
        at: r.at_ms,
        fingerprint: r.fingerprint,
        operator: r.operator,
        programme,
    })
}

// ---- programmes ----

pub fn programme_to_pb(p: &Programme) -> pb::Programme {
    pb::Programme {
        tenant_id: p.tenant_id.clone(),
        programme_id: p.programme_id.clone(),
        unit_name: p.unit_name.clone(),
        points_per_cash_unit: p.points_per_cash_unit,
        validity_days: p.validity_days as i32,
        validity_rounding: match p.validity_rounding {
            ValidityRounding::None => pb::ValidityRounding::None,
            ValidityRounding::EndOfMonth => pb::ValidityRounding::EndOfMonth,
            ValidityRounding::EndOfQuarter => pb::ValidityRounding::EndOfQuarter,
            ValidityRounding::EndOfYear => pb::ValidityRounding::EndOfYear,
        } as i32,
        reminder_days: p.reminder_days as i32,
        time_zone: p.time_zone.name().to_string(),
        member_daily_earn_cap: p.member_daily_earn_cap,
        action_daily_earn_caps: p.action_daily_earn_caps.clone().into_iter().collect(),
        programme_daily_issuance_cap: p.programme_daily_issuance_cap,
        cap_policy: match p.cap_policy {
            CapPolicy::Truncate => pb::CapPolicy::Truncate,
            CapPolicy::Reject => pb::CapPolicy::Reject,
        } as i32,
        max_order_share_percent: p.max_order_share_percent as i32,
        clawback_policy: match p.clawback_policy {
            ClawbackPolicy::WithinBalance => pb::ClawbackPolicy::WithinBalance,
            ClawbackPolicy::AllowDebt => pb::ClawbackPolicy::AllowDebt,
        } as i32,
        levels: p
            .levels
            .iter()
            .map(|l| pb::LevelThreshold { name: l.name.clone(), min_growth: l.min_growth })
            .collect(),
        level_window_days: p.level_window_days as i32,
        version: p.version,
        configured_at: Some(timestamp(p.configured_at)),
        risk: (p.risk != RiskRules::default()).then(|| risk_rules_to_pb(&p.risk)),
    }
}

/// Names and codes: 1..64 characters of `[A-Za-z0-9_.:-]`.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fn check_id(field: &str, s: &str) -> Result<(), FieldError> {
    if valid_id(s) {
        Ok(())
    } else {
        Err(FieldError::new(field, "must be 1..64 characters of [A-Za-z0-9_.:-]"))
    }
}

/// Limits on a programme's rules.
pub const PROGRAMME_VALIDITY_DAYS_MAX: i32 = 36_500;
pub const PROGRAMME_ACTION_CAPS_MAX: usize = 64;
pub const PROGRAMME_LEVELS_MAX: usize = 32;
pub const PROGRAMME_UNIT_NAME_CHARS_MAX: usize = 64;

/// Reads and fully validates a programme's rules. Unspecified enums take
/// their documented defaults; unknown values are refused. `version` and
/// `configured_at` are left for the caller (the service sets them).
pub fn programme_from_pb(p: &pb::Programme) -> Result<Programme, FieldError> {
    check_id("programme.tenant_id", &p.tenant_id)?;
    check_id("programme.programme_id", &p.programme_id)?;
    if p.unit_name.chars().count() > PROGRAMME_UNIT_NAME_CHARS_MAX {
        return Err(FieldError::new("programme.unit_name", "at most 64 characters"));
    }
    if p.points_per_cash_unit <= 0 {
        return Err(FieldError::new("programme.points_per_cash_unit", "must be > 0 (e.g. 100: 100 points = 1 unit)"));
    }
    if !(0..=PROGRAMME_VALIDITY_DAYS_MAX).contains(&p.validity_days) {
        return Err(FieldError::new("programme.validity_days", "must be 0 (never) ..= 36500"));
    }
    let validity_rounding = match pb::ValidityRounding::try_from(p.validity_rounding) {
        Ok(pb::ValidityRounding::Unspecified | pb::ValidityRounding::None) => ValidityRounding::None,
        Ok(pb::ValidityRounding::EndOfMonth) => ValidityRounding::EndOfMonth,
        Ok(pb::ValidityRounding::EndOfQuarter) => ValidityRounding::EndOfQuarter,
        Ok(pb::ValidityRounding::EndOfYear) => ValidityRounding::EndOfYear,
        Err(_) => return Err(FieldError::new("programme.validity_rounding", "unknown value")),
    };
    if !(0..=PROGRAMME_VALIDITY_DAYS_MAX).contains(&p.reminder_days) {
        return Err(FieldError::new("programme.reminder_days", "must be 0..=36500"));
    }
    let tz_name = if p.time_zone.is_empty() { "UTC" } else { p.time_zone.as_str() };
    let time_zone: chrono_tz::Tz = tz_name
        .parse()
        .map_err(|_| FieldError::new("programme.time_zone", format!("unknown IANA time zone '{}'", p.time_zone)))?;
    if p.member_daily_earn_cap < 0 {
        return Err(FieldError::new("programme.member_daily_earn_cap", "must be >= 0 (0 = no cap)"));
    }
    if p.action_daily_earn_caps.len() > PROGRAMME_ACTION_CAPS_MAX {
        return Err(FieldError::new("programme.action_daily_earn_caps", "at most 64 actions"));
    }
    for (action, cap) in &p.action_daily_earn_caps {
        check_id("programme.action_daily_earn_caps", action)?;
        if *cap < 0 {
            return Err(FieldError::new(format!("programme.action_daily_earn_caps[{action}]"), "must be >= 0"));
        }
    }
    if p.programme_daily_issuance_cap < 0 {
        return Err(FieldError::new("programme.programme_daily_issuance_cap", "must be >= 0 (0 = no cap)"));
    }
    let cap_policy = match pb::CapPolicy::try_from(p.cap_policy) {
        Ok(pb::CapPolicy::Unspecified | pb::CapPolicy::Truncate) => CapPolicy::Truncate,
        Ok(pb::CapPolicy::Reject) => CapPolicy::Reject,
        Err(_) => return Err(FieldError::new("programme.cap_policy", "unknown value")),
    };
    if !(0..=100).contains(&p.max_order_share_percent) {
        return Err(FieldError::new("programme.max_order_share_percent", "must be 0 (no limit) ..= 100"));
    }
    let clawback_policy = match pb::ClawbackPolicy::try_from(p.clawback_policy) {
        Ok(pb::ClawbackPolicy::Unspecified | pb::ClawbackPolicy::WithinBalance) => ClawbackPolicy::WithinBalance,
        Ok(pb::ClawbackPolicy::AllowDebt) => ClawbackPolicy::AllowDebt,
        Err(_) => return Err(FieldError::new("programme.clawback_policy", "unknown value")),
    };
    if p.levels.len() > PROGRAMME_LEVELS_MAX {
        return Err(FieldError::new("programme.levels", "at most 32 levels"));
    }
    for (i, l) in p.levels.iter().enumerate() {
        if l.name.is_empty() || l.name.chars().count() > 64 {
            return Err(FieldError::new(format!("programme.levels[{i}].name"), "must be 1..64 characters"));
        }
        if l.min_growth < 0 || (i > 0 && l.min_growth <= p.levels[i - 1].min_growth) {
            return Err(FieldError::new(format!("programme.levels[{i}].min_growth"), "must be >= 0 and ascending"));
        }
    }
    if !(0..=PROGRAMME_VALIDITY_DAYS_MAX).contains(&p.level_window_days) {
        return Err(FieldError::new("programme.level_window_days", "must be 0 (lifetime) ..= 36500"));
    }
    let risk = risk_rules_from_pb(&p.risk.unwrap_or_default())?;
    Ok(Programme {
        tenant_id: p.tenant_id.clone(),
        programme_id: p.programme_id.clone(),
        unit_name: p.unit_name.clone(),
        points_per_cash_unit: p.points_per_cash_unit,
        validity_days: p.validity_days as u32,
        validity_rounding,
        reminder_days: p.reminder_days as u32,
        time_zone,
        member_daily_earn_cap: p.member_daily_earn_cap,
        action_daily_earn_caps: p.action_daily_earn_caps.clone().into_iter().collect(),
        programme_daily_issuance_cap: p.programme_daily_issuance_cap,
        cap_policy,
        max_order_share_percent: p.max_order_share_percent as u32,
        clawback_policy,
        levels: p.levels.iter().map(|l| LevelThreshold { name: l.name.clone(), min_growth: l.min_growth }).collect(),
        level_window_days: p.level_window_days as u32,
        version: 0,
        configured_at: 0,
        risk,
    })
}

/// Windows of the alert rules are at most a week.
const RISK_WINDOW_MINUTES_MAX: i32 = 7 * 24 * 60;

fn risk_rules_from_pb(r: &pb::RiskRules) -> Result<RiskRules, FieldError> {
    let count = |field: &str, v: i32| -> Result<u32, FieldError> {
        u32::try_from(v).map_err(|_| FieldError::new(format!("programme.risk.{field}"), "must be >= 0"))
    };
    let minutes = |field: &str, v: i32| -> Result<u32, FieldError> {
        if !(0..=RISK_WINDOW_MINUTES_MAX).contains(&v) {
            return Err(FieldError::new(format!("programme.risk.{field}"), "must be 0..=10080 (a week)"));
        }
        Ok(v as u32)
    };
    let points = |field: &str, v: i64| -> Result<i64, FieldError> {
        if v < 0 {
            return Err(FieldError::new(format!("programme.risk.{field}"), "must be >= 0"));
        }
        Ok(v)
    };
    let rules = RiskRules {
        issuance_spike_percent: count("issuance_spike_percent", r.issuance_spike_percent)?,
        issuance_spike_min_points: points("issuance_spike_min_points", r.issuance_spike_min_points)?,
        dense_spend_count: count("dense_spend_count", r.dense_spend_count)?,
        dense_spend_minutes: minutes("dense_spend_minutes", r.dense_spend_minutes)?,
        shared_address_members: count("shared_address_members", r.shared_address_members)?,
        member_addresses: count("member_addresses", r.member_addresses)?,
        member_addresses_minutes: minutes("member_addresses_minutes", r.member_addresses_minutes)?,
        member_daily_earn_alert: points("member_daily_earn_alert", r.member_daily_earn_alert)?,
    };
    if (rules.dense_spend_count > 0) != (rules.dense_spend_minutes > 0) {
        return Err(FieldError::new(
            "programme.risk.dense_spend_minutes",
            "set with dense_spend_count (both or neither)",
        ));
    }
    if (rules.member_addresses > 0) != (rules.member_addresses_minutes > 0) {
        return Err(FieldError::new(
            "programme.risk.member_addresses_minutes",
            "set with member_addresses (both or neither)",
        ));
    }
    Ok(rules)
}

fn risk_rules_to_pb(r: &RiskRules) -> pb::RiskRules {
    pb::RiskRules {
        issuance_spike_percent: r.issuance_spike_percent as i32,
        issuance_spike_min_points: r.issuance_spike_min_points,
        dense_spend_count: r.dense_spend_count as i32,
        dense_spend_minutes: r.dense_spend_minutes as i32,
        shared_address_members: r.shared_address_members as i32,
        member_addresses: r.member_addresses as i32,
        member_addresses_minutes: r.member_addresses_minutes as i32,
        member_daily_earn_alert: r.member_daily_earn_alert,
    }
}

// ---- account snapshots ----
//
// An account is stored as a header (an `AccountSnapshot` with no lists: the
// counters, totals, flags and level) and one row per lot, earn, spend and
// reservation (see `crate::accounts`). The id is in the row's key, so the
// piece messages are encoded with it empty. A header written before the
// split carries the lists itself; [`decode_account`] still reads it.

fn lot_from_pb(l: pb::LotState) -> (String, Lot) {
    (l.lot_id, Lot { earned: l.earned_points, remaining: l.remaining, expires_at: opt_at(l.expires_at_ms) })
}

fn earn_from_pb(e: pb::EarnState) -> (String, EarnRecord) {
    let record = EarnRecord {
        points: e.points,
        reversed: e.reversed,
        growth: e.growth,
        growth_reversed: e.growth_reversed,
        day: e.day,
        growth_expired: e.growth_expired,
    };
    (e.earn_id, record)
}

fn spend_from_pb(s: pb::SpendState) -> (String, SpendRecord) {
    let refunded = s.refunded.iter().map(|l| (l.lot_id.clone(), l.points)).collect();
    (s.spend_id, SpendRecord { lots: lots_from_pb(s.lots), refunded })
}

fn reservation_from_pb(r: pb::ReservationState) -> Result<(String, ReservationRecord), CodecError> {
    let status = match pb::ReservationStatus::try_from(r.status) {
        Ok(pb::ReservationStatus::Open) => ReservationStatus::Open,
        Ok(pb::ReservationStatus::Captured) => ReservationStatus::Captured,
        Ok(pb::ReservationStatus::Released) => ReservationStatus::Released,
        Ok(pb::ReservationStatus::TimedOut) => ReservationStatus::TimedOut,
        Ok(pb::ReservationStatus::Unspecified) | Err(_) => return Err(CodecError::Enum("ReservationStatus", r.status)),
    };
    let record =
        ReservationRecord { order_ref: r.order_ref, lots: lots_from_pb(r.lots), expires_at: r.expires_at_ms, status };
    Ok((r.reservation_id, record))
}

/// Everything but the lists.
fn header_to_pb(a: &Account) -> pb::AccountSnapshot {
    let t = &a.totals;
    pb::AccountSnapshot {
        lots: Vec::new(),
        earns: Vec::new(),
        spends: Vec::new(),
        reservations: Vec::new(),
        debt: a.debt,
        growth: a.growth,
        earning_frozen: a.earning_frozen,
        spending_frozen: a.spending_frozen,
        totals: Some(pb::Totals {
            issued: t.issued,
            spent: t.spent,
            refunded: t.refunded,
            reversed: t.reversed,
            expired: t.expired,
            adjusted_up: t.adjusted_up,
            adjusted_down: t.adjusted_down,
        }),
        day: a.day,
        day_earned: a.day_earned,
        day_actions: a.day_actions.iter().map(|(k, v)| pb::DayCounter { action: k.clone(), earned: *v }).collect(),
        events: a.events,
        level: a.level.clone(),
    }
}

/// The whole account in one message (lists included).
pub fn encode_account(a: &Account) -> Vec<u8> {
    let header = header_to_pb(a);
    let lists: usize = a.lots.iter().map(|(id, l)| field_len(1, snapshot::lot_len(id, l))).sum::<usize>()
        + a.earns.iter().map(|(id, e)| field_len(2, snapshot::earn_len(id, e))).sum::<usize>()
        + a.spends.iter().map(|(id, x)| field_len(3, snapshot::spend_len(id, x))).sum::<usize>()
        + a.reservations.iter().map(|(id, r)| field_len(4, snapshot::reservation_len(id, r))).sum::<usize>();
    // The lists are fields 1-4 and the header's fields follow them, which is
    // the order prost would write the whole message in.
    let mut buf = Vec::with_capacity(lists + header.encoded_len());
    snapshot::put_list(1, &a.lots, snapshot::lot_len, snapshot::put_lot, &mut buf);
    snapshot::put_list(2, &a.earns, snapshot::earn_len, snapshot::put_earn, &mut buf);
    snapshot::put_list(3, &a.spends, snapshot::spend_len, snapshot::put_spend, &mut buf);
    snapshot::put_list(4, &a.reservations, snapshot::reservation_len, snapshot::put_reservation, &mut buf);
    header.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// Bytes of a length-delimited field of `len` bytes under `tag`.
fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The lot, earn, spend and reservation messages of an account snapshot,
/// written straight from the account. Building prost's messages would copy
/// every id into them only to drop it once encoded (a few per cent of a
/// command's CPU); these write the bytes prost writes (fields in number
/// order, default values left out; the tests compare the two).
mod snapshot {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

    use super::field_len;
    use crate::domain::{EarnRecord, Lot, ReservationRecord, ReservationStatus, SpendRecord, VecMap};

    fn str_len(tag: u32, s: &str) -> usize {
        if s.is_empty() {
            0
        } else {
            field_len(tag, s.len())
        }
    }

    fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
        if !s.is_empty() {
            put_message(tag, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
    }

    fn int_len(tag: u32, v: i64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(v as u64)
        }
    }

    fn put_int(tag: u32, v: i64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v as u64, buf);
        }
    }

    /// Every entry of `map` as a message field `tag`, in key order.
    pub fn put_list<T>(
        tag: u32,
        map: &VecMap<String, T>,
        len: fn(&str, &T) -> usize,
        put: fn(&str, &T, &mut Vec<u8>),
        buf: &mut Vec<u8>,
    ) {
        for (id, v) in map.iter() {
            put_message(tag, len(id, v), buf);
            put(id, v, buf);
        }
    }

    /// The key and length of a length-delimited field (its bytes follow).
    pub fn put_message(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }

    /// A `LotAmount`.
    fn amount_len(id: &str, points: i64) -> usize {
        str_len(1, id) + int_len(2, points)
    }

    fn put_amount(tag: u32, id: &str, points: i64, buf: &mut Vec<u8>) {
        put_message(tag, amount_len(id, points), buf);
        put_str(1, id, buf);
        put_int(2, points, buf);
    }

    fn amounts_len<'a>(tag: u32, amounts: impl Iterator<Item = (&'a str, i64)>) -> usize {
        amounts.map(|(id, points)| field_len(tag, amount_len(id, points))).sum()
    }

    pub fn lot_len(id: &str, l: &Lot) -> usize {
        str_len(1, id) + int_len(2, l.earned) + int_len(3, l.remaining) + int_len(4, l.expires_at.unwrap_or(0))
    }

    pub fn put_lot(id: &str, l: &Lot, buf: &mut Vec<u8>) {
        put_str(1, id, buf);
        put_int(2, l.earned, buf);
        put_int(3, l.remaining, buf);
        put_int(4, l.expires_at.unwrap_or(0), buf);
    }

    pub fn earn_len(id: &str, e: &EarnRecord) -> usize {
        str_len(1, id)
            + int_len(2, e.points)
            + int_len(3, e.reversed)
            + int_len(4, e.growth)
            + int_len(5, e.growth_reversed)
            + int_len(6, e.day)
            + int_len(7, e.growth_expired)
    }

    pub fn put_earn(id: &str, e: &EarnRecord, buf: &mut Vec<u8>) {
        put_str(1, id, buf);
        put_int(2, e.points, buf);
        put_int(3, e.reversed, buf);
        put_int(4, e.growth, buf);
        put_int(5, e.growth_reversed, buf);
        put_int(6, e.day, buf);
        put_int(7, e.growth_expired, buf);
    }

    pub fn spend_len(id: &str, x: &SpendRecord) -> usize {
        str_len(1, id)
            + amounts_len(2, x.lots.iter().map(|l| (l.lot_id.as_str(), l.points)))
            + amounts_len(3, x.refunded.iter().map(|(id, p)| (id.as_str(), *p)))
    }

    pub fn put_spend(id: &str, x: &SpendRecord, buf: &mut Vec<u8>) {
        put_str(1, id, buf);
        x.lots.iter().for_each(|l| put_amount(2, &l.lot_id, l.points, buf));
        x.refunded.iter().for_each(|(id, p)| put_amount(3, id, *p, buf));
    }

    fn status(r: &ReservationRecord) -> i64 {
        match r.status {
            ReservationStatus::Open => 1,
            ReservationStatus::Captured => 2,
            ReservationStatus::Released => 3,
            ReservationStatus::TimedOut => 4,
        }
    }

    pub fn reservation_len(id: &str, r: &ReservationRecord) -> usize {
        str_len(1, id)
            + str_len(2, &r.order_ref)
            + amounts_len(3, r.lots.iter().map(|l| (l.lot_id.as_str(), l.points)))
            + int_len(4, r.expires_at)
            + int_len(5, status(r))
    }

    pub fn put_reservation(id: &str, r: &ReservationRecord, buf: &mut Vec<u8>) {
        put_str(1, id, buf);
        put_str(2, &r.order_ref, buf);
        r.lots.iter().for_each(|l| put_amount(3, &l.lot_id, l.points, buf));
        put_int(4, r.expires_at, buf);
        put_int(5, status(r), buf);
    }
}

/// The header row: the account without its lists.
pub fn encode_account_header(a: &Account) -> Vec<u8> {
    header_to_pb(a).encode_to_vec()
}

/// An account from a header (with whatever lists it carries) or a whole
/// snapshot; the pieces stored in rows of their own are added with
/// [`decode_piece_into`].
pub fn decode_account(bytes: &[u8]) -> Result<Account, CodecError> {
    let s = pb::AccountSnapshot::decode(bytes)?;
    let t = s.totals.unwrap_or_default();
    let mut a = Account::default();
    a.lots = s.lots.into_iter().map(lot_from_pb).collect();
    a.earns = s.earns.into_iter().map(earn_from_pb).collect();
    a.spends = s.spends.into_iter().map(spend_from_pb).collect();
    a.reservations = s.reservations.into_iter().map(reservation_from_pb).collect::<Result<_, _>>()?;
    a.debt = s.debt;
    a.growth = s.growth;
    a.earning_frozen = s.earning_frozen;
    a.spending_frozen = s.spending_frozen;
    a.totals = Totals {
        issued: t.issued,
        spent: t.spent,
        refunded: t.refunded,
        reversed: t.reversed,
        expired: t.expired,
        adjusted_up: t.adjusted_up,
        adjusted_down: t.adjusted_down,
    };
    a.day = s.day;
    a.day_earned = s.day_earned;
    a.day_actions = s.day_actions.into_iter().map(|d| (d.action, d.earned)).collect();
    a.events = s.events;
    a.level = s.level;
    a.recount();
    Ok(a)
}

/// Whether a header carries lists (written before accounts were split).
pub fn header_has_lists(a: &Account) -> bool {
    !(a.lots.is_empty() && a.earns.is_empty() && a.spends.is_empty() && a.reservations.is_empty())
}

/// What a piece row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    Lot,
    Earn,
    Spend,
    Reservation,
}

impl Piece {
    pub const ALL: [Piece; 4] = [Piece::Lot, Piece::Earn, Piece::Spend, Piece::Reservation];

    /// The byte after the account key that starts a piece row's key.
    pub fn tag(self) -> u8 {
        match self {
            Piece::Lot => b'l',
            Piece::Earn => b'e',
            Piece::Spend => b's',
            Piece::Reservation => b'r',
        }
    }

    pub fn from_tag(tag: u8) -> Option<Piece> {
        Piece::ALL.into_iter().find(|p| p.tag() == tag)
    }
}

/// One piece of `a`, or `None` when it has no such lot, earn, spend or reservation.
pub fn encode_piece(a: &Account, piece: Piece, id: &str) -> Option<Vec<u8>> {
    Some(match piece {
        Piece::Lot => lot_piece(a.lots.get(id)?),
        Piece::Earn => earn_piece(a.earns.get(id)?),
        Piece::Spend => spend_piece(a.spends.get(id)?),
        Piece::Reservation => reservation_piece(a.reservations.get(id)?),
    })
}

/// Every piece of `a` with its id, encoded, walking the maps rather than
/// looking each id up (an account written whole: a rebuild, an old header).
pub fn encode_every_piece(a: &Account, mut out: impl FnMut(Piece, &str, Vec<u8>)) {
    a.lots.iter().for_each(|(id, l)| out(Piece::Lot, id, lot_piece(l)));
    a.earns.iter().for_each(|(id, e)| out(Piece::Earn, id, earn_piece(e)));
    a.spends.iter().for_each(|(id, x)| out(Piece::Spend, id, spend_piece(x)));
    a.reservations.iter().for_each(|(id, r)| out(Piece::Reservation, id, reservation_piece(r)));
}

// A piece row's message, with its id left empty (the id is in the row's key).

fn piece<T>(v: &T, len: fn(&str, &T) -> usize, put: fn(&str, &T, &mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len("", v));
    put("", v, &mut buf);
    buf
}

fn lot_piece(l: &Lot) -> Vec<u8> {
    piece(l, snapshot::lot_len, snapshot::put_lot)
}

fn earn_piece(e: &EarnRecord) -> Vec<u8> {
    piece(e, snapshot::earn_len, snapshot::put_earn)
}

fn spend_piece(x: &SpendRecord) -> Vec<u8> {
    piece(x, snapshot::spend_len, snapshot::put_spend)
}

fn reservation_piece(r: &ReservationRecord) -> Vec<u8> {
    piece(r, snapshot::reservation_len, snapshot::put_reservation)
}

/// Puts one piece row's contents into `a` (replacing what it had under `id`);
/// the caller calls [`Account::recount`] once all are in.
pub fn decode_piece_into(a: &mut Account, piece: Piece, id: String, bytes: &[u8]) -> Result<(), CodecError> {
    match piece {
        Piece::Lot => {
            let (_, lot) = lot_from_pb(pb::LotState::decode(bytes)?);
            a.lots.insert(id, lot);
        }
        Piece::Earn => {
            let (_, earn) = earn_from_pb(pb::EarnState::decode(bytes)?);
            a.earns.insert(id, earn);
        }
        Piece::Spend => {
            let (_, spend) = spend_from_pb(pb::SpendState::decode(bytes)?);
            a.spends.insert(id, spend);
        }
        Piece::Reservation => {
            let (_, r) = reservation_from_pb(pb::ReservationState::decode(bytes)?)?;
            a.reservations.insert(id, r);
        }
    }
    Ok(())
}

// ---- replies ----

use crate::record::{Balance, Position, Reply};

pub fn balance_to_pb(b: &Balance) -> pb::AccountBalance {
    pb::AccountBalance { available: b.available, reserved: b.reserved, debt: b.debt, growth: b.growth }
}

pub fn position_to_pb(p: Position) -> pb::LogPosition {
    pb::LogPosition { partition: p.partition, offset: p.offset }
}

pub fn reply_to_pb(r: Reply) -> pb::CommandReply {
    pb::CommandReply {
        request_id: r.request_id,
        replayed: r.replayed,
        events: r.events.into_iter().map(event_to_pb).collect(),
        balance: Some(balance_to_pb(&r.balance)),
        position: Some(position_to_pb(r.position)),
        granted_points: r.granted,
        forfeited_points: r.forfeited,
        programme_version: r.programme_version,
    }
}

pub fn encode_stored_reply(fingerprint: u64, r: &Reply) -> Vec<u8> {
    pb::StoredReply { fingerprint, reply: Some(reply_to_pb(r.clone())) }.encode_to_vec()
}

pub fn decode_stored_reply(bytes: &[u8]) -> Result<(u64, Reply), CodecError> {
    let s = pb::StoredReply::decode(bytes)?;
    let r = s.reply.ok_or(CodecError::Missing("reply"))?;
    let b = r.balance.unwrap_or_default();
    let p = r.position.unwrap_or_default();
    Ok((
        s.fingerprint,
        Reply {
            request_id: r.request_id,
            replayed: r.replayed,
            events: r.events.into_iter().map(event_from_pb).collect::<Result<_, _>>()?,
            balance: Balance { available: b.available, reserved: b.reserved, debt: b.debt, growth: b.growth },
            position: Position { partition: p.partition, offset: p.offset },
            granted: r.granted_points,
            forfeited: r.forfeited_points,
            programme_version: r.programme_version,
        },
    ))
}

/// Lower-case hex of `bytes` (digests, chain heads, page tokens).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Points, VecMap};

    // prost's own messages, as the account snapshots were encoded before
    // they were written straight from the account. They name every field
    // (no `..Default::default()`), so a field added to the messages stops
    // them compiling until it is written here and in `mod snapshot` too.

    fn sorted_lots(m: &crate::domain::VecMap<String, i64>) -> Vec<pb::LotAmount> {
        m.iter().map(|(id, p)| pb::LotAmount { lot_id: id.clone(), points: *p }).collect()
    }

    fn lot_to_pb(id: String, l: &Lot) -> pb::LotState {
        pb::LotState {
            lot_id: id,
            earned_points: l.earned,
            remaining: l.remaining,
            expires_at_ms: l.expires_at.unwrap_or(0),
        }
    }

    fn earn_to_pb(id: String, e: &EarnRecord) -> pb::EarnState {
        pb::EarnState {
            earn_id: id,
            points: e.points,
            reversed: e.reversed,
            growth: e.growth,
            growth_reversed: e.growth_reversed,
            day: e.day,
            growth_expired: e.growth_expired,
        }
    }

    fn spend_to_pb(id: String, s: &SpendRecord) -> pb::SpendState {
        pb::SpendState { spend_id: id, lots: lots_to_pb(s.lots.clone()), refunded: sorted_lots(&s.refunded) }
    }

    fn reservation_to_pb(id: String, r: &ReservationRecord) -> pb::ReservationState {
        pb::ReservationState {
            reservation_id: id,
            order_ref: r.order_ref.clone(),
            lots: lots_to_pb(r.lots.clone()),
            expires_at_ms: r.expires_at,
            status: match r.status {
                ReservationStatus::Open => pb::ReservationStatus::Open,
                ReservationStatus::Captured => pb::ReservationStatus::Captured,
                ReservationStatus::Released => pb::ReservationStatus::Released,
                ReservationStatus::TimedOut => pb::ReservationStatus::TimedOut,
            } as i32,
        }
    }

    fn whole_by_prost(a: &Account) -> Vec<u8> {
        let mut s = header_to_pb(a);
        s.lots = a.lots.iter().map(|(id, l)| lot_to_pb(id.clone(), l)).collect();
        s.earns = a.earns.iter().map(|(id, e)| earn_to_pb(id.clone(), e)).collect();
        s.spends = a.spends.iter().map(|(id, sp)| spend_to_pb(id.clone(), sp)).collect();
        s.reservations = a.reservations.iter().map(|(id, r)| reservation_to_pb(id.clone(), r)).collect();
        s.encode_to_vec()
    }

    fn amount(id: &str, points: Points) -> LotAmount {
        LotAmount { lot_id: id.into(), points }
    }

    /// An account with every kind of piece, default values among them
    /// (prost leaves those out), long ids, negative numbers and big ones.
    fn varied() -> Account {
        let mut a = Account::default();
        let long = "r".repeat(300);
        a.lots.insert("e1".into(), Lot { earned: 100, remaining: 40, expires_at: Some(1_773_100_800_000) });
        a.lots.insert("e2".into(), Lot { earned: 5, remaining: 0, expires_at: None });
        a.lots.insert(long.clone(), Lot { earned: i64::MAX, remaining: 1, expires_at: Some(-1) });
        a.lots.insert(String::new(), Lot { earned: 0, remaining: 0, expires_at: None });
        a.earns.insert("e1".into(), EarnRecord { points: 100, growth: 7, day: 20_000, ..Default::default() });
        a.earns.insert(
            long.clone(),
            EarnRecord { points: 3, reversed: 3, growth: -2, growth_reversed: 1, day: -5, growth_expired: 9 },
        );
        a.earns.insert("e0".into(), EarnRecord::default());
        let mut refunded = VecMap::new();
        refunded.insert("e1".to_string(), 10);
        refunded.insert("e2".to_string(), 0);
        a.spends.insert(
            "s1".into(),
            SpendRecord { lots: vec![amount("e1", 50), amount("e2", 5), amount("", 0)], refunded },
        );
        a.spends.insert("s2".into(), SpendRecord::default());
        for (i, status) in [
            ReservationStatus::Open,
            ReservationStatus::Captured,
            ReservationStatus::Released,
            ReservationStatus::TimedOut,
        ]
        .into_iter()
        .enumerate()
        {
            let lots = if i == 1 { Vec::new() } else { vec![amount("e1", i as Points + 1)] };
            let order_ref = if i == 2 { String::new() } else { format!("order-{i}") };
            a.reservations
                .insert(format!("h{i}"), ReservationRecord { order_ref, lots, expires_at: i as Millis * 1000, status });
        }
        a.debt = 12;
        a.growth = -3;
        a.spending_frozen = true;
        a.totals.issued = 108;
        a.day_actions.insert("checkin".into(), 5);
        a.events = 17;
        a.level = "gold".into();
        a.recount();
        a
    }

    #[test]
    fn snapshots_written_straight_are_the_bytes_prost_writes() {
        for a in [Account::default(), varied()] {
            let whole = encode_account(&a);
            assert_eq!(whole, whole_by_prost(&a));
            assert_eq!(decode_account(&whole).unwrap(), a);
            let mut pieces = Vec::new();
            encode_every_piece(&a, |p, id, v| pieces.push((p, id.to_string(), v)));
            assert_eq!(pieces.len(), a.lots.len() + a.earns.len() + a.spends.len() + a.reservations.len());
            for (piece, id, bytes) in pieces {
                let by_prost = match piece {
                    Piece::Lot => lot_to_pb(String::new(), a.lots.get(&id).unwrap()).encode_to_vec(),
                    Piece::Earn => earn_to_pb(String::new(), a.earns.get(&id).unwrap()).encode_to_vec(),
                    Piece::Spend => spend_to_pb(String::new(), a.spends.get(&id).unwrap()).encode_to_vec(),
                    Piece::Reservation => {
                        reservation_to_pb(String::new(), a.reservations.get(&id).unwrap()).encode_to_vec()
                    }
                };
                assert_eq!(bytes, by_prost, "{piece:?} {id:?}");
                assert_eq!(encode_piece(&a, piece, &id), Some(bytes));
            }
        }
    }
}
