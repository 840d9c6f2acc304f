//! Waiting: change-stream wake-ups, expiry-aware sleeps, polling fallback,
//! and the admin operations.

use std::time::Duration;

use mongolock::{Error, MongoLock};
use mongolock_suite::fresh_lock;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

/// A waiter that reports when it got the lock.
fn waiter(lock: &MongoLock, key: &'static str) -> oneshot::Receiver<i64> {
    let (tx, rx) = oneshot::channel();
    let lock = lock.clone();
    tokio::spawn(async move {
        if let Ok(guard) = lock.acquire(key).timeout(WAIT).await {
            let _ = tx.send(guard.token());
            let _ = guard.release().await;
        }
    });
    rx
}

#[tokio::test]
async fn waiter_takes_a_released_lock_long_before_its_lease_ends() {
    for streams in [true, false] {
        let lock = fresh_lock("wake_on_release")
            .await
            .with_change_streams(streams);
        let holder = lock
            .acquire("job")
            .expires(Duration::from_secs(120))
            .await
            .unwrap();
        let token = holder.token();
        let got = waiter(&lock, "job");
        // Let the waiter find the lock busy first.
        let other = lock
            .acquire("job")
            .timeout(Duration::from_millis(200))
            .await;
        assert!(matches!(other, Err(Error::Locked { .. })));
        holder.release().await.unwrap();
        // The lease had 2 minutes left; the waiter's own timeout is 30 s.
        let next = got
            .await
            .expect("the waiter took the lock after the release");
        assert!(next > token, "streams={streams}");
    }
}

#[tokio::test]
async fn waiters_on_other_keys_keep_waiting() {
    let lock = fresh_lock("other_keys").await;
    let a = lock
        .acquire("a")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let b = lock
        .acquire("b")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let mut got_b = waiter(&lock, "b");
    let got_a = waiter(&lock, "a");
    a.release().await.unwrap();
    got_a.await.expect("the waiter on a got it");
    assert!(got_b.try_recv().is_err(), "b is still held");
    assert!(lock.is_locked("b").await.unwrap());
    b.release().await.unwrap();
    got_b
        .await
        .expect("the waiter on b got it after b's release");
}

#[tokio::test]
async fn crashed_holder_is_replaced_at_its_expiry() {
    let lock = fresh_lock("expiry_wait").await;
    // A holder that vanishes: never releases, never renews.
    assert!(lock
        .lock("job", "ghost")
        .expires(Duration::from_millis(400))
        .await
        .unwrap());
    let ghost = lock.get_lock_info("job").await.unwrap().unwrap();
    let guard = lock.acquire("job").timeout(WAIT).await.unwrap();
    assert!(guard.acquired_at().unwrap() >= ghost.expires_at);
}

#[tokio::test]
async fn list_shows_holders_and_force_release_frees_them() {
    let lock = fresh_lock("admin").await;
    let a = lock.acquire("a").await.unwrap();
    assert!(lock.lock("b", "worker-b").await.unwrap());
    assert!(lock
        .lock("c", "gone")
        .expires(Duration::from_millis(1))
        .await
        .unwrap());
    lock.lock("d", "d").await.unwrap();
    lock.release("d", "d").await.unwrap();
    // Wait out c's 1 ms lease on the server's clock.
    assert!(lock.lock("c", "next").timeout(WAIT).await.unwrap());
    lock.release("c", "next").await.unwrap();

    let held = lock.list().await.unwrap();
    let keys: Vec<_> = held
        .iter()
        .map(|i| (i.key.as_str(), i.owner.as_deref()))
        .collect();
    assert_eq!(keys, [("a", Some(a.owner())), ("b", Some("worker-b"))]);
    assert_eq!(held[0].token, a.token());

    assert!(lock.force_release("b").await.unwrap());
    assert!(!lock.force_release("b").await.unwrap(), "already free");
    assert!(!lock.force_release("missing").await.unwrap());
    assert!(matches!(
        lock.force_release("").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(lock.lock("b", "someone-else").await.unwrap());
    let after = lock.get_lock_info("b").await.unwrap().unwrap();
    assert!(
        after.token > held[1].token,
        "tokens keep growing after force_release"
    );
}

#[tokio::test]
async fn credentials_never_show_in_debug_output() {
    let lock = MongoLock::connect("mongodb://admin:hunter2@127.0.0.1:1/?connectTimeoutMS=100")
        .await
        .unwrap();
    let shown = format!("{lock:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("admin:"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_waiter_outside_the_queue_hears_of_releases_on_a_stream_opened_for_queued_ones() {
    let holders = fresh_lock("widen").await;
    // The waiters' process: its stream first opens for a queued waiter,
    // which is not told of releases that leave no queue.
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let lease = Duration::from_secs(120);
    let a = holders.acquire("a").expires(lease).await.unwrap();
    let b = holders.acquire("b").expires(lease).await.unwrap();
    let queued = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("a").timeout(WAIT).await }
    });
    // Asleep after its first attempts (light, then queued), and again once
    // the stream opened.
    commands.until_listening(3).await;
    // A waiter outside any queue: fair(false) on another key.
    let unfair = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("b").fair(false).timeout(WAIT).await }
    });
    // It found "b" taken outside any queue: the stream reopens, wide. (Not
    // a count of attempts: the queued waiter's own re-checks count too.)
    let widened = commands.until(|c| c.count("aggregate").1 >= 2);
    tokio::time::timeout(WAIT, widened)
        .await
        .expect("the stream was not reopened for the waiter outside the queue");
    let delivered = commands.delivered();
    assert!(b.release().await.unwrap());
    // The waiters' process is told of the release.
    let told = commands.until(|c| c.delivered() > delivered);
    tokio::time::timeout(WAIT, told)
        .await
        .expect("the release that left no queue was not delivered");
    let got = unfair.await.unwrap().unwrap();
    assert!(got.release().await.unwrap());
    assert!(a.release().await.unwrap());
    let next = queued.await.unwrap().unwrap();
    assert!(next.release().await.unwrap());
}

#[tokio::test]
async fn the_change_stream_closes_once_no_waiter_is_left_and_opens_again_for_the_next() {
    let holders = fresh_lock("idle_close").await;
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let waiters = waiters.with_stream_idle_close(Duration::ZERO).unwrap();
    for round in 1..=2 {
        // (The last round's waiter may still be releasing.)
        let held = holders
            .acquire("job")
            .expires(Duration::from_secs(120))
            .timeout(WAIT)
            .await
            .unwrap();
        let get_mores = commands.count("getMore").0;
        let got = waiter(&waiters, "job");
        // This round's stream is open and waiting for events.
        let listening =
            commands.until(|c| c.count("aggregate").1 == round && c.count("getMore").0 > get_mores);
        tokio::time::timeout(WAIT, listening)
            .await
            .expect("no change stream opened for the waiter");
        assert!(held.release().await.unwrap());
        got.await.expect("the waiter did not get the lock");
        // Its waiter has left: the stream closes at its next `getMore`.
        let closed = commands.until(|c| c.count("killCursors").0 == round);
        tokio::time::timeout(WAIT, closed)
            .await
            .expect("the change stream stayed open with no waiter");
    }
}

/// A stream widened for a waiter outside any queue narrows again once it
/// closed for want of waiters: the next one, opened for a queued waiter, is
/// not sent releases that leave no queue. (Events come in order, so the one
/// release delivered before the waiter's lock is handed over is the
/// hand-over itself.)
#[tokio::test]
async fn a_widened_stream_opens_narrow_again_after_it_closed() {
    let holders = fresh_lock("narrow_again").await;
    let (waiters, commands) = mongolock_suite::Commands::lock(holders.collection()).await;
    let waiters = waiters.with_stream_idle_close(Duration::ZERO).unwrap();
    // An unfair waiter widens the stream, gets the lock, leaves; the idle
    // stream closes.
    let held = holders
        .acquire("a")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let unfair = tokio::spawn({
        let waiters = waiters.clone();
        async move { waiters.acquire("a").fair(false).timeout(WAIT).await }
    });
    commands.until(|c| c.count("getMore").0 >= 1).await;
    assert!(held.release().await.unwrap());
    unfair.await.unwrap().unwrap().release().await.unwrap();
    commands.until(|c| c.count("killCursors").0 >= 1).await;
    // A queued waiter opens the next stream.
    let held = holders
        .acquire("b")
        .expires(Duration::from_secs(120))
        .await
        .unwrap();
    let get_mores = commands.count("getMore").0;
    let queued = waiter(&waiters, "b");
    commands
        .until(|c| c.count("aggregate").1 >= 2 && c.count("getMore").0 > get_mores)
        .await;
    let delivered = commands.delivered();
    // A release that leaves no queue, then the hand-over to the waiter.
    holders.acquire("c").await.unwrap().release().await.unwrap();
    assert!(held.release().await.unwrap());
    queued.await.expect("the waiter did not get the lock");
    assert_eq!(
        commands.delivered() - delivered,
        1,
        "a narrow stream is sent the hand-over only"
    );
}

/// Every write that may wake a waiter says whom in its release id, so that
/// a change event with only the changed fields (MongoDB 5.0+, where no
/// stream looks the document up) is enough: the process handed the lock
/// (`@p`), the waiter whose turn it is (`^p:c`: the head of a lock left
/// free, or the next in line after a hand-over), anyone's (`*`: free and
/// nobody queued), or nothing while the lock stays held. Run against the
/// server on documents of every kind.
#[tokio::test]
async fn every_write_that_may_wake_a_waiter_says_whom_in_its_release_id() {
    use mongodb::bson::{doc, DateTime, Document};
    use mongolock::__private::raw;

    let collection = mongolock_suite::fresh_collection("release_marks").await;
    let at = |ms: i64| DateTime::from_millis(DateTime::now().timestamp_millis() + ms);
    let entry = |w: &str, p: &str, expires: i64| {
        doc! { "w": w, "p": p, "exp": at(expires), "o": format!("owner-{w}"), "l": 60_000_i64 }
    };
    let lock = |held: bool, queue: Vec<Document>| {
        let mut doc = doc! {
            "_id": "k", "token": 5_i64, "acquired_at": at(-120_000),
            "expires_at": at(if held { 60_000 } else { -1_000 }), "locked": held,
            "expire": at(if held { 60_000 } else { -1_000 }), "created": at(-120_000),
        };
        if held {
            doc.insert("owner", "holder");
            doc.insert("claim", "hc");
        }
        if !queue.is_empty() {
            doc.insert("queue", queue);
        }
        doc
    };
    let two = || vec![entry("c1", "p1", 60_000), entry("c2", "p2", 60_000)];
    let cases: Vec<(&str, Document, Vec<Document>, &str)> = vec![
        (
            "a hand-over, someone next in line",
            lock(true, two()),
            raw::release_update(0, "r", true),
            "r@p1^p2:c2",
        ),
        (
            "a hand-over, nobody next",
            lock(true, vec![entry("c1", "p1", 60_000)]),
            raw::release_update(0, "r", true),
            "r@p1",
        ),
        (
            "a release that leaves the lock free to its queue's head",
            lock(true, two()),
            raw::release_update(0, "r", false),
            "r^p1:c1",
        ),
        (
            "a release whose queue has only lapsed entries",
            lock(true, vec![entry("c1", "p1", -1_000)]),
            raw::release_update(0, "r", true),
            "r*",
        ),
        (
            "a hand-over over a lapsed head",
            lock(
                true,
                vec![entry("c1", "p1", -1_000), entry("c2", "p2", 60_000)],
            ),
            raw::release_update(0, "r", true),
            "r@p2",
        ),
        (
            "a release into a minimum hold",
            lock(true, two()),
            raw::release_update(3_600_000, "r", true),
            "r",
        ),
        (
            "a release after its minimum hold",
            lock(true, two()),
            raw::release_update(1, "r", false),
            "r^p1:c1",
        ),
        (
            "the head leaving the queue of a free lock",
            lock(false, two()),
            raw::leave_queue("c1", "l"),
            "l^p2:c2",
        ),
        (
            "the last waiter leaving the queue of a free lock",
            lock(false, vec![entry("c1", "p1", 60_000)]),
            raw::leave_queue("c1", "l"),
            "l*",
        ),
        (
            "a waiter leaving the queue of a held lock",
            lock(true, two()),
            raw::leave_queue("c1", "l"),
            "l",
        ),
    ];
    for (name, before, write, expected) in cases {
        collection
            .replace_one(doc! { "_id": "k" }, &before)
            .upsert(true)
            .await
            .unwrap();
        let result = collection
            .update_one(doc! { "_id": "k" }, write)
            .await
            .unwrap();
        assert_eq!(result.matched_count, 1, "{name}");
        let after = collection
            .find_one(doc! { "_id": "k" })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.get_str("release_id"), Ok(expected), "{name}: {after}");
    }
    // The release of a lock nobody queues for is an operator update.
    collection
        .replace_one(doc! { "_id": "k" }, lock(true, vec![]))
        .await
        .unwrap();
    collection
        .update_one(doc! { "_id": "k" }, raw::release_plain("r"))
        .await
        .unwrap();
    let after = collection
        .find_one(doc! { "_id": "k" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.get_str("release_id"), Ok("r*"));
}

/// MongoDB 5.0+ reports a write by pipeline as an `update` event with only
/// the changed fields, and no stream of ours looks the document up. The
/// test server reports pipelines as whole-document `replace`s, so such
/// events are written here by hand, as operator updates carrying what this
/// crate's pipelines write: a hand-over to a queued waiter, which takes the
/// lock from the event alone (no command sent after it), and a release
/// that leaves the lock free to the queue's head, which is woken to take
/// it. Queue entries last 2 minutes and the holder's lease too: a waiter
/// not woken by the event would not ask again within its 30 s timeout.
#[tokio::test]
async fn a_waiter_acts_on_update_events_that_carry_only_the_changed_fields() {
    use mongodb::bson::{doc, DateTime};

    let collection = mongolock_suite::fresh_collection("delta_events").await;
    let holder_lock = MongoLock::with_collection(collection.clone());
    let (lock, commands) = mongolock_suite::Commands::lock(&collection).await;
    let lock = lock.with_queue_expiry(Duration::from_secs(120)).unwrap();
    for (key, hand_over) in [("handed", true), ("freed", false)] {
        let holder = holder_lock
            .acquire(key)
            .expires(Duration::from_secs(120))
            .await
            .unwrap();
        let token = holder.token();
        commands.clear();
        let waiting = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire(key).timeout(WAIT).await })
        };
        // Queued, its stream waiting for events, no attempt in flight.
        commands
            .until(|c| {
                let (sent, answered) = c.count("findAndModify");
                sent >= 1
                    && sent == answered
                    && c.started().last().map(String::as_str) == Some("getMore")
            })
            .await;
        let lock_doc = collection
            .find_one(doc! { "_id": key })
            .await
            .unwrap()
            .unwrap();
        let queue = lock_doc.get_array("queue").unwrap();
        let head = queue[0].as_document().unwrap();
        let (process, claim) = (head.get_str("p").unwrap(), head.get_str("w").unwrap());
        let now = DateTime::now();
        let later = DateTime::from_millis(now.timestamp_millis() + 60_000);
        let write = if hand_over {
            doc! {
                "$set": {
                    "owner": head.get_str("o").unwrap(), "claim": claim,
                    "token": token + 1, "acquired_at": now, "created": now,
                    "expires_at": later, "expire": later,
                    "release_id": format!("sim@{process}"),
                },
                "$unset": { "queue": "" },
            }
        } else {
            doc! {
                "$set": {
                    "locked": false, "expires_at": now, "expire": now,
                    "release_id": format!("sim^{process}:{claim}"),
                },
                "$unset": { "owner": "", "claim": "" },
            }
        };
        commands.clear();
        collection
            .update_one(doc! { "_id": key }, write)
            .await
            .unwrap();
        let guard = waiting
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{key}: not woken by the event: {e}"));
        if hand_over {
            assert_eq!(guard.token(), token + 1);
            assert_eq!(
                (
                    commands.count("findAndModify").0,
                    commands.count("update").0
                ),
                (0, 0),
                "the handed-over lock is taken from the event alone: {:?}",
                commands.started()
            );
        } else {
            assert!(guard.token() > token);
        }
        guard.release().await.unwrap();
        std::mem::forget(holder);
    }
}
