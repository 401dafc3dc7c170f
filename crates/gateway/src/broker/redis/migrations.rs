//! Slots being migrated (cluster, history on). Once a user's keys have moved to the importing
//! node, its publishes run there (`ASK`), where no node is subscribed to the slot's shard
//! channels until the slot itself moves; then its owner drops them (`sunsubscribe`) and the
//! session restarts with a gap repair. Until then, every few probe intervals the session reads
//! the history of the users of migrating slots ("catch-up") and delivers what is new, so that
//! a migration that stays half-way (a reshard tool that died) does not hold their events.
//!
//! A catch-up runs beside live delivery: a user's events are in one stream, which moves whole,
//! and its ids only grow, so an event already delivered live is filtered per connection by its
//! id. What a catch-up cannot prove (`resync`) is left to the repair after the move.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use gleepost_event::keys::{slot_of, user_channel};

use super::context::Context;
use super::history::ReadError;
use super::link_set::Links;
use super::repair;
use super::subscriptions::Wanted;
use super::topology::LinkSpec;
use crate::history::Replay;
use crate::registry::UserId;

type Pending<'a, T> = Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

/// What a catch-up read: the number of users, and their replays.
type CatchUp = (usize, Result<Vec<(UserId, Replay)>, ReadError>);

/// What the session awaits about migrations: a check of the slots being migrated, and a
/// catch-up of their users; at most one of each at a time.
pub(super) struct Migrations<'a> {
    shared: &'a Context,
    check: Pending<'a, HashSet<u16>>,
    catchup: Pending<'a, CatchUp>,
}

/// A check or a catch-up finished.
pub(super) enum Done {
    /// The slots being migrated.
    Checked(HashSet<u16>),
    /// A catch-up of so many users read this.
    CaughtUp(usize, Result<Vec<(UserId, Replay)>, ReadError>),
}

impl<'a> Migrations<'a> {
    /// Nothing under way.
    pub(super) fn new(shared: &'a Context) -> Self {
        Migrations {
            shared,
            check: None,
            catchup: None,
        }
    }

    /// Start a check of the slots `specs`' primaries migrate (on a cluster with history),
    /// unless one is under way.
    pub(super) fn check(&mut self, specs: Vec<LinkSpec>) {
        let shared = self.shared;
        let cluster = specs.iter().any(|s| s.shard.is_some());
        if self.check.is_some() || shared.history.is_none() || !cluster {
            return;
        }
        self.check = Some(Box::pin(async move {
            let migrating = shared.topology.migrating(&specs);
            tokio::time::timeout(shared.pubsub_limit(), migrating)
                .await
                .unwrap_or_default()
        }));
    }

    /// The next check or catch-up that finishes (never, while none is under way).
    pub(super) async fn next(&mut self) -> Done {
        let Migrations { check, catchup, .. } = self;
        let checked = async {
            match check {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        let caught_up = async {
            match catchup {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            slots = checked => Done::Checked(slots),
            (users, read) = caught_up => Done::CaughtUp(users, read),
        }
    }

    /// Take what finished: after a check, start the catch-up of the users of migrating slots
    /// on settled links; after a catch-up, deliver its events.
    pub(super) fn done(&mut self, done: Done, links: &Links<'_>, wanted: &mut Wanted) {
        let shared = self.shared;
        match done {
            Done::Checked(slots) => {
                self.check = None;
                if slots.is_empty() || self.catchup.is_some() {
                    return;
                }
                let users: HashSet<UserId> = links
                    .up
                    .iter()
                    .filter(|l| l.held.is_none())
                    .flat_map(|l| l.sent.current.iter().copied())
                    .filter(|&u| slots.contains(&slot_of(user_channel(u).as_bytes())))
                    .collect();
                if users.is_empty() {
                    return;
                }
                if let Some(plan) = repair::plan(shared, &users, wanted) {
                    let n = users.len();
                    self.catchup = Some(Box::pin(
                        async move { (n, repair::read(shared, plan).await) },
                    ));
                }
            }
            Done::CaughtUp(users, read) => {
                self.catchup = None;
                match read {
                    Ok(mut replays) => {
                        replays.retain(|(_, r)| matches!(r, Replay::Events(e) if !e.is_empty()));
                        if !replays.is_empty() {
                            tracing::info!(users, "catch-up of users whose slot is migrating");
                            repair::apply(shared, users, replays, wanted);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "catch-up of migrating slots failed"),
                }
            }
        }
    }
}
