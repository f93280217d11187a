//! The `datalayer` binary: parse arguments, load settings, start telemetry,
//! run the application until SIGTERM or SIGINT.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use datalayer::{cli, config::Settings, startup::Application, telemetry};

// Many small short-lived allocations per call (HTTP/2 frames, protobuf,
// RESP): mimalloc measurably beats the system allocator here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rate limiting and other data-layer building blocks over gRPC, backed by
/// Redis (or an in-process memory store when no Redis URL is set).
#[derive(Debug, Parser)]
#[command(name = "datalayer", version = cli::VERSION, about)]
struct Cli {
    /// Configuration file (TOML, YAML or JSON). Environment variables
    /// `DATALAYER__SECTION__KEY` override it.
    #[arg(
        long,
        short,
        env = "DATALAYER_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC (what `datalayer` with no subcommand does).
    Serve,
    /// Validate the configuration, print every problem; exit 2 if any.
    CheckConfig,
    /// Print the settings in force (defaults < file < environment) as
    /// JSON, secrets redacted.
    PrintConfig,
    /// Ask a running server's gRPC health service; exit 0 when SERVING,
    /// 1 when not, 2 when it cannot be reached (for container health
    /// checks and scripts).
    Health {
        /// The server: `host:port`, `http://host:port`, or
        /// `https://host:port` (TLS).
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// With https://: the PEM CA of the server's certificate (default:
        /// the web's roots).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
        /// With https://: a client certificate (PEM), for a server that
        /// requires client certificates; with --key.
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// With https://: the name the server's certificate must carry
        /// (default: the address's host).
        #[arg(long)]
        server_name: Option<String>,
        /// One service's status (e.g. `datalayer.cache.v1.CacheService`);
        /// empty: the whole server.
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new random key; print it and its `auth.keys` entry (which
    /// keeps only the key's SHA-256).
    New {
        /// The entry's id (shows in logs and the audit log).
        #[arg(long, default_value = "new-key")]
        id: String,
        /// The tenant the key acts as.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    match cli.command {
        None | Some(Command::Serve) => serve(config),
        Some(Command::CheckConfig) => cli::check_config(config),
        Some(Command::PrintConfig) => cli::print_config(config),
        Some(Command::Health {
            addr,
            service,
            timeout,
            ca_file,
            cert,
            key,
            server_name,
        }) => cli::health(
            &addr,
            &service,
            timeout,
            &cli::HealthTls {
                ca_file,
                cert_file: cert,
                key_file: key,
                server_name,
            },
        ),
        Some(Command::Keys(KeysCommand::New { id, tenant })) => cli::keys_new(&id, &tenant),
    }
}

fn serve(config: Option<&std::path::Path>) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("datalayer: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread: a current-thread runtime, which hands no task between
    // threads (no work stealing, no cross-thread wake-ups).
    let mut runtime = match settings.server.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if settings.server.worker_threads > 1 {
        runtime.worker_threads(settings.server.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("datalayer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let _telemetry = match telemetry::init(&settings.telemetry) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("datalayer: {e}");
                return ExitCode::from(2);
            }
        };
        match datalayer::server::raise_open_file_limit() {
            Some(limit) if (limit as usize) < settings.server.max_connections + 64 => {
                tracing::warn!(
                    open_files = limit,
                    max_connections = settings.server.max_connections,
                    "the open-file limit is below server.max_connections; new connections \
                     will fail before the cap is reached (raise `ulimit -n`)"
                );
            }
            Some(limit) => tracing::debug!(open_files = limit, "open-file limit"),
            None => {}
        }
        tracing::info!(
            version = cli::VERSION,
            config_file = ?config,
            namespace = %settings.keys.namespace,
            policies = ?settings.ratelimit.policies.keys().collect::<Vec<_>>(),
            "configuration loaded (defaults < file < DATALAYER__ environment)"
        );
        match &settings.redis.url {
            None => tracing::warn!(
                "no redis.url: using the in-process memory store; state is per process \
                 and lost on restart (set DATALAYER__REDIS__URL to use Redis)"
            ),
            Some(url) => tracing::info!(
                url = %url.redacted(),
                mode = ?settings.redis.mode,
                "using Redis"
            ),
        }
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        match app.run_until_stopped(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Listens for SIGTERM (Kubernetes) and SIGINT (Ctrl-C) from now on — the
/// handlers are installed before this returns, so a signal that comes
/// while the service starts is not the default "die at once" — and
/// completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::error!("cannot listen for {name}: {e}");
            None
        }
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(terminate) => {},
            () = wait(interrupt) => {},
        }
    }
}
