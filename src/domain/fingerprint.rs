//! A stable fingerprint of a command's content (everything but its request
//! id), stored in the log with its events, so that a retry carrying the same
//! request id but other content is recognised, even after a restart.
//!
//! Fields are fed explicitly, in a fixed order, into FNV-1a 64: the value must
//! never change between releases, so it does not rely on `std::hash`.

use super::{Command, CommandBody};

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.bytes(&v.to_le_bytes());
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.bytes(&[1]);
                self.i64(v);
            }
            None => self.bytes(&[0]),
        }
    }
    fn opt_str(&mut self, v: &Option<String>) {
        match v {
            Some(v) => {
                self.bytes(&[1]);
                self.str(v);
            }
            None => self.bytes(&[0]),
        }
    }
    fn flag(&mut self, v: bool) {
        self.bytes(&[u8::from(v)]);
    }
}

pub fn fingerprint(command: &Command) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.str(&command.account.tenant_id);
    h.str(&command.account.programme_id);
    h.str(&command.account.member_id);
    match &command.body {
        CommandBody::Earn { points, reason, order_ref, growth, expires_at } => {
            h.str("earn");
            h.i64(*points);
            h.str(reason);
            h.opt_str(order_ref);
            h.i64(*growth);
            h.opt_i64(*expires_at);
        }
        CommandBody::AdjustGrowth { growth, operator, reason } => {
            h.str("adjust_growth");
            h.i64(*growth);
            h.str(operator);
            h.str(reason);
        }
        CommandBody::SetLevel { level, operator, reason, hold_until } => {
            h.str("set_level");
            h.str(level);
            h.str(operator);
            h.str(reason);
            h.opt_i64(*hold_until);
        }
        CommandBody::RecordActivity(a) => {
            h.str("activity");
            h.str(&a.action);
            h.i64(a.amount_minor);
            h.str(&a.member_type);
            h.i64(a.product_tags.len() as i64);
            a.product_tags.iter().for_each(|t| h.str(t));
            h.str(&a.order_ref);
        }
        CommandBody::Spend { points, order_ref, order_cash_amount } => {
            h.str("spend");
            h.i64(*points);
            h.opt_str(order_ref);
            h.opt_i64(*order_cash_amount);
        }
        CommandBody::Reserve { points, order_ref, timeout_seconds, order_cash_amount } => {
            h.str("reserve");
            h.i64(*points);
            h.str(order_ref);
            h.i64(*timeout_seconds);
            h.opt_i64(*order_cash_amount);
        }
        CommandBody::Capture { reservation_id, points } => {
            h.str("capture");
            h.str(reservation_id);
            h.opt_i64(*points);
        }
        CommandBody::Release { reservation_id } => {
            h.str("release");
            h.str(reservation_id);
        }
        CommandBody::Refund { spend_id, points } => {
            h.str("refund");
            h.str(spend_id);
            h.i64(*points);
        }
        CommandBody::ReverseEarn { earn_id, points, growth } => {
            h.str("reverse");
            h.str(earn_id);
            h.i64(*points);
            h.i64(*growth);
        }
        CommandBody::Expire { all_points, reason, operator } => {
            h.str("expire");
            h.flag(*all_points);
            h.str(reason);
            // Fed only when set, so the fingerprints of commands recorded
            // before the operator existed stay what they were.
            if !operator.is_empty() {
                h.str(operator);
            }
        }
        CommandBody::Adjust { points, operator, reason } => {
            h.str("adjust");
            h.i64(*points);
            h.str(operator);
            h.str(reason);
        }
        CommandBody::Freeze { earning, spending, operator, reason }
        | CommandBody::Unfreeze { earning, spending, operator, reason } => {
            h.str(if matches!(command.body, CommandBody::Freeze { .. }) { "freeze" } else { "unfreeze" });
            h.flag(*earning);
            h.flag(*spending);
            h.str(operator);
            h.str(reason);
        }
        CommandBody::RaiseAlert { alert_id, rule, detail, hold } => {
            h.str("raise_alert");
            h.str(alert_id);
            h.str(rule);
            h.str(detail);
            h.flag(*hold);
        }
        CommandBody::ReleasePending { operator, reason }
        | CommandBody::ForfeitPending { operator, reason }
        | CommandBody::Unhold { operator, reason } => {
            h.str(match command.body {
                CommandBody::ReleasePending { .. } => "release_pending",
                CommandBody::ForfeitPending { .. } => "forfeit_pending",
                _ => "unhold",
            });
            h.str(operator);
            h.str(reason);
        }
        CommandBody::ApproveAdjustment { approval_id, operator, reason }
        | CommandBody::RejectAdjustment { approval_id, operator, reason } => {
            h.str(match command.body {
                CommandBody::ApproveAdjustment { .. } => "approve_adjustment",
                _ => "reject_adjustment",
            });
            h.str(approval_id);
            h.str(operator);
            h.str(reason);
        }
        CommandBody::Tick => h.str("tick"),
    }
    let ctx = &command.context;
    h.str(&ctx.client_ip);
    h.str(&ctx.device_id);
    h.u64(ctx.metadata.len() as u64);
    for (k, v) in &ctx.metadata {
        h.str(k);
        h.str(v);
    }
    h.0
}

/// The fingerprint of a programme configuration request (rules and operator).
pub fn fingerprint_programme(p: &super::Programme, operator: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.str(&p.tenant_id);
    h.str(&p.programme_id);
    h.str(&p.unit_name);
    h.i64(p.points_per_cash_unit);
    h.u64(u64::from(p.validity_days));
    h.str(&format!("{:?}", p.validity_rounding));
    h.u64(u64::from(p.reminder_days));
    h.str(p.time_zone.name());
    h.i64(p.member_daily_earn_cap);
    h.u64(p.action_daily_earn_caps.len() as u64);
    for (k, v) in &p.action_daily_earn_caps {
        h.str(k);
        h.i64(*v);
    }
    h.i64(p.programme_daily_issuance_cap);
    h.str(&format!("{:?}", p.cap_policy));
    h.u64(u64::from(p.max_order_share_percent));
    h.str(&format!("{:?}", p.clawback_policy));
    h.u64(p.levels.len() as u64);
    for l in &p.levels {
        h.str(&l.name);
        h.i64(l.min_growth);
    }
    h.u64(u64::from(p.level_window_days));
    // Hashed only when set, so fingerprints of rules without alert thresholds
    // stay what they were before thresholds existed.
    if p.risk != super::RiskRules::default() {
        let r = &p.risk;
        for v in [
            r.issuance_spike_percent.into(),
            r.issuance_spike_min_points,
            r.dense_spend_count.into(),
            r.dense_spend_minutes.into(),
            r.shared_address_members.into(),
            r.member_addresses.into(),
            r.member_addresses_minutes.into(),
            r.member_daily_earn_alert,
        ] {
            h.i64(v);
        }
        // The spending-side thresholds came later: hashed only when set.
        if r.member_daily_spend_alert != 0 {
            h.i64(r.member_daily_spend_alert);
        }
        let spike = [r.redemption_spike_percent.into(), r.redemption_spike_min_points];
        if spike.iter().any(|v| *v != 0) {
            h.str("redemption_spike");
            spike.iter().for_each(|v| h.i64(*v));
        }
        if r.shared_spend_address_members != 0 {
            h.str("shared_spend_address");
            h.u64(r.shared_spend_address_members.into());
        }
        if r.hold_earnings_on != 0 {
            h.u64(u64::from(r.hold_earnings_on) | 1 << 32);
        }
    }
    // Hashed only when set, as the risk thresholds.
    if !p.earning_rules.is_empty() || !p.campaigns.is_empty() || !p.level_multipliers_percent.is_empty() {
        h.str(&format!("{:?}{:?}{:?}", p.earning_rules, p.campaigns, p.level_multipliers_percent));
    }
    if p.adjustment_approval_points != 0 {
        h.str(&format!("approval{}", p.adjustment_approval_points));
    }
    if p.growth_model != super::GrowthModel::Behaviour || p.allow_ratio_change {
        h.str(&format!("{:?}{}", p.growth_model, p.allow_ratio_change));
    }
    if let Some(rfm) = &p.rfm {
        h.str(&format!("{rfm:?}"));
    }
    h.str(operator);
    h.0
}

/// The fingerprint of a webhook configuration request.
/// `fields`: tenant, programme, webhook id, url and secret.
pub fn fingerprint_webhook(fields: [&str; 5], event_types: &[String], disabled: bool, operator: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.str("webhook");
    fields.iter().for_each(|s| h.str(s));
    h.u64(event_types.len() as u64);
    event_types.iter().for_each(|t| h.str(t));
    h.u64(u64::from(disabled));
    h.str(operator);
    h.0
}

/// The content of an alert action (acknowledged or resolved), for its
/// request id's idempotency.
pub fn fingerprint_alert_action(alert_id: &str, resolved: bool, note: &str, operator: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.str("alert_action");
    h.str(alert_id);
    h.u64(u64::from(resolved));
    h.str(note);
    h.str(operator);
    h.0
}
