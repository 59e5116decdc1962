//! Compiles proto/ with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/points/v1/common.proto", "proto/points/v1/events.proto", "proto/points/v1/ledger.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("points_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Maps as BTreeMap: equal contents encode to equal bytes (views and
    // alerts must be byte-identical across replays).
    tonic_prost_build::configure().btree_map(".").build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
