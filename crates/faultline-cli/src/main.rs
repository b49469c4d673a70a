//! `faultline`: lint a catalog, render its docs page, serve the reference API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use faultline::{Catalog, Profile};
use faultline_axum::StoreError;
use faultline_axum::auth::{CreateKeyError, NewKey};
use faultline_cli::reference;

/// The server's allocator, not the system one.
///
/// Under load, glibc's allocator functions took about a tenth of the limited stack's CPU per
/// request (frees on another worker thread than the allocation, chunk consolidation);
/// mimalloc keeps per-thread pages and frees across threads cheaply. The load benches'
/// bare-axum baselines use it too, so their comparisons stay like for like.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Error catalogs for HTTP APIs: one file in, a server's errors, docs and guardrails out.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a catalog and report every problem with its line. Exits 1 when there are any.
    Lint {
        /// The catalog file (TOML).
        catalog: PathBuf,
    },
    /// Render a catalog's reference page.
    Docs {
        /// The catalog file (TOML).
        catalog: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DocsFormat::Markdown)]
        format: DocsFormat,
        /// Show examples in this envelope profile instead of the catalog's.
        #[arg(long, value_parser = profile_names())]
        profile: Option<Profile>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Compare with the existing --out file instead of writing it; exit 1 if it differs.
        #[arg(long, requires = "out")]
        check: bool,
    },
    /// Run the reference API: the chatbots API on an embedded SQLite database.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// SQLite database file, created on first start.
        #[arg(long, default_value = "faultline.db")]
        db: PathBuf,
        /// The catalog to serve [default: the built-in copy of examples/catalogs/chatbots.toml].
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Serve the catalog in this envelope profile instead of its own.
        #[arg(long, value_parser = profile_names())]
        profile: Option<Profile>,
        #[command(flatten)]
        connections: ConnectionArgs,
        /// Keep rate-limit buckets in this Redis (e.g. redis://127.0.0.1:6379), shared by every
        /// process given the same URL [default: in this process].
        #[arg(long)]
        redis_url: Option<String>,
        /// Serve without the catalog's rate, quota and concurrency limits (for benchmarks).
        #[arg(long, conflicts_with = "redis_url")]
        no_limits: bool,
        /// When the limit store (Redis) fails or is late: `open` admits the request without
        /// limits and logs a warning; `closed` answers the catalog's 503 with `Retry-After`.
        #[arg(long, value_enum, default_value_t = LimitFailure::Open)]
        limits_on_failure: LimitFailure,
        #[command(flatten)]
        postgres: PostgresArgs,
        #[command(flatten)]
        idempotency: IdempotencyArgs,
    },
    /// Manage the reference API's keys in its database.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the reference API's organisations in its database.
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
}

/// What `serve` answers when its limit store fails.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LimitFailure {
    /// Admit without limits, with a warning.
    Open,
    /// The catalog's 503 with `Retry-After`.
    Closed,
}

impl From<LimitFailure> for faultline_axum::limit::FailureMode {
    fn from(choice: LimitFailure) -> Self {
        match choice {
            LimitFailure::Open => Self::Open,
            LimitFailure::Closed => Self::Closed,
        }
    }
}

/// Limits on client connections.
#[derive(Debug, clap::Args)]
struct ConnectionArgs {
    /// Seconds a client may take to send a request's head.
    #[arg(long, default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds a kept-alive connection may wait for its next request.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Connections served at once; more are answered 503 and closed.
    #[arg(long, default_value_t = faultline_axum::listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C; then they are cut.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
}

/// State shared by several `serve` processes.
#[derive(Debug, clap::Args)]
struct PostgresArgs {
    /// Keep the reference data (chatbots, categories, cursor secret, webhook URLs), API keys,
    /// organisations, idempotency records and quota counters in PostgreSQL
    /// (`postgres://user@host:port/dbname`; default: env `DATABASE_URL`), so that several
    /// `serve` processes share them. Migrations run at start.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds `serve` waits for PostgreSQL at start-up (retrying from 100 ms, doubling up to
    /// 5 s) before it exits; 0 exits at once when PostgreSQL is not reachable.
    #[arg(long, default_value_t = 30)]
    database_wait: u64,
    /// Connections to PostgreSQL at most, per process.
    #[arg(long, default_value_t = 16)]
    database_max_connections: usize,
    /// Milliseconds a PostgreSQL connect or statement may take before the request is answered
    /// 503 with `Retry-After`.
    #[arg(long, default_value_t = 2000)]
    database_timeout_ms: u64,
}

impl PostgresArgs {
    /// Keys and organisations on PostgreSQL, when a URL is given. Nothing connects yet.
    fn key_store(
        &self,
        redis_url: Option<&str>,
    ) -> Result<Option<reference::pg_keys::PgKeys>, UsageError> {
        let Some(url) = self.url() else {
            return Ok(None);
        };
        let mut options = faultline_postgres::PgOptions::from_url(&url)
            .map_err(|e| UsageError(format!("--database-url: {e}")))?;
        options.max_connections = self.database_max_connections.max(1);
        options.connect_timeout = Duration::from_millis(self.database_timeout_ms.max(1));
        options.statement_timeout = Duration::from_millis(self.database_timeout_ms.max(1));
        reference::pg_keys::PgKeys::new(&options, redis_url)
            .map(Some)
            .map_err(|e| UsageError(e.0))
    }

    /// Where the database is, for messages: `host:port/dbname`, never the user or password.
    fn shown_target(&self) -> String {
        let Some(options) = self
            .url()
            .and_then(|url| faultline_postgres::PgOptions::from_url(&url).ok())
        else {
            return "?".to_owned();
        };
        let host = match options.config.get_hosts().first() {
            Some(faultline_postgres::tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(faultline_postgres::tokio_postgres::config::Host::Unix(path)) => {
                path.display().to_string()
            }
            None => "localhost".to_owned(),
        };
        let port = options.config.get_ports().first().copied().unwrap_or(5432);
        let dbname = options.config.get_dbname().unwrap_or("");
        format!("{host}:{port}/{dbname}")
    }

    /// The URL from the flag, else from `DATABASE_URL`.
    fn url(&self) -> Option<String> {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .filter(|url| !url.trim().is_empty())
    }

    /// The idempotency store on PostgreSQL, when a URL is given. Nothing connects yet:
    /// [`migrate_postgres`] does, at start-up.
    fn idempotency_store(
        &self,
    ) -> Result<Option<Arc<faultline_postgres::PgIdempotencyStore>>, UsageError> {
        let Some(url) = self.url() else {
            return Ok(None);
        };
        let mut options = faultline_postgres::PgOptions::from_url(&url)
            .map_err(|e| UsageError(format!("--database-url: {e}")))?;
        options.max_connections = self.database_max_connections.max(1);
        options.connect_timeout = Duration::from_millis(self.database_timeout_ms.max(1));
        options.statement_timeout = Duration::from_millis(self.database_timeout_ms.max(1));
        let pool = faultline_postgres::PgPool::new(&options).map_err(store_error)?;
        Ok(Some(Arc::new(faultline_postgres::PgIdempotencyStore::new(
            pool,
        ))))
    }
}

/// Keys on PostgreSQL when `database_url` (or env `DATABASE_URL`) is given, else on the
/// SQLite file `db`; for PostgreSQL, the keys (whose pool [`migrate_keys`] brings up to date).
fn keys_for(
    db: &Path,
    database_url: Option<String>,
) -> Result<
    (
        Arc<faultline_axum::auth::KeyManager>,
        Option<reference::pg_keys::PgKeys>,
    ),
    UsageError,
> {
    let postgres = PostgresArgs {
        database_url,
        database_wait: 0,
        database_max_connections: 2,
        database_timeout_ms: 5000,
    };
    match postgres.key_store(None)? {
        Some(pg) => Ok((Arc::clone(&pg.manager), Some(pg))),
        None => Ok((
            reference::keys_on_file(db).map_err(|e| UsageError(e.0))?,
            None,
        )),
    }
}

/// Brings the schema of the keys on PostgreSQL up to date (nothing for SQLite).
async fn migrate_keys(pg: Option<&reference::pg_keys::PgKeys>) -> Result<(), StoreError> {
    match pg {
        Some(pg) => faultline_postgres::migrate(&pg.pool).await.map(drop),
        None => Ok(()),
    }
}

/// Brings the PostgreSQL schema up to date (safe when several processes start at once).
async fn migrate_postgres(
    store: &faultline_postgres::PgIdempotencyStore,
) -> Result<(), UsageError> {
    faultline_postgres::migrate(store.pool())
        .await
        .map(drop)
        .map_err(|e| UsageError(format!("PostgreSQL (--database-url): {e}")))
}

/// How `Idempotency-Key` records are kept.
#[derive(Debug, clap::Args)]
struct IdempotencyArgs {
    /// Seconds a claim holds before a retry may take it over (a server that died holding it)
    /// [default: the catalog's `lease_seconds`, else 60].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_lease: Option<u64>,
    /// Seconds a completed answer is replayed to retries with the same key [default: the
    /// catalog's `retention_seconds`, else 86400].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_retention: Option<u64>,
    /// Seconds between two prunings of ended records.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idempotency_prune_every: u64,
    /// Milliseconds every keyed request waits after its claim (crash tests only).
    #[arg(long, default_value_t = 0, hide = true)]
    idempotency_hold_ms: u64,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key (and its organisation, if new). The key is printed once.
    Create {
        /// The organisation's name.
        #[arg(long)]
        org: String,
        /// Scopes, comma-separated; `all` grants every scope of the reference API.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A name for the key.
        #[arg(long, default_value = "cli")]
        name: String,
        /// The key stops working after this many seconds.
        #[arg(long)]
        expires_in: Option<u32>,
        /// SQLite database file.
        #[arg(long, default_value = "faultline.db")]
        db: PathBuf,
        /// Keys in PostgreSQL instead of --db (default: env `DATABASE_URL`).
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OrgsCommand {
    /// Let the organisation's keys make calls again.
    Activate {
        /// The organisation's name.
        name: String,
        /// SQLite database file.
        #[arg(long, default_value = "faultline.db")]
        db: PathBuf,
        /// Organisations in PostgreSQL instead of --db (default: env `DATABASE_URL`); the
        /// running `serve` processes on it are told at once.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Refuse every call made with the organisation's keys (`org_inactive`).
    Deactivate {
        /// The organisation's name.
        name: String,
        /// SQLite database file.
        #[arg(long, default_value = "faultline.db")]
        db: PathBuf,
        /// Organisations in PostgreSQL instead of --db (default: env `DATABASE_URL`); the
        /// running `serve` processes on it are told at once.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Put the organisation on a plan tier of the catalog's `[limits]` (e.g. free, pro).
    SetTier {
        /// The organisation's name.
        name: String,
        /// The tier.
        tier: String,
        /// SQLite database file.
        #[arg(long, default_value = "faultline.db")]
        db: PathBuf,
        /// The catalog whose tiers are allowed [default: the built-in chatbots catalog].
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Organisations in PostgreSQL instead of --db (default: env `DATABASE_URL`).
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DocsFormat {
    Markdown,
    Html,
}

/// Envelope profile names on the command line, taken from `Profile::ALL` so that `--help`
/// lists them and no second list of names exists.
fn profile_names() -> impl clap::builder::TypedValueParser<Value = Profile> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Profile::ALL.map(Profile::as_str))
        .try_map(|name| name.parse::<Profile>())
}

/// A failure of the command itself (not of the catalog): exit 2.
struct UsageError(String);

#[allow(clippy::print_stderr, clippy::print_stdout)] // a CLI talks on its standard streams
fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stderr, clippy::print_stdout)]
fn run(command: Command) -> Result<ExitCode, UsageError> {
    match command {
        Command::Lint { catalog } => {
            let source = read(&catalog)?;
            match Catalog::from_toml_str(&source) {
                Ok(parsed) => {
                    println!("ok: {}: {}", catalog.display(), parsed.summary());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprint!("{}", errors.report(&catalog.display().to_string()));
                    eprintln!(
                        "{} problem(s) found in {}",
                        errors.problems.len(),
                        catalog.display()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Serve {
            addr,
            db,
            catalog,
            profile,
            connections,
            redis_url,
            no_limits,
            limits_on_failure,
            postgres,
            idempotency,
        } => serve(
            addr,
            &db,
            catalog.as_deref(),
            profile,
            &connections,
            (!no_limits).then_some((redis_url.as_deref(), limits_on_failure.into())),
            &postgres,
            &idempotency,
        ),
        Command::Keys {
            command:
                KeysCommand::Create {
                    org,
                    scopes,
                    name,
                    expires_in,
                    db,
                    database_url,
                },
        } => {
            let (keys, pg) = keys_for(&db, database_url)?;
            let scopes = if scopes.iter().any(|s| s == "all") {
                reference::all_scopes()
            } else {
                scopes
            };
            if let Some(unknown) = scopes
                .iter()
                .find(|s| !reference::SCOPES.contains(&s.as_str()))
            {
                return Err(UsageError(format!(
                    "unknown scope `{unknown}`; known scopes: {}, or all",
                    reference::SCOPES.join(", ")
                )));
            }
            let expires_at = expires_in.map(|s| keys.authenticator().clock().now() + i64::from(s));
            let (record, key) = block_on(async {
                migrate_keys(pg.as_ref()).await?;
                let org = keys.ensure_org(&org).await?;
                let new = NewKey::new(name, scopes).with_expiry(expires_at);
                Ok(keys.create_key(&org.id, new).await)
            })?
            .map_err(|e| match e {
                CreateKeyError::LimitReached { max } => UsageError(format!(
                    "the organisation already holds {max} keys; revoke one first"
                )),
                other => UsageError(other.to_string()),
            })?;
            eprintln!(
                "created {} ({}) for {org}; it is shown once:",
                record.id,
                record.scopes.join(" ")
            );
            println!("{}", key.expose());
            Ok(ExitCode::SUCCESS)
        }
        Command::Orgs { command } => {
            let (name, db, database_url, active) = match command {
                OrgsCommand::Activate {
                    name,
                    db,
                    database_url,
                } => (name, db, database_url, true),
                OrgsCommand::Deactivate {
                    name,
                    db,
                    database_url,
                } => (name, db, database_url, false),
                OrgsCommand::SetTier {
                    name,
                    tier,
                    db,
                    catalog,
                    database_url,
                } => return set_tier(&name, &tier, &db, catalog.as_deref(), database_url),
            };
            let (keys, pg) = keys_for(&db, database_url)?;
            let found = block_on(async {
                migrate_keys(pg.as_ref()).await?;
                match keys.org_by_name(&name).await? {
                    Some(org) => keys.set_org_active(&org.id, active).await,
                    None => Ok(false),
                }
            })?;
            if !found {
                return Err(UsageError(format!("no organisation named `{name}`")));
            }
            println!(
                "{name} is now {}",
                if active { "active" } else { "inactive" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Docs {
            catalog,
            format,
            profile,
            out,
            check,
        } => {
            let mut parsed = load(&catalog)?;
            if let Some(profile) = profile {
                parsed.api.profile = profile;
            }
            let page = match format {
                DocsFormat::Markdown => faultline::docs::markdown(&parsed),
                DocsFormat::Html => faultline::docs::html(&parsed),
            };
            match (out, check) {
                (Some(out), true) => {
                    let existing = std::fs::read_to_string(&out).unwrap_or_default();
                    if existing == page {
                        println!("ok: {} is up to date", out.display());
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!(
                            "{} is out of date; regenerate it with:\n  cargo run -q -- docs {} --format {} --out {}",
                            out.display(),
                            catalog.display(),
                            match format {
                                DocsFormat::Markdown => "markdown",
                                DocsFormat::Html => "html",
                            },
                            out.display()
                        );
                        Ok(ExitCode::from(1))
                    }
                }
                (Some(out), false) => {
                    std::fs::write(&out, page)
                        .map_err(|e| UsageError(format!("cannot write {}: {e}", out.display())))?;
                    Ok(ExitCode::SUCCESS)
                }
                (None, _) => {
                    print!("{page}");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

/// Prints a line for the operator of `serve`; a closed standard output (`serve | head`) must
/// not stop the server, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[allow(clippy::print_stdout)]
#[allow(clippy::too_many_arguments)] // one argument per group of flags
fn serve(
    addr: std::net::SocketAddr,
    db: &Path,
    catalog: Option<&Path>,
    profile: Option<Profile>,
    connections: &ConnectionArgs,
    limits: Option<(Option<&str>, faultline_axum::limit::FailureMode)>,
    postgres: &PostgresArgs,
    idempotency: &IdempotencyArgs,
) -> Result<ExitCode, UsageError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let parsed = match catalog {
        Some(path) => load(path)?,
        // The binary carries the catalog it was built with, so it serves from any directory.
        None => Catalog::from_toml_str(reference::errors::SOURCE)
            .map_err(|_| UsageError("the built-in catalog is invalid".into()))?,
    };
    let pg_idempotency = postgres.idempotency_store()?;
    // With --database-url, keys and organisations are in PostgreSQL, and every change is
    // announced to the other processes' key caches.
    let limit_failure = limits.map(|(_, failure)| failure).unwrap_or_default();
    let limits = limits.map(|(url, _)| url);
    let pg_keys = postgres.key_store(limits.flatten())?;
    let keys = match &pg_keys {
        Some(pg) => Arc::clone(&pg.manager),
        None => reference::keys_on_file(db).map_err(|e| UsageError(e.0))?,
    };
    let mut ready = faultline_axum::Health::new();
    if let Some(pg) = &pg_keys {
        ready = ready.check("postgres", pg.ready_check());
    }
    if let Some(url) = limits.flatten() {
        let redis = faultline_redis::RedisPool::new(url, faultline_redis::PoolOptions::default())
            .map_err(|e| UsageError(format!("--redis-url: {e}")))?;
        let redis = Arc::new(redis);
        ready = ready.check("redis", move || {
            let redis = Arc::clone(&redis);
            async move {
                redis
                    .query::<String>(&faultline_redis::redis::cmd("PING"))
                    .await
                    .map(drop)
            }
        });
    }
    // `limits`: `None` serves without limits, `Some(redis_url)` with them.
    let limits = limits
        .map(|redis_url| reference::limits::limit_store(redis_url).map_err(|e| UsageError(e.0)))
        .transpose()?;
    // With --database-url the quota counters are in PostgreSQL (durable and shared), around
    // the store above for rates and concurrency.
    let pg_quotas = match (&limits, &pg_idempotency) {
        (Some(inner), Some(pg)) => Some(reference::limits::quotas_on_postgres(
            pg.pool().clone(),
            Arc::clone(inner),
        )),
        _ => None,
    };
    let limits = match &pg_quotas {
        Some(quotas) => Some(Arc::clone(quotas) as Arc<dyn faultline_axum::limit::LimitStore>),
        None => limits,
    };
    let mut options = reference::idempotency::IdempotencyOptions::from_catalog(&parsed);
    if let Some(seconds) = idempotency.idempotency_lease {
        options.settings.lease = Duration::from_secs(seconds);
    }
    if let Some(seconds) = idempotency.idempotency_retention {
        options.settings.retention = Duration::from_secs(seconds);
    }
    options.hold = Duration::from_millis(idempotency.idempotency_hold_ms);
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    // With --database-url the reference data and the idempotency records (and so their
    // pruning) are in PostgreSQL; the chatbot POST completes its record in its own transaction.
    // PostgreSQL may come up after `serve` (a machine booting): wait for it, with backoff,
    // up to --database-wait.
    let pg_data = match &pg_idempotency {
        Some(pg) => Some(
            runtime
                .block_on(faultline_postgres::wait_at_start(
                    Duration::from_secs(postgres.database_wait),
                    &postgres.shown_target(),
                    || reference::store::PgStore::connect(pg.pool().clone()),
                ))
                .map_err(|e| {
                    UsageError(format!(
                        "PostgreSQL (--database-url {}) not ready after waiting {} s: {}",
                        postgres.shown_target(),
                        postgres.database_wait,
                        faultline_postgres::describe(&e)
                    ))
                })?,
        ),
        None => None,
    };
    // Quotas decided in PostgreSQL get the database's deadline, not Redis's 250 ms.
    let serving = reference::Serving::new(ready, limit_failure);
    let serving = match &pg_quotas {
        Some(_) => {
            serving.with_limit_deadline(Duration::from_millis(postgres.database_timeout_ms.max(1)))
        }
        None => serving,
    };
    let built = match &pg_data {
        Some(pg) => reference::app_on_store_checked(
            parsed,
            profile,
            reference::store::Store::from(pg.clone()),
            Arc::clone(&keys),
            limits,
            &options,
            serving,
        ),
        None => reference::app_on_file_checked(
            parsed,
            profile,
            db,
            Arc::clone(&keys),
            limits,
            &options,
            serving,
        ),
    }
    .map_err(|e| UsageError(e.to_string()))?;
    let (app, contract, health) = (built.router, built.contract, built.health);
    let records: Arc<dyn faultline_axum::idempotency::IdempotencyStore> = match &pg_data {
        Some(pg) => Arc::new(pg.records().clone()),
        None => Arc::new(reference::idempotency::store_on_file(db).map_err(|e| UsageError(e.0))?),
    };
    let prune_every = Duration::from_secs(idempotency.idempotency_prune_every);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
        if let Some(store) = &pg_idempotency {
            migrate_postgres(store).await?;
            say!("reference data and idempotency records in PostgreSQL (schema up to date)");
        }
        // Other processes' key changes reach this one's cache (applied until `serve` stops).
        let _invalidations = pg_keys.as_ref().map(|pg| {
            let subscription = pg.subscribe();
            say!("keys and organisations in PostgreSQL; changes announced over {}", subscription.engine());
            subscription
        });
        say!("faultline reference API on http://{addr} (database {}, docs at http://{addr}/docs)", db.display());
        // An empty database gets a demo organisation and one key, shown this once.
        let fresh = keys.count_orgs().await.map_err(store_error)? == 0;
        if fresh {
            let org = keys.ensure_org("demo").await.map_err(store_error)?;
            let new = NewKey::new("demo", reference::all_scopes());
            let (_, key) = keys
                .create_key(&org.id, new)
                .await
                .map_err(|_| UsageError("cannot create the demo key".into()))?;
            // The key is printed once, on a line of its own; the hint refers to it by name.
            say!("created organisation `demo` and a key with every scope (shown once):");
            say!("export KEY={}", key.expose());
            say!("try: curl -i -X POST http://{addr}/v1/chatbots -H \"authorization: Bearer $KEY\" -H 'content-type: application/json' -d '{{\"status\":\"live\"}}'");
        } else {
            say!("create a key with: faultline keys create --db {} --org demo --scopes all", db.display());
        }
        // Quota periods that ended long ago are deleted on a task of their own.
        let _quota_pruning = pg_quotas
            .as_ref()
            .map(|quotas| quotas.spawn_pruning(faultline_postgres::DEFAULT_QUOTA_PRUNE_EVERY));
        // Ended idempotency records go on a task of their own; requests never wait for it.
        let _pruning = faultline_axum::idempotency::spawn_pruning(
            records,
            Arc::clone(&options.clock),
            prune_every,
        );
        // Requests hyper cannot parse get the catalog's answer too.
        let listener = faultline_axum::ContractListener::new(listener, contract)
            .header_read_timeout(Duration::from_secs(connections.header_read_timeout))
            .idle_timeout(Duration::from_secs(connections.idle_timeout))
            .max_connections(connections.max_connections);
        let stopping = Arc::new(tokio::sync::Notify::new());
        let server = faultline_axum::serve(listener, app).with_graceful_shutdown({
            let stopping = Arc::clone(&stopping);
            async move {
                shutdown_signal().await;
                // Not ready any more: a load balancer stops sending while requests finish.
                health.start_draining();
                tracing::info!("shutting down: no new connections, in-flight requests finish");
                stopping.notify_one();
            }
        });
        let deadline = Duration::from_secs(connections.shutdown_timeout);
        tokio::select! {
            served = server => served.map_err(|e| UsageError(format!("server error: {e}"))),
            () = async { stopping.notified().await; tokio::time::sleep(deadline).await } => {
                // Dropping the runtime drops the requests still running, which releases what
                // they hold (leases, claims) through their guards.
                tracing::warn!(seconds = deadline.as_secs(), "shutdown deadline passed: cutting the requests still in flight");
                Ok(())
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (what orchestrators send) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `faultline orgs set-tier NAME TIER`.
#[allow(clippy::print_stdout)]
fn set_tier(
    name: &str,
    tier: &str,
    db: &Path,
    catalog: Option<&Path>,
    database_url: Option<String>,
) -> Result<ExitCode, UsageError> {
    let parsed = match catalog {
        Some(path) => load(path)?,
        None => Catalog::from_toml_str(reference::errors::SOURCE)
            .map_err(|_| UsageError("the built-in catalog is invalid".into()))?,
    };
    reference::limits::known_tier(&parsed, tier).map_err(|e| UsageError(e.0))?;
    let (keys, pg) = keys_for(db, database_url)?;
    let found = block_on(async {
        migrate_keys(pg.as_ref()).await?;
        match keys.org_by_name(name).await? {
            Some(org) => keys.set_org_tier(&org.id, Some(tier)).await,
            None => Ok(false),
        }
    })?;
    if !found {
        return Err(UsageError(format!("no organisation named `{name}`")));
    }
    println!("{name} is now on the {tier} tier");
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(store_error)`
fn store_error(e: StoreError) -> UsageError {
    UsageError(format!("database error: {e}"))
}

/// Runs a store call to completion on a small runtime.
fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, UsageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?
        .block_on(future)
        .map_err(store_error)
}

fn read(path: &Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))
}

/// Reads and validates a catalog; a catalog with problems is reported like `lint` does.
#[allow(clippy::print_stderr)]
fn load(path: &Path) -> Result<Catalog, UsageError> {
    let source = read(path)?;
    Catalog::from_toml_str(&source).map_err(|errors| {
        eprint!("{}", errors.report(&path.display().to_string()));
        UsageError(format!(
            "{} has {} problem(s); run `faultline lint` for details",
            path.display(),
            errors.problems.len()
        ))
    })
}
