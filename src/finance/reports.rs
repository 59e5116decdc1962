//! Reports over the books: roll-ups by month, quarter and year, the
//! expiry forecast from the balance view's expiry index, and the books as
//! tables, CSV and JSON.

use sha2::{Digest, Sha256};

use super::books::BooksError;
use crate::domain::{calendar, ProgrammeKey};
use crate::hex;
use crate::proto::state;
use crate::store::{self, Cf, Db};

/// Periods books roll up into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
    Quarter,
    Year,
}

impl Period {
    /// The label of the period a date falls in: `2026-03-10`, `2026-03`,
    /// `2026-Q1`, `2026`.
    pub fn label(self, date: chrono::NaiveDate) -> String {
        use chrono::Datelike;
        match self {
            Period::Day => date.to_string(),
            Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
            Period::Quarter => format!("{:04}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
            Period::Year => format!("{:04}", date.year()),
        }
    }
}

/// Rolls consecutive daily books (one programme's, in date order) up into
/// periods: movements and event counts add up, the opening is the first
/// day's, the closing the last day's, `date` holds the period's label, the
/// digest is sha256 over the days' digests, and a period balances when every
/// day in it does. Days outside the given range are not fetched: a period
/// cut by the range covers only its days in it.
pub fn roll_up(days: &[state::DailyBook], period: Period) -> Result<Vec<state::DailyBook>, BooksError> {
    if period == Period::Day {
        return Ok(days.to_vec());
    }
    let mut out: Vec<state::DailyBook> = Vec::new();
    let mut digests: Vec<Sha256> = Vec::new();
    for d in days {
        let date = chrono::NaiveDate::parse_from_str(&d.date, "%Y-%m-%d").unwrap_or_default();
        let label = period.label(date);
        let same = out
            .last()
            .is_some_and(|p| p.date == label && p.programme_id == d.programme_id && p.tenant_id == d.tenant_id);
        if !same {
            out.push(state::DailyBook {
                tenant_id: d.tenant_id.clone(),
                programme_id: d.programme_id.clone(),
                date: label,
                opening_balance: d.opening_balance,
                opening_debt: d.opening_debt,
                opening_pending: d.opening_pending,
                first_position: d.first_position,
                balanced: true,
                ..Default::default()
            });
            digests.push(Sha256::new());
        }
        let p = out.last_mut().expect("pushed");
        let overflow = || {
            BooksError::Overflow(ProgrammeKey { tenant_id: d.tenant_id.clone(), programme_id: d.programme_id.clone() })
        };
        for (t, x) in [
            (&mut p.issued, d.issued),
            (&mut p.spent, d.spent),
            (&mut p.refunded, d.refunded),
            (&mut p.reversed, d.reversed),
            (&mut p.expired, d.expired),
            (&mut p.adjusted_up, d.adjusted_up),
            (&mut p.adjusted_down, d.adjusted_down),
            (&mut p.penalized, d.penalized),
            (&mut p.written_off, d.written_off),
            (&mut p.pending_earned, d.pending_earned),
            (&mut p.pending_released, d.pending_released),
            (&mut p.pending_forfeited, d.pending_forfeited),
            (&mut p.spent_with_cash, d.spent_with_cash),
        ] {
            *t = t.checked_add(x).ok_or_else(overflow)?;
        }
        p.event_count += d.event_count;
        p.orders_points_only = p.orders_points_only.saturating_add(d.orders_points_only);
        p.orders_with_cash = p.orders_with_cash.saturating_add(d.orders_with_cash);
        p.pending = d.pending;
        p.closing_balance = d.closing_balance;
        p.debt = d.debt;
        p.reserved = d.reserved;
        p.liability_cash_minor = d.liability_cash_minor;
        p.points_per_cash_unit = d.points_per_cash_unit;
        if p.ratio_changed_from == 0 {
            p.ratio_changed_from = d.ratio_changed_from;
        }
        if d.last_position.is_some() {
            p.last_position = d.last_position;
        }
        if p.first_position.is_none() {
            p.first_position = d.first_position;
        }
        if !d.balanced {
            p.balanced = false;
            p.mismatch = if p.mismatch.is_empty() {
                format!("{}: {}", d.date, d.mismatch)
            } else {
                format!("{}; {}: {}", p.mismatch, d.date, d.mismatch)
            };
        }
        digests.last_mut().expect("pushed").update(d.digest.as_bytes());
    }
    for (p, h) in out.iter_mut().zip(digests) {
        p.digest = hex(&h.finalize());
    }
    Ok(out)
}

/// Expiry-index rows the forecast reads per page.
const FORECAST_PAGE_ROWS: usize = 4096;

/// Points due to expire per future day (in the programme's time zone), from
/// the balance view's expiring-lots index: (date, points, lots) for every
/// day from `from` on, `days` days long, that has points due.
pub fn expiry_forecast(
    views: &Db,
    programme: &crate::domain::Programme,
    from: chrono::NaiveDate,
    days: u32,
) -> Result<Vec<(chrono::NaiveDate, i64, u64)>, BooksError> {
    let prefix = store::programme_prefix(&programme.tenant_id, &programme.programme_id);
    let start_ms = calendar::start_of_day(programme.time_zone, from).unwrap_or(i64::MIN);
    let end_ms = from
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .and_then(|d| calendar::start_of_day(programme.time_zone, d))
        .unwrap_or(i64::MAX);
    let mut start = prefix.clone();
    start.extend_from_slice(&store::millis_key(start_ms));
    let mut out: Vec<(chrono::NaiveDate, i64, u64)> = Vec::new();
    // The index is read in pages, so a large programme is never held whole.
    loop {
        let rows = views.scan(Cf::Expiring, &prefix, &start, FORECAST_PAGE_ROWS)?;
        let Some((last, _)) = rows.last() else { break };
        let mut next = last.clone();
        next.push(0);
        let full = rows.len() == FORECAST_PAGE_ROWS;
        for (k, v) in rows {
            let at = k
                .get(prefix.len()..)
                .and_then(store::millis_from_key)
                .ok_or(store::StoreError::Layout("an expiring lot's key"))?;
            if at >= end_ms {
                return Ok(out);
            }
            let points = store::views::expiring_points(&v)?;
            let day = calendar::day_to_date(calendar::programme_day(programme.time_zone, at)).unwrap_or(from);
            match out.last_mut() {
                Some((d, p, n)) if *d == day => {
                    *p = p.saturating_add(points);
                    *n += 1;
                }
                _ => out.push((day, points, 1)),
            }
        }
        if !full {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// The columns of a book in exports, in order.
pub const BOOK_COLUMNS: &[&str] = &[
    "tenant_id",
    "programme_id",
    "date",
    "opening_balance",
    "opening_debt",
    "issued",
    "spent",
    "spent_with_cash",
    "orders_points_only",
    "orders_with_cash",
    "refunded",
    "reversed",
    "expired",
    "adjusted_up",
    "adjusted_down",
    "penalized",
    "written_off",
    "closing_balance",
    "debt",
    "reserved",
    "liability_cash_minor",
    "points_per_cash_unit",
    "ratio_changed_from",
    "event_count",
    "first_position",
    "last_position",
    "digest",
    "balanced",
    "mismatch",
];

fn position_text(p: &Option<state::Position>) -> String {
    p.as_ref().map(|p| format!("{}:{}", p.partition, p.offset)).unwrap_or_default()
}

/// A book's values as text, in [`BOOK_COLUMNS`] order.
pub fn book_values(b: &state::DailyBook) -> Vec<String> {
    let n = |x: i64| x.to_string();
    vec![
        b.tenant_id.clone(),
        b.programme_id.clone(),
        b.date.clone(),
        n(b.opening_balance),
        n(b.opening_debt),
        n(b.issued),
        n(b.spent),
        n(b.spent_with_cash),
        b.orders_points_only.to_string(),
        b.orders_with_cash.to_string(),
        n(b.refunded),
        n(b.reversed),
        n(b.expired),
        n(b.adjusted_up),
        n(b.adjusted_down),
        n(b.penalized),
        n(b.written_off),
        n(b.closing_balance),
        n(b.debt),
        n(b.reserved),
        n(b.liability_cash_minor),
        n(b.points_per_cash_unit),
        n(b.ratio_changed_from),
        b.event_count.to_string(),
        position_text(&b.first_position),
        position_text(&b.last_position),
        b.digest.clone(),
        b.balanced.to_string(),
        b.mismatch.clone(),
    ]
}

/// A book as a JSON object with [`BOOK_COLUMNS`] keys (numbers as numbers).
pub fn book_json(b: &state::DailyBook) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in BOOK_COLUMNS.iter().zip(book_values(b)) {
        let value = match v.parse::<i64>() {
            Ok(x) if !matches!(*k, "date" | "tenant_id" | "programme_id" | "digest" | "mismatch") => x.into(),
            _ if *k == "balanced" => (v == "true").into(),
            _ => v.into(),
        };
        m.insert((*k).to_string(), value);
    }
    serde_json::Value::Object(m)
}

/// RFC 4180 CSV with a header row.
pub fn books_csv(books: &[state::DailyBook]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = BOOK_COLUMNS.join(",") + "\r\n";
    for b in books {
        out += &book_values(b).iter().map(|v| field(v)).collect::<Vec<_>>().join(",");
        out += "\r\n";
    }
    out
}

/// A table for people: the main figures, one book per line.
pub fn books_table(books: &[state::DailyBook]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<10} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8} {:>14} {:>7}  {}\n",
        "tenant",
        "programme",
        "date",
        "opening",
        "issued",
        "spent",
        "refunded",
        "reversed",
        "expired",
        "adj+",
        "adj-",
        "penalty",
        "closing",
        "debt",
        "liability",
        "events",
        "balanced"
    );
    for b in books {
        out += &format!(
            "{:<12} {:<12} {:<10} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>8} {:>14} {:>7}  {}\n",
            b.tenant_id,
            b.programme_id,
            b.date,
            b.opening_balance,
            b.issued,
            b.spent,
            b.refunded,
            b.reversed,
            b.expired,
            b.adjusted_up,
            b.adjusted_down,
            b.penalized,
            b.closing_balance,
            b.debt,
            b.liability_cash_minor,
            b.event_count,
            if b.balanced { "yes".to_string() } else { format!("NO: {}", b.mismatch) }
        );
    }
    out
}
