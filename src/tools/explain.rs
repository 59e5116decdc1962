//! `explain`: an account's events in order, with the running balance, the
//! level and the lots after each, as of an instant or a log position.

use super::Source;
use crate::domain::{AccountKey, Event, Millis, ProgrammeKey};

/// Why an activity was worth what it was: each rule that applied, with
/// its multipliers and what its limits cut.
fn why(event: &Event) -> Option<String> {
    let Event::ActivityRecorded { activity, applied, .. } = event else { return None };
    let rules: Vec<String> = applied
        .iter()
        .map(|a| {
            let ms: Vec<String> = a.multipliers.iter().map(|m| format!("{} {}%", m.source, m.percent)).collect();
            let cut = if a.capped_points > 0 {
                format!(", {} cut by its daily limit", a.capped_points)
            } else {
                String::new()
            };
            let ms = if ms.is_empty() { String::new() } else { format!(" ({})", ms.join(", ")) };
            format!("rule {}: {} points, {} growth{ms}{cut}", a.rule_id, a.points, a.growth)
        })
        .collect();
    Some(format!("'{}' worth: {}", activity.action, rules.join("; ")))
}

pub fn run(
    source: &Source,
    key: &AccountKey,
    as_of: Option<Millis>,
    as_of_position: Option<u64>,
) -> anyhow::Result<()> {
    let log = source.events()?;
    let registry = source.registry()?;
    let programme = ProgrammeKey { tenant_id: key.tenant_id.clone(), programme_id: key.programme_id.clone() };
    let steps = super::audit::explain(log.as_ref(), key, as_of, as_of_position)?;
    let level = |version: u64, growth: i64| {
        registry.version(&programme, version).map(|p| p.level_for(growth).to_string()).unwrap_or_default()
    };
    println!(
        "{:>8}  {:<24} {:<28} {:<20} {:>8} {:>10} {:>9} {:>7} {:>8} {:<8}  lots",
        "offset", "at (UTC)", "request", "event", "delta", "available", "reserved", "debt", "growth", "level"
    );
    for s in &steps {
        let at = chrono::DateTime::from_timestamp_millis(s.at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let lots: Vec<String> = s.after.lots_fefo().iter().map(|(id, l)| format!("{id}={}", l.remaining)).collect();
        println!(
            "{:>8}  {:<24} {:<28} {:<20} {:>8} {:>10} {:>9} {:>7} {:>8} {:<8}  {}",
            s.offset,
            at,
            if s.request_id.is_empty() { "(scheduler)" } else { &s.request_id },
            s.event.name(),
            s.event.net_delta(),
            s.after.available(),
            s.after.reserved(),
            s.after.debt,
            s.after.growth,
            level(s.programme_version, s.after.growth),
            lots.join(" ")
        );
        if let Some(why) = why(&s.event) {
            println!("{:>8}  {why}", "");
        }
    }
    let last = steps.last().map(|s| s.after.clone()).unwrap_or_default();
    println!(
        "{key}: {} events; available {}, reserved {}, debt {}, growth {}{}",
        steps.len(),
        last.available(),
        last.reserved(),
        last.debt,
        last.growth,
        if last.earning_frozen || last.spending_frozen {
            format!(" (frozen: earning {}, spending {})", last.earning_frozen, last.spending_frozen)
        } else {
            String::new()
        }
    );
    if let Err(v) = last.check_invariants_fully() {
        anyhow::bail!("invariant violated: {v}");
    }
    Ok(())
}
