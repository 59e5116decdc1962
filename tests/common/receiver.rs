//! A webhook receiver for tests: a real HTTP server (axum) on 127.0.0.1:0
//! that records every request it gets and answers each with one fixed
//! answer. Stopped when dropped.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the receiver answers to every request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
}

impl Answer {
    /// `status`, with no header of its own and an empty body.
    pub fn status(status: u16) -> Answer {
        Answer { status: StatusCode::from_u16(status).unwrap(), headers: Vec::new(), body: String::new() }
    }

    pub fn with_body(mut self, body: &str) -> Answer {
        self.body = body.to_string();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((HeaderName::from_static(name), HeaderValue::from_str(value).unwrap()));
        self
    }
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Whether the receiver took it (answered 2xx).
    pub ok: bool,
}

impl Received {
    /// The value of header `name`, which must be there once, as text.
    pub fn header(&self, name: &str) -> &str {
        let mut values = self.headers.get_all(name).iter();
        let value = values.next().unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers));
        assert!(values.next().is_none(), "{name} sent more than once");
        value.to_str().unwrap()
    }
}

#[derive(Clone)]
struct Shared {
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Vec<Received>>>,
}

pub struct Receiver {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub base: String,
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Serving, on a port of its own, before it returns.
    pub async fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let shared = Shared { answer: answer.clone(), received: received.clone() };
        let app = Router::new().fallback(record).with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { base, answer, received, task }
    }

    /// Answers `answer` to every request from now on.
    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request so far, in the order they came.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let path = uri.path().to_string();
    let answer = shared.answer.lock().unwrap().clone();
    let ok = answer.status.is_success();
    shared.received.lock().unwrap().push(Received { method, path, headers, body: body.to_vec(), ok });
    (answer.status, answer.headers.into_iter().collect(), answer.body)
}
