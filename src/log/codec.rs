//! The one place where domain types meet the log's records
//! (`points.log.v1`): account records, claim markers, control records.
//!
//! Decoding never validates: a record once in the log always decodes,
//! whatever the API's limits become (validation belongs to the command's way
//! in, `api::validate`). A programme's rules are taken as they were accepted;
//! what a reader cannot interpret (an enum value from a newer build, a zone
//! this build's time-zone database lacks) takes the documented default and
//! is logged, never refused.

use prost::Message;

use crate::domain::{
    AccountKey, Activity, AmountRate, AppliedMultiplier, AppliedRule, Campaign, CapPolicy, ClawbackPolicy, EarningRule,
    Event, ExpiryCause, GrowthModel, LevelThreshold, LotAmount, LotExpiry, Millis, Programme, ReleaseCause, RfmBand,
    RfmRules, RiskRules, ValidityRounding,
};
use crate::log::record::{
    AccountRecord, AlertActioned, CapMode, CapShare, Claim, ControlEvent, ControlRecord, PartitionRecord,
};
use crate::proto::log as wire;
use crate::proto::log::ledger_event::Event as WireEvent;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable record: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("record is missing {0}")]
    Missing(&'static str),
    #[error("unknown enum value {1} for {0}")]
    Enum(&'static str, i32),
    #[error("undecodable state: {0}")]
    State(&'static str),
}

// ---- small pieces ----

pub fn account_key_to_wire(k: &AccountKey) -> wire::AccountKey {
    wire::AccountKey {
        tenant_id: k.tenant_id.clone(),
        programme_id: k.programme_id.clone(),
        member_id: k.member_id.clone(),
    }
}

pub fn account_key_from_wire(k: wire::AccountKey) -> AccountKey {
    AccountKey { tenant_id: k.tenant_id, programme_id: k.programme_id, member_id: k.member_id }
}

pub fn lots_to_wire(lots: Vec<LotAmount>) -> Vec<wire::LotAmount> {
    lots.into_iter().map(|l| wire::LotAmount { lot_id: l.lot_id, points: l.points }).collect()
}

pub fn lots_from_wire(lots: Vec<wire::LotAmount>) -> Vec<LotAmount> {
    lots.into_iter().map(|l| LotAmount { lot_id: l.lot_id, points: l.points }).collect()
}

/// 0 on the wire means "never" / "none".
pub fn opt_at(at: i64) -> Option<Millis> {
    (at != 0).then_some(at)
}

fn opt_str(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// An instant as the log writes it (a Timestamp's two fields).
pub fn instant(at: Millis) -> wire::Instant {
    wire::Instant { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn instant_millis(t: &wire::Instant) -> Option<Millis> {
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)
}

// ---- events ----

fn applied_to_wire(a: AppliedRule) -> wire::AppliedRule {
    wire::AppliedRule {
        rule_id: a.rule_id,
        points: a.points,
        growth: a.growth,
        multiplier_percent: a.multiplier_percent as i32,
        capped_points: a.capped_points,
        multipliers: a
            .multipliers
            .into_iter()
            .map(|m| wire::AppliedMultiplier { source: m.source, percent: m.percent as i32 })
            .collect(),
    }
}

fn applied_from_wire(a: wire::AppliedRule) -> AppliedRule {
    AppliedRule {
        rule_id: a.rule_id,
        points: a.points,
        growth: a.growth,
        multiplier_percent: unsigned(a.multiplier_percent),
        capped_points: a.capped_points,
        multipliers: a
            .multipliers
            .into_iter()
            .map(|m| AppliedMultiplier { source: m.source, percent: unsigned(m.percent) })
            .collect(),
    }
}

pub fn event_to_wire(e: Event) -> wire::LedgerEvent {
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
            pending,
        } => WireEvent::PointsEarned(wire::PointsEarned {
            pending,
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
        Event::PointsSpent { spend_id, order_ref, points, lots, order_cash_minor } => {
            WireEvent::PointsSpent(wire::PointsSpent {
                spend_id,
                order_ref: order_ref.unwrap_or_default(),
                points,
                lots: lots_to_wire(lots),
                order_cash_minor,
            })
        }
        Event::PointsReserved { reservation_id, order_ref, points, lots, expires_at, order_cash_minor } => {
            WireEvent::PointsReserved(wire::PointsReserved {
                reservation_id,
                order_ref,
                points,
                lots: lots_to_wire(lots),
                expires_at_ms: expires_at,
                order_cash_minor,
            })
        }
        Event::ReservationCaptured {
            reservation_id,
            spend_id,
            points,
            lots,
            released_points,
            released_lots,
            order_cash_minor,
        } => WireEvent::ReservationCaptured(wire::ReservationCaptured {
            reservation_id,
            spend_id,
            points,
            lots: lots_to_wire(lots),
            released_points,
            released_lots: lots_to_wire(released_lots),
            order_cash_minor,
        }),
        Event::ReservationReleased { reservation_id, points, lots, cause } => {
            WireEvent::ReservationReleased(wire::ReservationReleased {
                reservation_id,
                points,
                lots: lots_to_wire(lots),
                cause: match cause {
                    ReleaseCause::Requested => wire::ReleaseCause::Requested,
                    ReleaseCause::TimedOut => wire::ReleaseCause::TimedOut,
                    ReleaseCause::Recycled => wire::ReleaseCause::Recycled,
                } as i32,
            })
        }
        Event::SpendRefunded { refund_id, spend_id, points, lots } => {
            WireEvent::SpendRefunded(wire::SpendRefunded { refund_id, spend_id, points, lots: lots_to_wire(lots) })
        }
        Event::EarnReversed { reversal_id, earn_id, points, taken, debt_added, written_off, growth } => {
            WireEvent::EarnReversed(wire::EarnReversed {
                reversal_id,
                earn_id,
                points,
                taken_lots: lots_to_wire(taken),
                debt_added,
                written_off,
                growth,
            })
        }
        Event::PointsRecovered { lots, points, debt_repaid, written_off } => {
            WireEvent::PointsRecovered(wire::PointsRecovered {
                lots: lots_to_wire(lots),
                points,
                debt_repaid,
                written_off,
            })
        }
        Event::PointsExpired { points, lots, cause, reason, operator } => {
            WireEvent::PointsExpired(wire::PointsExpired {
                points,
                lots: lots_to_wire(lots),
                cause: match cause {
                    ExpiryCause::Due => wire::ExpiryCause::Due,
                    ExpiryCause::AllPoints => wire::ExpiryCause::AllPoints,
                } as i32,
                reason,
                operator,
            })
        }
        Event::PointsAdjusted { adjustment_id, points, operator, reason, lots, debt_repaid, expires_at } => {
            WireEvent::PointsAdjusted(wire::PointsAdjusted {
                adjustment_id,
                points,
                operator,
                reason,
                lots: lots_to_wire(lots),
                debt_repaid,
                expires_at_ms: expires_at.unwrap_or(0),
            })
        }
        Event::AccountFrozen { earning, spending, operator, reason } => {
            WireEvent::AccountFrozen(wire::AccountFrozen { earning, spending, operator, reason })
        }
        Event::AccountUnfrozen { earning, spending, operator, reason } => {
            WireEvent::AccountUnfrozen(wire::AccountUnfrozen { earning, spending, operator, reason })
        }
        Event::GrowthExpired { earns, growth } => {
            WireEvent::GrowthExpired(wire::GrowthExpired { earns: lots_to_wire(earns), growth })
        }
        Event::LevelChanged { from, to, growth, why } => {
            WireEvent::LevelChanged(wire::LevelChanged { from, to, growth, why })
        }
        Event::SettlementSetAside { reason, retry_at } => {
            WireEvent::SettlementSetAside(wire::SettlementSetAside { reason, retry_at_ms: retry_at })
        }
        Event::ExpiryReminderDue { lots, points, day } => WireEvent::ExpiryReminderDue(wire::ExpiryReminderDue {
            day,
            lots: lots
                .into_iter()
                .map(|l| wire::LotExpiry { lot_id: l.lot_id, points: l.points, expires_at_ms: l.expires_at })
                .collect(),
            points,
        }),
        Event::ActivityRecorded { activity_id, activity, applied, points, growth, day, purchase } => {
            WireEvent::ActivityRecorded(wire::ActivityRecorded {
                purchase,
                activity_id,
                action: activity.action,
                order_ref: activity.order_ref,
                amount_minor: activity.amount_minor,
                member_type: activity.member_type,
                product_tags: activity.product_tags,
                applied_rules: applied.into_iter().map(applied_to_wire).collect(),
                points,
                growth,
                day,
            })
        }
        Event::GrowthAdjusted { adjustment_id, requested, growth, operator, reason, earns, day } => {
            WireEvent::GrowthAdjusted(wire::GrowthAdjusted {
                adjustment_id,
                requested,
                growth,
                operator,
                reason,
                earns: lots_to_wire(earns),
                day,
            })
        }
        Event::LevelHeld { level, operator, reason, hold_until } => {
            WireEvent::LevelHeld(wire::LevelHeld { level, operator, reason, hold_until_ms: hold_until.unwrap_or(0) })
        }
        Event::GrowthEvaluated { period_start, recency_days, frequency, monetary_minor, growth, previous_growth } => {
            WireEvent::GrowthEvaluated(wire::GrowthEvaluated {
                period_start,
                recency_days,
                frequency,
                monetary_minor,
                growth,
                previous_growth,
            })
        }
        Event::PenaltyApplied { penalty_id, action, points, taken, debt_added, written_off, growth, growth_earns } => {
            WireEvent::PenaltyApplied(wire::PenaltyApplied {
                penalty_id,
                action,
                points,
                taken_lots: lots_to_wire(taken),
                debt_added,
                written_off,
                growth,
                growth_earns: lots_to_wire(growth_earns),
            })
        }
        Event::AlertRaised { alert_id, rule, detail } => {
            WireEvent::AlertRaised(wire::AlertRaised { alert_id, rule, detail })
        }
        Event::EarningsHeld { rule, alert_id } => WireEvent::EarningsHeld(wire::EarningsHeld { rule, alert_id }),
        Event::EarningsUnheld { operator, reason } => {
            WireEvent::EarningsUnheld(wire::EarningsUnheld { operator, reason })
        }
        Event::AdjustmentRequested { approval_id, points, operator, reason, client } => {
            WireEvent::AdjustmentRequested(wire::AdjustmentRequested { approval_id, points, operator, reason, client })
        }
        Event::AdjustmentApproved { approval_id, operator, reason, client } => {
            WireEvent::AdjustmentApproved(wire::AdjustmentApproved { approval_id, operator, reason, client })
        }
        Event::AdjustmentRejected { approval_id, operator, reason, client } => {
            WireEvent::AdjustmentRejected(wire::AdjustmentRejected { approval_id, operator, reason, client })
        }
        Event::PendingPointsReleased { lots, points, operator, reason } => {
            WireEvent::PendingPointsReleased(wire::PendingPointsReleased {
                lots: lots_to_wire(lots),
                points,
                operator,
                reason,
            })
        }
        Event::PendingPointsForfeited { lots, points, operator, reason } => {
            WireEvent::PendingPointsForfeited(wire::PendingPointsForfeited {
                lots: lots_to_wire(lots),
                points,
                operator,
                reason,
            })
        }
    };
    wire::LedgerEvent { event: Some(event) }
}

pub fn event_from_wire(e: wire::LedgerEvent) -> Result<Event, CodecError> {
    Ok(match e.event.ok_or(CodecError::Missing("event"))? {
        WireEvent::PointsEarned(x) => Event::PointsEarned {
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
            pending: x.pending,
        },
        WireEvent::PointsSpent(x) => Event::PointsSpent {
            order_ref: opt_str(&x.order_ref),
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_wire(x.lots),
            order_cash_minor: x.order_cash_minor.max(0),
        },
        WireEvent::PointsReserved(x) => Event::PointsReserved {
            reservation_id: x.reservation_id,
            order_ref: x.order_ref,
            points: x.points,
            lots: lots_from_wire(x.lots),
            expires_at: x.expires_at_ms,
            order_cash_minor: x.order_cash_minor.max(0),
        },
        WireEvent::ReservationCaptured(x) => Event::ReservationCaptured {
            reservation_id: x.reservation_id,
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_wire(x.lots),
            released_points: x.released_points,
            released_lots: lots_from_wire(x.released_lots),
            order_cash_minor: x.order_cash_minor.max(0),
        },
        WireEvent::ReservationReleased(x) => Event::ReservationReleased {
            cause: match wire::ReleaseCause::try_from(x.cause) {
                Ok(wire::ReleaseCause::Requested) => ReleaseCause::Requested,
                Ok(wire::ReleaseCause::TimedOut) => ReleaseCause::TimedOut,
                Ok(wire::ReleaseCause::Recycled) => ReleaseCause::Recycled,
                Ok(wire::ReleaseCause::Unspecified) | Err(_) => return Err(CodecError::Enum("ReleaseCause", x.cause)),
            },
            reservation_id: x.reservation_id,
            points: x.points,
            lots: lots_from_wire(x.lots),
        },
        WireEvent::SpendRefunded(x) => Event::SpendRefunded {
            refund_id: x.refund_id,
            spend_id: x.spend_id,
            points: x.points,
            lots: lots_from_wire(x.lots),
        },
        WireEvent::EarnReversed(x) => Event::EarnReversed {
            reversal_id: x.reversal_id,
            earn_id: x.earn_id,
            points: x.points,
            taken: lots_from_wire(x.taken_lots),
            debt_added: x.debt_added,
            written_off: x.written_off,
            growth: x.growth,
        },
        WireEvent::PointsRecovered(x) => Event::PointsRecovered {
            lots: lots_from_wire(x.lots),
            points: x.points,
            debt_repaid: x.debt_repaid,
            written_off: x.written_off,
        },
        WireEvent::PointsExpired(x) => Event::PointsExpired {
            cause: match wire::ExpiryCause::try_from(x.cause) {
                Ok(wire::ExpiryCause::Due) => ExpiryCause::Due,
                Ok(wire::ExpiryCause::AllPoints) => ExpiryCause::AllPoints,
                Ok(wire::ExpiryCause::Unspecified) | Err(_) => return Err(CodecError::Enum("ExpiryCause", x.cause)),
            },
            points: x.points,
            lots: lots_from_wire(x.lots),
            reason: x.reason,
            operator: x.operator,
        },
        WireEvent::PointsAdjusted(x) => Event::PointsAdjusted {
            adjustment_id: x.adjustment_id,
            points: x.points,
            operator: x.operator,
            reason: x.reason,
            lots: lots_from_wire(x.lots),
            debt_repaid: x.debt_repaid,
            expires_at: opt_at(x.expires_at_ms),
        },
        WireEvent::AccountFrozen(x) => {
            Event::AccountFrozen { earning: x.earning, spending: x.spending, operator: x.operator, reason: x.reason }
        }
        WireEvent::AccountUnfrozen(x) => {
            Event::AccountUnfrozen { earning: x.earning, spending: x.spending, operator: x.operator, reason: x.reason }
        }
        WireEvent::GrowthExpired(x) => Event::GrowthExpired { earns: lots_from_wire(x.earns), growth: x.growth },
        WireEvent::LevelChanged(x) => Event::LevelChanged { from: x.from, to: x.to, growth: x.growth, why: x.why },
        WireEvent::SettlementSetAside(x) => Event::SettlementSetAside { reason: x.reason, retry_at: x.retry_at_ms },
        WireEvent::ExpiryReminderDue(x) => Event::ExpiryReminderDue {
            lots: x
                .lots
                .into_iter()
                .map(|l| LotExpiry { lot_id: l.lot_id, points: l.points, expires_at: l.expires_at_ms })
                .collect(),
            points: x.points,
            day: x.day,
        },
        WireEvent::ActivityRecorded(x) => Event::ActivityRecorded {
            activity_id: x.activity_id,
            activity: Activity {
                action: x.action,
                amount_minor: x.amount_minor,
                member_type: x.member_type,
                product_tags: x.product_tags,
                order_ref: x.order_ref,
            },
            applied: x.applied_rules.into_iter().map(applied_from_wire).collect(),
            points: x.points,
            growth: x.growth,
            day: x.day,
            purchase: x.purchase,
        },
        WireEvent::GrowthEvaluated(x) => Event::GrowthEvaluated {
            period_start: x.period_start,
            recency_days: x.recency_days,
            frequency: x.frequency,
            monetary_minor: x.monetary_minor,
            growth: x.growth,
            previous_growth: x.previous_growth,
        },
        WireEvent::GrowthAdjusted(x) => Event::GrowthAdjusted {
            adjustment_id: x.adjustment_id,
            requested: x.requested,
            growth: x.growth,
            operator: x.operator,
            reason: x.reason,
            earns: lots_from_wire(x.earns),
            day: x.day,
        },
        WireEvent::LevelHeld(x) => Event::LevelHeld {
            level: x.level,
            operator: x.operator,
            reason: x.reason,
            hold_until: opt_at(x.hold_until_ms),
        },
        WireEvent::PenaltyApplied(x) => Event::PenaltyApplied {
            penalty_id: x.penalty_id,
            action: x.action,
            points: x.points,
            taken: lots_from_wire(x.taken_lots),
            debt_added: x.debt_added,
            written_off: x.written_off,
            growth: x.growth,
            growth_earns: lots_from_wire(x.growth_earns),
        },
        WireEvent::AlertRaised(x) => Event::AlertRaised { alert_id: x.alert_id, rule: x.rule, detail: x.detail },
        WireEvent::EarningsHeld(x) => Event::EarningsHeld { rule: x.rule, alert_id: x.alert_id },
        WireEvent::EarningsUnheld(x) => Event::EarningsUnheld { operator: x.operator, reason: x.reason },
        WireEvent::AdjustmentRequested(x) => Event::AdjustmentRequested {
            approval_id: x.approval_id,
            points: x.points,
            operator: x.operator,
            reason: x.reason,
            client: x.client,
        },
        WireEvent::AdjustmentApproved(x) => Event::AdjustmentApproved {
            approval_id: x.approval_id,
            operator: x.operator,
            reason: x.reason,
            client: x.client,
        },
        WireEvent::AdjustmentRejected(x) => Event::AdjustmentRejected {
            approval_id: x.approval_id,
            operator: x.operator,
            reason: x.reason,
            client: x.client,
        },
        WireEvent::PendingPointsReleased(x) => Event::PendingPointsReleased {
            lots: lots_from_wire(x.lots),
            points: x.points,
            operator: x.operator,
            reason: x.reason,
        },
        WireEvent::PendingPointsForfeited(x) => Event::PendingPointsForfeited {
            lots: lots_from_wire(x.lots),
            points: x.points,
            operator: x.operator,
            reason: x.reason,
        },
    })
}

// ---- records ----

pub fn account_record_to_wire(r: &AccountRecord) -> wire::AccountRecord {
    wire::AccountRecord {
        epoch: r.epoch,
        request_id: r.request_id.clone(),
        account: Some(account_key_to_wire(&r.account)),
        programme_version: r.programme_version,
        at_ms: r.at,
        fingerprint: r.fingerprint,
        system: r.system,
        events: r.events.iter().cloned().map(event_to_wire).collect(),
        client_ip: r.context.client_ip.clone(),
        device_id: r.context.device_id.clone(),
        metadata: r.context.metadata.clone().into_iter().collect(),
        claim: None,
        cap_mode: cap_mode_to_wire(r.cap_mode) as i32,
        client: r.context.client.clone(),
    }
}

pub fn cap_mode_to_wire(mode: CapMode) -> wire::CapMode {
    match mode {
        CapMode::None => wire::CapMode::Unspecified,
        CapMode::Exact => wire::CapMode::Exact,
        CapMode::Share => wire::CapMode::Share,
    }
}

/// Unknown values (a later build's) read as no mode: nothing is validated on read.
pub fn cap_mode_from_wire(mode: i32) -> CapMode {
    match wire::CapMode::try_from(mode) {
        Ok(wire::CapMode::Exact) => CapMode::Exact,
        Ok(wire::CapMode::Share) => CapMode::Share,
        _ => CapMode::None,
    }
}

pub fn encode_claim(c: &Claim) -> Vec<u8> {
    wire::AccountRecord {
        epoch: c.epoch,
        at_ms: c.at,
        claim: Some(wire::WriterClaim { writer: c.writer.clone(), address: c.address.clone(), release: c.release }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Decodes a record of an account partition: a command's record or a claim.
pub fn decode_partition_record(bytes: &[u8]) -> Result<PartitionRecord, CodecError> {
    let r = wire::AccountRecord::decode(bytes)?;
    if let Some(c) = r.claim {
        return Ok(PartitionRecord::Claim(Claim {
            epoch: r.epoch,
            writer: c.writer,
            address: c.address,
            at: r.at_ms,
            release: c.release,
        }));
    }
    account_record_from_wire(r).map(PartitionRecord::Account)
}

pub fn encode_account_record(r: &AccountRecord) -> Vec<u8> {
    account_record_to_wire(r).encode_to_vec()
}

/// Decodes a command's record (a claim marker is an error here; readers of
/// partitions use [`decode_partition_record`] through the arbiter).
pub fn decode_account_record(bytes: &[u8]) -> Result<AccountRecord, CodecError> {
    match decode_partition_record(bytes)? {
        PartitionRecord::Account(r) => Ok(r),
        PartitionRecord::Claim(_) => Err(CodecError::Missing("account (this is a claim marker)")),
    }
}

fn account_record_from_wire(r: wire::AccountRecord) -> Result<AccountRecord, CodecError> {
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
        events: r.events.into_iter().map(event_from_wire).collect::<Result<_, _>>()?,
        context: crate::domain::CommandContext {
            client: r.client,
            client_ip: r.client_ip,
            device_id: r.device_id,
            metadata: r.metadata.into_iter().collect(),
        },
        cap_mode: cap_mode_from_wire(r.cap_mode),
    })
}

pub fn encode_control_record(r: &ControlRecord) -> Vec<u8> {
    let event = match &r.event {
        ControlEvent::Configured(p) => wire::control_record::Event::ProgrammeConfigured(programme_to_wire(p)),
        ControlEvent::AlertActioned(a) => wire::control_record::Event::AlertActioned(wire::AlertActioned {
            tenant_id: a.programme.tenant_id.clone(),
            programme_id: a.programme.programme_id.clone(),
            alert_id: a.alert_id.clone(),
            resolved: a.resolved,
            note: a.note.clone(),
        }),
        ControlEvent::WebhookConfigured(w) => wire::control_record::Event::WebhookConfigured(wire::WebhookConfigured {
            tenant_id: w.programme.tenant_id.clone(),
            programme_id: w.programme.programme_id.clone(),
            webhook_id: w.webhook_id.clone(),
            url: w.url.clone(),
            event_types: w.event_types.clone(),
            secret: w.secret.clone(),
            disabled: w.disabled,
        }),
        ControlEvent::AlertRaised(a) => wire::control_record::Event::ProgrammeAlertRaised(wire::ProgrammeAlertRaised {
            tenant_id: a.programme.tenant_id.clone(),
            programme_id: a.programme.programme_id.clone(),
            alert_id: a.alert_id.clone(),
            rule: a.rule.clone(),
            detail: a.detail.clone(),
        }),
        ControlEvent::ShareTaken(s) => wire::control_record::Event::CapShareTaken(wire::CapShareTaken {
            tenant_id: s.programme.tenant_id.clone(),
            programme_id: s.programme.programme_id.clone(),
            day: s.day,
            partition: s.partition,
            points: s.points,
            writer: s.writer.clone(),
        }),
    };
    wire::ControlRecord {
        epoch: r.epoch,
        request_id: r.request_id.clone(),
        at_ms: r.at,
        fingerprint: r.fingerprint,
        operator: r.operator.clone(),
        client: r.client.clone(),
        event: Some(event),
    }
    .encode_to_vec()
}

pub fn decode_control_record(bytes: &[u8]) -> Result<ControlRecord, CodecError> {
    let r = wire::ControlRecord::decode(bytes)?;
    let event = match r.event.ok_or(CodecError::Missing("event"))? {
        wire::control_record::Event::ProgrammeConfigured(p) => {
            ControlEvent::Configured(programme_from_wire(p, r.at_ms))
        }
        wire::control_record::Event::CapShareTaken(s) => ControlEvent::ShareTaken(CapShare {
            programme: crate::domain::ProgrammeKey { tenant_id: s.tenant_id, programme_id: s.programme_id },
            day: s.day,
            partition: s.partition,
            points: s.points,
            writer: s.writer,
        }),
        wire::control_record::Event::WebhookConfigured(w) => {
            ControlEvent::WebhookConfigured(crate::log::record::WebhookConfigured {
                programme: crate::domain::ProgrammeKey { tenant_id: w.tenant_id, programme_id: w.programme_id },
                webhook_id: w.webhook_id,
                url: w.url,
                event_types: w.event_types,
                secret: w.secret,
                disabled: w.disabled,
            })
        }
        wire::control_record::Event::ProgrammeAlertRaised(a) => {
            ControlEvent::AlertRaised(crate::log::record::ProgrammeAlert {
                programme: crate::domain::ProgrammeKey { tenant_id: a.tenant_id, programme_id: a.programme_id },
                alert_id: a.alert_id,
                rule: a.rule,
                detail: a.detail,
            })
        }
        wire::control_record::Event::AlertActioned(a) => ControlEvent::AlertActioned(AlertActioned {
            programme: crate::domain::ProgrammeKey { tenant_id: a.tenant_id, programme_id: a.programme_id },
            alert_id: a.alert_id,
            resolved: a.resolved,
            note: a.note,
        }),
    };
    Ok(ControlRecord {
        epoch: r.epoch,
        request_id: r.request_id,
        at: r.at_ms,
        fingerprint: r.fingerprint,
        operator: r.operator,
        client: r.client,
        event,
    })
}

// ---- programmes ----

/// A programme's rules as the control stream carries them.
pub fn programme_to_wire(p: &Programme) -> wire::Programme {
    wire::Programme {
        tenant_id: p.tenant_id.clone(),
        programme_id: p.programme_id.clone(),
        unit_name: p.unit_name.clone(),
        points_per_cash_unit: p.points_per_cash_unit,
        validity_days: p.validity_days as i32,
        validity_rounding: match p.validity_rounding {
            ValidityRounding::None => wire::ValidityRounding::None,
            ValidityRounding::EndOfMonth => wire::ValidityRounding::EndOfMonth,
            ValidityRounding::EndOfQuarter => wire::ValidityRounding::EndOfQuarter,
            ValidityRounding::EndOfYear => wire::ValidityRounding::EndOfYear,
        } as i32,
        reminder_days: p.reminder_days as i32,
        time_zone: p.time_zone.name().to_string(),
        member_daily_earn_cap: p.member_daily_earn_cap,
        action_daily_earn_caps: p.action_daily_earn_caps.clone(),
        programme_daily_issuance_cap: p.programme_daily_issuance_cap,
        cap_policy: match p.cap_policy {
            CapPolicy::Truncate => wire::CapPolicy::Truncate,
            CapPolicy::Reject => wire::CapPolicy::Reject,
        } as i32,
        max_order_share_percent: p.max_order_share_percent as i32,
        clawback_policy: match p.clawback_policy {
            ClawbackPolicy::WithinBalance => wire::ClawbackPolicy::WithinBalance,
            ClawbackPolicy::AllowDebt => wire::ClawbackPolicy::AllowDebt,
        } as i32,
        levels: p
            .levels
            .iter()
            .map(|l| wire::LevelThreshold { name: l.name.clone(), min_growth: l.min_growth })
            .collect(),
        level_window_days: p.level_window_days as i32,
        version: p.version,
        configured_at: Some(instant(p.configured_at)),
        earning_rules: p.earning_rules.iter().map(rule_to_wire).collect(),
        campaigns: p
            .campaigns
            .iter()
            .map(|c| wire::Campaign {
                campaign_id: c.campaign_id.clone(),
                starts_at: c.starts_at.map(instant),
                ends_at: c.ends_at.map(instant),
                actions: c.actions.clone(),
                multiplier_percent: c.multiplier_percent as i32,
            })
            .collect(),
        level_multipliers_percent: p.level_multipliers_percent.iter().map(|(k, v)| (k.clone(), *v as i32)).collect(),
        growth_model: match p.growth_model {
            GrowthModel::Behaviour => wire::GrowthModel::Behaviour,
            GrowthModel::Rfm => wire::GrowthModel::Rfm,
        } as i32,
        allow_ratio_change: p.allow_ratio_change,
        adjustment_approval_points: p.adjustment_approval_points,
        rfm: p.rfm.as_deref().map(rfm_to_wire),
        risk: (p.risk != RiskRules::default()).then_some(wire::RiskRules {
            issuance_spike_percent: p.risk.issuance_spike_percent as i32,
            issuance_spike_min_points: p.risk.issuance_spike_min_points,
            dense_spend_count: p.risk.dense_spend_count as i32,
            dense_spend_minutes: p.risk.dense_spend_minutes as i32,
            shared_address_members: p.risk.shared_address_members as i32,
            member_addresses: p.risk.member_addresses as i32,
            member_addresses_minutes: p.risk.member_addresses_minutes as i32,
            member_daily_earn_alert: p.risk.member_daily_earn_alert,
            member_daily_spend_alert: p.risk.member_daily_spend_alert,
            hold_earnings_on: p.risk.holding_rules(),
            redemption_spike_percent: p.risk.redemption_spike_percent as i32,
            redemption_spike_min_points: p.risk.redemption_spike_min_points,
            shared_spend_address_members: p.risk.shared_spend_address_members as i32,
        }),
    }
}

fn rule_to_wire(r: &EarningRule) -> wire::EarningRule {
    wire::EarningRule {
        rule_id: r.rule_id.clone(),
        action: r.action.clone(),
        points: r.points,
        growth: r.growth,
        amount_rates: r
            .amount_rates
            .iter()
            .map(|(k, a)| {
                (k.clone(), wire::AmountRate { amount_minor: a.amount_minor, points: a.points, growth: a.growth })
            })
            .collect(),
        daily_points_max: r.daily_points_max,
        daily_count_max: r.daily_count_max as i32,
        starts_at: r.starts_at.map(instant),
        ends_at: r.ends_at.map(instant),
        disabled: r.disabled,
        tag_multipliers_percent: r.tag_multipliers_percent.iter().map(|(k, v)| (k.clone(), *v as i32)).collect(),
    }
}

fn rule_from_wire(r: wire::EarningRule) -> EarningRule {
    EarningRule {
        rule_id: r.rule_id,
        action: r.action,
        points: r.points,
        growth: r.growth,
        amount_rates: r
            .amount_rates
            .into_iter()
            .map(|(k, a)| (k, AmountRate { amount_minor: a.amount_minor, points: a.points, growth: a.growth }))
            .collect(),
        daily_points_max: r.daily_points_max,
        daily_count_max: unsigned(r.daily_count_max),
        starts_at: r.starts_at.as_ref().and_then(instant_millis),
        ends_at: r.ends_at.as_ref().and_then(instant_millis),
        disabled: r.disabled,
        tag_multipliers_percent: r.tag_multipliers_percent.into_iter().map(|(k, v)| (k, unsigned(v))).collect(),
    }
}

fn campaign_from_wire(c: wire::Campaign) -> Campaign {
    Campaign {
        campaign_id: c.campaign_id,
        starts_at: c.starts_at.as_ref().and_then(instant_millis),
        ends_at: c.ends_at.as_ref().and_then(instant_millis),
        actions: c.actions,
        multiplier_percent: unsigned(c.multiplier_percent),
    }
}

fn rfm_to_wire(r: &RfmRules) -> wire::RfmRules {
    let bands = |b: &[RfmBand]| b.iter().map(|b| wire::RfmBand { threshold: b.threshold, score: b.score }).collect();
    wire::RfmRules {
        period_months: r.period_months as i32,
        purchase_actions: r.purchase_actions.clone(),
        recency: bands(&r.recency),
        frequency: bands(&r.frequency),
        monetary: bands(&r.monetary),
    }
}

fn rfm_from_wire(r: wire::RfmRules) -> Box<RfmRules> {
    let bands =
        |b: Vec<wire::RfmBand>| b.into_iter().map(|b| RfmBand { threshold: b.threshold, score: b.score }).collect();
    Box::new(RfmRules {
        period_months: unsigned(r.period_months),
        purchase_actions: r.purchase_actions,
        recency: bands(r.recency),
        frequency: bands(r.frequency),
        monetary: bands(r.monetary),
    })
}

/// A count or a number of days as the domain keeps it (the API refused
/// negative ones; a reader clamps rather than refuse).
fn unsigned(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A programme's rules as they were accepted, without validation.
/// `recorded_at` stands in for a missing `configured_at`.
pub fn programme_from_wire(p: wire::Programme, recorded_at: Millis) -> Programme {
    let validity_rounding = match wire::ValidityRounding::try_from(p.validity_rounding) {
        Ok(wire::ValidityRounding::EndOfMonth) => ValidityRounding::EndOfMonth,
        Ok(wire::ValidityRounding::EndOfQuarter) => ValidityRounding::EndOfQuarter,
        Ok(wire::ValidityRounding::EndOfYear) => ValidityRounding::EndOfYear,
        Ok(wire::ValidityRounding::None | wire::ValidityRounding::Unspecified) => ValidityRounding::None,
        Err(_) => {
            tracing::warn!(
                value = p.validity_rounding,
                "unknown validity rounding in the control stream; taken as none"
            );
            ValidityRounding::None
        }
    };
    let cap_policy = match wire::CapPolicy::try_from(p.cap_policy) {
        Ok(wire::CapPolicy::Reject) => CapPolicy::Reject,
        Ok(wire::CapPolicy::Truncate | wire::CapPolicy::Unspecified) => CapPolicy::Truncate,
        Err(_) => {
            tracing::warn!(value = p.cap_policy, "unknown cap policy in the control stream; taken as truncate");
            CapPolicy::Truncate
        }
    };
    let clawback_policy = match wire::ClawbackPolicy::try_from(p.clawback_policy) {
        Ok(wire::ClawbackPolicy::AllowDebt) => ClawbackPolicy::AllowDebt,
        Ok(wire::ClawbackPolicy::WithinBalance | wire::ClawbackPolicy::Unspecified) => ClawbackPolicy::WithinBalance,
        Err(_) => {
            tracing::warn!(
                value = p.clawback_policy,
                "unknown clawback policy in the control stream; taken as within balance"
            );
            ClawbackPolicy::WithinBalance
        }
    };
    let tz_name = if p.time_zone.is_empty() { "UTC" } else { p.time_zone.as_str() };
    let time_zone = tz_name.parse().unwrap_or_else(|_| {
        tracing::warn!(zone = %p.time_zone, "time zone unknown to this build in the control stream; taken as UTC");
        chrono_tz::UTC
    });
    let r = p.risk.unwrap_or_default();
    Programme {
        configured_at: p.configured_at.as_ref().and_then(instant_millis).unwrap_or(recorded_at),
        tenant_id: p.tenant_id,
        programme_id: p.programme_id,
        unit_name: p.unit_name,
        points_per_cash_unit: p.points_per_cash_unit,
        validity_days: unsigned(p.validity_days),
        validity_rounding,
        reminder_days: unsigned(p.reminder_days),
        time_zone,
        member_daily_earn_cap: p.member_daily_earn_cap,
        action_daily_earn_caps: p.action_daily_earn_caps,
        programme_daily_issuance_cap: p.programme_daily_issuance_cap,
        cap_policy,
        max_order_share_percent: unsigned(p.max_order_share_percent),
        clawback_policy,
        levels: p.levels.into_iter().map(|l| LevelThreshold { name: l.name, min_growth: l.min_growth }).collect(),
        level_window_days: unsigned(p.level_window_days),
        version: p.version,
        earning_rules: p.earning_rules.into_iter().map(rule_from_wire).collect(),
        campaigns: p.campaigns.into_iter().map(campaign_from_wire).collect(),
        level_multipliers_percent: p.level_multipliers_percent.into_iter().map(|(k, v)| (k, unsigned(v))).collect(),
        growth_model: match wire::GrowthModel::try_from(p.growth_model) {
            Ok(wire::GrowthModel::Rfm) => GrowthModel::Rfm,
            _ => GrowthModel::Behaviour,
        },
        rfm: p.rfm.map(rfm_from_wire),
        allow_ratio_change: p.allow_ratio_change,
        adjustment_approval_points: p.adjustment_approval_points.max(0),
        risk: risk_rules_from_wire(&r),
    }
}

/// A programme's alert thresholds as they were accepted.
fn risk_rules_from_wire(r: &wire::RiskRules) -> RiskRules {
    RiskRules {
        issuance_spike_percent: unsigned(r.issuance_spike_percent),
        issuance_spike_min_points: r.issuance_spike_min_points,
        dense_spend_count: unsigned(r.dense_spend_count),
        dense_spend_minutes: unsigned(r.dense_spend_minutes),
        shared_address_members: unsigned(r.shared_address_members),
        member_addresses: unsigned(r.member_addresses),
        member_addresses_minutes: unsigned(r.member_addresses_minutes),
        member_daily_earn_alert: r.member_daily_earn_alert,
        member_daily_spend_alert: r.member_daily_spend_alert,
        // A name this build does not know holds nothing.
        hold_earnings_on: r
            .hold_earnings_on
            .iter()
            .filter_map(|n| RiskRules::holding_bits([n.as_str()]).ok())
            .fold(0, |a, b| a | b),
        redemption_spike_percent: unsigned(r.redemption_spike_percent),
        redemption_spike_min_points: r.redemption_spike_min_points,
        shared_spend_address_members: unsigned(r.shared_spend_address_members),
    }
}

#[cfg(test)]
mod rfm_tests {
    use super::*;

    #[test]
    fn rfm_events_and_rules_round_trip_through_the_log_schema() {
        let events = [
            Event::GrowthEvaluated {
                period_start: 20_454,
                recency_days: 2,
                frequency: 5,
                monetary_minor: 150_000,
                growth: 9,
                previous_growth: 4,
            },
            Event::ActivityRecorded {
                activity_id: "p1".into(),
                activity: Activity { action: "pay".into(), amount_minor: 30_000, ..Default::default() },
                applied: Vec::new(),
                points: 0,
                growth: 0,
                day: 20_460,
                purchase: true,
            },
        ];
        for e in events {
            assert_eq!(event_from_wire(event_to_wire(e.clone())).unwrap(), e);
        }
        let mut p = Programme::example("shop", "points");
        p.growth_model = GrowthModel::Rfm;
        p.rfm = Some(Box::new(RfmRules {
            period_months: 3,
            purchase_actions: vec!["pay".into()],
            recency: vec![RfmBand { threshold: 7, score: 3 }],
            frequency: vec![RfmBand { threshold: 1, score: 1 }, RfmBand { threshold: 5, score: 2 }],
            monetary: vec![RfmBand { threshold: 10_000, score: 1 }],
        }));
        assert_eq!(programme_from_wire(programme_to_wire(&p), 0), p);
    }
}

#[cfg(test)]
mod reminder_tests {
    use super::*;

    #[test]
    fn an_expiry_reminder_round_trips_through_the_log_schema() {
        let e = Event::ExpiryReminderDue {
            lots: vec![
                LotExpiry { lot_id: "e1".into(), points: 100, expires_at: 1_780_891_200_000 },
                LotExpiry { lot_id: "e2".into(), points: 30, expires_at: 1_780_934_400_000 },
            ],
            points: 130,
            day: 20_597,
        };
        assert_eq!(event_from_wire(event_to_wire(e.clone())).unwrap(), e);
    }
}
