//! Compiles proto/ with protox (pure Rust), so no system protoc is needed.
//! Three schemas, three packages: the API (`points.v1`, served and reflected),
//! the log's records (`points.log.v1`) and stored state (`points.state.v1`).

const API: &[&str] = &[
    "proto/points/v1/common.proto",
    "proto/points/v1/events.proto",
    "proto/points/v1/ledger.proto",
    "proto/points/v1/admin.proto",
    "proto/points/v1/reconciliation.proto",
    "proto/points/v1/cluster.proto",
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
    let all = protox::compile(API.iter().chain(PRIVATE), ["proto"])?;
    // Maps as BTreeMap: equal contents encode to equal bytes (views and
    // alerts must be byte-identical across replays).
    tonic_prost_build::configure().btree_map(".").build_server(true).build_client(true).compile_fds(all)?;
    Ok(())
}
