//! The SQLite engine of the reference data: an embedded database behind a [`Pool`] (one
//! writer, readers that never wait for it).
//!
//! The SQL functions here take a connection and are called inside [`SqliteStore::read`] or
//! [`SqliteStore::write`]; those that check and then change state run in one `IMMEDIATE`
//! transaction, so that the check still holds when the change is written, for every process
//! on the file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use faultline_sqlite::{Pool, PoolOptions};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    CategoryRow, ChatbotRow, Deleted, InsertRefused, MAX_CASCADE, MAX_CATEGORY_DEPTH, StoreError,
};

/// How many categories one `DELETE` statement of a cascade removes.
const DELETE_BATCH: usize = 500;

/// Tables and indexes. Every foreign key and every column a request looks rows up by has an
/// index, so no request scans a table that grows with other organisations' data.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chatbots (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE TABLE IF NOT EXISTS categories (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    parent_id TEXT REFERENCES categories (id),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS chatbots_by_org ON chatbots (org_id, created_at, id);
CREATE INDEX IF NOT EXISTS categories_by_parent ON categories (parent_id);
CREATE INDEX IF NOT EXISTS categories_by_org ON categories (org_id);
";

/// Files created before deletion moved into the application had `ON DELETE CASCADE` on
/// `categories.parent_id`: SQLite then deleted a subtree row by row through recursive
/// triggers, unbounded and (without an index on `parent_id`) scanning the table per row. The
/// table is rebuilt without it, its rows kept.
const MIGRATE_CATEGORIES: &str = "
CREATE TABLE categories_rebuilt (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    parent_id TEXT REFERENCES categories (id),
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO categories_rebuilt (id, org_id, parent_id, name, created_at)
    SELECT id, org_id, parent_id, name, created_at FROM categories;
DROP TABLE categories;
ALTER TABLE categories_rebuilt RENAME TO categories;
";

/// The SQLite store, shared by request handlers; calls run on the blocking pool.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: Pool,
}

impl SqliteStore {
    /// Opens (creating it, readable by its owner only, if needed) the database file, with the
    /// pool's default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, PoolOptions::default())
    }

    /// Opens the database file with these pool options.
    ///
    /// # Old files are migrated
    ///
    /// A file whose `categories` table still deletes through `ON DELETE CASCADE` is rebuilt
    /// without it (rows kept), and missing indexes are created.
    pub fn open_with(path: &Path, options: PoolOptions) -> Result<Self, StoreError> {
        Self::init(Pool::open(path, options)?)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Pool::in_memory()?)
    }

    fn init(pool: Pool) -> Result<Self, StoreError> {
        pool.write_blocking(|conn| {
            conn.execute_batch(SCHEMA)?;
            if categories_cascade_in_schema(conn)? {
                // Foreign keys are switched off around the rebuild (SQLite's recommended
                // procedure), and cannot be switched inside a transaction.
                conn.execute_batch("PRAGMA foreign_keys = OFF")?;
                let migrated = (|| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute_batch(MIGRATE_CATEGORIES)?;
                    tx.commit()
                })();
                conn.execute_batch("PRAGMA foreign_keys = ON")?;
                migrated?;
            }
            conn.execute_batch(INDEXES)
        })?;
        Ok(SqliteStore { pool })
    }

    /// The pool underneath (tests use it to reach the writer connection).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs `f` with a reader connection: it sees the last committed state and never waits
    /// for a writer.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.pool.read(f).await
    }

    /// Runs `f` with the writer connection; if the returned future is dropped, the running
    /// statement is interrupted and its transaction rolled back.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.pool.write(f).await
    }

    /// The same as [`SqliteStore::write`] (the name the key management code uses).
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write(f).await
    }

    /// [`SqliteStore::write`] for work of many statements: `f` also gets a [`Cancelled`] flag to
    /// check between statements.
    ///
    /// # Work of many statements stops with its request too
    ///
    /// SQLite forgets an interruption that arrives between two statements; the flag does not,
    /// so a loop that checks it stops at its next step and its transaction is rolled back.
    pub async fn write_steps<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Cancelled) -> rusqlite::Result<T> + Send + 'static,
    {
        let cancelled = Cancelled::default();
        let mut guard = CancelOnDrop {
            cancelled: cancelled.clone(),
            armed: true,
        };
        let result = self.pool.write(move |conn| f(conn, &cancelled)).await;
        guard.armed = false;
        result
    }

    /// The secret that signs cursors, created on first use and kept in the database so cursors
    /// survive restarts.
    pub fn cursor_secret(&self) -> Result<Vec<u8>, StoreError> {
        // `INSERT OR IGNORE` then read, in one IMMEDIATE transaction: two processes starting
        // at once on a new file both end up with the secret the first one wrote.
        self.pool.write_blocking(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let candidate: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
            tx.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES ('cursor_secret', ?1)",
                params![candidate],
            )?;
            let secret: Vec<u8> = tx.query_row(
                "SELECT value FROM settings WHERE key = 'cursor_secret'",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(secret)
        })
    }
}

/// Set when the request that started a [`SqliteStore::write_steps`] is gone.
#[derive(Debug, Clone, Default)]
pub struct Cancelled(Arc<AtomicBool>);

impl Cancelled {
    /// An interruption error once the request is gone, to end the work with `?`.
    pub fn check(&self) -> rusqlite::Result<()> {
        if self.0.load(Ordering::Relaxed) {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
                Some("the request is gone".into()),
            ))
        } else {
            Ok(())
        }
    }
}

struct CancelOnDrop {
    cancelled: Cancelled,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.cancelled.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether the `categories` table of this file still has `ON DELETE CASCADE`.
fn categories_cascade_in_schema(conn: &Connection) -> rusqlite::Result<bool> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'categories'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sql.is_some_and(|sql| {
        sql.to_ascii_uppercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("ON DELETE CASCADE")
    }))
}

fn chatbot(row: &rusqlite::Row<'_>) -> rusqlite::Result<ChatbotRow> {
    Ok(ChatbotRow {
        id: row.get(0)?,
        org_id: row.get(1)?,
        name: row.get(2)?,
        status: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        deleted_at: row.get(6)?,
    })
}

// The statements of the request path are prepared once per pooled connection and cached
// (`prepare_cached`): preparing the chatbot read again for every request cost about 30,000
// instructions, nearly half of what a bare-axum read of the row cost.
const GET_CHATBOT: &str = "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
     FROM chatbots WHERE id = ?1";

const LIST_CHATBOTS: &str = "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
     FROM chatbots WHERE org_id = ?1 AND deleted_at IS NULL AND (created_at, id) > (?2, ?3) \
     ORDER BY created_at, id LIMIT ?4";

const GET_CATEGORY: &str =
    "SELECT id, org_id, parent_id, name, created_at FROM categories WHERE id = ?1";

const HAS_CHILDREN: &str = "SELECT 1 FROM categories WHERE parent_id = ?1 LIMIT 1";

/// The level of category ?1, counting at most ?2 + 1 levels.
const LEVEL: &str = "WITH RECURSIVE up(parent_id, level) AS ( \
         SELECT parent_id, 1 FROM categories WHERE id = ?1 \
         UNION ALL \
         SELECT c.parent_id, up.level + 1 FROM categories c JOIN up ON c.id = up.parent_id \
         WHERE up.level <= ?2 \
     ) SELECT COALESCE(MAX(level), 0) FROM up";

// `+c.org_id` keeps the planner on the `parent_id` index: the organisation's index would visit
// every category of the organisation for each category of the tree.
/// Category ?1 and its descendants in organisation ?2, breadth first, at most ?3 of them.
const SUBTREE: &str = "WITH RECURSIVE tree(id) AS ( \
         SELECT ?1 \
         UNION \
         SELECT c.id FROM categories c JOIN tree ON c.parent_id = tree.id \
         WHERE +c.org_id = ?2 \
         LIMIT ?3 \
     ) SELECT id FROM tree";

/// Inserts a chatbot.
pub fn insert_chatbot(conn: &Connection, row: &ChatbotRow) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO chatbots (id, org_id, name, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![row.id, row.org_id, row.name, row.status, row.created_at, row.updated_at])?;
    Ok(())
}

/// The chatbot with this id, of any organisation (deleted ones included); handlers pass it
/// through `Principal::scope`.
pub fn get_chatbot(conn: &Connection, id: &str) -> rusqlite::Result<Option<ChatbotRow>> {
    conn.prepare_cached(GET_CHATBOT)?
        .query_row(params![id], chatbot)
        .optional()
}

/// Live chatbots of `org_id` after `(created_at, id)`, oldest first.
pub fn list_chatbots(
    conn: &Connection,
    org_id: &str,
    after: Option<(String, String)>,
    limit: u32,
) -> rusqlite::Result<Vec<ChatbotRow>> {
    let (after_ts, after_id) = after.unwrap_or_default();
    let mut stmt = conn.prepare_cached(LIST_CHATBOTS)?;
    let rows = stmt.query_map(params![org_id, after_ts, after_id, limit], chatbot)?;
    rows.collect()
}

/// Writes name, status, `updated_at` and `deleted_at` of a chatbot of `row.org_id`.
pub fn update_chatbot(conn: &Connection, row: &ChatbotRow) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE chatbots SET name = ?1, status = ?2, updated_at = ?3, deleted_at = ?4 WHERE id = ?5 AND org_id = ?6",
    )?
    .execute(params![row.name, row.status, row.updated_at, row.deleted_at, row.id, row.org_id])?;
    Ok(())
}

/// Reads a chatbot, lets `change` decide from what it finds, and writes the row `change`
/// gives back, all in one `IMMEDIATE` transaction.
///
/// # A change is decided on the row it overwrites
///
/// No other writer (thread or process) can change the row between the read and the write, so
/// a decision such as "not deleted" or "may go from paused to active" still holds when it is
/// written.
pub fn change_chatbot<R>(
    conn: &mut Connection,
    id: &str,
    change: impl FnOnce(Option<ChatbotRow>) -> Result<ChatbotRow, R>,
) -> rusqlite::Result<Result<ChatbotRow, R>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = get_chatbot(&tx, id)?;
    let decided = change(found);
    if let Ok(row) = &decided {
        update_chatbot(&tx, row)?;
        tx.commit()?;
    }
    Ok(decided)
}

fn category(r: &rusqlite::Row<'_>) -> rusqlite::Result<CategoryRow> {
    Ok(CategoryRow {
        id: r.get(0)?,
        org_id: r.get(1)?,
        parent_id: r.get(2)?,
        name: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// The category with this id, of any organisation; handlers pass it through
/// `Principal::scope`.
pub fn get_category(conn: &Connection, id: &str) -> rusqlite::Result<Option<CategoryRow>> {
    conn.prepare_cached(GET_CATEGORY)?
        .query_row(params![id], category)
        .optional()
}

/// Inserts a category after checking, in the same `IMMEDIATE` transaction, that its parent
/// exists in the same organisation and is not at [`MAX_CATEGORY_DEPTH`].
///
/// # Nesting is limited
///
/// A category would be at level `depth(parent) + 1`; above [`MAX_CATEGORY_DEPTH`] it is
/// refused with [`InsertRefused::TooDeep`].
pub fn insert_category(
    conn: &mut Connection,
    row: &CategoryRow,
) -> rusqlite::Result<Result<(), InsertRefused>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(parent) = &row.parent_id {
        match get_category(&tx, parent)? {
            Some(found) if found.org_id == row.org_id => {}
            _ => return Ok(Err(InsertRefused::ParentNotFound)),
        }
        if level(&tx, parent)? >= MAX_CATEGORY_DEPTH {
            return Ok(Err(InsertRefused::TooDeep));
        }
    }
    tx.prepare_cached(
        "INSERT INTO categories (id, org_id, parent_id, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![row.id, row.org_id, row.parent_id, row.name, row.created_at])?;
    tx.commit()?;
    Ok(Ok(()))
}

/// The level of category `id` (1 for a root), counting at most `MAX_CATEGORY_DEPTH + 1`
/// ancestors, so a chain left too deep by an older version costs no more than that.
fn level(conn: &Connection, id: &str) -> rusqlite::Result<u32> {
    conn.prepare_cached(LEVEL)?
        .query_row(params![id, MAX_CATEGORY_DEPTH], |r| r.get(0))
}

/// Deletes category `id` of `org_id` (with its descendants when `cascade`), in one
/// `IMMEDIATE` transaction: all of it or none of it.
///
/// # Bounded, in batches, and stopped with its request
///
/// At most [`MAX_CASCADE`] descendants are collected (a larger tree answers
/// [`Deleted::TooLarge`] after reading one more than that), then deleted deepest first, a
/// batch per statement; `cancelled` is checked between batches, so a request that is gone
/// rolls the whole delete back.
pub fn delete_category(
    conn: &mut Connection,
    org_id: &str,
    id: &str,
    cascade: bool,
    cancelled: &Cancelled,
) -> rusqlite::Result<Deleted> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if get_category(&tx, id)?.is_none_or(|row| row.org_id != org_id) {
        return Ok(Deleted::NotFound);
    }
    let has_children = tx
        .prepare_cached(HAS_CHILDREN)?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some();
    if has_children && !cascade {
        return Ok(Deleted::HasChildren);
    }
    let tree = subtree(&tx, org_id, id, cancelled)?;
    if tree.len() > MAX_CASCADE + 1 {
        return Ok(Deleted::TooLarge);
    }
    // Breadth-first order reversed: every category goes in the same batch as its children or
    // after them, so the foreign key holds at the end of every statement.
    let ids: Vec<&str> = tree.iter().rev().map(String::as_str).collect();
    for batch in ids.chunks(DELETE_BATCH) {
        cancelled.check()?;
        let marks = vec!["?"; batch.len()].join(", ");
        tx.execute(
            &format!("DELETE FROM categories WHERE id IN ({marks})"),
            rusqlite::params_from_iter(batch.iter()),
        )?;
    }
    cancelled.check()?;
    tx.commit()?;
    Ok(Deleted::Done(ids.len()))
}

/// Category `id` and its descendants in `org_id`, breadth first, at most `MAX_CASCADE + 2` of
/// them (itself, the allowed descendants, and one to tell that there are too many).
fn subtree(
    tx: &Transaction<'_>,
    org_id: &str,
    id: &str,
    cancelled: &Cancelled,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(SUBTREE)?;
    let cap = i64::try_from(MAX_CASCADE + 2).unwrap_or(i64::MAX);
    let ids = stmt
        .query_map(params![id, org_id, cap], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    cancelled.check()?;
    Ok(ids)
}

/// The reference API's table of webhook URLs, one per key at most.
const WEBHOOK_TABLE: &str = "CREATE TABLE IF NOT EXISTS api_key_webhooks (
    key_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    url TEXT NOT NULL
)";

/// Records the webhook URL of key `key_id` of `org_id`.
pub fn save_webhook(
    conn: &Connection,
    key_id: &str,
    org_id: &str,
    url: &str,
) -> rusqlite::Result<()> {
    conn.execute_batch(WEBHOOK_TABLE)?;
    conn.execute(
        "INSERT INTO api_key_webhooks (key_id, org_id, url) VALUES (?1, ?2, ?3)",
        params![key_id, org_id, url],
    )?;
    Ok(())
}

/// The webhook URLs of `key_ids` (keys of `org_id`), by key id.
pub fn webhooks_of(
    conn: &Connection,
    org_id: &str,
    key_ids: &[String],
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    // Until a key is created with a webhook, the table may not exist; reading must not create
    // it (reads may run on read-only connections).
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'api_key_webhooks'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists || key_ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let placeholders = (2..key_ids.len() + 2)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut statement = conn.prepare(&format!(
        "SELECT key_id, url FROM api_key_webhooks WHERE org_id = ?1 AND key_id IN ({placeholders})"
    ))?;
    let values = std::iter::once(org_id).chain(key_ids.iter().map(String::as_str));
    let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` (parameters bound to NULL), one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("the statement is valid");
        let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
        let steps = stmt
            .query_map(rusqlite::params_from_iter(unbound), |r| {
                r.get::<_, String>(3)
            })
            .expect("the plan is readable")
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect("the plan is readable");
        steps.join("\n")
    }

    /// # No request scans a table
    ///
    /// Every statement a request runs finds its rows through an index, so its cost does not
    /// grow with other organisations' data.
    #[test]
    fn every_lookup_of_a_request_uses_an_index() {
        let store = SqliteStore::in_memory().expect("an in-memory store opens");
        let plans = store
            .pool()
            .write_blocking(|conn| {
                Ok([
                    plan(conn, GET_CHATBOT),
                    plan(conn, LIST_CHATBOTS),
                    plan(conn, GET_CATEGORY),
                    plan(conn, HAS_CHILDREN),
                    plan(conn, LEVEL),
                    plan(conn, SUBTREE),
                    plan(conn, "DELETE FROM categories WHERE id IN (?1, ?2)"),
                ])
            })
            .expect("plans are read");
        // The walk down a tree goes by parent, never through the organisation's categories.
        assert!(
            plans[5].contains("USING INDEX categories_by_parent"),
            "{}",
            plans[5]
        );
        for plan in plans {
            for table in ["chatbots", "categories"] {
                assert!(
                    !plan.contains(&format!("SCAN {table}")) && !plan.contains("SCAN c"),
                    "a full scan:\n{plan}"
                );
            }
            assert!(!plan.contains("USE TEMP B-TREE FOR ORDER BY"), "{plan}");
        }
    }

    #[test]
    fn the_schema_has_no_cascading_foreign_key() {
        let store = SqliteStore::in_memory().expect("an in-memory store opens");
        let cascades = store
            .pool()
            .write_blocking(|conn| categories_cascade_in_schema(conn))
            .expect("the schema is readable");
        assert!(!cascades);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_of_many_statements_stops_when_its_request_is_gone_between_two() {
        let store = SqliteStore::in_memory().expect("an in-memory store opens");
        let (first_done, first_done_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_on, go_on_rx) = std::sync::mpsc::channel::<()>();
        let mut work = Box::pin(store.write_steps(move |conn, cancelled| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ('step', x'01')",
                [],
            )?;
            let _ = first_done.send(());
            // The request is dropped here, while no statement runs.
            let _ = go_on_rx.recv();
            cancelled.check()?;
            tx.commit()
        }));
        tokio::select! {
            _ = &mut work => panic!("the work waits for the test"),
            _ = first_done_rx => {}
        }
        drop(work);
        go_on.send(()).expect("the work waits");
        let kept: i64 = store
            .pool()
            .write_blocking(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM settings WHERE key = 'step'",
                    [],
                    |r| r.get(0),
                )
            })
            .expect("the count is read");
        assert_eq!(kept, 0, "the first statement was rolled back");
    }
}
