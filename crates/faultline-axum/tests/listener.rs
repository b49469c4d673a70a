//! Requests hyper refuses before any service runs still get catalog errors.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use std::io::{Read, Write};
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use faultline::{Catalog, Profile};
use faultline_axum::{Contract, ContractListener, Faultline};
use serde_json::Value;

fn contract() -> Contract {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Contract::new(Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
}

async fn start(contract: Contract) -> std::net::SocketAddr {
    start_with(
        contract,
        Router::new().route("/hello", get(|| async { "hi" })),
    )
    .await
}

/// Serves `routes` inside the faultline stack behind the contract listener.
async fn start_with(contract: Contract, routes: Router) -> std::net::SocketAddr {
    let faultline = Faultline::new(contract);
    let contract = Arc::clone(faultline.contract());
    let app = faultline.install(routes);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        faultline_axum::serve(ContractListener::new(tcp, contract), app)
            .await
            .unwrap();
    });
    addr
}

/// Sends raw bytes on a fresh connection and reads until the server closes it.
async fn raw(addr: std::net::SocketAddr, bytes: Vec<u8>) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

fn split(answer: &str) -> (u16, String, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_default()
        .to_owned();
    (
        status,
        id,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn unreadable_requests_get_catalog_errors() {
    let addr = start(contract()).await;
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "too many headers",
            format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "request_headers_too_large",
        ),
        (
            "one huge header",
            format!(
                "GET /hello HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(600_000)
            )
            .into_bytes(),
            431,
            "request_headers_too_large",
        ),
        (
            "not HTTP",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "bad header line",
            b"GET /hello HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "URI too long",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            400,
            "malformed_request",
        ),
    ];
    for (name, bytes, status, code) in cases {
        let answer = raw(addr, bytes).await;
        let (got, id, body) = split(&answer);
        assert_eq!(got, status, "{name}: {answer}");
        assert_eq!(body["error"], code, "{name}");
        assert!(id.starts_with("req_"), "{name}");
        assert_eq!(body["request_id"], id.as_str(), "{name}");
        assert!(answer.contains("content-type: application/json"), "{name}");
    }
    // The server keeps answering, and ordinary requests are untouched.
    let ok = raw(
        addr,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("hi"));
}

#[tokio::test]
async fn keep_alive_connections_carry_several_answers() {
    let addr = start(contract().with_profile(Profile::Problem)).await;
    let two = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = raw(addr, two.to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 404"));
    assert!(answer.contains("application/problem+json"));
}

#[tokio::test]
async fn a_refusal_after_a_good_request_on_the_same_connection_is_a_catalog_error() {
    let addr = start(contract()).await;
    let bytes =
        b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n";
    let answer = raw(addr, bytes.to_vec()).await;
    let second = &answer[answer.find("HTTP/1.1 400").expect("a 400 follows the 200")..];
    let (status, _, body) = split(second);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("malformed_request"))
    );
}

/// A layer that counts how often it wraps a service.
#[derive(Clone)]
struct CountingLayer(Arc<std::sync::atomic::AtomicUsize>);

impl<S> tower::Layer<S> for CountingLayer {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        inner
    }
}

#[tokio::test]
async fn route_layers_are_built_once_not_per_request() {
    let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = start_with(
        contract(),
        Router::new().route(
            "/hello",
            get(|| async { "hi" }).route_layer(CountingLayer(Arc::clone(&built))),
        ),
    )
    .await;
    let get = |_| {
        raw(
            addr,
            b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        )
    };
    assert!(get(()).await.starts_with("HTTP/1.1 200"));
    let after_first = built.load(std::sync::atomic::Ordering::Relaxed);
    for () in [(); 5] {
        assert!(get(()).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(
        built.load(std::sync::atomic::Ordering::Relaxed),
        after_first,
        "a route layer was built again for a request"
    );
}
