//! The loss ledger: for each fault's window of time, what was acknowledged and what every
//! session of each recipient got.
//!
//! An acknowledged event (the publish API answered 200 with its id) is *expected* once on every
//! session of its user. Per session it is then *delivered* (its id arrived), *covered* (a
//! `resync` on that session told the client to refetch instead, see [`covers`]) or *lost*.
//! *Duplicated*: an id a session had already read. *Out of order*: an id older than one the
//! session read before (same epoch), or an event of an epoch the session had already left.
//! Events count in the window in which their acknowledged request was sent; duplicates, reorders,
//! resyncs and closes in the window in which the session saw them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use gleepost_event::EventId;
use hdrhistogram::Histogram;

use super::records::{Ack, Entry, ResyncMark, SessionLog, View};

/// One fault's window: `[start, end)`, the fault acting in `[fault, heal)` (from its injection
/// until its cause is removed and both nodes are ready again).
#[derive(Clone, Debug)]
pub struct Window {
    /// The fault's name (the ledger line's first column).
    pub name: String,
    /// Start of the window (the world is prepared from here).
    pub start: Instant,
    /// The fault was injected.
    pub fault: Instant,
    /// The fault's cause was removed (healed, restarted, resumed) and both nodes were ready.
    pub heal: Instant,
    /// End of the window (everything settled, or the settle bound passed).
    pub end: Instant,
}

/// One ledger line.
#[derive(Clone, Debug, Default)]
pub struct Line {
    /// The fault.
    pub name: String,
    /// Window length.
    pub seconds: f64,
    /// Publishes acknowledged (200 with an id).
    pub acknowledged: u64,
    /// Acknowledged events × sessions of their user.
    pub expected: u64,
    /// Of those, arrived.
    pub delivered: u64,
    /// Of those, not arrived but covered by a `resync` on that session.
    pub covered: u64,
    /// Of those, neither delivered nor covered.
    pub lost: u64,
    /// Ids a session read a second time.
    pub duplicated: u64,
    /// Ids read after a newer one.
    pub out_of_order: u64,
    /// `resync` events read.
    pub resyncs: u64,
    /// Those by reason.
    pub resync_reasons: BTreeMap<String, u64>,
    /// Connections the gateway ended (close frame or TCP end).
    pub closed: u64,
    /// Those closes by close code (`none`: the TCP connection just ended).
    pub close_codes: BTreeMap<String, u64>,
    /// Publish attempts that failed and were retried (503, refused, timed out).
    pub retries: u64,
    /// Publishes given up (never acknowledged).
    pub abandoned: u64,
    /// Events with ids read that no acknowledged publish returned (a failed attempt that did
    /// reach Redis).
    pub unacknowledged: u64,
    /// Frames that are neither events with ids nor `resync` (never expected).
    pub foreign: u64,
    /// p99 delivery latency of events sent while the fault acted.
    pub p99_during: Option<Duration>,
    /// p99 delivery latency of events sent after the heal.
    pub p99_after: Option<Duration>,
    /// A few lost deliveries, for the report (`session: id`).
    pub lost_examples: Vec<String>,
}

impl Line {
    /// No loss, no duplicate, nothing out of order, nothing unexplained.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.foreign == 0
    }
}

/// True when `mark` tells the client it may have missed `ack`: a resync with id L covers every
/// event of L's epoch up to L and every event of another (older) epoch sent before it arrived; a
/// resync without id (empty history) covers the events sent before it arrived that are not of
/// the epoch the session continued with.
pub fn covers(mark: &ResyncMark, ack: &Ack) -> bool {
    match &mark.id {
        Some(l) if l.epoch == ack.id.epoch => ack.id.position() <= l.position(),
        Some(_) => ack.sent < mark.at,
        None => ack.sent < mark.at && mark.next_epoch.as_deref() != Some(&ack.id.epoch),
    }
}

/// What became of `ack` on `session`.
fn fate(session: &SessionLog, ack: &Ack) -> Fate {
    if let Some(at) = session.seen.get(&ack.raw) {
        Fate::Delivered(*at)
    } else if session.resyncs.iter().any(|m| covers(m, ack)) {
        Fate::Covered
    } else {
        Fate::Missing
    }
}

enum Fate {
    Delivered(Instant),
    Covered,
    Missing,
}

/// Deliveries of events sent since `since` that are still missing (neither delivered nor
/// covered), with an example; the suite waits for 0 before ending a window.
pub fn outstanding(view: &View<'_>, since: Instant) -> (u64, Option<String>) {
    let mut missing = 0;
    let mut example = None;
    for ack in view.acks.iter().rev().take_while(|a| a.sent >= since) {
        for s in view.sessions.iter().filter(|s| s.user == ack.user) {
            if let Fate::Missing = fate(s, ack) {
                missing += 1;
                example.get_or_insert_with(|| format!("{}: {}", s.name, ack.raw));
            }
        }
    }
    (missing, example)
}

fn window_of(windows: &[Window], t: Instant) -> Option<usize> {
    windows.iter().position(|w| w.start <= t && t < w.end)
}

/// The ledger lines of `windows` (in order, non-overlapping) from the records.
pub fn account(view: &View<'_>, windows: &[Window]) -> Vec<Line> {
    let mut lines: Vec<Line> = windows
        .iter()
        .map(|w| Line {
            name: w.name.clone(),
            seconds: (w.end - w.start).as_secs_f64(),
            ..Line::default()
        })
        .collect();
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let mut during: Vec<_> = windows.iter().map(|_| new_hist()).collect();
    let mut after: Vec<_> = windows.iter().map(|_| new_hist()).collect();
    let acked: HashSet<&str> = view.acks.iter().map(|a| a.raw.as_str()).collect();

    for session in view.sessions {
        for (entry, dup, ooo) in ordered(session) {
            let Some(w) = window_of(windows, entry.at()) else {
                continue;
            };
            let line = &mut lines[w];
            match entry {
                Entry::Event { raw, .. } => {
                    line.duplicated += u64::from(dup);
                    line.out_of_order += u64::from(ooo);
                    line.unacknowledged += u64::from(!dup && !acked.contains(raw.as_str()));
                }
                Entry::Resync { reason, .. } => {
                    line.resyncs += 1;
                    *line.resync_reasons.entry(reason.clone()).or_default() += 1;
                }
                Entry::Closed { code, .. } => {
                    line.closed += 1;
                    let code = code.map_or("none".into(), |c| c.to_string());
                    *line.close_codes.entry(code).or_default() += 1;
                }
                Entry::Foreign { .. } => line.foreign += 1,
            }
        }
    }
    for (t, field) in view
        .retries
        .iter()
        .map(|t| (t, 0))
        .chain(view.abandoned.iter().map(|t| (t, 1)))
    {
        if let Some(w) = window_of(windows, *t) {
            match field {
                0 => lines[w].retries += 1,
                _ => lines[w].abandoned += 1,
            }
        }
    }
    for ack in view.acks {
        let Some(w) = window_of(windows, ack.sent) else {
            continue;
        };
        let line = &mut lines[w];
        line.acknowledged += 1;
        for session in view.sessions.iter().filter(|s| s.user == ack.user) {
            line.expected += 1;
            match fate(session, ack) {
                Fate::Delivered(at) => {
                    line.delivered += 1;
                    let micros = at.saturating_duration_since(ack.sent).as_micros() as u64;
                    let hist = if ack.sent < windows[w].fault {
                        None
                    } else if ack.sent < windows[w].heal {
                        during[w].as_mut().ok()
                    } else {
                        after[w].as_mut().ok()
                    };
                    if let Some(h) = hist {
                        h.saturating_record(micros.max(1));
                    }
                }
                Fate::Covered => line.covered += 1,
                Fate::Missing => {
                    line.lost += 1;
                    if line.lost_examples.len() < 5 {
                        line.lost_examples
                            .push(format!("{}: {}", session.name, ack.raw));
                    }
                }
            }
        }
    }
    let p99 = |h: &Result<Histogram<u64>, _>| {
        h.as_ref()
            .ok()
            .filter(|h| !h.is_empty())
            .map(|h| Duration::from_micros(h.value_at_quantile(0.99)))
    };
    for (w, line) in lines.iter_mut().enumerate() {
        line.p99_during = p99(&during[w]);
        line.p99_after = p99(&after[w]);
    }
    lines
}

/// Each entry of a session with whether it is a duplicate and whether it is out of order.
fn ordered(session: &SessionLog) -> Vec<(&Entry, bool, bool)> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut epochs: Vec<String> = Vec::new();
    let mut newest: HashMap<String, (u64, u64)> = HashMap::new();
    let mut out = Vec::with_capacity(session.entries.len());
    for entry in &session.entries {
        let (mut dup, mut ooo) = (false, false);
        if let Entry::Event { raw, .. } = entry {
            if !seen.insert(raw.as_str()) {
                dup = true;
            } else if let Some(id) = EventId::parse(raw) {
                ooo = order_breaks(&id, &mut epochs, &mut newest);
            }
        }
        out.push((entry, dup, ooo));
    }
    out
}

fn order_breaks(
    id: &EventId,
    epochs: &mut Vec<String>,
    newest: &mut HashMap<String, (u64, u64)>,
) -> bool {
    let left_epoch = epochs.contains(&id.epoch) && epochs.last() != Some(&id.epoch);
    if !epochs.contains(&id.epoch) {
        epochs.push(id.epoch.clone());
    }
    let top = newest.entry(id.epoch.clone()).or_insert((0, 0));
    let older = id.position() < *top;
    *top = (*top).max(id.position());
    left_epoch || older
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(raw: &str, sent: Instant) -> Ack {
        Ack {
            user: 1,
            id: EventId::parse(raw).unwrap(),
            raw: raw.into(),
            sent,
        }
    }

    #[test]
    fn a_resync_covers_its_epoch_up_to_its_id_and_older_epochs_sent_before_it() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mark = ResyncMark {
            at: t1,
            id: EventId::parse("new-20-0"),
            next_epoch: Some("new".into()),
        };
        assert!(covers(&mark, &ack("new-20-0", t0)));
        assert!(!covers(&mark, &ack("new-21-0", t0)));
        assert!(covers(&mark, &ack("old-99-0", t0)));
        assert!(!covers(&mark, &ack("old-99-0", t1)));
        let empty = ResyncMark { id: None, ..mark };
        assert!(covers(&empty, &ack("old-5-0", t0)));
        assert!(
            !covers(&empty, &ack("new-5-0", t0)),
            "the epoch it went on with"
        );
    }

    #[test]
    fn duplicates_and_reorders_are_found_per_session() {
        let t = Instant::now();
        let ev = |raw: &str| Entry::Event {
            raw: raw.into(),
            at: t,
        };
        let session = SessionLog {
            user: 1,
            name: "s".into(),
            entries: vec![
                ev("a-1-0"),
                ev("a-3-0"),
                ev("a-2-0"),
                ev("a-3-0"),
                ev("b-1-0"),
                ev("a-4-0"),
            ],
            seen: HashMap::new(),
            resyncs: Vec::new(),
        };
        let flags: Vec<(bool, bool)> = ordered(&session).iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(
            flags,
            [
                (false, false),
                (false, false),
                (false, true),
                (true, false),
                (false, false),
                (false, true)
            ]
        );
    }
}
