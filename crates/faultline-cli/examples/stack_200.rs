//! A server answering `GET /open` at once and `GET /later` after being pending once (as a
//! handler waiting on a store is), bare axum or through the faultline stack, for
//! `bench/strace.sh` (system calls per request) and the load benchmarks.
//!
//! Every mode also serves `GET /bots`, a handler answering a small JSON body at once:
//! - `bare`: bare axum, no key;
//! - `faultline`: inside `Faultline::install`, no key;
//! - `bare_with_limit_headers`: bare axum adding the header fields `faultline_key_limits`
//!   sends (fixed values), to tell the cost of their bytes from the cost of the stack;
//! - `faultline_key`: inside `Faultline::install`, behind `AuthLayer` (in-memory keys, cached
//!   after the first request);
//! - `faultline_key_limits`: inside `Faultline::install`, behind `AuthLayer` (in-memory keys,
//!   cached after the first request) and `LimitLayer` (the two in one `route_layer`, as the
//!   reference API stacks them) on the in-memory store (a rate per key, a
//!   rate per organisation and a concurrency limit per organisation, high enough never to
//!   refuse).
//!
//! The modes with a key print `export KEY=...` on stdout before serving. The faultline modes
//! serve through `ContractListener`, as `faultline serve` does.
//!
//! Logging is the reference server's: a fmt subscriber at `RUST_LOG` (default `info`) on
//! stderr. Usage: `stack_200 MODE [addr]`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use faultline::Catalog;
use faultline::limits::{Amount, Per, Policy};
use faultline_axum::auth::{
    AuthLayer, Authenticator, KeyFormat, KeyManager, MemoryKeyStore, NewKey,
};
use faultline_axum::limit::{LimitLayer, MemoryLimitStore};
use faultline_axum::{Contract, ContractListener, Faultline};
use serde::Serialize;

// The allocator `faultline serve` runs on (see its `ALLOCATOR`), so that the comparison is
// like for like.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The small JSON body of `GET /bots`.
#[derive(Serialize)]
struct Bot {
    id: &'static str,
    name: &'static str,
    status: &'static str,
}

async fn bots() -> Json<[Bot; 1]> {
    Json([Bot {
        id: "5f0c7a52-36d4-4a47-9d40-0e0f3f1c2b6a",
        name: "bench",
        status: "active",
    }])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let catalog =
        || Catalog::from_toml_str(include_str!("../../../examples/catalogs/chatbots.toml"));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (faultline, routes) = match mode.as_str() {
        "bare_with_limit_headers" => {
            let with_headers = || async {
                (
                    [
                        (
                            "ratelimit-policy",
                            "\"key_per_minute\";q=1000000000;w=60, \"org_per_minute\";q=1000000000;w=60, \"org_in_flight\";q=1000000000;qu=\"concurrent-requests\"",
                        ),
                        (
                            "ratelimit",
                            "\"key_per_minute\";r=999999999;t=1, \"org_per_minute\";r=999999999;t=1, \"org_in_flight\";r=999999999",
                        ),
                        ("x-ratelimit-limit", "1000000000"),
                        ("x-ratelimit-remaining", "999999999"),
                        ("x-ratelimit-reset", "1"),
                        ("x-request-id", "req_qjoZm9lmhVZ2ewGZR5lvbVuM"),
                        ("x-content-type-options", "nosniff"),
                    ],
                    bots().await,
                )
            };
            axum::serve(listener, router.route("/bots", get(with_headers))).await?;
            return Ok(());
        }
        "bare" => {
            axum::serve(listener, router.route("/bots", get(bots))).await?;
            return Ok(());
        }
        "faultline" => (
            Faultline::new(Contract::new(catalog()?)?),
            router.route("/bots", get(bots)),
        ),
        "faultline_key" | "faultline_key_limits" => {
            let store = Arc::new(MemoryKeyStore::new());
            let auth = Arc::new(Authenticator::new(
                KeyFormat::new("cb", "live")?,
                store.clone(),
            ));
            let keys = KeyManager::new(Arc::clone(&auth), store);
            let org = keys.ensure_org("bench").await?;
            let (_, key) = keys
                .create_key(&org.id, NewKey::new("bench", ["bots:read"]))
                .await?;
            // The load script reads the key from here.
            #[allow(clippy::print_stdout)]
            {
                println!("export KEY={}", key.expose());
            }
            let catalog = catalog()?;
            let auth = AuthLayer::new(auth);
            let bots = if mode == "faultline_key" {
                get(bots).route_layer(auth)
            } else {
                let mut limits = LimitLayer::new(&catalog, Arc::new(MemoryLimitStore::new()));
                for policy in &catalog.limits().policies {
                    limits = limits.without_policy(&policy.name);
                }
                let never = || Amount::Every(1_000_000_000);
                let limits = limits
                    .policy(Policy::rate(
                        "key_per_minute",
                        Per::Key,
                        never(),
                        60_000_000,
                    ))
                    .policy(Policy::rate(
                        "org_per_minute",
                        Per::Org,
                        never(),
                        60_000_000,
                    ))
                    .policy(Policy::concurrency("org_in_flight", Per::Org, never()));
                // One `route_layer` for both, as the reference API stacks them.
                get(bots).route_layer(tower::ServiceBuilder::new().layer(auth).layer(limits))
            };
            (
                Faultline::new(Contract::new(catalog)?),
                router.route("/bots", bots),
            )
        }
        other => {
            return Err(format!("unknown mode {other}: see the header of stack_200.rs").into());
        }
    };
    // As `faultline serve` runs it: hyper's refusals and the connection timeouts are the
    // listener's.
    let contract = Arc::clone(faultline.contract());
    let app = faultline.install(routes);
    faultline_axum::serve(ContractListener::new(listener, contract), app).await?;
    Ok(())
}
