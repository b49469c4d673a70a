//! The load benchmark's baseline for a read: bare axum serving `GET /v1/chatbots/{id}` from the
//! same SQLite file and the same pool as the reference API, with the same statement (the same
//! seven columns, a deleted row filtered in Rust, prepared once per connection and cached as
//! the reference API's is), with no faultline layer, no key and no error contract (an unknown
//! id is a bare 404).
//!
//! Usage: `bare_chatbot ADDR DB_FILE`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use faultline_sqlite::{Pool, PoolOptions};
use rusqlite::OptionalExtension;
use serde::Serialize;

// The allocator `faultline serve` runs on (see its `ALLOCATOR`), so that the comparison is
// like for like.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Serialize)]
struct Chatbot {
    id: String,
    name: String,
    status: String,
    created_at: String,
    updated_at: String,
}

/// The row as the reference API reads it: the same statement, the same columns.
struct Row {
    chatbot: Chatbot,
    org_id: String,
    deleted_at: Option<String>,
}

async fn chatbot(
    State(pool): State<Pool>,
    Path(id): Path<String>,
) -> Result<axum::Json<Chatbot>, StatusCode> {
    let found = pool
        .read(move |conn| {
            conn.prepare_cached(
                "SELECT id, org_id, name, status, created_at, updated_at, deleted_at \
                 FROM chatbots WHERE id = ?1",
            )?
            .query_row([&id], |row| {
                Ok(Row {
                    org_id: row.get(1)?,
                    deleted_at: row.get(6)?,
                    chatbot: Chatbot {
                        id: row.get(0)?,
                        name: row.get(2)?,
                        status: row.get(3)?,
                        created_at: row.get(4)?,
                        updated_at: row.get(5)?,
                    },
                })
            })
            .optional()
        })
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    // No key, so no organisation to compare `org_id` with; a deleted row is not found.
    found
        .filter(|row| row.deleted_at.is_none() && !row.org_id.is_empty())
        .map(|row| axum::Json(row.chatbot))
        .ok_or(StatusCode::NOT_FOUND)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8094".to_owned());
    let db = args.next().unwrap_or_else(|| "faultline.db".to_owned());
    let pool = Pool::open(std::path::Path::new(&db), PoolOptions::default())
        .map_err(std::io::Error::other)?;
    let app = Router::new()
        .route("/v1/chatbots/{id}", get(chatbot))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
