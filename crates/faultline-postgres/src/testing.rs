//! Test support (feature `testing`): a throw-away database per test run on the server named by
//! `FAULTLINE_TEST_POSTGRES_URL`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};

use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

use crate::PgOptions;

/// The environment variable that names the PostgreSQL server tests may use, e.g.
/// `postgres://postgres@127.0.0.1:5432`.
pub const URL_VAR: &str = "FAULTLINE_TEST_POSTGRES_URL";

/// The server URL from [`URL_VAR`], or `None` after printing that the caller's test is skipped.
///
/// The line goes straight to the process's standard error, which `cargo test` does not
/// capture, so it shows in the test run's output even though the test passes.
pub fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let _ = writeln!(std::io::stderr(), "skipped: {URL_VAR} is not set");
            None
        }
    }
}

/// A database created for one test run and dropped when this value is dropped, also when the
/// test panics (the drop runs while the panic unwinds).
///
/// # Each test gets its own database
///
/// The name joins the process id, the time and a counter, so tests running at once, in one
/// process or several, never share a database.
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
    options: PgOptions,
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "faultline_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `sql` on the server's `postgres` database, on a thread of its own (so it works from
/// inside a runtime, and from `Drop`).
fn admin(server: &str, sql: String) -> Result<(), String> {
    let server = server.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let options = PgOptions::from_url(&server)
                .map_err(|e| e.to_string())?
                .with_dbname("postgres");
            let (client, connection) = options
                .config
                .connect(NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let outcome = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            outcome
        })
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_owned())?
}

impl TestDatabase {
    /// Creates a new empty database on the server in [`URL_VAR`]; `None` (after printing the
    /// skip line) when the variable is unset.
    ///
    /// # Panics
    ///
    /// When the variable is set but the database cannot be created: a test that was asked
    /// to run against PostgreSQL must not pass silently.
    #[allow(clippy::panic, reason = "test support: a broken setup fails the test")]
    pub fn create() -> Option<Self> {
        let server = server_url()?;
        let name = unique_name();
        if let Err(e) = admin(&server, format!("CREATE DATABASE {name}")) {
            panic!("cannot create test database {name} on {URL_VAR}: {e}");
        }
        let options = match PgOptions::from_url(&server) {
            Ok(options) => options.with_dbname(&name),
            Err(e) => panic!("{URL_VAR}: {e}"),
        };
        Some(TestDatabase {
            server,
            name,
            options,
        })
    }

    /// [`TestDatabase::create`], then the crate's migrations applied (on a thread of its own,
    /// so this works from synchronous code inside a runtime, e.g. a store factory).
    ///
    /// # Panics
    ///
    /// When the variable is set but the database cannot be created or migrated.
    #[allow(clippy::panic, reason = "test support: a broken setup fails the test")]
    pub fn migrated() -> Option<Self> {
        let db = Self::create()?;
        let options = db.options();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let pool = crate::PgPool::new(&options).map_err(|e| e.to_string())?;
                crate::migrate(&pool).await.map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(_)) => Some(db),
            Ok(Err(e)) => panic!("cannot migrate test database {}: {e}", db.name),
            Err(_) => panic!("the migration thread panicked"),
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Options that connect to this database (the defaults of [`PgOptions::new`]).
    pub fn options(&self) -> PgOptions {
        self.options.clone()
    }

    /// The address of the server (its first host and port), e.g. for a proxy in front of it.
    ///
    /// # Panics
    ///
    /// When the URL names no TCP host that resolves.
    #[allow(clippy::panic, reason = "test support: a broken setup fails the test")]
    pub fn server_addr(&self) -> SocketAddr {
        let config = &self.options.config;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        match (host.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
        {
            Some(addr) => addr,
            None => panic!("{URL_VAR}: cannot resolve {host}:{port}"),
        }
    }

    /// Options that reach this database through `addr` (a proxy on 127.0.0.1) instead of the
    /// server's own address.
    pub fn options_via(&self, addr: SocketAddr) -> PgOptions {
        let theirs = &self.options.config;
        let mut config = Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .dbname(&self.name);
        if let Some(user) = theirs.get_user() {
            config.user(user);
        }
        if let Some(password) = theirs.get_password() {
            config.password(password);
        }
        PgOptions::new(config)
    }

    /// A `postgres://` URL for this database through `addr` (a proxy on 127.0.0.1), with the
    /// user of [`URL_VAR`] (and no password: for servers that trust local connections).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let user = self.options.config.get_user().unwrap_or("postgres");
        format!("postgres://{user}@{addr}/{}", self.name)
    }

    /// A `postgres://` URL for this database (for processes started by the test).
    pub fn url(&self) -> String {
        let base = self.server.trim_end_matches('/');
        // A URL may already name a database (or carry parameters): replace what follows the
        // authority.
        let authority_end = base
            .find("://")
            .map(|scheme| {
                let rest = &base[scheme + 3..];
                scheme + 3 + rest.find(['/', '?']).unwrap_or(rest.len())
            })
            .unwrap_or(base.len());
        format!("{}/{}", &base[..authority_end], self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(&self.server, sql) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test database {}: {e}",
                self.name
            );
        }
    }
}
