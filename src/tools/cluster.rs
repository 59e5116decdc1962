//! `points-ledger cluster`: the answer of `Cluster/DescribeCluster` as a
//! table (or JSON), one line per instance.

use std::fmt::Write;

use crate::proto as pb;

/// Partition numbers as `0,2,5` (or `-`).
fn list(ps: &[u32]) -> String {
    if ps.is_empty() {
        return "-".into();
    }
    ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

pub fn table(r: &pb::DescribeClusterResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<42} {:<22} {:<16} {:<12}", "INSTANCE", "ADDRESS", "PARTITIONS", "EPOCHS");
    for i in &r.instances {
        let epochs: Vec<String> = i.partition_states.iter().map(|s| s.epoch.to_string()).collect();
        let me = if i.this_instance {
            format!("  <- answered (writes {}, assigned {}, {})", list(&i.writing), list(&i.assigned), i.state)
        } else {
            String::new()
        };
        let epochs = if epochs.is_empty() { "-".into() } else { epochs.join(",") };
        let _ = writeln!(out, "{:<42} {:<22} {:<16} {:<12}{me}", i.instance_id, i.address, list(&i.partitions), epochs);
    }
    if !r.unclaimed.is_empty() {
        let _ = writeln!(out, "unclaimed partitions: {}", list(&r.unclaimed));
    }
    let _ = writeln!(out, "{} partitions, {} instances", r.partitions, r.instances.len());
    out
}

pub fn json(r: &pb::DescribeClusterResponse) -> String {
    let instances: Vec<serde_json::Value> = r
        .instances
        .iter()
        .map(|i| {
            serde_json::json!({
                "instance_id": i.instance_id,
                "address": i.address,
                "partitions": i.partitions,
                "epochs": i.partition_states.iter().map(|s| s.epoch).collect::<Vec<_>>(),
                "this_instance": i.this_instance,
                "assigned": i.assigned,
                "writing": i.writing,
                "state": i.state,
            })
        })
        .collect();
    let v = serde_json::json!({
        "answered_by": r.answered_by,
        "partitions": r.partitions,
        "unclaimed": r.unclaimed,
        "instances": instances,
    });
    format!("{v}\n")
}
