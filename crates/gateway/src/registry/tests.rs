//! Unit tests of the registry: subscription order, capacity, dispatch.

use super::*;
use std::sync::Mutex;

#[derive(Default)]
struct Log(Mutex<Vec<(bool, UserId)>>);
impl Subscriptions for Log {
    fn subscribe(&self, user: UserId) -> Subscribed {
        self.0.lock().unwrap().push((true, user));
        watch::channel(true).1
    }
    fn unsubscribe(&self, user: UserId) {
        self.0.lock().unwrap().push((false, user));
    }
}

fn registry() -> Registry {
    Registry::new(
        QueueLimits {
            max_events: 8,
            max_bytes: 1024,
        },
        0,
        0,
    )
}

#[test]
fn first_subscribes_last_unsubscribes() {
    let reg = registry();
    let log = Log::default();
    let (a, _) = reg.insert(9, &log).unwrap();
    let (b, _) = reg.insert(9, &log).unwrap();
    let (c, _) = reg.insert(10, &log).unwrap();
    assert_eq!(reg.len(), 3);
    reg.remove(&a, &log);
    reg.remove(&c, &log);
    reg.remove(&b, &log);
    assert!(reg.is_empty());
    assert_eq!(
        *log.0.lock().unwrap(),
        [(true, 9), (true, 10), (false, 10), (false, 9)]
    );
}

/// Subscriptions confirmed when the test says so.
#[derive(Default)]
struct Pending(Mutex<Vec<watch::Sender<bool>>>);
impl Subscriptions for Pending {
    fn subscribe(&self, _user: UserId) -> Subscribed {
        let (tx, rx) = watch::channel(false);
        self.0.lock().unwrap().push(tx);
        rx
    }
    fn unsubscribe(&self, _user: UserId) {}
}

#[test]
fn a_confirmed_subscription_frees_the_users_channel() {
    let reg = registry();
    let subs = Pending::default();
    let (_a, first) = reg.insert(9, &subs).unwrap();
    let (_b, second) = reg.insert(9, &subs).unwrap();
    assert!(
        !*second.borrow(),
        "the second connection waits for the same confirmation"
    );
    let tx = subs.0.lock().unwrap().pop().unwrap();
    reg.confirmed(9);
    assert_eq!(tx.receiver_count(), 3, "not confirmed yet: nothing changes");
    tx.send(true).unwrap();
    reg.confirmed(9);
    drop((first, second));
    assert_eq!(
        tx.receiver_count(),
        0,
        "nothing holds the user's channel any more"
    );
    let (_c, third) = reg.insert(9, &subs).unwrap();
    assert!(*third.borrow(), "later connections need not wait");
    assert!(
        subs.0.lock().unwrap().is_empty(),
        "and do not subscribe again"
    );
}

#[test]
fn capacity_counts_connections_and_frees_on_remove() {
    let limits = QueueLimits {
        max_events: 8,
        max_bytes: 1024,
    };
    let reg = Registry::new(limits, 2, 0);
    let log = Log::default();
    let (a, _) = reg.insert(9, &log).unwrap();
    let (_b, _) = reg.insert(10, &log).unwrap();
    assert_eq!(reg.insert(11, &log).err(), Some(AtCapacity::Node));
    assert_eq!(reg.len(), 2);
    reg.remove(&a, &log);
    reg.remove(&a, &log); // removing twice frees one slot only
    assert_eq!(reg.len(), 1);
    assert!(reg.insert(11, &log).is_ok());
    assert_eq!(reg.insert(12, &log).err(), Some(AtCapacity::Node));
}

#[test]
fn per_user_limit_counts_one_users_connections_only() {
    let limits = QueueLimits {
        max_events: 8,
        max_bytes: 1024,
    };
    let reg = Registry::new(limits, 0, 2);
    let log = Log::default();
    let (a, _) = reg.insert(9, &log).unwrap();
    let (_b, _) = reg.insert(9, &log).unwrap();
    assert_eq!(reg.insert(9, &log).err(), Some(AtCapacity::User));
    assert_eq!(reg.len(), 2, "a refused connection takes no node slot");
    assert!(reg.insert(10, &log).is_ok(), "other users are not limited");
    reg.remove(&a, &log);
    assert!(reg.insert(9, &log).is_ok());
    assert_eq!(reg.insert(9, &log).err(), Some(AtCapacity::User));
}

#[test]
fn per_user_limit_holds_under_concurrent_inserts() {
    let limits = QueueLimits {
        max_events: 8,
        max_bytes: 1024,
    };
    let reg = Arc::new(Registry::new(limits, 0, 5));
    let log = Arc::new(Log::default());
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (reg, log) = (reg.clone(), log.clone());
                s.spawn(move || {
                    let mut kept = Vec::new();
                    for _ in 0..50 {
                        if let Ok((conn, _)) = reg.insert(9, log.as_ref()) {
                            kept.push(conn);
                        }
                    }
                    kept.len()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(accepted, 5);
    assert_eq!(reg.len(), 5);
}

#[test]
fn dispatch_reaches_only_the_users_connections() {
    let reg = registry();
    let log = Log::default();
    let metrics = Metrics::new().unwrap();
    let (a, _) = reg.insert(9, &log).unwrap();
    let (b, _) = reg.insert(9, &log).unwrap();
    let (other, _) = reg.insert(10, &log).unwrap();
    let frame = Frame::new("x".into(), std::time::Instant::now());
    assert_eq!(reg.dispatch(9, &frame, &metrics), 2);
    assert_eq!(reg.dispatch(11, &frame, &metrics), 0);
    let mut batch = Vec::new();
    for (conn, n) in [(&a, 1), (&b, 1), (&other, 0)] {
        batch.clear();
        conn.outbox.take(&mut batch);
        assert_eq!(batch.len(), n);
    }
}
