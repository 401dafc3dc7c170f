//! Payloads of the later event types (`read`, `typing`, `presence`, `video-ready`).
//!
//! The shapes were agreed with the backend team; the gateway passes these events through
//! untouched anyway, so they only matter to code that builds or inspects them.

use serde::{Deserialize, Serialize};

use super::{conversation_location, kinds, raw};
use crate::envelope::Event;

/// A participant read a conversation up to a message (`read`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    /// Conversation id.
    pub conversation: u64,
    /// The user who read.
    pub user: u64,
    /// Id of the last message read.
    pub last_read: u64,
}

impl Read {
    /// A `read` event located at `/conversations/<conversation>`.
    pub fn into_event(self) -> Event {
        let location = conversation_location(self.conversation);
        Event::new(kinds::READ, Some(location), raw(&self))
    }
}

/// A participant started or stopped typing (`typing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// Conversation id.
    pub conversation: u64,
    /// The user who is typing.
    pub user: u64,
    /// `true` when typing started, `false` when it stopped.
    pub typing: bool,
}

impl Typing {
    /// A `typing` event located at `/conversations/<conversation>`.
    pub fn into_event(self) -> Event {
        let location = conversation_location(self.conversation);
        Event::new(kinds::TYPING, Some(location), raw(&self))
    }
}

/// A user's presence changed (`presence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The user.
    pub user: u64,
    /// Presence status, e.g. `online` or `away`.
    pub status: String,
}

impl Presence {
    /// A `presence` event without a location.
    pub fn into_event(self) -> Event {
        Event::new(kinds::PRESENCE, None, raw(&self))
    }
}

/// An uploaded video finished processing (`video-ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoReady {
    /// Video id.
    pub id: u64,
    /// Processing status, e.g. `ready`.
    pub status: String,
    /// MP4 URL, when available.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mp4: Option<String>,
    /// WebM URL, when available.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub webm: Option<String>,
    /// Thumbnail URLs.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub thumbnails: Vec<String>,
}

impl VideoReady {
    /// A `video-ready` event located at `/videos/<id>`.
    pub fn into_event(self) -> Event {
        let location = format!("/videos/{}", self.id);
        Event::new(kinds::VIDEO_READY, Some(location), raw(&self))
    }
}
