//! `serve` in operation: health and readiness, metrics, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
    key: String,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `serve` on a free port and a new database; reads the demo key it prints.
fn start(name: &str, extra: &[&str]) -> Server {
    start_reading(name, extra, true)
}

/// [`start`]; with `drain` false, standard output is closed once the key is read.
fn start_reading(name: &str, extra: &[&str], drain: bool) -> Server {
    let dir = std::env::temp_dir().join(format!("faultline-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("ops.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "serve",
            "--addr",
            &addr,
            "--db",
            db.to_str().expect("utf-8"),
        ])
        .args(extra)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut key = None;
    for line in lines.by_ref().take(8) {
        let line = line.expect("a line");
        if let Some(value) = line.trim().strip_prefix("export KEY=") {
            key = Some(value.to_owned());
            break;
        }
    }
    // The rest of what serve prints is read, so it never writes to a closed pipe.
    if drain {
        std::thread::spawn(move || lines.for_each(drop));
    }
    Server {
        child,
        addr,
        key: key.expect("serve printed a key"),
        dir,
    }
}

/// One request on its own connection; the whole answer as text.
fn http(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

fn get(addr: &str, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits for the process to exit, at most `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn health_readiness_and_metrics_need_no_key_and_count_what_was_answered() {
    let server = start("metrics", &[]);
    let healthz = get(&server.addr, "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert!(healthz.ends_with("{\"status\":\"ok\"}"), "{healthz}");
    let readyz = get(&server.addr, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.contains("\"database\":\"ok\""), "{readyz}");

    for _ in 0..3 {
        assert!(get(&server.addr, "/nowhere").starts_with("HTTP/1.1 404"));
    }
    assert!(get(&server.addr, "/v1/chatbots").starts_with("HTTP/1.1 401"));
    let listed = http(
        &server.addr,
        &format!(
            "GET /v1/chatbots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            server.key
        ),
    );
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");

    let metrics = get(&server.addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("content-type: text/plain; version=0.0.4"));
    assert!(metrics.contains("faultline_errors_total{code=\"not_found\",status=\"404\"} 3\n"));
    assert!(
        metrics.contains("faultline_errors_total{code=\"missing_api_key\",status=\"401\"} 1\n")
    );
    assert!(metrics.contains("faultline_errors_total{code=\"rate_limited\",status=\"429\"} 0\n"));
    assert!(metrics.contains("faultline_responses_total{status=\"404\"} 3\n"));
    assert!(!metrics.contains(&server.key), "metrics never hold a key");
}

/// Opens a POST whose body is not all sent yet: a request in flight.
fn start_slow_post(server: &Server) -> TcpStream {
    let body = "{\"name\":\"in flight\"}";
    let mut stream = TcpStream::connect(&server.addr).expect("connect");
    let head = format!(
        "POST /v1/chatbots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.key,
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&body.as_bytes()[..5]).expect("part");
    stream
}

#[test]
fn sigterm_stops_accepting_and_lets_a_request_in_flight_finish() {
    let mut server = start("drain", &["--shutdown-timeout", "20"]);
    let mut stream = start_slow_post(&server);
    // Let the server read the head and call the handler.
    std::thread::sleep(Duration::from_millis(300));
    terminate(&server.child);
    // New connections are refused once the server stops accepting.
    let started = Instant::now();
    loop {
        if TcpStream::connect(&server.addr).is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepting 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited with a request in flight"
    );
    stream
        .write_all(&"{\"name\":\"in flight\"}".as_bytes()[5..])
        .expect("rest of the body");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = exit_within(&mut server.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_request_that_never_finishes_is_cut_at_the_shutdown_deadline() {
    let mut server = start("deadline", &["--shutdown-timeout", "1"]);
    let _stream = start_slow_post(&server);
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    terminate(&server.child);
    let status = exit_within(&mut server.child, Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn serve_keeps_serving_when_its_output_is_closed() {
    // As with `faultline serve | head -3`: the lines after the key meet a closed pipe.
    let server = start_reading("closed-stdout", &[], false);
    std::thread::sleep(Duration::from_millis(200));
    let healthz = get(&server.addr, "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
}
