//! The reference API: the chatbots API of seed 003 on SQLite, with every failure a catalog error.
//!
//! Every `/v1` route needs an API key ([`faultline_axum::auth`]) holding the route's scope;
//! every resource belongs to the key's organisation, and another organisation's resource is
//! answered exactly like one that does not exist.

pub mod cursor;
pub mod keys;
pub mod store;

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{MethodRouter, delete, get, patch, post};
use faultline::Catalog;
use faultline_axum::auth::{
    AuthLayer, Authenticator, KeyFormat, KeyManager, OrgScoped, Principal, RequireScopeLayer,
};
use faultline_axum::{Contract, Error, Faultline, Json, Path, Query, ValidJson};
use faultline_sqlite::{PoolOptions, SqliteKeyStore};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use store::{CategoryRow, ChatbotRow, Store};

faultline_macros::catalog!(pub mod errors = "../../../../examples/catalogs/chatbots.toml");

/// The scopes a key of the reference API can hold.
pub const SCOPES: [&str; 6] = [
    "chatbots:read",
    "chatbots:write",
    "categories:read",
    "categories:write",
    "api_keys:read",
    "api_keys:write",
];

/// Every scope, as a key's scope list (the demo key's, and `keys create --scopes all`).
pub fn all_scopes() -> Vec<String> {
    SCOPES.iter().map(|s| (*s).to_owned()).collect()
}

/// The product part of the reference API's keys (`cb_live_…`).
pub const KEY_PREFIX: &str = "cb";
/// The environment part of the reference API's keys.
pub const KEY_ENV: &str = "live";

/// The key format of the reference API.
pub fn key_format() -> KeyFormat {
    KeyFormat::new(KEY_PREFIX, KEY_ENV).expect("the built-in prefix is valid")
}

/// Shared state of the reference API.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    auth: Arc<Authenticator>,
    keys: Arc<KeyManager>,
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
    /// API keys: management, and (through [`KeyManager::authenticator`]) verification.
    pub keys: Arc<KeyManager>,
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
    build(settings).map(|(router, _)| router)
}

/// Builds the reference app, and gives the contract it serves (for [`faultline_axum::ContractListener`]).
pub fn build(settings: Settings) -> Result<(Router, Arc<Contract>), StartError> {
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
    let auth = AuthLayer::new(Arc::clone(settings.keys.authenticator()));
    let state = AppState {
        store: settings.store,
        auth: Arc::clone(settings.keys.authenticator()),
        keys: settings.keys,
        cursor_key: Arc::new(cursor_key),
        docs_html: Arc::new(docs_html),
    };
    // Each method of a route gets its own scope; the key check wraps only routed methods, so
    // an unknown route or method is answered 404 or 405 whatever the credentials.
    let guard = |route: MethodRouter<AppState>, scope: &str| {
        route
            .route_layer(RequireScopeLayer::new(scope))
            .route_layer(auth.clone())
    };
    let router = Router::new()
        .route(
            "/v1/chatbots",
            guard(post(create_chatbot), "chatbots:write")
                .merge(guard(get(list_chatbots), "chatbots:read")),
        )
        .route(
            "/v1/chatbots/{id}",
            guard(get(get_chatbot), "chatbots:read")
                .merge(guard(patch(update_chatbot), "chatbots:write"))
                .merge(guard(delete(delete_chatbot), "chatbots:write")),
        )
        .route(
            "/v1/categories",
            guard(post(create_category), "categories:write"),
        )
        .route(
            "/v1/categories/{id}",
            guard(get(get_category), "categories:read")
                .merge(guard(delete(delete_category), "categories:write")),
        )
        .route(
            "/v1/api_keys",
            guard(post(keys::create), "api_keys:write")
                .merge(guard(get(keys::list), "api_keys:read")),
        )
        .route(
            "/v1/api_keys/{id}/{action}",
            guard(post(keys::change), "api_keys:write"),
        )
        .route("/docs", get(docs))
        .route("/health", get(health))
        .with_state(state);
    let faultline = Faultline::new(contract)
        .body_limit(settings.body_limit)
        .timeout(settings.timeout);
    let contract = Arc::clone(faultline.contract());
    Ok((faultline.install(router), contract))
}

/// The key manager (and its authenticator) of the reference API on a SQLite file.
pub fn keys_on_file(db: &FsPath) -> Result<Arc<KeyManager>, StartError> {
    let store = Arc::new(
        SqliteKeyStore::open(db, PoolOptions::default())
            .map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?,
    );
    let auth = Arc::new(Authenticator::new(key_format(), store.clone()));
    Ok(Arc::new(KeyManager::new(auth, store)))
}

/// Builds the app on a SQLite file (chatbots and keys share the database), with its contract.
pub fn app_on_file(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
    keys: Arc<KeyManager>,
) -> Result<(Router, Arc<Contract>), StartError> {
    let store =
        Store::open(db).map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?;
    build(Settings {
        catalog,
        profile,
        store,
        keys,
        body_limit: faultline_axum::layer::DEFAULT_BODY_LIMIT,
        timeout: faultline_axum::layer::DEFAULT_TIMEOUT,
    })
}

impl OrgScoped for ChatbotRow {
    fn org_id(&self) -> &str {
        &self.org_id
    }
}

impl OrgScoped for CategoryRow {
    fn org_id(&self) -> &str {
        &self.org_id
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

// Types and lengths are in the schema; the rule that a name is not blank is garde's. Both
// land in the same `invalid_payload` details.
#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
struct CreateChatbot {
    #[schemars(length(min = 1, max = 100))]
    #[garde(custom(not_blank))]
    name: String,
    #[garde(skip)]
    status: Option<Status>,
}

#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
#[serde(deny_unknown_fields)]
struct UpdateChatbot {
    #[schemars(length(min = 1, max = 100))]
    #[garde(inner(custom(not_blank)))]
    name: Option<String>,
    #[garde(skip)]
    status: Option<Status>,
}

/// A garde rule: text must hold something besides white space.
fn not_blank(value: &str, _context: &()) -> garde::Result {
    if value.trim().is_empty() {
        Err(garde::Error::new("Must not be blank."))
    } else {
        Ok(())
    }
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

fn storage(e: faultline_axum::StoreError) -> Error {
    e.into()
}

async fn create_chatbot(
    State(state): State<AppState>,
    principal: Principal,
    ValidJson(input): ValidJson<CreateChatbot>,
) -> Result<(StatusCode, axum::Json<Chatbot>), Error> {
    let ts = now();
    let row = ChatbotRow {
        id: Uuid::new_v4().to_string(),
        org_id: principal.org_id.to_string(),
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

async fn find_chatbot(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<ChatbotRow, Error> {
    let found = state
        .store
        .call(move |c| store::get_chatbot(c, &id.to_string()))
        .await
        .map_err(storage)?;
    // Another org's chatbot is indistinguishable from one that does not exist.
    let row = principal.scope(found)?;
    if row.deleted_at.is_some() {
        return Err(errors::gone()
            .with_message("This chatbot was deleted.")
            .into());
    }
    Ok(row)
}

async fn get_chatbot(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Chatbot>, Error> {
    Ok(axum::Json(
        find_chatbot(&state, &principal, id).await?.into(),
    ))
}

async fn update_chatbot(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    ValidJson(input): ValidJson<UpdateChatbot>,
) -> Result<axum::Json<Chatbot>, Error> {
    let mut row = find_chatbot(&state, &principal, id).await?;
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
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, Error> {
    let mut row = find_chatbot(&state, &principal, id).await?;
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

async fn list_chatbots(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Page>, Error> {
    let limit = query.limit.unwrap_or(20);
    let after = match &query.cursor {
        None => None,
        Some(cursor) => {
            let position = cursor::open(
                &state.cursor_key,
                &principal.org_id,
                cursor,
                state.auth.clock().now(),
                2,
            )
            .ok_or_else(errors::invalid_cursor)?;
            let [created_at, id]: [String; 2] =
                position.try_into().map_err(|_| errors::invalid_cursor())?;
            Some((created_at, id))
        }
    };
    // One extra row tells whether another page follows.
    let org_id = Arc::clone(&principal.org_id);
    let mut rows = state
        .store
        .call(move |c| store::list_chatbots(c, &org_id, after, limit + 1))
        .await
        .map_err(storage)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| {
            cursor::sign(
                &state.cursor_key,
                &principal.org_id,
                &[&last.created_at, &last.id],
                state.auth.clock().now(),
            )
        })
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
    principal: Principal,
    Json(input): Json<CreateCategory>,
) -> Result<(StatusCode, axum::Json<Category>), Error> {
    if let Some(parent) = input.parent_id {
        let found = state
            .store
            .call(move |c| store::get_category(c, &parent.to_string()))
            .await
            .map_err(storage)?;
        if principal.scope(found).is_err() {
            return Err(errors::unprocessable()
                .with_message("A referenced resource does not exist.")
                .into());
        }
    }
    let row = CategoryRow {
        id: Uuid::new_v4().to_string(),
        org_id: principal.org_id.to_string(),
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
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Category>, Error> {
    let found = state
        .store
        .call(move |c| store::get_category(c, &id.to_string()))
        .await
        .map_err(storage)?;
    Ok(axum::Json(principal.scope(found)?.into()))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DeleteCategoryQuery {
    cascade: Option<bool>,
}

async fn delete_category(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<DeleteCategoryQuery>,
) -> Result<StatusCode, Error> {
    let id = id.to_string();
    let cascade = query.cascade.unwrap_or(false);
    // The store's lock is held for the whole closure, so the check and the delete are atomic.
    let owner = principal.clone();
    let deleted = state
        .store
        .call(move |c| {
            let Some(row) = store::get_category(c, &id)?.filter(|row| owner.owns(row)) else {
                return Ok(None);
            };
            if !cascade && store::count_children(c, &row.id)? > 0 {
                return Ok(Some(false));
            }
            store::delete_category(c, &row.org_id, &row.id)?;
            Ok(Some(true))
        })
        .await
        .map_err(storage)?;
    match deleted {
        // What `Principal::scope` answers for a foreign or unknown id.
        None => Err(Error::bound(faultline::Situation::ResourceNotFound)),
        Some(true) => Ok(StatusCode::NO_CONTENT),
        Some(false) => Err(errors::category_not_empty().into()),
    }
}
