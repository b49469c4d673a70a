//! The reference API's storage: an embedded SQLite database.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

/// A chatbot row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatbotRow {
    /// UUID.
    pub id: String,
    /// Owning organisation.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// draft | active | paused | archived.
    pub status: String,
    /// ISO-8601, `+00:00`.
    pub created_at: String,
    /// ISO-8601, `+00:00`.
    pub updated_at: String,
    /// Set once deleted.
    pub deleted_at: Option<String>,
}

/// A category row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryRow {
    /// UUID.
    pub id: String,
    /// Owning organisation.
    pub org_id: String,
    /// Parent category, if any.
    pub parent_id: Option<String>,
    /// Display name.
    pub name: String,
    /// ISO-8601, `+00:00`.
    pub created_at: String,
}

/// The SQLite store, shared by request handlers; calls run on the blocking pool.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// A storage failure; its text goes to logs only.
pub type StoreError = rusqlite::Error;

/// A SQLite failure as the one store error of faultline: a busy or locked database, or one
/// that cannot be opened, is unavailable (503 with `Retry-After`); anything else is internal.
pub fn store_error(e: rusqlite::Error) -> faultline_axum::StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | CannotOpen) => {
            faultline_axum::StoreError::unavailable(e)
        }
        _ => faultline_axum::StoreError::new(e),
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
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
CREATE INDEX IF NOT EXISTS chatbots_by_org ON chatbots (org_id, created_at, id);
CREATE TABLE IF NOT EXISTS categories (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    parent_id TEXT REFERENCES categories (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, faultline_axum::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(faultline_axum::StoreError::new)?
        .map_err(store_error)
    }

    /// The secret that signs cursors, created on first use and kept in the database so cursors
    /// survive restarts.
    pub fn cursor_secret(&self) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'cursor_secret'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(secret) = existing {
            return Ok(secret);
        }
        let secret: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        conn.execute(
            "INSERT INTO settings (key, value) VALUES ('cursor_secret', ?1)",
            params![secret],
        )?;
        Ok(secret)
    }
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

const CHATBOT_COLUMNS: &str = "id, org_id, name, status, created_at, updated_at, deleted_at";

/// Inserts a chatbot.
pub fn insert_chatbot(conn: &mut Connection, row: &ChatbotRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO chatbots (id, org_id, name, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![row.id, row.org_id, row.name, row.status, row.created_at, row.updated_at],
    )?;
    Ok(())
}

/// The chatbot with this id, of any organisation (deleted ones included); handlers pass it
/// through `Principal::scope`.
pub fn get_chatbot(conn: &mut Connection, id: &str) -> Result<Option<ChatbotRow>, StoreError> {
    conn.query_row(
        &format!("SELECT {CHATBOT_COLUMNS} FROM chatbots WHERE id = ?1"),
        params![id],
        chatbot,
    )
    .optional()
}

/// Live chatbots of `org_id` after `(created_at, id)`, oldest first.
pub fn list_chatbots(
    conn: &mut Connection,
    org_id: &str,
    after: Option<(String, String)>,
    limit: u32,
) -> Result<Vec<ChatbotRow>, StoreError> {
    let (after_ts, after_id) = after.unwrap_or_default();
    let mut stmt = conn.prepare(&format!(
        "SELECT {CHATBOT_COLUMNS} FROM chatbots WHERE org_id = ?1 AND deleted_at IS NULL \
         AND (created_at, id) > (?2, ?3) ORDER BY created_at, id LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![org_id, after_ts, after_id, limit], chatbot)?;
    rows.collect()
}

/// Updates name, status and `updated_at`.
pub fn update_chatbot(conn: &mut Connection, row: &ChatbotRow) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE chatbots SET name = ?1, status = ?2, updated_at = ?3, deleted_at = ?4 WHERE id = ?5 AND org_id = ?6",
        params![row.name, row.status, row.updated_at, row.deleted_at, row.id, row.org_id],
    )?;
    Ok(())
}

/// Inserts a category.
pub fn insert_category(conn: &mut Connection, row: &CategoryRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO categories (id, org_id, parent_id, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![row.id, row.org_id, row.parent_id, row.name, row.created_at],
    )?;
    Ok(())
}

/// The category with this id, of any organisation; handlers pass it through
/// `Principal::scope`.
pub fn get_category(conn: &mut Connection, id: &str) -> Result<Option<CategoryRow>, StoreError> {
    conn.query_row(
        "SELECT id, org_id, parent_id, name, created_at FROM categories WHERE id = ?1",
        params![id],
        |r| {
            Ok(CategoryRow {
                id: r.get(0)?,
                org_id: r.get(1)?,
                parent_id: r.get(2)?,
                name: r.get(3)?,
                created_at: r.get(4)?,
            })
        },
    )
    .optional()
}

/// How many categories have `id` as parent.
pub fn count_children(conn: &mut Connection, id: &str) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM categories WHERE parent_id = ?1",
        params![id],
        |r| r.get(0),
    )
}

/// Deletes a category (children go with it through the foreign key's cascade).
pub fn delete_category(conn: &mut Connection, org_id: &str, id: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM categories WHERE id = ?1 AND org_id = ?2",
        params![id, org_id],
    )?;
    Ok(())
}
