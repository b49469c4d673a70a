//! Snapshots of Google profile bodies: which standard `google.rpc` messages each kind of code
//! gets, from the chatbots example catalog.

use std::path::Path;
use std::time::Duration;

use faultline::details::{FieldErrors, Limit, Quota, Reason, Resource};
use faultline::{ApiError, Catalog, Profile, RenderContext};

fn chatbots() -> Catalog {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/catalogs/chatbots.toml");
    Catalog::from_toml_str(&std::fs::read_to_string(path).expect("example catalog"))
        .expect("valid catalog")
}

fn render(catalog: &Catalog, error: &ApiError) -> serde_json::Value {
    let docs_url = catalog
        .docs_url_for(error.code())
        .expect("the catalog has docs_url");
    let domain = catalog.google_domain();
    let ctx = RenderContext::new()
        .with_request_id("req_1")
        .with_instance("/v1/chatbots")
        .with_docs_url(&docs_url)
        .with_domain(&domain);
    Profile::Google.to_value(error, &ctx)
}

fn error(catalog: &Catalog, code: &str) -> ApiError {
    catalog.get(code).expect("code in the catalog").to_error()
}

#[test]
fn validation_gets_bad_request() {
    let catalog = chatbots();
    let e = error(&catalog, "invalid_payload").with_details(
        FieldErrors::new()
            .field("name", "Required")
            .form("Too many fields."),
    );
    insta::assert_json_snapshot!(render(&catalog, &e));
}

#[test]
fn quota_gets_quota_failure_and_retry_info() {
    let catalog = chatbots();
    let e = error(&catalog, "quota_exceeded")
        .with_details(Quota {
            limit: 1000,
            used: 1000,
            resets_at: "2026-12-01T00:00:00+00:00".into(),
        })
        .with_retry_after(Duration::from_secs(30));
    insta::assert_json_snapshot!(render(&catalog, &e));
}

#[test]
fn a_never_429_gets_no_retry_info() {
    let catalog = chatbots();
    let spec = catalog.get("api_key_limit_reached").expect("defined");
    assert!(!spec.carries("Retry-After"));
    let e = spec.to_error().with_details(Limit { max: 10 });
    let body = render(&catalog, &e);
    let types: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["@type"].as_str())
        .collect();
    assert!(!types.iter().any(|t| t.ends_with("RetryInfo")), "{types:?}");
    insta::assert_json_snapshot!(body);
}

#[test]
fn not_found_gets_resource_info_and_precondition_gets_precondition_failure() {
    let catalog = chatbots();
    let e = error(&catalog, "not_found").with_details(Resource {
        resource: "chatbot".into(),
    });
    insta::assert_json_snapshot!("not_found", render(&catalog, &e));
    let precondition = ApiError::from_parts(
        "draft_locked".into(),
        412,
        "Draft locked".into(),
        "The draft is locked.".into(),
        faultline::RetryAdvice::Never,
    )
    .with_details(Reason {
        reason: "Another editor holds the lock.".into(),
    });
    let ctx = RenderContext::new().with_domain("chatbots.example.com");
    insta::assert_json_snapshot!(
        "precondition",
        Profile::Google.to_value(&precondition, &ctx)
    );
}
