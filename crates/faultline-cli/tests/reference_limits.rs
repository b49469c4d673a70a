//! The reference API's limits: a free key sending 30 requests at once gets 10 answers and 20
//! catalog 429s with every header; `orgs set-tier` changes the numbers.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use faultline::Profile;
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_axum::limit::MemoryLimitStore;
use faultline_cli::reference::idempotency::IdempotencyOptions;
use faultline_cli::reference::{SCOPES, Settings, build_parts_with, key_format, store::Store};
use faultline_conformance::{Answer, Case, CaseBody, check, check_limit_headers};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::test]
async fn thirty_requests_from_a_free_key_get_ten_answers_and_twenty_catalog_429s() {
    let keys = Arc::new(MemoryKeyStore::new());
    let verifier = Arc::new(Authenticator::new(key_format(), keys.clone()));
    let manager = Arc::new(KeyManager::new(verifier, keys));
    let org = manager.ensure_org("acme").await.unwrap();
    let (_, key) = manager
        .create_key(&org.id, NewKey::new("test", SCOPES))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", key.expose());
    let settings = Settings {
        catalog: common::catalog(),
        profile: None,
        store: Store::in_memory().unwrap(),
        keys: Arc::clone(&manager),
        body_limit: 64 * 1024,
        timeout: Duration::from_secs(30),
    };
    let options = IdempotencyOptions::from_catalog(&settings.catalog);
    let built =
        build_parts_with(settings, Some(Arc::new(MemoryLimitStore::new())), &options).unwrap();
    let (app, metrics) = (built.router, built.metrics);
    let catalog = common::catalog();
    let case = Case {
        name: "over the limit",
        method: "GET",
        path: "/v1/chatbots".to_owned(),
        headers: Vec::new(),
        body: CaseBody::Empty,
        expect_code: Some("rate_limited".to_owned()),
        expect_fresh_request_id: false,
    };

    let mut statuses = Vec::new();
    for _ in 0..30 {
        let request = Request::get("/v1/chatbots")
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert!(
            check_limit_headers(status, &headers).is_empty(),
            "{:?}",
            check_limit_headers(status, &headers)
        );
        assert!(
            header("ratelimit").is_some(),
            "every answer reports its limits"
        );
        assert!(header("x-ratelimit-remaining").is_some());
        let content_type = header("content-type");
        let request_id = header("x-request-id");
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        if status == 429 {
            let retry: u64 = header("retry-after").unwrap().parse().unwrap();
            assert!(
                (1..=6).contains(&retry),
                "one free request every 6 s: {retry}"
            );
            let answer = Answer {
                status,
                content_type,
                request_id,
                allow: None,
                body,
            };
            let problems = check(&catalog, Profile::Flat, &case, &answer);
            assert!(problems.is_empty(), "{problems:?}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..10], [200; 10]);
    assert_eq!(statuses[10..], [429; 20]);
    // The refusing policies (both free-tier minute caps are 10) count the refusals; the
    // others admitted all thirty.
    let text = metrics.render();
    for (policy, outcome, count) in [
        ("org_per_minute", "admitted", 10),
        ("org_per_minute", "refused", 20),
        ("key_per_minute", "refused", 20),
        ("key_per_hour", "admitted", 30),
        ("key_per_hour", "refused", 0),
        ("monthly_requests", "admitted", 30),
    ] {
        let line = format!(
            "faultline_limiter_decisions_total{{policy=\"{policy}\",outcome=\"{outcome}\"}} {count}\n"
        );
        assert!(text.contains(&line), "{line}in\n{text}");
    }
    assert_eq!(metrics.errors_answered("rate_limited"), 20);
}

#[test]
fn orgs_set_tier_accepts_the_catalog_tiers_only() {
    use std::process::Command;
    let dir = common::TempDir::new();
    let db = dir.db();
    let db = db.to_str().unwrap();
    let faultline = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(args)
            .output()
            .unwrap()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let created = faultline(&[
        "keys", "create", "--db", db, "--org", "acme", "--scopes", "all",
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));

    let pro = faultline(&["orgs", "set-tier", "acme", "pro", "--db", db]);
    assert!(pro.status.success(), "{}", text(&pro.stderr));
    assert_eq!(text(&pro.stdout).trim(), "acme is now on the pro tier");
    let gold = faultline(&["orgs", "set-tier", "acme", "gold", "--db", db]);
    assert_eq!(gold.status.code(), Some(2));
    assert!(
        text(&gold.stderr).contains("free, pro, enterprise"),
        "{}",
        text(&gold.stderr)
    );
    let nobody = faultline(&["orgs", "set-tier", "nobody", "pro", "--db", db]);
    assert_eq!(nobody.status.code(), Some(2));

    let keys = faultline_cli::reference::keys_on_file(&dir.db()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let org = rt.block_on(keys.org_by_name("acme")).unwrap().unwrap();
    assert_eq!(org.tier.as_deref(), Some("pro"));
}
