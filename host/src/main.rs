//! The `gatehouse` command: `serve`, `check` and `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::config::Config;
use gatehouse::gateway::Gateway;
use gatehouse::reload::{Reloader, Reloads};
use gatehouse::snapshot::Live;
use gatehouse::snapshot::load_snapshot;
use gatehouse::wasm::Runtime;
use serde_json::{Value, json};

/// mimalloc: measurably cheaper than glibc malloc for the many small,
/// short-lived allocations of request handling (see the README's benchmark).
/// The one `static` in the program: a global allocator has to be one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "The one public door: JWT-verifying API gateway with WebAssembly route handlers"
)]
struct Cli {
    /// Gateway configuration file [default: ./gatehouse.toml, or built-in defaults if absent]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway
    Serve {
        /// Runtime worker threads [default: one per core]
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate everything `serve` would load (configuration, routes, keys,
    /// JWKS, plugins), print a summary, then exit (non-zero on a problem)
    Check,
    /// Print the route table, longest prefix first (the order a request is
    /// matched in); with PATH, the route that PATH would take
    Routes {
        /// A request path, e.g. /api/v1/knowledge/premium/guide
        path: Option<String>,
    },
    /// Mint an HS256 token with the configured secret (for development)
    Token {
        /// The `sub` claim (becomes X-User-ID)
        #[arg(long)]
        sub: String,
        /// The `tier` claim (becomes X-User-Tier)
        #[arg(long)]
        tier: Option<String>,
        /// Lifetime, e.g. 1h or 15m
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Plugin authoring tools
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a standalone plugin project (the contract's WIT included) that
    /// builds with one command; its README says which
    New {
        /// The plugin's name: its .wasm file's stem, what a route's `plugin` names
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: StarterLang,
        /// The world: Gatehouse's own (the caller as a typed value) or the
        /// standard wasi:http/proxy (the stamped HTTP request)
        #[arg(long, value_enum, default_value = "gatehouse")]
        world: StarterWorld,
        /// Where to write it [default: ./NAME]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StarterWorld {
    /// gatehouse:plugin/route-handler
    Gatehouse,
    /// wasi:http/proxy 0.2
    WasiHttp,
}

#[derive(Clone, Copy, ValueEnum)]
enum StarterLang {
    /// wit-bindgen, built with cargo for wasm32-wasip2
    Rust,
    /// componentize-py
    Python,
    /// JavaScript, componentize-js (npm)
    Js,
}

/// Logs go to stdout through a background writer that batches lines (one
/// `write(2)` per batch, not per request, like nginx's `access_log buffer=`).
/// It applies backpressure instead of dropping lines; the guard flushes on exit.
fn init_logs(format: LogFormat) -> gatehouse::logsink::FlushGuard {
    let (writer, guard) = gatehouse::logsink::BatchWriter::new(std::io::stdout());
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG").unwrap_or_else(|_| "info".into());
    // Colours only for a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let access = match format {
        LogFormat::Human => gatehouse::access::Format::Human { ansi },
        LogFormat::Json => gatehouse::access::Format::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    // Access lines are formatted by `gatehouse::access` into the same writer
    // (installed once the filter that decides whether they are wanted is).
    gatehouse::access::install(writer, access);
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { workers } => {
            let _flush_on_exit = init_logs(cli.log_format);
            serve(cli.config, workers)
        }
        Command::Check => check(cli.config),
        Command::Routes { path } => routes(cli.config, path),
        Command::Token { sub, tier, ttl } => token(cli.config, sub, tier, ttl),
        Command::Plugin {
            command: PluginCommand::New { name, lang, world, dir },
        } => plugin_new(&name, lang, world, dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse plugin new`: writes the project and says how to build it.
fn plugin_new(name: &str, lang: StarterLang, world: StarterWorld, dir: Option<PathBuf>) -> anyhow::Result<()> {
    use gatehouse::starter::{Lang, World, write};
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let lang = match lang {
        StarterLang::Rust => Lang::Rust,
        StarterLang::Python => Lang::Python,
        StarterLang::Js => Lang::Js,
    };
    let world = match world {
        StarterWorld::Gatehouse => World::Gatehouse,
        StarterWorld::WasiHttp => World::WasiHttp,
    };
    let files = write(name, lang, world, &dir).map_err(anyhow::Error::msg)?;
    println!("wrote {} files into {}:", files.len(), dir.display());
    for file in &files {
        println!("  {}", file.display());
    }
    println!("build it as {} says", dir.join("README.md").display());
    Ok(())
}

/// The runtime: one worker thread per core by default. With exactly one
/// worker, a current-thread runtime does the same work without cross-thread
/// scheduling.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut rt = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().build().context("starting the runtime")
}

fn serve(config: Option<PathBuf>, workers: Option<usize>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let wasm = Arc::new(Runtime::new(&config.plugins).map_err(|e| anyhow!(e))?);
    let rt = runtime(workers)?;
    // Baseline code first for what is not cached; the reloader optimizes it.
    let (snapshot, report) = load_snapshot(&config, &wasm, rt.handle(), true)?;
    for problem in &report.problems {
        tracing::error!("{problem}");
    }
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    rt.block_on(async move {
        let (listen, admin_addr) = (config.server.listen, config.server.admin);
        // The request path and the reloader share the live snapshot and
        // nothing else.
        let live = Live::new(snapshot);
        let reloader = Arc::new(Reloader {
            config: config.clone(),
            runtime: wasm.clone(),
            live: live.clone(),
            reloads: Arc::new(Reloads::new()),
        });
        let gw = Gateway::new(config, wasm, live).await.map_err(|e| anyhow!(e))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot listen on {admin_addr} (admin)"))?;
        gatehouse::server::run(gw, reloader, listener, admin, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn check(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let wasm = Runtime::new(&config.plugins).map_err(|e| anyhow!(e))?;
    let rt = runtime(Some(1))?;
    let (snapshot, report) = load_snapshot(&config, &wasm, rt.handle(), false)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(first) = report.problems.first() {
        for problem in &report.problems[1..] {
            eprintln!("also: {problem}");
        }
        return Err(first.clone().into());
    }
    rt.block_on(gatehouse::auth::Verifier::new(&config.auth)).map_err(|e| anyhow!(e))?;
    let source = config.file.as_ref().map_or("built-in defaults".into(), |f| f.display().to_string());
    println!(
        "ok: {source}, {} routes from {}, {} plugins from {}",
        snapshot.router.routes().len(),
        config.server.routes_dir.display(),
        snapshot.plugins.files.len(),
        config.server.plugins_dir.display()
    );
    println!();
    print!("{}", gatehouse::summary::routes(&snapshot.router));
    println!();
    print!("{}", gatehouse::summary::plugins(&snapshot.plugins));
    println!();
    print!("{}", gatehouse::summary::keys(&config.auth));
    Ok(())
}

fn routes(config: Option<PathBuf>, path: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let routes = gatehouse::config::load_routes(&config.server.routes_dir, config.server.max_body)?;
    let router = gatehouse::router::Router::new(routes);
    let Some(path) = path else {
        print!("{}", gatehouse::summary::routes(&router));
        return Ok(());
    };
    // Routing reads the path alone, as a request's would be.
    let only_path = path.split(['?', '#']).next().unwrap_or_default();
    let normalized = gatehouse::path::normalize(only_path).map_err(|e| anyhow!("{path}: refused with 400: {e}"))?;
    let route = router.find(&normalized).ok_or_else(|| anyhow!("{normalized}: no route (404)"))?;
    println!(
        "{normalized} → {} ({}://{}), auth {}, plugin {}, defined in {}",
        route.prefix,
        route.upstream.scheme,
        route.upstream.authority,
        format!("{:?}", route.auth).to_lowercase(),
        route.plugin.as_ref().map_or("none", |p| p.name.as_str()),
        route.source()
    );
    Ok(())
}

fn token(config: Option<PathBuf>, sub: String, tier: Option<String>, ttl: Duration) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let secret = config
        .auth
        .hs256_secret
        .as_deref()
        .ok_or_else(|| anyhow!("no HS256 secret: set GATEHOUSE_JWT_SECRET or auth.hs256_secret"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({"sub": sub, "iat": now, "exp": now + ttl.as_secs()});
    if let Some(tier) = tier {
        claims["tier"] = Value::String(tier);
    }
    if let Some(iss) = config.auth.issuer.first() {
        claims["iss"] = Value::String(iss.clone());
    }
    if let Some(aud) = config.auth.audience.first() {
        claims["aud"] = Value::String(aud.clone());
    }
    println!("{}", gatehouse::auth::mint_hs256(secret, &claims).map_err(|e| anyhow!(e))?);
    Ok(())
}
