//! Compiles proto/ with protox (pure Rust), so no system protoc is needed.
//! Three schemas, three packages: the API (`points.v1`, served and reflected),
//! the log's records (`points.log.v1`) and stored state (`points.state.v1`).
//! The API's messages also get serde impls in the protobuf JSON mapping.

const API: &[&str] = &[
    "proto/points/v1/common.proto",
    "proto/points/v1/events.proto",
    "proto/points/v1/ledger.proto",
    "proto/points/v1/admin.proto",
    "proto/points/v1/reconciliation.proto",
    "proto/points/v1/cluster.proto",
    "proto/points/v1/feed.proto",
];
const PRIVATE: &[&str] = &["proto/points/log/v1/log.proto", "proto/points/state/v1/state.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in API.iter().chain(PRIVATE) {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection describes the API only.
    let api = protox::compile(API, ["proto"])?;
    std::fs::write(out.join("points_descriptor.bin"), prost::Message::encode_to_vec(&api))?;
    // The log's schema, for consumers outside the service (`schema`).
    let log = protox::compile(["proto/points/log/v1/log.proto"], ["proto"])?;
    std::fs::write(out.join("points_log_descriptor.bin"), prost::Message::encode_to_vec(&log))?;
    let all = protox::compile(API.iter().chain(PRIVATE), ["proto"])?;
    // Maps as BTreeMap: equal contents encode to equal bytes (views and
    // alerts must be byte-identical across replays).
    // The API's Timestamp is pbjson-types' (prost's own has no serde), so
    // the API's messages have the protobuf JSON mapping (snake_case names).
    tonic_prost_build::configure()
        .btree_map(".")
        .extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp")
        .build_server(true)
        .build_client(true)
        .compile_fds(all)?;
    pbjson_build::Builder::new()
        .register_descriptors(&prost::Message::encode_to_vec(&api))?
        .btree_map(["."])
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".points.v1"])?;
    Ok(())
}
