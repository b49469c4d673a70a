//! The faultline stack in process, beside bare axum: a 200, a 200 behind `AuthLayer` on a
//! cache hit, and a 404 for an unknown route; each also with the reference server's default
//! logging (a fmt subscriber at `info`, writing to a sink). With feature `limit`, one more
//! 200: behind `AuthLayer` on a cache hit and `LimitLayer` on the in-memory store (a rate per
//! key, a rate per organisation and a concurrency limit per organisation, high enough never to
//! refuse), answering the same small JSON body. Routers are eager
//! (`.with_state(())`), as `axum::serve` makes them. Compare the figures of one run: the
//! machine is shared. `bench/stack_ratios.sh` runs it and prints the ratios.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use faultline::Catalog;
use faultline_axum::auth::{
    AuthLayer, Authenticator, KeyFormat, KeyManager, MemoryKeyStore, NewKey,
};
use faultline_axum::{Contract, Faultline};
use tower::ServiceExt;

fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).expect("catalog")).expect("valid")
}

/// The reference server's default logging, writing to a sink.
fn info_logging() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .finish()
}

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let not_found = r#"{"error":"not_found","message":"The requested resource was not found.","request_id":"req_000000000000000000000000"}"#;
    let bare = Router::new()
        .route("/open", get(|| async { "[]" }))
        .fallback(move || async move {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                not_found,
            )
        })
        .with_state(());
    let store = Arc::new(MemoryKeyStore::new());
    let auth = Arc::new(Authenticator::new(
        KeyFormat::new("cb", "live").expect("format"),
        store.clone(),
    ));
    let keys = KeyManager::new(Arc::clone(&auth), store);
    let key = runtime.block_on(async {
        let org = keys.ensure_org("bench").await.expect("org");
        let new = NewKey::new("bench", ["bots:read"]);
        let (_, key) = keys.create_key(&org.id, new).await.expect("key");
        key.expose().to_owned()
    });
    let full = Faultline::new(Contract::new(catalog()).expect("bindings"))
        .install(
            Router::new()
                .route(
                    "/bots",
                    get(|| async { "[]" }).route_layer(AuthLayer::new(Arc::clone(&auth))),
                )
                .route("/open", get(|| async { "[]" })),
        )
        .with_state(());
    // Built once and shared, as hyper shares a parsed header value with the read buffer it
    // came in (a reference count, no copy): copying it for every request would bill the
    // client's work to the keyed cases.
    let bearer =
        header::HeaderValue::from_static(Box::leak(format!("Bearer {key}").into_boxed_str()));
    #[cfg(feature = "limit")]
    let limited = {
        use faultline::limits::{Amount, Per, Policy};
        use faultline_axum::limit::{LimitLayer, MemoryLimitStore};
        let catalog = catalog();
        let mut layer = LimitLayer::new(&catalog, Arc::new(MemoryLimitStore::new()));
        for policy in &catalog.limits().policies {
            layer = layer.without_policy(&policy.name);
        }
        let layer = layer
            .policy(Policy::rate(
                "key_per_minute",
                Per::Key,
                Amount::Every(10_000_000),
                60_000_000,
            ))
            .policy(Policy::rate(
                "org_per_minute",
                Per::Org,
                Amount::Every(10_000_000),
                60_000_000,
            ))
            .policy(Policy::concurrency(
                "org_in_flight",
                Per::Org,
                Amount::Every(1_000_000),
            ));
        Faultline::new(Contract::new(catalog).expect("bindings"))
            .install(
                Router::new().route(
                    "/bots",
                    // One `route_layer` for both, as the reference API stacks them.
                    get(|| async { "[]" }).route_layer(
                        tower::ServiceBuilder::new()
                            .layer(AuthLayer::new(Arc::clone(&auth)))
                            .layer(layer),
                    ),
                ),
            )
            .with_state(())
    };

    let call =
        |app: &Router, uri: &str, authorization: Option<&header::HeaderValue>, status: u16| {
            let mut request = Request::get(uri);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            let response = runtime
                .block_on(
                    app.clone()
                        .oneshot(request.body(Body::empty()).expect("request")),
                )
                .expect("infallible");
            assert_eq!(response.status().as_u16(), status);
        };
    // `STACK_COUNT=<logging>/<status>/<case>:<n>` runs one case n times (after a fixed
    // warm-up) instead of the benchmarks, and prints the CPU time of one request: the time this
    // thread ran, so that other processes on the machine do not count. `bench/stack_cpu.sh`
    // compares cases with it; `bench/stack_instructions.sh` counts instructions (callgrind).
    if let Ok(spec) = std::env::var("STACK_COUNT") {
        let (name, n) = spec.rsplit_once(':').expect("STACK_COUNT=<case>:<n>");
        let n: u64 = n.parse().expect("a count");
        let _guard = name
            .starts_with("info_log/")
            .then(|| tracing::subscriber::set_default(info_logging()));
        let case = name.split_once('/').map_or(name, |(_, case)| case);
        let run = |times: u64| {
            for _ in 0..times {
                match case {
                    "200/bare_axum" => call(&bare, "/open", None, 200),
                    "200/faultline" => call(&full, "/open", None, 200),
                    "200/faultline_with_key" => call(&full, "/bots", Some(&bearer), 200),
                    #[cfg(feature = "limit")]
                    "200/faultline_with_key_and_limits" => {
                        call(&limited, "/bots", Some(&bearer), 200);
                    }
                    "404/bare_axum" => call(&bare, "/v1/nope", None, 404),
                    "404/faultline" => call(&full, "/v1/nope", None, 404),
                    other => panic!("unknown case {other}"),
                }
            }
        };
        run(2_000);
        let before = thread_cpu_ns();
        run(n);
        let cpu = thread_cpu_ns() - before;
        let per_request = cpu as f64 / n as f64;
        std::io::Write::write_all(
            &mut std::io::stdout(),
            format!("{per_request:.1}\n").as_bytes(),
        )
        .expect("stdout");
        std::process::exit(0);
    }
    let mut group = c.benchmark_group("stack");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for logging in ["no_log", "info_log"] {
        let _guard =
            (logging == "info_log").then(|| tracing::subscriber::set_default(info_logging()));
        group.bench_function(format!("{logging}/200/bare_axum"), |b| {
            b.iter(|| call(&bare, "/open", None, 200));
        });
        group.bench_function(format!("{logging}/200/faultline"), |b| {
            b.iter(|| call(&full, "/open", None, 200));
        });
        group.bench_function(format!("{logging}/200/faultline_with_key"), |b| {
            b.iter(|| call(&full, "/bots", Some(&bearer), 200));
        });
        #[cfg(feature = "limit")]
        group.bench_function(
            format!("{logging}/200/faultline_with_key_and_limits"),
            |b| {
                b.iter(|| call(&limited, "/bots", Some(&bearer), 200));
            },
        );
        group.bench_function(format!("{logging}/404/bare_axum"), |b| {
            b.iter(|| call(&bare, "/v1/nope", None, 404));
        });
        group.bench_function(format!("{logging}/404/faultline"), |b| {
            b.iter(|| call(&full, "/v1/nope", None, 404));
        });
    }
    group.finish();
}

/// The time this thread has run, in nanoseconds (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("schedstat (Linux)")
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("a time in nanoseconds")
}

criterion_group!(benches, stack);
criterion_main!(benches);
