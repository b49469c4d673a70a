//! The proxy forwards, cuts, stalls and restores, against a local echo server.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_testkit::{Mode, TcpProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits to conclude that nothing arrives (an absence, not a speed).
const QUIET: Duration = Duration::from_millis(300);
/// How long a test waits for something that must arrive.
const PATIENCE: Duration = Duration::from_secs(5);

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.expect("write");
    let mut answer = vec![0; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    answer
}

#[tokio::test]
async fn forwards_both_ways_and_counts_connections() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    assert_eq!(proxy.mode(), Mode::Open);
    let mut first = TcpStream::connect(proxy.addr()).await.expect("connect");
    let mut second = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"hello").await, b"hello");
    assert_eq!(round_trip(&mut second, b"world").await, b"world");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut first, &big).await, big);
    assert_eq!(proxy.accepted(), 2);
    assert_ne!(proxy.addr(), proxy.target());
}

#[tokio::test]
async fn a_cut_drops_connections_and_refuses_new_ones_until_restored() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut before, b"one").await, b"one");

    proxy.cut();
    assert_eq!(proxy.mode(), Mode::Cut);
    // The open connection ends: end-of-file or a reset, within the patience.
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(PATIENCE, before.read(&mut byte))
        .await
        .expect("the connection ends in time");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    assert!(TcpStream::connect(proxy.addr()).await.is_err());

    proxy.restore().expect("restore");
    assert_eq!(proxy.mode(), Mode::Open);
    let mut after = TcpStream::connect(proxy.addr())
        .await
        .expect("connect after restore");
    assert_eq!(round_trip(&mut after, b"two").await, b"two");
}

#[tokio::test]
async fn a_stall_holds_bytes_back_until_restored() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut open, b"a").await, b"a");

    proxy.stall().expect("stall");
    assert_eq!(proxy.mode(), Mode::Stalled);
    open.write_all(b"held").await.expect("write is buffered");
    let mut answer = [0u8; 4];
    assert!(
        tokio::time::timeout(QUIET, open.read_exact(&mut answer))
            .await
            .is_err(),
        "nothing may cross a stalled proxy"
    );
    // A new connection is accepted but held too.
    let mut late = TcpStream::connect(proxy.addr())
        .await
        .expect("accepted while stalled");
    late.write_all(b"late").await.expect("write");
    let mut late_answer = [0u8; 4];
    assert!(
        tokio::time::timeout(QUIET, late.read_exact(&mut late_answer))
            .await
            .is_err()
    );

    proxy.restore().expect("restore");
    tokio::time::timeout(PATIENCE, open.read_exact(&mut answer))
        .await
        .expect("delivered after restore")
        .expect("read");
    assert_eq!(&answer, b"held");
    tokio::time::timeout(PATIENCE, late.read_exact(&mut late_answer))
        .await
        .expect("delivered after restore")
        .expect("read");
    assert_eq!(&late_answer, b"late");
}

#[tokio::test]
async fn a_stall_after_a_cut_listens_again() {
    let proxy = TcpProxy::start(echo_server().await).await.expect("proxy");
    proxy.cut();
    assert!(TcpStream::connect(proxy.addr()).await.is_err());
    proxy.stall().expect("stall");
    let mut held = TcpStream::connect(proxy.addr())
        .await
        .expect("accepted while stalled");
    held.write_all(b"x").await.expect("write");
    proxy.restore().expect("restore");
    let mut first = [0u8; 1];
    tokio::time::timeout(PATIENCE, held.read_exact(&mut first))
        .await
        .expect("delivered after restore")
        .expect("read");
    assert_eq!(&first, b"x");
    assert_eq!(round_trip(&mut held, b"y").await, b"y");
}

/// While cut, the proxy keeps its port: nothing else can bind it (so `restore` cannot fail
/// because another socket took the port meanwhile), and connections are still refused.
#[tokio::test]
async fn a_cut_keeps_the_port() {
    let echo = echo_server().await;
    let proxy = TcpProxy::start(echo).await.expect("a proxy");
    // Cut before the accept loop ever ran, then again while it listens.
    for round in 0..2 {
        proxy.cut();
        let mut taken = false;
        for _ in 0..100 {
            // Without SO_REUSEADDR, as an outgoing connection picking its port would be.
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            if socket.bind(proxy.addr()).is_err() {
                taken = true;
                break;
            }
            drop(socket);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(taken, "round {round}: the port stays bound while cut");
        assert!(
            TcpStream::connect(proxy.addr()).await.is_err(),
            "and refuses"
        );
        proxy.restore().expect("listens again on its own port");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connects");
        assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
    }
}
