//! Google profile bodies checked by the real protobuf definitions: every code of every example
//! catalog, rendered with details, a request id, a docs link and (where declared) Retry-After,
//! must parse as `google.rpc.Status` with Python's strict `json_format` parser.
//!
//! Needs `python3` with the `protobuf` and `googleapis-common-protos` packages; the test fails
//! (it does not skip) when they are missing, naming the install command.

use std::borrow::Cow;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use faultline::details::{FieldSpec, FieldType};
use faultline::{ApiError, Catalog, ErrorSpec, Profile, RenderContext, RetryAdvice};
use serde_json::{Value, json};

const INSTALL: &str = "pip install --quiet protobuf googleapis-common-protos";

/// Reads one JSON body per line and parses each `error` object as `google.rpc.Status`.
///
/// Google's HTTP APIs send `{"error": Status}` with one extra member, `status`: the name of the
/// `google.rpc.Code` (see the "HTTP mapping" of google.rpc.Status / AIP-193). `Status` has no
/// such field, so the script checks it is a valid `Code` name matching `code`'s class, removes
/// it, and hands the rest to the strict parser (unknown fields and unknown `Any` types are
/// errors; importing `error_details_pb2` registers the standard detail messages).
const CHECKER: &str = r#"
import json, sys
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2  # registers the detail types

failures = 0
count = 0
for line in sys.stdin:
    if not line.strip():
        continue
    count += 1
    body = json.loads(line)
    try:
        error = body["error"]
        code_pb2.Code.Value(error.pop("status"))
        status = json_format.Parse(json.dumps(error), status_pb2.Status(), ignore_unknown_fields=False)
        if not status.details:
            raise ValueError("no details")
    except Exception as e:  # report every failing body, then fail once
        failures += 1
        print(f"REJECTED: {e}\n  body: {line.strip()}", file=sys.stderr)
print(f"{count} bodies checked, {failures} rejected")
sys.exit(1 if failures else 0)
"#;

fn example_catalogs() -> Vec<(String, Catalog)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/catalogs");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/catalogs exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "expected the example catalogs in {dir:?}");
    paths
        .into_iter()
        .map(|path| {
            let source = std::fs::read_to_string(&path).expect("readable catalog");
            let catalog = Catalog::from_toml_str(&source)
                .unwrap_or_else(|e| panic!("{}", e.report(&path.display().to_string())));
            (path.display().to_string(), catalog)
        })
        .collect()
}

/// A value of every field of a details shape; optional fields are `null`, to cover it too.
fn sample_details(fields: &[FieldSpec]) -> Option<Value> {
    if fields.is_empty() {
        return None;
    }
    let mut map = serde_json::Map::new();
    for field in fields {
        let value = if field.optional {
            Value::Null
        } else {
            match field.ty {
                FieldType::String => json!("text \"quoted\" and 42"),
                FieldType::Integer => json!(1000),
                FieldType::Number => json!(1.5),
                FieldType::Boolean => json!(true),
                FieldType::Timestamp => json!("2026-12-01T00:00:00+00:00"),
                FieldType::StringList => json!(["a", "b"]),
                FieldType::FieldMap => json!({"name": ["Required"], "status": ["Invalid."]}),
                FieldType::ViolationList => json!([{"pointer": "/name", "message": "Required"}]),
            }
        };
        map.insert(field.name.clone(), value);
    }
    Some(Value::Object(map))
}

fn sample_error(spec: &ErrorSpec) -> ApiError {
    let mut error = spec.to_error();
    if let Some(details) = sample_details(&spec.details.fields()) {
        error = error.with_details(details);
    }
    if spec.carries("Retry-After") {
        error = error.with_retry_after(Duration::from_secs(30));
    }
    error
}

/// Bodies that are not from a catalog but exercise the corners of the mapping.
fn corner_errors() -> Vec<ApiError> {
    let error = |code: &'static str, status| {
        ApiError::from_parts(
            Cow::Borrowed(code),
            status,
            Cow::Borrowed("Title"),
            Cow::Borrowed("Message."),
            RetryAdvice::Never,
        )
    };
    vec![
        error("precondition.failed", 412)
            .with_details(json!({"reason": "The draft is locked.", "resource": "chatbot"})),
        error("odd", 400).with_details(json!(["not", "an", "object"])),
        error("empty", 400).with_details(json!({})),
        error("reserved", 409).with_details(json!({"code": 1, "details": "x", "_x": null})),
        error("dated", 503).with_header("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT"),
        error("quota", 429)
            .with_details(
                json!({"limit": 10, "used": 10, "resets_at": "2026-12-01T00:00:00+00:00"}),
            )
            .with_retry_after(Duration::from_millis(1500)),
    ]
}

#[test]
fn every_google_body_parses_as_google_rpc_status() {
    let mut lines = String::new();
    let mut rendered = 0;
    let mut errors: Vec<(String, String, ApiError)> = Vec::new();
    for (file, catalog) in example_catalogs() {
        let domain = catalog.google_domain().into_owned();
        for spec in catalog.errors() {
            let docs = catalog.docs_url_for(&spec.code).unwrap_or_default();
            errors.push((domain.clone(), docs, sample_error(spec)));
        }
        assert!(!catalog.errors().is_empty(), "{file} has codes");
    }
    for error in corner_errors() {
        errors.push((String::new(), String::new(), error));
    }
    for (domain, docs, error) in &errors {
        let mut ctx = RenderContext::new().with_request_id("req_8fK2x9aLp0qR7sT3uV5w");
        if !domain.is_empty() {
            ctx = ctx.with_domain(domain);
        }
        if !docs.is_empty() {
            ctx = ctx.with_docs_url(docs);
        }
        let body = Profile::Google.render(error, &ctx);
        // What strict protobuf clients read must still give our exact code and details back.
        let envelope = Profile::Google
            .parse(&body)
            .expect("parses in its own profile");
        assert_eq!(envelope.code, error.code());
        assert_eq!(
            envelope.details.as_ref(),
            error.details(),
            "{}",
            error.code()
        );
        lines.push_str(std::str::from_utf8(&body).expect("JSON is UTF-8"));
        lines.push('\n');
        rendered += 1;
    }

    let mut child = Command::new("python3")
        .args(["-c", CHECKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3, then: {INSTALL}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(lines.as_bytes())
        .expect("python3 reads the bodies");
    let output = child.wait_with_output().expect("python3 finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError") && !stderr.contains("ImportError"),
        "the protobuf packages are missing; install them with: {INSTALL}\n{stderr}"
    );
    assert!(
        output.status.success(),
        "strict protobuf parsing rejected Google bodies:\n{stdout}{stderr}"
    );
    assert_eq!(
        stdout.trim(),
        format!("{rendered} bodies checked, 0 rejected"),
        "every body reached the parser"
    );
}
