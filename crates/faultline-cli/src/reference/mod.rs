//! The reference API: the chatbots API of seed 003 on SQLite, with every failure a catalog error.
//!
//! Every `/v1` route needs an API key ([`faultline_axum::auth`]) holding the route's scope;
//! every resource belongs to the key's organisation, and another organisation's resource is
//! answered exactly like one that does not exist.

mod categories;
mod chatbots;
pub mod cursor;
pub mod idempotency;
pub mod keys;
pub mod limits;
pub mod pg_keys;
pub mod store;

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::{MethodRouter, delete, get, patch, post};
use faultline::Catalog;
use faultline_axum::auth::{
    AuthLayer, Authenticator, KeyFormat, KeyManager, OrgScoped, RequireScopeLayer,
};
use faultline_axum::limit::FailureMode;
use faultline_axum::{Contract, Error, Faultline};
use faultline_sqlite::{PoolOptions, SqliteKeyStore};
use schemars::JsonSchema;

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
    /// Whether idempotency records live in `store`'s database (handlers then complete them in
    /// their own transactions).
    records_in_store: bool,
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
///
/// Idempotency keys are kept as the catalog's `[idempotency]` table says (the defaults when it
/// has none); no rate limits.
pub fn build(settings: Settings) -> Result<(Router, Arc<Contract>), StartError> {
    build_limited(settings, None)
}

/// [`build`], with the catalog's limits on every `/v1` route when `limits` gives a store.
pub fn build_limited(
    settings: Settings,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
) -> Result<(Router, Arc<Contract>), StartError> {
    let options = idempotency::IdempotencyOptions::from_catalog(&settings.catalog);
    build_parts_with(settings, limits, &options).map(|built| (built.router, built.contract))
}

/// [`build`] with these idempotency options; the docs page states them (they replace the
/// catalog's `[idempotency]` table).
pub fn build_with(
    settings: Settings,
    idempotency: &idempotency::IdempotencyOptions,
) -> Result<(Router, Arc<Contract>), StartError> {
    build_parts_with(settings, None, idempotency).map(|built| (built.router, built.contract))
}

/// How `serve` runs the app beyond its data: the readiness checks beyond the store's own, and
/// the answer when the limit store fails.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Serving {
    /// Checks `/readyz` runs besides the database's.
    pub health: faultline_axum::Health,
    /// Admit without limits, or answer 503, when the limit store fails.
    pub limit_failure: FailureMode,
    /// How long a limit decision may take before it counts as failed [default: the limit
    /// layer's, 250 ms]; `serve --database-url` gives its database deadline, since quotas
    /// are decided in PostgreSQL then.
    pub limit_deadline: Option<std::time::Duration>,
}

impl Serving {
    /// These checks and this failure answer.
    pub fn new(health: faultline_axum::Health, limit_failure: FailureMode) -> Self {
        Serving {
            health,
            limit_failure,
            limit_deadline: None,
        }
    }

    /// The same, with limit decisions allowed `deadline`.
    #[must_use]
    pub fn with_limit_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.limit_deadline = Some(deadline);
        self
    }
}

/// The reference app and what its operator needs beside it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Built {
    /// The app, faultline installed.
    pub router: Router,
    /// The contract served (for [`faultline_axum::ContractListener`]).
    pub contract: Arc<Contract>,
    /// `/healthz` and `/readyz`: call [`faultline_axum::Health::start_draining`] on shutdown.
    pub health: faultline_axum::Health,
    /// The counters served at `/metrics`.
    pub metrics: Arc<faultline_axum::Metrics>,
}

/// Builds the reference app (without limits) with its health checks and metrics.
pub fn build_parts(settings: Settings) -> Result<Built, StartError> {
    let options = idempotency::IdempotencyOptions::from_catalog(&settings.catalog);
    build_parts_with(settings, None, &options)
}

/// Builds the reference app with its health checks and metrics, the catalog's limits on
/// every `/v1` route when `limits` gives a store, and these idempotency options.
///
/// # Operations routes sit outside the key check
///
/// `GET /healthz`, `GET /readyz` (the database answers a read) and `GET /metrics`
/// (Prometheus text) need no API key, like `/docs`; put `/metrics` behind the network's own
/// access rules in production.
pub fn build_parts_with(
    settings: Settings,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    idempotency: &idempotency::IdempotencyOptions,
) -> Result<Built, StartError> {
    build_parts_checked(settings, limits, idempotency, faultline_axum::Health::new())
}

/// [`build_parts_with`], with `/readyz` also asking the checks of `health` (e.g. PostgreSQL
/// and Redis when the keys or the limits live there), before its own database check.
pub fn build_parts_checked(
    settings: Settings,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    idempotency: &idempotency::IdempotencyOptions,
    health: faultline_axum::Health,
) -> Result<Built, StartError> {
    build_parts_serving(
        settings,
        limits,
        (FailureMode::default(), None),
        idempotency,
        health,
    )
}

/// [`build_parts_checked`], answering as `limit_failure` says when the limit store fails or
/// misses its deadline (`limit_deadline`, else the limit layer's): admit without limits
/// ([`FailureMode::Open`], the default) or the catalog's 503 with `Retry-After`
/// ([`FailureMode::Closed`]).
pub fn build_parts_serving(
    mut settings: Settings,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    (limit_failure, limit_deadline): (FailureMode, Option<std::time::Duration>),
    idempotency: &idempotency::IdempotencyOptions,
    health: faultline_axum::Health,
) -> Result<Built, StartError> {
    settings.catalog.idempotency = Some(idempotency.settings.clone());
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
    check_request_types()?;
    let docs_html = faultline::docs::html(&settings.catalog);
    let metrics = Arc::new(faultline_axum::Metrics::new(&settings.catalog));
    let limit = limits.map(|store| {
        let layer = faultline_axum::limit::LimitLayer::new(&settings.catalog, store)
            .on_failure(limit_failure)
            .metrics(Arc::clone(&metrics));
        match limit_deadline {
            Some(deadline) => layer.deadline(deadline),
            None => layer,
        }
    });
    let mut contract = Contract::new(settings.catalog)
        .map_err(|e| StartError(e.to_string()))?
        .with_metrics(Arc::clone(&metrics));
    if let Some(profile) = settings.profile {
        contract = contract.with_profile(profile);
    }
    let cursor_key = settings
        .store
        .cursor_secret()
        .map_err(|_| StartError("cannot read the database".into()))?;
    let auth = AuthLayer::new(Arc::clone(settings.keys.authenticator()));
    let probe = settings.store.clone();
    let health = health.check("database", move || {
        let store = probe.clone();
        async move { store.ping().await }
    });
    let faultline = Faultline::new(contract)
        .body_limit(settings.body_limit)
        .timeout(settings.timeout);
    let keyed_layer = idempotency::layer(
        &settings.store,
        Arc::clone(faultline.contract()),
        idempotency,
    )?;
    let keyed = |route| idempotency::keyed(route, &keyed_layer, idempotency.hold);
    // `POST /v1/chatbots` completes its record in the insert's transaction when the records
    // are in the application's database, so its claim can wait for that commit.
    let records_in_store = idempotency.store.is_none();
    let keyed_in_transaction = keyed_layer.clone().in_handler_transaction(records_in_store);
    let keyed_in_transaction =
        |route| idempotency::keyed(route, &keyed_in_transaction, idempotency.hold);
    let state = AppState {
        store: settings.store,
        auth: Arc::clone(settings.keys.authenticator()),
        keys: settings.keys,
        cursor_key: Arc::new(cursor_key),
        docs_html: Arc::new(docs_html),
        records_in_store,
    };
    // Each method of a route gets its own scope; the key check wraps only routed methods, so
    // an unknown route or method is answered 404 or 405 whatever the credentials.
    //
    // The key check, the scope check and the limits are one stack in one `route_layer`: axum
    // boxes each `route_layer` and clones every box for every request, so three separate ones
    // cost three boxes per request.
    let guard = |route: MethodRouter<AppState>, scope: &str| {
        let checks = tower::ServiceBuilder::new()
            .layer(auth.clone())
            .layer(RequireScopeLayer::new(scope));
        // Limits run last, so a request refused for its key or scope spends nothing.
        match &limit {
            Some(limit) => route.route_layer(checks.layer(limit.clone())),
            None => route.route_layer(checks),
        }
    };
    let router = Router::new()
        .route(
            "/v1/chatbots",
            guard(
                keyed_in_transaction(post(chatbots::create)),
                "chatbots:write",
            )
            .merge(guard(get(chatbots::list), "chatbots:read")),
        )
        .route(
            "/v1/chatbots/{id}",
            guard(get(chatbots::get), "chatbots:read")
                .merge(guard(patch(chatbots::update), "chatbots:write"))
                .merge(guard(delete(chatbots::delete), "chatbots:write")),
        )
        .route(
            "/v1/categories",
            guard(keyed(post(categories::create)), "categories:write"),
        )
        .route(
            "/v1/categories/{id}",
            guard(get(categories::get), "categories:read")
                .merge(guard(delete(categories::delete), "categories:write")),
        )
        .route(
            "/v1/api_keys",
            guard(keyed(post(keys::create)), "api_keys:write")
                .merge(guard(get(keys::list), "api_keys:read")),
        )
        .route(
            "/v1/api_keys/{id}/{action}",
            guard(post(keys::change), "api_keys:write"),
        )
        .route("/docs", get(docs))
        .route("/health", get(health_text))
        .route("/metrics", get(metrics.handler()))
        .merge(health.routes())
        .with_state(state);
    let contract = Arc::clone(faultline.contract());
    Ok(Built {
        router: faultline.install(router),
        contract,
        health,
        metrics,
    })
}

/// The key manager (and its authenticator) of the reference API on a SQLite file.
///
/// # The file is created owner-only
///
/// The key store opens the file through `faultline_sqlite::Pool`, which creates a file that
/// does not exist yet readable by its owner only (and in WAL mode).
pub fn keys_on_file(db: &FsPath) -> Result<Arc<KeyManager>, StartError> {
    let store = Arc::new(
        SqliteKeyStore::open(db, PoolOptions::default())
            .map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?,
    );
    let auth = Arc::new(Authenticator::new(key_format(), store.clone()));
    Ok(Arc::new(KeyManager::new(auth, store)))
}

/// Builds the app on a SQLite file (chatbots and keys share the database), with its contract,
/// its limits in memory.
///
/// The file is opened through a [`faultline_sqlite::Pool`]: created readable by its owner
/// only, in WAL mode, with readers that never wait for the writer.
pub fn app_on_file(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
    keys: Arc<KeyManager>,
) -> Result<Built, StartError> {
    app_on_file_limited(catalog, profile, db, keys, limits::limit_store(None)?)
}

/// [`app_on_file`] with its limit buckets in `limits`.
pub fn app_on_file_limited(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
    keys: Arc<KeyManager>,
    limits: Arc<dyn faultline_axum::limit::LimitStore>,
) -> Result<Built, StartError> {
    let options = idempotency::IdempotencyOptions::from_catalog(&catalog);
    app_on_file_with(catalog, profile, db, keys, Some(limits), &options)
}

/// [`app_on_file`] with its limit buckets in `limits` (no limits when `None`) and these
/// idempotency options.
pub fn app_on_file_with(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
    keys: Arc<KeyManager>,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    idempotency: &idempotency::IdempotencyOptions,
) -> Result<Built, StartError> {
    app_on_file_checked(
        catalog,
        profile,
        db,
        keys,
        limits,
        idempotency,
        Serving::default(),
    )
}

/// [`app_on_file_with`], with `/readyz` also asking the checks of `health`.
pub fn app_on_file_checked(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    db: &FsPath,
    keys: Arc<KeyManager>,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    idempotency: &idempotency::IdempotencyOptions,
    serving: Serving,
) -> Result<Built, StartError> {
    let store =
        Store::open(db).map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?;
    build_parts_serving(
        Settings {
            catalog,
            profile,
            store,
            keys,
            body_limit: faultline_axum::layer::DEFAULT_BODY_LIMIT,
            timeout: faultline_axum::layer::DEFAULT_TIMEOUT,
        },
        limits,
        (serving.limit_failure, serving.limit_deadline),
        idempotency,
        serving.health,
    )
}

/// [`app_on_file_checked`] on a store already open (e.g. [`store::PgStore`] for several
/// processes on one PostgreSQL database), with the default body limit and timeout; `health`
/// holds the readiness checks beyond the store's own.
pub fn app_on_store_checked(
    catalog: Catalog,
    profile: Option<faultline::Profile>,
    store: Store,
    keys: Arc<KeyManager>,
    limits: Option<Arc<dyn faultline_axum::limit::LimitStore>>,
    idempotency: &idempotency::IdempotencyOptions,
    serving: Serving,
) -> Result<Built, StartError> {
    build_parts_serving(
        Settings {
            catalog,
            profile,
            store,
            keys,
            body_limit: faultline_axum::layer::DEFAULT_BODY_LIMIT,
            timeout: faultline_axum::layer::DEFAULT_TIMEOUT,
        },
        limits,
        (serving.limit_failure, serving.limit_deadline),
        idempotency,
        serving.health,
    )
}

/// Calls `$check::<T>()?` for every type the app reads from a request body or query string.
///
/// This is the one list of request types: start-up checks of their schemas go in
/// [`check_request_types`].
macro_rules! for_each_request_type {
    ($check:ident) => {{
        $check::<chatbots::CreateChatbot>()?;
        $check::<chatbots::UpdateChatbot>()?;
        $check::<chatbots::ListQuery>()?;
        $check::<categories::CreateCategory>()?;
        $check::<categories::DeleteCategoryQuery>()?;
        $check::<keys::CreateApiKey>()?;
    }};
}

/// Start-up checks of the schema rules of every request type ([`for_each_request_type`]).
///
/// # Every schema rule is checked, or the app does not start
///
/// Each type's schema may only use rules the extractors check
/// ([`faultline_axum::ensure_supported`]): a rule that would be silently skipped stops the app
/// at start-up instead of at the first request.
///
/// # Unknown fields are refused everywhere
///
/// Every request type must refuse fields it does not know (`deny_unknown_fields`, seen as
/// `additionalProperties: false` in its schema), so that a misspelt field is an error rather
/// than silently ignored; an app listing a type that does not is refused at start-up.
fn check_request_types() -> Result<(), StartError> {
    for_each_request_type!(refuses_unknown_fields);
    for_each_request_type!(checks_every_rule);
    Ok(())
}

/// Whether every rule of `T`'s schema is one the extractors check.
fn checks_every_rule<T: JsonSchema + 'static>() -> Result<(), StartError> {
    faultline_axum::ensure_supported::<T>()
        .map_err(|e| StartError(format!("the request type `{}`: {e}", T::schema_name())))
}

/// Whether `T`'s schema closes its object to unknown fields.
fn refuses_unknown_fields<T: JsonSchema>() -> Result<(), StartError> {
    let schema = schemars::schema_for!(T);
    if schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
        Ok(())
    } else {
        Err(StartError(format!(
            "the request type `{}` accepts unknown fields; add #[serde(deny_unknown_fields)]",
            T::schema_name()
        )))
    }
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

async fn health_text() -> &'static str {
    "ok"
}

/// A garde rule shared by every name of the API (chatbots, categories, keys): text must hold
/// something besides white space.
fn not_blank(value: &str, _context: &()) -> garde::Result {
    if value.trim().is_empty() {
        Err(garde::Error::new("Must not be blank."))
    } else {
        Ok(())
    }
}

/// The current time as the API shows it: ISO-8601 with milliseconds and `+00:00`.
fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// A store failure as the handlers' error (503 when the store is busy, 500 otherwise).
fn storage(e: store::StoreError) -> Error {
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Open {
        name: String,
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Closed {
        name: String,
    }

    #[test]
    fn a_request_type_that_accepts_unknown_fields_is_refused_at_start_up() {
        assert!(refuses_unknown_fields::<Closed>().is_ok());
        let refused = refuses_unknown_fields::<Open>().unwrap_err();
        assert!(refused.0.contains("unknown fields"), "{refused}");
        assert!(
            check_request_types().is_ok(),
            "the app's own types are closed"
        );
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Unchecked {
        #[schemars(extend("contains" = {"const": 1}))]
        ids: Vec<u32>,
    }

    #[test]
    fn a_request_type_with_a_rule_nobody_checks_is_refused_at_start_up() {
        let refused = checks_every_rule::<Unchecked>().unwrap_err();
        assert!(refused.0.contains("contains"), "{refused}");
        assert!(checks_every_rule::<Closed>().is_ok());
    }
}
