//! The load benchmark's baseline: a bare axum server whose every route is a fixed JSON 404.

use axum::Router;
use axum::http::{StatusCode, header};

// The allocator `faultline serve` runs on (see its `ALLOCATOR`), so that the comparison is
// like for like.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8093".to_owned());
    let body = r#"{"error":"not_found","message":"The requested resource was not found.","request_id":"req_000000000000000000000000"}"#;
    let app = Router::new().fallback(move || async move {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
