//! Logs and traces: the one module that sets up `tracing-subscriber` and
//! knows OpenTelemetry.
//!
//! Logs go to stderr as text or JSON lines (`--log-format`), filtered by
//! `RUST_LOG` (default `info`). With `--otlp-endpoint`, the service's spans
//! are exported over OTLP/gRPC: a call's span (`grpc`, with its method and
//! request id) and, for a command, the writer's span of its batch and the
//! log append under it, all in the call's trace. The spans are at debug
//! level, so without an endpoint they cost a disabled callsite's check.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Keeps the trace exporter running; [`Telemetry::shutdown`] sends what is
/// buffered.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: the last traces could not be sent: {e}");
            }
        }
    }
}

/// The service's name in the traces' resource.
const SERVICE_NAME: &str = "points-ledger";

/// Installs the process's subscriber: logs in `format`, and traces to
/// `otlp_endpoint` when given (call inside the Tokio runtime: the gRPC
/// exporter's channel lives there).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let env = || EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(env()).boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(env()).boxed()
        }
    };
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(Telemetry::default());
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(SERVICE_NAME).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer(SERVICE_NAME);
    // Only this crate's spans become trace spans (its log events stay logs).
    let spans = filter::filter_fn(|m| m.is_span() && m.target().starts_with("points_ledger"));
    let traces = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans);
    tracing_subscriber::registry().with(logs).with(traces).try_init()?;
    Ok(Telemetry { provider: Some(provider) })
}
