//! Topology of one standalone Redis (`REDIS_URL`): one multiplexed command connection and,
//! opened by the subscriber, one pub/sub connection, whatever the number of clients.

use std::time::Duration;

use gleepost_event::{RedisConn, SingleConn};
use redis::aio::ConnectionManagerConfig;

use crate::broker::BrokerError;

/// The connections to one Redis server.
pub(super) struct Standalone {
    client: redis::Client,
    commands: SingleConn,
}

impl Standalone {
    /// Parse `url`; nothing is connected yet (start-up never waits for Redis): the command
    /// connection connects on first use and again after errors, the subscriber opens the
    /// pub/sub connection with its own backoff. `timeout` bounds connecting, `backstop` every
    /// response.
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        backstop: Duration,
    ) -> Result<Self, BrokerError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(gleepost_event::tcp_settings());
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(backstop))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let commands = SingleConn::lazy(client.clone(), config)?;
        Ok(Standalone { client, commands })
    }

    /// The shared command connection (reconnects by itself).
    pub(super) fn commands(&self) -> RedisConn {
        RedisConn::Single(self.commands.clone())
    }

    /// The server's connection settings (for the pub/sub connection).
    pub(super) fn info(&self) -> &redis::ConnectionInfo {
        self.client.get_connection_info()
    }
}
