//! Subscription bookkeeping of the node's pub/sub connection, without I/O: the users the node
//! wants, the users it has asked Redis for, the SUBSCRIBE/UNSUBSCRIBE commands still awaiting
//! their per-channel confirmations, and the connections waiting for their user's confirmation.
//!
//! Redis applies a connection's commands in order, so after every command sent so far is
//! processed, the subscribed set is exactly `Sent::current`; a waiter is released once its user
//! is in that set and no SUBSCRIBE naming the user is still unconfirmed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use gleepost_event::EventId;
use tokio::sync::watch;

use crate::registry::UserId;

/// A registry request to the subscriber.
pub(crate) enum SubCommand {
    /// Subscribe the user's channels; the sender turns `true` once confirmed.
    Subscribe(UserId, watch::Sender<bool>),
    /// Unsubscribe the user's channels.
    Unsubscribe(UserId),
}

/// What the registry asked for.
#[derive(Default)]
pub(super) struct Wanted {
    pub(super) users: HashSet<UserId>,
    waiters: HashMap<UserId, Vec<watch::Sender<bool>>>,
    /// Users whose wanted state changed since the last sync.
    pub(super) dirty: HashSet<UserId>,
    /// Id of the last event delivered to each subscribed user through the subscription: gap
    /// repair resumes each user from there, so a trimmed or reset history gives a `resync`
    /// instead of a silent gap.
    pub(super) delivered: HashMap<UserId, EventId>,
    /// The Redis time (ms) known delivered when each user became wanted (absent when none was
    /// known yet). For a user with no delivered event, everything in its history after this
    /// was missed, whichever slot or node it went to: gap repair reads from here, not from
    /// the node-wide point, which probes on other slots move past an event published where
    /// the node was not subscribed (a slot being migrated, a stale primary).
    pub(super) floors: HashMap<UserId, u64>,
    /// The hashed epoch of each user's history when the node subscribed it (`None`: it had
    /// none), once read ([`super::epochs`]): for a user with no delivered event, a history
    /// whose epoch changed since was reset, and gap repair says so.
    pub(super) epochs: HashMap<UserId, Option<u64>>,
}

impl Wanted {
    /// Apply one registry request; `delivered_ms` is the node-wide Redis time known delivered
    /// (0: none yet), the floor of a user that becomes wanted.
    pub(super) fn apply(&mut self, cmd: SubCommand, delivered_ms: u64) {
        match cmd {
            SubCommand::Subscribe(user, tx) => {
                self.users.insert(user);
                if delivered_ms > 0 {
                    self.floors.entry(user).or_insert(delivered_ms);
                }
                self.waiters.entry(user).or_default().push(tx);
                self.dirty.insert(user);
            }
            SubCommand::Unsubscribe(user) => {
                self.users.remove(&user);
                // The user's last connection left: so did every one that waited.
                self.waiters.remove(&user);
                self.dirty.insert(user);
            }
        }
    }

    /// Of `users`, those whose epoch is still to be read: no epoch known, no delivered event.
    pub(super) fn epochs_unknown(&self, users: Vec<UserId>) -> Vec<UserId> {
        users
            .into_iter()
            .filter(|u| !self.epochs.contains_key(u) && !self.delivered.contains_key(u))
            .collect()
    }

    /// Epochs read for users (only those still wanted; a first answer is kept).
    pub(super) fn remember_epochs(&mut self, read: Vec<(UserId, Option<u64>)>) {
        for (user, epoch) in read {
            if self.users.contains(&user) {
                self.epochs.entry(user).or_insert(epoch);
            }
        }
    }

    /// The users whose wanted state changed since the last call. Those no longer wanted lose
    /// their repair point here, not at their unsubscribe request: a user that left and came
    /// back within one round was never unsubscribed and keeps its exact point.
    pub(super) fn take_dirty(&mut self) -> Vec<UserId> {
        let dirty: Vec<UserId> = self.dirty.drain().collect();
        for user in &dirty {
            if !self.users.contains(user) {
                self.delivered.remove(user);
                self.floors.remove(user);
                self.epochs.remove(user);
            }
        }
        dirty
    }
}

/// A sent command still awaiting confirmations.
struct Batch {
    /// Users of a SUBSCRIBE (empty for UNSUBSCRIBE and the probe channel).
    users: Vec<UserId>,
    remaining: usize,
    sent: Instant,
}

/// What the connection was asked to do.
#[derive(Default)]
pub(super) struct Sent {
    /// Users whose channels are subscribed once every sent command is processed.
    pub(super) current: HashSet<UserId>,
    pending: VecDeque<Batch>,
    /// Users named by unconfirmed SUBSCRIBE commands, with the number of such commands.
    unconfirmed: HashMap<UserId, u32>,
}

impl Sent {
    /// Of the `dirty` users (taken from [`Wanted::dirty`]), those to subscribe on this
    /// connection and those to unsubscribe, given the users `wanted`.
    pub(super) fn plan(
        &self,
        wanted: &HashSet<UserId>,
        dirty: impl IntoIterator<Item = UserId>,
    ) -> (Vec<UserId>, Vec<UserId>) {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for user in dirty {
            match (wanted.contains(&user), self.current.contains(&user)) {
                (true, false) => add.push(user),
                (false, true) => remove.push(user),
                _ => {}
            }
        }
        (add, remove)
    }

    /// A SUBSCRIBE naming `confirmations` channels of `users` was sent.
    pub(super) fn subscribing(&mut self, users: &[UserId], confirmations: usize) {
        self.current.extend(users);
        for &user in users {
            *self.unconfirmed.entry(user).or_default() += 1;
        }
        self.push(users.to_vec(), confirmations);
    }

    /// An UNSUBSCRIBE naming `confirmations` channels of `users` was sent.
    pub(super) fn unsubscribing(&mut self, users: &[UserId], confirmations: usize) {
        for user in users {
            self.current.remove(user);
        }
        self.push(Vec::new(), confirmations);
    }

    fn push(&mut self, users: Vec<UserId>, remaining: usize) {
        if remaining > 0 {
            let sent = Instant::now();
            self.pending.push_back(Batch {
                users,
                remaining,
                sent,
            });
        }
    }

    /// One channel's (un)subscription was confirmed; true when that completed a command (some
    /// waiters may be releasable).
    pub(super) fn confirmed(&mut self) -> bool {
        let Some(front) = self.pending.front_mut() else {
            tracing::debug!("subscription confirmation without a pending command");
            return false;
        };
        front.remaining -= 1;
        if front.remaining > 0 {
            return false;
        }
        if let Some(batch) = self.pending.pop_front() {
            for user in batch.users {
                if let Some(n) = self.unconfirmed.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        self.unconfirmed.remove(&user);
                    }
                }
            }
        }
        true
    }

    /// Every sent command is confirmed.
    pub(super) fn settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest unconfirmed command was sent more than `limit` ago.
    pub(super) fn overdue(&self, limit: Duration) -> bool {
        self.pending
            .front()
            .is_some_and(|b| b.sent.elapsed() > limit)
    }

    /// Tell every waiting connection whose user is now subscribed and confirmed; forget the
    /// waiters of users no longer wanted (their connections already left).
    pub(super) fn release_waiters(&self, wanted: &mut Wanted) {
        wanted.waiters.retain(|user, senders| {
            if self.current.contains(user) && !self.unconfirmed.contains_key(user) {
                for tx in senders.drain(..) {
                    let _ = tx.send(true);
                }
                return false;
            }
            wanted.users.contains(user)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(w: &mut Wanted, user: UserId) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        w.apply(SubCommand::Subscribe(user, tx), 0);
        rx
    }

    #[test]
    fn last_request_per_user_wins() {
        let mut w = Wanted::default();
        let _r1 = subscribe(&mut w, 1);
        w.apply(SubCommand::Unsubscribe(1), 0);
        let _r2 = subscribe(&mut w, 2);
        w.apply(SubCommand::Unsubscribe(2), 0);
        let _r3 = subscribe(&mut w, 2);
        assert!(!w.users.contains(&1));
        assert!(w.users.contains(&2));
        assert_eq!(w.dirty.len(), 2);
        let sent = Sent::default();
        assert_eq!(sent.plan(&w.users, w.dirty.drain()), (vec![2], vec![]));
    }

    #[test]
    fn a_user_that_leaves_and_comes_back_in_one_round_keeps_its_repair_point() {
        let mut w = Wanted::default();
        let _r = subscribe(&mut w, 7);
        w.take_dirty();
        let id = EventId::parse("ab1-5-0").unwrap();
        w.delivered.insert(7, id.clone());
        w.apply(SubCommand::Unsubscribe(7), 0);
        let _r = subscribe(&mut w, 7);
        assert_eq!(w.take_dirty(), vec![7]);
        assert_eq!(w.delivered.get(&7), Some(&id));
        w.apply(SubCommand::Unsubscribe(7), 0);
        w.take_dirty();
        assert!(w.delivered.is_empty());
    }

    #[test]
    fn a_users_floor_is_the_point_known_when_it_became_wanted() {
        let mut w = Wanted::default();
        let (tx, _rx) = watch::channel(false);
        w.apply(SubCommand::Subscribe(4, tx), 100);
        let (tx, _rx) = watch::channel(false);
        w.apply(SubCommand::Subscribe(4, tx), 200);
        let (tx, _rx) = watch::channel(false);
        w.apply(SubCommand::Subscribe(5, tx), 0);
        assert_eq!(
            w.floors.get(&4),
            Some(&100),
            "a second connection keeps the floor"
        );
        assert_eq!(w.floors.get(&5), None, "no point known yet");
        w.take_dirty();
        w.apply(SubCommand::Unsubscribe(4), 300);
        w.take_dirty();
        assert!(w.floors.is_empty());
    }

    #[test]
    fn waiters_are_released_only_when_their_command_is_confirmed() {
        let (mut w, mut sent) = (Wanted::default(), Sent::default());
        let r1 = subscribe(&mut w, 1);
        let r2 = subscribe(&mut w, 2);
        let (mut add, _) = sent.plan(&w.users, w.dirty.drain());
        add.sort();
        sent.subscribing(&add[..1], 2); // user 1: two channels
        sent.subscribing(&add[1..], 2); // user 2
        sent.release_waiters(&mut w);
        assert!(!*r1.borrow() && !*r2.borrow(), "nothing confirmed yet");
        assert!(!sent.confirmed());
        assert!(sent.confirmed(), "user 1's command complete");
        sent.release_waiters(&mut w);
        assert!(*r1.borrow() && !*r2.borrow());
        assert!(!sent.confirmed());
        assert!(sent.confirmed());
        sent.release_waiters(&mut w);
        assert!(*r2.borrow());
        assert!(sent.settled());
    }

    #[test]
    fn resubscribe_while_unsubscribe_is_in_flight_waits_for_the_new_command() {
        let (mut w, mut sent) = (Wanted::default(), Sent::default());
        let _r = subscribe(&mut w, 7);
        let (add, _) = sent.plan(&w.users, w.dirty.drain());
        sent.subscribing(&add, 1);
        assert!(sent.confirmed());
        w.apply(SubCommand::Unsubscribe(7), 0);
        let (_, remove) = sent.plan(&w.users, w.dirty.drain());
        assert_eq!(remove, vec![7]);
        sent.unsubscribing(&remove, 1);
        let again = subscribe(&mut w, 7);
        let (add, _) = sent.plan(&w.users, w.dirty.drain());
        assert_eq!(
            add,
            vec![7],
            "user must be subscribed again after the unsubscribe"
        );
        sent.subscribing(&add, 1);
        sent.release_waiters(&mut w);
        assert!(!*again.borrow());
        assert!(sent.confirmed(), "the unsubscribe");
        sent.release_waiters(&mut w);
        assert!(!*again.borrow(), "the new subscribe is not confirmed yet");
        assert!(sent.confirmed());
        sent.release_waiters(&mut w);
        assert!(*again.borrow());
        assert!(sent.current.contains(&7));
    }

    #[test]
    fn waiters_of_users_no_longer_wanted_are_dropped() {
        let (mut w, sent) = (Wanted::default(), Sent::default());
        let r = subscribe(&mut w, 3);
        w.apply(SubCommand::Unsubscribe(3), 0);
        sent.release_waiters(&mut w);
        assert!(r.has_changed().is_err(), "sender dropped");
    }

    #[test]
    fn overdue_only_with_a_pending_command() {
        let mut sent = Sent::default();
        assert!(!sent.overdue(Duration::ZERO));
        sent.subscribing(&[], 1);
        std::thread::sleep(Duration::from_millis(2));
        assert!(sent.overdue(Duration::from_millis(1)));
        assert!(sent.confirmed());
        assert!(!sent.overdue(Duration::ZERO));
    }
}
