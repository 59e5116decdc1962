//! Levels and reminders after a rules change: when a programme's version
//! changes its levels, level window, growth model or reminder days, each
//! writer's scheduler walks the programme's
//! accounts of its partition, a bounded number a tick, and gives each a
//! `Tick` command, whose decision evaluates the level (a `LevelChanged` when
//! it differs) and puts the account's due instant in the index afresh (a
//! reminder window that grew falls due sooner). So levels and reminders
//! follow the rules without waiting for each member's next command, and the
//! events are in the log like any other.
//!
//! A partition's progress per programme (the version walked, and the member
//! the walk is at) is a row of the due column family, after every due row
//! of the partition (the due index never reads it), written with the batch
//! that decided the ticks.

use crate::domain::{AccountKey, Programme, ProgrammeKey};
use crate::log::record::partition_for;
use crate::store::{self, Cf, Db, StoreError};

use crate::programmes::Registry;

/// Rows to write: (key, value).
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

use crate::store::writer::{levels_progress_key, LevelsProgress as Progress};

/// Whether two versions decide levels alike (a change of growth model or of
/// the RFM rules changes the growth levels follow, and when evaluations fall
/// due: the walk ticks every account, which settles its level and its due
/// instant afresh).
fn same_levels(a: &Programme, b: &Programme) -> bool {
    a.levels == b.levels
        && a.level_window_days == b.level_window_days
        && a.growth_model == b.growth_model
        && a.rfm == b.rfm
        && a.reminder_days == b.reminder_days
}

/// Accounts of `partition` whose level to evaluate now, at most `max`
/// looked at across programmes, and the progress rows to write with the
/// batch that decides them.
pub(super) fn accounts_to_evaluate(
    db: &Db,
    registry: &Registry,
    partition: u32,
    partitions: u32,
    max: usize,
) -> Result<(Vec<AccountKey>, Rows), StoreError> {
    let (mut accounts, mut rows, mut budget) = (Vec::new(), Vec::new(), max);
    for p in registry.all_current() {
        if budget == 0 {
            break;
        }
        let key = levels_progress_key(partition, &p.key());
        // A row that does not read starts the walk over (and is written anew).
        let stored = db.get(Cf::Due, &key)?.and_then(|b| {
            Progress::decode(&b).inspect_err(|e| tracing::warn!(error = %e, "level walk progress unreadable")).ok()
        });
        let mut progress = match stored {
            Some(s) if s.version == p.version && s.next.is_none() => continue,
            Some(s) if s.version == p.version => s,
            // A new version: walk again only if it decides levels otherwise.
            Some(s) if registry.version(&p.key(), s.version).is_some_and(|done| same_levels(&done, &p)) => {
                Progress { version: p.version, next: None }
            }
            // A first sight walks when there are levels to evaluate, or when
            // the programme's first version decided otherwise (accounts may
            // be due under it).
            None if p.levels.is_empty()
                && registry.version(&p.key(), 1).is_some_and(|first| same_levels(&first, &p)) =>
            {
                Progress { version: p.version, next: None }
            }
            _ => Progress { version: p.version, next: Some(Vec::new()) },
        };
        if progress.next.is_some() {
            progress.next = walk(db, &p.key(), progress.next.take().unwrap_or_default(), &mut budget, |a| {
                if partition_for(&a, partitions) == partition {
                    accounts.push(a);
                }
            })?;
        }
        rows.push((key, progress.encode()));
    }
    Ok((accounts, rows))
}

/// Visits the programme's accounts from `from` (a member key; empty: the
/// first), one seek each, while `budget` lasts; returns where to go on
/// (`None`: past the last).
fn walk(
    db: &Db,
    programme: &ProgrammeKey,
    from: Vec<u8>,
    budget: &mut usize,
    mut visit: impl FnMut(AccountKey),
) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = store::programme_prefix(&programme.tenant_id, &programme.programme_id);
    let mut start = if from.is_empty() { prefix.clone() } else { from };
    while *budget > 0 {
        let Some((k, _)) = db.scan(Cf::Accounts, &prefix, &start, 1)?.pop() else { return Ok(None) };
        *budget -= 1;
        let Some((account, _)) = store::parse_account_key(&k) else { return Ok(None) };
        // Past the account and its piece rows (its key, then a tag).
        start = store::accounts::after_account_rows(&account);
        visit(account);
    }
    Ok(Some(start))
}
