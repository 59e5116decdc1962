//! `schema`: the log's schema for consumers outside the service, who read
//! the event topic with their own Kafka clients: `points/log/v1/log.proto`
//! and its file descriptor set (`points-log-v1.binpb`), from this binary.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes the two files into `out` (created if need be); returns their paths.
pub fn run(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let proto_dir = out.join("points/log/v1");
    std::fs::create_dir_all(&proto_dir).with_context(|| format!("creating {}", proto_dir.display()))?;
    let files = [
        (proto_dir.join("log.proto"), crate::proto::LOG_PROTO.as_bytes()),
        (out.join("points-log-v1.binpb"), crate::proto::LOG_FILE_DESCRIPTOR_SET),
    ];
    for (path, bytes) in &files {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}
