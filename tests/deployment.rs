//! What production does to a lock that one healthy test server does not:
//! stalls, elections, shutdowns, cancelled futures, a reused owner name,
//! changed settings. Each test names the failure it models.
//!
//! Tests with fail points run their own server ([`FaultServer`]) and ignore
//! `MONGODB_URI`; the others use the shared one.

use std::time::Duration;

use mongodb::bson::doc;
use mongolock::{mongo_locked, Error, MongoLock};
use mongolock_suite::{fresh_collection, fresh_lock, Commands, FaultServer};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);
/// How long an injected stall lasts: far longer than any bound under test,
/// so returning before it ends shows the bound, not the stall, ended the wait.
const STALL: Duration = Duration::from_secs(15);

/// The commands a release sends.
const RELEASES: [&str; 2] = ["update", "findAndModify"];

fn stall(commands: &[&str]) -> mongodb::bson::Document {
    doc! {
        "failCommands": commands,
        "blockConnection": true,
        "blockTimeMS": STALL.as_millis() as i64,
    }
}

// ---- 1. Clock drift: the holder's view ends before the server's ----------

#[tokio::test]
async fn drift_allowance_is_skew_plus_one_percent_plus_rounding() {
    let lock = fresh_lock("drift_allowance").await;
    assert_eq!(
        lock.drift_allowance(Duration::from_secs(60)),
        mongolock::DEFAULT_MAX_CLOCK_SKEW + Duration::from_millis(601)
    );
    let lock = lock.with_max_clock_skew(Duration::from_secs(2)).unwrap();
    assert_eq!(
        lock.drift_allowance(Duration::from_secs(10)),
        Duration::from_millis(2101)
    );
}

#[tokio::test]
async fn guard_counts_its_lease_lost_before_the_server_frees_it() {
    let lock = fresh_lock("lost_before_server")
        .await
        .with_max_clock_skew(Duration::from_millis(300))
        .unwrap();
    let guard = lock
        .acquire("job")
        .expires(Duration::from_secs(1))
        .await
        .unwrap();
    let lost = guard.lost().await;
    assert!(matches!(lost, Error::LockLost { .. }), "{lost:?}");
    // The holder gave up while the server still keeps everyone else out.
    assert!(lock.is_locked("job").await.unwrap());
    assert!(!lock.lock("job", "other").await.unwrap());
}

#[tokio::test]
async fn clock_settings_that_could_repeat_a_token_are_refused() {
    let lock = fresh_lock("clock_settings").await;
    for after in [Duration::from_secs(1), Duration::from_secs(59)] {
        let refused = lock.clone().with_cleanup_after(after);
        assert!(
            matches!(
                refused,
                Err(Error::InvalidDuration {
                    what: "cleanup_after",
                    ..
                })
            ),
            "{after:?}: {refused:?}"
        );
    }
    let refused = lock
        .clone()
        .with_max_clock_skew(mongolock::DEFAULT_CLEANUP_AFTER);
    assert!(
        matches!(refused, Err(Error::InvalidDuration { .. })),
        "{refused:?}"
    );
    let skewed = lock.with_max_clock_skew(Duration::from_secs(90)).unwrap();
    assert!(skewed
        .clone()
        .with_cleanup_after(Duration::from_secs(90))
        .is_err());
    assert!(skewed.with_cleanup_after(Duration::from_secs(91)).is_ok());
}

// ---- 3. 4. Nothing waits unbounded ------------------------------------------

#[tokio::test]
async fn waiter_returns_at_its_timeout_while_the_server_clock_read_stalls() {
    let fx = FaultServer::start(&[]).await;
    let holder = fx.lock("holder").await;
    let waiter = fx.lock("waiter").await;
    let _held = holder
        .acquire("job")
        .expires(Duration::from_secs(60))
        .await
        .unwrap();
    // The waiter's connection exists, so only its clock read (a `hello`)
    // meets the stall.
    assert!(waiter.is_locked("job").await.unwrap());
    fx.fail(1, "waiter", stall(&["hello"])).await;
    let started = Instant::now();
    let waited = waiter
        .acquire("job")
        .timeout(Duration::from_millis(500))
        .await;
    // Locked, or TimedOut if the driver's own heartbeat met the stall first
    // and the server looked unreachable: either way, at the timeout.
    assert!(
        matches!(waited, Err(Error::Locked { .. } | Error::TimedOut { .. })),
        "{waited:?}"
    );
    assert!(started.elapsed() < STALL, "the wait outlived its timeout");
}

#[tokio::test]
async fn release_returns_within_the_operation_timeout_when_the_server_stalls() {
    let fx = FaultServer::start(&[]).await;
    let lock = fx
        .lock("holder")
        .await
        .with_operation_timeout(Duration::from_millis(500))
        .unwrap();
    let guard = lock
        .acquire("job")
        .expires(Duration::from_secs(60))
        .await
        .unwrap();
    // A release is an update (no queue seen) or a findAndModify (the
    // hand-over, which returns the queue): the first of either stalls.
    fx.fail(1, "holder", stall(&RELEASES)).await;
    let released = guard.release().await;
    assert!(
        matches!(released, Err(Error::TimedOut { .. })),
        "{released:?}"
    );
}

/// A job whose body makes the release after it stall (a release and an
/// acquisition are both among `RELEASES`).
#[mongo_locked(key = "job", lock = lock, expires = 60)]
async fn stalling_job(lock: &MongoLock, fx: &FaultServer) -> Result<&'static str, Error> {
    fx.fail(1, "holder", stall(&RELEASES)).await;
    Ok("done")
}

#[tokio::test]
async fn locked_function_returns_when_its_release_stalls() {
    let fx = FaultServer::start(&[]).await;
    let lock = fx
        .lock("holder")
        .await
        .with_operation_timeout(Duration::from_millis(500))
        .unwrap();
    // The acquisition goes through; the release after the body stalls.
    assert_eq!(stalling_job(&lock, &fx).await.unwrap(), "done");
}

// ---- 5. Transient errors during a wait --------------------------------------

#[tokio::test]
async fn waiter_rides_through_not_primary_errors_until_it_gets_the_lock() {
    let fx = FaultServer::start(&[]).await;
    // "Not primary" makes the driver look for a primary again; let it look
    // as often as it may, as it would during a real election.
    let mut options = mongodb::options::ClientOptions::parse(fx.server.uri())
        .await
        .unwrap();
    options.app_name = Some("waiter".to_owned());
    options.heartbeat_freq = Some(Duration::from_millis(500));
    let client = mongodb::Client::with_options(options).unwrap();
    let waiter = MongoLock::with_collection(client.database("faults").collection("lock"));
    // An election: "not writable primary" three times, more than the
    // driver's own single retry absorbs.
    fx.fail(
        3,
        "waiter",
        doc! { "failCommands": ["findAndModify"], "errorCode": 10107 },
    )
    .await;
    let guard = waiter.acquire("job").timeout(WAIT).await.unwrap();
    assert!(guard.release().await.unwrap());
}

#[tokio::test]
async fn acquisition_cut_off_at_its_deadline_leaves_no_lock_behind() {
    let fx = FaultServer::start(&[]).await;
    let waiter = fx
        .lock("waiter")
        .await
        .with_operation_timeout(Duration::from_secs(10))
        .unwrap();
    assert!(!waiter.is_locked("job").await.unwrap());
    // The attempt reaches the server, which applies it only after the
    // caller has given up.
    fx.fail(
        1,
        "waiter",
        doc! { "failCommands": ["findAndModify"], "blockConnection": true, "blockTimeMS": 1500 },
    )
    .await;
    let cut = waiter
        .acquire("job")
        .expires(Duration::from_secs(60))
        .timeout(Duration::from_millis(100))
        .await;
    assert!(matches!(cut, Err(Error::TimedOut { .. })), "{cut:?}");
    assert!(waiter.finish_releases(WAIT).await);
    assert!(
        !waiter.is_locked("job").await.unwrap(),
        "an orphaned lease is left for a whole minute"
    );
}

// ---- 8. Wake-ups: the change stream's filter ------------------------------

/// Every shape of change event a lock document produces, on MongoDB 4.4
/// (pipeline updates reported as `replace`) and 5.0+ (as `update`), and
/// whether a waiter of the process tagged `here` can take the lock after it
/// or was handed it.
#[tokio::test]
async fn release_event_filter_matches_releases_in_every_event_shape() {
    let events = fresh_collection("event_shapes").await;
    let updated = |fields: mongodb::bson::Document, removed: Vec<&str>| {
        doc! { "operationType": "update", "updateDescription": {
            "updatedFields": fields, "removedFields": removed,
        } }
    };
    let now = mongodb::bson::DateTime::now();
    let shapes = [
        (
            "release",
            true,
            updated(
                doc! { "expires_at": now, "expire": now, "locked": false, "release_id": "r1*" },
                vec!["owner", "claim"],
            ),
        ),
        (
            "force release in a minimum hold",
            true,
            updated(
                doc! { "expires_at": now, "expire": now, "locked": false, "release_id": "r1*" },
                vec![],
            ),
        ),
        (
            // Not this crate's release (no release id): our lease still
            // runs, so no waiter of ours could take the lock.
            "an update of locked alone",
            false,
            updated(doc! { "locked": false }, vec![]),
        ),
        (
            // It replaces the whole document: our queue and release id are
            // gone, so every process's oldest waiter is told.
            "release by the Python package",
            true,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": false, "owner": null, "created": null, "expire": null,
            } },
        ),
        ("document deleted", true, doc! { "operationType": "delete" }),
        (
            "release into a minimum hold, 5.0",
            false,
            updated(
                doc! { "expires_at": now, "expire": now, "release_id": "r1" },
                vec!["owner", "claim"],
            ),
        ),
        (
            "renewal, 5.0",
            false,
            updated(doc! { "expires_at": now, "expire": now }, vec![]),
        ),
        (
            "takeover, 5.0",
            false,
            updated(
                doc! { "owner": "b", "token": 7_i64, "locked": true },
                vec![],
            ),
        ),
        (
            "first acquisition",
            false,
            doc! { "operationType": "insert", "fullDocument": { "owner": "a", "locked": true } },
        ),
        (
            "renewal, 4.4",
            false,
            doc! { "operationType": "replace", "fullDocument": { "owner": "a", "locked": true } },
        ),
        (
            "release into a minimum hold, 4.4",
            false,
            doc! { "operationType": "replace", "fullDocument": { "locked": true, "release_id": "r1" } },
        ),
        (
            "release rewritten whole, 4.4",
            true,
            doc! { "operationType": "replace", "fullDocument": { "locked": false, "release_id": "r1*" } },
        ),
        (
            "release, the queue headed by a waiter here",
            true,
            updated(doc! { "locked": false, "release_id": "r1^here:c1" }, vec![]),
        ),
        (
            "release, the queue headed by a waiter elsewhere",
            false,
            updated(
                doc! { "locked": false, "release_id": "r1^elsewhere:c1" },
                vec![],
            ),
        ),
        (
            "release, 4.4, the queue headed here",
            true,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": false, "release_id": "r1^here:c1",
                "queue": [{ "w": "c1", "p": "here" }, { "w": "c2", "p": "elsewhere" }],
            } },
        ),
        (
            "release, 4.4, the queue headed elsewhere",
            false,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": false, "release_id": "r1^elsewhere:c1",
                "queue": [{ "w": "c1", "p": "elsewhere" }, { "w": "c2", "p": "here" }],
            } },
        ),
        (
            "a waiter leaving the queue of a free lock, the new head here",
            true,
            updated(
                doc! { "release_id": "l1^here:c2", "queue": [{ "w": "c2", "p": "here" }] },
                vec![],
            ),
        ),
        (
            "a waiter leaving the queue of a free lock, the new head elsewhere",
            false,
            updated(doc! { "release_id": "l1^elsewhere:c2" }, vec![]),
        ),
        (
            "a waiter leaving the queue of a free lock, nobody left",
            true,
            updated(doc! { "release_id": "l1*", "queue": [] }, vec![]),
        ),
        (
            "a waiter leaving the queue of a held lock",
            false,
            updated(doc! { "release_id": "l1", "queue": [] }, vec![]),
        ),
        (
            "a waiter leaving the queue of a free lock, 4.4, the new head here",
            true,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": false, "release_id": "l1^here:c2", "queue": [{ "w": "c2", "p": "here" }],
            } },
        ),
        (
            "a waiter leaving the queue of a held lock, 4.4",
            false,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": true, "release_id": "l1", "queue": [{ "w": "c2", "p": "here" }],
            } },
        ),
        (
            "release that hands the lock to a waiter here",
            true,
            updated(
                doc! { "owner": "b", "claim": "c1", "token": 7_i64, "release_id": "r1@here" },
                vec![],
            ),
        ),
        (
            "release that hands the lock to a waiter here, the next in line elsewhere",
            true,
            updated(
                doc! { "owner": "b", "claim": "c1", "token": 7_i64, "release_id": "r1@here^elsewhere:c2" },
                vec![],
            ),
        ),
        (
            "release that hands the lock to a waiter elsewhere, the new head elsewhere",
            false,
            updated(
                doc! { "owner": "b", "claim": "c1", "token": 7_i64, "release_id": "r1@elsewhere^elsewhere:c2" },
                vec![],
            ),
        ),
        // The new head here must now wait for the new holder's lease (if
        // that holder dies, the head takes over when it ends).
        (
            "release that hands the lock to a waiter elsewhere, the new head here",
            true,
            updated(
                doc! { "owner": "b", "claim": "c1", "token": 7_i64, "release_id": "r1@elsewhere^here:c2" },
                vec![],
            ),
        ),
        (
            "release that hands the lock to a waiter in a process whose tag begins with this one's",
            false,
            updated(
                doc! { "owner": "b", "claim": "c1", "token": 7_i64, "release_id": "r1@herewith" },
                vec![],
            ),
        ),
        (
            "release that hands the lock to a waiter here, 4.4",
            true,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": true, "owner": "b", "claim": "c1", "release_id": "r1@here",
            } },
        ),
        (
            "release that hands the lock to a waiter elsewhere, 4.4, the new head here",
            true,
            doc! { "operationType": "replace", "fullDocument": {
                "locked": true, "owner": "b", "claim": "c1", "release_id": "r1@elsewhere^here:c2",
                "queue": [{ "w": "c2", "p": "here" }],
            } },
        ),
    ];
    for (name, _, event) in &shapes {
        let mut event = event.clone();
        event.insert("_id", *name);
        events.insert_one(event).await.unwrap();
    }
    // Releases that leave no queue: only a process with a waiter outside
    // any queue (the wide filter) is told of them.
    let no_queue = [
        "release",
        "force release in a minimum hold",
        "release rewritten whole, 4.4",
        "a waiter leaving the queue of a free lock, nobody left",
    ];
    for wide in [true, false] {
        let filter = mongolock::__private::raw::release_events("here", wide)
            .into_iter()
            .next()
            .unwrap();
        let mut cursor = events.aggregate([filter]).await.unwrap();
        let mut matched = Vec::new();
        while cursor.advance().await.unwrap() {
            matched.push(cursor.current().get_str("_id").unwrap().to_owned());
        }
        for (name, wakes, _) in &shapes {
            let wakes = *wakes && (wide || !no_queue.contains(name));
            assert_eq!(
                matched.contains(&name.to_string()),
                wakes,
                "{name}, wide: {wide}"
            );
        }
    }
}

#[tokio::test]
async fn force_release_during_a_minimum_hold_wakes_a_waiter_elsewhere() {
    let collection = fresh_collection("force_release_wakes").await;
    let holder = MongoLock::with_collection(collection.clone());
    let (waiter, commands) = Commands::lock(&collection).await;
    let admin = MongoLock::with_collection(collection);
    let guard = holder
        .acquire("job")
        .min_hold(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(guard.release().await.unwrap());
    let waited = tokio::spawn(async move { waiter.acquire("job").timeout(WAIT).await });
    // The waiter found the lock held (for the minimum hold's 60 s).
    commands.until(|c| c.count("findAndModify").1 >= 1).await;
    assert!(admin.force_release("job").await.unwrap());
    let guard = waited.await.unwrap().unwrap();
    assert!(guard.release().await.unwrap());
}

// ---- 9. Release at shutdown and cancellation --------------------------------

#[tokio::test]
async fn cancelled_release_is_finished_in_the_background() {
    let lock = fresh_lock("cancelled_release").await;
    let guard = lock.acquire("job").await.unwrap();
    // Polled once (the request is on its way), then dropped.
    let cut = tokio::time::timeout(Duration::ZERO, guard.release()).await;
    assert!(cut.is_err(), "the release finished at its first poll");
    assert!(lock.finish_releases(WAIT).await);
    assert!(!lock.is_locked("job").await.unwrap());
}

#[test]
fn guard_dropped_at_the_end_of_main_is_released_by_finish_releases() {
    // A client belongs to the runtime that made it: each run makes its own.
    let name = format!("end_of_main_{:08x}", rand::random::<u32>());
    let lock_in_this_runtime = || async {
        let uri = mongolock_suite::server_uri().unwrap();
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        MongoLock::with_collection(client.database("mongolock_test").collection(&name))
    };
    // The shape of `#[tokio::main]`: the runtime ends right after the body.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let lock = lock_in_this_runtime().await;
        let guard = lock.acquire("job").await.unwrap();
        drop(guard);
        assert!(lock.finish_releases(WAIT).await);
    });
    let free = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { lock_in_this_runtime().await.lock("job", "next-run").await });
    assert!(free.unwrap(), "the next cron run is locked out");
}

// ---- 10. Re-entry only for the Python-shaped lock(key, owner) ---------------

#[tokio::test]
async fn guards_with_one_owner_name_never_share_a_lock() {
    let lock = fresh_lock("same_owner_guards").await;
    let first = lock.acquire("job").owner("host-1-cron").await.unwrap();
    let second = lock.acquire("job").owner("host-1-cron").await;
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    // The Python-shaped call keeps its re-entry by owner name.
    assert!(lock.lock("py", "worker").await.unwrap());
    assert!(lock.lock("py", "worker").await.unwrap());
    let next = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire("job").owner("host-1-cron").timeout(WAIT).await }
    });
    let first_token = first.token();
    assert!(first.release().await.unwrap());
    let next = next.await.unwrap().unwrap();
    assert!(next.token() > first_token);
}

// ---- 11. Changing the cleanup delay of an existing index ------------------

#[tokio::test]
async fn changed_cleanup_delay_updates_the_existing_ttl_index() {
    let collection = fresh_collection("ttl_change").await;
    let ttl_seconds = || async {
        let mut cursor = collection.list_indexes().await.unwrap();
        let mut seconds = None;
        while cursor.advance().await.unwrap() {
            let index = cursor.deserialize_current().unwrap();
            if let Some(options) = index.options {
                if options.name.as_deref() == Some("mongolock_expires_at_ttl") {
                    seconds = options.expire_after.map(|d| d.as_secs());
                }
            }
        }
        seconds
    };
    let first = MongoLock::with_collection(collection.clone());
    assert!(first.lock("job", "a").await.unwrap());
    first.ensure_ttl_index().await.unwrap();
    assert_eq!(
        ttl_seconds().await,
        Some(mongolock::DEFAULT_CLEANUP_AFTER.as_secs())
    );
    let second = MongoLock::with_collection(collection.clone())
        .with_cleanup_after(Duration::from_secs(3600))
        .unwrap();
    assert!(second.lock("other", "b").await.unwrap());
    second.ensure_ttl_index().await.unwrap();
    assert_eq!(ttl_seconds().await, Some(3600));
}

// ---- Real deployments: connection strings, elections, the driver ---------

/// `mongodb://user:pw@host/admin` names the database to authenticate
/// against in many old connection strings; locks never go there (nor to
/// `local` or `config`), while a database of the application's is used.
#[tokio::test]
async fn system_databases_in_the_connection_string_are_never_the_lock_database() {
    for (path, expected) in [
        ("/admin", "mongolock"),
        ("/local", "mongolock"),
        ("/config", "mongolock"),
        ("/jobs", "jobs"),
        ("", "mongolock"),
    ] {
        // Connecting is lazy: nothing is sent to this address.
        let uri = format!("mongodb://user:pw@127.0.0.1:1{path}?authSource=admin");
        let lock = MongoLock::connect(&uri).await.unwrap();
        assert_eq!(lock.collection().namespace().db, expected, "{uri}");
    }
}

/// While a new primary is chosen or catches up, servers answer 133
/// (FailedToSatisfyReadPreference) and 134
/// (ReadConcernMajorityNotAvailableYet): a waiter rides through them as
/// through "not primary".
#[tokio::test]
async fn waiter_rides_through_the_errors_of_an_election_in_progress() {
    let fx = FaultServer::start(&[]).await;
    let waiter = fx.lock("waiter").await;
    for code in [133, 134] {
        fx.fail(
            3,
            "waiter",
            doc! { "failCommands": ["findAndModify"], "errorCode": code },
        )
        .await;
        let guard = waiter.acquire(format!("job{code}")).timeout(WAIT).await;
        let guard = guard.unwrap_or_else(|e| panic!("{code}: {e:?}"));
        assert!(guard.release().await.unwrap());
    }
}

/// Driver versions before 3.8.1 reported a write concern error on
/// `findAndModify` as success (RUST-2479): the workspace asks for 3.8.1 at
/// least, and the lockfile holds such a version.
#[test]
fn the_driver_is_one_that_reports_write_concern_errors_of_find_and_modify() {
    let version = |text: &str, prefix: &str| -> (u32, u32, u32) {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?}"));
        let digits: Vec<u32> = line
            .split('"')
            .next()
            .unwrap()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect();
        (
            digits[0],
            *digits.get(1).unwrap_or(&0),
            *digits.get(2).unwrap_or(&0),
        )
    };
    let root = mongolock_suite::workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(version(&manifest, "mongodb = { version = \"") >= (3, 8, 1));
    let lockfile = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let locked = lockfile
        .split("[[package]]")
        .find(|p| p.contains("name = \"mongodb\"\n"))
        .unwrap();
    assert!(version(locked, "version = \"") >= (3, 8, 1));
}

/// A change stream that cannot be opened for good (73, InvalidNamespace,
/// as on `admin`; 40573, as a standalone server answers) is given up after
/// one try: waiters poll, and the lock is still taken once it is free; no
/// reopen every second for as long as they wait.
#[tokio::test]
async fn a_stream_that_cannot_be_watched_is_tried_once_and_waiters_poll() {
    let fx = FaultServer::start(&[]).await;
    let holder = fx.lock("holder").await;
    let collection = holder.collection().clone();
    for code in [73, 40573] {
        let (waiter, commands) =
            mongolock_suite::Commands::lock_at(fx.server.uri(), Some("waiter"), &collection).await;
        fx.fail(
            10,
            "waiter",
            doc! { "failCommands": ["aggregate"], "errorCode": code },
        )
        .await;
        let key = format!("job{code}");
        let held = holder
            .acquire(key.as_str())
            .expires(Duration::from_secs(3))
            .await
            .unwrap();
        let guard = waiter.acquire(key).timeout(WAIT).await.unwrap();
        assert!(guard.token() > held.token());
        assert_eq!(
            commands.count("aggregate").0,
            1,
            "{code}: the stream was opened again"
        );
        assert!(guard.release().await.unwrap());
    }
}

/// An index build can wait a long time (on a replica set with a voting
/// member down, for that member): the first acquisition of a process does
/// not wait for the TTL index, which is built in the background.
#[tokio::test]
async fn the_first_acquisition_does_not_wait_for_the_ttl_index() {
    let fx = FaultServer::start(&[]).await;
    let collection = fx.lock("setup").await.collection().clone();
    let (lock, commands) =
        mongolock_suite::Commands::lock_at(fx.server.uri(), Some("holder"), &collection).await;
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["createIndexes"], "blockConnection": true, "blockTimeMS": 30_000 },
    )
    .await;
    let guard = lock.acquire("job").await.unwrap();
    assert_eq!(
        commands.count("createIndexes").1,
        0,
        "the acquisition waited for the index build"
    );
    assert!(guard.release().await.unwrap());
}

/// With an arbiter and one data-bearing member down, a majority write
/// cannot commit: every lock write comes back with a write concern error
/// (64, WriteConcernFailed, when `wtimeout` passes). A waiter rides it
/// until its deadline and then fails with a typed timeout that keeps the
/// server's error as its cause; nothing is believed held, and what the
/// unconfirmed attempts may have written on the primary is released.
#[tokio::test]
async fn writes_a_majority_cannot_confirm_end_in_a_typed_timeout_and_hold_nothing() {
    let fx = FaultServer::start(&[]).await;
    let waiter = fx.lock("waiter").await;
    let other = fx.lock("other").await;
    fx.fail(
        1000,
        "waiter",
        doc! {
            "failCommands": ["findAndModify"],
            "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" },
        },
    )
    .await;
    let waited = waiter
        .acquire("job")
        .timeout(Duration::from_millis(800))
        .await;
    match waited {
        Err(Error::TimedOut { cause, .. }) => {
            let cause = cause.expect("the server's error is kept as the cause");
            assert!(
                cause.to_string().contains("64") || cause.to_string().contains("replication"),
                "{cause}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The attempts were applied on the primary (w:1) but never confirmed:
    // the waiter's give-up releases them, so the lock is free at once.
    assert!(waiter.finish_releases(Duration::from_secs(10)).await);
    let guard = other.acquire("job").await.unwrap();
    assert!(guard.release().await.unwrap());
}

/// The holder's side of the arbiter case: once majority writes cannot
/// commit, its renewals come back with the write concern error, so it
/// reports the lock lost when its lease runs out, never holding it longer.
#[tokio::test]
async fn a_holder_whose_renewals_a_majority_cannot_confirm_loses_its_lock_at_the_lease_end() {
    let fx = FaultServer::start(&[]).await;
    let holder = fx.lock("holder").await;
    let lease = Duration::from_secs(1);
    let guard = holder
        .acquire("job")
        .expires(lease)
        .renew_every(lease / 4)
        .await
        .unwrap();
    fx.fail(
        1000,
        "holder",
        doc! {
            "failCommands": ["findAndModify"],
            "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" },
        },
    )
    .await;
    match guard.lost().await {
        Error::LockLost { reason, .. } => assert!(reason.contains("ran out"), "{reason}"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert!(guard.is_lost());
}

/// Against a server that refuses connections, a wait that times out before
/// the driver's server selection does says why: the driver's last heartbeat
/// failure is its cause, so a wrong host is not mistaken for a busy lock.
#[tokio::test]
async fn a_timeout_against_an_unreachable_server_keeps_the_drivers_cause() {
    // Nothing listens on port 1; selection would give up after 5 s.
    let lock = MongoLock::connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=5000")
        .await
        .unwrap();
    let waited = lock
        .acquire("job")
        .timeout(Duration::from_millis(500))
        .await;
    match waited {
        Err(error @ Error::TimedOut { .. }) => {
            let source =
                std::error::Error::source(&error).unwrap_or_else(|| panic!("no cause in {error}"));
            let cause = source.to_string().to_lowercase();
            assert!(
                cause.contains("refused") || cause.contains("connect"),
                "{cause}"
            );
            assert!(error.to_string().contains("last error"), "{error}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

// ---- MongoLock::check: what an operator sees at start-up -----------------

/// `check` reports the test server as it is: a one-member replica set with
/// change streams, the lock collection's majority write concern, the
/// server's clock against ours, and the TTL index once it is built.
#[tokio::test]
async fn check_reports_the_deployment_it_sees() {
    let lock = fresh_lock("check_reports").await;
    let before = lock.check().await.unwrap();
    assert!(!before.ttl_index, "{before}");
    assert!(
        before.clock_offset_millis.abs() < 60_000,
        "the test server runs on this machine's clock: {before}"
    );
    match &before.topology {
        mongolock::Topology::Standalone => {
            assert_ne!(before.change_streams, mongolock::ChangeStreams::Available)
        }
        _ => assert_eq!(before.change_streams, mongolock::ChangeStreams::Available),
    }
    assert_eq!(before.write_concern, None, "the collection sets none");
    // A lock made with the crate's defaults writes with majority.
    let uri = mongolock_suite::server_uri().unwrap();
    let defaults = MongoLock::connect(&uri)
        .await
        .unwrap()
        .check()
        .await
        .unwrap();
    let w = defaults.write_concern.as_ref().and_then(|wc| wc.w.clone());
    assert_eq!(w, Some(mongodb::options::Acknowledgment::Majority));
    lock.ensure_ttl_index().await.unwrap();
    let after = lock.check().await.unwrap();
    assert!(after.ttl_index, "{after}");
    let report = after.to_string();
    for line in [
        "topology",
        "change streams",
        "server clock",
        "write concern",
        "TTL index",
    ] {
        assert!(report.contains(line), "{report}");
    }
    // It leaves no lock behind.
    assert!(lock.list().await.unwrap().is_empty());
}

/// Servers before 4.4.2 do not know `hello` (59, CommandNotFound): the
/// clock reading falls back to `isMaster`.
#[tokio::test]
async fn the_clock_is_read_with_is_master_where_hello_is_unknown() {
    let fx = FaultServer::start(&[]).await;
    let collection = fx.lock("setup").await.collection().clone();
    // The driver's own monitor must not meet the fail point: it polls, and
    // rarely.
    let uri = fx.server.uri();
    let sep = if uri.contains('?') { '&' } else { '?' };
    let uri = format!("{uri}{sep}serverMonitoringMode=poll&heartbeatFrequencyMS=600000");
    let (lock, commands) = Commands::lock_at(&uri, Some("old"), &collection).await;
    lock.is_locked("warm-up").await.unwrap();
    fx.fail(
        1,
        "old",
        doc! { "failCommands": ["hello"], "errorCode": 59 },
    )
    .await;
    let report = lock.check().await.unwrap();
    assert!(
        commands.count("isMaster").1 >= 1,
        "{:?}",
        commands.started()
    );
    assert!(report.clock_offset_millis.abs() < 60_000, "{report}");
}

/// A privilege the locks need and the user lacks (the server answers 13,
/// Unauthorized) comes back as one error naming it.
#[tokio::test]
async fn check_names_the_privilege_that_is_missing() {
    let fx = FaultServer::start(&[]).await;
    let lock = fx.lock("app").await;
    for (command, privilege) in [
        ("find", "find"),
        ("insert", "insert"),
        ("update", "update"),
        ("delete", "remove"),
        ("listIndexes", "listIndexes"),
        ("aggregate", "changeStream"),
    ] {
        fx.fail(
            1,
            "app",
            doc! { "failCommands": [command], "errorCode": 13 },
        )
        .await;
        match lock.check().await {
            Err(error @ Error::MissingPrivilege { .. }) => {
                let Error::MissingPrivilege {
                    privilege: named, ..
                } = &error
                else {
                    unreachable!()
                };
                assert_eq!(*named, privilege, "{error}");
                assert!(error.to_string().contains(privilege), "{error}");
            }
            other => panic!("{command}: expected a missing privilege, got {other:?}"),
        }
    }
    assert!(lock.check().await.is_ok());
}
