//! The SQLite key store: the embedded default.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::key::KeyDigest;
use super::store::{
    Inserted, KeyRecord, KeyStatus, KeyStore, OrgRecord, StatusChange, StoreError, StoreFuture,
};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA busy_timeout = 5000;
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
    webhook_url TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_org ON api_keys (org_id, created_at);
";

const KEY_COLUMNS: &str = "k.id, k.org_id, k.name, k.display_prefix, k.key_sha256, k.scopes, \
                           k.status, k.expires_at, k.webhook_url, k.created_at";

/// Keys and organisations in a SQLite database. Only the SHA-256 of each key is written.
#[derive(Clone)]
pub struct SqliteKeyStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteKeyStore")
    }
}

impl SqliteKeyStore {
    /// Opens (creating if needed) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path).map_err(StoreError::new)?)
    }

    /// A private in-memory database.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(StoreError::new)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(StoreError::new)?;
        Ok(SqliteKeyStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    fn call<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn)
            })
            .await
            .map_err(StoreError::new)?
            .map_err(StoreError::new)
        })
    }
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
    let scopes: String = row.get(5)?;
    let status: String = row.get(6)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        org_id: row.get(1)?,
        name: row.get(2)?,
        display_prefix: row.get(3)?,
        digest: KeyDigest(digest),
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        // An unknown status in the file is treated as revoked: refusing is the safe reading.
        status: KeyStatus::parse(&status).unwrap_or(KeyStatus::Revoked),
        expires_at: row.get(7)?,
        webhook_url: row.get(8)?,
        created_at: row.get(9)?,
    })
}

fn org_from_row(row: &Row<'_>, first: usize) -> rusqlite::Result<OrgRecord> {
    Ok(OrgRecord {
        id: row.get(first)?,
        name: row.get(first + 1)?,
        active: row.get(first + 2)?,
        deleted_at: row.get(first + 3)?,
        created_at: row.get(first + 4)?,
    })
}

fn get_key(conn: &Connection, org_id: &str, key_id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    conn.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 AND k.id = ?2"),
        params![org_id, key_id],
        key_from_row,
    )
    .optional()
}

impl KeyStore for SqliteKeyStore {
    fn find_by_digest(&self, digest: KeyDigest) -> StoreFuture<'_, Option<(KeyRecord, OrgRecord)>> {
        self.call(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {KEY_COLUMNS}, o.id, o.name, o.active, o.deleted_at, o.created_at \
                     FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.key_sha256 = ?1"
                ),
                params![digest.0.as_slice()],
                |row| Ok((key_from_row(row)?, org_from_row(row, 10)?)),
            )
            .optional()
        })
    }

    fn insert_key(&self, key: KeyRecord, max_per_org: usize) -> StoreFuture<'_, Inserted> {
        self.call(move |conn| {
            // IMMEDIATE takes the write lock first, so two processes cannot both pass the cap.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_keys WHERE org_id = ?1 AND status != 'revoked'",
                params![key.org_id],
                |row| row.get(0),
            )?;
            if usize::try_from(held).unwrap_or(usize::MAX) >= max_per_org {
                return Ok(Inserted::LimitReached);
            }
            tx.execute(
                "INSERT INTO api_keys (id, org_id, name, display_prefix, key_sha256, scopes, \
                 status, expires_at, webhook_url, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    key.id,
                    key.org_id,
                    key.name,
                    key.display_prefix,
                    key.digest.0.as_slice(),
                    key.scopes.join(" "),
                    key.status.as_str(),
                    key.expires_at,
                    key.webhook_url,
                    key.created_at,
                ],
            )?;
            tx.commit()?;
            Ok(Inserted::Stored)
        })
    }

    fn list_keys(&self, org_id: &str) -> StoreFuture<'_, Vec<KeyRecord>> {
        let org_id = org_id.to_owned();
        self.call(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org_id = ?1 \
                 ORDER BY k.created_at, k.rowid"
            ))?;
            let rows = statement.query_map(params![org_id], key_from_row)?;
            rows.collect()
        })
    }

    fn set_key_status(
        &self,
        org_id: &str,
        key_id: &str,
        from: &[KeyStatus],
        to: KeyStatus,
    ) -> StoreFuture<'_, StatusChange> {
        let (org_id, key_id, from) = (org_id.to_owned(), key_id.to_owned(), from.to_vec());
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(mut key) = get_key(&tx, &org_id, &key_id)? else {
                return Ok(StatusChange::NotFound);
            };
            if !key.status.may_become(&from, to) {
                return Ok(StatusChange::Refused(key));
            }
            tx.execute(
                "UPDATE api_keys SET status = ?1 WHERE org_id = ?2 AND id = ?3",
                params![to.as_str(), org_id, key_id],
            )?;
            tx.commit()?;
            key.status = to;
            Ok(StatusChange::Changed(key))
        })
    }

    fn insert_org(&self, org: OrgRecord) -> StoreFuture<'_, ()> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO orgs (id, name, active, deleted_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![org.id, org.name, org.active, org.deleted_at, org.created_at],
            )?;
            Ok(())
        })
    }

    fn org_by_name(&self, name: &str) -> StoreFuture<'_, Option<OrgRecord>> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.query_row(
                "SELECT id, name, active, deleted_at, created_at FROM orgs WHERE name = ?1",
                params![name],
                |row| org_from_row(row, 0),
            )
            .optional()
        })
    }

    fn set_org_active(&self, org_id: &str, active: bool) -> StoreFuture<'_, bool> {
        let org_id = org_id.to_owned();
        self.call(move |conn| {
            let changed = conn.execute(
                "UPDATE orgs SET active = ?1 WHERE id = ?2",
                params![active, org_id],
            )?;
            Ok(changed > 0)
        })
    }

    fn count_orgs(&self) -> StoreFuture<'_, u64> {
        self.call(|conn| {
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM orgs", [], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }
}
