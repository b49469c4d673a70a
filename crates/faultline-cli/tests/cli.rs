//! The `faultline` binary: exit codes and output of `lint` and `docs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn faultline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const CATALOGS: [&str; 5] = ["chatbots", "media", "prompts", "registrations", "runs"];

#[test]
fn lint_passes_every_example_catalog() {
    for name in CATALOGS {
        let out = faultline(&["lint", &format!("examples/catalogs/{name}.toml")]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("ok: ") && stdout.contains(" codes in "),
            "{stdout}"
        );
        assert_eq!(stdout.lines().count(), 1, "one-line summary");
    }
}

#[test]
fn lint_names_every_problem_with_its_line() {
    let dir = tempdir("lint");
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        r#"[api]
name = "Broken"
profile = "flat"
code_style = "snake_case"

[[errors]]
code = "rate_limited"
status = 429
category = "Limits"
title = "Rate limited"
message = "Slow down."
when = "Too many requests."
recovery = "Wait."
retry = "backoff"

[[errors]]
code = "rate_limited"
status = 429
category = "Limits"
title = "Rate limited"
message = "Slow down."
when = "Too many requests."
recovery = "Wait."
retry = "backoff"
headers = ["Retry-After"]
"#,
    )
    .unwrap();
    let out = faultline(&["lint", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("broken.toml:7: error[missing-retry-after] code `rate_limited`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("broken.toml:17: error[duplicate-code] code `rate_limited`"),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[test]
fn lint_reports_syntax_errors_without_panicking() {
    let dir = tempdir("syntax");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[api]\nname = \"x\nprofile = 3\n").unwrap();
    let out = faultline(&["lint", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad.toml:2: error[toml-syntax]"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["docs", "examples/catalogs/chatbots.toml", "--format", "pdf"],
        vec![
            "docs",
            "examples/catalogs/chatbots.toml",
            "--profile",
            "soap",
        ],
        vec!["lint", "examples/catalogs/chatbots.toml", "--frobnicate"],
        vec!["lint", "no/such/file.toml"],
        vec!["teleport"],
    ] {
        let out = faultline(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).is_empty());
    }
}

#[test]
fn docs_markdown_lists_every_code_with_its_status() {
    let out = faultline(&[
        "docs",
        "examples/catalogs/chatbots.toml",
        "--format",
        "markdown",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    let source = std::fs::read_to_string(root().join("examples/catalogs/chatbots.toml")).unwrap();
    let catalog = faultline::Catalog::from_toml_str(&source).unwrap();
    for e in catalog.errors() {
        assert!(
            page.contains(&format!("| {} | `{}`", e.status, e.code)),
            "missing {}",
            e.code
        );
    }
}

#[test]
fn docs_profile_override_changes_the_example() {
    let out = faultline(&[
        "docs",
        "examples/catalogs/chatbots.toml",
        "--profile",
        "problem",
    ]);
    let page = text(&out.stdout);
    assert!(page.contains("application/problem+json"));
    assert!(page.contains("\"detail\": \"Request body failed validation.\""));
}

#[test]
fn docs_html_writes_a_file() {
    let dir = tempdir("html");
    let path = dir.join("page.html");
    let out = faultline(&[
        "docs",
        "examples/catalogs/chatbots.toml",
        "--format",
        "html",
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(&path).unwrap();
    assert!(page.contains("<tr id=\"idempotency_conflict\">"));
}

/// The checked-in pages under `examples/docs/` match what the catalogs generate.
#[test]
fn checked_in_docs_are_up_to_date() {
    for name in CATALOGS {
        let out = faultline(&[
            "docs",
            &format!("examples/catalogs/{name}.toml"),
            "--out",
            &format!("examples/docs/{name}.md"),
            "--check",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[test]
fn check_mode_fails_with_the_regenerate_command() {
    let dir = tempdir("stale");
    let path = dir.join("stale.md");
    std::fs::write(&path, "old").unwrap();
    let out = faultline(&[
        "docs",
        "examples/catalogs/prompts.toml",
        "--out",
        path.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "cargo run -q -- docs examples/catalogs/prompts.toml --format markdown --out"
        )
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn keys_create_prints_the_key_once_and_stores_only_its_digest() {
    let dir = tempdir("keys");
    let db = dir.join("keys.db");
    let db = db.to_str().expect("utf-8 path");
    let out = faultline(&[
        "keys",
        "create",
        "--db",
        db,
        "--org",
        "acme",
        "--scopes",
        "chatbots:read,chatbots:write",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_owned();
    let format = faultline_cli::reference::key_format();
    assert_eq!(
        format.check(&key),
        Ok(()),
        "stdout is exactly the key: {key:?}"
    );
    assert!(
        !text(&out.stderr).contains(&key),
        "the key is printed once, on stdout"
    );

    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("file"));
    }
    assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()));

    let unknown = faultline(&[
        "keys", "create", "--db", db, "--org", "acme", "--scopes", "root",
    ]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("unknown scope `root`"));

    let off = faultline(&["orgs", "deactivate", "acme", "--db", db]);
    assert!(off.status.success(), "{}", text(&off.stderr));
    assert_eq!(text(&off.stdout).trim(), "acme is now inactive");
    let missing = faultline(&["orgs", "activate", "nobody", "--db", db]);
    assert_eq!(missing.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Sends one HTTP/1.1 request and returns the whole answer as text.
fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn serve_on_an_empty_database_prints_a_working_demo_key() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir("serve");
    let db = dir.join("serve.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "serve",
            "--addr",
            &addr,
            "--db",
            db.to_str().expect("utf-8"),
        ])
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut key = None;
    let mut curl = None;
    let mut printed = Vec::new();
    for line in lines.by_ref().take(6) {
        let line = line.expect("a line");
        let trimmed = line.trim();
        if let Some(value) = trimmed.strip_prefix("export KEY=") {
            key = Some(value.to_owned());
        }
        printed.push(trimmed.to_owned());
        if trimmed.starts_with("try: curl") {
            curl = Some(trimmed.to_owned());
            break;
        }
    }
    let key = key.expect("serve printed a key");
    assert!(key.starts_with("cb_live_"), "{key}");
    assert!(curl.expect("and a curl line").contains("Bearer $KEY"));
    // The secret appears once in what serve printed.
    assert_eq!(printed.join("\n").matches(&key).count(), 1, "{printed:?}");

    let with_key = http(
        &addr,
        &format!(
            "GET /v1/chatbots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        ),
    );
    let without = http(
        &addr,
        "GET /v1/chatbots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    child.kill().expect("stop serve");
    let _ = child.wait();
    assert!(with_key.starts_with("HTTP/1.1 200"), "{with_key}");
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    assert!(without.contains("\"missing_api_key\""));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
