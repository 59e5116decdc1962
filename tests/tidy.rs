//! Keeps the boundaries honest (as TigerBeetle's tidy.zig does): the domain
//! never touches IO, the clock or wire/storage types; only `store` knows
//! RocksDB; only the gRPC-facing modules know tonic.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn code_of(path: &Path) -> String {
    // Comments may name anything; only code counts.
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rel(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_string_lossy().replace('\\', "/")
}

#[test]
fn the_domain_is_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    for file in sources(&root) {
        let code = code_of(&file);
        for banned in [
            "std::fs",
            "std::net",
            "std::time::",
            "SystemTime",
            "Instant",
            "Utc::now",
            "Local::now",
            "rand::",
            "prost",
            "tonic",
            "rocksdb",
            "rdkafka",
            "serde",
            "tokio",
            "println!",
            "tracing::",
        ] {
            assert!(
                !code.contains(banned),
                "{} uses `{banned}`: the domain does no IO, reads no clock and knows no wire types",
                rel(&file)
            );
        }
    }
}

#[test]
fn each_library_stays_in_its_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 3] = [
        ("rocksdb", &["src/store.rs"]),
        ("tonic", &["src/api/", "src/server.rs", "src/proto.rs", "src/loadgen.rs"]),
        ("rdkafka", &["src/log/kafka"]),
    ];
    for file in sources(&root) {
        let (name, code) = (rel(&file), code_of(&file));
        for (lib, allowed) in rules {
            if code.contains(&format!("{lib}::")) || code.contains(&format!("use {lib}")) {
                assert!(
                    allowed.iter().any(|a| name.starts_with(a)),
                    "{name} uses {lib}, which only {allowed:?} may know"
                );
            }
        }
    }
}

#[test]
fn no_floats_near_points() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in sources(&root.join("src")) {
        let name = rel(&file);
        if name == "src/loadgen.rs" || name == "src/main.rs" {
            continue; // latencies and rates, not money
        }
        let code = code_of(&file);
        assert!(!code.contains("f64") && !code.contains("f32"), "{name} uses floats");
    }
    let protos = ["common.proto", "events.proto", "ledger.proto"];
    for p in protos {
        let text = std::fs::read_to_string(root.join("proto/points/v1").join(p)).unwrap();
        assert!(!text.contains("double ") && !text.contains("float "), "{p} has a float field");
    }
}
