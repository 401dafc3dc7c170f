//! `gleepost-gateway`: serve, or run one of the operator tools.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use gleepost_gateway::config::{Cli, Command};
use gleepost_gateway::{config_values, server, tools};

/// jemalloc, configured in `.cargo/config.toml`: its background thread gives freed pages back
/// after a second, so a burst of handshakes does not stay in the RSS of a node holding idle
/// connections (scenario a of `make bench`: 2.8 KiB per idle connection with glibc's malloc,
/// 2.0 with this), at the same CPU per delivery.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            let note = config_values::env_note::<Cli>(&error, &args);
            let _ = error.print();
            if let Some(note) = note {
                eprintln!("{note}");
            }
            std::process::exit(error.exit_code());
        }
    };
    let runtime = runtime(cli.config.worker_threads).context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            None => server::run(cli.config).await,
            Some(Command::Token { user, ttl }) => tools::token(&cli.config, user, ttl),
            Some(Command::Publish { users, event }) => {
                tools::publish(&cli.config, &users, &event).await
            }
            Some(Command::Client { url }) => tools::client(&url).await,
        }
    })
}

/// `workers` threads (0: one per available core); one thread gets the single-threaded
/// scheduler, which does less work per wake-up than a one-worker multi-thread runtime.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}
