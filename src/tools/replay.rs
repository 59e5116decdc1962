//! `replay`: every view rebuilt from offset zero into a fresh directory
//! (balances into DIR/views, books into DIR/books), optionally up to an
//! offset or an instant, with the digests of what it built.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{per_second, seconds_text, Source};
use crate::domain::Millis;
use crate::projection::{rebuild, Until};

/// Which views a replay builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Views {
    All,
    /// Accounts, statements, expiry index.
    Balances,
    /// Daily books, risk view, alerts.
    Books,
}

pub struct Options {
    pub into: PathBuf,
    pub until_position: Option<u64>,
    pub until_time: Option<Millis>,
    pub views: Views,
}

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// `[#########.........]  45%  12345/27000 records  8123 records/s`
fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
    format!(
        "[{}{}] {percent:>3}%  {done}/{total} records  {} records/s   ",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        per_second(done, elapsed.as_millis())
    )
}

/// A progress callback that redraws `label`'s line at most every
/// [`PROGRESS_EVERY`].
fn progress(label: &'static str, total: u64, started: Instant) -> impl FnMut(u64) {
    let mut last_print = started;
    move |n| {
        if last_print.elapsed() >= PROGRESS_EVERY {
            last_print = Instant::now();
            eprint!("\r{label} {}", progress_line(n, total, started.elapsed()));
        }
    }
}

pub fn run(source: &Source, opts: Options) -> anyhow::Result<()> {
    if opts.into.exists() {
        anyhow::bail!("{} exists: replay builds into a fresh directory", opts.into.display());
    }
    let log = source.events()?;
    // At most this many records (fewer with --until-time).
    let mut total = 0u64;
    for p in 0..log.partitions() {
        let end = log.end_offset(p)?;
        total += opts.until_position.map_or(end, |u| u.min(end));
    }
    let mut outputs = Vec::new();
    // The books take the views' word for the records they skip, so a replay
    // of the books alone folds the views too, into a scratch directory.
    let scratch = tempfile::tempdir()?;
    let views_into = match opts.views {
        Views::Books => scratch.path().join("views"),
        Views::All | Views::Balances => opts.into.join("views"),
    };
    let started = Instant::now();
    let until = Until { offset: opts.until_position, time: opts.until_time, offsets: None };
    let (views, folded) = rebuild(log.as_ref(), &views_into, until, progress("views", total, started))?;
    eprintln!("\rviews {}", progress_line(folded, total.max(folded), started.elapsed()));
    if opts.views != Views::Books {
        outputs.push((views_into, None, folded, started.elapsed()));
    }
    if opts.views != Views::Balances {
        let registry = source.registry()?;
        let into = opts.into.join("books");
        let started = Instant::now();
        let (db, folded) = crate::finance::reconciler::replay(
            log.as_ref(),
            &registry,
            &views,
            &into,
            opts.until_position,
            opts.until_time,
            progress("books", total, started),
        )?;
        eprintln!("\rbooks {}", progress_line(folded, total.max(folded), started.elapsed()));
        outputs.push((into, Some(db), folded, started.elapsed()));
    }
    for (into, db, folded, took) in outputs {
        let db = db.as_ref().unwrap_or(&views);
        let ms = took.as_millis();
        println!(
            "replayed {folded} records into {} in {} ({} records/s)",
            into.display(),
            seconds_text(ms),
            per_second(folded, ms)
        );
        for (cf, digest, rows) in db.digest()? {
            println!("  {cf:<10} {rows:>10} rows  sha256 {digest}");
        }
    }
    Ok(())
}
