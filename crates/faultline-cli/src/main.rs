//! `faultline`: lint a catalog, render its docs page, serve the reference API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use faultline::{Catalog, Profile};

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
        #[arg(long, value_enum)]
        profile: Option<ProfileArg>,
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
        /// The catalog to serve.
        #[arg(long, default_value = "examples/catalogs/chatbots.toml")]
        catalog: PathBuf,
        /// Serve the catalog in this envelope profile instead of its own.
        #[arg(long, value_enum)]
        profile: Option<ProfileArg>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DocsFormat {
    Markdown,
    Html,
}

/// An envelope profile name on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    Flat,
    Code,
    Nested,
    Problem,
    Google,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Flat => Profile::Flat,
            ProfileArg::Code => Profile::Code,
            ProfileArg::Nested => Profile::Nested,
            ProfileArg::Problem => Profile::Problem,
            ProfileArg::Google => Profile::Google,
        }
    }
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
        } => serve(addr, &db, &catalog, profile),
        Command::Docs {
            catalog,
            format,
            profile,
            out,
            check,
        } => {
            let mut parsed = load(&catalog)?;
            if let Some(profile) = profile {
                parsed.api.profile = profile.into();
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

#[allow(clippy::print_stdout)]
fn serve(
    addr: std::net::SocketAddr,
    db: &Path,
    catalog: &Path,
    profile: Option<ProfileArg>,
) -> Result<ExitCode, UsageError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let parsed = load(catalog)?;
    let app = faultline_cli::reference::app_on_file(parsed, profile.map(Profile::from), db)
        .map_err(|e| UsageError(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| UsageError(format!("cannot listen on {addr}: {e}")))?;
        println!("faultline reference API on http://{addr} (database {}, docs at http://{addr}/docs)", db.display());
        println!("try: curl -i -X POST http://{addr}/v1/chatbots -H 'content-type: application/json' -d '{{\"status\":\"live\"}}'");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| UsageError(format!("server error: {e}")))
    })?;
    Ok(ExitCode::SUCCESS)
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
