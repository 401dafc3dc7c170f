//! One batch: the jobs taken together, their script calls (grouped by slot on a cluster),
//! sending them, and handing each job its result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::RedisError;

use super::calls::{cluster_call, parse_reply, single_pipeline, Lanes};
use super::{Assigned, Job, Settings, ITEMS_PER_CALL};
use crate::history::new_epoch;
use crate::keys::{epoch_key, history_key, slot_of, user_channel};
use crate::refresh::Refreshes;
use crate::script::SlotScript;

/// One user's copy: its job, its position among the job's users.
#[derive(Clone, Copy)]
pub(super) struct Item {
    job: usize,
    position: usize,
    pub(super) user: u64,
    refresh: bool,
}

/// Jobs taken together, and their script calls (items grouped by slot on a cluster).
pub(super) struct Batch {
    jobs: Vec<Job>,
    calls: Vec<Vec<Item>>,
}

impl Batch {
    pub(super) fn new(jobs: Vec<Job>, settings: &Settings, refreshes: &mut Refreshes) -> Batch {
        let now = Instant::now();
        let items = jobs.iter().enumerate().flat_map(|(j, job)| {
            job.users
                .iter()
                .enumerate()
                .map(move |(position, &user)| (j, position, user))
        });
        let items: Vec<Item> = items
            .map(|(job, position, user)| Item {
                job,
                position,
                user,
                // Recorded as refreshed even if this batch fails: the keys then still live at
                // least TTL after the previous refresh, and the next refresh comes within an
                // interval (a tenth of the TTL); a history that expires anyway is recreated
                // with a new epoch, which clients see as `resync`, never as a silent gap.
                refresh: refreshes.due(user, now),
            })
            .collect();
        let calls = if settings.conn.is_cluster() {
            // One slot per call: keys of different users only share a call in the same slot.
            let mut by_slot: BTreeMap<u16, Vec<Item>> = BTreeMap::new();
            for item in items {
                let slot = slot_of(history_key(item.user).as_bytes());
                by_slot.entry(slot).or_default().push(item);
            }
            by_slot
                .into_values()
                .flat_map(|group| chunks(group, ITEMS_PER_CALL))
                .collect()
        } else {
            chunks(items, ITEMS_PER_CALL)
        };
        Batch { jobs, calls }
    }

    /// About the bytes of the batch's commands: per call, its events and its users' keys.
    pub(super) fn bytes(&self) -> usize {
        self.calls
            .iter()
            .map(|items| {
                let events: usize = jobs_of(items).map(|j| self.jobs[j].payload.len()).sum();
                events + 128 * items.len()
            })
            .sum()
    }

    /// Run the calls and hand each job its result: per user its copy, or, when any call of
    /// the job's users failed without an answer from Redis (what ran is unknown), the error.
    pub(super) async fn send(
        self,
        settings: Arc<Settings>,
        script: Arc<SlotScript>,
        lanes: Option<Arc<Lanes>>,
    ) {
        let epoch = new_epoch();
        let commands: Vec<redis::Cmd> = self
            .calls
            .iter()
            .map(|items| self.command(items, &settings, &script, &epoch))
            .collect();
        let mut results: Vec<Result<Assigned, RedisError>> = self
            .jobs
            .iter()
            .map(|job| Ok(vec![Err(String::new()); job.users.len()]))
            .collect();
        let replies: Vec<_> = self.jobs.into_iter().map(|job| Some(job.reply)).collect();
        let Some(lanes) = lanes else {
            match single_pipeline(&settings, &script, commands).await {
                Ok(values) => {
                    for (items, value) in self.calls.iter().zip(values) {
                        fill(&mut results, items, value);
                    }
                }
                Err(e) => results.iter_mut().for_each(|r| *r = Err(e.clone())),
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have stopped waiting: nothing to do then.
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            return;
        };
        // Each job is answered once its last call is done.
        let mut calls_left = vec![0usize; replies.len()];
        for items in &self.calls {
            for job in jobs_of(items) {
                calls_left[job] += 1;
            }
        }
        // A call that waited in its lane runs only if one of its callers still waits: one that
        // gave up was answered 503, and publishing after that could duplicate its retry.
        let waiting = std::sync::Mutex::new(replies);
        let still_wanted = |items: &[Item]| {
            let replies = waiting.lock().unwrap_or_else(|p| p.into_inner());
            jobs_of(items).any(|j| replies[j].as_ref().is_some_and(|r| !r.is_closed()))
        };
        let mut runs: FuturesUnordered<_> = self
            .calls
            .iter()
            .zip(&commands)
            .enumerate()
            .map(|(c, (items, cmd))| {
                let (settings, script, lanes) = (&settings, &script, &lanes);
                let user = items.first().map_or(0, |item| item.user);
                let wanted = || still_wanted(items);
                async move {
                    (
                        c,
                        cluster_call(settings, script, lanes, cmd, user, wanted).await,
                    )
                }
            })
            .collect();
        while let Some((c, outcome)) = runs.next().await {
            let items = &self.calls[c];
            match outcome {
                Ok(value) => fill(&mut results, items, value),
                Err(e) => items
                    .iter()
                    .for_each(|item| results[item.job] = Err(e.clone())),
            }
            for job in jobs_of(items) {
                calls_left[job] -= 1;
                if calls_left[job] == 0 {
                    let reply = waiting.lock().unwrap_or_else(|p| p.into_inner())[job].take();
                    if let Some(reply) = reply {
                        let result = std::mem::replace(&mut results[job], Ok(Vec::new()));
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    /// The `EVALSHA` of one call (see [`PUBLISH_SCRIPT`] for the layout).
    fn command(
        &self,
        items: &[Item],
        settings: &Settings,
        script: &SlotScript,
        epoch: &str,
    ) -> redis::Cmd {
        let mut payloads: Vec<usize> = items.iter().map(|item| item.job).collect();
        payloads.dedup();
        // Sized up front: keys and channels of a user id are at most ~40 bytes each.
        let args = 7 + 5 * items.len() + payloads.len();
        let bytes: usize = payloads.iter().map(|&j| self.jobs[j].payload.len()).sum();
        let mut cmd = redis::Cmd::with_capacity(args, bytes + 128 * items.len() + 128);
        cmd.arg("EVALSHA");
        cmd.arg(script.hash()).arg(items.len() * 2);
        for item in items {
            cmd.arg(history_key(item.user)).arg(epoch_key(item.user));
        }
        let ttl = u64::try_from(settings.history.key_ttl().as_millis()).unwrap_or(u64::MAX);
        cmd.arg(settings.history.size)
            .arg(ttl)
            .arg(epoch)
            .arg(settings.conn.publish_command())
            .arg(payloads.len());
        for &job in &payloads {
            cmd.arg(&self.jobs[job].payload[..]);
        }
        for item in items {
            // Items are in job order, so the payload's index is found by its job.
            let index = payloads.iter().position(|&j| j == item.job).unwrap_or(0) + 1;
            cmd.arg(user_channel(item.user))
                .arg(index)
                .arg(if item.refresh { "1" } else { "0" });
        }
        cmd
    }
}

/// The copies of one call's `items` from its reply (or from the error Redis answered it
/// with: the call did not run), into their jobs' results.
fn fill(
    results: &mut [Result<Assigned, RedisError>],
    items: &[Item],
    value: Result<redis::Value, RedisError>,
) {
    let copies = value.and_then(|reply| parse_reply(reply, items.len()));
    let copies = match copies {
        Ok(copies) => copies,
        Err(e) if e.kind() == redis::ErrorKind::Parse => {
            // The call ran but its reply is unreadable: what became of it is unknown.
            for item in items {
                results[item.job] = Err(e.clone());
            }
            return;
        }
        Err(e) => vec![Err(e.to_string()); items.len()],
    };
    for (item, copy) in items.iter().zip(copies) {
        if let Ok(assigned) = &mut results[item.job] {
            assigned[item.position] = copy;
        }
    }
}

/// The jobs with items in `items`, each once (items are in job order).
fn jobs_of(items: &[Item]) -> impl Iterator<Item = usize> + '_ {
    items
        .iter()
        .enumerate()
        .filter(|&(i, item)| i == 0 || items[i - 1].job != item.job)
        .map(|(_, item)| item.job)
}

/// `items` in runs of at most `size`.
fn chunks(items: Vec<Item>, size: usize) -> Vec<Vec<Item>> {
    items.chunks(size).map(<[Item]>::to_vec).collect()
}
