//! `gleepost-loadgen`: load generator for the Gleepost realtime gateway.
//!
//! Opens many WebSocket connections (JWT-authenticated) to gateway nodes on this machine,
//! publishes sequenced, timestamped events through the admin API or Redis, and reports
//! delivery rate, loss, duplicates, ordering, latency percentiles, server memory per connection
//! and its own CPU share. Loopback targets only; every run is bounded by `--max-seconds`.

mod cli;
mod conn;
mod jwt;
mod modes;
mod publish;
mod report;
mod scan;
mod stats;
mod sys;
mod target;
mod wsclient;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let common = modes::common(&cli.mode).clone();
    if let Err(e) = modes::validate(&cli.mode) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let bound = Duration::from_secs(common.max_seconds.max(1));
    // Last-resort bound in case the runtime cannot even process the timeout below.
    std::thread::spawn(move || {
        std::thread::sleep(bound + Duration::from_secs(10));
        eprintln!("error: hard time bound (--max-seconds) exceeded; exiting");
        std::process::exit(3);
    });
    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = started + bound;
    let result = runtime.block_on(async {
        tokio::time::timeout_at(deadline.into(), modes::run(&cli.mode, deadline)).await
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("error: run exceeded --max-seconds ({})", common.max_seconds);
            return ExitCode::from(3);
        }
    };
    match report::emit(&report, common.json.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
