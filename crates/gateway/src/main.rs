//! `gleepost-gateway`: serve, or run one of the operator tools.

use anyhow::Result;
use clap::Parser;
use gleepost_gateway::config::{Cli, Command};
use gleepost_gateway::{server, tools};

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => server::run(cli.config).await,
        Some(Command::Token { user, ttl }) => tools::token(&cli.config, user, ttl),
        Some(Command::Publish { users, event }) => {
            tools::publish(&cli.config, &users, &event).await
        }
        Some(Command::Client { url }) => tools::client(&url).await,
    }
}
