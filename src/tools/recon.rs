//! `recon`: the daily books per programme, folded afresh from the log up to
//! where the balance view stands and checked against it (so it also proves
//! the books from the log alone, with the service stopped); roll-ups by
//! period; and the expiry forecast from the balance view's expiry index.

use std::path::PathBuf;

use anyhow::Context;

use super::{write_out, Source};
use crate::domain::Programme;
use crate::finance::books;
use crate::finance::reports::{self, Period};
use crate::programmes::Registry;
use crate::proto::state;

/// Most days one `recon` prints.
pub const RECON_DAYS_MAX: i64 = 3660;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookFormat {
    Table,
    Csv,
    Json,
    /// Needs an output file.
    Parquet,
}

pub struct Options {
    /// The first day (in each programme's time zone) and the last, inclusive.
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub tenant: Option<String>,
    pub programme: Option<String>,
    pub format: BookFormat,
    pub output: Option<PathBuf>,
    pub period: Period,
    /// Instead of books: points due to expire per day for this many days.
    pub expiry_forecast_days: Option<u32>,
}

impl Options {
    fn takes(&self, p: &Programme) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == p.tenant_id)
            && self.programme.as_deref().is_none_or(|x| x == p.programme_id)
    }
}

/// Prints the books (or the forecast); false when a book does not balance
/// or the books disagree with the balance view.
pub fn run(source: &Source, opts: &Options) -> anyhow::Result<bool> {
    if opts.to < opts.from {
        anyhow::bail!("--to {} is before --date {}", opts.to, opts.from);
    }
    if (opts.to - opts.from).num_days() >= RECON_DAYS_MAX {
        anyhow::bail!("at most {RECON_DAYS_MAX} days at once");
    }
    let events = source.events()?;
    let registry = source.registry()?;
    if let Some(days) = opts.expiry_forecast_days {
        return expiry_forecast(source, opts, &registry, days);
    }
    let views = match source.views() {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("no balance view to check against ({e:#}); folding the whole log");
            None
        }
    };
    let scratch = tempfile::tempdir()?;
    let (db, mismatches) =
        crate::finance::reconciler::rebuild(events.as_ref(), &registry, views.as_ref(), &scratch.path().join("books"))?;
    let programmes: Vec<_> = registry.all_current().into_iter().filter(|p| opts.takes(p)).collect();
    if programmes.is_empty() {
        anyhow::bail!("no programme matches (tenant {:?}, programme {:?})", opts.tenant, opts.programme);
    }
    let mut rows = Vec::new();
    for p in &programmes {
        let mut days = Vec::new();
        let mut d = opts.from;
        while d <= opts.to {
            days.push(books::book_for_date(&db, &registry, p, events.partitions(), d)?);
            d = d.succ_opt().context("date out of range")?;
        }
        rows.extend(reports::roll_up(&days, opts.period)?);
    }
    print_books(&rows, opts)?;
    let unbalanced = rows.iter().filter(|b| !b.balanced).count();
    for m in &mismatches {
        eprintln!("MISMATCH: {m}");
    }
    if unbalanced > 0 {
        eprintln!("{unbalanced} book(s) do not balance");
    }
    if mismatches.is_empty() && unbalanced == 0 {
        eprintln!("{} book(s); all balance and agree with the balance view", rows.len());
    }
    Ok(mismatches.is_empty() && unbalanced == 0)
}

fn print_books(rows: &[state::DailyBook], opts: &Options) -> anyhow::Result<()> {
    let text = match opts.format {
        BookFormat::Parquet => {
            let path = opts.output.as_ref().context("--format parquet needs --output FILE")?;
            super::export::books_parquet(rows, path).with_context(|| format!("writing {}", path.display()))?;
            return Ok(());
        }
        BookFormat::Json => {
            rows.iter()
                .map(|b| serde_json::to_string(&reports::book_json(b)))
                .collect::<Result<Vec<_>, _>>()?
                .join("\n")
                + "\n"
        }
        BookFormat::Csv => reports::books_csv(rows),
        BookFormat::Table => reports::books_table(rows),
    };
    write_out(opts.output.as_deref(), &text)
}

/// `recon --expiry-forecast-days N`: points due per day, per programme.
fn expiry_forecast(source: &Source, opts: &Options, registry: &Registry, days: u32) -> anyhow::Result<bool> {
    let views = source.views().context("the forecast reads the balance view")?;
    let mut rows = Vec::new();
    for p in registry.all_current().into_iter().filter(|p| opts.takes(p)) {
        for (date, points, lots) in reports::expiry_forecast(&views, &p, opts.from, days)? {
            rows.push((p.tenant_id.clone(), p.programme_id.clone(), date.to_string(), points, lots));
        }
    }
    let text = match opts.format {
        BookFormat::Json => rows
            .iter()
            .map(|(t, p, d, points, lots)| {
                serde_json::json!({
                    "tenant_id": t, "programme_id": p, "date": d, "points": points, "lots": lots,
                })
                .to_string()
                    + "\n"
            })
            .collect::<String>(),
        BookFormat::Csv => {
            let mut t = "tenant_id,programme_id,date,points,lots\r\n".to_string();
            for (tenant, p, d, points, lots) in &rows {
                t += &format!("{tenant},{p},{d},{points},{lots}\r\n");
            }
            t
        }
        BookFormat::Table => {
            let mut t =
                format!("{:<12} {:<12} {:<10} {:>12} {:>8}\n", "tenant", "programme", "date", "expiring", "lots");
            for (tenant, p, d, points, lots) in &rows {
                t += &format!("{tenant:<12} {p:<12} {d:<10} {points:>12} {lots:>8}\n");
            }
            t
        }
        BookFormat::Parquet => anyhow::bail!("the expiry forecast prints table, csv or json"),
    };
    write_out(opts.output.as_deref(), &text)?;
    Ok(true)
}
