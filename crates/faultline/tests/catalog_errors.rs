//! Catalog validation: every problem reported at once, with its line and code.

use faultline::Catalog;

const HEAD: &str = r#"[api]
name = "Test"
profile = "flat"
code_style = "snake_case"
"#;

fn entry(code: &str, status: u16, extra: &str) -> String {
    format!(
        "\n[[errors]]\ncode = \"{code}\"\nstatus = {status}\ncategory = \"C\"\ntitle = \"T\"\nmessage = \"M.\"\nwhen = \"W\"\nrecovery = \"R\"\nretry = \"never\"\n{extra}"
    )
}

fn problems(source: &str) -> Vec<(usize, Option<String>, &'static str)> {
    let errors = Catalog::from_toml_str(source).expect_err("the catalog has problems");
    errors
        .problems
        .into_iter()
        .map(|p| (p.line, p.code, p.rule))
        .collect()
}

#[test]
fn duplicate_code_and_missing_retry_after_are_both_reported_with_lines() {
    let source = format!(
        "{HEAD}{}{}{}",
        entry("not_found", 404, ""),
        entry("rate_limited", 429, "").replace("\"never\"", "\"after_retry_after\""),
        entry("not_found", 404, "")
    );
    let found = problems(&source);
    // Entries start at lines 6, 16 and 26; `code` is the line after `[[errors]]`.
    assert_eq!(
        found,
        vec![
            (17, Some("rate_limited".to_owned()), "missing-retry-after"),
            (27, Some("not_found".to_owned()), "duplicate-code"),
        ]
    );
    let report = Catalog::from_toml_str(&source)
        .unwrap_err()
        .report("c.toml");
    assert!(report.contains("c.toml:27: error[duplicate-code] code `not_found`: defined twice; first defined on line 7"), "{report}");
    assert!(
        report.contains("c.toml:17: error[missing-retry-after] code `rate_limited`"),
        "{report}"
    );
}

#[test]
fn every_rule_fires() {
    let source = format!(
        "{HEAD}docs_url = \"https://x/errors\"\n\n[bindings]\nroute_not_found = \"nope\"\nteleport = \"x\"\n{}{}{}{}{}{}{}",
        entry("NotSnake", 404, ""),
        entry("bad_status", 302, ""),
        entry("bad_retry", 400, "").replace("retry = \"never\"", "retry = \"sometimes\""),
        entry("bad_details", 400, "details = \"shape_of_water\""),
        entry("no_when", 400, "").replace("when = \"W\"\n", ""),
        entry("down", 503, "headers = [\"Retry After\"]"),
        entry("gone", 410, "headers = [\"Retry-After\"]"),
    );
    let rules: Vec<&str> = problems(&source).into_iter().map(|(_, _, r)| r).collect();
    for rule in [
        "docs-url-template",
        "unknown-code",
        "unknown-binding",
        "code-style",
        "status-range",
        "unknown-retry",
        "unknown-details",
        "missing-field",
        "invalid-header",
        "retry-after-on-never",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
}

#[test]
fn syntax_errors_have_a_line() {
    let source = format!("{HEAD}\n[[errors]]\ncode = \"x\"\nstatus = = 4\n");
    assert_eq!(problems(&source), vec![(8, None, "toml-syntax")]);
}

#[test]
fn missing_api_table_and_empty_errors() {
    let rules: Vec<_> = problems("").into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(rules, vec!["missing-api", "no-errors"]);
}

#[test]
fn unknown_profile_and_style() {
    let source = HEAD
        .replace("\"flat\"", "\"soap\"")
        .replace("\"snake_case\"", "\"kebab\"")
        + &entry("x", 400, "");
    let found = problems(&source);
    assert_eq!(
        found,
        vec![
            (3, None, "unknown-profile"),
            (4, None, "unknown-code-style")
        ]
    );
}

#[test]
fn inline_details_types_are_checked() {
    let source = format!(
        "{HEAD}{}",
        entry(
            "x",
            409,
            "details = { current = \"string\", when = \"date\" }"
        )
    );
    let errors = Catalog::from_toml_str(&source).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    assert!(
        errors.problems[0]
            .message
            .contains("unknown type `\"date\"`"),
        "{}",
        errors.problems[0].message
    );
}

#[test]
fn a_valid_catalog_loads() {
    let source = format!(
        "{HEAD}\n[bindings]\ninternal = \"internal_error\"\n{}",
        entry("internal_error", 500, "details = { current = \"string?\" }")
    );
    let catalog = Catalog::from_toml_str(&source).expect("valid");
    assert_eq!(catalog.api.request_id_header, "X-Request-Id");
    assert_eq!(
        catalog
            .bound(faultline::Situation::Internal)
            .map(|e| e.status),
        Some(500)
    );
}

#[test]
fn retry_after_follows_the_retry_advice() {
    // A `never` 429 needs no Retry-After (nothing to wait for); a `never` code that declares
    // one contradicts itself; an `after_retry_after` code still needs the header.
    let source = format!(
        "{HEAD}{}{}{}",
        entry("key_cap", 429, ""),
        entry("stop", 400, "headers = [\"retry-after\"]"),
        entry("busy", 503, "").replace("\"never\"", "\"backoff\""),
    );
    assert_eq!(
        problems(&source),
        vec![
            (17, Some("stop".to_owned()), "retry-after-on-never"),
            (27, Some("busy".to_owned()), "missing-retry-after"),
        ]
    );
    let report = Catalog::from_toml_str(&source)
        .unwrap_err()
        .report("c.toml");
    assert!(
        report.contains(
            "c.toml:17: error[retry-after-on-never] code `stop`: retry = \"never\" contradicts"
        ),
        "{report}"
    );
}

#[test]
fn a_never_429_carries_no_retry_after() {
    let source = format!("{HEAD}{}", entry("key_cap", 429, "details = \"limit\""));
    let catalog =
        Catalog::from_toml_str(&source).expect("a never 429 without Retry-After is valid");
    let spec = catalog.get("key_cap").expect("defined");
    assert!(!spec.carries("Retry-After"));
    assert!(spec.headers.is_empty());
    assert_eq!(spec.to_error().header("Retry-After"), None);
}

#[test]
fn domain_is_checked_and_used() {
    let source = format!(
        "{HEAD}domain = \"chatbots.example.com\"\n{}",
        entry("x", 400, "")
    );
    let catalog = Catalog::from_toml_str(&source).expect("valid");
    assert_eq!(catalog.api.domain.as_deref(), Some("chatbots.example.com"));
    assert_eq!(catalog.google_domain(), "chatbots.example.com");
    let without = Catalog::from_toml_str(&format!("{HEAD}{}", entry("x", 400, ""))).expect("valid");
    assert_eq!(without.google_domain(), "test");
    let bad = format!("{HEAD}domain = \"not a host/\"\n{}", entry("x", 400, ""));
    assert_eq!(problems(&bad), vec![(5, None, "invalid-domain")]);
}

#[test]
fn unknown_names_list_the_valid_ones() {
    let source = format!(
        "{HEAD}{}",
        entry("x", 400, "details = \"shape_of_water\"").replace("\"never\"", "\"sometimes\"")
    );
    let errors = Catalog::from_toml_str(&source).unwrap_err();
    let messages: Vec<&str> = errors.problems.iter().map(|p| p.message.as_str()).collect();
    assert!(messages.contains(&"unknown retry advice `sometimes`; expected one of never, after_retry_after, backoff, with_idempotency_key"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m
            .starts_with("unknown details shape `shape_of_water`; expected one of field_errors,")
            && m.ends_with(" or an inline table")),
        "{messages:?}"
    );
}
