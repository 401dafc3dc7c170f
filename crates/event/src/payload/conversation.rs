//! `new-conversation` events.

use serde::{Deserialize, Serialize};

use super::{conversation_location, kinds, raw, User};
use crate::envelope::Event;

/// When a conversation expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// RFC 3339 expiry time, kept as text so nanosecond precision round-trips exactly.
    pub time: String,
    /// Whether the conversation has ended.
    pub ended: bool,
}

/// A conversation, the same object as in `/conversations/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Conversation id.
    pub id: u64,
    /// RFC 3339 time of the last activity (serialized as `lastActivity`).
    #[serde(rename = "lastActivity")]
    pub last_activity: String,
    /// The participants.
    pub participants: Vec<User>,
    /// Expiry, for conversations that expire; omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expiry: Option<Expiry>,
}

impl Conversation {
    /// A `new-conversation` event located at `/conversations/<id>`.
    pub fn into_new_conversation_event(self) -> Event {
        let location = conversation_location(self.id);
        Event::new(kinds::NEW_CONVERSATION, Some(location), raw(&self))
    }
}
