//! An event-sourced points ledger for loyalty programmes.
//!
//! The layers, in reading order (ARCHITECTURE.md has the bird's-eye view and
//! the code map):
//!
//! - [`domain`]: the business, pure: `decide` and `Account::apply`.
//! - [`log`]: the partitioned log (embedded or Kafka), its records, their
//!   encoding and the log's arbitration of writers.
//! - [`store`]: RocksDB, key layouts, stored accounts and snapshots.
//! - [`programmes`]: the control stream and the registry of programme rules.
//! - [`writer`]: the writers (one per partition) as a state machine, the
//!   scheduler, the programme-wide cap.
//! - [`clock`]: "now", read by the writers, never in the domain.
//! - [`projection`]: the views folded from the log, and the queries on them.
//! - [`finance`]: daily books, the reconciliation consumer, the risk view.
//! - [`api`]: the gRPC services, validation, conversion, errors, auth.
//! - [`feed`]: a programme's events from any position, as the views commit
//!   them (the feed's subscriptions and the webhooks read it).
//! - [`webhook`]: signed HTTP deliveries and the worker that sends them.
//! - [`server`]: wiring everything together and serving it.
//! - [`tools`]: replay, verify, explain, export and recon (the binary's
//!   subcommands).
//! - [`proto`]: the generated code of the three schemas (API, log, state).

pub mod domain;
pub mod evict;
pub mod log;
pub mod store;
pub mod clock;
pub mod programmes;
pub mod writer;
pub mod projection;
pub mod finance;
pub mod api;
pub mod server;
pub mod metrics;
pub mod telemetry;
pub mod admin;
pub mod tools;
pub mod feed;
pub mod webhook;
pub mod proto;

/// The hash map of the hot paths (accounts by key, request ids in a batch):
/// foldhash, randomly seeded per process, instead of SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Lower-case hex of `bytes` (digests, chain heads, page tokens).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
