//! `points.v1.Cluster`: who writes which partition, as the log's claims
//! say, answered by any instance from what it has read, to admin clients
//! allowed every tenant (`*`) when access control is on.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Access, Caller, Ledger};
use crate::proto as pb;

#[derive(Clone)]
pub struct ClusterService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn describe_cluster(
        &self,
        req: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        // Internal addresses, epochs and offsets of every tenant's partitions.
        self.0.auth.check_every_tenant(&Caller::of(&req), Access::Admin)?;
        Ok(Response::new(self.0.describe_cluster()))
    }
}

impl Ledger {
    /// Every instance a partition's latest claim names, with its
    /// partitions; this instance always, with what it writes and was assigned.
    pub fn describe_cluster(&self) -> pb::DescribeClusterResponse {
        let w = &self.writers;
        let positions = self.positions.borrow().clone();
        let mut by_writer: BTreeMap<String, pb::ClusterInstance> = BTreeMap::new();
        let mut unclaimed = Vec::new();
        for (p, owner) in w.owners().into_iter().enumerate() {
            let Some(owner) = owner else {
                unclaimed.push(p as u32);
                continue;
            };
            let i = by_writer.entry(owner.writer.clone()).or_insert_with(|| pb::ClusterInstance {
                instance_id: owner.writer.clone(),
                address: owner.address.clone(),
                ..Default::default()
            });
            i.partitions.push(p as u32);
            i.partition_states.push(pb::ClusterPartition {
                partition: p as u32,
                epoch: w.epoch_of(p as u32),
                view_next_offset: positions.get(p).copied().unwrap_or(0),
            });
        }
        let me = by_writer.entry(w.writer_id().to_string()).or_insert_with(|| pb::ClusterInstance {
            instance_id: w.writer_id().to_string(),
            address: w.advertise().to_string(),
            ..Default::default()
        });
        let ownership = w.ownership();
        me.this_instance = true;
        me.assigned = ownership.assignment();
        me.writing = ownership.owned();
        me.state = if w.serving() { "SERVING" } else { "STARTING" }.into();
        pb::DescribeClusterResponse {
            instances: by_writer.into_values().collect(),
            answered_by: w.writer_id().to_string(),
            partitions: w.partitions(),
            unclaimed,
        }
    }
}
