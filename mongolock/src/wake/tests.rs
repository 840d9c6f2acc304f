//! Unit tests of the wake-up table.

use futures_util::FutureExt;
use mongodb::bson::doc;

use super::*;
use crate::query::{ANYONE, EXPIRES_AT, GRANTED_TO, OWNER, PROCESS, QUEUE, TOKEN, TURN, WAITER};

/// A collection handle that is never used: the client connects lazily.
async fn unused_collection() -> Collection<Document> {
    let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:9")
        .await
        .unwrap();
    client.database("unused").collection("lock")
}

#[tokio::test]
async fn waiters_recheck_when_the_stream_opens() {
    // A release before the stream is open is heard by nobody: the
    // waiters must look again once it is open, and when it reopens.
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let interest = wakeups.subscribe("job", None);
    for status in [OPEN, DOWN, OPEN] {
        let mut woken = std::pin::pin!(interest.notified());
        woken.as_mut().enable();
        wakeups.set_status(status);
        assert!(woken.now_or_never().is_some(), "not woken at {status}");
    }
}

/// Regression: the status was reset only by a task that had run, and a
/// runtime that shut down before polling it left the stream "open".
#[test]
fn stream_that_died_with_its_runtime_is_not_reported_open() {
    let wakeups = Arc::new(Wakeups::new(true, Duration::ZERO));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let _interest = wakeups.subscribe("job", None);
        wakeups.watch(&unused_collection().await);
        // As if the stream had opened.
        wakeups.set_status(OPEN);
        assert!(wakeups.stream_open());
    });
    drop(runtime);
    assert!(
        !wakeups.stream_open(),
        "waiters would neither be woken nor poll"
    );
    assert_eq!(wakeups.status.load(Ordering::Acquire), NOT_STARTED);
}

/// Whether `act` wakes `interest`.
fn wakes(interest: &Interest, act: impl FnOnce()) -> bool {
    let mut notified = std::pin::pin!(interest.notified());
    notified.as_mut().enable();
    act();
    notified.now_or_never().is_some()
}

/// A lock document whose queue is headed by `waiter` of `process`.
fn headed_by(process: &str, waiter: &str) -> Document {
    doc! { QUEUE: [{ PROCESS: process, WAITER: waiter }] }
}

/// A lock document as a release that handed the lock over to `claim`
/// of `process` left it.
fn handed_to(process: &str, claim: &str, release_id: &str) -> Document {
    doc! {
        "_id": "job",
        OWNER: "next-owner",
        CLAIM: claim,
        TOKEN: 7_i64,
        EXPIRES_AT: mongodb::bson::DateTime::now(),
        RELEASE_ID: format!("{release_id}{GRANTED_TO}{process}"),
    }
}

#[tokio::test]
async fn a_local_release_wakes_one_waiter_here_not_two() {
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let interest = wakeups.subscribe("job", None);
    wakeups.set_status(OPEN);
    let free = doc! {};
    // The release's event may come before the write's reply: it is not
    // delivered; the direct wake after the reply is.
    let release = wakeups.releasing_here("job", true);
    let id = release.id().to_owned();
    assert!(!wakes(&interest, || wakeups.event("job", Some(&id), None)));
    assert!(wakes(&interest, || release.released_here(&free)));
    // Someone else's release: delivered.
    assert!(wakes(&interest, || wakeups.event(
        "job",
        Some("other"),
        None
    )));
    // A release that did not happen leaves events alone.
    let failed = wakeups.releasing_here("job", true);
    let id = failed.id().to_owned();
    drop(failed);
    assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
    // A release into a minimum hold has no event to hold back.
    let held = wakeups.releasing_here("job", false);
    let id = held.id().to_owned();
    held.released_here(&free);
    assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
    // A reopened stream forgets its own releases: their events may be lost.
    let pending = wakeups.releasing_here("job", true);
    let id = pending.id().to_owned();
    wakeups.set_status(DOWN);
    wakeups.set_status(OPEN);
    assert!(wakes(&interest, || wakeups.event("job", Some(&id), None)));
    drop(pending);
}

#[tokio::test]
async fn a_release_whose_reply_was_lost_still_wakes_by_its_event() {
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let interest = wakeups.subscribe("job", None);
    wakeups.set_status(OPEN);
    // The event comes first, then the reply is lost: the event is held,
    // then delivered when the release gives up.
    let lost = wakeups.releasing_here("job", true);
    let id = lost.id().to_owned();
    assert!(!wakes(&interest, || wakeups.event("job", Some(&id), None)));
    assert!(wakes(&interest, || drop(lost)));
    // The event first, then the reply: one wake, by the reply.
    let replied = wakeups.releasing_here("job", true);
    let id = replied.id().to_owned();
    assert!(!wakes(&interest, || wakeups.event("job", Some(&id), None)));
    assert!(wakes(&interest, || replied.released_here(&doc! {})));
    // The reply first, then the event: one wake, by the reply.
    let replied = wakeups.releasing_here("job", true);
    let id = replied.id().to_owned();
    assert!(wakes(&interest, || replied.released_here(&doc! {})));
    assert!(!wakes(&interest, || wakeups.event("job", Some(&id), None)));
}

#[tokio::test]
async fn a_release_wakes_only_the_queue_head() {
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let first = wakeups.subscribe("job", Some("c1"));
    let second = wakeups.subscribe("job", Some("c2"));
    let here = wakeups.tag().to_owned();
    // The second in line here is the head: it alone is woken.
    let doc = headed_by(&here, "c2");
    assert!(!wakes(&first, || wakeups.event("job", None, Some(&doc))));
    assert!(wakes(&second, || wakeups.event("job", None, Some(&doc))));
    // Another process's head: nobody here.
    let doc = headed_by("elsewhere", "c1");
    assert!(!wakes(&first, || wakeups.event("job", None, Some(&doc))));
    let release = wakeups.releasing_here("job", true);
    let doc = headed_by("elsewhere", "x");
    assert!(!wakes(&first, || release.released_here(&doc)));
    // A head that left: the oldest waiter here looks.
    let doc = headed_by(&here, "gone");
    assert!(wakes(&first, || wakeups.event("job", None, Some(&doc))));
}

#[tokio::test]
async fn a_release_that_hands_over_gives_the_lock_to_its_waiter_only() {
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let first = wakeups.subscribe("job", Some("c1"));
    let second = wakeups.subscribe("job", Some("c2"));
    wakeups.set_status(OPEN);
    let here = wakeups.tag().to_owned();
    // Handed over to the second waiter here, by another process.
    let doc = handed_to(&here, "c2", "r1");
    let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
    assert!(wakes(&second, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
    assert!(!wakes(&first, || {}), "only the waiter it was given to");
    assert!(first.take_handed_over().is_none());
    let given = second.take_handed_over().expect("handed over");
    assert_eq!(
        (given.token, given.owner.as_deref()),
        (7, Some("next-owner"))
    );
    assert!(second.take_handed_over().is_none(), "given once");
    // The looked-up document shows a later release: old news, nobody
    // is given anything.
    let later = handed_to(&here, "c2", "r2");
    assert!(!wakes(&second, || wakeups.event(
        "job",
        Some(&id),
        Some(&later)
    )));
    assert!(second.take_handed_over().is_none());
    // Handed over to another process: nobody here is woken...
    let mut doc = handed_to("elsewhere", "c1", "r3");
    let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
    assert!(!wakes(&first, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
    // ... unless a waiter here is the queue's head now: it waits for the
    // new holder's lease from now on.
    doc.insert(
        crate::query::QUEUE,
        vec![doc! { crate::query::WAITER: "c1", crate::query::PROCESS: &here }],
    );
    assert!(wakes(&first, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
    assert!(
        first.take_handed_over().is_none(),
        "woken, not given the lock"
    );
    // This process's own release hands over directly from its reply;
    // its event then does nothing more.
    let release = wakeups.releasing_here("job", true);
    let doc = handed_to(&here, "c1", release.id());
    let id = doc.get_str(RELEASE_ID).unwrap().to_owned();
    assert!(wakes(&first, || release.released_here(&doc)));
    assert!(first.take_handed_over().is_some());
    assert!(!wakes(&first, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
    assert!(first.take_handed_over().is_none());
}

#[test]
fn release_ids_say_what_the_write_did() {
    let head = |process: &str, waiter: &str| {
        Some(Head {
            process: process.to_owned(),
            waiter: waiter.to_owned(),
        })
    };
    let cases = [
        ("r1", "r1", None, None),
        ("r1*", "r1", None, None),
        ("r1^p2:c2", "r1", None, head("p2", "c2")),
        ("r1@p1", "r1", Some("p1"), None),
        ("r1@p1^p2:c2", "r1", Some("p1"), head("p2", "c2")),
        ("r1^p2", "r1", None, None),
    ];
    for (id, own, granted_to, turn) in cases {
        assert_eq!(
            Marks::of(id),
            Marks {
                own,
                granted_to,
                turn
            },
            "{id}"
        );
    }
}

#[tokio::test]
async fn an_event_with_only_the_changed_fields_wakes_whom_its_release_id_names() {
    // Which of two waiters here (claims c1, c2) an event wakes, given its
    // release id (made from this process's tag) and only the fields it
    // changed (MongoDB 5.0+), which name nothing else.
    let woken = |id: &dyn Fn(&str) -> String| {
        let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
        let waiters = [
            wakeups.subscribe("job", Some("c1")),
            wakeups.subscribe("job", Some("c2")),
        ];
        let id = id(wakeups.tag());
        let changed = marks::changed_view("job", &doc! { RELEASE_ID: &id });
        let mut notified: Vec<_> = waiters.iter().map(|w| Box::pin(w.notified())).collect();
        for n in &mut notified {
            n.as_mut().enable();
        }
        wakeups.event("job", Some(&id), Some(&changed));
        notified
            .into_iter()
            .map(|n| n.now_or_never().is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(woken(&|here| format!("r1{TURN}{here}:c2")), [false, true]);
    assert_eq!(woken(&|_| format!("r1{TURN}elsewhere:c2")), [false, false]);
    // Free with nobody queued: the oldest waiter here looks.
    assert_eq!(woken(&|_| format!("r1{ANYONE}")), [true, false]);
    // Handed to another process, this process's waiter next in line.
    assert_eq!(
        woken(&|here| format!("r1{GRANTED_TO}elsewhere{TURN}{here}:c2")),
        [false, true]
    );
    // A whole document's queue is the truth, whatever an older release id
    // says (a write that sets none, such as an attempt, left it).
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let first = wakeups.subscribe("job", Some("c1"));
    let second = wakeups.subscribe("job", Some("c2"));
    let doc = headed_by(wakeups.tag(), "c2");
    let id = format!("r1{TURN}elsewhere:c9");
    assert!(!wakes(&first, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
    assert!(wakes(&second, || wakeups.event(
        "job",
        Some(&id),
        Some(&doc)
    )));
}

#[tokio::test]
async fn a_hand_over_is_told_by_the_fields_it_changed() {
    let wakeups = Arc::new(Wakeups::new(false, Duration::ZERO));
    let waiter = wakeups.subscribe("job", Some("c2"));
    let here = wakeups.tag().to_owned();
    let mut fields = handed_to(&here, "c2", "r1");
    let id = fields.get_str(RELEASE_ID).unwrap().to_owned();
    // The owner did not change (the same name), so it is not among them.
    fields.remove(OWNER);
    fields.remove("_id");
    let changed = marks::changed_view("job", &fields);
    assert!(wakes(&waiter, || wakeups.event(
        "job",
        Some(&id),
        Some(&changed)
    )));
    let given = waiter.take_handed_over().expect("handed over");
    assert_eq!((given.token, given.owner), (7, None));
    // Without the new token it is only woken, to ask the server.
    fields.remove(TOKEN);
    let id = format!("r2{GRANTED_TO}{here}");
    fields.insert(RELEASE_ID, &id);
    let changed = marks::changed_view("job", &fields);
    assert!(wakes(&waiter, || wakeups.event(
        "job",
        Some(&id),
        Some(&changed)
    )));
    assert!(waiter.take_handed_over().is_none());
}
