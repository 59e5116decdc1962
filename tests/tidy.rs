//! Keeps the boundaries honest (as TigerBeetle's tidy.zig does): the domain
//! never touches IO, the clock or wire/storage types; each library stays in
//! the module that owns its boundary; no float comes near points; functions
//! stay short enough to read; and no comment or document points at a file
//! that does not exist.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "fixtures" {
                out.extend(files(&p, ext));
            }
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    files(dir, "rs")
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
    p.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/")
}

#[test]
fn the_domain_is_pure() {
    for file in sources(&root().join("src/domain")) {
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

/// Which modules may name each boundary's library. The load generator
/// (`bench/`, part of the binary only) is a gRPC client that measures
/// RocksDB and the Kafka producer directly.
const BOUNDARIES: [(&str, &[&str]); 10] = [
    // Stored rows, the log's records and the API's Timestamps are encoded
    // in one place each.
    ("prost", &["src/proto.rs", "src/log/codec.rs", "src/store/", "src/api/"]),
    // The console calls the gRPC handlers in process (a client of them).
    ("tonic", &["src/api/", "src/server.rs", "src/server/", "src/proto.rs", "src/admin/console/", "bench/"]),
    ("rocksdb", &["src/store/", "bench/"]),
    ("rdkafka", &["src/log/kafka/", "bench/"]),
    // The listener's TLS (and tokio_rustls, rustls_pki_types): certificates
    // read, handshakes, client identities.
    ("rustls", &["src/server/tls.rs"]),
    ("x509_parser", &["src/server/tls.rs"]),
    // Development certificates.
    ("rcgen", &["src/tools/dev_certs.rs"]),
    // The metrics' recorder and its Prometheus rendering.
    ("metrics_exporter_prometheus", &["src/metrics.rs"]),
    // The admin listener's HTTP server.
    ("axum", &["src/admin/", "src/server.rs"]),
    // The console's pages.
    ("maud", &["src/admin/console/"]),
];

#[test]
fn each_library_stays_in_its_module() {
    let mut all = sources(&root().join("src"));
    all.extend(sources(&root().join("bench")));
    for file in all {
        let (name, code) = (rel(&file), code_of(&file));
        for (lib, allowed) in BOUNDARIES {
            let names_it = code.contains(&format!("{lib}::"))
                || code.contains(&format!("use {lib}"))
                || (lib == "rustls" && (code.contains("rustls_") || code.contains("_rustls")))
                || (lib == "prost" && (code.contains("prost_types") || code.contains("pbjson")));
            if names_it {
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
    for file in sources(&root().join("src")) {
        let name = rel(&file);
        // Flags only; metric values (the exporter's type, never a sum of points).
        if name == "src/main.rs" || name == "src/metrics.rs" {
            continue;
        }
        let code = code_of(&file);
        assert!(!code.contains("f64") && !code.contains("f32"), "{name} uses floats");
    }
    for file in files(&root().join("proto"), "proto") {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("double ") && !text.contains("float "), "{} has a float field", rel(&file));
    }
}

/// Where bytes may be decoded into numbers: `store/` (every stored key and
/// row), `log/` (the log's own files and records), and the API's page
/// tokens, which callers hand back and are no stored layout.
const BYTES_DECODED_IN: [&str; 3] = ["src/store/", "src/log/", "src/api/"];

#[test]
fn stored_layouts_are_decoded_only_in_store() {
    let mut outside = Vec::new();
    for file in sources(&root().join("src")) {
        let name = rel(&file);
        if BYTES_DECODED_IN.iter().any(|home| name.starts_with(home)) {
            continue;
        }
        for line in code_of(&file).lines().filter(|l| l.contains("from_be_bytes") || l.contains("from_le_bytes")) {
            outside.push(format!("{name}: {}", line.trim()));
        }
    }
    assert!(
        outside.is_empty(),
        "decode stored rows with a function of store/ (errors, not panics):\n{}",
        outside.join("\n")
    );
}

/// Longest function body, in lines, before it must be split into named
/// phases.
const FUNCTION_LINES_MAX: usize = 80;

/// Functions allowed to be longer, each with why.
const LONG_FUNCTIONS: &[(&str, &str, &str)] = &[
    // One arm per event type; splitting it would scatter one mapping.
    ("src/log/codec.rs", "event_to_wire", "one arm per event type"),
    ("src/log/codec.rs", "event_from_wire", "one arm per event type"),
    ("src/api/convert.rs", "event_to_api", "one arm per event type"),
    ("src/domain/account.rs", "apply", "one arm per event type: the fold reads best whole"),
    ("src/api/validate.rs", "programme", "one check per field of a programme, in field order"),
    ("src/finance/books.rs", "daily_book", "sums every field of the partials, in field order"),
    ("src/domain/fingerprint.rs", "fingerprint", "one arm per command type, fed in a fixed order"),
];

/// (file, function, lines) of every function longer than the limit.
fn long_functions(file: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let is_fn = ["fn ", "pub fn ", "pub(super) fn ", "pub(crate) fn ", "async fn ", "pub async fn "]
            .iter()
            .chain(["pub(super) async fn ", "const fn ", "pub const fn "].iter())
            .any(|p| trimmed.starts_with(p));
        if !is_fn {
            i += 1;
            continue;
        }
        let indent = line.len() - trimmed.len();
        let name = trimmed.split("fn ").nth(1).unwrap_or("").split(['(', '<']).next().unwrap_or("").to_string();
        // The body ends at the first line at the same indentation that
        // closes it.
        let close = " ".repeat(indent) + "}";
        match (i + 1..lines.len()).find(|&j| lines[j] == close) {
            Some(end) if !lines[i].trim_end().ends_with(';') => {
                if end - i + 1 > FUNCTION_LINES_MAX {
                    out.push((name, end - i + 1));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn functions_stay_short() {
    let mut all = sources(&root().join("src"));
    all.extend(sources(&root().join("bench")));
    let mut too_long = Vec::new();
    for file in all {
        let name = rel(&file);
        if name.ends_with("/tests.rs") {
            continue; // given/when/then scenarios
        }
        for (f, lines) in long_functions(&file) {
            if !LONG_FUNCTIONS.iter().any(|(file, func, _)| *file == name && *func == f) {
                too_long.push(format!("{name}: {f} has {lines} lines (at most {FUNCTION_LINES_MAX})"));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "split these into named steps, or say why not in LONG_FUNCTIONS:\n{}",
        too_long.join("\n")
    );
}

/// Every file name a comment or document mentions (a word ending in one of
/// the three extensions, with or without its folders).
fn mentioned_files(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c))) {
        let word = word.trim_matches(|c: char| c == '.' || c == '/');
        if [".rs", ".md", ".proto"].iter().any(|ext| word.ends_with(ext)) && !word.starts_with("http") {
            out.push(word.to_string());
        }
    }
    out
}

#[test]
fn documents_name_only_files_that_exist() {
    let mut names: Vec<String> = Vec::new();
    let mut all = Vec::new();
    for ext in ["rs", "md", "proto"] {
        all.extend(files(root(), ext));
    }
    for f in &all {
        names.push(rel(f));
    }
    // A name or path, from the root or as the tail of one.
    let exists = |m: &str| names.iter().any(|n| n == m || n.ends_with(&format!("/{m}")));
    let mut missing = Vec::new();
    // The benchmarks' working log is a diary: it names files as they were.
    for f in all.iter().filter(|f| !rel(f).ends_with("docs/benchmarks-log.md")) {
        let text = std::fs::read_to_string(f).unwrap();
        let prose: String = if f.extension().is_some_and(|e| e == "rs" || e == "proto") {
            text.lines().filter(|l| l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
        } else {
            text
        };
        for m in mentioned_files(&prose) {
            if !exists(&m) {
                missing.push(format!("{} names {m}, which is not in the repository", rel(f)));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The integration tests are one binary (`autotests = false`): a file in
/// `tests/` that `tests/suite.rs` does not name would never be compiled.
#[test]
fn every_test_file_is_a_module_of_the_suite() {
    let suite = std::fs::read_to_string(root().join("tests/suite.rs")).unwrap();
    for e in std::fs::read_dir(root().join("tests")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.extension().is_some_and(|x| x == "rs") && name != "suite" && name != "tidy" {
            assert!(suite.lines().any(|l| l == format!("mod {name};")), "tests/suite.rs does not name tests/{name}.rs");
        }
    }
}

/// The Kafka half of `scripts/test` picks the suite's modules by filter
/// (`grpc::` ...): a filter naming no module would run nothing, silently.
#[test]
fn every_module_the_kafka_half_filters_on_is_in_the_suite() {
    let suite = std::fs::read_to_string(root().join("tests/suite.rs")).unwrap();
    let script = std::fs::read_to_string(root().join("scripts/test")).unwrap();
    let filters: Vec<&str> = script.split_whitespace().filter_map(|w| w.strip_suffix("::")).collect();
    assert!(filters.len() >= 10, "the Kafka half's filters: {filters:?}");
    for name in filters {
        assert!(
            suite.lines().any(|l| l == format!("mod {name};")),
            "scripts/test filters on {name}::, not a module of the suite"
        );
    }
}
