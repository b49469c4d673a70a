//! The pool and migrations against a real PostgreSQL (`FAULTLINE_TEST_POSTGRES_URL`), and
//! outages through a TCP proxy in front of it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{MIGRATIONS, Migration, PgOptions, PgPool, migrate, migrate_with};
use faultline_testkit::TcpProxy;

/// Deadlines short enough for tests, long enough for a loaded machine.
fn quick(mut options: PgOptions) -> PgOptions {
    options.connect_timeout = Duration::from_millis(700);
    options.statement_timeout = Duration::from_millis(700);
    options.max_connections = 4;
    options
}

/// A margin for the scheduler of a shared 2-core machine on top of a deadline.
const MARGIN: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn sessions_run_in_utc_and_statements_work() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let pool = PgPool::connect(&db.options()).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let row = conn
        .query_opt(
            "SELECT current_setting('TimeZone'), 40 + $1::INT",
            &[&2_i32],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "UTC");
    assert_eq!(row.get::<_, i32>(1), 42);
}

#[tokio::test]
async fn a_bad_statement_is_a_defect_not_an_outage() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let pool = PgPool::connect(&db.options()).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let err = conn
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
    // The connection is still good after a statement error.
    assert_eq!(conn.execute("SELECT 1", &[]).await.unwrap(), 1);
}

#[tokio::test]
async fn the_server_cancelling_a_slow_statement_is_unavailable() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let pool = PgPool::connect(&quick(db.options())).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let started = Instant::now();
    let err = conn.batch_execute("SELECT pg_sleep(5)").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(700) + MARGIN);
}

#[tokio::test]
async fn migrations_apply_once_when_processes_start_at_once() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    // Six pools stand for six processes: each has its own connections.
    let mut starts = Vec::new();
    for _ in 0..6 {
        let options = db.options();
        starts.push(tokio::spawn(async move {
            let pool = PgPool::new(&options).unwrap();
            migrate(&pool).await.unwrap()
        }));
    }
    let mut applied = Vec::new();
    for start in starts {
        applied.extend(start.await.unwrap());
    }
    applied.sort_unstable();
    let expected: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        applied, expected,
        "every step applied exactly once in total"
    );

    let pool = PgPool::new(&db.options()).unwrap();
    assert!(
        migrate(&pool).await.unwrap().is_empty(),
        "nothing left to do"
    );
    let rows = pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn a_failing_migration_leaves_the_database_as_it_was() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let pool = PgPool::new(&db.options()).unwrap();
    let steps = [
        Migration {
            version: 1,
            name: "a table",
            sql: "CREATE TABLE first_step (id INT)",
        },
        Migration {
            version: 2,
            name: "a mistake",
            sql: "CREATE TABLE second_step (id NO_SUCH_TYPE)",
        },
    ];
    let err = migrate_with(&pool, &steps, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.is_unavailable(), "{err}");
    let row = pool
        .get()
        .await
        .unwrap()
        .query_opt(
            "SELECT to_regclass('first_step') IS NULL, to_regclass('schema_migrations') IS NULL",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(row.get::<_, bool>(0), "the first step was rolled back");
    assert!(row.get::<_, bool>(1), "no record of either step");
}

#[tokio::test]
async fn a_database_migrated_by_another_build_is_refused() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let pool = PgPool::new(&db.options()).unwrap();
    let ours = [Migration {
        version: 1,
        name: "ours",
        sql: "CREATE TABLE ours (id INT)",
    }];
    let theirs = [Migration {
        version: 1,
        name: "theirs",
        sql: "CREATE TABLE theirs (id INT)",
    }];
    migrate_with(&pool, &ours, Duration::from_secs(5))
        .await
        .unwrap();
    let err = migrate_with(&pool, &theirs, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("theirs"), "{err}");
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_unavailable_at_once() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    // A port nobody listens on any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let pool = PgPool::new(&quick(db.options_via(closed))).unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(700) + MARGIN);
    assert!(
        PgPool::connect(&quick(db.options_via(closed)))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_full_pool_is_unavailable_after_the_deadline() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let mut options = quick(db.options());
    options.max_connections = 1;
    let pool = PgPool::connect(&options).await.unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(650), "waited {waited:?}");
    assert!(waited < Duration::from_millis(700) + MARGIN);
    drop(held);
    pool.get()
        .await
        .unwrap()
        .batch_execute("SELECT 1")
        .await
        .unwrap();
}

/// A pool through a proxy, checked to work before the outage.
async fn pool_via_proxy(db: &TestDatabase) -> (TcpProxy, PgPool) {
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let pool = PgPool::connect(&quick(db.options_via(proxy.addr())))
        .await
        .unwrap();
    (proxy, pool)
}

/// Asserts a `SELECT 1` fails as unavailable within the deadline.
async fn assert_unavailable_in_time(pool: &PgPool) {
    let started = Instant::now();
    let outcome = async {
        let mut conn = pool.get().await?;
        conn.execute("SELECT 1", &[]).await
    }
    .await;
    let took = started.elapsed();
    let err = outcome.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        took < Duration::from_millis(1400) + MARGIN,
        "answered after {took:?}"
    );
}

/// Asserts the pool works again within a few tries (the first may meet a connection the
/// outage closed).
async fn assert_recovers(pool: &PgPool) {
    for _ in 0..10 {
        let attempt = async {
            let mut conn = pool.get().await?;
            conn.query_opt("SELECT 7::INT", &[]).await
        }
        .await;
        if let Ok(Some(row)) = attempt {
            assert_eq!(row.get::<_, i32>(0), 7);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the pool did not recover after the restore");
}

#[tokio::test]
async fn a_cut_is_unavailable_and_a_restore_recovers_without_a_restart() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let (proxy, pool) = pool_via_proxy(&db).await;
    proxy.cut();
    for _ in 0..3 {
        assert_unavailable_in_time(&pool).await;
    }
    assert!(pool.ping().await.unwrap_err().is_unavailable());
    proxy.restore().unwrap();
    assert_recovers(&pool).await;
    pool.ping().await.unwrap();
}

#[tokio::test]
async fn a_stall_is_unavailable_within_the_deadline_and_a_restore_recovers() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let (proxy, pool) = pool_via_proxy(&db).await;
    proxy.stall().unwrap();
    // An idle connection stalls mid-statement; a new one stalls mid-handshake.
    for _ in 0..3 {
        assert_unavailable_in_time(&pool).await;
    }
    proxy.restore().unwrap();
    assert_recovers(&pool).await;
}

#[tokio::test]
async fn a_test_database_is_dropped_even_when_its_test_panics() {
    let Some(witness) = TestDatabase::create() else {
        return;
    };
    let (names, name) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let db = TestDatabase::create().unwrap();
        names.send(db.name().to_owned()).unwrap();
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    let name = name.recv().unwrap();
    let pool = PgPool::connect(&witness.options()).await.unwrap();
    let left = pool
        .get()
        .await
        .unwrap()
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap();
    assert!(left.is_empty(), "{name} outlived its test");
}
