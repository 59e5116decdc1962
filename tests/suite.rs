//! The integration tests, as one test binary: each module is one area of
//! the service, tested from outside (a real socket, RocksDB in temp dirs,
//! the real binary, a real broker on the Kafka run). One binary, not one per
//! file: each links RocksDB and librdkafka, so a binary per file took
//! gigabytes of disk and minutes of linking. `scripts/test` runs it twice,
//! the second time on Kafka for the modules it names.

#[macro_use]
mod common;

mod activities;
mod approvals;
mod audit;
mod audit_log;
mod books;
mod cluster;
mod console;
mod console_browser;
mod faults;
mod feed;
mod fixture;
mod grpc;
mod hostile;
mod hostile_bytes;
mod hostile_kafka;
mod hostile_log;
mod kafka;
mod levels;
mod loadgen;
mod metrics;
mod model;
mod pending;
mod reminders;
mod restart;
mod risk;
mod scopes;
mod secure_defaults;
mod tls;
mod traces;
mod webhook_post;
mod webhooks;
mod what_if;
