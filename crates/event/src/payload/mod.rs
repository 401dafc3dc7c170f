//! Typed payloads for the known event types.
//!
//! The structs serialize with their members in the order of the original Gleepost documentation,
//! so an event built from them matches what existing clients parse. Unknown members are ignored
//! when parsing. The gateway itself never needs these types: every event passes through with
//! `data` untouched, whatever its type.

mod activity;
mod conversation;
mod message;
mod notification;

pub use activity::{Presence, Read, Typing, VideoReady};
pub use conversation::{Conversation, Expiry};
pub use message::{Message, User};
pub use notification::Notification;

use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};

use crate::envelope::Event;

/// Names of the known event types.
pub mod kinds {
    /// A new message in a conversation (`location` = `/conversations/<id>`).
    pub const MESSAGE: &str = "message";
    /// The user was placed in a new conversation.
    pub const NEW_CONVERSATION: &str = "new-conversation";
    /// A new notification (`location` = `/notifications`).
    pub const NOTIFICATION: &str = "notification";
    /// A participant read a conversation up to a message.
    pub const READ: &str = "read";
    /// A conversation ended.
    pub const ENDED_CONVERSATION: &str = "ended-conversation";
    /// A conversation changed (participants, expiry, …).
    pub const CHANGED_CONVERSATION: &str = "changed-conversation";
    /// An uploaded video finished processing.
    pub const VIDEO_READY: &str = "video-ready";
    /// A participant started or stopped typing.
    pub const TYPING: &str = "typing";
    /// A user's presence changed.
    pub const PRESENCE: &str = "presence";
    /// View counts changed.
    pub const VIEWS: &str = "views";
    /// A vote was cast.
    pub const VOTE: &str = "vote";
    /// A comment was posted.
    pub const COMMENT: &str = "comment";
    /// A post was created or changed.
    pub const POST: &str = "post";

    /// Every known type name.
    pub const ALL: &[&str] = &[
        MESSAGE,
        NEW_CONVERSATION,
        NOTIFICATION,
        READ,
        ENDED_CONVERSATION,
        CHANGED_CONVERSATION,
        VIDEO_READY,
        TYPING,
        PRESENCE,
        VIEWS,
        VOTE,
        COMMENT,
        POST,
    ];
}

/// Builds an event of any type from a serializable `data` value.
///
/// Fails only if `data` cannot be serialized to JSON (e.g. a map with non-string keys).
pub fn event<T: Serialize + ?Sized>(
    kind: &str,
    location: Option<String>,
    data: &T,
) -> Result<Event, serde_json::Error> {
    Ok(Event::new(kind, location, to_raw_value(data)?))
}

/// Serializes one of this module's payload structs.
fn raw<T: Serialize>(data: &T) -> Box<RawValue> {
    // Infallible: the payload structs hold only strings, integers, booleans, vectors and
    // options of those, all of which always serialize.
    to_raw_value(data).expect("payload structs always serialize")
}

/// Location of a conversation: `/conversations/<id>`.
pub fn conversation_location(conversation_id: u64) -> String {
    format!("/conversations/{conversation_id}")
}

/// Location of the notification list: `/notifications`.
pub const NOTIFICATIONS_LOCATION: &str = "/notifications";
