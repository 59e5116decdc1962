//! The tools of the binary (`replay`, `verify`, `explain`, `export`,
//! `recon`, `what-if`): each reads a data directory's log (and views or books) without
//! writing to it, so they work beside a running service or after it stopped.
//! `dev-certs` (`dev_certs`) makes development certificates for TLS;
//! `schema` writes the log's schema for consumers outside the service.
//! `main.rs` parses their flags into the options here.

pub mod audit;
pub mod cluster;
pub mod dev_certs;
pub mod export;
pub mod explain;
pub mod recon;
pub mod replay;
pub mod schema;
pub mod verify;
pub mod what_if;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::domain::{AccountKey, Millis};
use crate::log::EventLog;
use crate::programmes::Registry;
use crate::server::LogConfig;

/// Where a tool reads: a data directory and the log it belongs to.
pub struct Source {
    pub data_dir: PathBuf,
    pub log: LogConfig,
    /// Account partitions (the log's, on Kafka; the embedded log finds its own).
    pub partitions: u32,
}

impl Source {
    /// The account log, read only, never creating anything.
    pub fn events(&self) -> anyhow::Result<Box<dyn EventLog>> {
        crate::server::open_events_read_only(&self.log, &self.data_dir, self.partitions)
    }

    /// The control stream (programme rules), read only.
    pub fn control(&self) -> anyhow::Result<Box<dyn EventLog>> {
        crate::server::open_control_read_only(&self.log, &self.data_dir)
    }

    /// Every programme version in the control stream.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        Registry::load(self.control()?.as_ref())
    }

    pub fn views(&self) -> anyhow::Result<crate::store::Db> {
        audit::open_views_read_only(&self.data_dir)
            .with_context(|| format!("opening the views in {}", self.data_dir.display()))
    }

    pub fn books_dir(&self) -> PathBuf {
        self.data_dir.join("books")
    }
}

pub fn rfc3339_millis(flag: &str, t: &str) -> anyhow::Result<Millis> {
    Ok(chrono::DateTime::parse_from_rfc3339(t)
        .with_context(|| format!("{flag} {t}: expected RFC 3339, e.g. 2026-11-11T00:00:00+08:00"))?
        .timestamp_millis())
}

pub fn parse_account(flag: &str, s: &str) -> anyhow::Result<AccountKey> {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        [t, p, m] if !t.is_empty() && !p.is_empty() && !m.is_empty() => Ok(AccountKey::new(t, p, m)),
        _ => anyhow::bail!("{flag} {s}: expected TENANT/PROGRAMME/MEMBER"),
    }
}

pub fn parse_date(flag: &str, s: &str) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| format!("{flag} {s}: expected YYYY-MM-DD"))
}

/// Writes `text` to `output`, or to standard output.
pub fn write_out(output: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `1.23 s` from milliseconds (no floats in the library).
pub fn seconds_text(ms: u128) -> String {
    format!("{}.{:02} s", ms / 1000, (ms % 1000) / 10)
}

/// Per second, from a count and milliseconds.
pub fn per_second(n: u64, ms: u128) -> u128 {
    u128::from(n) * 1000 / ms.max(1)
}
