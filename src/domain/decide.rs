//! `decide`: every business rule of the ledger, as a pure function.

use std::borrow::Cow;

use super::calendar::{add_days, lot_expiry, month_first_day, month_of_day, programme_day};
use super::{
    rules, sum, Account, Activity, CapPolicy, ClawbackPolicy, Command, CommandBody, Event, ExpiryCause, GrowthModel,
    Id, LotAmount, LotExpiry, Millis, Points, Programme, Reason, Rejection, ReleaseCause, ReservationStatus, RfmRules,
    Share, CASH_MINOR_PER_UNIT, DUE_ITEMS_PER_RECORD_MAX, LOTS_WITH_POINTS_MAX, RESERVATION_TIMEOUT_SECONDS_MAX,
};

/// Decides what `command` does to `account` at `now` under `programme`'s rules.
///
/// Before the command itself, anything already due is settled: reservations
/// past their timeout are released and lots past their expiry are expired, so
/// a command never spends points whose time is up even if the scheduler has
/// not come round yet. Those events come first in the result. A rejection
/// writes nothing, due events included.
pub fn decide(
    programme: Option<&Programme>,
    account: &Account,
    command: &Command,
    now: Millis,
) -> Result<Vec<Event>, Rejection> {
    decide_with(programme, account, command, now, &Limits::default())
}

/// What a decision needs to know beyond the account: figures that span
/// accounts, kept by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Points the programme has issued today (its day at `now`), for
    /// `programme_daily_issuance_cap`.
    pub programme_issued_today: Points,
}

/// [`decide`] with the programme-wide figures the caller keeps.
pub fn decide_with(
    programme: Option<&Programme>,
    account: &Account,
    command: &Command,
    now: Millis,
    limits: &Limits,
) -> Result<Vec<Event>, Rejection> {
    let (mut events, more_due) = due_events(account, programme, now);
    if more_due && !matches!(command.body, CommandBody::Tick) {
        // The command must not run before everything due is settled (it could
        // spend expired points), and all of it does not fit one record: the
        // scheduler settles it a record at a time.
        return Err(Rejection::new(
            Reason::SettlingDue,
            "more is due on this account than one record holds: the scheduler is settling it, retry shortly",
        ));
    }
    let state: Cow<'_, Account> = if events.is_empty() {
        Cow::Borrowed(account)
    } else {
        let mut s = account.clone();
        events.iter().for_each(|e| s.apply(e));
        Cow::Owned(s)
    };
    let due = events.len();
    if !matches!(command.body, CommandBody::Tick) {
        let programme = programme.ok_or_else(|| {
            Rejection::field(
                Reason::ProgrammeNotFound,
                "account.programme_id",
                format!("programme {}/{} is not configured", command.account.tenant_id, command.account.programme_id),
            )
        })?;
        let d = Decision {
            programme,
            account: &state,
            request_id: &command.request_id,
            client: &command.context.client,
            now,
            limits: *limits,
        };
        events.extend(d.decide(&command.body)?);
    }
    // A level set by hand is left alone until its hold ends.
    let held =
        matches!(command.body, CommandBody::SetLevel { .. }) || state.extra.level_held_until.is_some_and(|u| now < u);
    if let Some(p) = programme.filter(|p| !held && (!p.levels.is_empty() || !state.level.is_empty())) {
        // Under RFM the level follows the last evaluation (folded into
        // `state` when it was due now): a command changes no RFM growth.
        let growth = if is_rfm(p) { state.extra.rfm_growth } else { growth_in_window_after(&state, &events[due..]) };
        events.extend(level_change(p, &state.level, growth, &command.body, &events));
    }
    totals_fit(account, &events)?;
    Ok(events)
}

/// Every running total of the account stays within 64 bits once `events`
/// are folded: a member who spends and refunds the same points millions of
/// times grows `spent` and `refunded` without bound, and `apply` must never
/// meet a sum it cannot hold.
fn totals_fit(account: &Account, events: &[Event]) -> Result<(), Rejection> {
    let mut totals = account.totals.clone();
    for e in events {
        totals = totals.after(e).ok_or_else(|| overflow("the account's running totals"))?;
    }
    Ok(())
}

/// The growth in the window once `decided` (the command's own events) are
/// folded into `state`, without copying the account.
fn growth_in_window_after(state: &Account, decided: &[Event]) -> i64 {
    let mut growth = state.growth_in_window();
    for e in decided {
        match e {
            Event::PointsEarned { growth: g, .. } => growth += g,
            Event::EarnReversed { earn_id, growth: g, .. } => {
                if let Some(earn) = state.earns.get(&Id::of(earn_id)) {
                    let before = earn.growth_in_window();
                    growth -= before - (before - g).max(0);
                }
            }
            Event::PenaltyApplied { growth: g, .. } => growth -= g,
            Event::GrowthAdjusted { growth: g, .. } => growth += g,
            _ => {}
        }
    }
    growth
}

/// The member's level for `growth` in the window, when it differs from
/// `level` (the one the account holds).
fn level_change(
    programme: &Programme,
    level: &str,
    growth: i64,
    body: &CommandBody,
    events: &[Event],
) -> Option<Event> {
    let to = programme.level_for(growth);
    if to == level {
        return None;
    }
    let why = if events.iter().any(|e| matches!(e, Event::GrowthEvaluated { .. })) {
        "RFM evaluation".to_string()
    } else if is_rfm(programme) {
        "level rules re-evaluated".to_string()
    } else if events.iter().any(|e| matches!(e, Event::GrowthExpired { .. })) {
        format!("growth earned more than {} days ago left the window", programme.level_window_days)
    } else {
        match body {
            CommandBody::Earn { .. } => "growth earned".to_string(),
            CommandBody::ReverseEarn { .. } => "growth reversed".to_string(),
            CommandBody::RecordActivity(a) => format!("activity '{}'", a.action),
            CommandBody::AdjustGrowth { .. } => "growth adjusted".to_string(),
            _ => "level rules re-evaluated".to_string(),
        }
    };
    Some(Event::LevelChanged { from: level.to_string(), to: to.to_string(), growth, why })
}

/// The programme day from which an earn's growth no longer counts.
fn growth_exit_day(programme: &Programme, earn_day: i64) -> Option<i64> {
    (programme.level_window_days > 0).then(|| earn_day + i64::from(programme.level_window_days))
}

/// Whether the programme measures growth by RFM (levels follow the RFM
/// growth, not the growth in the window).
fn is_rfm(programme: &Programme) -> bool {
    rfm_rules(programme).is_some()
}

fn rfm_rules(programme: &Programme) -> Option<&RfmRules> {
    programme.rfm.as_deref().filter(|r| programme.growth_model == GrowthModel::Rfm && r.period_months > 0)
}

/// The growth levels follow: the RFM growth under RFM, else the growth in
/// the window.
fn level_growth(programme: &Programme, account: &Account) -> i64 {
    if is_rfm(programme) {
        account.extra.rfm_growth
    } else {
        account.growth_in_window()
    }
}

/// RFM: the next period to evaluate (its first calendar month), given the
/// day of the last purchase and the first day of the last period
/// evaluated: the period of the last purchase, then the one after it (a
/// member is evaluated at the end of each period in which, or in the one
/// before which, they made a purchase), each once.
fn rfm_next_period(rules: &RfmRules, last_purchase_day: Option<i64>, evaluated: Option<i64>) -> Option<i64> {
    let months = i64::from(rules.period_months);
    let period_of = |day: i64| {
        let m = month_of_day(day);
        m - m.rem_euclid(months)
    };
    let last = period_of(last_purchase_day?);
    match evaluated.map(period_of) {
        None => Some(last),
        Some(e) if e < last => Some(last),
        Some(e) if e == last => Some(last + months),
        Some(_) => None,
    }
}

/// RFM: the instant the period starting in `month` ends (the first instant
/// of the next period in the programme's zone).
fn rfm_period_end(programme: &Programme, rules: &RfmRules, month: i64) -> Option<Millis> {
    let day = month_first_day(month + i64::from(rules.period_months))?;
    super::calendar::day_to_date(day).and_then(|d| super::calendar::start_of_day(programme.time_zone, d))
}

/// RFM: the next evaluation of the account and when it falls due.
pub(super) fn rfm_next_evaluation(programme: &Programme, account: &Account) -> Option<(i64, Millis)> {
    let rules = rfm_rules(programme)?;
    let month = rfm_next_period(rules, account.extra.last_purchase_day, account.extra.rfm_evaluated)?;
    Some((month, rfm_period_end(programme, rules, month)?))
}

/// RFM: the evaluations due by `now` (at most two: the period of the last
/// purchase and the one after it), measured from the account's purchases.
fn rfm_evaluations(programme: &Programme, account: &Account, now: Millis) -> Vec<Event> {
    let Some(rules) = rfm_rules(programme) else { return Vec::new() };
    let (mut evaluated, mut growth, mut events) = (account.extra.rfm_evaluated, account.extra.rfm_growth, Vec::new());
    while let Some(month) = rfm_next_period(rules, account.extra.last_purchase_day, evaluated) {
        let end_month = month + i64::from(rules.period_months);
        let (Some(start), Some(end_day), Some(last)) =
            (month_first_day(month), month_first_day(end_month), account.extra.last_purchase_day)
        else {
            break;
        };
        if rfm_period_end(programme, rules, month).is_none_or(|at| at > now) {
            break;
        }
        // Days from the last purchase to the period's last day (0: bought on it).
        let recency_days = (end_day - 1 - last).max(0);
        let (frequency, monetary_minor) = account.purchases_in(month, end_month);
        let g = rules.growth(recency_days, frequency, monetary_minor);
        events.push(Event::GrowthEvaluated {
            period_start: start,
            recency_days,
            frequency,
            monetary_minor,
            growth: g,
            previous_growth: growth,
        });
        (evaluated, growth) = (Some(start), g);
    }
    events
}

/// Where a member stands against the programme's levels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelStatus {
    pub level: String,
    pub growth_in_window: i64,
    /// The next instant growth leaves the window.
    pub next_evaluation: Option<Millis>,
    /// Growth to earn before `next_evaluation` to keep `level`.
    pub growth_to_keep: i64,
    pub next_level: String,
    pub growth_to_next: i64,
}

/// The level view of an account: its level, the growth in the window, what
/// it takes to keep the level at the next evaluation and to reach the next.
///
/// Under RFM: `growth_in_window` is the RFM growth of the last evaluation,
/// `next_evaluation` the end of the next period the member is evaluated
/// for, and `growth_to_keep` 0 (what keeps a level is the next period's
/// purchases, not growth to earn).
pub fn level_status(programme: &Programme, account: &Account) -> LevelStatus {
    if is_rfm(programme) {
        let growth = account.extra.rfm_growth;
        let level =
            if account.level.is_empty() { programme.level_for(growth).to_string() } else { account.level.clone() };
        let threshold = programme.levels.iter().find(|l| l.name == level).map(|l| l.min_growth).unwrap_or(0);
        let next = programme.levels.iter().find(|l| l.min_growth > threshold);
        return LevelStatus {
            next_evaluation: rfm_next_evaluation(programme, account).map(|(_, at)| at),
            growth_to_keep: 0,
            next_level: next.map(|l| l.name.clone()).unwrap_or_default(),
            growth_to_next: next.map(|l| (l.min_growth - growth).max(0)).unwrap_or(0),
            level,
            growth_in_window: growth,
        };
    }
    let growth = account.growth_in_window();
    let level = if account.level.is_empty() { programme.level_for(growth).to_string() } else { account.level.clone() };
    let exits: Vec<(i64, i64)> = account
        .earns
        .values()
        .filter(|e| e.growth_in_window() > 0)
        .filter_map(|e| growth_exit_day(programme, e.day).map(|d| (d, e.growth_in_window())))
        .collect();
    let next_day = exits.iter().map(|(d, _)| *d).min();
    let leaving: i64 = exits.iter().filter(|(d, _)| Some(*d) == next_day).map(|(_, g)| *g).sum();
    let threshold = programme.levels.iter().find(|l| l.name == level).map(|l| l.min_growth).unwrap_or(0);
    let next = programme.levels.iter().find(|l| l.min_growth > threshold);
    LevelStatus {
        next_evaluation: next_day
            .and_then(super::calendar::day_to_date)
            .and_then(|d| super::calendar::start_of_day(programme.time_zone, d)),
        growth_to_keep: if next_day.is_some() { (threshold - (growth - leaving)).max(0) } else { 0 },
        next_level: next.map(|l| l.name.clone()).unwrap_or_default(),
        growth_to_next: next.map(|l| (l.min_growth - growth).max(0)).unwrap_or(0),
        level,
        growth_in_window: growth,
    }
}

/// The earliest instant at which something in the account falls due (a lot's
/// expiry, a reservation's timeout, growth leaving the level window), for
/// the writer's scheduler, under RFM the end of the next period the
/// member is evaluated for, and the start of the day of the next expiry
/// reminder.
///
/// Costs the same however long the member's history: the account keeps its
/// soonest expiry, timeout and growth day (the exit day only grows with the
/// earn's day).
pub fn due_at(account: &Account, programme: Option<&Programme>) -> Option<Millis> {
    let growth = programme.and_then(|p| {
        let day = growth_exit_day(p, account.oldest_growth_day()?)?;
        super::calendar::day_to_date(day).and_then(|d| super::calendar::start_of_day(p.time_zone, d))
    });
    let rfm = programme.and_then(|p| rfm_next_evaluation(p, account)).map(|(_, at)| at);
    let reminder = programme.and_then(|p| day_start(p, next_reminder_day(p, account)?));
    [account.next_expiry(), account.next_hold_timeout(), growth, rfm, reminder].into_iter().flatten().min()
}

/// The programme day on which a lot expiring at `expires_at` enters the
/// programme's reminder window (its expiry minus `reminder_days` days, in
/// the programme's zone); `None` without reminders (`reminder_days` 0).
pub(super) fn reminder_day(programme: &Programme, expires_at: Millis) -> Option<i64> {
    let days = i64::from(programme.reminder_days);
    (days > 0).then(|| programme_day(programme.time_zone, add_days(expires_at, -days)))
}

/// The first instant of programme day `day` in the programme's zone.
pub(super) fn day_start(programme: &Programme, day: i64) -> Option<Millis> {
    super::calendar::day_to_date(day).and_then(|d| super::calendar::start_of_day(programme.time_zone, d))
}

/// The programme day of the account's next reminder: the reminder day of
/// its soonest unreminded expiry (it grows with the expiry), but not before
/// the day after the last reminder (one a day at most).
fn next_reminder_day(programme: &Programme, account: &Account) -> Option<i64> {
    let day = reminder_day(programme, account.next_unreminded_expiry()?)?;
    Some(account.extra.reminded_day.map_or(day, |last| day.max(last + 1)))
}

/// The account's next expiry reminder: when it falls due and the points it
/// will name (those of the lots not reminded yet whose reminder day has
/// come by then), for `GetAccount`.
pub fn next_reminder(programme: &Programme, account: &Account) -> Option<(Millis, Points)> {
    let day = next_reminder_day(programme, account)?;
    let points = account
        .lots
        .values()
        .filter(|l| l.to_remind().and_then(|e| reminder_day(programme, e)).is_some_and(|d| d <= day))
        .map(|l| l.remaining)
        .sum();
    Some((day_start(programme, day)?, points))
}

/// The lots to remind at `now` (at most a record's worth; the rest follow at
/// the scheduler's next tick): not reminded yet, with points left (or
/// coming back from `restored` holds), not expiring by `now`, whose
/// reminder day has come; none on the day of the last reminder.
fn reminders(
    programme: &Programme,
    account: &Account,
    now: Millis,
    restored: &std::collections::BTreeMap<&Id, Points>,
) -> Option<Event> {
    let today = programme_day(programme.time_zone, now);
    if account.extra.reminded_day.is_some_and(|d| d >= today) {
        return None;
    }
    let gate = |at: Millis| reminder_day(programme, at).is_some_and(|d| d <= today);
    if !account.next_unreminded_expiry().is_some_and(gate) && restored.is_empty() {
        return None;
    }
    let lots: Vec<LotExpiry> = account
        .lots
        .iter()
        .filter_map(|(id, l)| {
            let points = l.remaining + restored.get(id).copied().unwrap_or(0);
            let at = l.expires_at.filter(|at| !l.reminded && !l.pending && points > 0 && *at > now && gate(*at))?;
            Some(LotExpiry { lot_id: id.to_string(), points, expires_at: at })
        })
        .take(DUE_ITEMS_PER_RECORD_MAX)
        .collect();
    (!lots.is_empty()).then(|| Event::ExpiryReminderDue {
        points: lots.iter().map(|l| l.points).sum(),
        lots,
        day: today,
    })
}

/// Releases the holds timed out by `now` (at most a record's worth: `more`
/// says whether others are due too) and takes what reversals left
/// unrecovered from the points they give back. Returns what each lot got
/// back and kept.
fn timed_out_holds<'a>(
    account: &'a Account,
    now: Millis,
    events: &mut Vec<Event>,
    more: &mut bool,
) -> std::collections::BTreeMap<&'a Id, Points> {
    let mut restored: std::collections::BTreeMap<&Id, Points> = Default::default();
    let mut due =
        account.reservations.iter().filter(|(_, r)| r.status == ReservationStatus::Open && r.expires_at <= now);
    for (id, r) in due.by_ref().take(DUE_ITEMS_PER_RECORD_MAX) {
        for l in &r.lots {
            *restored.entry(&l.lot).or_insert(0) += l.points;
        }
        events.push(Event::ReservationReleased {
            reservation_id: id.to_string(),
            points: Share::sum(&r.lots),
            lots: Share::amounts(&r.lots),
            cause: ReleaseCause::TimedOut,
        });
    }
    *more |= due.next().is_some();
    let back: Vec<LotAmount> = restored.iter().map(|(id, p)| LotAmount::new(id, *p)).collect();
    if let Some(e) = recovery(account, &back) {
        if let Event::PointsRecovered { lots, .. } = &e {
            for l in lots {
                *restored.get_mut(&Id::of(&l.lot_id)).expect("recovered from a restored lot") -= l.points;
            }
        }
        events.push(e);
    }
    restored
}

/// What is due, at most [`DUE_ITEMS_PER_RECORD_MAX`] holds, lots and earns
/// of it at a time (so that its record fits the log), and whether more is
/// due than that.
fn due_events(account: &Account, programme: Option<&Programme>, now: Millis) -> (Vec<Event>, bool) {
    let mut events = Vec::new();
    let mut more = false;
    // Whether anything is due, from the kept sums (as [`due_at`]): the maps
    // below hold a member's whole history, and every command asks.
    let holds_due = account.next_hold_timeout().is_some_and(|at| at <= now);
    // A lot is due with points left, or with points a timed-out hold gives back.
    let lots_due = holds_due || account.next_expiry().is_some_and(|at| at <= now);
    // The growth exit day only grows with the earn's day: the oldest earn
    // with growth in the window leaves it first.
    let growth_due = programme.map(|p| (p, programme_day(p.time_zone, now))).filter(|(p, today)| {
        account.oldest_growth_day().and_then(|day| growth_exit_day(p, day)).is_some_and(|d| d <= *today)
    });
    // Timed-out holds first: their points go back to their lots, which may be
    // due themselves.
    let restored = if holds_due { timed_out_holds(account, now, &mut events, &mut more) } else { Default::default() };
    let mut lots: Vec<LotAmount> = if lots_due {
        account
            .lots
            .iter()
            .filter(|(_, l)| !l.pending && l.expires_at.is_some_and(|at| at <= now))
            .map(|(id, l)| LotAmount::new(id, l.remaining + restored.get(id).copied().unwrap_or(0)))
            .filter(|l| l.points > 0)
            .take(DUE_ITEMS_PER_RECORD_MAX + 1)
            .collect()
    } else {
        Vec::new()
    };
    if lots.len() > DUE_ITEMS_PER_RECORD_MAX {
        lots.truncate(DUE_ITEMS_PER_RECORD_MAX);
        more = true;
    }
    if !lots.is_empty() {
        events.push(Event::PointsExpired {
            points: sum(&lots),
            lots,
            cause: ExpiryCause::Due,
            reason: String::new(),
            operator: String::new(),
        });
    }
    if let Some((p, today)) = growth_due {
        let mut earns: Vec<LotAmount> = account
            .earns
            .iter()
            .filter(|(_, e)| e.growth_in_window() > 0 && growth_exit_day(p, e.day).is_some_and(|d| d <= today))
            .map(|(id, e)| LotAmount::new(id, e.growth_in_window()))
            .take(DUE_ITEMS_PER_RECORD_MAX + 1)
            .collect();
        if earns.len() > DUE_ITEMS_PER_RECORD_MAX {
            earns.truncate(DUE_ITEMS_PER_RECORD_MAX);
            more = true;
        }
        if !earns.is_empty() {
            events.push(Event::GrowthExpired { growth: sum(&earns), earns });
        }
    }
    if let Some(p) = programme {
        events.extend(reminders(p, account, now, &restored));
        events.extend(rfm_evaluations(p, account, now));
    }
    (events, more)
}

#[derive(Clone, Copy)]
struct Decision<'a> {
    programme: &'a Programme,
    account: &'a Account,
    request_id: &'a str,
    /// The authenticated client that sent the command (maker-checker).
    client: &'a str,
    now: Millis,
    limits: Limits,
}

fn positive(points: Points, field: &'static str) -> Result<(), Rejection> {
    if points <= 0 {
        return Err(Rejection::field(Reason::InvalidAmount, field, format!("{field} must be > 0, got {points}")));
    }
    Ok(())
}

fn overflow(what: &str) -> Rejection {
    Rejection::field(Reason::Overflow, "points", format!("{what} would overflow a 64-bit point count"))
}

/// Takes `points` from lots, soonest-expiring first (the order of
/// [`Account::lots_fefo`]). The lots with points go into a heap in one pass
/// and only those that pay come out in order: a member's lots are every earn
/// of their history, and a spend is paid by one or two.
fn take_fefo(account: &Account, points: Points) -> Vec<LotAmount> {
    use std::cmp::Reverse;
    let mut lots: std::collections::BinaryHeap<Reverse<(Millis, &Id, Points)>> = account
        .lots
        .iter()
        .filter(|(_, l)| l.spendable() > 0)
        .map(|(id, l)| Reverse((l.expires_at.unwrap_or(Millis::MAX), id, l.remaining)))
        .collect();
    let mut left = points;
    let mut taken = Vec::new();
    while left > 0 {
        let Some(Reverse((_, id, remaining))) = lots.pop() else { break };
        let p = left.min(remaining);
        taken.push(LotAmount::new(id, p));
        left -= p;
    }
    taken
}

/// Points that came back into lots (`returned`) are taken again at once
/// for what reversals left unrecovered: first written-off reversals, then
/// the member's debt (as an earn repays it first). A write-off forgives
/// points that are gone (spent, held, expired); points that come back are
/// not gone. So a refund or a released hold after a reversal never makes
/// reversed points spendable again, and while a member owes debt nothing is
/// spendable. Reads only the open write-off and the debt, which giving
/// points back does not change.
fn recovery(account: &Account, returned: &[LotAmount]) -> Option<Event> {
    let mut back: std::collections::BTreeMap<&str, Points> = Default::default();
    for l in returned {
        *back.entry(l.lot_id.as_str()).or_insert(0) += l.points;
    }
    let (mut written_off_left, mut debt_left) = (account.extra.written_off_open.max(0), account.debt.max(0));
    let (mut lots, mut written_off, mut debt_repaid) = (Vec::new(), 0, 0);
    for (id, p) in back {
        let claw = p.min(written_off_left).max(0);
        let repay = (p - claw).min(debt_left).max(0);
        written_off_left -= claw;
        debt_left -= repay;
        written_off += claw;
        debt_repaid += repay;
        if claw + repay > 0 {
            lots.push(LotAmount::new(id, claw + repay));
        }
    }
    (!lots.is_empty()).then(|| Event::PointsRecovered { points: sum(&lots), lots, debt_repaid, written_off })
}

/// `returned` less what `recovered` (a [`recovery`]) took of it, by lot.
fn left_after(returned: &[LotAmount], recovered: Option<&Event>) -> Vec<LotAmount> {
    let Some(Event::PointsRecovered { lots: taken, .. }) = recovered else {
        return returned.to_vec();
    };
    let mut taken: std::collections::BTreeMap<&str, Points> =
        taken.iter().map(|l| (l.lot_id.as_str(), l.points)).collect();
    returned
        .iter()
        .map(|l| {
            let t = taken.get_mut(l.lot_id.as_str()).map_or(0, |t| {
                let x = (*t).min(l.points);
                *t -= x;
                x
            });
            LotAmount::new(&l.lot_id, l.points - t)
        })
        .filter(|l| l.points > 0)
        .collect()
}

impl Decision<'_> {
    /// The events that follow points coming back into lots: their recovery
    /// for reversals and debt, then the expiry of what is left in lots
    /// whose time is already up.
    fn returned(&self, returned: &[LotAmount]) -> Vec<Event> {
        let recovered = recovery(self.account, returned);
        let expired = self.expire_if_due(&left_after(returned, recovered.as_ref()));
        recovered.into_iter().chain(expired).collect()
    }

    fn decide(&self, body: &CommandBody) -> Result<Vec<Event>, Rejection> {
        match body {
            CommandBody::Earn { points, reason, order_ref, growth, expires_at } => {
                self.earn(*points, reason, order_ref, *growth, *expires_at)
            }
            CommandBody::Spend { points, order_ref, order_cash_amount } => {
                self.spend(*points, order_ref, *order_cash_amount)
            }
            CommandBody::Reserve { points, order_ref, timeout_seconds, order_cash_amount } => {
                self.reserve(*points, order_ref, *timeout_seconds, *order_cash_amount)
            }
            CommandBody::Capture { reservation_id, points } => self.capture(reservation_id, *points),
            CommandBody::Release { reservation_id } => self.release(reservation_id),
            CommandBody::Refund { spend_id, points } => self.refund(spend_id, *points),
            CommandBody::ReverseEarn { earn_id, points, growth } => self.reverse(earn_id, *points, *growth),
            CommandBody::Expire { all_points, reason, operator } => self.expire(*all_points, reason, operator),
            CommandBody::Adjust { points, operator, reason } => self.adjust_or_request(*points, operator, reason),
            CommandBody::ApproveAdjustment { approval_id, operator, reason } => {
                self.approve_adjustment(approval_id, operator, reason)
            }
            CommandBody::RejectAdjustment { approval_id, operator, reason } => {
                needs_operator_and_reason(operator, reason)?;
                self.pending_adjustment(approval_id)?;
                Ok(vec![Event::AdjustmentRejected {
                    approval_id: approval_id.clone(),
                    operator: operator.clone(),
                    reason: reason.clone(),
                    client: self.client.into(),
                }])
            }
            CommandBody::RecordActivity(activity) => self.activity(activity),
            CommandBody::AdjustGrowth { growth, operator, reason } => self.adjust_growth(*growth, operator, reason),
            CommandBody::SetLevel { level, operator, reason, hold_until } => {
                self.set_level(level, operator, reason, *hold_until)
            }
            CommandBody::Freeze { earning, spending, operator, reason } => {
                self.freeze_flags(*earning, *spending, operator, reason)?;
                Ok(vec![Event::AccountFrozen {
                    earning: *earning,
                    spending: *spending,
                    operator: operator.clone(),
                    reason: reason.clone(),
                }])
            }
            CommandBody::Unfreeze { earning, spending, operator, reason } => {
                self.freeze_flags(*earning, *spending, operator, reason)?;
                Ok(vec![Event::AccountUnfrozen {
                    earning: *earning,
                    spending: *spending,
                    operator: operator.clone(),
                    reason: reason.clone(),
                }])
            }
            CommandBody::RaiseAlert { alert_id, rule, detail, hold } => self.raise_alert(alert_id, rule, detail, *hold),
            CommandBody::ReleasePending { operator, reason } => self.settle_pending(operator, reason, true),
            CommandBody::ForfeitPending { operator, reason } => self.settle_pending(operator, reason, false),
            CommandBody::Unhold { operator, reason } => {
                needs_operator_and_reason(operator, reason)?;
                if self.account.extra.held.is_none() {
                    return Err(Rejection::new(Reason::NothingPending, "the account's earns are not held"));
                }
                Ok(vec![Event::EarningsUnheld { operator: operator.clone(), reason: reason.clone() }])
            }
            CommandBody::Tick => Ok(Vec::new()),
        }
    }

    /// The alert as an event of the member's, and the hold it puts on new
    /// earns (unless they are held already).
    fn raise_alert(&self, alert_id: &str, rule: &str, detail: &str, hold: bool) -> Result<Vec<Event>, Rejection> {
        if alert_id.is_empty() || rule.is_empty() {
            return Err(Rejection::field(Reason::MissingField, "alert_id", "an alert needs its id and rule"));
        }
        let mut events =
            vec![Event::AlertRaised { alert_id: alert_id.into(), rule: rule.into(), detail: detail.into() }];
        if hold && self.account.extra.held.is_none() {
            events.push(Event::EarningsHeld { rule: rule.into(), alert_id: alert_id.into() });
        }
        Ok(events)
    }

    /// Releases (into ordinary lots, then what returning points owes:
    /// recovery, expiry of lots whose time is up) or forfeits the pending
    /// lots, at most a record's worth (repeat for the rest); lifts the hold.
    fn settle_pending(&self, operator: &str, reason: &str, release: bool) -> Result<Vec<Event>, Rejection> {
        needs_operator_and_reason(operator, reason)?;
        let lots: Vec<LotAmount> = self
            .account
            .pending_lots()
            .take(DUE_ITEMS_PER_RECORD_MAX)
            .map(|(id, l)| LotAmount::new(id, l.remaining))
            .collect();
        if lots.is_empty() && self.account.extra.held.is_none() {
            return Err(Rejection::new(
                Reason::NothingPending,
                "nothing is pending and the account's earns are not held",
            ));
        }
        let points = sum(&lots);
        let (operator, reason) = (operator.to_string(), reason.to_string());
        if !release {
            return Ok(vec![Event::PendingPointsForfeited { lots, points, operator, reason }]);
        }
        self.account.totals.issued.checked_add(points).ok_or_else(|| overflow("issued points"))?;
        self.account.available().checked_add(points).ok_or_else(|| overflow("the balance"))?;
        let back = self.returned(&lots);
        Ok(std::iter::once(Event::PendingPointsReleased { lots, points, operator, reason }).chain(back).collect())
    }

    fn earn(
        &self,
        points: Points,
        reason: &str,
        order_ref: &Option<String>,
        growth: i64,
        expires_at: Option<Millis>,
    ) -> Result<Vec<Event>, Rejection> {
        if growth < 0 {
            return Err(Rejection::field(Reason::InvalidAmount, "growth", "growth must be >= 0"));
        }
        // Growth alone (a login) earns no points.
        if !(points == 0 && growth > 0) {
            positive(points, "points")?;
        }
        if reason.is_empty() {
            return Err(Rejection::field(Reason::MissingField, "reason", "reason (the action code) is required"));
        }
        if self.account.earning_frozen {
            return Err(Rejection::new(Reason::AccountFrozen, "account is frozen for earning"));
        }
        if let Some(at) = expires_at {
            if at <= self.now {
                return Err(Rejection::field(Reason::InvalidExpiry, "expires_at", "expires_at must lie in the future"));
            }
        }
        let p = self.programme;
        let day = programme_day(p.time_zone, self.now);
        let (allowed, cap_reason) = self.within_caps(points, reason, day);
        if let (Some(why), CapPolicy::Reject) = (cap_reason, p.cap_policy) {
            return Err(Rejection::new(
                why,
                format!("daily earn cap reached: {points} requested, {allowed} left today for '{reason}'"),
            ));
        }
        let granted = allowed;
        // Held earns repay nothing until they are released.
        let pending = self.account.extra.held.is_some();
        let debt_repaid = if pending { 0 } else { granted.min(self.account.debt) };
        if granted > debt_repaid && self.account.lots_with_points() >= LOTS_WITH_POINTS_MAX {
            return Err(Rejection::new(
                Reason::TooManyLots,
                format!(
                    "the account holds {LOTS_WITH_POINTS_MAX} lots with points, the most one account may: spend or expire some first"
                ),
            ));
        }
        self.account.available().checked_add(granted).ok_or_else(|| overflow("the balance"))?;
        self.account.totals.issued.checked_add(granted).ok_or_else(|| overflow("issued points"))?;
        self.account.totals.held.checked_add(granted).ok_or_else(|| overflow("held points"))?;
        self.account.growth.checked_add(growth).ok_or_else(|| overflow("growth"))?;
        Ok(vec![Event::PointsEarned {
            lot_id: self.request_id.into(),
            reason: reason.into(),
            order_ref: order_ref.clone(),
            requested: points,
            granted,
            forfeited: points - granted,
            debt_repaid,
            expires_at: expires_at.or_else(|| lot_expiry(p, self.now)),
            growth,
            day,
            pending,
        }])
    }

    /// What the daily caps let an earn of `points` for `reason` grant on
    /// programme day `day`, and the tightest cap that cut it (if any).
    fn within_caps(&self, points: Points, reason: &str, day: i64) -> (Points, Option<Reason>) {
        let p = self.programme;
        let (earned_today, action_today) = self.account.earned_on(day, reason);
        let mut allowed = points;
        let mut cap_reason = None;
        if p.member_daily_earn_cap > 0 {
            let room = (p.member_daily_earn_cap - earned_today).max(0);
            if room < allowed {
                allowed = room;
                cap_reason = Some(Reason::DailyEarnCapReached);
            }
        }
        if let Some(&cap) = p.action_daily_earn_caps.get(reason) {
            let room = (cap - action_today).max(0);
            if cap > 0 && room < allowed {
                allowed = room;
                cap_reason = Some(Reason::ActionDailyCapReached);
            }
        }
        if p.programme_daily_issuance_cap > 0 {
            let room = (p.programme_daily_issuance_cap - self.limits.programme_issued_today).max(0);
            if room < allowed {
                allowed = room;
                cap_reason = Some(Reason::ProgrammeDailyCapReached);
            }
        }
        (allowed, cap_reason)
    }

    fn spendable(&self, points: Points) -> Result<(), Rejection> {
        if self.account.spending_frozen {
            return Err(Rejection::new(Reason::AccountFrozen, "account is frozen for spending"));
        }
        // While the member owes debt every point that comes in repays it
        // first, so nothing is spendable; an account folded from a history
        // older than that rule may hold both, and spends only what exceeds
        // the debt.
        let available = self.account.available();
        let spendable = (available - self.account.debt).max(0);
        if spendable < points {
            let owed = if self.account.debt > 0 {
                format!(" (the member owes {} points of debt)", self.account.debt)
            } else {
                String::new()
            };
            return Err(Rejection::new(
                Reason::InsufficientPoints,
                format!("insufficient points: {points} requested, {spendable} available{owed}"),
            ));
        }
        Ok(())
    }

    /// The max-share-of-order rule: points may pay at most that share of the order.
    fn within_order_share(&self, points: Points, order_cash_amount: Option<i64>) -> Result<(), Rejection> {
        let pct = self.programme.max_order_share_percent;
        if pct == 0 {
            return Ok(());
        }
        let Some(cash) = order_cash_amount else {
            return Err(Rejection::field(
                Reason::OrderCashAmountRequired,
                "order_cash_amount",
                format!("the programme lets points pay at most {pct}% of an order: order_cash_amount is required"),
            ));
        };
        if cash <= 0 {
            return Err(Rejection::field(Reason::InvalidAmount, "order_cash_amount", "order_cash_amount must be > 0"));
        }
        // points are worth points * 100 / ppcu minor units; compare without division.
        let value = i128::from(points) * i128::from(CASH_MINOR_PER_UNIT) * 100;
        let limit = i128::from(cash) * i128::from(pct) * i128::from(self.programme.points_per_cash_unit);
        if value > limit {
            let max_points = limit / (i128::from(CASH_MINOR_PER_UNIT) * 100);
            return Err(Rejection::new(
                Reason::OrderShareExceeded,
                format!("points may pay at most {pct}% of this order: {max_points} points, {points} requested"),
            ));
        }
        Ok(())
    }

    fn spend(&self, points: Points, order_ref: &Option<String>, cash: Option<i64>) -> Result<Vec<Event>, Rejection> {
        positive(points, "points")?;
        self.within_order_share(points, cash)?;
        self.spendable(points)?;
        Ok(vec![Event::PointsSpent {
            spend_id: self.request_id.into(),
            order_ref: order_ref.clone(),
            points,
            lots: take_fefo(self.account, points),
            order_cash_minor: cash.unwrap_or(0).max(0),
        }])
    }

    fn reserve(
        &self,
        points: Points,
        order_ref: &str,
        timeout_seconds: i64,
        cash: Option<i64>,
    ) -> Result<Vec<Event>, Rejection> {
        positive(points, "points")?;
        if !(1..=RESERVATION_TIMEOUT_SECONDS_MAX).contains(&timeout_seconds) {
            return Err(Rejection::field(
                Reason::InvalidTimeout,
                "timeout_seconds",
                format!("timeout_seconds must be 1..={RESERVATION_TIMEOUT_SECONDS_MAX}"),
            ));
        }
        self.within_order_share(points, cash)?;
        self.spendable(points)?;
        Ok(vec![Event::PointsReserved {
            reservation_id: self.request_id.into(),
            order_ref: order_ref.into(),
            points,
            lots: take_fefo(self.account, points),
            expires_at: self.now + timeout_seconds * 1000,
            order_cash_minor: cash.unwrap_or(0).max(0),
        }])
    }

    fn open_reservation(&self, reservation_id: &str) -> Result<&super::ReservationRecord, Rejection> {
        let r = self.account.reservations.get(&Id::of(reservation_id)).ok_or_else(|| {
            Rejection::field(Reason::ReservationNotFound, "reservation_id", format!("no reservation {reservation_id}"))
        })?;
        if r.status != ReservationStatus::Open {
            return Err(Rejection::new(
                Reason::ReservationSettled,
                format!("reservation {reservation_id} is already settled ({:?})", r.status),
            ));
        }
        Ok(r)
    }

    fn capture(&self, reservation_id: &str, points: Option<Points>) -> Result<Vec<Event>, Rejection> {
        let r = self.open_reservation(reservation_id)?;
        let held = r.held();
        let points = points.unwrap_or(held);
        positive(points, "points")?;
        if points > held {
            return Err(Rejection::new(
                Reason::CaptureExceedsReservation,
                format!("capture of {points} exceeds the {held} reserved"),
            ));
        }
        if self.account.spending_frozen {
            return Err(Rejection::new(Reason::AccountFrozen, "account is frozen for spending"));
        }
        // Capture the soonest-expiring part of the hold; release the rest.
        let mut held_lots = r.lots.clone();
        held_lots.sort_by_key(|l| (self.lot_expiry(&l.lot).unwrap_or(Millis::MAX), l.lot.clone()));
        let (mut lots, mut released) = (Vec::new(), Vec::new());
        let mut left = points;
        for l in held_lots {
            let p = left.min(l.points);
            if p > 0 {
                lots.push(LotAmount::new(&l.lot, p));
            }
            if l.points > p {
                released.push(LotAmount::new(&l.lot, l.points - p));
            }
            left -= p;
        }
        let mut events = vec![Event::ReservationCaptured {
            reservation_id: reservation_id.into(),
            spend_id: self.request_id.into(),
            points,
            lots,
            released_points: held - points,
            released_lots: released.clone(),
            order_cash_minor: r.order_cash_minor,
        }];
        events.extend(self.returned(&released));
        Ok(events)
    }

    fn release(&self, reservation_id: &str) -> Result<Vec<Event>, Rejection> {
        let r = self.open_reservation(reservation_id)?;
        let mut events = vec![Event::ReservationReleased {
            reservation_id: reservation_id.into(),
            points: r.held(),
            lots: Share::amounts(&r.lots),
            cause: ReleaseCause::Requested,
        }];
        events.extend(self.returned(&Share::amounts(&r.lots)));
        Ok(events)
    }

    fn lot_expiry(&self, lot: &Id) -> Option<Millis> {
        self.account.lots.get(lot).and_then(|l| l.expires_at)
    }

    /// Points that go back into lots whose time is already up expire at once.
    fn expire_if_due(&self, returned: &[LotAmount]) -> Option<Event> {
        let mut lots: std::collections::BTreeMap<&str, Points> = Default::default();
        for l in returned {
            if self.lot_expiry(&Id::of(&l.lot_id)).is_some_and(|at| at <= self.now) && l.points > 0 {
                *lots.entry(l.lot_id.as_str()).or_insert(0) += l.points;
            }
        }
        let lots: Vec<LotAmount> = lots.into_iter().map(|(id, p)| LotAmount::new(id, p)).collect();
        (!lots.is_empty()).then(|| Event::PointsExpired {
            points: sum(&lots),
            lots,
            cause: ExpiryCause::Due,
            reason: String::new(),
            operator: String::new(),
        })
    }

    fn refund(&self, spend_id: &str, points: Points) -> Result<Vec<Event>, Rejection> {
        positive(points, "points")?;
        let spend = self.account.spends.get(&Id::of(spend_id)).ok_or_else(|| {
            Rejection::field(Reason::SpendNotFound, "spend_request_id", format!("no spend {spend_id} on this account"))
        })?;
        let refundable = spend.refundable();
        if points > refundable {
            return Err(Rejection::new(
                Reason::RefundExceedsSpend,
                format!("refund of {points} exceeds the {refundable} still refundable"),
            ));
        }
        self.account.available().checked_add(points).ok_or_else(|| overflow("the balance"))?;
        // Back into the lots the spend came from, latest expiry first, so the
        // member gets the longest-lived points back.
        let mut paid: std::collections::BTreeMap<&Id, Points> = Default::default();
        for l in &spend.lots {
            *paid.entry(&l.lot).or_insert(0) += l.points;
        }
        let mut order: Vec<(&Id, Points)> = paid
            .into_iter()
            .map(|(id, p)| (id, p - spend.refunded.get(id).copied().unwrap_or(0)))
            .filter(|(_, left)| *left > 0)
            .collect();
        order.sort_by_key(|(id, _)| (std::cmp::Reverse(self.lot_expiry(id).unwrap_or(Millis::MAX)), *id));
        let mut left = points;
        let mut lots = Vec::new();
        for (id, room) in order {
            if left == 0 {
                break;
            }
            let p = left.min(room);
            lots.push(LotAmount::new(id, p));
            left -= p;
        }
        let mut events = vec![Event::SpendRefunded {
            refund_id: self.request_id.into(),
            spend_id: spend_id.into(),
            points,
            lots: lots.clone(),
        }];
        events.extend(self.returned(&lots));
        Ok(events)
    }

    fn reverse(&self, earn_id: &str, points: Points, growth: i64) -> Result<Vec<Event>, Rejection> {
        positive(points, "points")?;
        if growth < 0 {
            return Err(Rejection::field(Reason::InvalidAmount, "growth", "growth must be >= 0"));
        }
        let earn_key = Id::of(earn_id);
        let earn = self.account.earns.get(&earn_key).ok_or_else(|| {
            Rejection::field(Reason::EarnNotFound, "earn_request_id", format!("no earn {earn_id} on this account"))
        })?;
        if self.account.lots.get(&earn_key).is_some_and(|l| l.pending && l.remaining > 0) {
            return Err(Rejection::new(
                Reason::EarnPending,
                format!("earn {earn_id} is pending (the member's earns are held): release or forfeit it first"),
            ));
        }
        let reversible = earn.points - earn.reversed;
        if points > reversible {
            return Err(Rejection::new(
                Reason::ReversalExceedsEarn,
                format!("reversal of {points} exceeds the {reversible} still reversible"),
            ));
        }
        let growth_left = earn.growth - earn.growth_reversed;
        if growth > growth_left {
            return Err(Rejection::new(
                Reason::GrowthReversalExceedsEarn,
                format!("growth reversal of {growth} exceeds the {growth_left} left of this earn"),
            ));
        }
        // The earn's own lot first, then the other lots soonest-expiring first.
        let mut taken = Vec::new();
        let mut left = points;
        let own = self.account.lots.get(&earn_key).map(|l| l.spendable()).unwrap_or(0);
        if own > 0 {
            let p = left.min(own);
            taken.push(LotAmount::new(earn_id, p));
            left -= p;
        }
        for (id, lot) in self.account.lots_fefo() {
            if left == 0 {
                break;
            }
            if *id == earn_key {
                continue;
            }
            let p = left.min(lot.remaining);
            taken.push(LotAmount::new(id, p));
            left -= p;
        }
        let (debt_added, written_off) = match self.programme.clawback_policy {
            ClawbackPolicy::AllowDebt => (left, 0),
            ClawbackPolicy::WithinBalance => (0, left),
        };
        self.account.debt.checked_add(debt_added).ok_or_else(|| overflow("debt"))?;
        Ok(vec![Event::EarnReversed {
            reversal_id: self.request_id.into(),
            earn_id: earn_id.into(),
            points,
            taken,
            debt_added,
            written_off,
            growth,
        }])
    }

    fn expire(&self, all_points: bool, reason: &str, operator: &str) -> Result<Vec<Event>, Rejection> {
        if !all_points {
            // Due lots were already expired before this command; nothing else to do.
            return Ok(Vec::new());
        }
        if reason.is_empty() {
            return Err(Rejection::field(Reason::MissingField, "reason", "reason is required to expire all points"));
        }
        if operator.is_empty() {
            return Err(Rejection::field(Reason::MissingField, "operator", "recycling every point needs an operator"));
        }
        let mut events = Vec::new();
        for (id, r) in &self.account.reservations {
            if r.status == ReservationStatus::Open {
                events.push(Event::ReservationReleased {
                    reservation_id: id.to_string(),
                    points: r.held(),
                    lots: Share::amounts(&r.lots),
                    cause: ReleaseCause::Recycled,
                });
            }
        }
        let released: Vec<LotAmount> = self
            .account
            .reservations
            .values()
            .filter(|r| r.status == ReservationStatus::Open)
            .flat_map(|r| Share::amounts(&r.lots))
            .collect();
        events.extend(recovery(self.account, &released));
        let mut after = self.account.clone();
        events.iter().for_each(|e| after.apply(e));
        // At most a record's worth of lots: a larger account is recycled by
        // repeating the command (each takes the soonest-expiring lots left).
        let lots: Vec<LotAmount> = after
            .lots_fefo()
            .into_iter()
            .take(DUE_ITEMS_PER_RECORD_MAX)
            .map(|(id, l)| LotAmount::new(id, l.remaining))
            .collect();
        if !lots.is_empty() {
            events.push(Event::PointsExpired {
                points: sum(&lots),
                lots,
                cause: ExpiryCause::AllPoints,
                reason: reason.into(),
                operator: operator.into(),
            });
        }
        Ok(events)
    }

    /// A manual adjustment, or above the programme's approval threshold a
    /// request that waits for a second admin client (maker-checker). The
    /// request is decided as an adjustment first, so one that could not be
    /// applied now is refused now.
    fn adjust_or_request(&self, points: Points, operator: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
        let events = self.adjust(points, operator, reason)?;
        let threshold = self.programme.adjustment_approval_points;
        if threshold == 0 || points.unsigned_abs() <= threshold.unsigned_abs() {
            return Ok(events);
        }
        if self.account.extra.adjustments.len() >= super::account::PENDING_ADJUSTMENTS_MAX {
            return Err(Rejection::new(
                Reason::TooManyPendingAdjustments,
                format!(
                    "{} adjustments wait for approval on this account already: approve or reject some first",
                    super::account::PENDING_ADJUSTMENTS_MAX
                ),
            ));
        }
        Ok(vec![Event::AdjustmentRequested {
            approval_id: self.request_id.into(),
            points,
            operator: operator.into(),
            reason: reason.into(),
            client: self.client.into(),
        }])
    }

    fn pending_adjustment(&self, approval_id: &str) -> Result<&super::account::PendingAdjustment, Rejection> {
        self.account.extra.adjustments.get(approval_id).ok_or_else(|| {
            Rejection::field(
                Reason::AdjustmentNotFound,
                "approval_id",
                format!("no adjustment {approval_id} waits for approval on this account"),
            )
        })
    }

    /// Applies a waiting adjustment, by a client other than its maker: the
    /// adjustment as its maker asked for it (lot id = the request's id),
    /// decided against the account as it is now.
    fn approve_adjustment(&self, approval_id: &str, operator: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
        needs_operator_and_reason(operator, reason)?;
        let pending = self.pending_adjustment(approval_id)?;
        if pending.client == self.client {
            return Err(Rejection::new(
                Reason::ApproverIsMaker,
                format!("the client {} asked for this adjustment: another admin client must approve it", self.client),
            ));
        }
        let mut events = vec![Event::AdjustmentApproved {
            approval_id: approval_id.into(),
            operator: operator.into(),
            reason: reason.into(),
            client: self.client.into(),
        }];
        let maker = Decision { request_id: approval_id, ..*self };
        events.extend(maker.adjust(pending.points, &pending.operator, &pending.reason)?);
        Ok(events)
    }

    fn adjust(&self, points: Points, operator: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
        if points == 0 || points == Points::MIN {
            return Err(Rejection::field(Reason::InvalidAmount, "points", "points must be non-zero"));
        }
        if operator.is_empty() || reason.is_empty() {
            return Err(Rejection::field(
                Reason::MissingField,
                if operator.is_empty() { "operator" } else { "reason" },
                "a manual adjustment needs an operator and a reason",
            ));
        }
        let (lots, debt_repaid, expires_at) = if points > 0 {
            self.account.available().checked_add(points).ok_or_else(|| overflow("the balance"))?;
            self.account.totals.adjusted_up.checked_add(points).ok_or_else(|| overflow("adjusted points"))?;
            let repaid = points.min(self.account.debt);
            let expires_at = lot_expiry(self.programme, self.now);
            let lots = if points > repaid { vec![LotAmount::new(self.request_id, points - repaid)] } else { vec![] };
            (lots, repaid, expires_at)
        } else {
            let take = -points;
            let available = self.account.available();
            if available < take {
                return Err(Rejection::new(
                    Reason::InsufficientPoints,
                    format!("cannot take {take} points: {available} available"),
                ));
            }
            (take_fefo(self.account, take), 0, None)
        };
        Ok(vec![Event::PointsAdjusted {
            adjustment_id: self.request_id.into(),
            points,
            operator: operator.into(),
            reason: reason.into(),
            lots,
            debt_repaid,
            expires_at,
        }])
    }

    /// An activity: what the earning rules make it worth, then an earn (the
    /// programme's daily caps and cap policy apply), a penalty, or nothing.
    fn activity(&self, activity: &Activity) -> Result<Vec<Event>, Rejection> {
        if activity.amount_minor < 0 {
            return Err(Rejection::field(Reason::InvalidAmount, "amount_minor", "amount_minor must be >= 0"));
        }
        let day = programme_day(self.programme.time_zone, self.now);
        let w = rules::worth(self.programme, self.account, activity, self.now, day)?;
        let order_ref = Some(activity.order_ref.clone()).filter(|o| !o.is_empty());
        let then = if w.points > 0 || (w.points == 0 && w.growth > 0) {
            self.earn(w.points, &activity.action, &order_ref, w.growth.max(0), None)?
        } else if w.points < 0 || w.growth < 0 {
            vec![self.penalty(&activity.action, -w.points.min(0), -w.growth.min(0))?]
        } else {
            Vec::new()
        };
        let mut events = vec![Event::ActivityRecorded {
            activity_id: self.request_id.into(),
            activity: activity.clone(),
            applied: w.applied,
            points: w.points,
            growth: w.growth,
            day,
            purchase: rfm_rules(self.programme).is_some_and(|r| r.is_purchase(&activity.action)),
        }];
        events.extend(then);
        Ok(events)
    }

    /// A penalty of `points` and `growth` (both >= 0): points from lots
    /// soonest-expiring first, the rest by the clawback policy; growth from
    /// the newest earns, never below zero.
    fn penalty(&self, action: &str, points: Points, growth: i64) -> Result<Event, Rejection> {
        let take = points.min(self.account.available());
        let taken = if take > 0 { take_fefo(self.account, take) } else { Vec::new() };
        let left = points - take;
        let (debt_added, written_off) = match self.programme.clawback_policy {
            ClawbackPolicy::AllowDebt => (left, 0),
            ClawbackPolicy::WithinBalance => (0, left),
        };
        self.account.debt.checked_add(debt_added).ok_or_else(|| overflow("debt"))?;
        let (growth_earns, taken_growth) = self.newest_growth(growth);
        Ok(Event::PenaltyApplied {
            penalty_id: self.request_id.into(),
            action: action.into(),
            points,
            taken,
            debt_added,
            written_off,
            growth: taken_growth,
            growth_earns,
        })
    }

    /// Up to `want` growth from the earns that hold growth in the window,
    /// newest first: by earn, and in all.
    fn newest_growth(&self, want: i64) -> (Vec<LotAmount>, i64) {
        let mut earns: Vec<(&Id, &super::EarnRecord)> =
            self.account.earns.iter().filter(|(_, e)| e.growth_in_window() > 0).collect();
        earns.sort_by(|a, b| b.1.day.cmp(&a.1.day).then_with(|| b.0.cmp(a.0)));
        let (mut left, mut taken) = (want, Vec::new());
        for (id, e) in earns {
            if left == 0 {
                break;
            }
            let g = left.min(e.growth_in_window());
            taken.push(LotAmount::new(id, g));
            left -= g;
        }
        (taken, want - left)
    }

    fn operator_and_reason(operator: &str, reason: &str, what: &str) -> Result<(), Rejection> {
        if operator.is_empty() || reason.is_empty() {
            return Err(Rejection::field(
                Reason::MissingField,
                if operator.is_empty() { "operator" } else { "reason" },
                format!("{what} needs an operator and a reason"),
            ));
        }
        Ok(())
    }

    /// Growth up or down by an operator; never below zero.
    fn adjust_growth(&self, growth: i64, operator: &str, reason: &str) -> Result<Vec<Event>, Rejection> {
        if growth == 0 || growth == i64::MIN {
            return Err(Rejection::field(Reason::InvalidAmount, "growth", "growth must be non-zero"));
        }
        Self::operator_and_reason(operator, reason, "a growth adjustment")?;
        let (earns, applied) = if growth > 0 {
            self.account.growth.checked_add(growth).ok_or_else(|| overflow("growth"))?;
            (Vec::new(), growth)
        } else {
            let (earns, taken) = self.newest_growth(-growth);
            (earns, -taken)
        };
        Ok(vec![Event::GrowthAdjusted {
            adjustment_id: self.request_id.into(),
            requested: growth,
            growth: applied,
            operator: operator.into(),
            reason: reason.into(),
            earns,
            day: programme_day(self.programme.time_zone, self.now),
        }])
    }

    /// A level set by hand ("" = below every level), held until `hold_until`.
    fn set_level(
        &self,
        level: &str,
        operator: &str,
        reason: &str,
        hold_until: Option<Millis>,
    ) -> Result<Vec<Event>, Rejection> {
        if !level.is_empty() && !self.programme.levels.iter().any(|l| l.name == level) {
            return Err(Rejection::field(
                Reason::LevelNotFound,
                "level",
                format!("the programme has no level '{level}'"),
            ));
        }
        Self::operator_and_reason(operator, reason, "setting a level")?;
        if hold_until.is_some_and(|u| u <= self.now) {
            return Err(Rejection::field(Reason::InvalidExpiry, "hold_until", "hold_until must lie in the future"));
        }
        let mut events = Vec::new();
        if level != self.account.level {
            events.push(Event::LevelChanged {
                from: self.account.level.clone(),
                to: level.into(),
                growth: level_growth(self.programme, self.account),
                why: format!("set by {operator}: {reason}"),
            });
        }
        events.push(Event::LevelHeld {
            level: level.into(),
            operator: operator.into(),
            reason: reason.into(),
            hold_until,
        });
        Ok(events)
    }

    fn freeze_flags(&self, earning: bool, spending: bool, operator: &str, reason: &str) -> Result<(), Rejection> {
        if !earning && !spending {
            return Err(Rejection::field(Reason::MissingField, "earning", "name earning, spending or both"));
        }
        if operator.is_empty() || reason.is_empty() {
            return Err(Rejection::field(
                Reason::MissingField,
                if operator.is_empty() { "operator" } else { "reason" },
                "freezing and unfreezing need an operator and a reason",
            ));
        }
        Ok(())
    }
}

fn needs_operator_and_reason(operator: &str, reason: &str) -> Result<(), Rejection> {
    if operator.is_empty() || reason.is_empty() {
        return Err(Rejection::field(
            Reason::MissingField,
            if operator.is_empty() { "operator" } else { "reason" },
            "an operator and a reason are required",
        ));
    }
    Ok(())
}
