//! Key management in the reference API: create, list, revoke, pause, resume.
//!
//! Keys belong to the organisation of the key that manages them; the raw key appears once, in
//! the answer to its creation. A key never creates or changes a key stronger than itself
//! ([`Principal::may_grant`], [`Principal::may_change`]), and never pauses itself.
//!
//! Webhook URLs are the reference API's own data, not the key store's: they live in the
//! `api_key_webhooks` table of the reference [`super::store::Store`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use faultline::Situation;
use faultline::details::{Echo, Limit, Reason};
use faultline_axum::auth::{
    ChangeKeyError, CreateKeyError, KeyAction, KeyPosition, KeyRecord, NewKey, Overreach,
    Principal, StatusChange,
};
use faultline_axum::idempotency::ReplayBody;
use faultline_axum::{Error, Json, Path, Problems, Query};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AppState, SCOPES, cursor, errors, not_blank};

/// The longest webhook URL accepted.
const MAX_WEBHOOK_URL: usize = 2048;
/// Keys per page unless `limit` says otherwise.
const DEFAULT_PAGE: u32 = 20;

/// The body of `POST /v1/api_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schemars(length(min = 1, max = 100))]
    name: String,
    /// At most one of each known scope, and only scopes the calling key holds.
    #[schemars(length(min = 1, max = SCOPES.len()))]
    scopes: Vec<String>,
    /// RFC 3339, in the future, and no later than the calling key's own expiry.
    expires_at: Option<String>,
    webhook_url: Option<String>,
}

/// The query of `GET /v1/api_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListApiKeys {
    #[schemars(range(min = 1, max = 100))]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A key as the API shows it (never the key itself, except once at creation).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyView {
    id: String,
    name: String,
    display_prefix: String,
    scopes: Vec<String>,
    status: &'static str,
    expires_at: Option<String>,
    webhook_url: Option<String>,
    created_at: String,
}

impl ApiKeyView {
    fn new(key: KeyRecord, webhook_url: Option<String>) -> Self {
        ApiKeyView {
            id: key.id,
            name: key.name,
            display_prefix: key.display_prefix,
            scopes: key.scopes,
            status: key.status.as_str(),
            expires_at: key.expires_at.map(iso8601),
            webhook_url,
            created_at: iso8601(key.created_at),
        }
    }
}

/// The answer to a creation: the view plus the raw key, shown this once.
///
/// # Its Debug output never shows the key
///
/// `Debug` prints the view and `key: "<redacted>"`, so logging the answer leaks nothing.
#[derive(Serialize)]
///
/// # A replay never shows the key
///
/// A retry of the creation with the same `Idempotency-Key` gets the same answer with `key`
/// `null`: the key is shown once, and the idempotency record never holds it.
pub struct CreatedApiKey {
    #[serde(flatten)]
    view: ApiKeyView,
    key: Option<String>,
}

impl fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("view", &self.view)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A page of keys.
#[derive(Debug, Serialize)]
pub struct ApiKeyList {
    data: Vec<ApiKeyView>,
    /// The cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Unix seconds as ISO-8601 with an explicit `+00:00`.
pub fn iso8601(unix: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Why a webhook URL is refused, in words safe to show, or `None` when it is acceptable.
///
/// # Webhooks never point inside the network
///
/// Besides being an absolute http(s) URL without credentials, the host must not be
/// `localhost` or a `*.localhost` name, nor a literal address that is loopback, link-local
/// (169.254.0.0/16, which holds cloud metadata at 169.254.169.254; fe80::/10), private (10/8,
/// 172.16/12, 192.168/16; fc00::/7) or unspecified (0.0.0.0/8, `::`), IPv4 addresses inside
/// IPv6 included. A host that ends in a number is read as IPv4 the way WHATWG URL parsers
/// (browsers, most HTTP clients) read it, so `http://2130706433/`, `http://0x7f.1/` and
/// `http://0177.0.0.1/` are all 127.0.0.1 and refused; a percent-encoded host does not parse.
///
/// Host *names* are not resolved: `hooks.internal.example` pointing at 10.0.0.1 passes this
/// check. The code that delivers webhooks must check the address it connects to as well.
pub fn webhook_url_problem(url: &str) -> Option<&'static str> {
    if url.len() > MAX_WEBHOOK_URL {
        return Some("The URL is longer than 2048 characters.");
    }
    if !url.contains("://") {
        return Some("The URL must be absolute and start with http:// or https://.");
    }
    let Ok(uri) = url.parse::<Uri>() else {
        return Some("The URL could not be parsed.");
    };
    let Some(scheme) = uri.scheme_str() else {
        return Some("The URL must be absolute and start with http:// or https://.");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some("Only http and https URLs are accepted.");
    }
    let Some(authority) = uri.authority() else {
        return Some("The URL has no host.");
    };
    if authority.as_str().contains('@') {
        return Some("The URL must not carry a user name or password.");
    }
    let host = authority.host();
    if host.is_empty() {
        return Some("The URL has no host.");
    }
    host_problem(host)
}

/// Why a webhook host is refused, if it is.
fn host_problem(host: &str) -> Option<&'static str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(ip) => address_problem(IpAddr::V6(ip)),
            Err(_) => Some("The URL's host is not a valid address."),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Some("The URL must not point to this machine (localhost).");
    }
    if ends_in_number(&name) {
        return match whatwg_ipv4(&name) {
            Some(ip) => address_problem(IpAddr::V4(ip)),
            None => Some("The URL's host is not a valid address."),
        };
    }
    None
}

/// Why a literal address is refused as a webhook target, if it is.
pub fn address_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [first, ..] = v4.octets();
            if v4.is_loopback() {
                Some("The URL must not point to a loopback address.")
            } else if v4.is_link_local() {
                Some("The URL must not point to a link-local address (such as 169.254.169.254).")
            } else if v4.is_private() {
                Some("The URL must not point to a private network address.")
            } else if first == 0 || v4.is_broadcast() {
                Some("The URL must not point to an unspecified or broadcast address.")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("The URL must not point to a loopback address.")
            } else if v6.is_unspecified() {
                Some("The URL must not point to an unspecified or broadcast address.")
            } else if first & 0xffc0 == 0xfe80 {
                Some("The URL must not point to a link-local address (such as 169.254.169.254).")
            } else if first & 0xfe00 == 0xfc00 {
                Some("The URL must not point to a private network address.")
            } else if let Some(v4) = v6.to_ipv4() {
                // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses.
                address_problem(IpAddr::V4(v4))
            } else {
                None
            }
        }
    }
}

/// Whether WHATWG's URL standard reads this host as IPv4: its last label (a trailing dot
/// aside) is decimal digits, or `0x` and hex digits.
fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The WHATWG IPv4 parser: one to four parts, each decimal, octal (leading `0`) or hex
/// (`0x`); the last part fills the bytes the others leave. `None` when it is not an address.
pub fn whatwg_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers = parts
        .iter()
        .map(|part| parse_ipv4_number(part))
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (5 - numbers.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    let mut address = *last;
    for (i, &n) in leading.iter().enumerate() {
        address += n << (8 * (3 - i as u32));
    }
    u32::try_from(address).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        return Some(0);
    }
    // Longer than any part of an address: not an address (and no overflow below).
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Reads the expiry of a new key from its RFC 3339 text; a problem goes into `problems`.
fn parse_expiry(text: &str, now: i64, problems: &mut Problems) -> Option<i64> {
    match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(at) if at.unix_timestamp() > now => Some(at.unix_timestamp()),
        Ok(_) => {
            problems.field("expires_at", "/expires_at", "Must be in the future.");
            None
        }
        Err(_) => {
            problems.field(
                "expires_at",
                "/expires_at",
                "Invalid datetime: expected RFC 3339, e.g. 2030-01-01T00:00:00+00:00.",
            );
            None
        }
    }
}

/// The answer to a key asking for more than it holds.
fn overreach(refusal: Overreach, asked_expiry: Option<i64>) -> Error {
    match refusal {
        Overreach::Scopes(missing) => missing.into(),
        Overreach::OutlivesCaller { caller_expires_at } => {
            let until = iso8601(caller_expires_at);
            let message = match asked_expiry {
                None => format!(
                    "Required: this API key expires at {until}, and a key it creates must expire no later."
                ),
                Some(_) => format!("Must be no later than {until}, when this API key expires."),
            };
            let mut problems = Problems::default();
            problems.field("expires_at", "/expires_at", message);
            Error::invalid(Situation::ValidationFailed, problems)
        }
        Overreach::PausesItself => errors::conflict(errors::ConflictDetails {
            current: Some("active".to_owned()),
            requested: Some("paused".to_owned()),
            reason: Some(
                "A key cannot pause itself: a paused key cannot resume itself, so an organisation \
                 whose only key it is would be locked out. Pause it with another key, or revoke it."
                    .to_owned(),
            ),
        })
        .with_message("This status change is not allowed.")
        .into(),
        // A refusal this version does not know of is still a refusal.
        _ => Error::bound(Situation::ScopeDenied),
    }
}

/// `POST /v1/api_keys`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<CreateApiKey>,
) -> Result<Response, Error> {
    let mut problems = Problems::default();
    // The chatbots' garde rule, called here so that its problem joins the expiry's.
    if let Err(blank) = not_blank(&input.name, &()) {
        problems.field("name", "/name", blank.message());
    }
    let name = input.name.trim().to_owned();
    let now = state.auth.clock().now();
    let expires_at = input
        .expires_at
        .as_deref()
        .and_then(|text| parse_expiry(text, now, &mut problems));
    if !problems.is_empty() {
        return Err(Error::invalid(Situation::ValidationFailed, problems));
    }
    if let Some(unknown) = input.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(errors::unknown_scope(Echo {
            value: unknown.clone(),
        })
        .into());
    }
    if let Some(reason) = input.webhook_url.as_deref().and_then(webhook_url_problem) {
        return Err(errors::invalid_webhook_url(Reason {
            reason: reason.to_owned(),
        })
        .into());
    }
    let mut scopes = input.scopes;
    scopes.sort_unstable();
    scopes.dedup();
    let new = NewKey::new(name, scopes).with_expiry(expires_at);
    let (record, secret) = match state.keys.create_key_as(&principal, new).await {
        Ok(created) => created,
        Err(CreateKeyError::LimitReached { max }) => {
            return Err(errors::api_key_limit_reached(Limit { max: max as u64 }).into());
        }
        Err(CreateKeyError::Overreach(refusal)) => return Err(overreach(refusal, expires_at)),
        Err(CreateKeyError::Store(e)) => return Err(e.into()),
        Err(other) => return Err(Error::internal(other)),
    };
    if let Some(url) = input.webhook_url.clone() {
        let (key_id, org_id) = (record.id.clone(), record.org_id.clone());
        let saved = state.store.save_webhook(key_id, org_id, url).await;
        if let Err(e) = saved {
            // The client never sees this key: revoke it, so that it holds no place under the
            // cap and cannot be used. If even that fails, the key is unknown to everyone.
            let _ = state
                .keys
                .change_key(&record.org_id, &record.id, KeyAction::Revoke)
                .await;
            return Err(e.into());
        }
    }
    let view = ApiKeyView::new(record, input.webhook_url);
    let replay = serde_json::to_vec(&CreatedApiKey {
        view: view.clone(),
        key: None,
    })
    .map_err(Error::internal)?;
    let mut response = (
        StatusCode::CREATED,
        axum::Json(CreatedApiKey {
            view,
            key: Some(secret.expose().to_owned()),
        }),
    )
        .into_response();
    response.extensions_mut().insert(ReplayBody::new(replay));
    Ok(response)
}

/// `GET /v1/api_keys?limit=&cursor=`: the organisation's keys, oldest first, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListApiKeys>,
) -> Result<axum::Json<ApiKeyList>, Error> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, 100) as usize;
    let now = state.auth.clock().now();
    let after = match &query.cursor {
        None => None,
        Some(text) => {
            let position = cursor::open(&state.cursor_key, &principal.org_id, text, now, 2)
                .ok_or_else(errors::invalid_cursor)?;
            let [created_at, id]: [String; 2] =
                position.try_into().map_err(|_| errors::invalid_cursor())?;
            let created_at = created_at.parse().map_err(|_| errors::invalid_cursor())?;
            Some(KeyPosition { created_at, id })
        }
    };
    // One extra key tells whether another page follows.
    let mut keys = state
        .keys
        .list_keys(&principal.org_id, after, limit + 1)
        .await?;
    let next_cursor = if keys.len() > limit {
        keys.truncate(limit);
        keys.last().map(|last| {
            let created_at = last.created_at.to_string();
            cursor::sign(
                &state.cursor_key,
                &principal.org_id,
                &[&created_at, &last.id],
                now,
            )
        })
    } else {
        None
    };
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let org_id = Arc::clone(&principal.org_id);
    let mut webhooks = state.store.webhooks_of(org_id.to_string(), ids).await?;
    Ok(axum::Json(ApiKeyList {
        data: keys
            .into_iter()
            .map(|key| {
                let url = webhooks.remove(&key.id);
                ApiKeyView::new(key, url)
            })
            .collect(),
        next_cursor,
    }))
}

/// `POST /v1/api_keys/{id}/{action}`, where the action is `revoke`, `pause` or `resume`.
pub async fn change(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, action)): Path<(String, String)>,
) -> Result<axum::Json<ApiKeyView>, Error> {
    let (action, requested) = match action.as_str() {
        "revoke" => (KeyAction::Revoke, "revoked"),
        "pause" => (KeyAction::Pause, "paused"),
        "resume" => (KeyAction::Resume, "active"),
        // Any other action is a route that does not exist.
        _ => return Err(Error::bound(Situation::RouteNotFound)),
    };
    let change = match state.keys.change_key_as(&principal, &id, action).await {
        Ok(change) => change,
        Err(ChangeKeyError::Overreach(refusal)) => return Err(overreach(refusal, None)),
        Err(ChangeKeyError::Store(e)) => return Err(e.into()),
        Err(other) => return Err(Error::internal(other)),
    };
    match change {
        StatusChange::Changed(key) => {
            let (org_id, ids) = (Arc::clone(&principal.org_id), vec![key.id.clone()]);
            let mut webhooks = state.store.webhooks_of(org_id.to_string(), ids).await?;
            let url = webhooks.remove(&key.id);
            Ok(axum::Json(ApiKeyView::new(key, url)))
        }
        // A key of another organisation is not found, like any other resource.
        StatusChange::NotFound => Err(Error::bound(Situation::ResourceNotFound)),
        StatusChange::Refused(key) => Err(errors::conflict(errors::ConflictDetails {
            current: Some(key.status.as_str().to_owned()),
            requested: Some(requested.to_owned()),
            reason: Some(format!(
                "A {} key cannot become {requested}.",
                key.status.as_str()
            )),
        })
        .with_message("This status change is not allowed.")
        .into()),
        _ => Err(Error::internal(std::io::Error::other(
            "a status change this version does not know",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn webhook_urls_are_checked_with_reasons() {
        assert_eq!(webhook_url_problem("https://hooks.example.com/x"), None);
        assert_eq!(webhook_url_problem("http://93.184.215.14:9000/"), None);
        assert_eq!(webhook_url_problem("https://[2606:4700::1111]/"), None);
        for (url, reason) in [
            ("ftp://example.com", "Only http"),
            ("example.com/hook", "absolute"),
            ("https://user:pw@example.com", "user name"),
            ("not a url", "absolute"),
            ("https://exa mple.com", "parsed"),
            ("/relative", "absolute"),
        ] {
            let got = webhook_url_problem(url).unwrap();
            assert!(got.contains(reason), "{url}: {got}");
        }
        assert!(webhook_url_problem(&format!("https://e.com/{}", "a".repeat(2048))).is_some());
    }

    #[test]
    fn webhooks_into_the_network_are_refused() {
        for (url, reason) in [
            ("http://127.0.0.1:9000/", "loopback"),
            ("http://127.1.2.3/", "loopback"),
            ("http://[::1]/", "loopback"),
            ("http://localhost:8080/", "localhost"),
            ("http://LOCALHOST./", "localhost"),
            ("http://api.localhost/", "localhost"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://169.254.1.1/", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[febf::1]/", "link-local"),
            ("http://10.0.0.1/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://172.31.255.255/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://[fc00::1]/", "private"),
            ("http://[fd12:3456::1]/", "private"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://[::]/", "unspecified"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:169.254.169.254]/", "link-local"),
            ("http://2130706433/", "loopback"),
            ("http://0x7f.1/", "loopback"),
            ("http://0177.0.0.1/", "loopback"),
            ("http://0xa9fea9fe/", "link-local"),
            ("http://10.1/", "private"),
            ("http://0/", "unspecified"),
            ("http://127.0.0.%31/", "parsed"),
            ("http://1.2.3.4.5/", "not a valid address"),
            ("http://example.256/", "not a valid address"),
        ] {
            let got = webhook_url_problem(url).unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(got.contains(reason), "{url}: {got}");
        }
        // Public neighbours of the refused ranges pass.
        for url in [
            "http://172.32.0.1/",
            "http://169.255.0.1/",
            "http://11.0.0.1/",
            "http://[fec0::1]/",
            "http://localhost.example.com/",
            "http://[::ffff:8.8.8.8]/",
        ] {
            assert_eq!(webhook_url_problem(url), None, "{url}");
        }
    }

    #[test]
    fn timestamps_have_an_explicit_offset() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
    }

    #[test]
    fn the_created_key_is_not_in_its_debug_output() {
        let created = CreatedApiKey {
            view: ApiKeyView::new(
                KeyRecord::new(
                    "key_1",
                    "org_1",
                    faultline_axum::auth::KeyDigest::of("x"),
                    faultline_axum::auth::KeyStatus::Active,
                ),
                None,
            ),
            key: Some("cb_live_secretsecretsecret".to_owned()),
        };
        let debug = format!("{created:?}");
        assert!(!debug.contains("secretsecret"), "{debug}");
        assert!(
            debug.contains("<redacted>") && debug.contains("key_1"),
            "{debug}"
        );
    }

    proptest! {
        #[test]
        fn every_whatwg_spelling_of_an_address_reads_back(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            let [a, b, c, d] = ip.octets();
            let spellings = [
                format!("{a}.{b}.{c}.{d}"),
                format!("{bits}"),
                format!("0x{bits:x}"),
                format!("0{a:o}.0x{b:X}.{c}.0{d:o}"),
                format!("{a}.{}", u32::from(b) << 16 | u32::from(c) << 8 | u32::from(d)),
                format!("{a}.{b}.{}", u32::from(c) << 8 | u32::from(d)),
                format!("{a}.{b}.{c}.{d}."),
            ];
            for spelling in spellings {
                prop_assert_eq!(whatwg_ipv4(&spelling), Some(ip), "{}", spelling);
                prop_assert!(ends_in_number(&spelling.to_ascii_lowercase()) || spelling.ends_with('.'));
                let url = format!("http://{spelling}/");
                let refused = address_problem(IpAddr::V4(ip)).is_some();
                prop_assert_eq!(webhook_url_problem(&url).is_some(), refused, "{}", url);
            }
        }

        #[test]
        fn the_ipv4_reader_never_panics(text in "[0-9a-fxX.]{0,40}") {
            let _ = whatwg_ipv4(&text);
        }
    }
}
