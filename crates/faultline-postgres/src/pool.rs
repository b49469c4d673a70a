//! [`PgPool`]: a bounded pool of PostgreSQL connections, with a deadline on connecting and on
//! every statement.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use faultline_axum::StoreError;
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

/// How a [`PgPool`] is set up.
///
/// Built with [`PgOptions::new`] (or parsed from a URL with [`PgOptions::from_url`]); the
/// other fields are public and set after.
#[derive(Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// Where the server is and who to log in as.
    pub config: Config,
    /// Connections open at most. Callers beyond that wait for one, within the statement
    /// deadline.
    pub max_connections: usize,
    /// How long opening a connection (TCP, start-up, authentication) may take.
    pub connect_timeout: Duration,
    /// How long one statement may take, waiting for a free connection included. The server
    /// is told the same limit (`statement_timeout`), so it stops working on a statement
    /// nobody waits for any more.
    pub statement_timeout: Duration,
    /// What a client is told to wait (`Retry-After`) when the database is unavailable.
    pub retry_after: Duration,
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration may hold a password: show where, never how.
        f.debug_struct("PgOptions")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// A `postgres://` URL that could not be read.
#[derive(Debug)]
pub struct BadUrl(tokio_postgres::Error);

impl fmt::Display for BadUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid PostgreSQL URL: {}", self.0)
    }
}

impl std::error::Error for BadUrl {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl PgOptions {
    /// Defaults for `config`: 16 connections, 2 s to connect, 2 s per statement, clients told
    /// to retry after 1 s.
    pub fn new(config: Config) -> Self {
        PgOptions {
            config,
            max_connections: 16,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
            retry_after: faultline_axum::store::DEFAULT_UNAVAILABLE_RETRY_AFTER,
        }
    }

    /// Defaults for a `postgres://user@host:port/dbname` URL (or a `key=value` string).
    ///
    /// # A malformed URL is refused before anything connects
    ///
    /// ```
    /// use faultline_postgres::PgOptions;
    /// assert!(PgOptions::from_url("postgres://postgres@127.0.0.1:5432/app").is_ok());
    /// assert!(PgOptions::from_url("postgres://host:notaport/app").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, BadUrl> {
        Config::from_str(url).map(Self::new).map_err(BadUrl)
    }

    /// The same server and credentials, another database.
    #[must_use]
    pub fn with_dbname(mut self, dbname: &str) -> Self {
        self.config.dbname(dbname);
        self
    }

    /// The connection configuration as the pool uses it: the connect timeout, an application
    /// name, UTC as the session's time zone and the statement timeout.
    fn session_config(&self) -> Config {
        let mut config = self.config.clone();
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("faultline");
        }
        let millis = self.statement_timeout.as_millis().max(1);
        let ours = format!("-c TimeZone=UTC -c statement_timeout={millis}");
        let options = match config.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        config.options(&options);
        config
    }
}

/// A PostgreSQL failure as faultline's one store error.
///
/// # Unreachable, slow or restarting is unavailable; a bad statement is a defect
///
/// A closed connection, an I/O error, a cancelled statement (the server's
/// `statement_timeout`), a server shutting down or starting up, too many connections, a
/// serialization failure or a deadlock are [`StoreError::unavailable`] (the catalog's 503 with
/// `Retry-After`): the same request may succeed later. Any other error (a syntax error, a
/// missing table, a constraint the code did not expect) is [`StoreError::new`], answered as
/// an internal error.
pub fn store_error(e: tokio_postgres::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::unavailable(e)
    } else {
        StoreError::new(e)
    }
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        // Class 08: connection exception; 53: insufficient resources; 57: operator
        // intervention (shutdown, cannot connect now, query cancelled); 40001 and 40P01:
        // serialization failure and deadlock; 55P03: lock not available.
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57")
            || code == SqlState::T_R_SERIALIZATION_FAILURE.code()
            || code == SqlState::T_R_DEADLOCK_DETECTED.code()
            || code == SqlState::LOCK_NOT_AVAILABLE.code();
    }
    // Not an error the server sent: the socket (refused, reset, end of file).
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// One open connection: the client, the task that drives its socket, and the statements it
/// has prepared.
struct Conn {
    client: Client,
    driver: AbortHandle,
    statements: HashMap<&'static str, Statement>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closes the socket even when the server (or a stalled network) never answers the
        // statement in flight.
        self.driver.abort();
    }
}

struct Manager {
    config: Config,
    connect_timeout: Duration,
    retry_after: Duration,
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = StoreError;

    async fn create(&self) -> Result<Conn, StoreError> {
        let connecting = self.config.connect(NoTls);
        let (client, connection) = match timeout(self.connect_timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            // Refused, reset, authentication, too many clients: all may pass with time.
            Ok(Err(e)) => {
                return Err(StoreError::unavailable(e).with_retry_after(self.retry_after));
            }
            Err(_) => {
                return Err(
                    StoreError::unavailable(Deadline::Connect(self.connect_timeout))
                        .with_retry_after(self.retry_after),
                );
            }
        };
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        })
        .abort_handle();
        Ok(Conn {
            client,
            driver,
            statements: HashMap::new(),
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<StoreError> {
        if conn.client.is_closed() {
            Err(RecycleError::message("connection closed"))
        } else {
            Ok(())
        }
    }
}

/// A deadline that passed.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    Connect(Duration),
    Statement(Duration),
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deadline::Connect(d) => write!(f, "no PostgreSQL connection within {d:?}"),
            Deadline::Statement(d) => write!(f, "PostgreSQL statement took longer than {d:?}"),
        }
    }
}

impl std::error::Error for Deadline {}

/// A bounded pool of PostgreSQL connections shared by request handlers.
///
/// Cloning is cheap: clones share the connections.
///
/// # No call waits longer than its deadline
///
/// Opening a connection is bounded by [`PgOptions::connect_timeout`]; waiting for a free
/// connection and running one statement by [`PgOptions::statement_timeout`]. When a deadline
/// passes (the server is unreachable, stalled, or every connection is busy), the call fails
/// with [`StoreError::is_unavailable`], which the server answers with the catalog's
/// service-unavailable code and `Retry-After`.
///
/// # A stalled connection is never reused
///
/// A connection whose statement missed its deadline, or that failed with a connection error,
/// is closed and dropped from the pool instead of returning to it; the next call opens a
/// fresh one. So when the database comes back, the pool works again without a restart.
#[derive(Clone)]
pub struct PgPool {
    pool: managed::Pool<Manager>,
    statement_timeout: Duration,
    retry_after: Duration,
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPool")
            .field("status", &self.pool.status())
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl PgPool {
    /// A pool for `options`. Connections are opened on demand: nothing connects here.
    pub fn new(options: &PgOptions) -> Result<Self, StoreError> {
        let manager = Manager {
            config: options.session_config(),
            connect_timeout: options.connect_timeout,
            retry_after: options.retry_after,
        };
        let pool = managed::Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .build()
            .map_err(StoreError::new)?;
        Ok(PgPool {
            pool,
            statement_timeout: options.statement_timeout,
            retry_after: options.retry_after,
        })
    }

    /// A pool for `options` that has connected once, so that a wrong address or password is
    /// found at start-up rather than on the first request.
    pub async fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let pool = Self::new(options)?;
        pool.ping().await?;
        Ok(pool)
    }

    /// Whether the database answers a trivial statement within the deadline (for a readiness
    /// probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.get().await?.batch_execute("SELECT 1").await
    }

    /// How long one statement may take.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    fn unavailable(
        &self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::unavailable(cause).with_retry_after(self.retry_after)
    }

    fn error(&self, e: tokio_postgres::Error) -> StoreError {
        store_error(e).with_retry_after(self.retry_after)
    }

    /// A connection for a few statements, waiting at most the statement deadline for one.
    pub async fn get(&self) -> Result<PgConn, StoreError> {
        match timeout(self.statement_timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(PgConn {
                conn: Some(conn),
                pool: self.clone(),
                broken: false,
            }),
            Ok(Err(PoolError::Backend(e))) => Err(e),
            Ok(Err(e @ (PoolError::Timeout(_) | PoolError::Closed))) => Err(self.unavailable(e)),
            Ok(Err(e)) => Err(StoreError::new(e)),
            Err(_) => Err(self.unavailable(Deadline::Statement(self.statement_timeout))),
        }
    }
}

/// A connection taken from a [`PgPool`]; it goes back when dropped (unless it broke).
///
/// Every method runs one statement within the pool's statement deadline; statements named by
/// `&'static str` are prepared once per connection and reused.
pub struct PgConn {
    conn: Option<Object<Manager>>,
    pool: PgPool,
    broken: bool,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if self.broken
            && let Some(conn) = self.conn.take()
        {
            // Out of the pool for good; dropping it closes its socket.
            drop(Object::take(conn));
        }
    }
}

/// Runs `fut` within `deadline`; a miss or a connection error marks the connection broken.
async fn bounded<T>(
    pool: &PgPool,
    broken: &mut bool,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    match timeout(pool.statement_timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            if is_transient(&e) && e.code().is_none() {
                *broken = true;
            }
            Err(pool.error(e))
        }
        Err(_) => {
            *broken = true;
            Err(pool.unavailable(Deadline::Statement(pool.statement_timeout)))
        }
    }
}

/// Prepares `sql` on `conn` unless it already has it.
async fn prepared(
    pool: &PgPool,
    broken: &mut bool,
    conn: &mut Conn,
    sql: &'static str,
) -> Result<Statement, StoreError> {
    if let Some(statement) = conn.statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = bounded(pool, broken, conn.client.prepare(sql)).await?;
    conn.statements.insert(sql, statement.clone());
    Ok(statement)
}

impl PgConn {
    fn parts(&mut self) -> (&PgPool, &mut bool, &mut Conn) {
        let conn = self
            .conn
            .as_deref_mut()
            .expect("a PgConn holds its connection until dropped");
        (&self.pool, &mut self.broken, conn)
    }

    /// Runs one or more statements separated by semicolons, with no parameters and no rows.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        let (pool, broken, conn) = self.parts();
        bounded(pool, broken, conn.client.batch_execute(sql)).await
    }

    /// Runs a statement and returns how many rows it changed.
    pub async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let (pool, broken, conn) = self.parts();
        let statement = prepared(pool, broken, conn, sql).await?;
        bounded(pool, broken, conn.client.execute(&statement, params)).await
    }

    /// Runs a query and returns its rows.
    pub async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let (pool, broken, conn) = self.parts();
        let statement = prepared(pool, broken, conn, sql).await?;
        bounded(pool, broken, conn.client.query(&statement, params)).await
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let (pool, broken, conn) = self.parts();
        let statement = prepared(pool, broken, conn, sql).await?;
        bounded(pool, broken, conn.client.query_opt(&statement, params)).await
    }

    /// Starts a transaction; it rolls back unless [`PgTransaction::commit`] is called.
    pub async fn transaction(&mut self) -> Result<PgTransaction<'_>, StoreError> {
        let (pool, broken, conn) = self.parts();
        let Conn {
            client, statements, ..
        } = conn;
        let tx = bounded(pool, broken, client.transaction()).await?;
        Ok(PgTransaction {
            tx,
            pool,
            broken,
            statements,
        })
    }
}

/// A transaction on a [`PgConn`], with the same deadline on every statement.
///
/// # Dropped without a commit, it rolls back
///
/// Nothing it wrote is visible to anyone unless [`PgTransaction::commit`] succeeds.
pub struct PgTransaction<'a> {
    tx: tokio_postgres::Transaction<'a>,
    pool: &'a PgPool,
    broken: &'a mut bool,
    statements: &'a mut HashMap<&'static str, Statement>,
}

impl fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}

impl PgTransaction<'_> {
    async fn prepared(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = bounded(self.pool, self.broken, self.tx.prepare(sql)).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs one or more statements separated by semicolons, with no parameters and no rows.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        bounded(self.pool, self.broken, self.tx.batch_execute(sql)).await
    }

    /// Runs a statement and returns how many rows it changed.
    pub async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.prepared(sql).await?;
        bounded(self.pool, self.broken, self.tx.execute(&statement, params)).await
    }

    /// Runs a query and returns its rows.
    pub async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.prepared(sql).await?;
        bounded(self.pool, self.broken, self.tx.query(&statement, params)).await
    }

    /// Runs a query that returns at most one row.
    pub async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.prepared(sql).await?;
        bounded(
            self.pool,
            self.broken,
            self.tx.query_opt(&statement, params),
        )
        .await
    }

    /// Commits everything the transaction wrote, within the statement deadline.
    ///
    /// When the deadline passes, the connection is closed: the server then rolls back unless
    /// the commit had already reached it, so the caller must treat the outcome as unknown
    /// (the error is unavailable: retry, idempotently).
    pub async fn commit(self) -> Result<(), StoreError> {
        let PgTransaction {
            tx, pool, broken, ..
        } = self;
        bounded(pool, broken, tx.commit()).await
    }
}
