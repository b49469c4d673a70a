//! The limit layer and the in-memory limit store.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![cfg(feature = "limit")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, request::Parts};
use axum::response::Response;
use axum::routing::get;
use faultline::Situation;
use faultline::clock::{ManualClock, SystemClock};
use faultline::limits::{Amount, Per, Period, Policy};
use faultline_axum::limit::{
    Caller, Check, DEFAULT_SHARDS, FailureMode, Lease, LimitLayer, LimitStore, MemoryLimitStore,
    suite,
};
use faultline_axum::{Contract, Faultline};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

#[tokio::test]
async fn the_memory_store_passes_the_suite() {
    suite::all(&MemoryLimitStore::new()).await;
}

#[tokio::test]
async fn a_lease_given_back_on_the_memory_store_never_counts_against_the_next_decision() {
    suite::a_lease_given_back_never_counts_against_the_next_decision(Arc::new(
        MemoryLimitStore::new(),
    ))
    .await;
}

#[tokio::test]
async fn the_memory_store_passes_the_suite_with_one_shard() {
    let store = MemoryLimitStore::with_shards(1, Arc::new(SystemClock));
    suite::all(&store).await;
}

#[tokio::test]
async fn the_store_trait_is_dyn_compatible() {
    let store: Arc<dyn LimitStore> = Arc::new(MemoryLimitStore::new());
    suite::all(&*store).await;
    suite::all(&store).await;
}

#[tokio::test]
async fn idle_buckets_are_swept() {
    let clock = ManualClock::at(1_900_000_000);
    let store = MemoryLimitStore::with_shards(4, Arc::new(clock.clone()));
    let checks = [Check::new("r", suite::rate(2, 60))];
    for org in ["a", "b", "c"] {
        assert!(store.decide_now(org, &checks, None).admitted);
    }
    assert_eq!(store.len(), 3);
    clock.advance_secs(29);
    store.sweep();
    assert_eq!(store.len(), 3, "still counting: tat is 30 s ahead");
    clock.advance_secs(1);
    store.sweep();
    assert!(store.is_empty(), "a full bucket is the same as none");
}

// ---- the layer -----------------------------------------------------------------------------

/// 2030-03-17T17:46:40Z; the next month starts 1_232_000 s later.
const START: i64 = 1_900_000_000;

fn catalog() -> faultline::Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The caller from `x-org`, `x-key` and `x-tier` headers.
fn by_headers(parts: &Parts) -> Option<Caller> {
    let header = |name: &str| parts.headers.get(name)?.to_str().ok().map(str::to_owned);
    let org = header("x-org")?;
    let key = header("x-key").unwrap_or_else(|| "key_1".to_owned());
    Some(Caller::new(org.as_str(), key.as_str()).with_tier(header("x-tier").map(Arc::from)))
}

fn app(layer: LimitLayer, handler_calls: Arc<AtomicUsize>) -> Router {
    let router = Router::new()
        .route(
            "/ok",
            get(move || {
                let calls = Arc::clone(&handler_calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"ok": true}))
                }
            }),
        )
        .route(
            "/missing",
            get(|| async {
                Err::<(), _>(faultline_axum::Error::bound(Situation::ResourceNotFound))
            }),
        )
        .route("/open", get(|| async { "open" }))
        .route_layer(layer);
    Faultline::new(Contract::new(catalog()).unwrap())
        .timeout(Duration::from_millis(200))
        .install(router)
}

async fn send(app: &Router, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn body(response: Response) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn manual_store() -> (ManualClock, Arc<MemoryLimitStore>) {
    let clock = ManualClock::at(START);
    let store = MemoryLimitStore::with_shards(DEFAULT_SHARDS, Arc::new(clock.clone()));
    (clock, Arc::new(store))
}

const ACME: [(&str, &str); 1] = [("x-org", "acme")];

#[tokio::test]
async fn without_legacy_headers_the_ratelimit_field_is_the_same_and_stands_alone() {
    let (_clock, store) = manual_store();
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers).legacy_headers(false);
    let app = app(layer, Arc::new(AtomicUsize::new(0)));
    let first = send(&app, "/ok", &ACME).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "ratelimit").unwrap(),
        concat!(
            r#""org_per_minute";r=9;t=6, "org_in_flight";r=1, "key_per_minute";r=9;t=6, "#,
            r#""key_per_hour";r=199;t=18, "monthly_requests";r=4999;t=1232000"#
        )
    );
    for legacy in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert_eq!(header(&first, legacy), None, "{legacy}");
    }
}

#[tokio::test]
async fn every_response_reports_the_policies_and_the_eleventh_free_request_is_refused() {
    let (_clock, store) = manual_store();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers);
    let app = app(layer, Arc::clone(&calls));

    let first = send(&app, "/ok", &ACME).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "ratelimit-policy").unwrap(),
        concat!(
            r#""org_per_minute";q=10;w=60, "org_in_flight";q=2;qu="concurrent-requests", "#,
            r#""key_per_minute";q=10;w=60, "key_per_hour";q=200;w=3600, "#,
            r#""monthly_requests";q=5000;w=2592000"#
        )
    );
    assert_eq!(
        header(&first, "ratelimit").unwrap(),
        concat!(
            r#""org_per_minute";r=9;t=6, "org_in_flight";r=1, "key_per_minute";r=9;t=6, "#,
            r#""key_per_hour";r=199;t=18, "monthly_requests";r=4999;t=1232000"#
        )
    );
    assert_eq!(header(&first, "x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("9")
    );
    assert_eq!(header(&first, "x-ratelimit-reset").as_deref(), Some("6"));
    body(first).await;

    for _ in 1..10 {
        let response = send(&app, "/ok", &ACME).await;
        assert_eq!(response.status(), 200);
        body(response).await;
    }
    let refused = send(&app, "/ok", &ACME).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("6"));
    assert!(header(&refused, "ratelimit").unwrap().starts_with(
        r#""org_per_minute";r=0;t=60, "org_in_flight";r=2, "key_per_minute";r=0;t=60"#
    ));
    assert!(header(&refused, "ratelimit-policy").is_some());
    assert_eq!(
        header(&refused, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let body = body(refused).await;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        body["details"],
        json!({"policy": "org_per_minute", "limit": 10, "remaining": 0, "reset": 60})
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "the refusal never reached the handler"
    );
}

#[tokio::test]
async fn tiers_change_the_numbers_and_unknown_callers_are_not_limited() {
    let (_clock, store) = manual_store();
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers);
    let app = app(layer, Arc::default());
    let pro = send(&app, "/ok", &[("x-org", "big"), ("x-tier", "pro")]).await;
    assert!(
        header(&pro, "ratelimit-policy")
            .unwrap()
            .starts_with(r#""org_per_minute";q=60;w=60"#)
    );
    let odd = send(&app, "/ok", &[("x-org", "odd"), ("x-tier", "platinum")]).await;
    assert!(
        header(&odd, "ratelimit-policy")
            .unwrap()
            .starts_with(r#""org_per_minute";q=10;w=60"#),
        "an unknown tier is the default tier"
    );
    let anonymous = send(&app, "/ok", &[]).await;
    assert_eq!(anonymous.status(), 200);
    assert_eq!(header(&anonymous, "ratelimit"), None);
}

#[tokio::test]
async fn error_responses_of_admitted_requests_carry_the_headers_too() {
    let (_clock, store) = manual_store();
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers);
    let app = app(layer, Arc::default());
    let response = send(&app, "/missing", &ACME).await;
    assert_eq!(response.status(), 404);
    assert!(
        header(&response, "ratelimit")
            .unwrap()
            .contains(r#""org_per_minute";r=9;t=6"#)
    );
    assert_eq!(
        header(&response, "x-ratelimit-remaining").as_deref(),
        Some("9")
    );
    assert_eq!(body(response).await["error"], "not_found");
}

#[tokio::test]
async fn a_quota_refusal_has_limit_used_and_resets_at() {
    let (clock, store) = manual_store();
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers).policy(Policy::quota(
        "monthly_requests",
        faultline::limits::Counts::Requests,
        Per::Org,
        Amount::Every(2),
        Period::Month,
    ));
    let app = app(layer, Arc::default());
    for _ in 0..2 {
        body(send(&app, "/ok", &ACME).await).await;
    }
    clock.advance_secs(100);
    let refused = send(&app, "/ok", &ACME).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("1231900"));
    let body = body(refused).await;
    assert_eq!(body["error"], "quota_exceeded");
    assert_eq!(
        body["details"],
        json!({"policy": "monthly_requests", "limit": 2, "used": 2, "resets_at": "2030-04-01T00:00:00+00:00"})
    );
}

#[tokio::test]
async fn retry_after_is_the_longest_wait_rounded_up() {
    let (clock, store) = manual_store();
    let layer = LimitLayer::with_subject(&catalog(), store, by_headers)
        .policy(Policy::rate(
            "key_per_minute",
            Per::Key,
            Amount::Every(3),
            10_000_000,
        ))
        .policy(Policy::rate(
            "key_per_hour",
            Per::Key,
            Amount::Every(4),
            3_600_000_000,
        ));
    let app = app(layer, Arc::default());
    for _ in 0..3 {
        body(send(&app, "/ok", &ACME).await).await;
    }
    // key_per_minute (3 per 10 s) waits 3.333333 s.
    let refused = send(&app, "/ok", &ACME).await;
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("4"));
    assert_eq!(body(refused).await["details"]["policy"], "key_per_minute");
    clock.advance_secs(4);
    body(send(&app, "/ok", &ACME).await).await;
    // Now both refuse: 3.33 s for the minute policy; the hour one (T = 900 s, its tat at
    // +3600 s) waits until +4500 - 3600 = 900 s from the start, 896 s from now.
    let refused = send(&app, "/ok", &ACME).await;
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("896"));
    assert_eq!(body(refused).await["details"]["policy"], "key_per_hour");
}

/// One request in flight at a time; a handler that waits for `release` before answering.
fn concurrency_app(handler: Router) -> (Router, Arc<MemoryLimitStore>) {
    let store = Arc::new(MemoryLimitStore::new());
    let mut layer = LimitLayer::with_subject(&catalog(), Arc::clone(&store) as _, by_headers);
    for name in [
        "org_per_minute",
        "key_per_minute",
        "key_per_hour",
        "monthly_requests",
    ] {
        layer = layer.without_policy(name);
    }
    let layer = layer.policy(Policy::concurrency(
        "org_in_flight",
        Per::Org,
        Amount::Every(1),
    ));
    let app = Faultline::new(Contract::new(catalog()).unwrap())
        .timeout(Duration::from_millis(100))
        .install(
            handler
                .route("/ok", get(|| async { "ok" }))
                .route_layer(layer),
        );
    (app, store)
}

async fn slot_is_free(app: &Router) -> bool {
    let response = send(app, "/ok", &ACME).await;
    let status = response.status();
    body_bytes(response).await;
    status == 200
}

async fn body_bytes(response: Response) -> Vec<u8> {
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

#[tokio::test]
async fn a_lease_is_held_until_the_body_ends() {
    let (app, _store) = concurrency_app(Router::new());
    let first = send(&app, "/ok", &ACME).await;
    assert_eq!(first.status(), 200);
    let second = send(&app, "/ok", &ACME).await;
    assert_eq!(second.status(), 429, "the first body is still being sent");
    assert_eq!(header(&second, "retry-after").as_deref(), Some("1"));
    assert_eq!(body(second).await["error"], "too_many_concurrent_requests");
    assert_eq!(body_bytes(first).await, b"ok");
    assert!(slot_is_free(&app).await);
}

#[tokio::test]
async fn a_lease_is_released_when_the_client_goes_away() {
    let (app, _store) = concurrency_app(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        }),
    ));
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/slow", &ACME).await }
    });
    while slot_is_free(&app).await {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    let _ = waiting.await;
    assert!(slot_is_free(&app).await);
    // A response dropped unread releases too.
    let unread = send(&app, "/ok", &ACME).await;
    assert!(!slot_is_free(&app).await);
    drop(unread);
    assert!(slot_is_free(&app).await);
}

#[tokio::test]
async fn a_lease_is_released_when_the_handler_panics_fails_or_times_out() {
    let (app, _store) = concurrency_app(
        Router::new()
            .route(
                "/panic",
                get(|| async {
                    if std::hint::black_box(true) {
                        panic!("the handler broke");
                    }
                    "never"
                }),
            )
            .route(
                "/fail",
                get(|| async {
                    Err::<(), _>(faultline_axum::Error::bound(Situation::ResourceNotFound))
                }),
            )
            .route(
                "/hang",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            ),
    );
    for (path, status) in [("/panic", 500), ("/fail", 404), ("/hang", 504)] {
        let response = send(&app, path, &ACME).await;
        assert_eq!(response.status(), status, "{path}");
        body_bytes(response).await;
        assert!(slot_is_free(&app).await, "{path} left its lease behind");
    }
}

#[tokio::test]
async fn a_failing_or_hanging_store_answers_as_configured_within_the_deadline() {
    for hang in [false, true] {
        let store = Arc::new(if hang {
            suite::FailingStore::hanging()
        } else {
            suite::FailingStore::down()
        });
        let open = LimitLayer::with_subject(&catalog(), store.clone(), by_headers)
            .deadline(Duration::from_millis(20));
        let closed = open.clone().on_failure(FailureMode::Closed);
        let calls = Arc::new(AtomicUsize::new(0));

        let response = send(&app(open, Arc::clone(&calls)), "/ok", &ACME).await;
        assert_eq!(response.status(), 200, "fail-open admits (hang: {hang})");
        assert_eq!(header(&response, "ratelimit"), None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let response = send(&app(closed, Arc::clone(&calls)), "/ok", &ACME).await;
        assert_eq!(response.status(), 503, "fail-closed refuses (hang: {hang})");
        assert_eq!(header(&response, "retry-after").as_deref(), Some("1"));
        assert_eq!(body(response).await["error"], "service_unavailable");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the handler was not called"
        );
    }
}

#[cfg(feature = "auth")]
#[tokio::test]
async fn the_principal_names_the_caller_and_its_org_tier() {
    use faultline_axum::auth::{
        AuthLayer, Authenticator, KeyManager, MemoryKeyStore, suite as keys,
    };
    let key_store = Arc::new(MemoryKeyStore::new());
    let auth = Arc::new(Authenticator::new(keys::format(), key_store.clone()));
    let manager = KeyManager::new(Arc::clone(&auth), key_store);
    let org = manager.ensure_org("acme").await.unwrap();
    let (_, key) = manager
        .create_key(&org.id, keys::new_key(&["bots:read"]))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", key.expose());
    let (_clock, store) = manual_store();
    let router = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route_layer(LimitLayer::new(&catalog(), store))
        .route_layer(AuthLayer::new(auth));
    let app = Faultline::new(Contract::new(catalog()).unwrap()).install(router);
    let free = send(&app, "/ok", &[("authorization", &bearer)]).await;
    assert!(
        header(&free, "ratelimit-policy")
            .unwrap()
            .starts_with(r#""org_per_minute";q=10;"#)
    );
    assert!(
        manager
            .set_org_tier(&org.id, Some("enterprise"))
            .await
            .unwrap()
    );
    let enterprise = send(&app, "/ok", &[("authorization", &bearer)]).await;
    assert!(
        header(&enterprise, "ratelimit-policy")
            .unwrap()
            .starts_with(r#""org_per_minute";q=600;"#)
    );
    // The same bucket, its arrival time 6 s ahead: with T = 0.1 s and a 60 s tolerance,
    // (60 - 6.1) / 0.1 = 539 remain.
    assert!(
        header(&enterprise, "ratelimit")
            .unwrap()
            .contains(r#""org_per_minute";r=539;t=7"#),
        "{:?}",
        header(&enterprise, "ratelimit")
    );
}

// ---- the store against a reference model ---------------------------------------------------

/// A model of the same limits written differently: rates as a leaky bucket whose level drains
/// one microsecond per microsecond (GCRA's other formulation), quotas as a counter per period,
/// concurrency as a list of lease expiries.
#[derive(Debug, Clone, Default)]
struct Model {
    rates: Vec<(i64, i64)>,    // (level, last)
    quota: Option<(i64, u64)>, // (resets_at, used)
    leases: Vec<(u64, i64)>,   // (id, expires_at)
}

/// What the model expects of one request: admitted, and per check (remaining, retry_after,
/// reset), the numbers the headers are written from.
type Expected = (bool, Vec<(u64, i64, i64)>);

impl Model {
    fn request(
        &mut self,
        now: i64,
        rates: &[(u64, i64)],
        quota: (u64, u64),
        concurrency: (u64, i64),
        lease: u64,
    ) -> Expected {
        let mut answers = Vec::new();
        let mut levels = Vec::new();
        for (i, &(limit, window)) in rates.iter().enumerate() {
            let t = (window / i64::try_from(limit).unwrap()).max(1);
            let tau = t * i64::try_from(limit).unwrap();
            let (level, last) = self.rates.get(i).copied().unwrap_or((0, now));
            let level = (level - (now - last)).max(0);
            let next = level + t;
            if next <= tau {
                answers.push((true, u64::try_from((tau - next) / t).unwrap(), 0, next));
            } else {
                answers.push((false, 0, next - tau, level));
            }
            levels.push(next);
        }
        let day = 86_400_000_000_i64;
        let (resets_at, used) = match self.quota {
            Some((at, used)) if at > now => (at, used),
            _ => ((now / day + 1) * day, 0),
        };
        let (qlimit, cost) = quota;
        if used + cost <= qlimit {
            answers.push((true, qlimit - used - cost, 0, resets_at - now));
        } else {
            answers.push((false, qlimit - used, resets_at - now, resets_at - now));
        }
        let live: Vec<(u64, i64)> = self.leases.iter().copied().filter(|l| l.1 > now).collect();
        let (climit, ttl) = concurrency;
        if (live.len() as u64) < climit {
            answers.push((true, climit - live.len() as u64 - 1, 0, 0));
        } else {
            let earliest = live
                .iter()
                .map(|l| l.1)
                .min()
                .map_or(1_000_000, |at| (at - now).min(1_000_000));
            answers.push((false, 0, earliest, 0));
        }
        let admitted = answers.iter().all(|a| a.0);
        if admitted {
            self.rates = levels.into_iter().map(|level| (level, now)).collect();
            self.quota = Some((resets_at, used + cost));
            self.leases = live;
            self.leases.push((lease, now + ttl));
            (true, answers.into_iter().map(|a| (a.1, a.2, a.3)).collect())
        } else {
            // Nothing is spent: the admitting checks report their state before this request.
            let mut out = Vec::new();
            for (i, a) in answers.iter().enumerate() {
                let (remaining, reset) = match (a.0, i) {
                    (false, _) => (a.1, a.3),
                    (true, i) if i == rates.len() => (a.1 + cost, a.3),
                    (true, i) if i > rates.len() => (a.1 + 1, a.3),
                    // A rate that admitted reports the level before this request.
                    (true, i) => {
                        let (limit, window) = rates[i];
                        (
                            a.1 + 1,
                            a.3 - (window / i64::try_from(limit).unwrap()).max(1),
                        )
                    }
                };
                out.push((remaining, a.2, reset));
            }
            (false, out)
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Advance(i64),
    Request,
    ReleaseOldest,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (0i64..3_000_000).prop_map(Op::Advance),
        5 => Just(Op::Request),
        1 => Just(Op::ReleaseOldest),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    #[test]
    fn the_memory_store_agrees_with_the_model(
        rates in proptest::collection::vec((1u64..8, 1i64..20), 1..3),
        quota in (1u64..30, 1u64..3),
        concurrency in (1u64..4, 1i64..10),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        use faultline::limits::Rule;
        let store = MemoryLimitStore::new();
        let rates: Vec<(u64, i64)> = rates.into_iter().map(|(l, w)| (l, w * 1_000_000)).collect();
        let concurrency = (concurrency.0, concurrency.1 * 1_000_000);
        let mut checks: Vec<Check> = rates
            .iter()
            .enumerate()
            .map(|(i, &(limit, window_us))| Check::new(format!("r{i}"), Rule::Rate { limit, window_us }))
            .collect();
        checks.push(Check::new("q", Rule::Quota { limit: quota.0, period: Period::Day, cost: quota.1 }));
        checks.push(Check::new("c", Rule::Concurrency { limit: concurrency.0, lease_ttl_us: concurrency.1 }));
        let mut model = Model::default();
        let mut now = suite::NOW_US;
        let mut held: Vec<(u64, Lease)> = Vec::new();
        let mut next = 0;
        for op in ops {
            match op {
                Op::Advance(us) => now += us,
                Op::ReleaseOldest => {
                    if !held.is_empty() {
                        let (id, lease) = held.remove(0);
                        store.release_now(&lease);
                        model.leases.retain(|l| l.0 != id);
                    }
                }
                Op::Request => {
                    next += 1;
                    let decision = store.decide_now("g", &checks, Some(now));
                    let (admitted, expected) = model.request(now, &rates, quota, concurrency, next);
                    proptest::prop_assert_eq!(decision.admitted, admitted);
                    let got: Vec<(u64, i64, i64)> = decision
                        .outcomes
                        .iter()
                        .map(|o| (o.remaining, if o.admitted { 0 } else { o.retry_after_us }, o.reset_us))
                        .collect();
                    let expected: Vec<(u64, i64, i64)> = expected
                        .into_iter()
                        .zip(&decision.outcomes)
                        .map(|(e, o)| (e.0, if o.admitted { 0 } else { e.1 }, e.2))
                        .collect();
                    proptest::prop_assert_eq!(got, expected);
                    if let Some(lease) = decision.lease {
                        held.push((next, lease));
                    }
                }
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Two rate or quota checks take the store's own path (both buckets found with one probe
    /// each, written in place); the same two with a third that never refuses take the general
    /// one. Every decision of any sequence must be the same on both.
    #[test]
    fn two_checks_decide_as_the_general_path_does(
        rate in (1u64..8, 1i64..20),
        quota in (1u64..30, 1u64..3),
        quota_first in proptest::bool::ANY,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        use faultline::limits::Rule;
        let rate = Check::new("r", Rule::Rate { limit: rate.0, window_us: rate.1 * 1_000_000 });
        let quota = Check::new("q", Rule::Quota { limit: quota.0, period: Period::Day, cost: quota.1 });
        let two = if quota_first { vec![quota, rate] } else { vec![rate, quota] };
        let mut three = two.clone();
        three.push(Check::new("never", Rule::Rate { limit: 1_000_000, window_us: 1_000_000 }));
        let (fast, general) = (MemoryLimitStore::new(), MemoryLimitStore::new());
        let mut now = suite::NOW_US;
        for op in ops {
            match op {
                Op::Advance(us) => now += us,
                Op::ReleaseOldest => {}
                Op::Request => {
                    let a = fast.decide_now("g", &two, Some(now));
                    let b = general.decide_now("g", &three, Some(now));
                    proptest::prop_assert_eq!(a.admitted, b.admitted);
                    proptest::prop_assert_eq!(a.retry_after_us, b.retry_after_us);
                    proptest::prop_assert_eq!(&a.outcomes[..], &b.outcomes[..2]);
                }
            }
        }
    }
}
