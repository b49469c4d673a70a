//! Two `serve` processes sharing one PostgreSQL (idempotency records) and one SQLite file (the
//! chatbots): 200 concurrent POSTs with one `Idempotency-Key`, spread across both, create one
//! chatbot. Needs `FAULTLINE_TEST_POSTGRES_URL`; skipped (and passing) without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_postgres::PgPool;
use faultline_postgres::testing::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests of this file run one at a time: a port one of them frees (a cut proxy) must not be
/// handed to the other's next server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Starts `serve` on `db` (SQLite) with its idempotency store on `database_url`.
fn serve(db: &Path, database_url: &str) -> Server {
    serve_with(db, database_url, &[])
}

/// [`serve`] with more flags.
fn serve_with(db: &Path, database_url: &str, extra: &[&str]) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", &addr, "--db"])
        .arg(db)
        .args(["--database-url", database_url])
        // 200 requests from one key: far past the free tier; limits have tests of their own.
        .arg("--no-limits")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    Server { child, addr }
}

/// Waits until the server answers `GET /health`.
async fn wait_ready(server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("serve exited early: {status}");
        }
        if let Ok(reply) = send(&server.addr, "GET", "/health", &[], None).await
            && reply.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on its own connection.
async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
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
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a key with every scope where the servers keep keys (with `--database-url`, the
/// PostgreSQL database), so that neither server seeds a demo.
fn create_key(db: &Path, database_url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", "acme", "--scopes", "all", "--db"])
        .arg(db)
        .args(["--database-url", database_url])
        .output()
        .expect("keys create runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn two_servers_on_one_postgresql_run_a_keyed_post_once() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = TempDir(std::env::temp_dir().join(format!(
        "faultline-pg-{}-{}",
        std::process::id(),
        pg.name()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("reference.db");
    let key = create_key(&db, &pg.url());
    let bearer = format!("Bearer {key}");

    // One after the other: two servers opening a new SQLite file at the same instant can race
    // on its schema (a reference-store matter; PostgreSQL's migrations under concurrent
    // start-up are tested in faultline-postgres).
    let mut a = serve(&db, &pg.url());
    wait_ready(&mut a).await;
    let mut b = serve(&db, &pg.url());
    wait_ready(&mut b).await;

    const REQUESTS: usize = 200;
    let addrs = Arc::new([a.addr.clone(), b.addr.clone()]);
    let bearer = Arc::new(bearer);
    let start = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (addrs, bearer, start) = (addrs.clone(), bearer.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            send(
                &addrs[i % 2],
                "POST",
                "/v1/chatbots",
                &[
                    ("authorization", bearer.as_str()),
                    ("idempotency-key", "create-the-one-bot"),
                ],
                Some(r#"{"name":"once","status":"active"}"#),
            )
            .await
            .expect("an answer")
        }));
    }
    let mut originals = Vec::new();
    let mut replays = Vec::new();
    let mut in_progress = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert!(reply.status < 500, "no 5xx: {reply:?}");
        match reply.status {
            201 if reply.header("idempotent-replayed") == Some("true") => replays.push(reply),
            201 => originals.push(reply),
            409 => {
                assert!(reply.body.contains("idempotency_in_progress"), "{reply:?}");
                assert!(reply.header("retry-after").is_some(), "{reply:?}");
                in_progress += 1;
            }
            _ => panic!("unexpected answer {reply:?}"),
        }
    }
    assert_eq!(originals.len(), 1, "the handler ran once");
    assert_eq!(originals.len() + replays.len() + in_progress, REQUESTS);
    for replay in &replays {
        assert_eq!(replay.body, originals[0].body, "replays are byte-identical");
    }

    // One chatbot in the shared PostgreSQL database, seen from either server.
    for server in [&a, &b] {
        let list = send(
            &server.addr,
            "GET",
            "/v1/chatbots",
            &[("authorization", bearer.as_str())],
            None,
        )
        .await
        .unwrap();
        assert_eq!(list.status, 200, "{list:?}");
        let page: serde_json::Value = serde_json::from_str(&list.body).unwrap();
        assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    }

    // The record lives in PostgreSQL, and the schema was migrated exactly once.
    let pool = PgPool::connect(&pg.options()).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let records = conn
        .query(
            "SELECT status FROM idempotency_records WHERE key = 'create-the-one-bot'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].get::<_, Option<i16>>(0), Some(201));
    let migrations = conn
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(
        migrations.len(),
        faultline_postgres::MIGRATIONS.len()
            + faultline_cli::reference::store::postgres::MIGRATIONS.len()
    );
    drop((a, b));
}

/// Starts `serve` with its idempotency store on `database_url` and short database deadlines.
fn serve_quick(db: &Path, database_url: &str) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["serve", "--addr", &addr, "--db"])
        .arg(db)
        .args([
            "--database-url",
            database_url,
            "--database-timeout-ms",
            "500",
            "--no-limits",
        ])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    Server { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_postgresql_outage_is_a_503_with_retry_after_and_serve_recovers_by_itself() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let proxy = faultline_testkit::TcpProxy::start(pg.server_addr())
        .await
        .unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!(
        "faultline-pg-outage-{}-{}",
        std::process::id(),
        pg.name()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("reference.db");
    let bearer = format!("Bearer {}", create_key(&db, &pg.url()));
    let mut server = serve_quick(&db, &pg.url_via(proxy.addr()));
    wait_ready(&mut server).await;

    let post = |key: String| {
        let (addr, bearer) = (server.addr.clone(), bearer.clone());
        async move {
            let started = Instant::now();
            let reply = send(
                &addr,
                "POST",
                "/v1/chatbots",
                &[("authorization", &bearer), ("idempotency-key", &key)],
                Some(r#"{"name":"outage","status":"active"}"#),
            )
            .await
            .unwrap();
            (reply, started.elapsed())
        }
    };
    let (before, _) = post("before-the-outage".to_owned()).await;
    assert_eq!(before.status, 201, "{before:?}");

    for (outage, key) in [("cut", "during-the-cut"), ("stall", "during-the-stall")] {
        if outage == "cut" {
            proxy.cut();
        } else {
            proxy.stall().unwrap();
        }
        let (reply, took) = post(key.to_owned()).await;
        assert_eq!(reply.status, 503, "{outage}: {reply:?}");
        assert!(reply.body.contains("service_unavailable"), "{reply:?}");
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
        // Two deadlines at most (a connection, a statement) plus a margin for a busy machine.
        assert!(
            took < Duration::from_millis(2500),
            "{outage}: answered after {took:?}"
        );
        proxy.restore().unwrap();
        let mut recovered = None;
        for _ in 0..20 {
            let (reply, _) = post(format!("after-the-{outage}")).await;
            if reply.status == 201 {
                recovered = Some(reply);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            recovered.is_some(),
            "{outage}: serve recovers without a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_in_postgresql_by_a_killed_server_ends_with_its_lease_and_runs_once() {
    let Some(pg) = TestDatabase::create() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = TempDir(std::env::temp_dir().join(format!(
        "faultline-pg-crash-{}-{}",
        std::process::id(),
        pg.name()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let db = dir.0.join("reference.db");
    let bearer = format!("Bearer {}", create_key(&db, &pg.url()));
    let body = r#"{"name":"crash","status":"active"}"#;
    let post = |addr: String| {
        let bearer = bearer.clone();
        async move {
            send(
                &addr,
                "POST",
                "/v1/chatbots",
                &[("authorization", &bearer), ("idempotency-key", "crash-key")],
                Some(body),
            )
            .await
        }
    };

    // The first server claims the key, then holds the request until it is killed.
    let lease = ["--idempotency-lease", "2"];
    let mut first = serve_with(
        &db,
        &pg.url(),
        &[lease[0], lease[1], "--idempotency-hold-ms", "60000"],
    );
    wait_ready(&mut first).await;
    let caller = tokio::spawn(post(first.addr.clone()));
    let pool = PgPool::connect(&pg.options()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let claims = pool
            .get()
            .await
            .unwrap()
            .query(
                "SELECT 1 FROM idempotency_records WHERE status IS NULL",
                &[],
            )
            .await
            .unwrap();
        if !claims.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never claimed its key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap(); // SIGKILL: nothing is released
    first.child.wait().unwrap();
    assert!(
        caller.await.unwrap().is_err_or_empty(),
        "the connection died with the server"
    );

    // Another server: in progress until the lease ends, then the retry runs, once.
    let mut second = serve_with(&db, &pg.url(), &lease);
    wait_ready(&mut second).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waited = 0;
    let created = loop {
        let reply = post(second.addr.clone()).await.unwrap();
        match reply.status {
            201 => break reply,
            409 if reply.body.contains("idempotency_in_progress") => {
                waited += 1;
                assert!(Instant::now() < deadline, "the lease never ended");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("unexpected {reply:?}"),
        }
    };
    assert!(
        waited > 0,
        "the dead server's claim held until its lease ended"
    );
    assert_ne!(created.header("idempotent-replayed"), Some("true"));
    let replay = post(second.addr.clone()).await.unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, created.body);
    let list = send(
        &second.addr,
        "GET",
        "/v1/chatbots",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    let page: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
}

/// A request to a server killed mid-way gets no answer.
trait NoAnswer {
    fn is_err_or_empty(&self) -> bool;
}

impl NoAnswer for std::io::Result<Reply> {
    fn is_err_or_empty(&self) -> bool {
        match self {
            Err(_) => true,
            Ok(reply) => reply.status == 0,
        }
    }
}
