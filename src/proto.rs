//! The generated protobuf types of the three schemas, one module per
//! package: the API (`points.v1`, re-exported here, so `proto::EarnRequest`
//! is the API's), the log's records (`points.log.v1`, converted only by
//! `log::codec`) and stored state (`points.state.v1`, rows of `store` and
//! `finance`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The packages as prost nests them (generated code refers to its
/// neighbours through these paths).
pub mod points {
    pub mod v1 {
        tonic::include_proto!("points.v1");
        include!(concat!(env!("OUT_DIR"), "/points.v1.serde.rs"));
    }
    pub mod log {
        pub mod v1 {
            tonic::include_proto!("points.log.v1");
        }
    }
    pub mod state {
        pub mod v1 {
            tonic::include_proto!("points.state.v1");
        }
    }
}

pub use points::v1::*;

/// The log's records (`points.log.v1`).
pub use points::log::v1 as log;
/// Stored state (`points.state.v1`).
pub use points::state::v1 as state;

/// The log's schema: its `.proto` and its encoded file descriptor set, for
/// consumers outside the service (`points-ledger schema`).
pub const LOG_PROTO: &str = include_str!("../proto/points/log/v1/log.proto");
pub const LOG_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/points_log_descriptor.bin"));

/// The encoded file descriptor set of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("points_descriptor");

/// The gRPC methods of the services in these encoded descriptor sets, as
/// (path, method name): (`/points.v1.PointsLedger/Earn`, `Earn`).
pub fn methods_served(descriptor_sets: &[&[u8]]) -> Vec<(String, String)> {
    use prost::Message;
    let mut methods = Vec::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else { continue };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    methods.push((path, method.name().to_string()));
                }
            }
        }
    }
    methods
}

/// The API's timestamps (`google.protobuf.Timestamp` with its JSON mapping).
pub type Timestamp = pbjson_types::Timestamp;
