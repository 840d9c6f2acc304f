//! The benchmark suite: prints a table of figures and ratios.
//!
//! `cargo run --release --example bench` runs it against a local SecantusDB
//! it starts itself, or against `MONGODB_URI`. Every figure comes from the
//! same run against the same server. The contention rows run this crate,
//! a 10 ms poller and the Python package `mongolock` side by side, each in
//! peer processes of its own (`compare.rs`).

mod beyond;
mod compare;
mod peer;

use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection};
use mongolock::__private::raw;
use mongolock::{mongo_locked, MongoLock};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

/// The connection string for every client of the run, with retryable
/// writes off: SecantusDB 0.7 slows down with every retryable write it has
/// recorded (a 4-worker poller fell from 375 to 33 acquisitions/s over three
/// 4 s runs; with them off it stays at 640), which would penalise whichever
/// lock runs later. The same setting for all, so the comparison is fair.
fn bench_uri(uri: &str) -> String {
    if uri.contains("retryWrites=") {
        return uri.to_owned();
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}retryWrites=false")
}

#[derive(Clone)]
struct Bench {
    uri: String,
    db: String,
}

impl Bench {
    async fn client(&self) -> Result<Client> {
        Ok(Client::with_uri_str(&self.uri).await?)
    }

    async fn collection(&self, name: &str) -> Result<Collection<Document>> {
        Ok(self.client().await?.database(&self.db).collection(name))
    }

    async fn lock(&self, name: &str) -> Result<MongoLock> {
        Ok(MongoLock::with_collection(self.collection(name).await?))
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, figure: &str, baseline: &str, ratio: &str, target: &str) {
    println!("| {name} | {figure} | {baseline} | {ratio} | {target} |");
}

/// Median round trip of a `ping`.
async fn round_trip(bench: &Bench) -> Result<Duration> {
    let client = bench.client().await?;
    let admin = client.database("admin");
    let mut samples = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        admin.run_command(doc! { "ping": 1 }).await?;
        samples.push(start.elapsed());
    }
    Ok(percentile(&mut samples, 0.5))
}

/// Median time of one lock attempt that finds the lock busy (a
/// `findAndModify` with the update pipeline): the server's round trip for
/// this work.
async fn lock_round_trip(bench: &Bench) -> Result<Duration> {
    let lock = bench.lock("round_trip").await?;
    let _held = lock.acquire("busy").await?;
    let mut samples = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        lock.lock("busy", "other").await?;
        samples.push(start.elapsed());
    }
    Ok(percentile(&mut samples, 0.5))
}

/// A fencing token for a quick take by hand: this machine's clock in
/// microseconds, less 5 ms (the bench's server runs on this machine, or
/// within a few milliseconds of it; a refused take is reported).
fn quick_token() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX) - 5_000
}

/// Row 1: acquire + release against the same two raw driver operations.
async fn uncontended(bench: &Bench) -> Result<(Duration, Duration)> {
    const ROUNDS: usize = 300;
    let lock = bench.lock("uncontended").await?;
    let coll = lock.collection().clone();
    let lease = 60_000;
    // Warm up both paths (the TTL index, connections), and leave a
    // released document for each key the raw writes take.
    lock.acquire("warm").await?.release().await?;
    for i in 0..10 {
        lock.acquire(format!("raw{i}")).await?.release().await?;
    }
    let (mut ours, mut raw_times) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        // Interleaved, so drift in the server's speed hits both alike.
        let key = format!("k{}", i % 10);
        let start = Instant::now();
        let guard = lock
            .acquire(&key)
            .expires(Duration::from_millis(lease))
            .await?;
        guard.release().await?;
        ours.push(start.elapsed());

        // The same two writes by hand, on keys of their own: the quick
        // take (its token from this machine's clock, which is the
        // server's here) and the release.
        let key = format!("raw{}", i % 10);
        let owner = mongolock::unique_owner();
        let start = Instant::now();
        let token = quick_token();
        let took = coll
            .update_one(
                raw::quick_filter(&key, token),
                raw::quick_take(&owner, "raw", lease as i64, token),
            )
            .await?;
        if took.matched_count != 1 {
            return Err(format!("the raw quick take of {key} was refused").into());
        }
        let mut filter = raw::by_holder(&key, &owner, Some(token));
        filter.insert("queue.0", doc! { "$exists": false });
        coll.update_one(filter, raw::release_plain("raw")).await?;
        raw_times.push(start.elapsed());
    }
    Ok((percentile(&mut ours, 0.5), percentile(&mut raw_times, 0.5)))
}

/// A scheduled job's tick claim against an uncontended acquire, p50 each,
/// interleaved on fresh keys, and the commands a claim sends on its path
/// (its run record is written in the background, counted apart).
async fn tick_claims(bench: &Bench) -> Result<(Duration, Duration, f64, f64)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const ROUNDS: usize = 200;
    let commands = Arc::new(AtomicUsize::new(0));
    let mut options = mongodb::options::ClientOptions::parse(&bench.uri).await?;
    let counted = commands.clone();
    options.command_event_handler = Some(mongodb::event::EventHandler::callback(move |event| {
        if let mongodb::event::command::CommandEvent::Started(started) = event {
            if started.command_name != "hello" && started.command_name != "isMaster" {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    let client = Client::with_options(options)?;
    let lock = MongoLock::with_collection(client.database(&bench.db).collection("ticks"));
    let schedule = mongolock::Schedule::parse("1h")?;
    // Warm up: connections, the clock estimate, the TTL indexes.
    lock.acquire("warm").await?.release().await?;
    if let mongolock::Claim::Run(mut run) = lock
        .job("warm", schedule.clone())
        .tolerance(Duration::from_secs(3600))
        .claim()
        .await?
    {
        run.recorded().await;
    }
    let (mut claims, mut acquires) = (Vec::new(), Vec::new());
    let (mut on_path, mut recorded) = (0, 0);
    for i in 0..ROUNDS {
        let job = lock
            .job(format!("tick-{i}"), schedule.clone())
            .tolerance(Duration::from_secs(3600));
        let before = commands.load(Ordering::Relaxed);
        let start = Instant::now();
        let claim = job.claim().await?;
        claims.push(start.elapsed());
        on_path += commands.load(Ordering::Relaxed) - before;
        let mongolock::Claim::Run(mut run) = claim else {
            return Err("a fresh key's tick was not claimed".into());
        };
        let before = commands.load(Ordering::Relaxed);
        run.recorded().await;
        recorded += commands.load(Ordering::Relaxed) - before;
        job.finish(run, mongolock::RunOutcome::Ok).await;

        let start = Instant::now();
        let guard = lock.acquire(format!("acq-{i}")).await?;
        acquires.push(start.elapsed());
        guard.release().await?;
    }
    lock.finish_releases(Duration::from_secs(10)).await;
    Ok((
        percentile(&mut claims, 0.5),
        percentile(&mut acquires, 0.5),
        on_path as f64 / ROUNDS as f64,
        recorded as f64 / ROUNDS as f64,
    ))
}

/// Rows 5: leader failover, and a semaphore's throughput against the
/// lock's.
async fn beyond_rows(bench: &Bench) -> Result<()> {
    let for_failover = bench.clone();
    let (died, resigned) =
        tokio::task::spawn_blocking(move || beyond::failover(&for_failover, 3)).await??;
    row(
        "5a. leader failover after the leader died, mean of 3",
        &ms(died),
        &format!("{} (the term lease)", ms(beyond::TERM_LEASE)),
        &format!(
            "{:.2}",
            died.as_secs_f64() / beyond::TERM_LEASE.as_secs_f64()
        ),
        "within the lease plus one event",
    );
    row(
        "5b. leader failover after a resignation, mean of 3",
        &ms(resigned),
        "-",
        "-",
        "one change event",
    );
    let run = Duration::from_secs(3);
    let lock_rate = beyond::throughput(bench, 0, 8, run).await?;
    let sem_rate = beyond::throughput(bench, 3, 8, run).await?;
    row(
        "5c. 8 tasks holding 20 ms, acquisitions/s: semaphore of 3 permits vs the lock",
        &format!("{sem_rate:.1}/s"),
        &format!("{lock_rate:.1}/s (fair lock, 1 holder)"),
        &format!("{:.2}", sem_rate / lock_rate.max(f64::MIN_POSITIVE)),
        "-",
    );
    Ok(())
}

/// A 10 ms poller's acquire (as `peer::Poller` sends it): one stage, two
/// fields, taking the key if its lease ended by the server's clock.
fn poller_acquire(owner: &str, lease: i64) -> Vec<Document> {
    let free = doc! { "$lte": [
        { "$toLong": { "$ifNull": ["$expires_at", mongodb::bson::DateTime::from_millis(0)] } },
        { "$toLong": "$$NOW" },
    ] };
    vec![doc! { "$set": {
        "owner": { "$cond": [&free, { "$literal": owner }, "$owner"] },
        "expires_at": { "$cond": [&free, { "$add": ["$$NOW", lease] }, "$expires_at"] },
    } }]
}

/// Where an uncontended cycle's time goes: the p50 of each write a cycle
/// may send, on keys that exist and are free (as a reused lock key is),
/// next to the lightest writes the server has (operator updates).
async fn write_costs(bench: &Bench) -> Result<Vec<(&'static str, Duration)>> {
    const ROUNDS: usize = 200;
    let coll = bench.collection("write_costs").await?;
    let lease = 60_000_i64;
    let fair = Some(raw::Queueing {
        tag: "raw",
        expiry_millis: 15_000,
        join: true,
        expect_none: false,
    });
    let light = fair.map(|q| raw::Queueing {
        expect_none: true,
        ..q
    });
    let kinds: [&'static str; 10] = [
        "plain upsert ($set, $currentDate)",
        "plain update by owner ($set, $unset)",
        "poller's acquire (1 stage, 2 fields)",
        "poller's release (deleteOne)",
        "unfair acquire pipeline",
        "fair acquire pipeline, no queue",
        "fair acquire, light pipeline (key not seen contended)",
        "fair acquire, quick take (key seen, not contended)",
        "fair release, no queue (operator update)",
        "hand-over release pipeline",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for i in 0..ROUNDS {
        let key = format!("k{}", i % 20);
        for (kind, times) in samples.iter_mut().enumerate() {
            let owner = "o";
            // Every write starts from a lock of ours: free for the
            // acquisitions, held by "o" for the releases.
            let held = matches!(kind, 1 | 3 | 8 | 9);
            // A released lock has no owner (the quick take asks for that).
            let (mut set, unset) = if held {
                (doc! { "owner": owner }, doc! { "queue": "" })
            } else {
                (doc! {}, doc! { "queue": "", "owner": "" })
            };
            set.insert("locked", held);
            set.insert("token", 1_i64);
            coll.update_one(
                doc! { "_id": &key },
                doc! {
                    "$currentDate": { "expires_at": true },
                    "$set": set,
                    "$unset": unset,
                },
            )
            .upsert(true)
            .await?;
            let start = Instant::now();
            match kind {
                0 => {
                    coll.update_one(
                        doc! { "_id": &key },
                        doc! { "$set": { "owner": owner, "locked": true }, "$currentDate": { "acquired_at": true } },
                    )
                    .upsert(true)
                    .await?;
                }
                1 => {
                    coll.update_one(
                        doc! { "_id": &key, "owner": owner },
                        doc! { "$set": { "locked": false }, "$unset": { "owner": "" } },
                    )
                    .await?;
                }
                2 => {
                    coll.find_one_and_update(doc! { "_id": &key }, poller_acquire(owner, lease))
                        .upsert(true)
                        .return_document(ReturnDocument::After)
                        .await?;
                }
                3 => {
                    coll.delete_one(doc! { "_id": &key, "owner": owner })
                        .await?;
                }
                4..=6 => {
                    let fair = [None, fair, light][kind - 4];
                    coll.find_one_and_update(
                        raw::by_key(&key),
                        raw::acquire_pipeline(owner, "c", lease, fair, None),
                    )
                    .upsert(true)
                    .return_document(ReturnDocument::After)
                    .await?;
                }
                7 => {
                    let token = quick_token();
                    coll.update_one(
                        raw::quick_filter(&key, token),
                        raw::quick_take(owner, "c", lease, token),
                    )
                    .await?;
                }
                8 => {
                    let mut filter = raw::by_holder(&key, owner, None);
                    filter.insert("queue.0", doc! { "$exists": false });
                    coll.update_one(filter, raw::release_plain("r")).await?;
                }
                _ => {
                    coll.find_one_and_update(
                        raw::by_holder(&key, owner, None),
                        raw::release_update(0, "r", true),
                    )
                    .await?;
                }
            }
            times.push(start.elapsed());
        }
    }
    Ok(kinds
        .into_iter()
        .zip(samples.iter_mut())
        .map(|(kind, times)| (kind, percentile(times, 0.5)))
        .collect())
}

/// The uncontended cycle every user pays, against the floors the issue
/// names, interleaved in one process: this crate's default (fair)
/// acquire + release, two plain operator updates (an upsert and an update
/// by owner), a 10 ms poller's cycle (its acquire and `deleteOne`), and
/// the least lock's cycle without and with the Python package's fields
/// ([`least_acquire`], released by an update by owner that only unsets it).
async fn cycle_floors(bench: &Bench) -> Result<[Duration; 5]> {
    const ROUNDS: usize = 300;
    let lock = bench.lock("cycle_floors").await?;
    let coll = lock.collection().clone();
    let lease = 60_000_i64;
    lock.acquire("warm").await?.release().await?;
    for i in 0..10 {
        for python in [false, true] {
            coll.update_one(
                doc! { "_id": format!("least{python}{i}") },
                doc! { "$set": { "owner": null, "token": 0_i64 } },
            )
            .upsert(true)
            .await?;
        }
    }
    let mut samples: [Vec<Duration>; 5] = Default::default();
    for i in 0..ROUNDS {
        let (ours, plain, poller) = (
            format!("ours{}", i % 10),
            format!("plain{}", i % 10),
            format!("poller{}", i % 10),
        );
        let start = Instant::now();
        lock.acquire(&ours)
            .expires(Duration::from_millis(lease as u64))
            .await?
            .release()
            .await?;
        samples[0].push(start.elapsed());

        let owner = mongolock::unique_owner();
        let start = Instant::now();
        coll.update_one(
            doc! { "_id": &plain },
            doc! { "$set": { "owner": &owner, "locked": true }, "$currentDate": { "acquired_at": true } },
        )
        .upsert(true)
        .await?;
        coll.update_one(
            doc! { "_id": &plain, "owner": &owner },
            doc! { "$set": { "locked": false }, "$unset": { "owner": "" } },
        )
        .await?;
        samples[1].push(start.elapsed());

        let start = Instant::now();
        coll.find_one_and_update(doc! { "_id": &poller }, poller_acquire(&owner, lease))
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        coll.delete_one(doc! { "_id": &poller, "owner": &owner })
            .await?;
        samples[2].push(start.elapsed());

        for (python, times) in [false, true].into_iter().zip(&mut samples[3..]) {
            let key = format!("least{python}{}", i % 10);
            let start = Instant::now();
            let took = coll
                .update_one(
                    doc! { "_id": &key, "owner": null },
                    least_acquire(&owner, lease, python),
                )
                .await?;
            if took.matched_count != 1 {
                return Err(format!("the least lock's take of {key} was refused").into());
            }
            let mut release = doc! { "$unset": { "owner": "" } };
            if python {
                release.insert("$set", doc! { "locked": false });
            }
            coll.update_one(doc! { "_id": &key, "owner": &owner }, release)
                .await?;
            times.push(start.elapsed());
        }
    }
    Ok(samples.map(|mut s| percentile(&mut s, 0.5)))
}

/// The least a lock with a lease by the server's clock and a fencing token
/// can write to take a released key: its holder, `$$NOW` + the lease, and
/// the token + 1, in one `$set` stage by `_id` and holder (`owner: null`);
/// with `python`, also the three fields the Python package reads (`locked`,
/// `expire`, `created`), as a lock that shares keys with it must.
fn least_acquire(owner: &str, lease: i64, python: bool) -> Vec<Document> {
    let expires = doc! { "$add": ["$$NOW", lease] };
    let mut set = doc! {
        "owner": { "$literal": owner },
        "expires_at": &expires,
        "token": { "$add": [{ "$ifNull": ["$token", 0_i64] }, 1_i64] },
    };
    if python {
        set.insert("locked", true);
        set.insert("expire", &expires);
        set.insert("created", "$$NOW");
    }
    vec![doc! { "$set": set }]
}

#[mongo_locked(key = "macro", lock = lock)]
async fn annotated(lock: &MongoLock, n: u64) -> mongolock::Result<u64> {
    Ok(std::hint::black_box(n) + 1)
}

async fn manual(lock: &MongoLock, n: u64) -> mongolock::Result<u64> {
    let guard = lock.acquire("macro").await?;
    let out = std::hint::black_box(n) + 1;
    guard.release().await?;
    Ok(out)
}

/// Row 2: An annotated function against manual acquire/release.
async fn macro_overhead(bench: &Bench) -> Result<(Duration, Duration)> {
    const ROUNDS: u64 = 300;
    let lock = bench.lock("macro").await?;
    manual(&lock, 0).await?;
    let (mut with_macro, mut by_hand) = (Vec::new(), Vec::new());
    for n in 0..ROUNDS {
        let start = Instant::now();
        annotated(&lock, n).await?;
        with_macro.push(start.elapsed());
        let start = Instant::now();
        manual(&lock, n).await?;
        by_hand.push(start.elapsed());
    }
    Ok((
        percentile(&mut with_macro, 0.5),
        percentile(&mut by_hand, 0.5),
    ))
}

/// Row 4: How long after a vanished holder's expiry (server time) a waiter
/// takes the lock.
async fn takeover(bench: &Bench) -> Result<Vec<Duration>> {
    let lock = bench.lock("takeover").await?;
    let mut samples = Vec::new();
    for i in 0..15 {
        let key = format!("t{i}");
        lock.lock(&key, "ghost")
            .expires(Duration::from_millis(300))
            .await?;
        let ghost = lock.get_lock_info(&key).await?.ok_or("no ghost")?;
        let guard = lock.acquire(&key).timeout(Duration::from_secs(10)).await?;
        let late = guard.acquired_at().ok_or("no time")?.timestamp_millis()
            - ghost.expires_at.timestamp_millis();
        samples.push(Duration::from_millis(late.max(0) as u64));
        guard.release().await?;
    }
    Ok(samples)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn cpu_time() -> Duration {
    // utime + stime, fields 14 and 15 of /proc/self/stat, in clock ticks.
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = after.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// What `waiters` blocked waiters cost, spread over `keys` held keys.
struct Blocked {
    commands_per_s: f64,
    kib_per_waiter: f64,
    cpu_us_per_waiter_s: f64,
}

/// Rows 5 and 6a: holds `keys` keys, starts `waiters` waiters on them (on a
/// client whose commands are counted), lets them settle, then measures the
/// commands they send, and the memory and CPU they cost this process.
async fn blocked_waiters(
    bench: &Bench,
    name: &str,
    keys: usize,
    waiters: usize,
    streams: bool,
) -> Result<Blocked> {
    let holder = bench.lock(name).await?;
    let mut guards = Vec::new();
    for k in 0..keys {
        guards.push(
            holder
                .acquire(format!("k{k}"))
                .expires(Duration::from_secs(120))
                .await?,
        );
    }
    let (client, counts) = peer::counted_client(&bench.uri).await?;
    let count = &counts.commands;
    let lock = MongoLock::with_collection(client.database(&bench.db).collection(name))
        .with_change_streams(streams);
    let rss_before = rss_kib();
    let mut tasks = Vec::new();
    for w in 0..waiters {
        let lock = lock.clone();
        tasks.push(tokio::spawn(async move {
            let _ = lock
                .acquire(format!("k{}", w % keys))
                .timeout(Duration::from_secs(60))
                .await;
        }));
    }
    // Settle: first attempts, stream opening, backoff reaching its cap.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = rss_kib();
    let (cpu0, commands0) = (cpu_time(), count.load(Ordering::Relaxed));
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let cpu = cpu_time() - cpu0;
    let commands = count.load(Ordering::Relaxed) - commands0;
    for task in tasks {
        task.abort();
    }
    for guard in guards {
        guard.release().await?;
    }
    Ok(Blocked {
        commands_per_s: commands as f64 / window.as_secs_f64(),
        kib_per_waiter: rss_after.saturating_sub(rss_before) as f64 / waiters as f64,
        cpu_us_per_waiter_s: cpu.as_secs_f64() * 1e6 / window.as_secs_f64() / waiters as f64,
    })
}

/// The Python with the Python package, installed on first use by
/// `scripts/python-mongolock`; `None` (and the column skipped) without it.
fn python() -> Option<String> {
    let out = std::process::Command::new(
        mongolock_suite::workspace_root().join("scripts/python-mongolock"),
    )
    .stderr(std::process::Stdio::inherit())
    .output()
    .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !path.is_empty()).then_some(path)
}

#[tokio::main]
async fn main() -> Result<()> {
    if let Ok(kind) = std::env::var(peer::PEER) {
        return peer::run(&kind).await;
    }
    let uri = bench_uri(&mongolock_suite::server_uri()?);
    let bench = Bench {
        uri,
        db: format!("mongolock_bench_{}", std::process::id()),
    };
    if std::env::args().nth(1).as_deref() == Some("contention") {
        let env = compare::Env {
            uri: bench.uri.clone(),
            db: bench.db.clone(),
            python: python(),
            server_pid: mongolock_suite::server_pid(),
        };
        return compare::rows(&env).await;
    }
    if std::env::args().nth(1).as_deref() == Some("beyond") {
        beyond_rows(&bench).await?;
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("ticks") {
        let (claim, acquire, on_path, recorded) = tick_claims(&bench).await?;
        println!(
            "tick claim {} ({on_path:.1} commands on its path, {recorded:.1} for its record), uncontended acquire {} ({:.2}x)",
            ms(claim),
            ms(acquire),
            claim.as_secs_f64() / acquire.as_secs_f64()
        );
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("uncontended") {
        let (lib, raw) = uncontended(&bench).await?;
        println!(
            "the library's cycle {} against its own two raw writes {}",
            ms(lib),
            ms(raw)
        );
        let [ours, plain, poller, least, least_py] = cycle_floors(&bench).await?;
        println!(
            "fair cycle {}, two plain updates {} ({:.2}x), poller cycle {} ({:.2}x), least lock {} ({:.2}x plain), least lock with the Python package's fields {} ({:.2}x plain)\n",
            ms(ours),
            ms(plain),
            ours.as_secs_f64() / plain.as_secs_f64(),
            ms(poller),
            ours.as_secs_f64() / poller.as_secs_f64(),
            ms(least),
            least.as_secs_f64() / plain.as_secs_f64(),
            ms(least_py),
            least_py.as_secs_f64() / plain.as_secs_f64(),
        );
        println!("| write | p50 |\n|---|---|");
        for (kind, p50) in write_costs(&bench).await? {
            println!("| {kind} | {} |", ms(p50));
        }
        return Ok(());
    }
    let rtt = round_trip(&bench).await?;
    let op = lock_round_trip(&bench).await?;
    println!(
        "server round trip, p50: ping {}, one lock attempt {}\n",
        ms(rtt),
        ms(op)
    );
    println!("| measure | mongolock | baseline | ratio | target |");
    println!("|---|---|---|---|---|");

    let (ours, floor) = uncontended(&bench).await?;
    row(
        "1. uncontended acquire+release, p50",
        &ms(ours),
        &format!("{} (same 2 raw driver ops)", ms(floor)),
        &format!("{:.3}", ours.as_secs_f64() / floor.as_secs_f64()),
        "<= 1.05",
    );

    let [ours, plain, poller, least, least_py] = cycle_floors(&bench).await?;
    row(
        "1b. uncontended fair cycle vs two plain operator updates, p50",
        &ms(ours),
        &format!("{} (upsert + update by owner)", ms(plain)),
        &format!("{:.2}", ours.as_secs_f64() / plain.as_secs_f64()),
        "<= 1.1",
    );
    row(
        "1c. uncontended fair cycle vs a 10 ms poller's cycle, p50",
        &ms(ours),
        &format!("{} (its acquire + deleteOne)", ms(poller)),
        &format!("{:.2}", ours.as_secs_f64() / poller.as_secs_f64()),
        "<= 1.0",
    );
    for (name, least) in [
        ("1d. the least lock vs two plain operator updates, p50", least),
        (
            "1e. the least lock with the Python package's fields vs two plain operator updates, p50",
            least_py,
        ),
    ] {
        row(
            name,
            &ms(least),
            &ms(plain),
            &format!("{:.2}", least.as_secs_f64() / plain.as_secs_f64()),
            "- (a floor: 1b's target is below it when above 1.1)",
        );
    }
    println!("\nWhere an uncontended cycle's time goes (p50 per write, same server):\n");
    println!("| write | p50 |\n|---|---|");
    for (kind, p50) in write_costs(&bench).await? {
        println!("| {kind} | {} |", ms(p50));
    }
    println!("\n| measure | mongolock | baseline | ratio | target |");
    println!("|---|---|---|---|---|");

    let (with_macro, by_hand) = macro_overhead(&bench).await?;
    row(
        "2. #[mongo_locked] call, p50",
        &ms(with_macro),
        &format!("{} (manual acquire/release)", ms(by_hand)),
        &format!("{:.3}", with_macro.as_secs_f64() / by_hand.as_secs_f64()),
        "<= 1.02",
    );

    let lock = bench.lock("macro").await?;
    let (sized_macro, sized_manual) = (
        std::mem::size_of_val(&annotated(&lock, 0)),
        std::mem::size_of_val(&manual(&lock, 0)),
    );
    row(
        "2. #[mongo_locked] future size",
        &format!("{sized_macro} bytes"),
        &format!("{sized_manual} bytes (manual acquire/release)"),
        &format!("{:.2}", sized_macro as f64 / sized_manual as f64),
        "<= 1.5",
    );

    let (claim, acquire, on_path, recorded) = tick_claims(&bench).await?;
    row(
        "3. scheduled job: tick claim (claim + lock), p50",
        &format!("{} ({on_path:.1} commands on its path, {recorded:.1} more in the background for its record)", ms(claim)),
        &format!("{} (uncontended acquire)", ms(acquire)),
        &format!("{:.2}", claim.as_secs_f64() / acquire.as_secs_f64()),
        "one round trip, like an acquire",
    );

    beyond_rows(&bench).await?;

    let mut late = takeover(&bench).await?;
    let t50 = percentile(&mut late, 0.5);
    row(
        "4. takeover after a holder vanished, p50",
        &format!("{} after expiry", ms(t50)),
        &format!("{} + 10 ms", ms(op)),
        &format!(
            "{:.2}",
            t50.as_secs_f64() / (op + Duration::from_millis(10)).as_secs_f64()
        ),
        "<= 1 round trip + 10 ms",
    );

    let env = compare::Env {
        uri: bench.uri.clone(),
        db: bench.db.clone(),
        python: python(),
        server_pid: mongolock_suite::server_pid(),
    };
    compare::rows(&env).await?;

    // Last: a thousand waiters leave a loaded server behind them.
    println!("\n| measure | mongolock | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    let scale = blocked_waiters(&bench, "scale", 100, 1000, true).await?;
    row(
        "6a. 1,000 waiters on 100 keys",
        &format!(
            "{:.1} KiB and {:.2} us CPU/s per waiter",
            scale.kib_per_waiter, scale.cpu_us_per_waiter_s
        ),
        &format!("{:.1} cmd/s in all", scale.commands_per_s),
        "-",
        "-",
    );
    bench.client().await?.database(&bench.db).drop().await?;
    Ok(())
}
