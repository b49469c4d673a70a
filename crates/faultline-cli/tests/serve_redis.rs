//! Two `faultline serve` processes on one Redis (`--redis-url`) admit exactly the free tier's
//! 10 requests a minute between them: the limits are shared, not per process.
//!
//! Needs Redis (`FAULTLINE_REDIS_URL`, default `redis://127.0.0.1:6379`); without it the test
//! prints a `skipped:` line and passes, unless `FAULTLINE_REQUIRE_REDIS` is set.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_redis::redis;
use faultline_redis::{PoolOptions, RedisPool};

fn redis_url() -> String {
    std::env::var("FAULTLINE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A `serve` process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn serve(db: &std::path::Path, addr: SocketAddr, prefix: &str) -> Server {
    serve_with(db, addr, prefix, &redis_url(), &[])
}

fn serve_with(
    db: &std::path::Path,
    addr: SocketAddr,
    prefix: &str,
    redis: &str,
    extra: &[&str],
) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", &addr.to_string(), "--db"])
        .arg(db)
        .args(["--redis-url", redis])
        .args(extra)
        .env("FAULTLINE_REDIS_PREFIX", prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// The status of `GET /v1/chatbots` with `key`, on a connection of its own.
fn get_status(addr: SocketAddr, key: &str) -> u16 {
    get_answer(addr, key)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer"))
}

/// The whole answer to `GET /v1/chatbots` with `key`, on a connection of its own.
fn get_answer(addr: SocketAddr, key: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/chatbots HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_redis_admit_exactly_the_limit() {
    let pool = RedisPool::new(&redis_url(), PoolOptions::default()).unwrap();
    if let Err(error) = pool.query::<String>(&redis::cmd("PING")).await {
        assert!(
            std::env::var_os("FAULTLINE_REQUIRE_REDIS").is_none(),
            "Redis not reachable at {} and FAULTLINE_REQUIRE_REDIS is set: {error}",
            redis_url()
        );
        let line = format!(
            "two_serve_processes: skipped: Redis not reachable at {} ({error})\n",
            redis_url()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    let prefix = format!("fltest-serve-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("faultline-serve-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("reference.db");
    let created = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", "acme", "--scopes", "all", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();

    let (a, b) = (free_port(), free_port());
    let servers = [serve(&db, a, &prefix), serve(&db, b, &prefix)];
    // One request at a time (the free tier allows 2 in flight), alternating between the two.
    let statuses: Vec<u16> = tokio::task::spawn_blocking(move || {
        (0..30)
            .map(|i| get_status(if i % 2 == 0 { a } else { b }, &key))
            .collect()
    })
    .await
    .unwrap();
    drop(servers);

    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (10, 20), "{statuses:?}");
    // Both processes answered some of the 200s: the limit is theirs together.
    assert!(statuses.iter().step_by(2).any(|&s| s == 200));
    assert!(statuses.iter().skip(1).step_by(2).any(|&s| s == 200));

    // The buckets were in Redis, under the prefix given; clean them up.
    let (mut cursor, mut keys) = (0u64, Vec::<String>::new());
    loop {
        let (next, batch): (u64, Vec<String>) = pool
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{{{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000),
            )
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(!keys.is_empty(), "the limits were kept in Redis");
    let _: i64 = pool.query(redis::cmd("DEL").arg(&keys)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// # A Redis outage is the catalog's 503 when limits fail closed
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_a_catalog_503_when_limits_fail_closed_and_heals_by_itself() {
    let pool = RedisPool::new(&redis_url(), PoolOptions::default()).unwrap();
    if let Err(error) = pool.query::<String>(&redis::cmd("PING")).await {
        assert!(
            std::env::var_os("FAULTLINE_REQUIRE_REDIS").is_none(),
            "Redis not reachable at {} and FAULTLINE_REQUIRE_REDIS is set: {error}",
            redis_url()
        );
        let _ = std::io::stderr().write_all(b"fail_closed: skipped: Redis not reachable\n");
        return;
    }
    let target = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse::<SocketAddr>()
        .unwrap();
    let proxy = faultline_testkit::TcpProxy::start(target).await.unwrap();
    let prefix = format!("fltest-closed-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("faultline-serve-closed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("reference.db");
    let created = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", "acme", "--scopes", "all", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let addr = free_port();
    let via = format!("redis://{}", proxy.addr());
    let server = serve_with(&db, addr, &prefix, &via, &["--limits-on-failure", "closed"]);

    let run = |key: String| tokio::task::spawn_blocking(move || get_answer(addr, &key));
    let first = run(key.clone()).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    proxy.cut();
    let started = Instant::now();
    let refused = run(key.clone()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"service_unavailable\""), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after:"),
        "{refused}"
    );

    proxy.restore().unwrap();
    let started = Instant::now();
    loop {
        let answer = run(key.clone()).await.unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no recovery: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    // Clean up this test's buckets.
    let keys: Vec<String> = pool
        .query(redis::cmd("KEYS").arg(format!("{{{prefix}:*")))
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = pool.query(redis::cmd("DEL").arg(&keys)).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
