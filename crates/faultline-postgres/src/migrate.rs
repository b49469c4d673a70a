//! Embedded migrations: the schema travels inside the binary and is brought up to date at
//! start-up, by however many processes start at once.

use std::time::Duration;

use faultline_axum::StoreError;
use tokio::time::{Instant, sleep};

use crate::pool::PgPool;

/// One step of the schema, applied once per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Applied in increasing order; never reused for another step.
    pub version: i64,
    /// What the step does, recorded beside its version.
    pub name: &'static str,
    /// The statements, run in one transaction with the record of the step.
    pub sql: &'static str,
}

/// The schema of every store in this crate, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "idempotency_records",
        sql: include_str!("../migrations/0001_idempotency_records.sql"),
    },
    Migration {
        version: 2,
        name: "orgs_and_api_keys",
        sql: include_str!("../migrations/0002_orgs_and_api_keys.sql"),
    },
    Migration {
        version: 3,
        name: "limit_quotas",
        sql: include_str!("../migrations/0003_limit_quotas.sql"),
    },
];

/// The advisory lock that serialises migrations in one database ("faultlin" in ASCII).
const LOCK_KEY: i64 = 0x6661_756c_746c_696e;

/// How long [`migrate`] waits for another process that is migrating the same database.
pub const DEFAULT_MIGRATION_WAIT: Duration = Duration::from_secs(30);

/// A migration recorded as applied under the same version but another name: the database was
/// migrated by a different build.
#[derive(Debug)]
struct Diverged {
    version: i64,
    recorded: String,
    expected: &'static str,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migration {} is recorded as {:?} but this build calls it {:?}",
            self.version, self.recorded, self.expected
        )
    }
}

impl std::error::Error for Diverged {}

#[derive(Debug)]
struct LockWait(Duration);

impl std::fmt::Display for LockWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another process held the migration lock for over {:?}",
            self.0
        )
    }
}

impl std::error::Error for LockWait {}

/// Brings the database up to date with [`MIGRATIONS`]; returns the versions this call applied.
///
/// See [`migrate_with`].
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    migrate_with(pool, MIGRATIONS, DEFAULT_MIGRATION_WAIT).await
}

/// Applies the `migrations` not yet recorded in the table `schema_migrations`, in version
/// order, and returns the versions it applied.
///
/// # Safe when several processes start at once
///
/// All the work happens in one transaction that first takes a transaction-level advisory
/// lock (`pg_try_advisory_xact_lock`, retried every 50 ms for up to `wait`), so one process
/// migrates while the others wait and then find nothing left to do. A failing step rolls back
/// every step of the call and the record of them: the database is never half-migrated.
///
/// # A database migrated by another build is refused
///
/// A version recorded under another name is a [`StoreError`] that is not unavailable.
pub async fn migrate_with(
    pool: &PgPool,
    migrations: &[Migration],
    wait: Duration,
) -> Result<Vec<i64>, StoreError> {
    let mut ordered = migrations.to_vec();
    ordered.sort_by_key(|m| m.version);
    let give_up = Instant::now() + wait;
    let mut conn = pool.get().await?;
    loop {
        let mut tx = conn.transaction().await?;
        let locked: bool = tx
            .query_opt("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?
            .map(|row| row.get(0))
            .unwrap_or(false);
        if !locked {
            drop(tx);
            if Instant::now() >= give_up {
                return Err(StoreError::unavailable(LockWait(wait)));
            }
            sleep(Duration::from_millis(50)).await;
            continue;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let recorded = tx
            .query("SELECT version, name FROM schema_migrations", &[])
            .await?;
        let mut applied = Vec::new();
        for migration in &ordered {
            let found = recorded
                .iter()
                .find(|row| row.get::<_, i64>(0) == migration.version);
            if let Some(row) = found {
                let name: String = row.get(1);
                if name != migration.name {
                    return Err(StoreError::new(Diverged {
                        version: migration.version,
                        recorded: name,
                        expected: migration.name,
                    }));
                }
                continue;
            }
            tx.batch_execute(migration.sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await?;
            applied.push(migration.version);
        }
        tx.commit().await?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "PostgreSQL migrations applied");
        }
        return Ok(applied);
    }
}
