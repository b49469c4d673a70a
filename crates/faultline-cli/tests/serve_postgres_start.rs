//! `serve --database-url` started while PostgreSQL is not reachable: it waits (with backoff,
//! up to `--database-wait`), logging each failed attempt without the password, comes up when
//! PostgreSQL does, and exits with one clear line when the wait runs out. PostgreSQL is made
//! unreachable with a TCP proxy in front of it (the machine's server is never touched).
//! Also: quotas in PostgreSQL failing are a 503 and counted in `/metrics`.
//! Needs `FAULTLINE_TEST_POSTGRES_URL`; skipped (and passing) without it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_postgres::testing::TestDatabase;
use faultline_testkit::TcpProxy;

/// A password the trust-authenticated test server ignores, and no log may show.
const PASSWORD: &str = "s3cret-never-logged";

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `postgres://postgres:PASSWORD@proxy/db`.
fn url_with_password(db: &TestDatabase, proxy: &TcpProxy) -> String {
    db.url_via(proxy.addr()).replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    )
}

fn serve(url: &str, addr: &str, wait_secs: u64) -> Child {
    let dir = std::env::temp_dir().join(format!("faultline-pg-start-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", addr, "--no-limits", "--db"])
        .arg(dir.join("keys.db"))
        .args(["--database-url", url])
        .args(["--database-wait", &wait_secs.to_string()])
        .args(["--database-timeout-ms", "500"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills `child` (if still running) and returns everything it wrote.
fn output(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text).unwrap();
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut text).unwrap();
    }
    text
}

async fn status_of(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_postgresql_and_comes_up_when_it_does() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    proxy.cut();
    let addr = free_addr();
    let mut child = serve(&url_with_password(&db, &proxy), &addr, 30);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve exited while PostgreSQL was down"
    );
    let restored = Instant::now();
    proxy.restore().unwrap();
    loop {
        if status_of(&addr, "/readyz").await == Some(200) {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "serve did not come up after PostgreSQL did"
        );
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("ready {:?} after PostgreSQL came back", restored.elapsed());
    assert_eq!(status_of(&addr, "/healthz").await, Some(200));
    let logs = output(child);
    let attempts = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("PostgreSQL not reachable at start-up"))
        .count();
    // Cut for about 1.2 s with waits of 0.1, 0.2, 0.4, 0.8 s: at least three failed attempts.
    assert!(attempts >= 3, "{attempts} warnings in:\n{logs}");
    assert!(!logs.contains(PASSWORD), "the password was logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_gives_up_after_the_wait_with_one_clear_line() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    proxy.cut();
    let url = url_with_password(&db, &proxy);
    for wait in [0, 1] {
        let started = Instant::now();
        let mut child = serve(&url, &free_addr(), wait);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(wait + 10),
                "serve --database-wait {wait} did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        assert_eq!(status.code(), Some(2), "--database-wait {wait}");
        assert!(took >= Duration::from_secs(wait), "{took:?}");
        let logs = output(child);
        assert!(!logs.contains(PASSWORD), "the password was shown:\n{logs}");
        let error: Vec<&str> = logs.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(error.len(), 1, "{logs}");
        assert!(
            error[0].contains("PostgreSQL") && error[0].contains(&format!("waiting {wait} s")),
            "{logs}"
        );
        let warnings = logs.lines().filter(|l| l.contains("WARN")).count();
        if wait == 0 {
            assert_eq!(warnings, 0, "no retry with --database-wait 0:\n{logs}");
        } else {
            assert!(warnings >= 2, "{logs}");
        }
    }
}

/// Runs `faultline keys create` on `url`; the key.
fn create_key(url: &str, org: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", org, "--scopes", "all"])
        .args(["--database-url", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One GET with a key: the status and the body.
async fn get(addr: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

/// The value of the metric line that starts with `name` in `/metrics` text (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Quotas in PostgreSQL: when PostgreSQL is cut, `--limits-on-failure closed` answers the
/// catalog's 503 with `Retry-After` (the key is still cached), and `/metrics` counts the
/// failure as a store error and as a failed-closed limiter decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_store_failure_is_a_503_and_counted_in_metrics() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let key = create_key(&db.url(), "acme");
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let addr = free_addr();
    let dir = std::env::temp_dir().join(format!("faultline-pg-quota-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", &addr, "--db"])
        .arg(dir.join("keys.db"))
        .args(["--database-url", &db.url_via(proxy.addr())])
        .args([
            "--database-timeout-ms",
            "500",
            "--limits-on-failure",
            "closed",
        ])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while status_of(&addr, "/readyz").await != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(&addr, "/v1/chatbots", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (_, before) = get(&addr, "/metrics", None).await;

    proxy.cut();
    let (status, body) = get(&addr, "/v1/chatbots", Some(&key)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("service_unavailable"), "{body}");
    let (_, after) = get(&addr, "/metrics", None).await;
    let stores = "faultline_store_errors_total{kind=\"unavailable\"}";
    assert_eq!(
        metric(&after, stores),
        metric(&before, stores) + 1,
        "{after}"
    );
    let closed =
        "faultline_limiter_decisions_total{policy=\"monthly_requests\",outcome=\"failed_closed\"}";
    assert_eq!(
        metric(&after, closed),
        metric(&before, closed) + 1,
        "{after}"
    );

    proxy.restore().unwrap();
    let restored = Instant::now();
    loop {
        let (status, _) = get(&addr, "/v1/chatbots", Some(&key)).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            restored.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(output(child));
    let _ = std::fs::remove_dir_all(&dir);
}
