//! The reference page of a catalog, as Markdown and as one self-contained HTML page.
//!
//! Both formats hold the same content: an introduction to the envelope with an example in the
//! catalog's own profile, request ids, retry rules per advice class, then one table per
//! category (HTTP | code | when | recovery, ordered by status) and the details shapes.
//! The output depends only on the catalog, so it is stable enough to snapshot and to check in.

use std::fmt::Write as _;

use crate::catalog::{Catalog, ErrorSpec};
use crate::details::{DetailsShape, FieldErrors};
use crate::error::ApiError;
use crate::profile::{Profile, RenderContext};
use crate::retry::RetryAdvice;
use crate::situation::Situation;

/// The request id used in examples, so the page is the same on every run.
const EXAMPLE_ID_SUFFIX: &str = "8fK2x9aLp0qR7sT3uV5w";

/// A catalog section of the page: a category and its codes, ordered by status.
fn sections(catalog: &Catalog) -> Vec<(&str, Vec<&ErrorSpec>)> {
    catalog
        .categories()
        .into_iter()
        .map(|category| {
            let mut codes: Vec<&ErrorSpec> = catalog
                .errors()
                .iter()
                .filter(|e| e.category == category)
                .collect();
            codes.sort_by_key(|e| e.status);
            (category, codes)
        })
        .collect()
}

/// The example error shown in the introduction: the validation code with field errors when the
/// catalog binds one, otherwise its first code.
fn example(catalog: &Catalog) -> (ApiError, String) {
    let spec = catalog
        .bound(Situation::ValidationFailed)
        .or_else(|| catalog.errors().first())
        .expect("a valid catalog has at least one code");
    let mut error = spec.to_error();
    match spec.details {
        DetailsShape::FieldErrors => {
            error = error.with_details(FieldErrors::new().field("name", "Required").field(
                "status",
                "Invalid enum value. Expected 'draft' | 'active', got 'live'.",
            ));
        }
        DetailsShape::FieldViolations => {
            error = error.with_details(
                crate::details::FieldViolations::default()
                    .violation("/name", "This field is required."),
            );
        }
        _ => {}
    }
    let request_id = format!("{}{EXAMPLE_ID_SUFFIX}", catalog.api.request_id_prefix);
    let docs_url = catalog.docs_url_for(&spec.code);
    let domain = catalog.google_domain();
    let mut ctx = RenderContext::new()
        .with_request_id(&request_id)
        .with_instance("/v1/example")
        .with_domain(&domain);
    if let Some(url) = &docs_url {
        ctx = ctx.with_docs_url(url);
    }
    let body = catalog.api.profile.render_pretty(&error, &ctx);
    (error, body)
}

fn profile_members(profile: Profile) -> &'static [(&'static str, &'static str)] {
    match profile {
        Profile::Flat => &[
            ("error", "The stable machine code. Branch on it."),
            (
                "message",
                "A human-readable explanation, safe to show to end users. It may change: never parse it.",
            ),
            (
                "request_id",
                "The id of this request, equal to the request-id response header.",
            ),
            (
                "details",
                "Structured context whose shape depends on the code; absent when there is none.",
            ),
        ],
        Profile::Code => &[
            ("code", "The stable machine code. Branch on it."),
            (
                "message",
                "A human-readable explanation, safe to show to end users. It may change: never parse it.",
            ),
            (
                "details",
                "Structured context whose shape depends on the code; absent when there is none.",
            ),
            (
                "request_id",
                "The id of this request, equal to the request-id response header.",
            ),
        ],
        Profile::Nested => &[
            ("error.code", "The stable machine code. Branch on it."),
            (
                "error.message",
                "A human-readable explanation, safe to show to end users. It may change: never parse it.",
            ),
            (
                "error.request_id",
                "The id of this request, equal to the request-id response header.",
            ),
            (
                "error.details",
                "Structured context whose shape depends on the code; absent when there is none.",
            ),
        ],
        Profile::Problem => &[
            (
                "type",
                "A link to this code's documentation (or `about:blank`).",
            ),
            ("title", "The short name of the code."),
            ("status", "The HTTP status, repeated."),
            (
                "detail",
                "A human-readable explanation, safe to show to end users. It may change: never parse it.",
            ),
            ("instance", "The path of the request that failed."),
            ("code", "The stable machine code. Branch on it."),
            (
                "request_id",
                "The id of this request, equal to the request-id response header.",
            ),
            (
                "details",
                "Structured context whose shape depends on the code; absent when there is none.",
            ),
        ],
        Profile::Google => &[
            ("error.code", "The HTTP status, repeated."),
            (
                "error.message",
                "A human-readable explanation, safe to show to end users. It may change: never parse it.",
            ),
            (
                "error.status",
                "The canonical gRPC status name for the HTTP status.",
            ),
            (
                "error.details[ErrorInfo].reason",
                "The machine code in UPPER_SNAKE case (`api_key.revoked` gives `API_KEY_REVOKED`).",
            ),
            (
                "error.details[ErrorInfo].metadata.code",
                "The stable machine code exactly as the catalog spells it. Branch on it.",
            ),
            (
                "error.details[ErrorInfo].metadata",
                "Also each member of the code's details: strings as they are, other values as JSON text.",
            ),
            (
                "error.details[RequestInfo].requestId",
                "The id of this request, equal to the request-id response header.",
            ),
            (
                "error.details[RetryInfo].retryDelay",
                "The `Retry-After` wait, e.g. `30s`, when the response carries one.",
            ),
            (
                "error.details[BadRequest].fieldViolations",
                "Each invalid field with a description, for validation codes.",
            ),
            (
                "error.details[Help].links",
                "A link to this code's documentation, when the catalog has a `docs_url`.",
            ),
        ],
    }
}

fn retry_codes(catalog: &Catalog, advice: RetryAdvice) -> Vec<&str> {
    catalog
        .errors()
        .iter()
        .filter(|e| e.retry == advice)
        .map(|e| e.code.as_str())
        .collect()
}

fn details_fields(shape: &DetailsShape) -> String {
    shape
        .fields()
        .iter()
        .map(|f| {
            format!(
                "`{}`: {}{}",
                f.name,
                f.ty,
                if f.optional { " (optional)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders the reference page as Markdown.
pub fn markdown(catalog: &Catalog) -> String {
    let api = &catalog.api;
    let mut out = String::new();
    let _ = writeln!(out, "# {} errors\n", api.name);
    if let Some(description) = &api.description {
        let _ = writeln!(out, "{}\n", description.trim());
    }
    let (example_error, example_body) = example(catalog);
    let _ = writeln!(out, "## The error envelope\n");
    let _ = writeln!(
        out,
        "Every response with a status of 400 or above has a JSON body (`Content-Type: {}`) of this shape. \
         The HTTP status is authoritative; the code names the exact reason. This is `{}` ({}):\n",
        api.profile.content_type(),
        example_error.code(),
        example_error.status(),
    );
    let _ = writeln!(out, "```json\n{example_body}\n```\n");
    for (member, meaning) in profile_members(api.profile) {
        let _ = writeln!(out, "- `{member}`: {meaning}");
    }
    let _ = writeln!(
        out,
        "\nTimestamps in details are ISO-8601 with an explicit `+00:00` offset.\n"
    );
    let _ = writeln!(out, "## Request ids\n");
    let _ = writeln!(
        out,
        "Every response, successful or not, carries a `{header}` header such as `{prefix}{EXAMPLE_ID_SUFFIX}`, \
         and an error body repeats it. Log it with every failure and quote it to support: it finds the request \
         in the server's traces. You may send your own `{header}`; it is kept only when it is at most 64 \
         characters of letters, digits, `.`, `_` and `-`, and replaced otherwise.\n",
        header = api.request_id_header,
        prefix = api.request_id_prefix,
    );
    let _ = writeln!(out, "## Retrying\n");
    let _ = writeln!(
        out,
        "Each code says whether a client may retry it, and how.\n"
    );
    let _ = writeln!(out, "| Advice | What to do | Codes |\n|---|---|---|");
    for advice in RetryAdvice::ALL {
        let codes = retry_codes(catalog, advice);
        if codes.is_empty() {
            continue;
        }
        let codes: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            advice.label(),
            cell(advice.explanation()),
            codes.join(", ")
        );
    }
    out.push('\n');
    out.push_str(&crate::limits::docs_section(catalog, false));
    if let Some(settings) = &catalog.idempotency {
        out.push_str(&crate::idempotency::docs_markdown(catalog, settings));
    }
    let _ = writeln!(out, "## Error codes\n");
    for (category, codes) in sections(catalog) {
        let _ = writeln!(out, "### {category}\n");
        let _ = writeln!(out, "| HTTP | Code | When | Recovery |\n|---|---|---|---|");
        for e in codes {
            let deprecated = if e.deprecated { " (deprecated)" } else { "" };
            let _ = writeln!(
                out,
                "| {} | `{}`{deprecated} | {} | {} |",
                e.status,
                e.code,
                cell(
                    &match crate::limits::docs_raised_by(catalog, &e.code, false) {
                        Some(raised) => format!("{} {raised}", e.when),
                        None => e.when.clone(),
                    }
                ),
                cell(&e.recovery)
            );
        }
        out.push('\n');
    }
    let with_details: Vec<&ErrorSpec> = catalog
        .errors()
        .iter()
        .filter(|e| e.details != DetailsShape::None)
        .collect();
    if !with_details.is_empty() {
        let _ = writeln!(out, "## Details\n");
        let _ = writeln!(out, "Codes that carry `details`, and its members:\n");
        let _ = writeln!(out, "| Code | Shape | Members |\n|---|---|---|");
        for e in with_details {
            let shape = match &e.details {
                DetailsShape::Object(_) => "object".to_owned(),
                other => format!("`{other}`"),
            };
            let _ = writeln!(
                out,
                "| `{}` | {shape} | {} |",
                e.code,
                cell(&details_fields(&e.details))
            );
        }
        out.push('\n');
    }
    out
}

/// One Markdown table cell: no line breaks, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes text for HTML and turns `backtick spans` into `<code>`.
fn prose(text: &str) -> String {
    let escaped = esc(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #5b6475; --line: #dfe3ea; --bg: #ffffff; --soft: #f5f7fa; --accent: #3450d1; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
main { max-width: 1080px; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1 { font-size: 1.9rem; margin: 0 0 .5rem; }
h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem; border-bottom: 1px solid var(--line); padding-bottom: .3rem; }
h3 { font-size: 1.1rem; margin: 1.8rem 0 .5rem; }
p, li { color: var(--fg); }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft); padding: .1rem .3rem; border-radius: 4px; }
pre { background: #0f172a; color: #e2e8f0; padding: 1rem; border-radius: 8px; overflow-x: auto; }
pre code { background: none; color: inherit; padding: 0; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; vertical-align: top; padding: .5rem .6rem; border-bottom: 1px solid var(--line); }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
td.status { font-weight: 600; white-space: nowrap; }
tr:target { background: #fff7d6; }
a.anchor { color: inherit; text-decoration: none; }
a.anchor:hover code { text-decoration: underline; }
.tag { font-size: .75rem; color: #8a5a00; background: #fff1cc; border-radius: 4px; padding: 0 .3rem; margin-left: .3rem; }
.filter { position: sticky; top: 0; background: var(--bg); padding: .75rem 0; z-index: 1; }
.filter input { width: 100%; font-size: 1rem; padding: .55rem .75rem; border: 1px solid var(--line); border-radius: 8px; }
.empty { color: var(--muted); display: none; }
"#;

const SCRIPT: &str = r#"
(function () {
  var input = document.getElementById('filter');
  var empty = document.getElementById('no-match');
  input.addEventListener('input', function () {
    var q = input.value.trim().toLowerCase();
    var shown = 0;
    document.querySelectorAll('section.category').forEach(function (section) {
      var visible = 0;
      section.querySelectorAll('tbody tr').forEach(function (row) {
        var hit = !q || row.textContent.toLowerCase().indexOf(q) !== -1;
        row.hidden = !hit;
        if (hit) { visible++; }
      });
      section.hidden = visible === 0;
      shown += visible;
    });
    empty.style.display = shown === 0 ? 'block' : 'none';
  });
})();
"#;

/// Renders the reference page as one self-contained HTML document: inline CSS and script, no
/// external assets, an anchor per code (`#code`) and a filter box.
pub fn html(catalog: &Catalog) -> String {
    let api = &catalog.api;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{name} errors</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>{name} errors</h1>\n",
        name = esc(&api.name),
    );
    if let Some(description) = &api.description {
        let _ = writeln!(out, "<p>{}</p>", prose(description));
    }
    let (example_error, example_body) = example(catalog);
    let _ = writeln!(out, "<h2 id=\"envelope\">The error envelope</h2>");
    let _ = writeln!(
        out,
        "<p>Every response with a status of 400 or above has a JSON body (<code>Content-Type: {}</code>) of this shape. \
         The HTTP status is authoritative; the code names the exact reason. This is <code>{}</code> ({}):</p>",
        api.profile.content_type(),
        esc(example_error.code()),
        example_error.status(),
    );
    let _ = writeln!(out, "<pre><code>{}</code></pre>\n<ul>", esc(&example_body));
    for (member, meaning) in profile_members(api.profile) {
        let _ = writeln!(
            out,
            "<li><code>{}</code>: {}</li>",
            esc(member),
            prose(meaning)
        );
    }
    let _ = writeln!(
        out,
        "</ul>\n<p>Timestamps in details are ISO-8601 with an explicit <code>+00:00</code> offset.</p>"
    );
    let _ = writeln!(out, "<h2 id=\"request-ids\">Request ids</h2>");
    let _ = writeln!(
        out,
        "<p>Every response, successful or not, carries a <code>{header}</code> header such as <code>{prefix}{EXAMPLE_ID_SUFFIX}</code>, \
         and an error body repeats it. Log it with every failure and quote it to support: it finds the request \
         in the server's traces. You may send your own <code>{header}</code>; it is kept only when it is at most 64 \
         characters of letters, digits, <code>.</code>, <code>_</code> and <code>-</code>, and replaced otherwise.</p>",
        header = esc(&api.request_id_header),
        prefix = esc(&api.request_id_prefix),
    );
    let _ = writeln!(
        out,
        "<h2 id=\"retrying\">Retrying</h2>\n<p>Each code says whether a client may retry it.</p>"
    );
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>Advice</th><th>What to do</th><th>Codes</th></tr></thead>\n<tbody>"
    );
    for advice in RetryAdvice::ALL {
        let codes = retry_codes(catalog, advice);
        if codes.is_empty() {
            continue;
        }
        let links: Vec<String> = codes
            .iter()
            .map(|c| format!("<a href=\"#{0}\"><code>{0}</code></a>", esc(c)))
            .collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            prose(advice.label()),
            prose(advice.explanation()),
            links.join(", ")
        );
    }
    let _ = writeln!(out, "</tbody>\n</table>");
    out.push_str(&crate::limits::docs_section(catalog, true));
    if let Some(settings) = &catalog.idempotency {
        out.push_str(&crate::idempotency::docs_html(catalog, settings, prose));
    }
    let _ = writeln!(out, "<h2 id=\"codes\">Error codes</h2>");
    let _ = writeln!(
        out,
        "<div class=\"filter\"><input id=\"filter\" type=\"search\" placeholder=\"Filter by code, status or text\" aria-label=\"Filter error codes\"></div>\n\
         <p id=\"no-match\" class=\"empty\">No code matches the filter.</p>"
    );
    for (category, codes) in sections(catalog) {
        let _ = writeln!(
            out,
            "<section class=\"category\">\n<h3>{}</h3>",
            esc(category)
        );
        let _ = writeln!(
            out,
            "<table>\n<thead><tr><th>HTTP</th><th>Code</th><th>When</th><th>Recovery</th></tr></thead>\n<tbody>"
        );
        for e in codes {
            let tag = if e.deprecated {
                "<span class=\"tag\">deprecated</span>"
            } else {
                ""
            };
            let details = if e.details == DetailsShape::None {
                String::new()
            } else {
                format!(
                    "<br><small>Details: {}</small>",
                    prose(&details_fields(&e.details))
                )
            };
            let _ = writeln!(
                out,
                "<tr id=\"{code}\"><td class=\"status\">{status}</td><td><a class=\"anchor\" href=\"#{code}\"><code>{code}</code></a>{tag}</td><td>{when}{details}</td><td>{recovery}</td></tr>",
                code = esc(&e.code),
                status = e.status,
                when = match crate::limits::docs_raised_by(catalog, &e.code, true) {
                    Some(raised) => format!("{} {raised}", prose(&e.when)),
                    None => prose(&e.when),
                },
                recovery = prose(&e.recovery),
            );
        }
        let _ = writeln!(out, "</tbody>\n</table>\n</section>");
    }
    let _ = writeln!(out, "</main>\n<script>{SCRIPT}</script>\n</body>\n</html>");
    out
}
