//! A server answering `GET /open` at once and `GET /later` after being pending once (as a
//! handler waiting on a store is), bare axum or through the faultline stack, for
//! `bench/strace.sh` (system calls per request) and other load tests.
//! Usage: `stack_200 bare|faultline [addr]`.

use axum::Router;
use axum::routing::get;
use faultline::Catalog;
use faultline_axum::{Contract, Faultline};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "faultline".to_owned());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8094".to_owned());
    let router = Router::new().route("/open", get(|| async { "[]" })).route(
        "/later",
        get(|| async {
            tokio::task::yield_now().await;
            "[]"
        }),
    );
    let app = match mode.as_str() {
        "bare" => router,
        "faultline" => {
            let catalog =
                Catalog::from_toml_str(include_str!("../../../examples/catalogs/chatbots.toml"))?;
            Faultline::new(Contract::new(catalog)?).install(router)
        }
        other => return Err(format!("unknown mode {other}: bare or faultline").into()),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
