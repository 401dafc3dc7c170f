//! `notification` events.

use serde::{Deserialize, Serialize};

use super::{kinds, raw, User, NOTIFICATIONS_LOCATION};
use crate::envelope::Event;

/// A notification, e.g. `{"id":596,"type":"added_you","time":"…","user":{…}}`.
///
/// Unknown members (some notification kinds carry more, e.g. a post id) are ignored when parsing;
/// events published by the backend pass through the gateway untouched regardless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Notification id.
    pub id: u64,
    /// Notification kind, e.g. `added_you` (serialized as `type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 time, kept as text so nanosecond precision round-trips exactly.
    pub time: String,
    /// The user who caused the notification.
    pub user: User,
}

impl Notification {
    /// A `notification` event located at `/notifications`.
    pub fn into_event(self) -> Event {
        Event::new(
            kinds::NOTIFICATION,
            Some(NOTIFICATIONS_LOCATION.to_owned()),
            raw(&self),
        )
    }
}
