//! Calendar arithmetic in a programme's time zone: the programme day and lot
//! expiry. Pure functions of their arguments; the caller passes the time in.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone};
use chrono_tz::Tz;

use super::{Millis, Programme, ValidityRounding};

const DAY_MS: i64 = 86_400_000;

/// The programme day of an instant: days since 1970-01-01 counted on the
/// calendar of the time zone.
pub fn programme_day(tz: Tz, at: Millis) -> i64 {
    let local = tz.timestamp_millis_opt(at).single().map(|t| t.date_naive());
    let date = local.unwrap_or_else(|| DateTime::from_timestamp_millis(at).unwrap_or_default().date_naive());
    days_since_epoch(date)
}

pub fn days_since_epoch(date: NaiveDate) -> i64 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")).num_days()
}

/// The date of a programme day (the inverse of [`programme_day`]'s day count).
pub fn day_to_date(day: i64) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::days(day))
}

/// The first instant of a local date in the zone (DST gaps move it forward).
pub fn start_of_day(tz: Tz, date: NaiveDate) -> Option<Millis> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => Some(t.timestamp_millis()),
        LocalResult::Ambiguous(a, _) => Some(a.timestamp_millis()),
        // A DST gap at midnight: the day starts at the first instant that exists.
        LocalResult::None => (1..=4)
            .filter_map(|h| tz.from_local_datetime(&date.and_hms_opt(h, 0, 0)?).earliest())
            .map(|t| t.timestamp_millis())
            .next(),
    }
}

/// When a lot earned at `earned_at` stops being spendable under the programme's
/// validity policy; `None` means never. Points are spendable while
/// `now < expires_at`: an end-of-period rounding yields the first instant of
/// the next period in the programme's zone.
pub fn lot_expiry(programme: &Programme, earned_at: Millis) -> Option<Millis> {
    if programme.validity_days == 0 {
        return None;
    }
    let base = earned_at.checked_add(i64::from(programme.validity_days).checked_mul(DAY_MS)?)?;
    let (months, tz) = match programme.validity_rounding {
        ValidityRounding::None => return Some(base),
        ValidityRounding::EndOfMonth => (1, programme.time_zone),
        ValidityRounding::EndOfQuarter => (3, programme.time_zone),
        ValidityRounding::EndOfYear => (12, programme.time_zone),
    };
    let local = tz.timestamp_millis_opt(base).single()?.date_naive();
    // First month of the period that holds `local`, then the period after it.
    let month0 = local.month0();
    let period_start_month0 = month0 - month0 % months;
    let total_months = local.year() * 12 + period_start_month0 as i32 + months as i32;
    let next = NaiveDate::from_ymd_opt(total_months.div_euclid(12), total_months.rem_euclid(12) as u32 + 1, 1)?;
    start_of_day(tz, next)
}

/// Adds whole days to an instant (for windows counted in days).
pub fn add_days(at: Millis, days: i64) -> Millis {
    at.saturating_add(days.saturating_mul(DAY_MS))
}

/// The calendar month of a programme day: year × 12 + month − 1.
pub fn month_of_day(day: i64) -> i64 {
    day_to_date(day).map_or(0, |d| i64::from(d.year()) * 12 + i64::from(d.month0()))
}

/// The programme day of a month's first day (the inverse of [`month_of_day`]).
pub fn month_first_day(month: i64) -> Option<i64> {
    let year = i32::try_from(month.div_euclid(12)).ok()?;
    NaiveDate::from_ymd_opt(year, month.rem_euclid(12) as u32 + 1, 1).map(days_since_epoch)
}
