//! Audit tooling over the views: rebuild them from the log into a fresh
//! directory and compare with the live ones, byte for byte, naming the first
//! key that differs.

use std::path::Path;

use crate::log::arbiter::Admitted;
use crate::log::EventLog;
use crate::projection::{rebuild, Until};
use crate::store::{self, Cf, Db, Row};

/// The first place two view databases disagree.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub column_family: &'static str,
    pub key: String,
    pub live: Option<Vec<u8>>,
    pub rebuilt: Option<Vec<u8>>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match (&self.live, &self.rebuilt) {
            (Some(_), None) => "only in the live views",
            (None, Some(_)) => "missing from the live views",
            _ => "values differ",
        };
        write!(f, "{}: {} ({state})", self.column_family, self.key)
    }
}

/// A readable name for a view key.
pub fn describe_key(cf: Cf, key: &[u8]) -> String {
    match cf {
        Cf::Accounts => store::parse_account_key(key).map(|(a, _)| a.to_string()),
        Cf::Entries => store::parse_account_key(key).and_then(|(a, rest)| {
            let (offset, index) = store::views::entry_place(0, rest)?;
            Some(format!("{a} @ offset {offset} event {index}"))
        }),
        Cf::Meta => String::from_utf8(key.to_vec()).ok(),
        _ => None,
    }
    .unwrap_or_else(|| crate::hex(key))
}

/// The first differing row of two databases in `cfs`, column family by
/// column family.
pub fn first_difference(live: &Db, rebuilt: &Db, cfs: &[Cf]) -> Result<Option<Difference>, store::StoreError> {
    for &cf in cfs {
        let mut a = live.rows(cf).peekable();
        let mut b = rebuilt.rows(cf).peekable();
        loop {
            let (x, y): (Option<Row>, Option<Row>) = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(Err(_)), _) => return Err(a.next().expect("peeked").expect_err("an error")),
                (_, Some(Err(_))) => return Err(b.next().expect("peeked").expect_err("an error")),
                (Some(Ok((ka, _))), Some(Ok((kb, _)))) if ka == kb => (a.next().transpose()?, b.next().transpose()?),
                (Some(Ok((ka, _))), Some(Ok((kb, _)))) if ka < kb => (a.next().transpose()?, None),
                (Some(Ok(_)), None) => (a.next().transpose()?, None),
                _ => (None, b.next().transpose()?),
            };
            let same = matches!((&x, &y), (Some((_, va)), Some((_, vb))) if va == vb);
            if !same {
                let key = x.as_ref().or(y.as_ref()).map(|(k, _)| k.clone()).expect("a row on one side");
                return Ok(Some(Difference {
                    column_family: cf.name(),
                    key: describe_key(cf, &key),
                    live: x.map(|(_, v)| v),
                    rebuilt: y.map(|(_, v)| v),
                }));
            }
        }
    }
    Ok(None)
}

/// Rebuilds the views into a temporary directory up to exactly the
/// positions the live views have reached, and compares. Returns the records
/// folded and the first difference, if any.
pub fn verify(log: &dyn EventLog, live: &Db) -> anyhow::Result<(u64, Option<Difference>)> {
    let positions: Vec<u64> = (0..log.partitions()).map(|p| store::read_position(live, p)).collect::<Result<_, _>>()?;
    let scratch = tempfile::tempdir()?;
    let (rebuilt, folded) =
        rebuild(log, scratch.path(), Until { offsets: Some(&positions), ..Until::default() }, |_| {})?;
    // The views only: the writers' idempotency records, due index and
    // issuance are not views (a rebuild of the views writes none).
    let cfs = store::VIEW_DIGEST_CFS;
    if rebuilt.digest_of(cfs)? == live.digest_of(cfs)? {
        return Ok((folded, None));
    }
    Ok((folded, first_difference(live, &rebuilt, cfs)?))
}

/// Opens a data directory's views for reading, beside a running service if
/// there is one.
pub fn open_views_read_only(data_dir: &Path) -> anyhow::Result<Db> {
    Ok(Db::open_read_only(&data_dir.join("views"), store::VIEW_CFS)?)
}

/// One step of an account's history.
pub struct Step {
    pub offset: u64,
    /// The rules the record was decided under.
    pub programme_version: u64,
    pub at: crate::domain::Millis,
    pub request_id: String,
    pub event: crate::domain::Event,
    /// The account right after this event.
    pub after: crate::domain::Account,
}

/// An account's history from the log (its partition, from offset zero), with
/// the state after each event, up to `as_of` if given.
pub fn explain(
    log: &dyn EventLog,
    account: &crate::domain::AccountKey,
    as_of: Option<crate::domain::Millis>,
    as_of_offset: Option<u64>,
) -> anyhow::Result<Vec<Step>> {
    let partition = crate::log::record::partition_for(account, log.partitions());
    let mut end = log.end_offset(partition)?;
    if let Some(o) = as_of_offset {
        end = end.min(o.saturating_add(1));
    }
    let mut reader = log.reader(partition, 0)?;
    let mut arbiter = crate::log::arbiter::Arbiter::default();
    let home = crate::log::arbiter::Home { partition, partitions: log.partitions() };
    let mut state = crate::domain::Account::default();
    let mut steps = Vec::new();
    loop {
        let entries = crate::log::read_towards(reader.as_mut(), end, 4096)?;
        if entries.is_empty() {
            break;
        }
        for e in entries {
            let at = crate::log::record::Position { partition, offset: e.offset };
            let r = match arbiter.admit_bytes(&e.payload, home) {
                Admitted::Record(r) => r,
                Admitted::Quarantined(q) => {
                    crate::log::arbiter::report("explain", at, &q.why);
                    continue;
                }
                Admitted::Claim(_) | Admitted::Released(_) | Admitted::Void => continue,
            };
            if &r.account != account {
                continue;
            }
            if as_of.is_some_and(|t| r.at > t) {
                return Ok(steps);
            }
            // The same decision as the views': a record that would break the
            // account is skipped (its state depends on its own records only).
            if let Err(why) = crate::domain::admissible(&state, &r.events) {
                crate::log::arbiter::report("explain", at, &format!("account {account}: {why}"));
                continue;
            }
            for event in r.events {
                state.apply(&event);
                steps.push(Step {
                    offset: e.offset,
                    programme_version: r.programme_version,
                    at: r.at,
                    request_id: r.request_id.clone(),
                    event,
                    after: state.clone(),
                });
            }
        }
    }
    Ok(steps)
}
