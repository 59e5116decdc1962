//! The `bench` subcommand: a load generator that drives a real server over
//! gRPC (`loadgen`) and the floors it measures in the same run (`floors`).
//! Part of the binary only, not of the service's library: it is a gRPC
//! client, it measures with floats, and it names RocksDB and librdkafka.

pub mod floors;
pub mod loadgen;
