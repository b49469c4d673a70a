//! The pool's guarantees, on real database files.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::path::PathBuf;
use std::time::{Duration, Instant};

use faultline_sqlite::{Pool, PoolOptions};
use rusqlite::Connection;

/// A fresh file path in the system's temporary directory, removed (with its WAL) on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "faultline-sqlite-{name}-{}-{:?}.db",
            std::process::id(),
            Instant::now()
        ));
        TempDb(path)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn options(busy: Duration) -> PoolOptions {
    let mut options = PoolOptions::default();
    options.busy_timeout = busy;
    options
}

fn with_table(pool: &Pool) {
    pool.write_blocking(|c| {
        c.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_is_unavailable_and_reads_go_on() {
    let db = TempDb::new("busy");
    let pool = Pool::open(&db.0, options(Duration::from_millis(200))).unwrap();
    with_table(&pool);
    // Another process (here: another connection) holds the write lock.
    let other = Connection::open(&db.0).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")
        .unwrap();

    let started = Instant::now();
    let read = pool
        .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)))
        .await
        .unwrap();
    assert_eq!(read, 1, "a reader sees the last committed state");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "readers never wait for the lock"
    );

    let error = pool
        .write(|c| c.execute("INSERT INTO t VALUES (3)", []))
        .await
        .unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));

    other.execute_batch("COMMIT").unwrap();
    pool.write(|c| c.execute("INSERT INTO t VALUES (3)", []))
        .await
        .expect("the store is back once the lock is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_is_interrupted_and_rolled_back() {
    let db = TempDb::new("interrupt");
    let pool = Pool::open(&db.0, PoolOptions::default()).unwrap();
    with_table(&pool);
    // A statement that would run for a very long time: an endless recursive CTE inserting rows.
    let long = pool.write(|c| {
        c.execute_batch(
            "BEGIN; INSERT INTO t WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) \
             SELECT x FROM n; COMMIT;",
        )
    });
    let timed_out = tokio::time::timeout(Duration::from_millis(300), long).await;
    assert!(timed_out.is_err(), "the write was still running");
    // The writer is free again soon, and nothing of the interrupted write was kept.
    let count = tokio::time::timeout(
        Duration::from_secs(5),
        pool.write(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))),
    )
    .await
    .expect("the interrupted statement released the writer")
    .unwrap();
    assert_eq!(count, 1);
}

#[cfg(unix)]
#[test]
fn a_new_database_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TempDb::new("mode");
    let pool = Pool::open(&db.0, PoolOptions::default()).unwrap();
    with_table(&pool);
    let mode = std::fs::metadata(&db.0).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut wal = db.0.clone().into_os_string();
    wal.push("-wal");
    let mode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the WAL file follows the database file");
}

#[tokio::test]
async fn an_in_memory_pool_reads_what_it_wrote() {
    let pool = Pool::in_memory().unwrap();
    with_table(&pool);
    let v = pool
        .read(|c| c.query_row("SELECT v FROM t", [], |r| r.get::<_, i64>(0)))
        .await
        .unwrap();
    assert_eq!(v, 1);
}

/// An inline read uses an idle reader only (it opens none, and waits for none), sees what
/// was committed, and leaves the reader idle again.
#[tokio::test]
async fn an_inline_read_takes_only_an_idle_reader() {
    let db = TempDb::new("inline");
    let pool = Pool::open(&db.0, options(Duration::from_secs(2))).unwrap();
    with_table(&pool);
    let count = |c: &Connection| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
    assert!(pool.try_read_now(count).is_none(), "no reader is open yet");
    pool.write(|c| c.execute("INSERT INTO t VALUES (1)", []))
        .await
        .unwrap();
    assert_eq!(pool.read(count).await.unwrap(), 2, "this opens a reader");
    assert_eq!(pool.try_read_now(count).unwrap().unwrap(), 2);
    assert_eq!(
        pool.try_read_now(count).unwrap().unwrap(),
        2,
        "and gives it back"
    );
    let memory = Pool::in_memory().unwrap();
    assert!(
        memory.try_read_now(|_| Ok(())).is_none(),
        "in memory: no readers"
    );
}
