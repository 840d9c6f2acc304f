//! FIFO fairness across processes: waiters in other processes take a lock
//! in the order they queued, and one that dies in the queue holds it up only
//! until its entry lapses.

use std::process::Stdio;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use mongolock::{Backoff, MongoLock};
use mongolock_suite::{server_uri, Commands};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const ROLE: &str = "MONGOLOCK_FAIRNESS_ROLE";
const COLLECTION: &str = "MONGOLOCK_FAIRNESS_COLLECTION";
const QUEUE_EXPIRY: &str = "MONGOLOCK_FAIRNESS_QUEUE_EXPIRY_MS";
const WAIT: Duration = Duration::from_secs(120);

async fn collection(name: &str) -> Collection<Document> {
    let client = mongodb::Client::with_uri_str(server_uri().unwrap())
        .await
        .unwrap();
    client.database("mongolock_test").collection(name)
}

/// The child side: queues for `job`, prints its claim when queued and its
/// token when it holds the lock, then releases it.
#[tokio::test]
async fn child() {
    let (Ok(role), Ok(name)) = (std::env::var(ROLE), std::env::var(COLLECTION)) else {
        return;
    };
    assert_eq!(role, "waiter");
    let expiry: u64 = std::env::var(QUEUE_EXPIRY).unwrap().parse().unwrap();
    let lock = MongoLock::with_collection(collection(&name).await)
        .with_queue_expiry(Duration::from_millis(expiry))
        .unwrap();
    let guard = lock.acquire("job").fair(true).timeout(WAIT).await.unwrap();
    println!("HOLDING {}", guard.token());
    assert!(guard.release().await.unwrap());
}

struct Waiter {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Waiter {
    /// A waiter in a process of its own, returned once its entry is in the
    /// queue (read back from the lock document), as entry number `place`.
    async fn queue(coll: &Collection<Document>, queue_expiry: Duration, place: usize) -> Self {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(ROLE, "waiter")
            .env(COLLECTION, coll.name())
            .env("MONGODB_URI", server_uri().unwrap())
            .env(QUEUE_EXPIRY, queue_expiry.as_millis().to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The document is the signal: the child has queued when its entry
        // is there.
        let deadline = tokio::time::Instant::now() + WAIT;
        while queue(coll).await.len() <= place {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter {place} never queued"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { child, lines }
    }

    /// The token it held, once it has held the lock and exited.
    async fn token(mut self) -> i64 {
        while let Some(line) = self.lines.next_line().await.unwrap() {
            if let Some((_, token)) = line.split_once("HOLDING ") {
                assert!(self.child.wait().await.unwrap().success());
                return token.trim().parse().unwrap();
            }
        }
        panic!(
            "the waiter exited without the lock: {:?}",
            self.child.wait().await
        );
    }
}

async fn queue(coll: &Collection<Document>) -> Vec<Document> {
    let doc = coll.find_one(doc! { "_id": "job" }).await.unwrap();
    doc.and_then(|d| d.get_array("queue").ok().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.as_document().cloned())
        .collect()
}

#[tokio::test]
async fn waiters_in_other_processes_acquire_in_the_order_they_queued() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo").await;
    let holder = MongoLock::with_collection(coll.clone());
    let guard = holder.acquire("job").await.unwrap();
    let mut waiters = Vec::new();
    for place in 0..4 {
        waiters.push(Waiter::queue(&coll, Duration::from_secs(30), place).await);
    }
    assert!(guard.release().await.unwrap());
    // The releaser asking again at once does not win again: it queues last.
    let again = holder.acquire("job").timeout(WAIT);
    let again = tokio::spawn(async move { again.await });
    let mut tokens = Vec::new();
    for waiter in waiters {
        tokens.push(waiter.token().await);
    }
    let again = again.await.unwrap().unwrap();
    tokens.push(again.token());
    assert!(again.release().await.unwrap());
    let mut sorted = tokens.clone();
    sorted.sort_unstable();
    assert_eq!(tokens, sorted, "acquired out of queue order");
    assert!(queue(&coll).await.is_empty(), "the queue kept entries");
}

#[tokio::test]
async fn a_waiter_that_died_in_the_queue_holds_it_up_only_until_its_entry_lapses() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let expiry = Duration::from_secs(2);
    let coll = mongolock_suite::fresh_collection("fifo_dead").await;
    let holder = MongoLock::with_collection(coll.clone());
    let guard = holder.acquire("job").await.unwrap();
    let mut dead = Waiter::queue(&coll, expiry, 0).await;
    let next = Waiter::queue(&coll, expiry, 1).await;
    dead.child.kill().await.unwrap(); // SIGKILL: it never leaves the queue
    let entry = queue(&coll).await.remove(0);
    let lapses = *entry.get_datetime("exp").unwrap();
    assert!(guard.release().await.unwrap());
    // The release handed the lock to the head, which it cannot know to be
    // dead, but only until the head's entry would have lapsed.
    let handed = coll.find_one(doc! { "_id": "job" }).await.unwrap().unwrap();
    assert_eq!(handed.get_str("claim"), entry.get_str("w"));
    assert!(*handed.get_datetime("expires_at").unwrap() <= lapses);

    let token = next.token().await;
    let info = holder.get_lock_info("job").await.unwrap().unwrap();
    assert_eq!(info.token, token);
    let taken: DateTime = info.acquired_at.unwrap();
    assert!(
        taken >= lapses,
        "the next waiter went ahead of a live entry"
    );
    // It looks again when the dead entry lapses, not at its own next
    // heartbeat or later.
    assert!(
        taken.timestamp_millis() - lapses.timestamp_millis() < expiry.as_millis() as i64,
        "held up {} ms past the dead entry's lapse",
        taken.timestamp_millis() - lapses.timestamp_millis()
    );
}

#[tokio::test]
async fn a_single_attempt_respects_the_queue_without_joining_it() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_single").await;
    let holder = MongoLock::with_collection(coll.clone());
    let guard = holder.acquire("job").await.unwrap();
    let waiter = MongoLock::with_collection(coll.clone());
    let waited = tokio::spawn(async move { waiter.acquire("job").timeout(WAIT).await });
    while queue(&coll).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other = MongoLock::with_collection(coll.clone());
    let refused = other.acquire("job").await;
    assert!(
        matches!(refused, Err(mongolock::Error::Locked { .. })),
        "{refused:?}"
    );
    assert_eq!(queue(&coll).await.len(), 1, "a single attempt queued");
    // Released, with a waiter queued: the single attempt does not go ahead.
    assert!(guard.release().await.unwrap());
    let refused = other.acquire("job").await;
    assert!(
        matches!(refused, Err(mongolock::Error::Locked { .. })),
        "{refused:?}"
    );
    let next = waited.await.unwrap().unwrap();
    assert!(next.release().await.unwrap());
    assert!(queue(&coll).await.is_empty());
}

#[tokio::test]
async fn an_uncontended_fair_acquisition_is_one_round_trip_and_opens_no_stream() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_uncontended").await;
    let (lock, commands) = Commands::lock(&coll).await;
    // The first use also starts the TTL index build in the background.
    lock.acquire("warm").await.unwrap().release().await.unwrap();
    lock.ensure_ttl_index().await.unwrap();
    commands.clear();
    let guard = lock.acquire("job").fair(true).timeout(WAIT).await.unwrap();
    assert!(guard.release().await.unwrap());
    assert_eq!(
        commands.started(),
        ["findAndModify", "update"],
        "acquire and release, one command each (the release a plain update, \
         as no queue was seen), and no change stream"
    );
    // Now the key's document is known to exist: the next acquisition is
    // the quick take, an `update` that returns no document.
    commands.clear();
    let guard = lock.acquire("job").fair(true).timeout(WAIT).await.unwrap();
    assert!(guard.release().await.unwrap());
    assert_eq!(
        commands.started(),
        ["update", "update"],
        "the quick take and the plain release"
    );
}

/// Fair waiters that keep coming hand the lock from one to the next and
/// never leave it free; an unfair waiter among them joins the line once it
/// has waited a queue expiry, and gets the lock while they still run.
#[tokio::test]
async fn an_unfair_waiter_joins_the_line_after_a_queue_expiry_and_does_not_starve() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_aging").await;
    let expiry = Duration::from_secs(1);
    let make = || {
        MongoLock::with_collection(coll.clone())
            .with_queue_expiry(expiry)
            .unwrap()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut fair = Vec::new();
    for _ in 0..2 {
        let (lock, mut stop) = (make(), stop_rx.clone());
        fair.push(tokio::spawn(async move {
            let mut taken = 0_u32;
            while !*stop.borrow() {
                let guard = lock.acquire("job").timeout(WAIT).await.unwrap();
                taken += 1;
                // Hold a little, so the other one is always queued.
                let _ = tokio::time::timeout(Duration::from_millis(20), stop.changed()).await;
                guard.release().await.unwrap();
            }
            taken
        }));
    }
    // The unfair waiter arrives while they hand the lock back and forth.
    let unfair = make();
    let guard = unfair
        .acquire("job")
        .fair(false)
        .timeout(Duration::from_secs(30))
        .await
        .expect("the unfair waiter got the lock while fair ones kept queueing");
    assert!(guard.release().await.unwrap());
    stop_tx.send(true).unwrap();
    for worker in fair {
        assert!(worker.await.unwrap() > 0);
    }
}

/// Unfair acquisitions, `acquire().fair(false)` and the Python-shaped
/// `lock(key, owner)`, take a key whose document this process has seen by
/// the quick take too, and release it with one plain update.
#[tokio::test]
async fn unfair_uncontended_cycles_are_two_plain_updates_too() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("unfair_quick").await;
    let (lock, commands) = Commands::lock(&coll).await;
    lock.acquire("job")
        .fair(false)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(lock.lock("shaped", "worker-1").await.unwrap());
    assert!(lock.release("shaped", "worker-1").await.unwrap());
    lock.ensure_ttl_index().await.unwrap();
    commands.clear();
    let guard = lock.acquire("job").fair(false).await.unwrap();
    assert!(guard.release().await.unwrap());
    assert!(lock.lock("shaped", "worker-1").await.unwrap());
    assert!(lock.release("shaped", "worker-1").await.unwrap());
    assert_eq!(commands.started(), ["update", "update", "update", "update"]);
    // The Python-shaped lock re-enters its owner's lock: by the pipeline,
    // the quick take being refused while it is held.
    assert!(lock.lock("shaped", "worker-1").await.unwrap());
    commands.clear();
    assert!(lock.lock("shaped", "worker-1").await.unwrap());
    assert_eq!(commands.started(), ["update", "findAndModify"]);
}

/// Puts a waiter of another process at the head of `key`'s queue, its
/// entry live for a minute.
async fn another_process_heads_the_queue(coll: &Collection<Document>, key: &str) {
    let in_a_minute = DateTime::from_millis(DateTime::now().timestamp_millis() + 60_000);
    coll.update_one(
        doc! { "_id": key },
        doc! { "$set": { "queue": [
            { "w": "elsewhere", "p": "other-process", "exp": in_a_minute, "o": "them", "l": 60_000_i64 },
        ] } },
    )
    .await
    .unwrap();
}

/// The quick take (a key whose document this process has seen, not seen
/// contended) is refused by the server unless the lock is released, free
/// and unqueued, and its token must grow: tokens grow in the order of
/// acquisition whichever path took the lock (quick take, pipeline, another
/// process, after the Python package replaced the document), and a lock
/// whose holder vanished without a release is still taken once its lease
/// ran out, by the pipeline.
#[tokio::test]
async fn the_quick_take_keeps_tokens_growing_and_passes_no_holder_or_queue() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_quick").await;
    let (lock, commands) = Commands::lock(&coll).await;
    let other = MongoLock::with_collection(coll.clone());
    // A process that has seen the key's document, as `lock` will have.
    let (knows, knows_commands) = Commands::lock(&coll).await;
    let mut tokens = Vec::new();
    let mut take = |guard: &mongolock::LockGuard| tokens.push(guard.token());

    let before = knows.acquire("job").await.unwrap();
    take(&before);
    before.release().await.unwrap();
    knows.ensure_ttl_index().await.unwrap();
    let first = lock.acquire("job").await.unwrap();
    take(&first);
    first.release().await.unwrap();
    lock.ensure_ttl_index().await.unwrap();
    commands.clear();
    let quick = lock.acquire("job").await.unwrap();
    assert_eq!(commands.started(), ["update"], "a quick take");
    take(&quick);
    // Held: another process is refused, and so is one that knows the key,
    // whose quick take the server refuses before its pipeline does.
    assert!(matches!(
        other.acquire("job").await,
        Err(mongolock::Error::Locked { .. })
    ));
    knows_commands.clear();
    assert!(matches!(
        knows.acquire("job").await,
        Err(mongolock::Error::Locked { .. })
    ));
    assert_eq!(knows_commands.started(), ["update", "findAndModify"]);
    quick.release().await.unwrap();
    let elsewhere = other.acquire("job").await.unwrap();
    take(&elsewhere);
    elsewhere.release().await.unwrap();
    let again = lock.acquire("job").await.unwrap();
    take(&again);
    // The holder vanishes (no release): its lease runs out by the server's
    // clock, and only the pipeline may take the lock then.
    std::mem::forget(again);
    coll.update_one(
        doc! { "_id": "job" },
        vec![doc! { "$set": { "expires_at": "$$NOW", "expire": "$$NOW" } }],
    )
    .await
    .unwrap();
    commands.clear();
    let after_expiry = lock.acquire("job").await.unwrap();
    assert_eq!(commands.started(), ["update", "findAndModify"]);
    take(&after_expiry);
    after_expiry.release().await.unwrap();
    // The Python package's release replaces the document: no token left.
    coll.replace_one(
        doc! { "_id": "job" },
        doc! { "locked": false, "owner": null, "created": null, "expire": null },
    )
    .await
    .unwrap();
    commands.clear();
    let after_python = lock.acquire("job").await.unwrap();
    assert_eq!(commands.started(), ["update"], "a quick take");
    take(&after_python);
    after_python.release().await.unwrap();
    // A queue entry of another process's waiter: the quick take is
    // refused, and the pipeline lets the head go first.
    another_process_heads_the_queue(&coll, "job").await;
    commands.clear();
    assert!(matches!(
        lock.acquire("job").await,
        Err(mongolock::Error::Locked { .. })
    ));
    assert_eq!(commands.started(), ["update", "findAndModify"]);
    coll.update_one(doc! { "_id": "job" }, doc! { "$unset": { "queue": "" } })
        .await
        .unwrap();
    // A token above the one a quick take would propose (a clock that
    // stamped it ran ahead): refused, and the pipeline's token grows. (A
    // process that has not found the key taken, as `lock` now has.)
    let (late, late_commands) = Commands::lock(&coll).await;
    let seen = late.acquire("job").await.unwrap();
    take(&seen);
    seen.release().await.unwrap();
    late.ensure_ttl_index().await.unwrap();
    let ahead = (DateTime::now().timestamp_millis() + 3_600_000) * 1000;
    coll.update_one(doc! { "_id": "job" }, doc! { "$set": { "token": ahead } })
        .await
        .unwrap();
    tokens.push(ahead);
    late_commands.clear();
    let above = late.acquire("job").await.unwrap();
    assert_eq!(late_commands.started(), ["update", "findAndModify"]);
    assert_eq!(above.token(), ahead + 1);
    tokens.push(above.token());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in the order of acquisition: {tokens:?}"
    );
}

/// The light attempt (a key this process has not seen contended) takes a
/// free lock only while no queue entry exists: a fresh process meeting a
/// free lock with a live queue entry of another process neither takes it
/// nor skips ahead, with or without a wait; and attempts that do not take
/// the lock leave its token and times as they were.
#[tokio::test]
async fn a_process_that_never_saw_contention_still_respects_a_queue() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_light").await;
    let lock = MongoLock::with_collection(coll.clone());
    lock.acquire("job").await.unwrap().release().await.unwrap();
    // Another process's waiter heads the queue of the free lock.
    another_process_heads_the_queue(&coll, "job").await;
    let before = coll.find_one(doc! { "_id": "job" }).await.unwrap().unwrap();
    let fresh = MongoLock::with_collection(coll.clone());
    assert!(matches!(
        fresh.acquire("job").await,
        Err(mongolock::Error::Locked { .. })
    ));
    let waited = fresh
        .acquire("job")
        .timeout(Duration::from_millis(300))
        .await;
    assert!(
        matches!(waited, Err(mongolock::Error::Locked { .. })),
        "{waited:?}"
    );
    let doc = coll.find_one(doc! { "_id": "job" }).await.unwrap().unwrap();
    assert!(
        doc.get("owner").is_none_or(|o| o.as_null().is_some()),
        "{doc:?}"
    );
    // Attempts that did not take the lock stamped nothing on it.
    for field in ["token", "acquired_at", "expires_at"] {
        assert_eq!(doc.get(field), before.get(field), "{field}");
    }
}

#[tokio::test]
async fn waiters_that_give_up_leave_the_queue() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_give_up").await;
    let holder = MongoLock::with_collection(coll.clone());
    let guard = holder.acquire("job").await.unwrap();
    let waiter = MongoLock::with_collection(coll.clone());
    // One times out.
    let timed_out = waiter
        .acquire("job")
        .timeout(Duration::from_millis(300))
        .await;
    assert!(matches!(timed_out, Err(mongolock::Error::Locked { .. })));
    assert!(waiter.finish_releases(WAIT).await);
    assert!(
        queue(&coll).await.is_empty(),
        "a timed-out waiter stayed queued"
    );
    // One is dropped while it waits.
    let dropped = waiter.clone();
    let task = tokio::spawn(async move { dropped.acquire("job").timeout(WAIT).await });
    while queue(&coll).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(waiter.finish_releases(WAIT).await);
    assert!(
        queue(&coll).await.is_empty(),
        "a dropped waiter stayed queued"
    );
    assert!(guard.release().await.unwrap());
}

/// A holder of `job` in `coll` releases it once a waiter in another
/// `MongoLock` (built from a recorded one by `waiter`, asking for
/// `expires`) listens for releases. Returns the holder, its token, and the
/// waiter's guard, checked to be handed over: the waiter sent no command to
/// take it.
async fn handed_over(
    coll: &Collection<Document>,
    waiter: impl FnOnce(MongoLock) -> MongoLock,
    expires: Duration,
) -> (MongoLock, i64, mongolock::LockGuard) {
    let holder = MongoLock::with_collection(coll.clone());
    let (recorded, commands) = Commands::lock(coll).await;
    let waiter = waiter(recorded);
    waiter
        .acquire("warm")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    commands.clear();
    let guard = holder.acquire("job").await.unwrap();
    let task =
        tokio::spawn(async move { waiter.acquire("job").expires(expires).timeout(WAIT).await });
    // Its light attempt and its queued one, which found the lock taken, and
    // the one after its change stream opened (which makes every waiter look
    // again).
    commands.until_listening(3).await;
    let before = commands.count("findAndModify").0;
    let first = guard.token();
    assert!(guard.release().await.unwrap());
    let next = task.await.unwrap().unwrap();
    assert_eq!(
        commands.count("findAndModify").0,
        before,
        "the head sent a command to take it"
    );
    (holder, first, next)
}

#[tokio::test]
async fn a_release_hands_the_lock_to_the_head_which_sends_nothing_to_take_it() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_handover").await;
    let (holder, first, next) = handed_over(&coll, |l| l, Duration::from_secs(60)).await;
    let info = holder.get_lock_info("job").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some(next.owner()));
    assert_eq!(info.token, next.token());
    assert!(
        next.token() > first,
        "fencing tokens grow across a handover"
    );
    assert!(next.release().await.unwrap());
    assert!(queue(&coll).await.is_empty());
}

#[tokio::test]
async fn a_waiter_that_gives_up_after_the_lock_was_handed_to_it_passes_it_on() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_handover_gone").await;
    let holder = MongoLock::with_collection(coll.clone());
    let guard = holder.acquire("job").await.unwrap();
    // The first waiter cannot hear of the handover: no stream, and it
    // looks again only every 10 s.
    let slow = Backoff::new(Duration::from_secs(10), Duration::from_secs(10)).unwrap();
    let deaf = MongoLock::with_collection(coll.clone())
        .with_change_streams(false)
        .with_backoff(slow)
        .with_queue_expiry(Duration::from_secs(30))
        .unwrap();
    let gone = tokio::spawn({
        let deaf = deaf.clone();
        async move { deaf.acquire("job").timeout(WAIT).await }
    });
    while queue(&coll).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = MongoLock::with_collection(coll.clone());
    let next = tokio::spawn(async move { next.acquire("job").timeout(WAIT).await });
    while queue(&coll).await.len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = queue(&coll).await.remove(0);
    assert!(guard.release().await.unwrap());
    let handed = coll.find_one(doc! { "_id": "job" }).await.unwrap().unwrap();
    assert_eq!(handed.get_str("claim"), first.get_str("w"));
    let handed_until = *handed.get_datetime("expires_at").unwrap();
    // It gives up before it noticed: what it was given goes to the next.
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert!(deaf.finish_releases(WAIT).await);
    let next = next.await.unwrap().unwrap();
    assert!(
        next.acquired_at().unwrap() < handed_until,
        "the next waiter waited for the lease of the one that gave up"
    );
    assert!(next.release().await.unwrap());
}

#[tokio::test]
async fn a_lock_handed_over_for_less_than_its_lease_is_extended_to_it() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_handover_extend").await;
    // Queue entries last 1 s: a handed-over lock is first held that long.
    let lease = Duration::from_secs(60);
    let short_entries = |l: MongoLock| l.with_queue_expiry(Duration::from_secs(1)).unwrap();
    let (holder, _, next) = handed_over(&coll, short_entries, lease).await;
    let short = next.expires_at();
    assert!(short.timestamp_millis() - next.acquired_at().unwrap().timestamp_millis() <= 1000);
    // The guard extends it to the whole lease in the background.
    let extended = loop {
        let info = holder.get_lock_info("job").await.unwrap().unwrap();
        if info.expires_at > short {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(extended.token, next.token());
    assert!(
        extended.expires_at.timestamp_millis() - next.acquired_at().unwrap().timestamp_millis()
            >= lease.as_millis() as i64
    );
    assert!(!next.is_lost());
    assert!(next.release().await.unwrap());
}

#[tokio::test]
async fn a_handed_over_lock_is_counted_lost_before_the_server_frees_it() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let coll = mongolock_suite::fresh_collection("fifo_handover_lost").await;
    let skew = |l: MongoLock| l.with_max_clock_skew(Duration::from_millis(300)).unwrap();
    let (holder, _, next) = handed_over(&coll, skew, Duration::from_secs(1)).await;
    // Counted from the head's last attempt, before the release: it gives up
    // while the server still keeps everyone else out.
    let lost = next.lost().await;
    assert!(
        matches!(lost, mongolock::Error::LockLost { .. }),
        "{lost:?}"
    );
    assert!(holder.is_locked("job").await.unwrap());
    assert!(!holder.lock("job", "other").await.unwrap());
}
