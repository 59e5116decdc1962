//! Forwarding (ARCHITECTURE.md, "A cluster on Kafka"): a command for a
//! partition this instance does not write goes, once, to the instance whose
//! claim is the partition's latest, and the caller gets that instance's
//! reply unchanged. A forwarded call carries [`FORWARDED_HEADER`]; an
//! instance that does not write the partition either answers it
//! `UNAVAILABLE` (`PARTITION_MOVING`) and never forwards it again, so a
//! forwarding loop cannot happen.
//!
//! When the instances serve TLS, forwarding is TLS too ([`ForwardTls`]):
//! the owner's certificate is checked against the configured CA, and with
//! mutual TLS this instance presents its own certificate. The owner checks
//! the call again: the caller's bearer token if it sent one, else the
//! forwarding instance's certificate (so a cluster with client
//! certificates gives its instances' certificate a line in the tokens file).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use super::errors::{status, ERROR_DOMAIN};

/// Marks a call one instance forwarded to another (its value names the
/// forwarding instance, for the logs).
pub const FORWARDED_HEADER: &str = "x-points-ledger-forwarded";
/// Longest a forwarded call may take (the owner answers within its own
/// append timeout; this only bounds a hung connection).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to another instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How this instance reaches the others over TLS: PEM bytes, as read from
/// the files `serve` was given (and read again on a reload). No `Debug`: it
/// holds a private key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ForwardTls {
    /// The CA the other instances' certificates are checked against.
    pub ca_pem: Vec<u8>,
    /// This instance's certificate and key, presented to instances that
    /// require client certificates (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Headers of the incoming call that are not passed on.
const HOP_HEADERS: [&str; 4] = ["user-agent", "grpc-timeout", "grpc-accept-encoding", "grpc-encoding"];

/// gRPC paths of the commands.
pub mod path {
    pub const EARN: &str = "/points.v1.PointsLedger/Earn";
    pub const SPEND: &str = "/points.v1.PointsLedger/Spend";
    pub const RESERVE: &str = "/points.v1.PointsLedger/Reserve";
    pub const CAPTURE_RESERVATION: &str = "/points.v1.PointsLedger/CaptureReservation";
    pub const RELEASE_RESERVATION: &str = "/points.v1.PointsLedger/ReleaseReservation";
    pub const REFUND: &str = "/points.v1.PointsLedger/Refund";
    pub const REVERSE_EARN: &str = "/points.v1.PointsLedger/ReverseEarn";
    pub const EXPIRE: &str = "/points.v1.PointsLedger/Expire";
    pub const ADJUST: &str = "/points.v1.PointsLedger/Adjust";
    pub const RECORD_ACTIVITY: &str = "/points.v1.PointsLedger/RecordActivity";
    pub const PREVIEW_ACTIVITY: &str = "/points.v1.PointsLedger/PreviewActivity";
    pub const ADJUST_GROWTH: &str = "/points.v1.PointsLedger/AdjustGrowth";
    pub const RELEASE_PENDING_POINTS: &str = "/points.v1.PointsLedger/ReleasePendingPoints";
    pub const FORFEIT_PENDING_POINTS: &str = "/points.v1.PointsLedger/ForfeitPendingPoints";
    pub const UNHOLD_ACCOUNT: &str = "/points.v1.PointsLedger/UnholdAccount";
    pub const SET_LEVEL: &str = "/points.v1.ProgrammeAdmin/SetLevel";
    pub const APPROVE_ADJUSTMENT: &str = "/points.v1.ProgrammeAdmin/ApproveAdjustment";
    pub const REJECT_ADJUSTMENT: &str = "/points.v1.ProgrammeAdmin/RejectAdjustment";
    pub const SUBMIT_BATCH: &str = "/points.v1.PointsLedger/SubmitBatch";
    pub const FREEZE_ACCOUNT: &str = "/points.v1.ProgrammeAdmin/FreezeAccount";
    pub const UNFREEZE_ACCOUNT: &str = "/points.v1.ProgrammeAdmin/UnfreezeAccount";
}

/// `UNAVAILABLE` with reason `PARTITION_MOVING`: safe to retry with the
/// same request id.
pub fn moving(partition: u32, why: &str) -> Status {
    status(
        Code::Unavailable,
        "PARTITION_MOVING",
        format!("partition {partition} is moving between instances ({why}); retry with the same request_id"),
        None,
    )
}

/// Connections to the other instances, one per address, made on first use.
#[derive(Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
    /// None: plain-text gRPC (the instances serve without TLS).
    tls: RwLock<Option<ForwardTls>>,
}

impl Forwarder {
    /// A forwarder that reaches the other instances over TLS (or plain
    /// text with None).
    pub fn new(tls: Option<ForwardTls>) -> Forwarder {
        Forwarder { channels: Mutex::default(), tls: RwLock::new(tls) }
    }

    /// New TLS settings (a reload): connections made from now on use them;
    /// calls in flight finish on the connections they have.
    pub fn set_tls(&self, tls: Option<ForwardTls>) {
        *self.tls.write().expect("tls lock") = tls;
        self.channels.lock().expect("channels lock").clear();
    }

    /// The endpoint of the instance at `address` (`HOST:PORT`), with TLS
    /// when the instances serve it.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, Status> {
        let bad = |e: &dyn std::fmt::Display| {
            status(Code::Internal, "INTERNAL", format!("cannot reach the owner at {address}: {e}"), None)
        };
        let tls = self.tls.read().expect("tls lock").clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| bad(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config).map_err(|e| bad(&e))?;
        }
        Ok(endpoint)
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = self.endpoint(address)?.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends `message` to `path` on the instance at `address`, with the
    /// caller's metadata (its token) and the forwarded mark. The owner's
    /// answer comes back as it is; failing to reach the owner is
    /// `PARTITION_MOVING`.
    pub async fn unary<Req, Resp>(
        &self,
        address: &str,
        path: &'static str,
        metadata: &MetadataMap,
        me: &str,
        message: Req,
        partition: u32,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel(address)?);
        if let Err(e) = grpc.ready().await {
            return Err(moving(partition, &format!("its owner at {address} cannot be reached: {e}")));
        }
        let mut request = Request::new(message);
        *request.metadata_mut() = metadata.clone();
        for h in HOP_HEADERS {
            request.metadata_mut().remove(h);
        }
        if let Ok(v) = me.parse() {
            request.metadata_mut().insert(FORWARDED_HEADER, v);
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        match grpc.unary(request, PathAndQuery::from_static(path), codec).await {
            Ok(r) => Ok(r),
            Err(s) if from_the_owner(&s) => Err(s),
            Err(s) => {
                // The connection failed: the next call makes a new one.
                self.channels.lock().expect("channels lock").remove(address);
                Err(moving(partition, &format!("its owner at {address} did not answer: {}", s.message())))
            }
        }
    }
}

/// Whether a status is the owner's own answer (every status this service
/// gives carries its ErrorInfo), not the transport's.
fn from_the_owner(s: &Status) -> bool {
    s.get_details_error_info().is_some_and(|i| i.domain == ERROR_DOMAIN)
}

/// Whether this call was forwarded to this instance by another.
pub fn was_forwarded(metadata: &MetadataMap) -> bool {
    metadata.contains_key(FORWARDED_HEADER)
}
