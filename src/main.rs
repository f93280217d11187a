//! The `datalayer` binary: parse arguments, load settings, start telemetry,
//! run the application until SIGTERM or SIGINT.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use datalayer::{config::Settings, startup::Application, telemetry};

// Many small short-lived allocations per call (HTTP/2 frames, protobuf,
// RESP): mimalloc measurably beats the system allocator here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rate limiting and other data-layer building blocks over gRPC, backed by
/// Redis (or an in-process memory store when no Redis URL is set).
#[derive(Debug, Parser)]
#[command(name = "datalayer", version, about)]
struct Cli {
    /// Configuration file (TOML, YAML or JSON). Environment variables
    /// `DATALAYER__SECTION__KEY` override it.
    #[arg(long, short, env = "DATALAYER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("datalayer: {e}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if settings.server.worker_threads > 0 {
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
        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
