//! `kill -9` of a `serve` process while a request holds an idempotency claim. A claim written
//! to the database (`POST /v1/categories`) holds until its lease ends: a restarted server
//! answers the retry with `idempotency_in_progress` until then, and runs it exactly once after.
//! A claim the handler's transaction decides (`POST /v1/chatbots`) dies with its process: the
//! retry runs at once, exactly once.
#![allow(clippy::unwrap_used)] // fixtures panic on purpose when broken

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `serve` process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    key: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Starts `serve` on `db` with a two-second lease and `extra` flags; waits until it listens.
fn serve(db: &Path, extra: &[&str]) -> Server {
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", &addr, "--db", db.to_str().unwrap()])
        .args(["--idempotency-lease", "2"])
        // The test polls faster than the free tier allows; limits have tests of their own.
        .arg("--no-limits")
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut key = None;
    for line in BufReader::new(stdout).lines().take(6) {
        let line = line.unwrap();
        if let Some(value) = line.trim().strip_prefix("export KEY=") {
            key = Some(value.to_owned());
        }
        if line.starts_with("try: curl") || line.starts_with("create a key with") {
            break;
        }
    }
    Server { child, addr, key }
}

/// Sends a keyed POST of a category; the status line and body of the answer.
fn post(addr: &str, key: &str, idempotency_key: &str) -> (u16, String) {
    post_to(addr, "/v1/categories", key, idempotency_key)
}

/// Sends a keyed POST of `{"name":"crash test"}` to `path`; the status and body of the answer.
fn post_to(addr: &str, path: &str, key: &str, idempotency_key: &str) -> (u16, String) {
    let body = r#"{"name":"crash test"}"#;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: {idempotency_key}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(2)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_claim_left_by_a_killed_server_ends_with_its_lease_and_the_retry_runs_once() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("faultline-crash-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("crash.db");

    // The first server holds every keyed request for a minute after its claim.
    let mut first = serve(&db, &["--idempotency-hold-ms", "60000"]);
    let key = first.key.clone().expect("a fresh database prints a key");
    let addr = first.addr.clone();
    let caller = {
        let key = key.clone();
        std::thread::spawn(move || post(&addr, &key, "crash-key"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &db,
        "SELECT count(*) FROM idempotency_records WHERE status IS NULL",
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the request never claimed its key"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let claimed_at = Instant::now();
    // SIGKILL: no destructor, no release, no graceful shutdown.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (status, _) = caller.join().unwrap();
    assert_eq!(status, 0, "the connection died with the server");
    assert_eq!(count(&db, "SELECT count(*) FROM categories"), 0);

    let second = serve(&db, &[]);
    let (status, body) = post(&second.addr, &key, "crash-key");
    // Within the lease (two seconds from the claim) the dead server's claim still holds; on a
    // machine slow enough to get here after it, the retry may already run.
    if claimed_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("idempotency_in_progress"), "{body}");
        assert!(count(&db, "SELECT count(*) FROM categories") == 0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let (status, body) = post(&second.addr, &key, "crash-key");
        match status {
            201 => {
                assert!(body.contains("crash test"), "{body}");
                break body;
            }
            409 if body.contains("idempotency_in_progress") => {
                assert!(Instant::now() < deadline, "the lease never ended");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    };
    let (status, replay) = post(&second.addr, &key, "crash-key");
    assert_eq!(
        (status, &replay),
        (201, &created),
        "later retries get the replay"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM categories"),
        1,
        "run exactly once"
    );
}

#[test]
fn a_claim_decided_by_the_handlers_transaction_dies_with_its_server() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("faultline-crash-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("crash.db");

    let mut first = serve(&db, &["--idempotency-hold-ms", "60000"]);
    let key = first.key.clone().expect("a fresh database prints a key");
    let addr = first.addr.clone();
    let caller = {
        let key = key.clone();
        std::thread::spawn(move || post_to(&addr, "/v1/chatbots", &key, "crash-key"))
    };
    // The claim leaves no row: give the request time to reach the hold (if it has not, the
    // kill comes before its claim, and what follows must hold just the same).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&db, "SELECT count(*) FROM idempotency_records"),
        0,
        "nothing is written before the handler's transaction"
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (status, _) = caller.join().unwrap();
    assert_eq!(status, 0, "the connection died with the server");

    // Well within the two-second lease, the retry runs at once.
    let second = serve(&db, &[]);
    let (status, created) = post_to(&second.addr, "/v1/chatbots", &key, "crash-key");
    assert_eq!(status, 201, "{created}");
    let (status, replay) = post_to(&second.addr, "/v1/chatbots", &key, "crash-key");
    assert_eq!((status, &replay), (201, &created), "then the replay");
    assert_eq!(
        count(&db, "SELECT count(*) FROM chatbots"),
        1,
        "run exactly once"
    );
}
