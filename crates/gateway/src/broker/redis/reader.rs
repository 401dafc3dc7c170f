//! What the subscriber does with each push a link reads: a message is validated and queued for
//! its user's connections (ids only from the user's gateway channel), a probe is handed back,
//! confirmations are counted; malformed payloads are counted and logged (rate-limited).

use std::time::{Duration, Instant};

use bytes::Bytes;
use gleepost_event::check_broker_payload;
use gleepost_event::keys::{parse_user_channel, DISCONNECT_PAYLOAD};
use gleepost_event::EventId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::context::Context;
use super::pubsub::{PubSubConn, PubSubError, Push};
use super::subscriptions::Wanted;
use crate::log_limit::LogLimit;
use crate::outbox::Frame;

/// Malformed broker payloads are logged at most once per second (each one is counted).
pub(super) static MALFORMED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// A channel name copied out of the read buffer; the names of user channels are short, so
/// they are kept inline (no allocation per message).
pub(super) enum Channel {
    /// Up to 46 bytes, in place.
    Inline { len: u8, bytes: [u8; 46] },
    /// Anything longer.
    Heap(Vec<u8>),
}

impl Channel {
    fn new(name: &[u8]) -> Self {
        let mut bytes = [0u8; 46];
        match bytes.get_mut(..name.len()) {
            Some(head) => {
                head.copy_from_slice(name);
                // `name.len()` ≤ 46 here: it fits a u8.
                let len = name.len() as u8;
                Channel::Inline { len, bytes }
            }
            None => Channel::Heap(name.to_vec()),
        }
    }

    /// The name.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Channel::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Channel::Heap(v) => v,
        }
    }
}

/// A push copied out of the link's read buffer (so several links can be read at once).
pub(super) enum Pushed {
    /// A message: channel and payload (the payload's bytes become the frame's, no other copy).
    Message { channel: Channel, payload: Bytes },
    /// One channel of a (S)SUBSCRIBE or UNSUBSCRIBE was confirmed.
    Confirmed,
    /// A shard channel left: our SUNSUBSCRIBE, or Redis dropping it (slot moved).
    ShardUnsubscribed(Vec<u8>),
    /// Anything else.
    Other,
}

/// The next push of `conn`, owned.
pub(super) async fn next(conn: &mut PubSubConn) -> Result<Pushed, PubSubError> {
    Ok(match conn.next().await? {
        Push::Message { channel, payload } => Pushed::Message {
            channel: Channel::new(channel),
            payload: Bytes::copy_from_slice(payload),
        },
        Push::Subscribed | Push::Unsubscribed | Push::ShardSubscribed => Pushed::Confirmed,
        Push::ShardUnsubscribed { channel } => Pushed::ShardUnsubscribed(channel.to_vec()),
        Push::Other => Pushed::Other,
    })
}

/// One message from a subscribed channel that is not a probe: validate, remember its id
/// (gateway channel only), queue it for the user's connections (or count and log it as
/// malformed).
pub(super) fn handle_message(
    shared: &Context,
    channel: &[u8],
    payload: Bytes,
    wanted: &mut Wanted,
) {
    let metrics = shared.dispatcher.metrics();
    // Ids are the gateway's: only events on the user's gateway channel (published by the
    // history script) carry ids that feed deduplication and gap repair; a legacy payload's
    // `id` member is delivered verbatim and never read.
    let found = match parse_user_channel(channel) {
        Some(user) => Some((user, true)),
        None => shared
            .settings
            .channels
            .iter()
            .find_map(|t| t.match_id(channel))
            .map(|user| (user, false)),
    };
    let Some((user, trusted)) = found else {
        let channel = String::from_utf8_lossy(channel);
        tracing::debug!(%channel, "message on an unexpected channel");
        return;
    };
    if trusted && payload.as_ref() == DISCONNECT_PAYLOAD {
        let closed = shared.dispatcher.disconnect(user);
        tracing::info!(user, closed, "disconnected by the backend");
        return;
    }
    let entered = Instant::now();
    let bytes = payload.len();
    let reason = match check_broker_payload(&payload, &shared.settings.limits) {
        Ok(()) => match Utf8Bytes::try_from(payload) {
            Ok(text) => {
                let frame = if trusted {
                    Frame::new(text, entered)
                } else {
                    Frame::verbatim(text, entered)
                };
                // Per user: one user's events never move another's repair point (the node-wide
                // point, for users without a delivered event, comes from the probes only).
                if let Some((epoch, ms, seq)) = frame.event_id() {
                    match wanted.delivered.get_mut(&user) {
                        // Only forward: a message held during a repair is older than the
                        // repair's last event.
                        Some(last) if last.epoch == epoch => {
                            (last.ms, last.seq) = (last.ms, last.seq).max((ms, seq));
                        }
                        // Only users still wanted (entries leave with the user).
                        _ if wanted.users.contains(&user) => {
                            let epoch = epoch.to_string();
                            wanted.delivered.insert(user, EventId { epoch, ms, seq });
                        }
                        _ => {}
                    }
                }
                shared.dispatcher.dispatch_frame(user, &frame);
                return;
            }
            Err(_) => "not_utf8",
        },
        Err(e) => e.reason(),
    };
    metrics.broker_malformed.with_label_values(&[reason]).inc();
    if let Some(suppressed) = MALFORMED_LOG.allow() {
        tracing::warn!(
            channel = %String::from_utf8_lossy(channel),
            reason,
            bytes,
            suppressed,
            "dropped malformed broker payload"
        );
    }
}
