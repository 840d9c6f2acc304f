//! The clock nemesis: the test server runs under libfaketime, and its clock
//! (the one `$$NOW` reads) steps forward, steps back, or changes with a
//! restart, as a primary's clock does under NTP steps or a failover to a
//! host with another clock, while workers take, hold and release one key.
//!
//! Every scenario checks, on one common timeline (this test process's
//! clock, which all workers share), that no two workers *believed* they
//! held the key at once; writes to a fenced counter (accepted only with a
//! token no smaller than the last accepted one) and how many stale writes
//! were rejected; and that tokens grew in the order the workers got the key.
//!
//! The scenarios run one at a time (each with its own server) and write a
//! row each to `target/clock-nemesis/`, which `.ci/run` prints as a table.
//! They need libfaketime (`scripts/libfaketime` installs it as root), in
//! its thread-safe build: the plain one, re-reading its offset file from
//! the server's many threads, now and then returns the unshifted time, a
//! momentary step forward by the whole offset that the "back" scenario
//! caught as two holders at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Collection;
use mongolock::{Backoff, Error, LockGuard, MongoLock};
use mongolock_suite::{free_port, workspace_root, FaultServer};
use tokio::sync::watch;

/// The clock skew the workers are configured for: steps below it are
/// within the assumption, steps above it are not.
const SKEW: Duration = Duration::from_secs(2);
/// Long enough to leave a lease after the allowance.
const LEASE: Duration = Duration::from_secs(4);
const WAIT: Duration = Duration::from_secs(60);
const WORKERS: usize = 3;
/// Far longer than any scenario takes; only a hang reaches it.
const HANG: Duration = Duration::from_secs(300);

/// One scenario at a time: each runs its own server and workers, and the
/// 2-core machine should not make them late for each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server whose clock this test moves.
struct SkewedServer {
    fx: Option<FaultServer>,
    offset_file: PathBuf,
    args: Vec<String>,
    lib: String,
}

impl SkewedServer {
    async fn start(name: &str, on_disk: bool) -> Self {
        let lib = std::process::Command::new(workspace_root().join("scripts/libfaketime"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| {
                panic!(
                    "the clock nemesis needs libfaketime to move the server's clock: \
                     install the Debian package `faketime` (scripts/libfaketime does, as root)"
                )
            });
        let dir = std::env::temp_dir().join(format!(
            "mongolock-clock-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let offset_file = dir.join("faketime");
        std::fs::write(&offset_file, "+0\n").unwrap();
        let mut args = Vec::new();
        if on_disk {
            args.extend([
                "--storage-path".to_owned(),
                dir.join("data").to_string_lossy().into_owned(),
                "--port".to_owned(),
                free_port().to_string(),
            ]);
        }
        let mut server = Self {
            fx: None,
            offset_file,
            args,
            lib,
        };
        server.fx = Some(server.launch().await);
        server
    }

    async fn launch(&self) -> FaultServer {
        let file = self.offset_file.to_string_lossy().into_owned();
        let env = [
            ("SECANTUS_LD_PRELOAD", self.lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        FaultServer::start_with_env(&args, &env).await
    }

    fn fx(&self) -> &FaultServer {
        self.fx.as_ref().expect("the server is running")
    }

    /// Moves the server's clock to `offset_secs` from true time, and
    /// returns once the server reports it.
    async fn set_offset(&self, offset_secs: i64) {
        std::fs::write(&self.offset_file, format!("{offset_secs:+}\n")).unwrap();
        self.await_offset(offset_secs).await;
    }

    async fn await_offset(&self, offset_secs: i64) {
        loop {
            let sent = mongodb::bson::DateTime::now().timestamp_millis();
            let hello = self
                .fx()
                .admin
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await;
            if let Ok(server) = hello.as_ref().map(|h| h.get_datetime("localTime")) {
                let server = server.unwrap().timestamp_millis();
                if (server - sent - offset_secs * 1000).abs() < 500 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and starts it again on the same storage and port
    /// with its clock at `offset_secs`: a failover to a skewed primary.
    async fn restart_with_offset(&mut self, offset_secs: i64) {
        drop(self.fx.take());
        std::fs::write(&self.offset_file, format!("{offset_secs:+}\n")).unwrap();
        self.fx = Some(self.launch().await);
        self.await_offset(offset_secs).await;
    }

    /// A worker's own client, as if it ran in its own process.
    async fn worker_lock(&self, app: &str, polling: bool) -> MongoLock {
        let lock = self.fx().lock(app).await.with_max_clock_skew(SKEW).unwrap();
        if polling {
            // Polls often, so it takes the key as soon as the server frees
            // it, whatever the clock did (a sleep until the expiry would be
            // converted with an offset measured before the step).
            lock.with_change_streams(false).with_backoff(
                Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).unwrap(),
            )
        } else {
            lock
        }
    }
}

/// What all workers share: the common timeline of who believes they hold
/// the key, the tokens in the order the workers got it, and the fenced
/// counter's bookkeeping.
#[derive(Default)]
struct Witness {
    believers: AtomicI32,
    overlaps: AtomicUsize,
    tokens: Mutex<Vec<i64>>,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
}

impl Witness {
    fn enter(&self, token: i64) {
        if self.believers.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.tokens.lock().unwrap().push(token);
    }

    fn leave(&self) {
        self.believers.fetch_sub(1, Ordering::SeqCst);
    }

    /// One write to the fenced counter, as a holder writes to the resource
    /// the lock protects.
    async fn fenced_write(&self, counter: &Collection<Document>, token: i64) {
        let result = counter
            .update_one(
                doc! { "_id": "fenced", "token": { "$lte": token } },
                doc! { "$set": { "token": token }, "$inc": { "n": 1_i64 } },
            )
            .await;
        match result {
            Ok(r) if r.matched_count == 1 => self.accepted.fetch_add(1, Ordering::SeqCst),
            Ok(_) => self.rejected.fetch_add(1, Ordering::SeqCst),
            // Its outcome is unknown (the server went away): not counted.
            Err(_) => 0,
        };
    }
}

/// How a worker holds the key.
#[derive(Clone, Copy, PartialEq)]
enum Hold {
    /// Until its local lease runs out, writing all the while: the longest a
    /// holder may believe it holds, so any early expiry shows.
    UntilLost,
    /// Briefly, with renewal on, then release.
    BrieflyRenewing,
}

async fn worker(
    lock: MongoLock,
    counter: Collection<Document>,
    witness: Arc<Witness>,
    hold: Hold,
    acquisitions: watch::Sender<usize>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let acquire = lock.acquire("job").expires(LEASE).timeout(WAIT);
        let acquire = if hold == Hold::BrieflyRenewing {
            acquire.renew(true)
        } else {
            acquire
        };
        let guard = match acquire.await {
            Ok(guard) => guard,
            Err(Error::Locked { .. } | Error::TimedOut { .. } | Error::Mongo(_)) => continue,
            Err(error) => panic!("unexpected error: {error}"),
        };
        if guard.is_lost() {
            continue;
        }
        witness.enter(guard.token());
        acquisitions.send_modify(|n| *n += 1);
        // The holder stops believing the moment its guard says the lease is
        // lost, even in the middle of a write (the server may be down). The
        // write is not cut in half: it reaches the fence late, as a stale
        // holder's write would, and is counted.
        let writes = if hold == Hold::UntilLost {
            usize::MAX
        } else {
            3
        };
        let mut believes = true;
        for _ in 0..writes {
            let write = witness.fenced_write(&counter, guard.token());
            tokio::pin!(write);
            tokio::select! {
                _ = &mut write => {}
                _ = guard.lost() => {
                    witness.leave();
                    believes = false;
                    write.await;
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = guard.lost() => break,
            }
        }
        if believes {
            witness.leave();
        }
        release(guard).await;
    }
}

async fn release(guard: LockGuard) {
    // Its outcome does not matter here: a lost or failed release runs out.
    let _ = guard.release().await;
}

/// A scenario's figures: a row of the table.
struct Row {
    scenario: &'static str,
    step: &'static str,
    acquisitions: usize,
    overlaps: usize,
    accepted: usize,
    rejected: usize,
    counter: i64,
    tokens_increase: bool,
}

impl Row {
    fn write(&self) {
        let dir = workspace_root().join("target/clock-nemesis");
        std::fs::create_dir_all(&dir).unwrap();
        let line = format!(
            "| {} | {} | {} | {} | {} | {} of {} | {} |\n",
            self.scenario,
            self.step,
            self.acquisitions,
            self.overlaps,
            self.rejected,
            self.accepted,
            self.counter,
            if self.tokens_increase {
                "strictly increasing"
            } else {
                "NOT increasing"
            },
        );
        std::fs::write(
            dir.join(format!("{}.md", self.scenario.replace(' ', "-"))),
            &line,
        )
        .unwrap();
        eprint!("{line}");
    }
}

/// Runs `WORKERS` workers on one key; `nemesis` moves the clock once the
/// workers have made `before` acquisitions, and the run ends `after` more.
async fn run(
    server: &mut SkewedServer,
    hold: Hold,
    before: usize,
    after: usize,
    nemesis: impl AsyncFnOnce(&mut SkewedServer),
) -> (Arc<Witness>, usize, i64) {
    let counter: Collection<Document> = server.fx().admin.database("faults").collection("fenced");
    counter
        .insert_one(doc! { "_id": "fenced", "token": 0_i64, "n": 0_i64 })
        .await
        .unwrap();
    let witness = Arc::new(Witness::default());
    let (count_tx, mut count_rx) = watch::channel(0_usize);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let lock = server
            .worker_lock(&format!("worker-{i}"), hold == Hold::UntilLost)
            .await;
        workers.push(tokio::spawn(worker(
            lock,
            counter.clone(),
            witness.clone(),
            hold,
            count_tx.clone(),
            stop_rx.clone(),
        )));
    }
    count_rx.wait_for(|n| *n >= before).await.unwrap();
    nemesis(server).await;
    let at_step = *count_rx.borrow();
    // A guard against a hang, not a measurement: the run takes seconds.
    tokio::time::timeout(HANG, count_rx.wait_for(|n| *n >= at_step + after))
        .await
        .expect("the workers stopped taking the key")
        .unwrap();
    stop_tx.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acquisitions = *count_rx.borrow();
    let n = counter
        .find_one(doc! { "_id": "fenced" })
        .await
        .unwrap()
        .and_then(|d| d.get_i64("n").ok())
        .unwrap_or(-1);
    (witness, acquisitions, n)
}

fn row(
    scenario: &'static str,
    step: &'static str,
    witness: &Witness,
    acquisitions: usize,
    counter: i64,
) -> Row {
    let tokens = witness.tokens.lock().unwrap().clone();
    let row = Row {
        scenario,
        step,
        acquisitions,
        overlaps: witness.overlaps.load(Ordering::SeqCst),
        accepted: witness.accepted.load(Ordering::SeqCst),
        rejected: witness.rejected.load(Ordering::SeqCst),
        counter,
        tokens_increase: tokens.windows(2).all(|w| w[0] < w[1]),
    };
    row.write();
    assert!(row.tokens_increase, "{scenario}: tokens {tokens:?}");
    assert_eq!(
        row.accepted as i64, counter,
        "{scenario}: the fenced counter lost updates"
    );
    row
}

#[tokio::test]
async fn clock_steps_forward_within_the_allowance_no_overlap() {
    let _one = SERIAL.lock().await;
    let mut server = SkewedServer::start("forward-within", false).await;
    let (witness, acquisitions, counter) = run(
        &mut server,
        Hold::UntilLost,
        2,
        3,
        async |s: &mut SkewedServer| s.set_offset(1).await,
    )
    .await;
    let row = row(
        "forward within",
        "+1 s (allowance 2.04 s)",
        &witness,
        acquisitions,
        counter,
    );
    assert_eq!(row.overlaps, 0, "two holders at once within the allowance");
}

#[tokio::test]
async fn clock_steps_forward_beyond_the_allowance_fencing_rejects_the_stale_holder() {
    let _one = SERIAL.lock().await;
    let mut server = SkewedServer::start("forward-beyond", false).await;
    let (witness, acquisitions, counter) = run(
        &mut server,
        Hold::UntilLost,
        2,
        3,
        async |s: &mut SkewedServer| s.set_offset(3).await,
    )
    .await;
    let row = row(
        "forward beyond",
        "+3 s (allowance 2.04 s)",
        &witness,
        acquisitions,
        counter,
    );
    // Beyond the assumption the server ends a lease while its holder still
    // believes in it: a new holder comes in, and the old one's writes are
    // refused by the fence.
    assert!(row.overlaps >= 1, "the step should have cut a lease short");
    assert!(row.rejected >= 1, "the stale holder's writes were accepted");
}

#[tokio::test]
async fn clock_steps_back_tokens_still_grow() {
    let _one = SERIAL.lock().await;
    let mut server = SkewedServer::start("back", false).await;
    let (witness, acquisitions, counter) = run(
        &mut server,
        Hold::BrieflyRenewing,
        10,
        10,
        async |s: &mut SkewedServer| s.set_offset(-30).await,
    )
    .await;
    let row = row("back", "-30 s", &witness, acquisitions, counter);
    assert_eq!(row.overlaps, 0);
    assert_eq!(row.rejected, 0, "a later holder's token was smaller");
}

#[tokio::test]
async fn failover_to_a_skewed_primary_keeps_holders_apart() {
    let _one = SERIAL.lock().await;
    let mut server = SkewedServer::start("failover", true).await;
    let (witness, acquisitions, counter) = run(
        &mut server,
        Hold::BrieflyRenewing,
        5,
        5,
        async |s: &mut SkewedServer| s.restart_with_offset(1).await,
    )
    .await;
    let row = row(
        "failover",
        "restart on the same storage at +1 s",
        &witness,
        acquisitions,
        counter,
    );
    assert_eq!(row.overlaps, 0, "two holders at once across the failover");
}

#[tokio::test]
async fn document_deleted_then_recreated_by_a_clock_behind_keeps_tokens_growing() {
    let _one = SERIAL.lock().await;
    let server = SkewedServer::start("cleanup", false).await;
    let lock = server.worker_lock("cleanup", false).await;
    let collection = lock.collection().clone();
    let guard = lock.acquire("job").await.unwrap();
    let old = guard.token();
    assert!(guard.release().await.unwrap());
    // The TTL index deletes the document no sooner than MIN_CLEANUP_AFTER
    // after its lease ended; then the next holder's server may be up to
    // the skew behind the clock that stamped the old token.
    collection.delete_one(doc! { "_id": "job" }).await.unwrap();
    let behind = mongolock::MIN_CLEANUP_AFTER.as_secs() as i64 - SKEW.as_secs() as i64;
    server.set_offset(behind).await;
    let next = lock.acquire("job").await.unwrap();
    Row {
        scenario: "cleanup",
        step: "document deleted, recreated 60 s later by a clock 2 s behind",
        acquisitions: 2,
        overlaps: 0,
        accepted: 0,
        rejected: 0,
        counter: 0,
        tokens_increase: next.token() > old,
    }
    .write();
    assert!(next.token() > old, "{} after {old}", next.token());
}

/// Scheduled jobs: the server's clock steps back 2 s, then forward 4 s,
/// while three workers claim a 1 s schedule's ticks as often as they can.
/// A tick is claimed only if it is later than the last one claimed, so a
/// step back never runs a tick again, and a step forward skips ticks (the
/// next claim counts them as missed) rather than running any twice; the
/// workers re-read the server's clock when no tick is due, so they keep
/// running ticks after each step.
#[tokio::test]
async fn scheduled_ticks_never_run_twice_when_the_server_clock_steps() {
    let _one = SERIAL.lock().await;
    let server = SkewedServer::start("schedule", false).await;
    let ran: Arc<Mutex<Vec<(i64, usize)>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let lock = server.fx().lock(&format!("scheduled-{worker}")).await;
        let (ran, mut stop) = (ran.clone(), stop_rx.clone());
        workers.push(tokio::spawn(async move {
            let job = lock
                .job("tick", mongolock::Schedule::parse("1s").unwrap())
                .expires(Duration::from_secs(1));
            while !*stop.borrow() {
                let ran = ran.clone();
                job.run(|tick| async move {
                    ran.lock()
                        .unwrap()
                        .push((tick.at.timestamp_millis(), worker));
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }));
    }
    let runs = || ran.lock().unwrap().len();
    // Time passing is what this test is about: the schedule ticks by it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_back = runs();
    server.set_offset(-2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_back = runs();
    server.set_offset(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let ran = ran.lock().unwrap().clone();
    let mut ticks: Vec<i64> = ran.iter().map(|(t, _)| *t).collect();
    ticks.sort_unstable();
    let unique = ticks.len();
    ticks.dedup();
    assert_eq!(unique, ticks.len(), "a tick ran twice: {ran:?}");
    assert!(before_back > 0, "no tick ran before the steps");
    assert!(after_back > before_back, "no tick ran after the step back");
    assert!(ran.len() > after_back, "no tick ran after the step forward");
}
