//! [`SqliteKeyStore`]: API keys and organisations in a SQLite file, through a [`Pool`].

use std::path::Path;

use faultline_axum::StoreError;
use faultline_axum::auth::{
    Inserted, KeyAdmin, KeyDigest, KeyLookup, KeyPosition, KeyRecord, KeyStatus, OrgRecord,
    StatusChange, StoreFuture,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::pool::{Pool, PoolOptions};

/// The tables. `api_keys` of files written by faultline-axum's former `sqlite` feature also
/// has a `webhook_url` column, which is left alone (nullable, never written).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    active INTEGER NOT NULL,
    deleted_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_sha256 BLOB NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
);
DROP INDEX IF EXISTS api_keys_by_org;
CREATE INDEX IF NOT EXISTS api_keys_by_org_page ON api_keys (org_id, created_at, id);
";

const KEY_COLUMNS: &str = "k.id, k.org_id, k.name, k.display_prefix, k.key_sha256, k.scopes, \
                           k.status, k.expires_at, k.created_at";
/// How many columns [`KEY_COLUMNS`] holds: the organisation's start after them.
const KEY_COLUMN_COUNT: usize = 9;

/// Keys and organisations in a SQLite database. Only the SHA-256 of each key is written.
///
/// # Lookups never wait for a writer; a busy file is unavailable
///
/// Built on [`Pool`]: digest lookups, listings and organisation reads use reader connections
/// of the WAL file; a write lock held elsewhere for longer than the pool's busy timeout is a
/// [`StoreError::is_unavailable`] failure (a 503 with `Retry-After`), never an internal error.
/// A new database file is created readable by its owner only.
#[derive(Debug, Clone)]
pub struct SqliteKeyStore {
    pool: Pool,
}

impl SqliteKeyStore {
    /// Opens (creating it, owner-only, if needed) the database at `path`, and its tables.
    pub fn open(path: &Path, options: PoolOptions) -> Result<Self, StoreError> {
        Self::new(Pool::open(path, options)?)
    }

    /// A private in-memory database.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::new(Pool::in_memory()?)
    }

    /// The store on `pool` (which other stores may share), creating its tables if needed.
    pub fn new(pool: Pool) -> Result<Self, StoreError> {
        pool.write_blocking(|conn| conn.execute_batch(SCHEMA))?;
        pool.write_blocking(add_tier_column)?;
        Ok(SqliteKeyStore { pool })
    }

    /// The pool underneath.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// The migration to plan tiers: `orgs.tier` (nullable: an organisation without one is on the
/// catalog's default tier), added to a file written before it.
///
/// # Safe on an existing file, and when processes race
///
/// The column is looked up and added in one immediate transaction, so two processes opening
/// the same old file add it once; rows keep their values and get no tier.
fn add_tier_column(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let present = tx
        .prepare("SELECT 1 FROM pragma_table_info('orgs') WHERE name = 'tier'")?
        .exists([])?;
    if !present {
        tx.execute_batch("ALTER TABLE orgs ADD COLUMN tier TEXT")?;
    }
    tx.commit()
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let digest: Vec<u8> = row.get(4)?;
    let digest: [u8; 32] = digest.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            "a key digest is 32 bytes".into(),
        )
    })?;
    let id: String = row.get(0)?;
    let org_id: String = row.get(1)?;
    let status: String = row.get(6)?;
    // An unknown status in the file is treated as revoked: refusing is the safe reading.
    let status = KeyStatus::parse(&status).unwrap_or(KeyStatus::Revoked);
    let mut key = KeyRecord::new(&id, &org_id, KeyDigest(digest), status);
    key.name = row.get(2)?;
    key.display_prefix = row.get(3)?;
    key.scopes = row
        .get::<_, String>(5)?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    key.expires_at = row.get(7)?;
    key.created_at = row.get(8)?;
    Ok(key)
}

fn org_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<OrgRecord> {
    let id: String = row.get(first)?;
    let name: String = row.get(first + 1)?;
    let mut org = OrgRecord::new(&id, &name, row.get(first + 4)?);
    org.active = row.get(first + 2)?;
    org.deleted_at = row.get(first + 3)?;
    org.tier = row.get(first + 5)?;
    Ok(org)
}

fn get_key(conn: &Connection, org_id: &str, key_id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    conn.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 AND k.id = ?2"),
        params![org_id, key_id],
        key_from_row,
    )
    .optional()
}

impl KeyLookup for SqliteKeyStore {
    fn find_by_digest(&self, digest: KeyDigest) -> StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        Box::pin(self.pool.read(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {KEY_COLUMNS}, o.id, o.name, o.active, o.deleted_at, o.created_at, o.tier \
                     FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.key_sha256 = ?1"
                ),
                params![digest.0.as_slice()],
                |row| Ok((key_from_row(row)?, org_from_row(row, KEY_COLUMN_COUNT)?)),
            )
            .optional()
        }))
    }
}

impl KeyAdmin for SqliteKeyStore {
    fn insert_key(&self, key: KeyRecord, max_per_org: usize) -> StoreFuture<'_, Inserted> {
        Box::pin(self.pool.write(move |conn| {
            // IMMEDIATE takes the write lock first, so two processes cannot both pass the cap.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let held: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM api_keys WHERE org_id = ?1 AND status != 'revoked'",
                )?
                .query_row(params![key.org_id], |row| row.get(0))?;
            if usize::try_from(held).unwrap_or(usize::MAX) >= max_per_org {
                return Ok(Inserted::LimitReached);
            }
            tx.prepare_cached(
                "INSERT INTO api_keys (id, org_id, name, display_prefix, key_sha256, scopes, \
                 status, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                key.id,
                key.org_id,
                key.name,
                key.display_prefix,
                key.digest.0.as_slice(),
                key.scopes.join(" "),
                key.status.as_str(),
                key.expires_at,
                key.created_at,
            ])?;
            tx.commit()?;
            Ok(Inserted::Stored)
        }))
    }

    fn key(&self, org_id: &str, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        let (org_id, key_id) = (org_id.to_owned(), key_id.to_owned());
        Box::pin(self.pool.read(move |conn| get_key(conn, &org_id, &key_id)))
    }

    fn list_keys(
        &self,
        org_id: &str,
        after: Option<KeyPosition>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<KeyRecord>> {
        let org_id = org_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Box::pin(self.pool.read(move |conn| {
            let order = "ORDER BY k.created_at, k.id LIMIT ?2";
            match after {
                None => {
                    let mut statement = conn.prepare(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 {order}"
                    ))?;
                    statement
                        .query_map(params![org_id, limit], key_from_row)?
                        .collect()
                }
                Some(after) => {
                    let mut statement = conn.prepare(&format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 \
                         AND (k.created_at, k.id) > (?3, ?4) {order}"
                    ))?;
                    statement
                        .query_map(
                            params![org_id, limit, after.created_at, after.id],
                            key_from_row,
                        )?
                        .collect()
                }
            }
        }))
    }

    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> StoreFuture<'_, StatusChange> {
        let (org_id, key_id, from) = (org_id.to_owned(), key_id.to_owned(), from.to_vec());
        Box::pin(self.pool.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(mut key) = get_key(&tx, &org_id, &key_id)? else {
                return Ok(StatusChange::NotFound);
            };
            if !key.status.may_become(&from, to) {
                return Ok(StatusChange::Refused(key));
            }
            tx.prepare_cached("UPDATE api_keys SET status = ?1 WHERE org_id = ?2 AND id = ?3")?
                .execute(params![to.as_str(), org_id, key_id])?;
            tx.commit()?;
            key.status = to;
            Ok(StatusChange::Changed(key))
        }))
    }

    fn insert_org(&self, org: OrgRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.pool.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO orgs (id, name, active, deleted_at, created_at, tier) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                org.id,
                org.name,
                org.active,
                org.deleted_at,
                org.created_at,
                org.tier
            ])?;
            Ok(())
        }))
    }

    fn org_by_name(&self, name: &str) -> StoreFuture<'_, Option<OrgRecord>> {
        let name = name.to_owned();
        Box::pin(self.pool.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, active, deleted_at, created_at, tier FROM orgs WHERE name = ?1",
            )?
            .query_row(params![name], |row| org_from_row(row, 0))
            .optional()
        }))
    }

    fn set_org_active(&self, org_id: &str, active: bool) -> StoreFuture<'_, bool> {
        let org_id = org_id.to_owned();
        Box::pin(self.pool.write(move |conn| {
            let changed = conn
                .prepare_cached("UPDATE orgs SET active = ?1 WHERE id = ?2")?
                .execute(params![active, org_id])?;
            Ok(changed > 0)
        }))
    }

    fn set_org_tier(&self, org_id: &str, tier: Option<&str>) -> StoreFuture<'_, bool> {
        let org_id = org_id.to_owned();
        let tier = tier.map(str::to_owned);
        Box::pin(self.pool.write(move |conn| {
            let changed = conn
                .prepare_cached("UPDATE orgs SET tier = ?1 WHERE id = ?2")?
                .execute(params![tier, org_id])?;
            Ok(changed > 0)
        }))
    }

    fn count_orgs(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.pool.read(|conn| {
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM orgs", [], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        }))
    }
}
