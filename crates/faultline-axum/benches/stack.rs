//! The faultline stack in process, beside bare axum: a 404 for an unknown route, and a route
//! behind `AuthLayer` on a cache hit. Compare the figures of one run: the machine is shared.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used)] // a broken fixture should stop the benchmark

use std::sync::Arc;

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

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let body = r#"{"error":"not_found","message":"The requested resource was not found.","request_id":"req_000000000000000000000000"}"#;
    let bare = Router::new().fallback(move || async move {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
    });
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
    let full = Faultline::new(Contract::new(catalog()).expect("bindings")).install(
        Router::new()
            .route(
                "/bots",
                get(|| async { "[]" }).route_layer(AuthLayer::new(auth)),
            )
            .route("/open", get(|| async { "[]" })),
    );
    let bearer = format!("Bearer {key}");

    let mut group = c.benchmark_group("stack");
    let call = |app: &Router, uri: &str, authorization: Option<&str>| {
        let mut request = Request::get(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = runtime
            .block_on(
                app.clone()
                    .oneshot(request.body(Body::empty()).expect("request")),
            )
            .expect("infallible");
        assert!(response.status().as_u16() < 500);
    };
    group.bench_function("404/bare_axum", |b| {
        b.iter(|| call(&bare, "/v1/nope", None));
    });
    group.bench_function("404/faultline", |b| {
        b.iter(|| call(&full, "/v1/nope", None));
    });
    group.bench_function("200/faultline_open", |b| {
        b.iter(|| call(&full, "/open", None));
    });
    group.bench_function("200/faultline_with_key", |b| {
        b.iter(|| call(&full, "/bots", Some(&bearer)));
    });
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
