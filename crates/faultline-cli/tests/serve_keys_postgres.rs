//! Two `serve` processes with their keys on one PostgreSQL: a key revoked through the HTTP API
//! of A, or an organisation deactivated with `faultline orgs deactivate --database-url`, is
//! refused by B within a second (measured and printed), although B had the key cached.
//! Needs `FAULTLINE_TEST_POSTGRES_URL`; skipped (and passing) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_postgres::testing::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `serve` process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `serve` with its keys on `database_url`; with `redis` (a URL and a key prefix), limits and
/// invalidations go through that Redis, else it serves without limits.
fn serve(db: &Path, database_url: &str, redis: Option<(&str, &str)>) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
    command
        .args(["serve", "--addr", &addr, "--db"])
        .arg(db)
        .args(["--database-url", database_url]);
    match redis {
        Some((url, prefix)) => command
            .args(["--redis-url", url])
            .env("FAULTLINE_REDIS_PREFIX", prefix),
        None => command.arg("--no-limits"),
    };
    let child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    Server { child, addr }
}

async fn wait_ready(server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("serve exited early: {status}");
        }
        if let Ok((status, _)) = send(&server.addr, "GET", "/readyz", None).await
            && status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request on its own connection: the status and the body.
async fn send(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    if let Some(key) = key {
        request.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Runs the `faultline` command; its standard output and error.
fn faultline(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("faultline runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "faultline {args:?}: {stderr}");
    (stdout, stderr)
}

/// `faultline keys create` on PostgreSQL: the key's id and the key.
fn create_key(url: &str, org: &str, scopes: &str) -> (String, String) {
    let (stdout, stderr) = faultline(&[
        "keys",
        "create",
        "--database-url",
        url,
        "--org",
        org,
        "--scopes",
        scopes,
    ]);
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .expect("the key's id")
        .to_owned();
    (id, stdout.trim().to_owned())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("faultline-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Polls `addr` with `key` until it is refused with `code`; how long that took.
async fn refused_within(addr: &str, key: &str, code: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = send(addr, "GET", "/v1/chatbots", Some(key)).await.unwrap();
        if status != 200 {
            assert!(body.contains(code), "{status}: {body}");
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_one_serve_is_refused_by_the_other_within_a_second() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    revocation_between_two_serves(&pg, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_redis_pub_sub() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    let redis = std::env::var("FAULTLINE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if std::net::TcpStream::connect(redis.trim_start_matches("redis://")).is_err() {
        eprintln!("skipped: no Redis at {redis}");
        return;
    }
    let prefix = format!("fltest-keys-{}", std::process::id());
    revocation_between_two_serves(&pg, Some((&redis, &prefix))).await;
    // The limit buckets of this test's prefix go.
    let pool =
        faultline_redis::RedisPool::new(&redis, faultline_redis::PoolOptions::default()).unwrap();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = pool
            .query(
                faultline_redis::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("*{prefix}*"))
                    .arg("COUNT")
                    .arg(500),
            )
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = pool
                .query(faultline_redis::redis::cmd("DEL").arg(&keys))
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

async fn revocation_between_two_serves(pg: &TestDatabase, redis: Option<(&str, &str)>) {
    let url = pg.url();
    let dir = temp_dir(if redis.is_some() {
        "keys-pg-redis"
    } else {
        "keys-pg"
    });
    // Keys are created before either server starts: the CLI migrates the database itself.
    let (_, admin) = create_key(&url, "acme", "all");
    let (victim_id, victim) = create_key(&url, "acme", "chatbots:read");
    // Polling goes faster than the free tier allows.
    faultline(&[
        "orgs",
        "set-tier",
        "acme",
        "enterprise",
        "--database-url",
        &url,
    ]);
    let (mut a, mut b) = (
        serve(&dir.0.join("a.db"), &url, redis),
        serve(&dir.0.join("b.db"), &url, redis),
    );
    wait_ready(&mut a).await;
    wait_ready(&mut b).await;
    // Both have the key cached now (for 10 s).
    for server in [&a, &b] {
        let (status, body) = send(&server.addr, "GET", "/v1/chatbots", Some(&victim))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }

    let start = Instant::now();
    let (status, body) = send(
        &a.addr,
        "POST",
        &format!("/v1/api_keys/{victim_id}/revoke"),
        Some(&admin),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let delay =
        start.elapsed() + refused_within(&b.addr, &victim, "revoked", Duration::from_secs(1)).await;
    eprintln!("a key revoked through A was refused by B after {delay:?}");
    assert!(delay < Duration::from_secs(1));

    // An organisation deactivated from the command line: both refuse within a second.
    let (_, other) = create_key(&url, "globex", "chatbots:read");
    faultline(&[
        "orgs",
        "set-tier",
        "globex",
        "enterprise",
        "--database-url",
        &url,
    ]);
    for server in [&a, &b] {
        assert_eq!(
            send(&server.addr, "GET", "/v1/chatbots", Some(&other))
                .await
                .unwrap()
                .0,
            200
        );
    }
    let start = Instant::now();
    faultline(&["orgs", "deactivate", "globex", "--database-url", &url]);
    for server in [&a, &b] {
        let delay = start.elapsed()
            + refused_within(&server.addr, &other, "org_inactive", Duration::from_secs(1)).await;
        eprintln!("an organisation deactivated from the CLI was refused after {delay:?}");
        assert!(delay < Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_postgresql_and_a_cached_key_keeps_working_when_it_is_cut() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    let proxy = faultline_testkit::TcpProxy::start(pg.server_addr())
        .await
        .unwrap();
    let url = pg.url();
    let dir = temp_dir("keys-pg-ready");
    let (_, key) = create_key(&url, "acme", "chatbots:read");
    let mut server = serve(&dir.0.join("a.db"), &pg.url_via(proxy.addr()), None);
    wait_ready(&mut server).await;
    let get = |key: Option<String>| {
        let addr = server.addr.clone();
        async move {
            send(&addr, "GET", "/v1/chatbots", key.as_deref())
                .await
                .unwrap()
        }
    };
    assert_eq!(get(Some(key.clone())).await.0, 200);

    proxy.cut();
    let start = Instant::now();
    loop {
        let (status, body) = send(&server.addr, "GET", "/readyz", None).await.unwrap();
        if status == 503 {
            assert!(body.contains("service_unavailable"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/readyz stayed {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The key cached before the cut still passes: a request that needs no data (a malformed
    // id) gets past the key check to its own 400. The data is in PostgreSQL too, so a read
    // would be the 503.
    let bad_id = |key: String| {
        let addr = server.addr.clone();
        async move {
            send(&addr, "GET", "/v1/chatbots/not-a-uuid", Some(&key))
                .await
                .unwrap()
        }
    };
    let (status, body) = bad_id(key.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_id"), "{body}");
    assert_eq!(get(Some(key.clone())).await.0, 503);
    // A key no process has cached cannot be checked: the contract's 503, not a refusal.
    let (_, unseen) = create_key(&url, "acme", "chatbots:read");
    let (status, body) = bad_id(unseen.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("service_unavailable"), "{body}");

    proxy.restore().unwrap();
    let start = Instant::now();
    while send(&server.addr, "GET", "/readyz", None).await.unwrap().0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(Some(unseen)).await.0, 200);
}
