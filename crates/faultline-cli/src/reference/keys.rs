//! Key management in the reference API: create, list, revoke, pause, resume.
//!
//! Keys belong to the organisation of the key that manages them; the raw key appears once, in
//! the answer to its creation.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use faultline::Situation;
use faultline::details::{Echo, Limit, Reason};
use faultline_axum::auth::{CreateKeyError, KeyAction, KeyRecord, NewKey, Principal, StatusChange};
use faultline_axum::{Error, Json, Path, Problems};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AppState, SCOPES, errors, not_blank};

/// The longest webhook URL accepted.
const MAX_WEBHOOK_URL: usize = 2048;
/// The body of `POST /v1/api_keys`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schemars(length(min = 1, max = 100))]
    name: String,
    #[schemars(length(min = 1))]
    scopes: Vec<String>,
    /// RFC 3339, in the future.
    expires_at: Option<String>,
    webhook_url: Option<String>,
}

/// A key as the API shows it (never the key itself, except once at creation).
#[derive(Debug, Serialize)]
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

impl From<KeyRecord> for ApiKeyView {
    fn from(key: KeyRecord) -> Self {
        ApiKeyView {
            id: key.id,
            name: key.name,
            display_prefix: key.display_prefix,
            scopes: key.scopes,
            status: key.status.as_str(),
            expires_at: key.expires_at.map(iso8601),
            webhook_url: key.webhook_url,
            created_at: iso8601(key.created_at),
        }
    }
}

/// The answer to a creation: the view plus the raw key, shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    view: ApiKeyView,
    key: String,
}

/// A list of keys.
#[derive(Debug, Serialize)]
pub struct ApiKeyList {
    data: Vec<ApiKeyView>,
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
    if authority.host().is_empty() {
        return Some("The URL has no host.");
    }
    None
}

/// `POST /v1/api_keys`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<CreateApiKey>,
) -> Result<(StatusCode, axum::Json<CreatedApiKey>), Error> {
    let mut problems = Problems::default();
    // The chatbots' garde rule, called here so that its problem joins the expiry's.
    if let Err(blank) = not_blank(&input.name, &()) {
        problems.field("name", "/name", blank.message());
    }
    let name = input.name.trim().to_owned();
    let now = state.auth.clock().now();
    let expires_at = match input.expires_at.as_deref() {
        None => None,
        Some(text) => {
            match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            {
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
    };
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
    let new = NewKey {
        name,
        scopes,
        expires_at,
        webhook_url: input.webhook_url,
    };
    match state.auth.create_key(&principal.org_id, new).await {
        Ok((record, secret)) => Ok((
            StatusCode::CREATED,
            axum::Json(CreatedApiKey {
                view: record.into(),
                key: secret.expose().to_owned(),
            }),
        )),
        Err(CreateKeyError::LimitReached { max }) => {
            Err(errors::api_key_limit_reached(Limit { max: max as u64 }).into())
        }
        Err(CreateKeyError::Store(e)) => Err(e.into()),
    }
}

/// `GET /v1/api_keys`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<ApiKeyList>, Error> {
    let keys = state.auth.list_keys(&principal.org_id).await?;
    Ok(axum::Json(ApiKeyList {
        data: keys.into_iter().map(ApiKeyView::from).collect(),
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
    match state
        .auth
        .change_key(&principal.org_id, &id, action)
        .await?
    {
        StatusChange::Changed(key) => Ok(axum::Json(key.into())),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked_with_reasons() {
        assert_eq!(webhook_url_problem("https://hooks.example.com/x"), None);
        assert_eq!(webhook_url_problem("http://127.0.0.1:9000/"), None);
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
    fn timestamps_have_an_explicit_offset() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
    }
}
