//! Connections served by `faultline_axum::serve`: responses delivered byte for byte, slow and
//! idle connections closed, a cap on how many are open. Time is tokio's paused clock.
#![allow(clippy::unwrap_used)] // a broken fixture is the test failing

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use faultline::Catalog;
use faultline_axum::{Contract, ContractListener, Faultline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LOOKALIKE: &str =
    "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

fn contract() -> Contract {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Contract::new(Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
}

async fn start(
    configure: impl FnOnce(
        ContractListener<tokio::net::TcpListener>,
    ) -> ContractListener<tokio::net::TcpListener>,
) -> SocketAddr {
    let faultline = Faultline::new(contract()).timeout(Duration::from_secs(3600));
    let contract = Arc::clone(faultline.contract());
    let app = faultline.install(
        Router::new()
            .route("/hello", get(|| async { "hi" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    "done"
                }),
            )
            .route("/lookalikes", get(|| async { LOOKALIKE.repeat(12_000) })),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = configure(ContractListener::new(tcp, contract));
    tokio::spawn(async move { faultline_axum::serve(listener, app).await.unwrap() });
    addr
}

/// Reads until the server closes the connection; the time it took.
async fn until_closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

/// Sends one keep-alive request and reads its whole answer (bodies here are short).
async fn request(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n")
        || !answer.ends_with(b"hi") && !answer.ends_with(b"done")
    {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let addr = start(|l| l.header_read_timeout(Duration::from_secs(10))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let waited = until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_trickled_a_byte_a_second_is_cut_off_at_the_header_timeout() {
    let addr = start(|l| l.header_read_timeout(Duration::from_secs(5))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        // A closed connection shows as a read of nothing.
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => panic!("the trickled request was answered"),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(sent < head.len(), "the whole head got through");
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(7),
        "{elapsed:?}"
    );
}

/// A connection to a server with a 5 s header-read timeout and a 30 s idle timeout, kept
/// alive after one answered request.
async fn kept_alive_after_one_answer() -> TcpStream {
    let addr = start(|l| {
        l.header_read_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(30))
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert!(
        request(&mut stream, "/hello")
            .await
            .starts_with("HTTP/1.1 200")
    );
    stream
}

#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let mut stream = kept_alive_after_one_answer().await;
    // Idle for less than the idle timeout (but more than the header timeout): still usable.
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        request(&mut stream, "/hello")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let waited = until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_started_after_a_long_idle_wait_still_gets_only_the_header_timeout() {
    let mut stream = kept_alive_after_one_answer().await;
    // Idle past the header timeout (the timer fires and is moved on to the idle timeout's
    // end), then a head that never ends: cut 5 s after its first byte, not at the idle end.
    tokio::time::sleep(Duration::from_secs(20)).await;
    stream.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    let waited = until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_is_not_cut_by_the_connection_timeouts() {
    let addr = start(|l| {
        l.header_read_timeout(Duration::from_secs(2))
            .idle_timeout(Duration::from_secs(2))
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let answer = request(&mut stream, "/slow").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_get_the_catalog_503_and_are_closed() {
    let addr = start(|l| l.max_connections(2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(
            request(&mut stream, "/hello")
                .await
                .starts_with("HTTP/1.1 200")
        );
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"error\":\"service_unavailable\""),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{answer}"
    );
    // A closed connection frees its place.
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = [0u8; 12];
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        if stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the freed place was never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_of_lookalike_status_lines_read_slowly_arrives_byte_for_byte() {
    let addr = start(|l| l).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /lookalikes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 700];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            // A slow reader: the server's writes are cut wherever the window is full.
            if answer.len() % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("no hang");
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, LOOKALIKE.repeat(12_000));
}
