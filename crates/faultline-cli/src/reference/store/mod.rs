//! The reference API's data (chatbots, categories, the cursor secret, webhook URLs) behind one
//! interface with two engines: an embedded SQLite file (the default of `serve`) or PostgreSQL
//! (`serve --database-url`), shared by every process that points at it.
//!
//! Handlers call the methods of [`Store`]; each method is one engine call, and every change
//! that checks and then writes runs in one transaction on either engine, so a write either
//! commits whole or the client gets an error (a 503 with `Retry-After` when the engine is
//! busy, unreachable or slow).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use faultline_axum::idempotency::{ClaimToken, StoredResponse};
use faultline_sqlite::{Pool, PoolOptions};

pub mod postgres;
pub mod sqlite;

/// The one store error of faultline (busy or unreachable → 503 with `Retry-After`).
pub use faultline_axum::StoreError;
pub use postgres::PgStore;
pub use sqlite::{Cancelled, SqliteStore};

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

/// The most levels a category tree can have (a root category is level 1).
///
/// # Every tree can be deleted
///
/// Creating a category below level [`MAX_CATEGORY_DEPTH`] is refused, so no chain can grow
/// deep enough to make its deletion expensive or to hit an engine's recursion limits.
pub const MAX_CATEGORY_DEPTH: u32 = 32;

/// The most descendants one cascading delete removes along with the category itself.
///
/// # A cascade is bounded
///
/// A larger tree is refused whole (nothing is deleted): one request never holds the write
/// lock for an unbounded time.
pub const MAX_CASCADE: usize = 10_000;

/// Why a category cannot be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertRefused {
    /// The parent does not exist in the row's organisation.
    ParentNotFound,
    /// The parent is already at [`MAX_CATEGORY_DEPTH`].
    TooDeep,
}

/// What [`Store::delete_category`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// No such category in the organisation.
    NotFound,
    /// It has children and no cascade was asked for.
    HasChildren,
    /// The category has more than [`MAX_CASCADE`] descendants; nothing was deleted.
    TooLarge,
    /// This many categories were deleted.
    Done(usize),
}

/// The idempotency record a handler completes in the same transaction as its own write.
#[derive(Debug, Clone)]
pub struct Record {
    /// The claim being completed.
    pub token: ClaimToken,
    /// The response to replay.
    pub response: StoredResponse,
    /// The layer's clock, Unix milliseconds.
    pub now: i64,
    /// How long the record is kept.
    pub retention: Duration,
}

/// The reference data, on one of its two engines; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone, Debug)]
enum Engine {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// A SQLite-only call made on a PostgreSQL store (a defect, answered as an internal error).
#[derive(Debug)]
struct NotSqlite;

impl std::fmt::Display for NotSqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this call needs the SQLite engine; the store is on PostgreSQL")
    }
}

impl std::error::Error for NotSqlite {}

impl From<SqliteStore> for Store {
    fn from(store: SqliteStore) -> Self {
        Store {
            engine: Engine::Sqlite(store),
        }
    }
}

impl From<PgStore> for Store {
    fn from(store: PgStore) -> Self {
        Store {
            engine: Engine::Postgres(store),
        }
    }
}

impl Store {
    /// Opens (creating it, readable by its owner only, if needed) a SQLite database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(path).map(Self::from)
    }

    /// Opens a SQLite database file with these pool options.
    pub fn open_with(path: &Path, options: PoolOptions) -> Result<Self, StoreError> {
        SqliteStore::open_with(path, options).map(Self::from)
    }

    /// An in-memory SQLite database, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        SqliteStore::in_memory().map(Self::from)
    }

    /// The SQLite engine, when the data is there.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.engine {
            Engine::Sqlite(store) => Some(store),
            Engine::Postgres(_) => None,
        }
    }

    /// The PostgreSQL engine, when the data is there.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(store) => Some(store),
        }
    }

    /// The SQLite pool underneath, when the data is on SQLite (tests use it to reach the
    /// writer connection).
    pub fn pool(&self) -> Option<&Pool> {
        self.sqlite().map(SqliteStore::pool)
    }

    fn on_sqlite(&self) -> Result<&SqliteStore, StoreError> {
        self.sqlite().ok_or_else(|| StoreError::new(NotSqlite))
    }

    /// Runs `f` with a SQLite reader connection (an error on PostgreSQL).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.on_sqlite()?.read(f).await
    }

    /// Runs `f` with the SQLite writer connection (an error on PostgreSQL).
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.on_sqlite()?.write(f).await
    }

    /// The secret that signs cursors, the same for every process on the database.
    ///
    /// On PostgreSQL it was read (or created) when the store connected.
    pub fn cursor_secret(&self) -> Result<Vec<u8>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.cursor_secret(),
            Engine::Postgres(store) => Ok(store.cursor_secret().to_vec()),
        }
    }

    /// Whether the engine answers a trivial query (the readiness check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
                    .await
            }
            Engine::Postgres(store) => store.ping().await,
        }
    }

    /// Inserts a chatbot, completing `record` in the same transaction when given.
    ///
    /// # The row and its idempotency record commit together
    ///
    /// `Ok(false)` when the claim is no longer this request's (its lease ended and a retry
    /// took it over): nothing was written.
    pub async fn create_chatbot(
        &self,
        row: ChatbotRow,
        record: Option<Record>,
    ) -> Result<bool, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .write(move |c| {
                        let tx = c.transaction()?;
                        sqlite::insert_chatbot(&tx, &row)?;
                        if let Some(r) = &record
                            && !faultline_sqlite::idempotency::complete_in(
                                &tx,
                                &r.token,
                                &r.response,
                                r.now,
                                r.retention,
                            )?
                        {
                            // Dropping the transaction rolls the insert back.
                            return Ok(false);
                        }
                        tx.commit()?;
                        Ok(true)
                    })
                    .await
            }
            Engine::Postgres(store) => store.create_chatbot(&row, record.as_ref()).await,
        }
    }

    /// The chatbot with this id, of any organisation (deleted ones included); handlers pass it
    /// through `Principal::scope`.
    pub async fn get_chatbot(&self, id: String) -> Result<Option<ChatbotRow>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.read(move |c| sqlite::get_chatbot(c, &id)).await,
            Engine::Postgres(store) => store.get_chatbot(&id).await,
        }
    }

    /// Live chatbots of `org_id` after `(created_at, id)`, oldest first, at most `limit`.
    pub async fn list_chatbots(
        &self,
        org_id: String,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<ChatbotRow>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .read(move |c| sqlite::list_chatbots(c, &org_id, after, limit))
                    .await
            }
            Engine::Postgres(store) => store.list_chatbots(&org_id, after, limit).await,
        }
    }

    /// Reads a chatbot, lets `change` decide from what it finds, and writes the row `change`
    /// gives back, all in one transaction.
    ///
    /// # A change is decided on the row it overwrites
    ///
    /// On SQLite the transaction is `IMMEDIATE`; on PostgreSQL the row is read `FOR UPDATE`.
    /// Either way no other writer (of any process) changes the row between the read and the
    /// write.
    pub async fn change_chatbot<R, F>(
        &self,
        id: String,
        change: F,
    ) -> Result<Result<ChatbotRow, R>, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(Option<ChatbotRow>) -> Result<ChatbotRow, R> + Send + 'static,
    {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .write(move |c| sqlite::change_chatbot(c, &id, change))
                    .await
            }
            Engine::Postgres(store) => store.change_chatbot(&id, change).await,
        }
    }

    /// The category with this id, of any organisation.
    pub async fn get_category(&self, id: String) -> Result<Option<CategoryRow>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.read(move |c| sqlite::get_category(c, &id)).await,
            Engine::Postgres(store) => store.get_category(&id).await,
        }
    }

    /// Inserts a category after checking, in the same transaction, that its parent exists in
    /// the same organisation and is not at [`MAX_CATEGORY_DEPTH`].
    pub async fn insert_category(
        &self,
        row: CategoryRow,
    ) -> Result<Result<(), InsertRefused>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.write(move |c| sqlite::insert_category(c, &row)).await,
            Engine::Postgres(store) => store.insert_category(&row).await,
        }
    }

    /// Deletes category `id` of `org_id` (with its descendants when `cascade`) in one
    /// transaction: all of it or none of it; a request that is gone rolls it back.
    pub async fn delete_category(
        &self,
        org_id: String,
        id: String,
        cascade: bool,
    ) -> Result<Deleted, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .write_steps(move |c, cancelled| {
                        sqlite::delete_category(c, &org_id, &id, cascade, cancelled)
                    })
                    .await
            }
            Engine::Postgres(store) => store.delete_category(&org_id, &id, cascade).await,
        }
    }

    /// Records the webhook URL of key `key_id` of `org_id`.
    pub async fn save_webhook(
        &self,
        key_id: String,
        org_id: String,
        url: String,
    ) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .write(move |c| sqlite::save_webhook(c, &key_id, &org_id, &url))
                    .await
            }
            Engine::Postgres(store) => store.save_webhook(&key_id, &org_id, &url).await,
        }
    }

    /// The webhook URLs of `key_ids` (keys of `org_id`), by key id.
    pub async fn webhooks_of(
        &self,
        org_id: String,
        key_ids: Vec<String>,
    ) -> Result<HashMap<String, String>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => {
                store
                    .write(move |c| sqlite::webhooks_of(c, &org_id, &key_ids))
                    .await
            }
            Engine::Postgres(store) => store.webhooks_of(&org_id, &key_ids).await,
        }
    }
}
