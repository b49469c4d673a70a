//! The reference API: the chatbots API of seed 003 on SQLite, with every failure a catalog error.
//!
//! Until API keys land, every request acts for one default organisation. The organisation comes
//! from one place, the [`Org`] extractor, which reads what the org layer put in the request.

pub mod store;

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{Html, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use faultline::Catalog;
use faultline_axum::{Contract, Error, Faultline, Json, Path, Query};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use store::{CategoryRow, ChatbotRow, Store};

faultline_macros::catalog!(pub mod errors = "../../../../examples/catalogs/chatbots.toml");

/// The organisation requests act for until API keys land.
pub const DEFAULT_ORG: &str = "org_default";

/// Shared state of the reference API.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    cursor_key: Arc<Vec<u8>>,
    docs_html: Arc<String>,
}

/// Everything needed to build the app.
pub struct Settings {
    /// The catalog served (must hold every code the app raises, with the same status).
    pub catalog: Catalog,
    /// Serve in this profile instead of the catalog's.
    pub profile: Option<faultline::Profile>,
    /// The store.
    pub store: Store,
    /// Largest accepted body.
    pub body_limit: usize,
    /// Handler deadline.
    pub timeout: std::time::Duration,
}

/// Why the app cannot start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Builds the reference app.
pub fn app(settings: Settings) -> Result<Router, StartError> {
    // The handlers raise codes of the compiled-in chatbots catalog; a catalog given at run time
    // must hold them with the same status, or the docs would not match what is served.
    for def in errors::defs::ALL {
        match settings.catalog.get(def.code) {
            Some(spec) if spec.status == def.status => {}
            Some(spec) => {
                return Err(StartError(format!(
                    "the catalog gives `{}` status {}, the reference API raises it with {}",
                    def.code, spec.status, def.status
                )));
            }
            None => {
                return Err(StartError(format!(
                    "the catalog lacks `{}`, which the reference API raises",
                    def.code
                )));
            }
        }
    }
    let docs_html = faultline::docs::html(&settings.catalog);
    let mut contract = Contract::new(settings.catalog).map_err(|e| StartError(e.to_string()))?;
    if let Some(profile) = settings.profile {
        contract = contract.with_profile(profile);
    }
    let cursor_key = settings
        .store
        .cursor_secret()
        .map_err(|_| StartError("cannot read the database".into()))?;
    let state = AppState {
        store: settings.store,
        cursor_key: Arc::new(cursor_key),
        docs_html: Arc::new(docs_html),
    };

    let api = Router::new()
        .route("/v1/chatbots", post(create_chatbot).get(list_chatbots))
        .route(
            "/v1/chatbots/{id}",
            get(get_chatbot)
                .patch(update_chatbot)
                .delete(delete_chatbot),
        )
        .route("/v1/categories", post(create_category))
        .route(
            "/v1/categories/{id}",
            delete(delete_category).get(get_category),
        )
        .route_layer(axum::middleware::from_fn(default_org));
    let router = Router::new()
        .merge(api)
        .route("/docs", get(docs))
        .route("/health", get(health))
        .with_state(state);
    Ok(Faultline::new(contract)
        .body_limit(settings.body_limit)
        .timeout(settings.timeout)
        .install(router))
}

/// Builds the app on a SQLite file.
pub fn app_on_file(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
) -> Result<Router, StartError> {
    let store =
        Store::open(db).map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?;
    app(Settings {
        catalog,
        profile,
        store,
        body_limit: faultline_axum::layer::DEFAULT_BODY_LIMIT,
        timeout: faultline_axum::layer::DEFAULT_TIMEOUT,
    })
}

/// The organisation a request acts for.
#[derive(Debug, Clone)]
pub struct Org(pub String);

/// Puts the default organisation in each request; API-key auth will replace this layer.
async fn default_org(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Org(DEFAULT_ORG.to_owned()));
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Org {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Org>()
            .cloned()
            .ok_or_else(|| Error::internal("no organisation on the request"))
    }
}

async fn docs(State(state): State<AppState>) -> Html<String> {
    Html(state.docs_html.as_ref().clone())
}

async fn health() -> &'static str {
    "ok"
}

/// A chatbot as the API shows it.
#[derive(Debug, Serialize)]
struct Chatbot {
    id: String,
    name: String,
    status: String,
    created_at: String,
    updated_at: String,
}

impl From<ChatbotRow> for Chatbot {
    fn from(row: ChatbotRow) -> Self {
        Chatbot {
            id: row.id,
            name: row.name,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The states a chatbot can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Status {
    Draft,
    Active,
    Paused,
    Archived,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Archived => "archived",
        }
    }

    /// The state machine: archived is terminal; a chatbot never goes back to draft.
    fn can_become(from: &str, to: Status) -> bool {
        match (from, to) {
            (f, t) if f == t.as_str() => true,
            ("draft", Status::Active | Status::Paused | Status::Archived) => true,
            ("active", Status::Paused | Status::Archived) => true,
            ("paused", Status::Active | Status::Archived) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateChatbot {
    #[schemars(length(min = 1, max = 100))]
    name: String,
    status: Option<Status>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UpdateChatbot {
    #[schemars(length(min = 1, max = 100))]
    name: Option<String>,
    status: Option<Status>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[schemars(range(min = 1, max = 100))]
    limit: Option<u32>,
    cursor: Option<String>,
}

fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

fn storage(e: store::StoreError) -> Error {
    Error::internal(e)
}

async fn create_chatbot(
    State(state): State<AppState>,
    Org(org): Org,
    Json(input): Json<CreateChatbot>,
) -> Result<(StatusCode, axum::Json<Chatbot>), Error> {
    let ts = now();
    let row = ChatbotRow {
        id: Uuid::new_v4().to_string(),
        org_id: org,
        name: input.name.trim().to_owned(),
        status: input.status.unwrap_or(Status::Draft).as_str().to_owned(),
        created_at: ts.clone(),
        updated_at: ts,
        deleted_at: None,
    };
    let saved = row.clone();
    state
        .store
        .call(move |c| store::insert_chatbot(c, &saved))
        .await
        .map_err(storage)?;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

async fn find_chatbot(state: &AppState, org: String, id: Uuid) -> Result<ChatbotRow, Error> {
    let row = state
        .store
        .call(move |c| store::get_chatbot(c, &org, &id.to_string()))
        .await
        .map_err(storage)?
        // Another org's chatbot is indistinguishable from one that does not exist.
        .ok_or_else(|| errors::not_found().with_message("Chatbot not found."))?;
    if row.deleted_at.is_some() {
        return Err(errors::gone()
            .with_message("This chatbot was deleted.")
            .into());
    }
    Ok(row)
}

async fn get_chatbot(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Chatbot>, Error> {
    Ok(axum::Json(find_chatbot(&state, org, id).await?.into()))
}

async fn update_chatbot(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<Uuid>,
    Json(input): Json<UpdateChatbot>,
) -> Result<axum::Json<Chatbot>, Error> {
    let mut row = find_chatbot(&state, org, id).await?;
    if let Some(status) = input.status {
        if !Status::can_become(&row.status, status) {
            return Err(errors::conflict(errors::ConflictDetails {
                current: Some(row.status.clone()),
                requested: Some(status.as_str().to_owned()),
                reason: Some(format!(
                    "A chatbot cannot go from {} to {}.",
                    row.status,
                    status.as_str()
                )),
            })
            .with_message("This status change is not allowed.")
            .into());
        }
        row.status = status.as_str().to_owned();
    }
    if let Some(name) = input.name {
        row.name = name.trim().to_owned();
    }
    row.updated_at = now();
    let saved = row.clone();
    state
        .store
        .call(move |c| store::update_chatbot(c, &saved))
        .await
        .map_err(storage)?;
    Ok(axum::Json(row.into()))
}

async fn delete_chatbot(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Error> {
    let mut row = find_chatbot(&state, org, id).await?;
    let ts = now();
    row.deleted_at = Some(ts.clone());
    row.updated_at = ts;
    state
        .store
        .call(move |c| store::update_chatbot(c, &row))
        .await
        .map_err(storage)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A page of chatbots.
#[derive(Debug, Serialize)]
struct Page {
    data: Vec<Chatbot>,
    next_cursor: Option<String>,
}

type HmacSha256 = Hmac<Sha256>;

/// An opaque cursor: base64url of the position, a dot, base64url of its HMAC-SHA256.
fn sign_cursor(key: &[u8], created_at: &str, id: &str) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"));
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    format!(
        "{payload}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn open_cursor(key: &[u8], cursor: &str) -> Option<(String, String)> {
    let (payload, signature) = cursor.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).ok()?; // constant-time comparison
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let (created_at, id) = text.split_once('|')?;
    Some((created_at.to_owned(), id.to_owned()))
}

async fn list_chatbots(
    State(state): State<AppState>,
    Org(org): Org,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page>, Error> {
    let limit = query.limit.unwrap_or(20);
    let after = match &query.cursor {
        None => None,
        Some(cursor) => {
            Some(open_cursor(&state.cursor_key, cursor).ok_or_else(errors::invalid_cursor)?)
        }
    };
    // One extra row tells whether another page follows.
    let mut rows = state
        .store
        .call(move |c| store::list_chatbots(c, &org, after, limit + 1))
        .await
        .map_err(storage)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last()
            .map(|last| sign_cursor(&state.cursor_key, &last.created_at, &last.id))
    } else {
        None
    };
    Ok(axum::Json(Page {
        data: rows.into_iter().map(Chatbot::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateCategory {
    #[schemars(length(min = 1, max = 100))]
    name: String,
    parent_id: Option<Uuid>,
}

/// A category as the API shows it.
#[derive(Debug, Serialize)]
struct Category {
    id: String,
    name: String,
    parent_id: Option<String>,
    created_at: String,
}

impl From<CategoryRow> for Category {
    fn from(row: CategoryRow) -> Self {
        Category {
            id: row.id,
            name: row.name,
            parent_id: row.parent_id,
            created_at: row.created_at,
        }
    }
}

async fn create_category(
    State(state): State<AppState>,
    Org(org): Org,
    Json(input): Json<CreateCategory>,
) -> Result<(StatusCode, axum::Json<Category>), Error> {
    if let Some(parent) = input.parent_id {
        let org = org.clone();
        let found = state
            .store
            .call(move |c| store::get_category(c, &org, &parent.to_string()))
            .await
            .map_err(storage)?;
        if found.is_none() {
            return Err(errors::unprocessable()
                .with_message("A referenced resource does not exist.")
                .into());
        }
    }
    let row = CategoryRow {
        id: Uuid::new_v4().to_string(),
        org_id: org,
        parent_id: input.parent_id.map(|p| p.to_string()),
        name: input.name.trim().to_owned(),
        created_at: now(),
    };
    let saved = row.clone();
    state
        .store
        .call(move |c| store::insert_category(c, &saved))
        .await
        .map_err(storage)?;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

async fn get_category(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Category>, Error> {
    let row = state
        .store
        .call(move |c| store::get_category(c, &org, &id.to_string()))
        .await
        .map_err(storage)?
        .ok_or_else(|| errors::not_found().with_message("Category not found."))?;
    Ok(axum::Json(row.into()))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DeleteCategoryQuery {
    cascade: Option<bool>,
}

async fn delete_category(
    State(state): State<AppState>,
    Org(org): Org,
    Path(id): Path<Uuid>,
    Query(query): Query<DeleteCategoryQuery>,
) -> Result<StatusCode, Error> {
    let id = id.to_string();
    let cascade = query.cascade.unwrap_or(false);
    // The store's lock is held for the whole closure, so the check and the delete are atomic.
    let outcome = state
        .store
        .call(move |c| {
            if store::get_category(c, &org, &id)?.is_none() {
                return Ok(None);
            }
            let children = store::count_children(c, &id)?;
            if children > 0 && !cascade {
                return Ok(Some(children));
            }
            store::delete_category(c, &org, &id)?;
            Ok(Some(0))
        })
        .await
        .map_err(storage)?;
    match outcome {
        None => Err(errors::not_found()
            .with_message("Category not found.")
            .into()),
        Some(0) => Ok(StatusCode::NO_CONTENT),
        Some(_) => Err(errors::category_not_empty().into()),
    }
}
