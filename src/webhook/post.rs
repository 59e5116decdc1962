//! The HTTP client that posts deliveries, and how an attempt fails.

use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Response};

use super::{parse_url, signature, CONNECT_TIMEOUT_MS, DELIVERY_ID_HEADER, REQUEST_TIMEOUT_MS, SIGNATURE_HEADER};

/// Bytes of a refusing receiver's body read, at most, for [`PostError::Status`].
const ERROR_BODY_BYTES_MAX: usize = 4096;
/// Characters of that body kept in the error.
const ERROR_SNIPPET_CHARS_MAX: usize = 200;

/// Why an attempt did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Not sent: the URL or the delivery id cannot be put in a request.
    #[error("invalid delivery: {0}")]
    Invalid(String),
    /// The receiver answered with a status other than 2xx (a redirect
    /// included), and the start of its body, if any.
    #[error("{}", status_text(*.status, .snippet))]
    Status { status: u16, snippet: String },
    /// No connection within the connect timeout, or no whole answer within
    /// the request timeout.
    #[error("timed out")]
    Timeout,
    /// No connection (refused, no such host, a TLS handshake that failed).
    #[error("{0}")]
    Connect(String),
    /// The connection failed after it was made (reset, closed mid-answer).
    #[error("{0}")]
    Transport(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// `HTTP 503 Service Unavailable`, and the body's start after a colon.
fn status_text(status: u16, snippet: &str) -> String {
    let reason = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
    let mut text = match reason {
        Some(reason) => format!("HTTP {status} {reason}"),
        None => format!("HTTP {status}"),
    };
    if !snippet.is_empty() {
        text.push_str(": ");
        text.push_str(snippet);
    }
    text
}

/// Posts deliveries to receivers; one for the whole process (it keeps
/// connections open between deliveries), cheap to clone.
#[derive(Clone, Debug)]
pub struct Poster {
    client: reqwest::Client,
}

impl Poster {
    /// A client over rustls (the webpki roots), with the connect and request
    /// timeouts, following no redirect.
    pub fn new() -> Result<Poster, PostError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("points-ledger/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| PostError::Client(innermost_text(&e)))?;
        Ok(Poster { client })
    }

    /// One attempt at delivering `body` to `url`, signed with `secret`:
    /// `Ok` when the receiver answered 2xx.
    pub async fn post(&self, url: &str, secret: &[u8], delivery_id: &str, body: &[u8]) -> Result<(), PostError> {
        let url = parse_url(url).map_err(|reason| PostError::Invalid(format!("URL: {reason}")))?;
        let id = HeaderValue::from_str(delivery_id)
            .map_err(|_| PostError::Invalid("the delivery id is not a valid header value".into()))?;
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(DELIVERY_ID_HEADER, id)
            .header(SIGNATURE_HEADER, signature(secret, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| failure(&e))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status().as_u16();
        Err(PostError::Status { status, snippet: snippet(response).await })
    }
}

/// The error of a request that got no answer.
fn failure(e: &reqwest::Error) -> PostError {
    if e.is_timeout() {
        PostError::Timeout
    } else if e.is_connect() {
        PostError::Connect(innermost_text(e))
    } else {
        PostError::Transport(innermost_text(e))
    }
}

/// What went wrong at the bottom of `e`'s chain: the first IO error's
/// ("connection refused"), else the last cause's text (reqwest's own says
/// only "error sending request for url").
fn innermost_text(e: &reqwest::Error) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(cause) = last.source() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_text(io);
        }
        last = cause;
    }
    last.to_string()
}

/// A network error by its kind alone ("connection refused", without the OS
/// error's number); any other IO error (a TLS one wrapped, a failed name
/// lookup) by its own text.
fn io_text(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | TimedOut
        | HostUnreachable | NetworkUnreachable | AddrNotAvailable | UnexpectedEof => io.kind().to_string(),
        _ => io.to_string(),
    }
}

/// The start of a refusing receiver's body, on one line: at most
/// [`ERROR_BODY_BYTES_MAX`] bytes read, [`ERROR_SNIPPET_CHARS_MAX`] kept.
/// A body that fails to arrive is left out.
async fn snippet(mut response: Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY_BYTES_MAX - bytes.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().filter(|c| !c.is_control()).take(ERROR_SNIPPET_CHARS_MAX).collect()
}
