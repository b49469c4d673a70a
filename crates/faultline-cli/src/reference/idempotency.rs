//! Idempotency keys on the reference API: `POST /v1/chatbots` (which completes its record in
//! its own transaction), `POST /v1/categories` and `POST /v1/api_keys` (completed by the
//! layer) accept an `Idempotency-Key`; the records live in the same SQLite file as the data.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::MethodRouter;
use faultline::clock::{Clock, SystemClock};
use faultline::idempotency::Settings;
use faultline_axum::Contract;
use faultline_axum::idempotency::{IdempotencyLayer, IdempotencyStore};
use faultline_sqlite::idempotency::SqliteIdempotencyStore;
use faultline_sqlite::{Pool, PoolOptions};

use super::store::Store;
use super::{AppState, StartError};

/// How the reference API keeps idempotency keys.
///
/// Built with [`IdempotencyOptions::default`] (or from a catalog's settings with
/// [`IdempotencyOptions::from_settings`]); its fields are public to change.
#[derive(Clone)]
#[non_exhaustive]
pub struct IdempotencyOptions {
    /// Retention, lease and methods.
    pub settings: Settings,
    /// The clock that dates claims and records.
    pub clock: Arc<dyn Clock>,
    /// Holds every keyed request this long after its claim, before the handler (crash tests
    /// use it to kill a server while a claim is held); zero in normal use.
    pub hold: Duration,
    /// Keeps the records in this store instead of the reference API's SQLite file; handlers
    /// then leave completion to the layer (no shared transaction).
    pub store: Option<Arc<dyn IdempotencyStore>>,
}

impl std::fmt::Debug for IdempotencyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyOptions")
            .field("settings", &self.settings)
            .field("hold", &self.hold)
            .field("own_store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for IdempotencyOptions {
    fn default() -> Self {
        Self::from_settings(Settings::default())
    }
}

impl IdempotencyOptions {
    /// The catalog's `[idempotency]` settings (the defaults when it has none), on the system
    /// clock.
    pub fn from_catalog(catalog: &faultline::Catalog) -> Self {
        Self::from_settings(catalog.idempotency.clone().unwrap_or_default())
    }

    /// `settings` on the system clock, holding nothing.
    pub fn from_settings(settings: Settings) -> Self {
        IdempotencyOptions {
            settings,
            clock: Arc::new(SystemClock),
            hold: Duration::ZERO,
            store: None,
        }
    }
}

/// The idempotency store of the reference API on the store's own database.
///
/// # Records live with the data
///
/// On SQLite, the file's own table; on PostgreSQL, the same database's, so the chatbot POST
/// completes its record in its own transaction on either engine.
pub(super) fn store_on(store: &Store) -> Result<Arc<dyn IdempotencyStore>, StartError> {
    match (store.pool(), store.postgres()) {
        (Some(pool), _) => Ok(Arc::new(
            SqliteIdempotencyStore::new(pool.clone())
                .map_err(|e| StartError(format!("cannot create the idempotency table: {e}")))?,
        )),
        (None, Some(pg)) => Ok(Arc::new(pg.records().clone())),
        (None, None) => Err(StartError("the store has no engine".into())),
    }
}

/// The idempotency store on a database file (e.g. for the pruning task of `serve`).
pub fn store_on_file(db: &FsPath) -> Result<SqliteIdempotencyStore, StartError> {
    let pool = Pool::open(db, PoolOptions::default())
        .map_err(|e| StartError(format!("cannot open {}: {e}", db.display())))?;
    SqliteIdempotencyStore::new(pool)
        .map_err(|e| StartError(format!("cannot create the idempotency table: {e}")))
}

/// The layer for the keyed routes.
pub(super) fn layer(
    store: &Store,
    contract: Arc<Contract>,
    options: &IdempotencyOptions,
) -> Result<IdempotencyLayer, StartError> {
    let records: Arc<dyn IdempotencyStore> = match &options.store {
        Some(records) => Arc::clone(records),
        None => store_on(store)?,
    };
    Ok(IdempotencyLayer::new(records, contract)
        .settings(&options.settings)
        .clock(Arc::clone(&options.clock)))
}

/// `route` behind `layer` (and the crash tests' hold, when set).
pub(super) fn keyed(
    route: MethodRouter<AppState>,
    layer: &IdempotencyLayer,
    hold: Duration,
) -> MethodRouter<AppState> {
    let route = if hold.is_zero() {
        route
    } else {
        route.route_layer(middleware::from_fn_with_state(hold, held))
    };
    route.route_layer(layer.clone())
}

async fn held(State(hold): State<Duration>, request: Request<Body>, next: Next) -> Response {
    tokio::time::sleep(hold).await;
    next.run(request).await
}
