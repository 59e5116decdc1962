//! The generated protobuf and gRPC types of `points.v1`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("points.v1");

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("points_descriptor");
