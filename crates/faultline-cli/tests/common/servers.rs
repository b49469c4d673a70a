//! Several `faultline serve` processes on one PostgreSQL database (and optionally one Redis),
//! for the multi-instance and outage tests. Include with
//! `#[path = "common/servers.rs"] mod servers;`.
//!
//! - [`Cluster::start`]: a throw-away PostgreSQL database (`FAULTLINE_TEST_POSTGRES_URL`), a
//!   SQLite file for the keys, a Redis key prefix deleted at the end, and N servers.
//! - [`http`]: one request on a connection of its own, with a deadline.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline_postgres::testing::TestDatabase;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Redis the tests use (`FAULTLINE_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("FAULTLINE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether Redis answers; prints a `skipped:` line when it does not (and fails when
/// `FAULTLINE_REQUIRE_REDIS` is set, as in CI).
pub async fn redis_available(test: &str) -> bool {
    let pool =
        faultline_redis::RedisPool::new(&redis_url(), faultline_redis::PoolOptions::default())
            .expect("the Redis URL parses");
    match pool
        .query::<String>(&faultline_redis::redis::cmd("PING"))
        .await
    {
        Ok(_) => true,
        Err(error) => {
            assert!(
                std::env::var_os("FAULTLINE_REQUIRE_REDIS").is_none(),
                "Redis not reachable at {} and FAULTLINE_REQUIRE_REDIS is set: {error}",
                redis_url()
            );
            let line = format!(
                "{test}: skipped: Redis not reachable at {} ({error})\n",
                redis_url()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            false
        }
    }
}

/// Deletes every Redis key under `prefix` (the limit store's keys look like `{prefix:…`).
pub async fn delete_redis_prefix(prefix: &str) {
    let Ok(pool) =
        faultline_redis::RedisPool::new(&redis_url(), faultline_redis::PoolOptions::default())
    else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let Ok((next, batch)): Result<(u64, Vec<String>), _> = pool
            .query(
                faultline_redis::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{{{prefix}:*"))
                    .arg("COUNT")
                    .arg(1000),
            )
            .await
        else {
            return;
        };
        if !batch.is_empty() {
            let _ = pool
                .query::<i64>(faultline_redis::redis::cmd("DEL").arg(&batch))
                .await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// A `serve` process, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// A server around a started child.
    pub fn new(child: Child, addr: SocketAddr) -> Self {
        Server { child, addr }
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address")
}

/// How the servers of a [`Cluster`] run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many `serve` processes.
    pub servers: usize,
    /// Redis for the limits at this URL; `None` serves with `--no-limits`.
    pub redis_url: Option<String>,
    /// PostgreSQL through this address (e.g. a `TcpProxy`) instead of the server's own.
    pub postgres_via: Option<SocketAddr>,
    /// `--database-timeout-ms`.
    pub database_timeout_ms: u64,
    /// Further `serve` arguments.
    pub extra: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 3,
            redis_url: None,
            postgres_via: None,
            database_timeout_ms: 2000,
            extra: Vec::new(),
        }
    }
}

/// N `serve` processes on one PostgreSQL database, one SQLite key file and (optionally) one
/// Redis prefix; all of it removed when dropped.
pub struct Cluster {
    /// The servers, in start order.
    pub servers: Vec<Server>,
    /// The PostgreSQL database (dropped last).
    pub db: TestDatabase,
    /// The Redis prefix of this cluster's limit buckets.
    pub prefix: String,
    dir: PathBuf,
}

impl Cluster {
    /// Creates the database, the key file's directory and the Redis prefix; `None` when
    /// PostgreSQL is not configured (after a `skipped:` line). Create keys with [`create_key`],
    /// then [`Cluster::launch`].
    pub fn new() -> Option<Self> {
        let db = TestDatabase::create()?;
        let dir = std::env::temp_dir().join(format!("faultline-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let prefix = format!("fltest-cluster-{}", uuid::Uuid::new_v4().simple());
        Some(Cluster {
            servers: Vec::new(),
            db,
            prefix,
            dir,
        })
    }

    /// Starts the servers, all at once (so their migrations race, as in a real roll-out), and
    /// waits until each listens.
    pub fn launch(&mut self, options: &ClusterOptions) {
        let cluster = self;
        let url = match options.postgres_via {
            Some(addr) => cluster.db.url_via(addr),
            None => cluster.db.url(),
        };
        let mut starting = Vec::new();
        for _ in 0..options.servers {
            let addr = free_port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_faultline"));
            command
                .args(["serve", "--addr", &addr.to_string(), "--db"])
                .arg(cluster.keys_db())
                .args(["--database-url", &url])
                .args(["--database-max-connections", "8"])
                .args([
                    "--database-timeout-ms",
                    &options.database_timeout_ms.to_string(),
                ])
                .args(&options.extra)
                .env("FAULTLINE_REDIS_PREFIX", &cluster.prefix)
                .env("RUST_LOG", "warn")
                // `FAULTLINE_TEST_SERVE_LOG=1` shows what the processes print (their warnings).
                .stdout(match std::env::var_os("FAULTLINE_TEST_SERVE_LOG") {
                    Some(_) => Stdio::inherit(),
                    None => Stdio::null(),
                })
                .stderr(match std::env::var_os("FAULTLINE_TEST_SERVE_LOG") {
                    Some(_) => Stdio::inherit(),
                    None => Stdio::null(),
                });
            match &options.redis_url {
                Some(redis) => command.args(["--redis-url", redis]),
                None => command.arg("--no-limits"),
            };
            let child = command.spawn().expect("serve starts");
            starting.push(Server { child, addr });
        }
        for server in &starting {
            let started = Instant::now();
            while std::net::TcpStream::connect(server.addr).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "serve did not listen on {}",
                    server.addr
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster.servers.extend(starting);
    }

    /// The SQLite file the keys live in (shared by the servers on this machine).
    pub fn keys_db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    /// The addresses of the servers.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a key with every scope for organisation `org` in the SQLite key file `db`
/// (creating the organisation); returns the key.
pub fn create_key_on_file(db: &std::path::Path, org: &str) -> String {
    let created = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", org, "--scopes", "all", "--db"])
        .arg(db)
        .output()
        .expect("keys create runs");
    assert!(created.status.success(), "{created:?}");
    String::from_utf8(created.stdout)
        .expect("the key is text")
        .trim()
        .to_owned()
}

/// Creates a key with every scope for organisation `org` in the cluster's PostgreSQL database
/// (creating the organisation), on tier `tier` when given; returns the key.
pub fn create_key(cluster: &Cluster, org: &str, tier: Option<&str>) -> String {
    let url = cluster.db.url();
    let created = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", org, "--scopes", "all", "--db"])
        .arg(cluster.keys_db())
        .args(["--database-url", &url])
        .output()
        .expect("keys create runs");
    assert!(created.status.success(), "{created:?}");
    if let Some(tier) = tier {
        let set = Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(["orgs", "set-tier", "--db"])
            .arg(cluster.keys_db())
            .args(["--database-url", &url])
            .args([org, tier])
            .output()
            .expect("orgs set-tier runs");
        assert!(set.status.success(), "{set:?}");
    }
    String::from_utf8(created.stdout)
        .expect("the key is text")
        .trim()
        .to_owned()
}

/// An answer: status, headers (lower-case names), JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl Answer {
    /// The error code (flat profile), if any.
    pub fn code(&self) -> Option<&str> {
        self.body["error"].as_str()
    }
}

/// Why [`http`] got no answer.
#[derive(Debug)]
pub struct NoAnswer(pub String);

/// One request on a connection of its own (`Connection: close`), with a 30 s deadline.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, NoAnswer> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| NoAnswer(format!("connect: {e}")))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| NoAnswer(format!("write: {e}")))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| NoAnswer(format!("read: {e}")))?;
        parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| NoAnswer("no answer within 30 s".into()))?
}

fn parse(raw: &[u8]) -> Result<Answer, NoAnswer> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| NoAnswer(format!("not HTTP: {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| NoAnswer(format!("no status: {head:?}")))?;
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// [`create_key`] with the key's id: `(id, key)`.
pub fn create_key_with_id(cluster: &Cluster, org: &str, scopes: &str) -> (String, String) {
    let created = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keys", "create", "--org", org, "--scopes", scopes, "--db"])
        .arg(cluster.keys_db())
        .args(["--database-url", &cluster.db.url()])
        .output()
        .expect("keys create runs");
    assert!(created.status.success(), "{created:?}");
    let stderr = String::from_utf8_lossy(&created.stderr);
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .expect("the key's id")
        .to_owned();
    let key = String::from_utf8(created.stdout)
        .expect("the key is text")
        .trim()
        .to_owned();
    (id, key)
}
