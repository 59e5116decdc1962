//! Traces: the real binary with `--otlp-endpoint` exports, to an OTLP
//! receiver on 127.0.0.1 run by the test, one trace per command covering
//! the call, the writer's batch and the log append.

use crate::common;

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

/// Keeps every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for r in req.into_inner().resource_spans {
            for s in r.scope_spans {
                spans.extend(s.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver() -> (Receiver, std::net::SocketAddr) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
    });
    (receiver, addr)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn each_command_is_one_trace_through_the_call_the_writer_and_the_log() {
    let (receiver, addr) = start_receiver().await;
    let endpoint = format!("http://{addr}");
    let served = common::tls::Served::start(&["--otlp-endpoint".as_ref(), endpoint.as_ref()]);
    served.wait_plain_text().await;
    let url = format!("http://127.0.0.1:{}", served.addr.port());
    let mut admin =
        points_ledger::proto::programme_admin_client::ProgrammeAdminClient::connect(url.clone()).await.unwrap();
    let cfg = points_ledger::proto::ConfigureProgrammeRequest {
        request_id: "cfg".into(),
        programme: Some(common::programme()),
        operator: "ops".into(),
    };
    admin.configure_programme(cfg).await.unwrap();
    let mut ledger = points_ledger::proto::points_ledger_client::PointsLedgerClient::connect(url).await.unwrap();
    for i in 0..3 {
        ledger.earn(common::earn(&format!("trace-{i}"), "m1", 10)).await.unwrap();
    }
    // A clean stop sends the spans still buffered.
    assert!(served.stop());
    let spans = receiver.0.lock().unwrap().clone();
    for i in 0..3 {
        let id = format!("trace-{i}");
        let call = spans
            .iter()
            .find(|s| s.name == "Earn" && attribute(s, "request_id").as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| {
                panic!("no call span for {id} among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
            });
        let batch = spans
            .iter()
            .find(|s| s.name == "writer.batch" && s.parent_span_id == call.span_id)
            .unwrap_or_else(|| panic!("no writer span under the call of {id}"));
        let append = spans.iter().find(|s| s.name == "log.append" && s.parent_span_id == batch.span_id);
        assert!(append.is_some(), "no append span under the writer span of {id}");
        assert_eq!(batch.trace_id, call.trace_id);
        assert!(call.parent_span_id.is_empty(), "the call's span is the trace's root");
    }
    let traces: std::collections::HashSet<_> =
        spans.iter().filter(|s| s.name == "Earn").map(|s| s.trace_id.clone()).collect();
    assert_eq!(traces.len(), 3, "one trace per command");
}

#[test]
fn log_lines_are_json_objects_with_log_format_json() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_points-ledger"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    // Stopped by its pid.
    child.kill().unwrap();
    child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(v["fields"]["message"].is_string(), "{line}");
}
