//! [`Pool`]: a WAL database with one writer and a few readers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use faultline_axum::StoreError;
use rusqlite::{Connection, InterruptHandle, OpenFlags};

/// How a [`Pool`] is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Reader connections at most (besides the one writer).
    pub readers: usize,
    /// How long a statement waits for another process's lock before the store is reported
    /// unavailable. Keep it well below the request deadline.
    pub busy_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            readers: 4,
            busy_timeout: Duration::from_secs(2),
        }
    }
}

/// A SQLite database shared by request handlers.
///
/// # Readers never wait for a writer
///
/// The file is in WAL mode: reads go to reader connections and see the last committed state
/// while the single writer connection holds a write transaction.
///
/// # A busy database is unavailable, not broken
///
/// When another process holds the write lock for longer than
/// [`PoolOptions::busy_timeout`], the call fails with [`StoreError::is_unavailable`], which
/// the server answers with the catalog's service-unavailable code and `Retry-After`.
///
/// # A write does not outlive its request
///
/// When the future of [`Pool::write`] is dropped (the client went away, the deadline passed)
/// while its statement runs, the statement is interrupted and its transaction rolled back.
///
/// # The file is readable by its owner only
///
/// A database file that does not exist yet is created with mode `0600` (on Unix); SQLite gives
/// its `-wal` and `-shm` files the same mode.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` for an in-memory database, which has no readers: everything uses the writer.
    path: Option<PathBuf>,
    options: PoolOptions,
    writer: Mutex<Connection>,
    writer_interrupt: InterruptHandle,
    /// The job running on the writer, if any (0 = none), for interruption.
    writer_job: Mutex<u64>,
    next_job: AtomicU64,
    readers: Mutex<Readers>,
    reader_freed: Condvar,
}

struct Readers {
    idle: Vec<Connection>,
    open: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A SQLite failure as faultline's one store error: a busy or locked database, one that cannot
/// be opened, or an interrupted statement is unavailable (retry later); anything else is a
/// defect.
pub fn store_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseLocked, OperationInterrupted, SystemIoFailure,
    };
    match e.sqlite_error_code() {
        Some(
            DatabaseBusy | DatabaseLocked | CannotOpen | OperationInterrupted | SystemIoFailure,
        ) => StoreError::unavailable(e),
        _ => StoreError::new(e),
    }
}

impl Pool {
    /// Opens (creating it, owner-only, if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path, options: PoolOptions) -> Result<Self, StoreError> {
        create_private(path).map_err(StoreError::unavailable)?;
        let writer = Connection::open(path).map_err(store_error)?;
        configure(&writer, &options).map_err(store_error)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(store_error)?;
        Ok(Self::from_writer(Some(path.to_owned()), writer, options))
    }

    /// A private in-memory database (tests, demos): one connection serves reads and writes.
    pub fn in_memory() -> Result<Self, StoreError> {
        let options = PoolOptions {
            readers: 0,
            ..PoolOptions::default()
        };
        let writer = Connection::open_in_memory().map_err(store_error)?;
        configure(&writer, &options).map_err(store_error)?;
        Ok(Self::from_writer(None, writer, options))
    }

    fn from_writer(path: Option<PathBuf>, writer: Connection, options: PoolOptions) -> Self {
        Pool {
            inner: Arc::new(Inner {
                path,
                options,
                writer_interrupt: writer.get_interrupt_handle(),
                writer: Mutex::new(writer),
                writer_job: Mutex::new(0),
                next_job: AtomicU64::new(1),
                readers: Mutex::new(Readers {
                    idle: Vec::new(),
                    open: 0,
                }),
                reader_freed: Condvar::new(),
            }),
        }
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Runs `f` with the writer connection, here and now (start-up work: schemas, seeds).
    pub fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut conn).map_err(store_error)
    }

    /// Runs `f` with the writer connection on the blocking pool. Use
    /// `TransactionBehavior::Immediate` for a read-then-write, so that the check and the write
    /// are one step for every process on the file.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let job = self.inner.next_job.fetch_add(1, Ordering::Relaxed);
        let mut guard = InterruptOnDrop {
            inner: Arc::clone(&self.inner),
            job,
            armed: true,
        };
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            *inner
                .writer_job
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = job;
            let result = f(&mut conn);
            *inner
                .writer_job
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = 0;
            // A transaction left open by an interrupted closure is rolled back here.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            result
        })
        .await;
        guard.armed = false;
        result.map_err(StoreError::new)?.map_err(store_error)
    }

    /// Runs `f` here and now on an idle reader connection: for a read short enough not to
    /// hold up the async runtime (a lookup by key), it saves the trip to the blocking pool.
    /// `None` when no reader is idle (none is opened here), the pool is in memory, or the
    /// database was busy: then use [`Pool::read`].
    ///
    /// # An inline read never waits
    ///
    /// It takes a reader only if one is idle, and runs with no busy timeout: where
    /// [`Pool::read`] would wait for a lock, this gives up at once and answers `None`.
    pub fn try_read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<Result<T, StoreError>> {
        let conn = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .idle
            .pop()?;
        let result = conn.busy_timeout(Duration::ZERO).and_then(|()| f(&conn));
        let restored = conn.busy_timeout(self.inner.options.busy_timeout);
        self.inner.give_back(conn);
        match result {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                None
            }
            Err(e) => Some(Err(store_error(e))),
            Ok(value) => Some(restored.map(|()| value).map_err(store_error)),
        }
    }

    /// Runs `f` with a reader connection on the blocking pool (the writer, in memory).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if self.inner.options.readers == 0 {
            return self.write(move |conn| f(conn)).await;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let result = f(&conn).map_err(store_error);
            inner.give_back(conn);
            result
        })
        .await
        .map_err(StoreError::new)?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, StoreError> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(conn) = readers.idle.pop() {
                return Ok(conn);
            }
            if readers.open < self.options.readers {
                readers.open += 1;
                drop(readers);
                return self.open_reader().inspect_err(|_| {
                    let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
                    readers.open -= 1;
                });
            }
            let (next, timeout) = self
                .reader_freed
                .wait_timeout(readers, self.options.busy_timeout)
                .unwrap_or_else(PoisonError::into_inner);
            readers = next;
            if timeout.timed_out() && readers.idle.is_empty() {
                return Err(StoreError::unavailable(std::io::Error::other(
                    "every reader connection is busy",
                )));
            }
        }
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let path = self.path.as_deref().ok_or_else(|| {
            StoreError::new(std::io::Error::other("an in-memory pool has no readers"))
        })?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(store_error)?;
        configure(&conn, &self.options).map_err(store_error)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        readers.idle.push(conn);
        drop(readers);
        self.reader_freed.notify_one();
    }
}

/// Interrupts the writer's statement if the future of [`Pool::write`] is dropped while its
/// job runs.
struct InterruptOnDrop {
    inner: Arc<Inner>,
    job: u64,
    armed: bool,
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Holding the job lock keeps the writer from moving on to another job meanwhile.
        let running = self
            .inner
            .writer_job
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *running == self.job {
            self.inner.writer_interrupt.interrupt();
        }
    }
}

/// Statements each connection keeps prepared (`prepare_cached`). The stores and the
/// reference API use about 25 fixed statements, and an in-memory pool runs them all on one
/// connection: rusqlite's default of 16 would evict them in turn and prepare them again.
const STATEMENT_CACHE: usize = 64;

fn configure(conn: &Connection, options: &PoolOptions) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Creates `path` readable and writable by its owner only, if it does not exist yet.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
