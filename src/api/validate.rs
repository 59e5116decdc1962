//! Request validation: every limit of the API contract, checked before a
//! command reaches a writer. Produces domain commands.

use std::collections::BTreeMap;

use tonic::Status;

use super::errors::invalid;
use crate::domain::rules::{
    CAMPAIGNS_MAX, EARNING_RULES_MAX, MULTIPLIER_PERCENT_MAX, MULTIPLIER_PERCENT_MIN, RULE_ENTRIES_MAX, RULE_POINTS_MAX,
};
use crate::domain::{
    AccountKey, Activity, AmountRate, Campaign, CapPolicy, ClawbackPolicy, CommandContext, EarningRule, GrowthModel,
    LevelThreshold, Millis, Programme, ProgrammeKey, RfmBand, RfmRules, RiskRules, ValidityRounding,
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

/// Request ids the ledger gives its own commands start with it (an alert
/// raised in a member's partition is `alert:<alert id>`): callers' may not.
pub const SYSTEM_REQUEST_ID_PREFIX: &str = "alert:";

pub fn request_id(s: &str) -> Result<String, Status> {
    if s.is_empty() || chars(s) > REQUEST_ID_CHARS_MAX || !no_control(s) {
        return Err(invalid("request_id", "must be 1..128 characters without control or invisible characters"));
    }
    if s.starts_with(SYSTEM_REQUEST_ID_PREFIX) {
        return Err(invalid("request_id", format!("{SYSTEM_REQUEST_ID_PREFIX:?} starts the ledger's own request ids")));
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
        client: String::new(),
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

/// A growth adjustment: non-zero, at most [`GROWTH_MAX`] either way.
pub fn growth_adjustment(growth: i64) -> Result<i64, Status> {
    if growth == 0 || growth.unsigned_abs() > GROWTH_MAX as u64 {
        return Err(invalid("growth", format!("must be non-zero and within ±{GROWTH_MAX}, got {growth}")));
    }
    Ok(growth)
}

/// Product tags of an activity, at most this many.
pub const PRODUCT_TAGS_MAX: usize = 16;

/// An activity's facts.
pub fn activity(r: &pb::RecordActivityRequest) -> Result<Activity, Status> {
    if !(0..=ORDER_CASH_MINOR_MAX).contains(&r.amount_minor) {
        return Err(invalid("amount_minor", format!("must be 0..={ORDER_CASH_MINOR_MAX}")));
    }
    if r.product_tags.len() > PRODUCT_TAGS_MAX {
        return Err(invalid("product_tags", format!("at most {PRODUCT_TAGS_MAX} tags")));
    }
    for t in &r.product_tags {
        text("product_tags", t, 64, true)?;
    }
    Ok(Activity {
        action: id("action", &r.action)?,
        amount_minor: r.amount_minor,
        member_type: if r.member_type.is_empty() { String::new() } else { id("member_type", &r.member_type)? },
        product_tags: r.product_tags.clone(),
        order_ref: text("order_ref", &r.order_ref, ORDER_REF_CHARS_MAX, false)?,
    })
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
    if !(0..=POINTS_PER_COMMAND_MAX).contains(&p.adjustment_approval_points) {
        return Err(FieldError::new(
            "programme.adjustment_approval_points",
            format!("must be 0..={POINTS_PER_COMMAND_MAX} (0 = no approval needed)"),
        ));
    }
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
    let risk = risk_rules_from_pb(&p.risk.clone().unwrap_or_default())?;
    let earning_rules = earning_rules_from_pb(&p.earning_rules)?;
    let campaigns = campaigns_from_pb(&p.campaigns)?;
    let level_multipliers_percent = level_multipliers_from_pb(p)?;
    let growth_model = match pb::GrowthModel::try_from(p.growth_model) {
        Ok(pb::GrowthModel::Behaviour) => GrowthModel::Behaviour,
        Ok(pb::GrowthModel::Rfm) => GrowthModel::Rfm,
        Err(_) => return Err(FieldError::new("programme.growth_model", "unknown value")),
    };
    let rfm = match (growth_model, &p.rfm) {
        (GrowthModel::Rfm, Some(r)) => Some(Box::new(rfm_rules_from_pb(r)?)),
        (GrowthModel::Rfm, None) => {
            return Err(FieldError::new("programme.rfm", "GROWTH_MODEL_RFM needs the RFM rules"));
        }
        (GrowthModel::Behaviour, Some(_)) => {
            return Err(FieldError::new("programme.rfm", "RFM rules need growth_model GROWTH_MODEL_RFM"));
        }
        (GrowthModel::Behaviour, None) => None,
    };
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
        earning_rules,
        campaigns,
        level_multipliers_percent,
        growth_model,
        rfm,
        allow_ratio_change: p.allow_ratio_change,
        adjustment_approval_points: p.adjustment_approval_points,
    })
}

/// Purchase actions and bands per list an RFM programme may have.
pub const RFM_PURCHASE_ACTIONS_MAX: usize = 32;
pub const RFM_BANDS_MAX: usize = 16;

fn rfm_rules_from_pb(r: &pb::RfmRules) -> Result<RfmRules, FieldError> {
    if ![1, 3, 6, 12].contains(&r.period_months) {
        return Err(FieldError::new("programme.rfm.period_months", "must be 1, 3, 6 or 12"));
    }
    if r.purchase_actions.is_empty() || r.purchase_actions.len() > RFM_PURCHASE_ACTIONS_MAX {
        return Err(FieldError::new(
            "programme.rfm.purchase_actions",
            format!("1..={RFM_PURCHASE_ACTIONS_MAX} actions"),
        ));
    }
    for (i, a) in r.purchase_actions.iter().enumerate() {
        check_id(&format!("programme.rfm.purchase_actions[{i}]"), a)?;
    }
    let bands = |name: &str, bands: &[pb::RfmBand]| -> Result<Vec<RfmBand>, FieldError> {
        if bands.is_empty() || bands.len() > RFM_BANDS_MAX {
            return Err(FieldError::new(format!("programme.rfm.{name}"), format!("1..={RFM_BANDS_MAX} bands")));
        }
        for (i, b) in bands.iter().enumerate() {
            if b.threshold < 0 || (i > 0 && b.threshold <= bands[i - 1].threshold) {
                return Err(FieldError::new(
                    format!("programme.rfm.{name}[{i}].threshold"),
                    "must be >= 0 and strictly ascending",
                ));
            }
            if !(0..=GROWTH_MAX).contains(&b.score) {
                return Err(FieldError::new(
                    format!("programme.rfm.{name}[{i}].score"),
                    format!("must be 0..={GROWTH_MAX}"),
                ));
            }
        }
        Ok(bands.iter().map(|b| RfmBand { threshold: b.threshold, score: b.score }).collect())
    };
    Ok(RfmRules {
        period_months: r.period_months as u32,
        purchase_actions: r.purchase_actions.clone(),
        recency: bands("recency", &r.recency)?,
        frequency: bands("frequency", &r.frequency)?,
        monetary: bands("monetary", &r.monetary)?,
    })
}

fn multiplier(field: String, percent: i32) -> Result<u32, FieldError> {
    let range = i64::from(MULTIPLIER_PERCENT_MIN)..=i64::from(MULTIPLIER_PERCENT_MAX);
    if !range.contains(&i64::from(percent)) {
        return Err(FieldError::new(field, "a multiplier is 1..=1000 percent (100 = none, 200 = double)"));
    }
    Ok(percent as u32)
}

fn window(
    field: &str,
    starts: Option<&pbjson_types::Timestamp>,
    ends: Option<&pbjson_types::Timestamp>,
) -> Result<(Option<Millis>, Option<Millis>), FieldError> {
    let at = |name: &str, t: Option<&pbjson_types::Timestamp>| {
        t.map(|t| instant(name, t).map_err(|s| FieldError::new(format!("{field}.{name}"), s.message()))).transpose()
    };
    let (s, e) = (at("starts_at", starts)?, at("ends_at", ends)?);
    if let (Some(s), Some(e)) = (s, e) {
        if s >= e {
            return Err(FieldError::new(format!("{field}.ends_at"), "must come after starts_at"));
        }
    }
    Ok((s, e))
}

fn rule_amount(field: String, v: i64) -> Result<i64, FieldError> {
    if v.checked_abs().is_none_or(|a| a > RULE_POINTS_MAX) {
        return Err(FieldError::new(field, format!("at most {RULE_POINTS_MAX} either way")));
    }
    Ok(v)
}

fn earning_rule_from_pb(i: usize, r: &pb::EarningRule) -> Result<EarningRule, FieldError> {
    let f = |name: &str| format!("programme.earning_rules[{i}].{name}");
    check_id(&f("rule_id"), &r.rule_id)?;
    check_id(&f("action"), &r.action)?;
    rule_amount(f("points"), r.points)?;
    rule_amount(f("growth"), r.growth)?;
    if (r.points > 0 && r.growth < 0) || (r.points < 0 && r.growth > 0) {
        return Err(FieldError::new(f("growth"), "points and growth of a rule may not have opposite signs"));
    }
    if r.amount_rates.len() > RULE_ENTRIES_MAX {
        return Err(FieldError::new(f("amount_rates"), format!("at most {RULE_ENTRIES_MAX} member types")));
    }
    let mut amount_rates = BTreeMap::new();
    for (member_type, a) in &r.amount_rates {
        let af = |name: &str| f(&format!("amount_rates[{member_type}].{name}"));
        if member_type != "*" {
            check_id(&f("amount_rates"), member_type)?;
        }
        if a.amount_minor <= 0 {
            return Err(FieldError::new(af("amount_minor"), "must be > 0 (points per this many minor units)"));
        }
        if rule_amount(af("points"), a.points)? < 0 || rule_amount(af("growth"), a.growth)? < 0 {
            return Err(FieldError::new(af("points"), "amount-based rates are positive"));
        }
        if r.points < 0 || r.growth < 0 {
            return Err(FieldError::new(af("points"), "a penalty (negative points or growth) has no amount rates"));
        }
        amount_rates.insert(
            member_type.clone(),
            AmountRate { amount_minor: a.amount_minor, points: a.points, growth: a.growth },
        );
    }
    if r.points == 0 && r.growth == 0 && amount_rates.is_empty() {
        return Err(FieldError::new(f("points"), "a rule gives points, growth or an amount rate"));
    }
    if r.daily_points_max < 0 || r.daily_count_max < 0 {
        let name = if r.daily_points_max < 0 { "daily_points_max" } else { "daily_count_max" };
        return Err(FieldError::new(f(name), "must be >= 0 (0 = no limit)"));
    }
    let (starts_at, ends_at) =
        window(&format!("programme.earning_rules[{i}]"), r.starts_at.as_ref(), r.ends_at.as_ref())?;
    if r.tag_multipliers_percent.len() > RULE_ENTRIES_MAX {
        return Err(FieldError::new(f("tag_multipliers_percent"), format!("at most {RULE_ENTRIES_MAX} tags")));
    }
    let mut tag_multipliers_percent = BTreeMap::new();
    for (tag, percent) in &r.tag_multipliers_percent {
        check_id(&f("tag_multipliers_percent"), tag)?;
        tag_multipliers_percent
            .insert(tag.clone(), multiplier(f(&format!("tag_multipliers_percent[{tag}]")), *percent)?);
    }
    Ok(EarningRule {
        rule_id: r.rule_id.clone(),
        action: r.action.clone(),
        points: r.points,
        growth: r.growth,
        amount_rates,
        daily_points_max: r.daily_points_max,
        daily_count_max: r.daily_count_max as u32,
        starts_at,
        ends_at,
        disabled: r.disabled,
        tag_multipliers_percent,
    })
}

/// A programme's earning rules: ids unique, and the rules of one action all
/// earn or all penalise.
fn earning_rules_from_pb(rules: &[pb::EarningRule]) -> Result<Vec<EarningRule>, FieldError> {
    if rules.len() > EARNING_RULES_MAX {
        return Err(FieldError::new("programme.earning_rules", format!("at most {EARNING_RULES_MAX} rules")));
    }
    let mut out: Vec<EarningRule> = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let rule = earning_rule_from_pb(i, r)?;
        if out.iter().any(|o| o.rule_id == rule.rule_id) {
            return Err(FieldError::new(format!("programme.earning_rules[{i}].rule_id"), "rule ids are unique"));
        }
        if out.iter().any(|o| o.action == rule.action && o.penalises() != rule.penalises()) {
            return Err(FieldError::new(
                format!("programme.earning_rules[{i}].points"),
                "the rules of one action all earn or all penalise",
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

fn campaigns_from_pb(campaigns: &[pb::Campaign]) -> Result<Vec<Campaign>, FieldError> {
    if campaigns.len() > CAMPAIGNS_MAX {
        return Err(FieldError::new("programme.campaigns", format!("at most {CAMPAIGNS_MAX} campaigns")));
    }
    let mut out: Vec<Campaign> = Vec::with_capacity(campaigns.len());
    for (i, c) in campaigns.iter().enumerate() {
        let f = |name: &str| format!("programme.campaigns[{i}].{name}");
        check_id(&f("campaign_id"), &c.campaign_id)?;
        if out.iter().any(|o| o.campaign_id == c.campaign_id) {
            return Err(FieldError::new(f("campaign_id"), "campaign ids are unique"));
        }
        let (starts_at, ends_at) =
            window(&format!("programme.campaigns[{i}]"), c.starts_at.as_ref(), c.ends_at.as_ref())?;
        if starts_at.is_none() || ends_at.is_none() {
            return Err(FieldError::new(
                f(if starts_at.is_none() { "starts_at" } else { "ends_at" }),
                "a campaign has a window",
            ));
        }
        if c.actions.len() > RULE_ENTRIES_MAX {
            return Err(FieldError::new(f("actions"), format!("at most {RULE_ENTRIES_MAX} actions")));
        }
        for a in &c.actions {
            check_id(&f("actions"), a)?;
        }
        out.push(Campaign {
            campaign_id: c.campaign_id.clone(),
            starts_at,
            ends_at,
            actions: c.actions.clone(),
            multiplier_percent: multiplier(f("multiplier_percent"), c.multiplier_percent)?,
        });
    }
    Ok(out)
}

/// By level name: each names one of the programme's levels.
fn level_multipliers_from_pb(p: &pb::Programme) -> Result<BTreeMap<String, u32>, FieldError> {
    let mut out = BTreeMap::new();
    for (level, percent) in &p.level_multipliers_percent {
        let field = format!("programme.level_multipliers_percent[{level}]");
        if !p.levels.iter().any(|l| &l.name == level) {
            return Err(FieldError::new(field, "names no level of the programme"));
        }
        out.insert(level.clone(), multiplier(field, *percent)?);
    }
    Ok(out)
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
        member_daily_spend_alert: points("member_daily_spend_alert", r.member_daily_spend_alert)?,
        hold_earnings_on: RiskRules::holding_bits(r.hold_earnings_on.iter().map(String::as_str)).map_err(|name| {
            FieldError::new(
                "programme.risk.hold_earnings_on",
                format!("{name:?} is not a rule that can hold: one of {}", crate::domain::HOLDING_RULES.join(", ")),
            )
        })?,
        redemption_spike_percent: count("redemption_spike_percent", r.redemption_spike_percent)?,
        redemption_spike_min_points: points("redemption_spike_min_points", r.redemption_spike_min_points)?,
        shared_spend_address_members: count("shared_spend_address_members", r.shared_spend_address_members)?,
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
