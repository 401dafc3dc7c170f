//! `message` events and the user object shared by several payloads.

use serde::{Deserialize, Serialize};

use super::{conversation_location, kinds, raw};
use crate::envelope::Event;

/// A user as embedded in payloads: `{"id":9,"username":"Patrick","profile_image":"https://…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub id: u64,
    /// Display name.
    pub username: String,
    /// Profile image URL; empty when the user has none.
    pub profile_image: String,
}

/// A message, the same object as in `/conversations/<id>/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Message id.
    pub id: u64,
    /// The sender.
    pub by: User,
    /// Message text.
    pub text: String,
    /// RFC 3339 timestamp, kept as text so nanosecond precision round-trips exactly.
    pub timestamp: String,
    /// Whether the recipient has seen it.
    pub seen: bool,
}

impl Message {
    /// A `message` event located at `/conversations/<conversation_id>`.
    pub fn into_event(self, conversation_id: u64) -> Event {
        Event::new(
            kinds::MESSAGE,
            Some(conversation_location(conversation_id)),
            raw(&self),
        )
    }
}
