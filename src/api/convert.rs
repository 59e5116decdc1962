//! The one place where domain types (and stored rows) meet the API's
//! messages (`points.v1`): instants become Timestamps, programme days become
//! dates, and stored rows become what callers see.

use crate::domain::{
    self, calendar, Account, AccountKey, AppliedRule, CapPolicy, ClawbackPolicy, EarningRule, Event, ExpiryCause,
    GrowthModel, LotAmount, Millis, Programme, ReleaseCause, RiskRules, ValidityRounding,
};
use crate::log::record::{Balance, CapMode, Position, Reply};
use crate::proto as pb;
use crate::proto::ledger_event::Event as PbEvent;
use crate::proto::state;

pub fn account_key_to_pb(k: &AccountKey) -> pb::AccountKey {
    pb::AccountKey {
        tenant_id: k.tenant_id.clone(),
        programme_id: k.programme_id.clone(),
        member_id: k.member_id.clone(),
    }
}

pub fn timestamp(at: Millis) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: at.div_euclid(1000), nanos: (at.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn millis(t: &pbjson_types::Timestamp) -> Option<Millis> {
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)
}

/// A programme day (days since 1970-01-01 on the programme's calendar) as
/// `YYYY-MM-DD`.
pub fn date_of(day: i64) -> String {
    calendar::day_to_date(day).map(|d| d.to_string()).unwrap_or_default()
}

fn lots_to_pb(lots: Vec<LotAmount>) -> Vec<pb::LotAmount> {
    lots.into_iter().map(|l| pb::LotAmount { lot_id: l.lot_id, points: l.points }).collect()
}

// ---- events and replies ----

pub fn event_to_api(e: Event) -> pb::LedgerEvent {
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
        } => PbEvent::PointsEarned(pb::PointsEarned {
            pending,
            lot_id,
            reason,
            order_ref: order_ref.unwrap_or_default(),
            requested_points: requested,
            granted_points: granted,
            forfeited_points: forfeited,
            debt_repaid,
            expires_at: expires_at.map(timestamp),
            growth,
            date: date_of(day),
        }),
        Event::PointsSpent { spend_id, order_ref, points, lots, order_cash_minor } => {
            PbEvent::PointsSpent(pb::PointsSpent {
                spend_id,
                order_ref: order_ref.unwrap_or_default(),
                points,
                lots: lots_to_pb(lots),
                order_cash_minor,
            })
        }
        Event::PointsReserved { reservation_id, order_ref, points, lots, expires_at, order_cash_minor } => {
            PbEvent::PointsReserved(pb::PointsReserved {
                reservation_id,
                order_ref,
                points,
                lots: lots_to_pb(lots),
                expires_at: Some(timestamp(expires_at)),
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
        } => PbEvent::ReservationCaptured(pb::ReservationCaptured {
            reservation_id,
            spend_id,
            points,
            lots: lots_to_pb(lots),
            released_points,
            released_lots: lots_to_pb(released_lots),
            order_cash_minor,
        }),
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
        Event::PointsRecovered { lots, points, debt_repaid, written_off } => {
            PbEvent::PointsRecovered(pb::PointsRecovered { lots: lots_to_pb(lots), points, debt_repaid, written_off })
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
                expires_at: expires_at.map(timestamp),
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
        Event::SettlementSetAside { reason, retry_at } => {
            PbEvent::SettlementSetAside(pb::SettlementSetAside { reason, retry_at: Some(timestamp(retry_at)) })
        }
        Event::ExpiryReminderDue { lots, points, day: _ } => PbEvent::ExpiryReminderDue(pb::ExpiryReminderDue {
            lots: lots
                .into_iter()
                .map(|l| pb::LotExpiry {
                    lot_id: l.lot_id,
                    points: l.points,
                    expires_at: Some(timestamp(l.expires_at)),
                })
                .collect(),
            points,
        }),
        Event::AlertRaised { alert_id, rule, detail } => {
            PbEvent::AlertRaised(pb::AlertRaised { alert_id, rule, detail })
        }
        Event::EarningsHeld { rule, alert_id } => PbEvent::EarningsHeld(pb::EarningsHeld { rule, alert_id }),
        Event::EarningsUnheld { operator, reason } => PbEvent::EarningsUnheld(pb::EarningsUnheld { operator, reason }),
        Event::AdjustmentRequested { approval_id, points, operator, reason, client } => {
            PbEvent::AdjustmentRequested(pb::AdjustmentRequested { approval_id, points, operator, reason, client })
        }
        Event::AdjustmentApproved { approval_id, operator, reason, client } => {
            PbEvent::AdjustmentApproved(pb::AdjustmentApproved { approval_id, operator, reason, client })
        }
        Event::AdjustmentRejected { approval_id, operator, reason, client } => {
            PbEvent::AdjustmentRejected(pb::AdjustmentRejected { approval_id, operator, reason, client })
        }
        Event::PendingPointsReleased { lots, points, operator, reason } => {
            PbEvent::PendingPointsReleased(pb::PendingPointsReleased {
                lots: lots_to_pb(lots),
                points,
                operator,
                reason,
            })
        }
        Event::PendingPointsForfeited { lots, points, operator, reason } => {
            PbEvent::PendingPointsForfeited(pb::PendingPointsForfeited {
                lots: lots_to_pb(lots),
                points,
                operator,
                reason,
            })
        }
        Event::ActivityRecorded { activity_id, activity, applied, points, growth, day: _, purchase } => {
            PbEvent::ActivityRecorded(pb::ActivityRecorded {
                purchase,
                activity_id,
                action: activity.action,
                order_ref: activity.order_ref,
                amount_minor: activity.amount_minor,
                member_type: activity.member_type,
                product_tags: activity.product_tags,
                applied_rules: applied.iter().map(applied_to_pb).collect(),
                points,
                growth,
            })
        }
        Event::GrowthAdjusted { adjustment_id, requested, growth, operator, reason, earns, day: _ } => {
            PbEvent::GrowthAdjusted(pb::GrowthAdjusted {
                adjustment_id,
                requested,
                growth,
                operator,
                reason,
                earns: lots_to_pb(earns),
            })
        }
        Event::LevelHeld { level, operator, reason, hold_until } => {
            PbEvent::LevelHeld(pb::LevelHeld { level, operator, reason, hold_until: hold_until.map(timestamp) })
        }
        Event::GrowthEvaluated { period_start, recency_days, frequency, monetary_minor, growth, previous_growth } => {
            PbEvent::GrowthEvaluated(pb::GrowthEvaluated {
                period_start: date_of(period_start),
                recency_days,
                frequency,
                monetary_minor,
                growth,
                previous_growth,
            })
        }
        Event::PenaltyApplied { penalty_id, action, points, taken, debt_added, written_off, growth, growth_earns } => {
            PbEvent::PenaltyApplied(pb::PenaltyApplied {
                penalty_id,
                action,
                points,
                taken_lots: lots_to_pb(taken),
                debt_added,
                written_off,
                growth,
                growth_earns: lots_to_pb(growth_earns),
            })
        }
    };
    pb::LedgerEvent { event: Some(event) }
}

pub fn balance_to_pb(b: &Balance) -> pb::AccountBalance {
    pb::AccountBalance {
        available: b.available,
        reserved: b.reserved,
        debt: b.debt,
        growth: b.growth,
        pending: b.pending,
    }
}

pub fn position_to_pb(p: Position) -> pb::LogPosition {
    pb::LogPosition { partition: p.partition, offset: p.offset }
}

pub fn reply_to_pb(r: Reply) -> pb::CommandReply {
    let applied_rules = r
        .events
        .iter()
        .find_map(|e| match e {
            Event::ActivityRecorded { applied, .. } => Some(applied.iter().map(applied_to_pb).collect()),
            _ => None,
        })
        .unwrap_or_default();
    let pending_approval_id = r
        .events
        .iter()
        .find_map(|e| match e {
            Event::AdjustmentRequested { approval_id, .. } => Some(approval_id.clone()),
            _ => None,
        })
        .unwrap_or_default();
    pb::CommandReply {
        pending_approval_id,
        applied_rules,
        request_id: r.request_id,
        replayed: r.replayed,
        events: r.events.into_iter().map(event_to_api).collect(),
        balance: Some(balance_to_pb(&r.balance)),
        position: Some(position_to_pb(r.position)),
        granted_points: r.granted,
        forfeited_points: r.forfeited,
        programme_version: r.programme_version,
        cap_mode: match r.cap_mode {
            CapMode::None => pb::CapMode::Unspecified,
            CapMode::Exact => pb::CapMode::Exact,
            CapMode::Share => pb::CapMode::Share,
        } as i32,
    }
}

/// What a previewed activity would give: points (negative for a penalty)
/// and growth after every rule, limit and cap.
pub fn preview_to_pb(events: &[Event]) -> pb::ActivityPreview {
    let mut preview = pb::ActivityPreview::default();
    for e in events {
        match e {
            Event::ActivityRecorded { applied, .. } => {
                preview.applied_rules = applied.iter().map(applied_to_pb).collect()
            }
            Event::PointsEarned { granted, growth, .. } => {
                preview.points += granted;
                preview.growth += growth;
            }
            Event::PenaltyApplied { points, growth, .. } => {
                preview.points -= points;
                preview.growth -= growth;
            }
            _ => {}
        }
    }
    preview
}

pub fn applied_to_pb(a: &AppliedRule) -> pb::AppliedRule {
    pb::AppliedRule {
        rule_id: a.rule_id.clone(),
        points: a.points,
        growth: a.growth,
        multiplier_percent: a.multiplier_percent as i32,
        capped_points: a.capped_points,
        multipliers: a
            .multipliers
            .iter()
            .map(|m| pb::AppliedMultiplier { source: m.source.clone(), percent: m.percent as i32 })
            .collect(),
    }
}

// ---- programmes ----

fn rule_to_pb(r: &EarningRule) -> pb::EarningRule {
    pb::EarningRule {
        rule_id: r.rule_id.clone(),
        action: r.action.clone(),
        points: r.points,
        growth: r.growth,
        amount_rates: r
            .amount_rates
            .iter()
            .map(|(k, a)| {
                (k.clone(), pb::AmountRate { amount_minor: a.amount_minor, points: a.points, growth: a.growth })
            })
            .collect(),
        daily_points_max: r.daily_points_max,
        daily_count_max: r.daily_count_max as i32,
        starts_at: r.starts_at.map(timestamp),
        ends_at: r.ends_at.map(timestamp),
        disabled: r.disabled,
        tag_multipliers_percent: r.tag_multipliers_percent.iter().map(|(k, v)| (k.clone(), *v as i32)).collect(),
    }
}

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
        action_daily_earn_caps: p.action_daily_earn_caps.clone(),
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
        earning_rules: p.earning_rules.iter().map(rule_to_pb).collect(),
        campaigns: p
            .campaigns
            .iter()
            .map(|c| pb::Campaign {
                campaign_id: c.campaign_id.clone(),
                starts_at: c.starts_at.map(timestamp),
                ends_at: c.ends_at.map(timestamp),
                actions: c.actions.clone(),
                multiplier_percent: c.multiplier_percent as i32,
            })
            .collect(),
        level_multipliers_percent: p.level_multipliers_percent.iter().map(|(k, v)| (k.clone(), *v as i32)).collect(),
        growth_model: match p.growth_model {
            GrowthModel::Behaviour => pb::GrowthModel::Behaviour,
            GrowthModel::Rfm => pb::GrowthModel::Rfm,
        } as i32,
        allow_ratio_change: p.allow_ratio_change,
        adjustment_approval_points: p.adjustment_approval_points,
        rfm: p.rfm.as_deref().map(rfm_to_pb),
    }
}

fn rfm_to_pb(r: &domain::RfmRules) -> pb::RfmRules {
    let bands =
        |b: &[domain::RfmBand]| b.iter().map(|b| pb::RfmBand { threshold: b.threshold, score: b.score }).collect();
    pb::RfmRules {
        period_months: r.period_months as i32,
        purchase_actions: r.purchase_actions.clone(),
        recency: bands(&r.recency),
        frequency: bands(&r.frequency),
        monetary: bands(&r.monetary),
    }
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
        member_daily_spend_alert: r.member_daily_spend_alert,
        hold_earnings_on: r.holding_rules(),
        redemption_spike_percent: r.redemption_spike_percent as i32,
        redemption_spike_min_points: r.redemption_spike_min_points,
        shared_spend_address_members: r.shared_spend_address_members as i32,
    }
}

// ---- stored rows ----

fn state_position(p: Option<state::Position>) -> Option<pb::LogPosition> {
    p.map(|p| pb::LogPosition { partition: p.partition, offset: p.offset })
}

fn state_instant(t: Option<crate::proto::log::Instant>) -> Option<pbjson_types::Timestamp> {
    t.map(|t| pbjson_types::Timestamp { seconds: t.seconds, nanos: t.nanos })
}

/// A statement row as `ListEntries` shows it.
pub fn entry_to_pb(e: state::StatementEntry) -> Result<pb::Entry, crate::log::codec::CodecError> {
    let event = match e.event {
        Some(ev) => Some(event_to_api(crate::log::codec::event_from_wire(ev)?)),
        None => None,
    };
    Ok(pb::Entry {
        position: state_position(e.position),
        request_id: e.request_id,
        at: state_instant(e.at),
        event,
        delta: e.delta,
        balance: e.balance.map(|b| pb::AccountBalance {
            available: b.available,
            reserved: b.reserved,
            debt: b.debt,
            growth: b.growth,
            pending: b.pending,
        }),
    })
}

pub fn book_to_pb(b: state::DailyBook) -> pb::DailyBook {
    pb::DailyBook {
        opening_balance: b.opening_balance,
        issued: b.issued,
        spent: b.spent,
        refunded: b.refunded,
        reversed: b.reversed,
        expired: b.expired,
        adjusted_up: b.adjusted_up,
        adjusted_down: b.adjusted_down,
        closing_balance: b.closing_balance,
        debt: b.debt,
        liability_cash_minor: b.liability_cash_minor,
        event_count: b.event_count,
        first_position: state_position(b.first_position),
        last_position: state_position(b.last_position),
        balanced: b.balanced,
        tenant_id: b.tenant_id,
        programme_id: b.programme_id,
        date: b.date,
        opening_debt: b.opening_debt,
        reserved: b.reserved,
        written_off: b.written_off,
        penalized: b.penalized,
        ratio_changed_from: b.ratio_changed_from,
        opening_pending: b.opening_pending,
        pending: b.pending,
        pending_earned: b.pending_earned,
        pending_released: b.pending_released,
        pending_forfeited: b.pending_forfeited,
        spent_with_cash: b.spent_with_cash,
        orders_points_only: b.orders_points_only,
        orders_with_cash: b.orders_with_cash,
        digest: b.digest,
        mismatch: b.mismatch,
        partitions: b
            .partitions
            .into_iter()
            .map(|p| pb::BookPartition {
                partition: p.partition,
                first_offset: p.first_offset,
                last_offset: p.last_offset,
                event_count: p.event_count,
                chain: p.chain,
            })
            .collect(),
        points_per_cash_unit: b.points_per_cash_unit,
    }
}

/// An alert with its id and what the risk desk did with it (`history`,
/// oldest first: the last step is its state).
pub fn alert_to_pb(a: state::Alert, history: &[crate::programmes::AlertStep]) -> pb::Alert {
    let step_state = |resolved: bool| if resolved { pb::AlertState::Resolved } else { pb::AlertState::Acknowledged };
    pb::Alert {
        alert_id: crate::finance::risk::alert_id(&a),
        state: history.last().map_or(pb::AlertState::Open, |s| step_state(s.resolved)) as i32,
        history: history
            .iter()
            .map(|s| pb::AlertAction {
                state: step_state(s.resolved) as i32,
                operator: s.operator.clone(),
                note: s.note.clone(),
                at: Some(timestamp(s.at)),
            })
            .collect(),
        rule: a.rule,
        at: state_instant(a.at),
        accounts: a
            .accounts
            .into_iter()
            .map(|k| pb::AccountKey { tenant_id: k.tenant_id, programme_id: k.programme_id, member_id: k.member_id })
            .collect(),
        figures: a.figures,
        events: a.events.into_iter().map(|p| pb::LogPosition { partition: p.partition, offset: p.offset }).collect(),
        subject: a.subject,
        date: a.date,
    }
}

// ---- accounts ----

pub fn level_status_to_pb(programme: &Programme, s: domain::LevelStatus) -> pb::LevelStatus {
    pb::LevelStatus {
        level: s.level,
        growth_in_window: s.growth_in_window,
        window_days: programme.level_window_days as i32,
        next_evaluation: s.next_evaluation.map(timestamp),
        growth_to_keep: s.growth_to_keep,
        next_level: s.next_level,
        growth_to_next: s.growth_to_next,
    }
}

/// The most open reservations `GetAccount` lists (it counts them all).
pub const ACCOUNT_RESERVATIONS_SHOWN_MAX: usize = 1000;

/// Where a page of an account's lots starts: after the lot with this
/// (expiry, id) in soonest-expiring-first order.
pub type LotsAfter = Option<(Millis, String)>;

/// The account as `GetAccount` shows it, with one page of its lots with
/// points (`page_size` of them, soonest-expiring first, after `after`) and
/// the token of the next page.
/// Pending lots `ListPendingPoints` shows at most (a release or forfeit
/// takes up to 2000 a command; the total is in `pending`).
pub const PENDING_LOTS_SHOWN_MAX: usize = 1000;

/// An account's pending lots (soonest-expiring first, at most
/// [`PENDING_LOTS_SHOWN_MAX`]) and its hold.
pub fn pending_to_pb(a: &Account, position: pb::LogPosition) -> pb::ListPendingPointsResponse {
    let mut lots: Vec<_> = a.pending_lots().collect();
    lots.sort_unstable_by_key(|(id, l)| (l.expires_at.unwrap_or(Millis::MAX), *id));
    pb::ListPendingPointsResponse {
        lots: lots
            .into_iter()
            .take(PENDING_LOTS_SHOWN_MAX)
            .map(|(id, l)| pb::Lot {
                lot_id: id.to_string(),
                remaining: l.remaining,
                expires_at: l.expires_at.map(timestamp),
            })
            .collect(),
        pending: a.pending(),
        held: a.extra.held.is_some(),
        held_rule: a.extra.held.as_ref().map(|h| h.rule.clone()).unwrap_or_default(),
        held_alert_id: a.extra.held.as_ref().map(|h| h.alert_id.clone()).unwrap_or_default(),
        position: Some(position),
    }
}

pub fn account_to_pb(
    key: &AccountKey,
    a: &Account,
    level: pb::LevelStatus,
    position: pb::LogPosition,
    after: &LotsAfter,
    page_size: usize,
) -> pb::Account {
    let order = |l: &domain::Lot| l.expires_at.unwrap_or(Millis::MAX);
    let fefo = a.lots_fefo();
    let after = after.as_ref().map(|(at, id)| (*at, domain::Id::of(id)));
    let start = after.map_or(0, |(at, id)| fefo.partition_point(|(i, l)| (order(l), *i) <= (at, &id)));
    let page = &fefo[start..fefo.len().min(start.saturating_add(page_size))];
    let lots_next_page_token = match page.last() {
        Some((id, l)) if start + page.len() < fefo.len() => lots_token(order(l), &id.to_string()),
        _ => String::new(),
    };
    let lots = page
        .iter()
        .map(|(id, l)| pb::Lot {
            lot_id: id.to_string(),
            remaining: l.remaining,
            expires_at: l.expires_at.map(timestamp),
        })
        .collect();
    let mut open: Vec<_> = a.reservations.iter().filter(|(_, r)| r.status == domain::ReservationStatus::Open).collect();
    open.sort_unstable_by_key(|(id, r)| (r.expires_at, *id));
    let pending_adjustments = a
        .extra
        .adjustments
        .iter()
        .map(|(id, p)| pb::AdjustmentRequested {
            approval_id: id.clone(),
            points: p.points,
            operator: p.operator.clone(),
            reason: p.reason.clone(),
            client: p.client.clone(),
        })
        .collect();
    pb::Account {
        pending_adjustments,
        lots_next_page_token,
        lots_with_points: fefo.len() as u32,
        open_reservations: open.len() as u32,
        account: Some(account_key_to_pb(key)),
        available: a.available(),
        reserved: a.reserved(),
        debt: a.debt,
        growth: a.growth,
        level: level.level.clone(),
        level_status: Some(level),
        earning_frozen: a.earning_frozen,
        spending_frozen: a.spending_frozen,
        pending: a.pending(),
        earnings_held: a.extra.held.is_some(),
        held_rule: a.extra.held.as_ref().map(|h| h.rule.clone()).unwrap_or_default(),
        lots,
        position: Some(position),
        reservations: open
            .into_iter()
            .take(ACCOUNT_RESERVATIONS_SHOWN_MAX)
            .map(|(id, r)| pb::Reservation {
                reservation_id: id.to_string(),
                order_ref: r.order_ref.clone(),
                points: r.held(),
                expires_at: Some(timestamp(r.expires_at)),
            })
            .collect(),
        // Set by the caller, which has the programme.
        next_reminder_at: None,
        next_reminder_points: 0,
    }
}

/// The token of the page of lots after the lot expiring at `at` with `id`:
/// the expiry (8 bytes, big-endian) and the id, in hex.
fn lots_token(at: Millis, id: &str) -> String {
    let mut b = at.to_be_bytes().to_vec();
    b.extend_from_slice(id.as_bytes());
    crate::hex(&b)
}

/// [`lots_token`]'s (expiry, id), from its bytes.
pub fn lots_after(bytes: &[u8]) -> Option<(Millis, String)> {
    let at = Millis::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some((at, String::from_utf8(bytes[8..].to_vec()).ok()?))
}

/// A stored level change as `ListLevelChanges` shows it.
pub fn level_change_to_pb(e: state::StatementEntry) -> Option<pb::LevelChange> {
    let Some(crate::proto::log::ledger_event::Event::LevelChanged(c)) = e.event.and_then(|x| x.event) else {
        return None;
    };
    Some(pb::LevelChange {
        from: c.from,
        to: c.to,
        growth: c.growth,
        why: c.why,
        at: state_instant(e.at),
        position: state_position(e.position),
    })
}
