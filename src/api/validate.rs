//! Request validation: every limit of the API contract, checked before a
//! command reaches a writer. Produces domain commands.

use std::collections::BTreeMap;

use tonic::Status;

use super::errors::invalid;
use crate::domain::{
    AccountKey, CapPolicy, ClawbackPolicy, CommandContext, LevelThreshold, Millis, Programme, ProgrammeKey, RiskRules,
    ValidityRounding,
};
use crate::proto as pb;

pub const REQUEST_ID_CHARS_MAX: usize = 128;
pub const METADATA_ENTRIES_MAX: usize = 16;
pub const METADATA_KEY_CHARS_MAX: usize = 64;
pub const METADATA_VALUE_CHARS_MAX: usize = 256;
pub const CLIENT_FIELD_CHARS_MAX: usize = 64;
pub const ORDER_REF_CHARS_MAX: usize = 128;
pub const OPERATOR_CHARS_MAX: usize = 64;
pub const REASON_CHARS_MAX: usize = 256;
/// The most points one command may move (earn, spend, hold, refund,
/// reverse, adjust): far beyond any honest order, and small enough that no
/// sum of a day's commands comes near `i64::MAX` (9.2 × 10^18).
pub const POINTS_PER_COMMAND_MAX: i64 = 1_000_000_000_000;
/// The most growth one command may add or reverse.
pub const GROWTH_MAX: i64 = 1_000_000_000_000;
/// The largest order amount, in minor units of cash.
pub const ORDER_CASH_MINOR_MAX: i64 = 1_000_000_000_000_000;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Characters that change how text around them is shown without showing
/// themselves: bidi embeddings, overrides and isolates, zero-width
/// characters, the BOM, soft hyphen and invisible fillers. In an id or an
/// operator's name they make two different strings look the same (or one
/// look like another) in a back office, an audit or an export.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// No control character and no invisible one ([`invisible`]).
fn no_control(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() || invisible(c))
}

pub fn request_id(s: &str) -> Result<String, Status> {
    if s.is_empty() || chars(s) > REQUEST_ID_CHARS_MAX || !no_control(s) {
        return Err(invalid("request_id", "must be 1..128 characters without control or invisible characters"));
    }
    Ok(s.to_string())
}

pub fn id(field: &str, s: &str) -> Result<String, Status> {
    if !valid_id(s) {
        return Err(invalid(field, "must be 1..64 characters of [A-Za-z0-9_.:-]"));
    }
    Ok(s.to_string())
}

/// A programme named by its two ids.
pub fn programme_key(tenant_id: &str, programme_id: &str) -> Result<ProgrammeKey, Status> {
    Ok(ProgrammeKey { tenant_id: id("tenant_id", tenant_id)?, programme_id: id("programme_id", programme_id)? })
}

pub fn account(a: &Option<pb::AccountKey>) -> Result<AccountKey, Status> {
    let a = a.as_ref().ok_or_else(|| invalid("account", "is required"))?;
    Ok(AccountKey {
        tenant_id: id("account.tenant_id", &a.tenant_id)?,
        programme_id: id("account.programme_id", &a.programme_id)?,
        member_id: id("account.member_id", &a.member_id)?,
    })
}

pub fn context(
    metadata: &BTreeMap<String, String>,
    client_ip: &str,
    device_id: &str,
) -> Result<CommandContext, Status> {
    if metadata.len() > METADATA_ENTRIES_MAX {
        return Err(invalid("metadata", format!("at most {METADATA_ENTRIES_MAX} entries")));
    }
    for (k, v) in metadata {
        if k.is_empty() || chars(k) > METADATA_KEY_CHARS_MAX || !no_control(k) {
            return Err(invalid("metadata", format!("keys must be 1..{METADATA_KEY_CHARS_MAX} characters")));
        }
        if chars(v) > METADATA_VALUE_CHARS_MAX || !no_control(v) {
            return Err(invalid(
                &format!("metadata[{k}]"),
                format!("values must be at most {METADATA_VALUE_CHARS_MAX} characters, without control or invisible characters"),
            ));
        }
    }
    for (field, v) in [("client_ip", client_ip), ("device_id", device_id)] {
        if chars(v) > CLIENT_FIELD_CHARS_MAX || !no_control(v) {
            return Err(invalid(field, format!("at most {CLIENT_FIELD_CHARS_MAX} characters")));
        }
    }
    Ok(CommandContext {
        client_ip: client_ip.into(),
        device_id: device_id.into(),
        metadata: metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>(),
    })
}

/// Points a command moves: 1..=[`POINTS_PER_COMMAND_MAX`].
pub fn points(field: &str, points: i64) -> Result<i64, Status> {
    if !(1..=POINTS_PER_COMMAND_MAX).contains(&points) {
        return Err(invalid(field, format!("must be 1..={POINTS_PER_COMMAND_MAX}, got {points}")));
    }
    Ok(points)
}

/// A manual adjustment: non-zero, at most [`POINTS_PER_COMMAND_MAX`] either way.
pub fn adjustment(points: i64) -> Result<i64, Status> {
    if points == 0 || points.unsigned_abs() > POINTS_PER_COMMAND_MAX as u64 {
        return Err(invalid("points", format!("must be non-zero and within ±{POINTS_PER_COMMAND_MAX}, got {points}")));
    }
    Ok(points)
}

/// An order's amount in minor units of cash: 1..=[`ORDER_CASH_MINOR_MAX`].
pub fn order_cash(cash: i64) -> Result<i64, Status> {
    if !(1..=ORDER_CASH_MINOR_MAX).contains(&cash) {
        return Err(invalid("order_cash_amount", format!("must be 1..={ORDER_CASH_MINOR_MAX}, got {cash}")));
    }
    Ok(cash)
}

pub fn growth(g: Option<i64>) -> Result<i64, Status> {
    match g {
        None => Ok(0),
        Some(g) if (0..=GROWTH_MAX).contains(&g) => Ok(g),
        Some(_) => Err(invalid("growth", format!("must be 0..={GROWTH_MAX}"))),
    }
}

/// Free text with a length limit; `required` refuses empty.
pub fn text(field: &str, s: &str, max: usize, required: bool) -> Result<String, Status> {
    if (required && s.trim().is_empty()) || chars(s) > max || !no_control(s) {
        let need = if required { "1" } else { "0" };
        return Err(invalid(
            field,
            format!("must be {need}..{max} characters without control or invisible characters"),
        ));
    }
    Ok(s.to_string())
}

pub fn order_ref(s: Option<&String>) -> Result<Option<String>, Status> {
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => text("order_ref", s, ORDER_REF_CHARS_MAX, true).map(Some),
    }
}

pub fn instant(field: &str, t: &pbjson_types::Timestamp) -> Result<Millis, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be 0..1e9"));
    }
    // Years 1970..=9999 keep every instant representable.
    if !(0..=253_402_300_799).contains(&t.seconds) {
        return Err(invalid(field, "must lie between 1970 and 9999"));
    }
    super::convert::millis(t).ok_or_else(|| invalid(field, "out of range"))
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

// ---- programmes ----

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
pub fn programme(p: &pb::Programme) -> Result<Programme, FieldError> {
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
