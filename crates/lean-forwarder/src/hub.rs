//! Users → their connections' queues, and the subscriptions that follow them: a user's first
//! connection subscribes its channel, the last one leaving unsubscribes it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A subscription change for the Redis connection, in the order the hub decided them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `SUBSCRIBE <channel>`.
    Subscribe(String),
    /// `UNSUBSCRIBE <channel>`.
    Unsubscribe(String),
}

type Queue = mpsc::Sender<Utf8Bytes>;

/// The connections of every user of this process.
pub(crate) struct Hub {
    prefix: String,
    queue: usize,
    inner: Mutex<Inner>,
    commands: mpsc::UnboundedSender<Command>,
}

struct Inner {
    next_id: u64,
    users: HashMap<u64, Vec<(u64, Queue)>>,
}

impl Hub {
    /// A hub whose channels are `<prefix><uid>`, `queue` messages per connection; the receiver
    /// gets the subscription changes.
    pub(crate) fn new(prefix: String, queue: usize) -> (Hub, mpsc::UnboundedReceiver<Command>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Mutex::new(Inner {
            next_id: 0,
            users: HashMap::new(),
        });
        let hub = Hub {
            prefix,
            queue,
            inner,
            commands,
        };
        (hub, rx)
    }

    /// The user id of a channel of this hub.
    pub(crate) fn user_of_channel(&self, channel: &[u8]) -> Option<u64> {
        let id = channel.strip_prefix(self.prefix.as_bytes())?;
        std::str::from_utf8(id).ok()?.parse().ok()
    }

    fn channel(&self, user: u64) -> String {
        format!("{}{user}", self.prefix)
    }

    /// Registers a connection of `user`: its id and its queue's receiving end.
    pub(crate) fn join(&self, user: u64) -> (u64, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(self.queue);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = inner.next_id;
        inner.next_id += 1;
        let conns = inner.users.entry(user).or_default();
        if conns.is_empty() {
            // Sent under the lock, so subscribe and unsubscribe reach Redis in decision order.
            let _ = self.commands.send(Command::Subscribe(self.channel(user)));
        }
        conns.push((id, tx));
        (id, rx)
    }

    /// Removes connection `id` of `user` (if still there).
    pub(crate) fn leave(&self, user: u64, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.remove(&mut inner, user, |(conn, _)| *conn == id);
    }

    /// Queues `message` for every connection of `user`; a connection whose queue is full is
    /// dropped from the hub (its task sees its queue closed and closes it).
    pub(crate) fn deliver(&self, user: u64, message: &Utf8Bytes) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(conns) = inner.users.get(&user) else {
            return;
        };
        let mut full = Vec::new();
        for (id, q) in conns {
            // Closed: the connection is leaving and will remove itself.
            if let Err(mpsc::error::TrySendError::Full(_)) = q.try_send(message.clone()) {
                full.push(*id);
            }
        }
        if !full.is_empty() {
            self.remove(&mut inner, user, |(id, _)| full.contains(id));
        }
    }

    fn remove(&self, inner: &mut Inner, user: u64, gone: impl Fn(&(u64, Queue)) -> bool) {
        let Some(conns) = inner.users.get_mut(&user) else {
            return;
        };
        conns.retain(|c| !gone(c));
        if conns.is_empty() {
            inner.users.remove(&user);
            let _ = self.commands.send(Command::Unsubscribe(self.channel(user)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_follow_the_users_connections() {
        let (hub, mut cmds) = Hub::new("c:".into(), 2);
        let (a, mut ra) = hub.join(9);
        let (b, mut rb) = hub.join(9);
        assert_eq!(cmds.try_recv(), Ok(Command::Subscribe("c:9".into())));
        assert!(cmds.try_recv().is_err());
        assert_eq!(hub.user_of_channel(b"c:9"), Some(9));
        assert_eq!(hub.user_of_channel(b"n:9"), None);
        let m = Utf8Bytes::from_static("{}");
        hub.deliver(9, &m);
        assert_eq!(ra.try_recv().unwrap(), m);
        assert_eq!(rb.try_recv().unwrap(), m);
        // b stops reading: its queue (2) fills, the next message drops it; a goes on.
        hub.deliver(9, &m);
        hub.deliver(9, &m);
        assert_eq!(ra.try_recv().unwrap(), m);
        assert_eq!(ra.try_recv().unwrap(), m);
        hub.deliver(9, &m);
        assert_eq!(ra.try_recv().unwrap(), m);
        assert_eq!(rb.try_recv().unwrap(), m);
        assert_eq!(rb.try_recv().unwrap(), m);
        assert!(matches!(
            rb.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        hub.leave(9, b);
        assert!(cmds.try_recv().is_err());
        hub.leave(9, a);
        assert_eq!(cmds.try_recv(), Ok(Command::Unsubscribe("c:9".into())));
    }
}
