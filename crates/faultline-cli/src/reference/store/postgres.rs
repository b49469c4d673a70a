//! The PostgreSQL engine of the reference data, shared by every `serve` process that points at
//! the same database.
//!
//! Every statement runs under the pool's deadline ([`PgPool`]): an unreachable, stalled or
//! restarting server is a [`StoreError::unavailable`] (503 with `Retry-After`) within it.
//! Every change that checks and then writes runs in one transaction, which rolls back when its
//! future is dropped (the request is gone) or a statement fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use faultline_postgres::tokio_postgres::Row;
use faultline_postgres::{
    DEFAULT_MIGRATION_WAIT, Migration, PgIdempotencyStore, PgPool, migrate, migrate_with,
    store_error,
};

use super::{
    CategoryRow, ChatbotRow, Deleted, InsertRefused, MAX_CASCADE, MAX_CATEGORY_DEPTH, Record,
    StoreError,
};

/// The reference data's tables, after the stores of `faultline-postgres` (their versions
/// start at 1001 so they never meet that crate's).
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1001,
    name: "reference_data",
    sql: "
CREATE TABLE reference_settings (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE chatbots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE INDEX chatbots_by_org ON chatbots (org_id, created_at, id);
CREATE TABLE categories (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    parent_id TEXT REFERENCES categories (id),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX categories_by_parent ON categories (parent_id);
CREATE INDEX categories_by_org ON categories (org_id);
CREATE TABLE api_key_webhooks (
    key_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    url TEXT NOT NULL
);
",
}];

const GET_CHATBOT: &str = "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
     FROM chatbots WHERE id = $1";

const LOCK_CHATBOT: &str = "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
     FROM chatbots WHERE id = $1 FOR UPDATE";

const LIST_CHATBOTS: &str = "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
     FROM chatbots WHERE org_id = $1 AND deleted_at IS NULL AND (created_at, id) > ($2, $3) \
     ORDER BY created_at, id LIMIT $4";

const INSERT_CHATBOT: &str = "INSERT INTO chatbots \
     (id, org_id, name, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)";

const UPDATE_CHATBOT: &str = "UPDATE chatbots SET name = $1, status = $2, updated_at = $3, \
     deleted_at = $4 WHERE id = $5 AND org_id = $6";

const GET_CATEGORY: &str =
    "SELECT id, org_id, parent_id, name, created_at FROM categories WHERE id = $1";

/// Locks the parent of a new category against a concurrent delete until the insert commits.
const LOCK_CATEGORY: &str =
    "SELECT id, org_id, parent_id, name, created_at FROM categories WHERE id = $1 FOR UPDATE";

const INSERT_CATEGORY: &str = "INSERT INTO categories (id, org_id, parent_id, name, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

const HAS_CHILDREN: &str = "SELECT 1 FROM categories WHERE parent_id = $1 LIMIT 1";

/// The level of category $1, counting at most $2 + 1 levels.
const LEVEL: &str = "WITH RECURSIVE up(parent_id, level) AS ( \
         SELECT parent_id, 1 FROM categories WHERE id = $1 \
         UNION ALL \
         SELECT c.parent_id, up.level + 1 FROM categories c JOIN up ON c.id = up.parent_id \
         WHERE up.level <= $2 \
     ) SELECT COALESCE(MAX(level), 0) FROM up";

/// Category $1 and its descendants in organisation $2, breadth first, at most $3 of them
/// (PostgreSQL stops the recursion once the outer `LIMIT` is reached).
const SUBTREE: &str = "WITH RECURSIVE tree(id, depth) AS ( \
         SELECT $1::text, 0 \
         UNION ALL \
         SELECT c.id, tree.depth + 1 FROM categories c JOIN tree ON c.parent_id = tree.id \
         WHERE c.org_id = $2 \
     ) SELECT id FROM tree LIMIT $3";

/// Locks a batch of categories about to be deleted, so that no child is added under them.
const LOCK_BATCH: &str = "SELECT id FROM categories WHERE id = ANY($1) FOR UPDATE";

const DELETE_BATCH_SQL: &str = "DELETE FROM categories WHERE id = ANY($1)";

/// How many categories one statement of a cascade deletes.
const DELETE_BATCH: usize = 500;

/// The PostgreSQL store: a pool, the idempotency records on the same database (so that a
/// handler completes its record in its own transaction), and the cursor secret.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    records: PgIdempotencyStore,
    cursor_secret: Arc<Vec<u8>>,
}

impl PgStore {
    /// Brings the schema up to date (the crate's stores and the reference tables, under the
    /// advisory lock of [`migrate_with`]: safe when several processes start at once), then
    /// reads the cursor secret, creating it if no process has yet.
    ///
    /// # Every process on the database signs cursors with one secret
    ///
    /// The secret is inserted with `ON CONFLICT DO NOTHING` and read back, so processes that
    /// start at once agree on it: a cursor from one pages on any other.
    pub async fn connect(pool: PgPool) -> Result<Self, StoreError> {
        migrate(&pool).await?;
        migrate_with(&pool, MIGRATIONS, DEFAULT_MIGRATION_WAIT).await?;
        let candidate: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let mut conn = pool.get().await?;
        conn.execute(
            "INSERT INTO reference_settings (key, value) VALUES ('cursor_secret', $1) \
             ON CONFLICT (key) DO NOTHING",
            &[&candidate],
        )
        .await?;
        let secret: Vec<u8> = conn
            .query_opt(
                "SELECT value FROM reference_settings WHERE key = 'cursor_secret'",
                &[],
            )
            .await?
            .ok_or_else(|| StoreError::new(MissingSecret))
            .and_then(|row| column(&row, 0))?;
        drop(conn);
        Ok(PgStore {
            records: PgIdempotencyStore::new(pool.clone()),
            pool,
            cursor_secret: Arc::new(secret),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The idempotency records on this database (the ones handlers complete in their own
    /// transactions).
    pub fn records(&self) -> &PgIdempotencyStore {
        &self.records
    }

    /// The cursor secret read at [`PgStore::connect`].
    pub fn cursor_secret(&self) -> &[u8] {
        &self.cursor_secret
    }

    /// The statement deadline of the pool.
    pub fn deadline(&self) -> Duration {
        self.pool.statement_timeout()
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.pool.ping().await
    }

    pub(super) async fn create_chatbot(
        &self,
        row: &ChatbotRow,
        record: Option<&Record>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        tx.execute(
            INSERT_CHATBOT,
            &[
                &row.id,
                &row.org_id,
                &row.name,
                &row.status,
                &row.created_at,
                &row.updated_at,
            ],
        )
        .await?;
        if let Some(r) = record
            && !self
                .records
                .complete_in(&mut tx, &r.token, &r.response, r.now, r.retention)
                .await?
        {
            // Dropping the transaction rolls the insert back.
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn get_chatbot(&self, id: &str) -> Result<Option<ChatbotRow>, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.query_opt(GET_CHATBOT, &[&id])
            .await?
            .map(|r| chatbot(&r))
            .transpose()
    }

    pub(super) async fn list_chatbots(
        &self,
        org_id: &str,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<ChatbotRow>, StoreError> {
        let (after_ts, after_id) = after.unwrap_or_default();
        let limit = i64::from(limit);
        let mut conn = self.pool.get().await?;
        let rows = conn
            .query(LIST_CHATBOTS, &[&org_id, &after_ts, &after_id, &limit])
            .await?;
        rows.iter().map(chatbot).collect()
    }

    pub(super) async fn change_chatbot<R>(
        &self,
        id: &str,
        change: impl FnOnce(Option<ChatbotRow>) -> Result<ChatbotRow, R>,
    ) -> Result<Result<ChatbotRow, R>, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        let found = tx
            .query_opt(LOCK_CHATBOT, &[&id])
            .await?
            .map(|r| chatbot(&r))
            .transpose()?;
        let decided = change(found);
        if let Ok(row) = &decided {
            tx.execute(
                UPDATE_CHATBOT,
                &[
                    &row.name,
                    &row.status,
                    &row.updated_at,
                    &row.deleted_at,
                    &row.id,
                    &row.org_id,
                ],
            )
            .await?;
            tx.commit().await?;
        }
        Ok(decided)
    }

    pub(super) async fn get_category(&self, id: &str) -> Result<Option<CategoryRow>, StoreError> {
        let mut conn = self.pool.get().await?;
        conn.query_opt(GET_CATEGORY, &[&id])
            .await?
            .map(|r| category(&r))
            .transpose()
    }

    pub(super) async fn insert_category(
        &self,
        row: &CategoryRow,
    ) -> Result<Result<(), InsertRefused>, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        if let Some(parent) = &row.parent_id {
            let found = tx
                .query_opt(LOCK_CATEGORY, &[parent])
                .await?
                .map(|r| category(&r))
                .transpose()?;
            if found.is_none_or(|found| found.org_id != row.org_id) {
                return Ok(Err(InsertRefused::ParentNotFound));
            }
            let max = i32::try_from(MAX_CATEGORY_DEPTH).unwrap_or(i32::MAX);
            let level: i32 = match tx.query_opt(LEVEL, &[parent, &max]).await? {
                Some(r) => column(&r, 0)?,
                None => 0,
            };
            if level >= max {
                return Ok(Err(InsertRefused::TooDeep));
            }
        }
        tx.execute(
            INSERT_CATEGORY,
            &[
                &row.id,
                &row.org_id,
                &row.parent_id,
                &row.name,
                &row.created_at,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    pub(super) async fn delete_category(
        &self,
        org_id: &str,
        id: &str,
        cascade: bool,
    ) -> Result<Deleted, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        let found = tx
            .query_opt(LOCK_CATEGORY, &[&id])
            .await?
            .map(|r| category(&r))
            .transpose()?;
        if found.is_none_or(|row| row.org_id != org_id) {
            return Ok(Deleted::NotFound);
        }
        let has_children = tx.query_opt(HAS_CHILDREN, &[&id]).await?.is_some();
        if has_children && !cascade {
            return Ok(Deleted::HasChildren);
        }
        let cap = i64::try_from(MAX_CASCADE + 2).unwrap_or(i64::MAX);
        let tree = tx
            .query(SUBTREE, &[&id, &org_id, &cap])
            .await?
            .iter()
            .map(|r| column::<String>(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        if tree.len() > MAX_CASCADE + 1 {
            return Ok(Deleted::TooLarge);
        }
        // Children are locked first (a category added under one meanwhile makes the delete
        // fail and roll back whole), then deleted deepest first, a batch per statement.
        let ids: Vec<String> = tree.into_iter().rev().collect();
        for batch in ids.chunks(DELETE_BATCH) {
            let batch = batch.to_vec();
            tx.query(LOCK_BATCH, &[&batch]).await?;
        }
        if tx.query_opt(HAS_NEW_CHILD, &[&ids]).await?.is_some() {
            return Err(StoreError::unavailable(Raced));
        }
        for batch in ids.chunks(DELETE_BATCH) {
            let batch = batch.to_vec();
            tx.execute(DELETE_BATCH_SQL, &[&batch]).await?;
        }
        tx.commit().await?;
        Ok(Deleted::Done(ids.len()))
    }

    pub(super) async fn save_webhook(
        &self,
        key_id: &str,
        org_id: &str,
        url: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        conn.execute(
            "INSERT INTO api_key_webhooks (key_id, org_id, url) VALUES ($1, $2, $3)",
            &[&key_id, &org_id, &url],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn webhooks_of(
        &self,
        org_id: &str,
        key_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        if key_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = key_ids.to_vec();
        let mut conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT key_id, url FROM api_key_webhooks WHERE org_id = $1 AND key_id = ANY($2)",
                &[&org_id, &ids],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((column(r, 0)?, column(r, 1)?)))
            .collect()
    }
}

/// A child added under the tree after it was read (checked once the tree is locked).
const HAS_NEW_CHILD: &str = "SELECT 1 FROM categories WHERE parent_id = ANY($1) \
     AND NOT (id = ANY($1)) LIMIT 1";

/// A category was added under a tree while it was being deleted; nothing was deleted.
#[derive(Debug)]
struct Raced;

impl std::fmt::Display for Raced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a category was added under the tree being deleted; retry")
    }
}

impl std::error::Error for Raced {}

/// The cursor secret vanished between its insert and its read.
#[derive(Debug)]
struct MissingSecret;

impl std::fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cursor secret is missing from reference_settings")
    }
}

impl std::error::Error for MissingSecret {}

/// A row read as the schema says; a column of another type is a defect (500), never a panic.
fn chatbot(row: &Row) -> Result<ChatbotRow, StoreError> {
    let read = || {
        Ok::<_, faultline_postgres::tokio_postgres::Error>(ChatbotRow {
            id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            name: row.try_get(2)?,
            status: row.try_get(3)?,
            created_at: row.try_get(4)?,
            updated_at: row.try_get(5)?,
            deleted_at: row.try_get(6)?,
        })
    };
    read().map_err(store_error)
}

fn category(row: &Row) -> Result<CategoryRow, StoreError> {
    let read = || {
        Ok::<_, faultline_postgres::tokio_postgres::Error>(CategoryRow {
            id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            parent_id: row.try_get(2)?,
            name: row.try_get(3)?,
            created_at: row.try_get(4)?,
        })
    };
    read().map_err(store_error)
}

/// Column `i` of `row`, as [`chatbot`] reads columns.
fn column<'a, T: faultline_postgres::tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(store_error)
}
