//! An event-sourced points ledger for loyalty programmes.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod accounts;
pub mod api;
pub mod audit;
pub mod books;
pub mod codec;
pub mod domain;
pub mod export;
pub mod loadgen;
pub mod log;
pub mod programmes;
pub mod projector;
pub mod proto;
pub mod record;
pub mod risk;
pub mod server;
pub mod store;
pub mod writer;

/// The hash map of the hot paths (accounts by key, request ids in a batch):
/// foldhash, randomly seeded per process, instead of SipHash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
