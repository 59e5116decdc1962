//! Earning rules: what an activity a business service reports is worth.
//!
//! A programme's [`EarningRule`]s name actions; an activity of an action is
//! worth the sum over the action's active rules of each rule's fixed points
//! and growth plus its amount-based rate for the member's type, multiplied
//! (positive amounts only: penalties are never multiplied) by the highest
//! matching product tag, every active campaign of the action and the
//! member's level, in `i128`, floored once; then cut by the rule's own daily
//! limits. The programme's daily caps (member, action, programme-wide) apply
//! after, to the earn the activity becomes (see `decide`).

use std::collections::BTreeMap;

use super::{Account, CapPolicy, Millis, Points, Programme, Reason, Rejection};

/// Percent that leaves an amount as it is.
pub const PERCENT_NONE: u32 = 100;
/// The most a multiplier may be (x10), and the least (x0.01).
pub const MULTIPLIER_PERCENT_MAX: u32 = 1_000;
pub const MULTIPLIER_PERCENT_MIN: u32 = 1;
/// At most this many earning rules and campaigns in a programme.
pub const EARNING_RULES_MAX: usize = 200;
pub const CAMPAIGNS_MAX: usize = 50;
/// At most this many amount rates and tag multipliers in a rule, level
/// multipliers in a programme, and actions in a campaign.
pub const RULE_ENTRIES_MAX: usize = 32;
/// The most points or growth one rule may name per occurrence (fixed or per
/// `amount_minor`), and the most one activity may be worth.
pub const RULE_POINTS_MAX: Points = 1_000_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmountRate {
    pub amount_minor: i64,
    pub points: Points,
    pub growth: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarningRule {
    pub rule_id: String,
    pub action: String,
    pub points: Points,
    pub growth: i64,
    /// By member type; `*` for any other type.
    pub amount_rates: BTreeMap<String, AmountRate>,
    /// 0 = none.
    pub daily_points_max: Points,
    /// 0 = none.
    pub daily_count_max: u32,
    pub starts_at: Option<Millis>,
    pub ends_at: Option<Millis>,
    pub disabled: bool,
    pub tag_multipliers_percent: BTreeMap<String, u32>,
}

impl EarningRule {
    /// Whether the rule is on at `now` (not disabled, within its window).
    pub fn active_at(&self, now: Millis) -> bool {
        !self.disabled && self.starts_at.is_none_or(|s| s <= now) && self.ends_at.is_none_or(|e| now < e)
    }

    /// Whether the rule takes (negative points or growth): a penalty.
    pub fn penalises(&self) -> bool {
        self.points < 0 || self.growth < 0 || self.amount_rates.values().any(|r| r.points < 0 || r.growth < 0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Campaign {
    pub campaign_id: String,
    pub starts_at: Option<Millis>,
    pub ends_at: Option<Millis>,
    /// Empty = every action.
    pub actions: Vec<String>,
    pub multiplier_percent: u32,
}

impl Campaign {
    fn covers(&self, action: &str, now: Millis) -> bool {
        self.starts_at.is_none_or(|s| s <= now)
            && self.ends_at.is_none_or(|e| now < e)
            && (self.actions.is_empty() || self.actions.iter().any(|a| a == action))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrowthModel {
    #[default]
    Behaviour,
    Rfm,
}

/// How growth is measured under `GrowthModel::Rfm`: at the end of each
/// period, R (days since the last purchase), F (purchases in the period)
/// and M (their amount) each scored by bands; growth is the sum of the
/// three scores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RfmRules {
    /// Calendar months in the programme's zone: 1, 3, 6 or 12 (periods
    /// start in January).
    pub period_months: u32,
    /// Actions whose activity counts as a purchase.
    pub purchase_actions: Vec<String>,
    /// By most days since the last purchase, ascending: the first band the
    /// member is within scores.
    pub recency: Vec<RfmBand>,
    /// By least purchases, ascending: the highest band reached scores.
    pub frequency: Vec<RfmBand>,
    /// By least amount (minor units), ascending: the highest band reached scores.
    pub monetary: Vec<RfmBand>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RfmBand {
    pub threshold: i64,
    pub score: i64,
}

impl RfmRules {
    pub fn is_purchase(&self, action: &str) -> bool {
        self.purchase_actions.iter().any(|a| a == action)
    }

    /// R score + F score + M score.
    pub fn growth(&self, recency_days: i64, frequency: i64, monetary_minor: i64) -> i64 {
        let r = self.recency.iter().find(|b| recency_days <= b.threshold).map_or(0, |b| b.score);
        let reached = |bands: &[RfmBand], v: i64| bands.iter().rev().find(|b| v >= b.threshold).map_or(0, |b| b.score);
        r.saturating_add(reached(&self.frequency, frequency)).saturating_add(reached(&self.monetary, monetary_minor))
    }
}

/// The facts of an activity a business service reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub action: String,
    pub amount_minor: i64,
    pub member_type: String,
    pub product_tags: Vec<String>,
    pub order_ref: String,
}

/// One multiplier that applied: `tag:<tag>`, `campaign:<id>`, `level:<level>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMultiplier {
    pub source: String,
    pub percent: u32,
}

/// What one rule gave an activity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedRule {
    pub rule_id: String,
    /// After multipliers and the rule's daily limits (negative: a penalty).
    pub points: Points,
    pub growth: i64,
    /// The multipliers together, floored to a whole percent (100 = none).
    pub multiplier_percent: u32,
    /// Points the rule's daily limits cut (absolute).
    pub capped_points: Points,
    pub multipliers: Vec<AppliedMultiplier>,
}

/// A rule's counters for a member on a programme day: occurrences it
/// counted, and the absolute points it gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleDay {
    pub count: u32,
    pub points: Points,
}

/// What an activity is worth: each rule's share and their sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Worth {
    pub applied: Vec<AppliedRule>,
    pub points: Points,
    pub growth: i64,
}

fn too_large(what: &str) -> Rejection {
    Rejection::new(Reason::Overflow, format!("{what} would exceed {RULE_POINTS_MAX}: the activity is refused"))
}

/// `base` (per `per` of `amount`) floored, or the fixed amount when `per` is
/// 0; within [`RULE_POINTS_MAX`].
fn scaled(amount: i64, base: i64, per: i64) -> Result<i64, Rejection> {
    if per <= 0 {
        return Ok(0);
    }
    let x = i128::from(amount) * i128::from(base) / i128::from(per);
    i64::try_from(x).ok().filter(|x| x.abs() <= RULE_POINTS_MAX).ok_or_else(|| too_large("an amount-based rate"))
}

/// Every multiplier that applies to `rule` for `activity` at `now`.
fn multipliers(
    programme: &Programme,
    rule: &EarningRule,
    activity: &Activity,
    level: &str,
    now: Millis,
) -> Vec<AppliedMultiplier> {
    let mut out = Vec::new();
    let tag = activity
        .product_tags
        .iter()
        .filter_map(|t| rule.tag_multipliers_percent.get(t).map(|p| (*p, t)))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
    if let Some((percent, t)) = tag {
        out.push(AppliedMultiplier { source: format!("tag:{t}"), percent });
    }
    for c in programme.campaigns.iter().filter(|c| c.covers(&activity.action, now)) {
        out.push(AppliedMultiplier { source: format!("campaign:{}", c.campaign_id), percent: c.multiplier_percent });
    }
    if let Some(&percent) = programme.level_multipliers_percent.get(level) {
        out.push(AppliedMultiplier { source: format!("level:{level}"), percent });
    }
    out
}

/// `amount` times every multiplier, floored once (positive amounts only).
fn multiplied(amount: i64, multipliers: &[AppliedMultiplier]) -> Result<i64, Rejection> {
    if amount <= 0 {
        return Ok(amount);
    }
    let mut num = i128::from(amount);
    let mut den = 1i128;
    for m in multipliers {
        num = num.checked_mul(i128::from(m.percent)).ok_or_else(|| too_large("a multiplied amount"))?;
        den = den.checked_mul(i128::from(PERCENT_NONE)).ok_or_else(|| too_large("a multiplied amount"))?;
    }
    i64::try_from(num / den).ok().filter(|x| *x <= RULE_POINTS_MAX).ok_or_else(|| too_large("a multiplied amount"))
}

/// The multipliers together, as a whole percent (floored).
fn combined_percent(multipliers: &[AppliedMultiplier]) -> u32 {
    let mut p = u128::from(PERCENT_NONE);
    for m in multipliers {
        p = (p.saturating_mul(u128::from(m.percent)) / u128::from(PERCENT_NONE)).min(u128::from(u32::MAX));
    }
    u32::try_from(p).unwrap_or(u32::MAX)
}

/// Which rules of `programme` an activity of `action` runs under at `now`:
/// `EARNING_RULE_NOT_FOUND` when none names it, `EARNING_RULE_NOT_ACTIVE`
/// when none of them is on.
pub fn active_rules<'p>(
    programme: &'p Programme,
    action: &str,
    now: Millis,
) -> Result<Vec<&'p EarningRule>, Rejection> {
    let named: Vec<&EarningRule> = programme.earning_rules.iter().filter(|r| r.action == action).collect();
    if named.is_empty() {
        return Err(Rejection::field(
            Reason::EarningRuleNotFound,
            "action",
            format!(
                "no earning rule of programme {}/{} names action '{action}'",
                programme.tenant_id, programme.programme_id
            ),
        ));
    }
    let active: Vec<&EarningRule> = named.into_iter().filter(|r| r.active_at(now)).collect();
    if active.is_empty() {
        return Err(Rejection::field(
            Reason::EarningRuleNotActive,
            "action",
            format!("the earning rules of action '{action}' are disabled or outside their active window"),
        ));
    }
    Ok(active)
}

/// What `activity` is worth to `account` at `now` (programme day `day`)
/// under `programme`'s earning rules, its rules' daily limits applied by the
/// programme's cap policy.
pub fn worth(
    programme: &Programme,
    account: &Account,
    activity: &Activity,
    now: Millis,
    day: i64,
) -> Result<Worth, Rejection> {
    let mut w = Worth::default();
    for rule in active_rules(programme, &activity.action, now)? {
        let applied = rule_worth(programme, account, rule, activity, now, day)?;
        w.points = w
            .points
            .checked_add(applied.points)
            .filter(|x| x.abs() <= RULE_POINTS_MAX)
            .ok_or_else(|| too_large("the activity's points"))?;
        w.growth = w
            .growth
            .checked_add(applied.growth)
            .filter(|x| x.abs() <= RULE_POINTS_MAX)
            .ok_or_else(|| too_large("the activity's growth"))?;
        w.applied.push(applied);
    }
    Ok(w)
}

/// One rule's share of an activity.
fn rule_worth(
    programme: &Programme,
    account: &Account,
    rule: &EarningRule,
    activity: &Activity,
    now: Millis,
    day: i64,
) -> Result<AppliedRule, Rejection> {
    let rate = rule.amount_rates.get(&activity.member_type).or_else(|| rule.amount_rates.get("*"));
    let (rate_points, rate_growth) = match rate {
        Some(r) => (
            scaled(activity.amount_minor, r.points, r.amount_minor)?,
            scaled(activity.amount_minor, r.growth, r.amount_minor)?,
        ),
        None => (0, 0),
    };
    let base_points = rule.points + rate_points;
    let base_growth = rule.growth + rate_growth;
    let ms = if base_points > 0 || base_growth > 0 {
        multipliers(programme, rule, activity, &account.level, now)
    } else {
        Vec::new()
    };
    let mut points = multiplied(base_points, &ms)?;
    let mut growth = multiplied(base_growth, &ms)?;
    let today = account.rule_day(&rule.rule_id, day);
    let count_reached = rule.daily_count_max > 0 && today.count >= rule.daily_count_max;
    let mut capped = 0;
    if count_reached {
        capped = points.abs();
        (points, growth) = (0, 0);
    }
    if rule.daily_points_max > 0 {
        let room = (rule.daily_points_max - today.points).max(0);
        if points.abs() > room {
            capped += points.abs() - room;
            points = points.signum() * room;
        }
    }
    if (count_reached || capped > 0) && programme.cap_policy == CapPolicy::Reject {
        return Err(Rejection::new(
            Reason::ActionDailyCapReached,
            format!("earning rule '{}' reached its daily limit for this member", rule.rule_id),
        ));
    }
    Ok(AppliedRule {
        rule_id: rule.rule_id.clone(),
        points,
        growth,
        multiplier_percent: combined_percent(&ms),
        capped_points: capped,
        multipliers: ms,
    })
}
