//! The benchmark's peer processes: this program started again with
//! `MONGOLOCK_BENCH_PEER` set to `ours` (this crate), `ours-unfair` (with
//! `with_fairness(false)`) or `poller` (a 10 ms
//! polling lock shaped like the Rust crates on crates.io), speaking the line
//! protocol of `scripts/bench_peer.py` (the Python package's peer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection};
use mongolock::{LockGuard, MongoLock};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Result;

pub const PEER: &str = "MONGOLOCK_BENCH_PEER";
pub const URI: &str = "MONGOLOCK_BENCH_URI";
pub const DB: &str = "MONGOLOCK_BENCH_DB";
pub const COLLECTION: &str = "MONGOLOCK_BENCH_COLLECTION";

/// How long IDLE waits for waiters to settle before counting.
const SETTLE: Duration = Duration::from_secs(3);
const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(120);

/// Commands a client sent (other than monitoring), of them the `getMore`s
/// that came back empty (a change stream's wait that ended without an
/// event) and the writes, and the change events its cursors were sent.
#[derive(Default)]
pub struct Counts {
    pub commands: AtomicU64,
    pub empty_get_mores: AtomicU64,
    pub writes: AtomicU64,
    pub events: AtomicU64,
}

/// The commands that write.
const WRITES: [&str; 4] = ["insert", "update", "delete", "findAndModify"];

/// A client whose commands are counted.
pub async fn counted_client(uri: &str) -> Result<(Client, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let mut options = ClientOptions::parse(uri).await?;
    let seen = counts.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event| match event {
        CommandEvent::Started(started)
            if started.command_name != "hello" && started.command_name != "isMaster" =>
        {
            seen.commands.fetch_add(1, Ordering::Relaxed);
            if WRITES.contains(&started.command_name.as_str()) {
                seen.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        CommandEvent::Succeeded(done) if done.command_name == "getMore" => {
            let batch = done
                .reply
                .get_document("cursor")
                .and_then(|c| c.get_array("nextBatch"))
                .map_or(0, Vec::len);
            if batch == 0 {
                seen.empty_get_mores.fetch_add(1, Ordering::Relaxed);
            }
            seen.events.fetch_add(batch as u64, Ordering::Relaxed);
        }
        _ => {}
    }));
    Ok((Client::with_options(options)?, counts))
}

/// A lock that polls every 10 ms: one `findOneAndUpdate` that takes the
/// key if its lease ended by the server's clock (dates compared as
/// `$toLong`), a `deleteOne` by owner to release.
#[derive(Clone)]
pub struct Poller {
    collection: Collection<Document>,
}

impl Poller {
    const POLL: Duration = Duration::from_millis(10);

    async fn try_once(&self, key: &str, owner: &str) -> Result<bool> {
        let free = doc! { "$lte": [
            { "$toLong": { "$ifNull": ["$expires_at", DateTime::from_millis(0)] } },
            { "$toLong": "$$NOW" },
        ] };
        let lease = LEASE.as_millis() as i64;
        let update = vec![doc! { "$set": {
            "owner": { "$cond": [&free, { "$literal": owner }, "$owner"] },
            "expires_at": { "$cond": [&free, { "$add": ["$$NOW", lease] }, "$expires_at"] },
        } }];
        let result = self
            .collection
            .find_one_and_update(doc! { "_id": key }, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(doc) => Ok(doc.is_some_and(|d| d.get_str("owner") == Ok(owner))),
            // Two first upserts raced: the loser polls again.
            Err(e) if e.to_string().contains("E11000") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn acquire(&self, key: &str) -> Result<String> {
        let owner = mongolock::unique_owner();
        let start = Instant::now();
        while !self.try_once(key, &owner).await? {
            if start.elapsed() > WAIT {
                return Err("poller: no lock in time".into());
            }
            tokio::time::sleep(Self::POLL).await;
        }
        Ok(owner)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        self.collection
            .delete_one(doc! { "_id": key, "owner": owner })
            .await?;
        Ok(())
    }
}

#[derive(Clone)]
enum Locker {
    Ours(MongoLock),
    Poller(Poller),
}

enum Held {
    Guard(LockGuard),
    Owner(String, String),
}

impl Locker {
    async fn acquire(&self, key: &str) -> Result<Held> {
        Ok(match self {
            Locker::Ours(lock) => {
                Held::Guard(lock.acquire(key).expires(LEASE).timeout(WAIT).await?)
            }
            Locker::Poller(poller) => Held::Owner(key.to_owned(), poller.acquire(key).await?),
        })
    }

    async fn release(&self, held: Held) -> Result<()> {
        match (self, held) {
            (_, Held::Guard(guard)) => {
                guard.release().await?;
            }
            (Locker::Poller(poller), Held::Owner(key, owner)) => {
                poller.release(&key, &owner).await?
            }
            (Locker::Ours(_), Held::Owner(..)) => return Err("mixed lockers".into()),
        }
        Ok(())
    }
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// The peer's main loop.
pub async fn run(kind: &str) -> Result<()> {
    let uri = std::env::var(URI)?;
    let (client, counts) = counted_client(&uri).await?;
    let collection = client
        .database(&std::env::var(DB)?)
        .collection(&std::env::var(COLLECTION)?);
    let locker = match kind {
        "ours" => Locker::Ours(MongoLock::with_collection(collection)),
        "ours-unfair" => Locker::Ours(MongoLock::with_collection(collection).with_fairness(false)),
        "poller" => Locker::Poller(Poller { collection }),
        other => return Err(format!("unknown peer {other}").into()),
    };
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut held = std::collections::HashMap::new();
    println!("READY");
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["HOLD", key] => {
                held.insert(key.to_string(), locker.acquire(key).await?);
                println!("HELD {key}");
            }
            ["RELEASE", key] => {
                let start = now_us();
                let guard = held.remove(*key).ok_or("not held")?;
                locker.release(guard).await?;
                println!("RELEASED {key} {start}");
            }
            ["WAIT", key] => {
                // In a task: the peer keeps answering (COMMANDS) meanwhile.
                let (locker, key) = (locker.clone(), key.to_string());
                tokio::spawn(async move {
                    let Ok(guard) = locker.acquire(&key).await else {
                        println!("FAILED {key}");
                        return;
                    };
                    println!("ACQUIRED {key} {}", now_us());
                    let _ = locker.release(guard).await;
                    println!("DONE {key}");
                });
            }
            ["CONTEND", key, tasks, secs] => {
                let (tasks, secs): (usize, f64) = (tasks.parse()?, secs.parse()?);
                println!("SET");
                lines.next_line().await?; // GO
                let samples = contend(&locker, key, tasks, Duration::from_secs_f64(secs)).await;
                let list: Vec<String> = samples
                    .iter()
                    .map(|s| format!("{}:{}:{}", s.waited.as_micros(), s.at_us, s.worker))
                    .collect();
                println!("LATENCIES {} {}", samples.len(), list.join(","));
            }
            ["IDLE", key, tasks, secs] => {
                let (tasks, secs): (usize, f64) = (tasks.parse()?, secs.parse()?);
                let waiting: Vec<_> = (0..tasks)
                    .map(|_| {
                        let (locker, key) = (locker.clone(), key.to_string());
                        tokio::spawn(async move { locker.acquire(&key).await.map(|_| ()) })
                    })
                    .collect();
                tokio::time::sleep(SETTLE).await;
                let before = counts.commands.load(Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                println!("IDLE {}", counts.commands.load(Ordering::Relaxed) - before);
                for task in waiting {
                    task.abort();
                }
            }
            ["COMMANDS"] => println!(
                "COMMANDS {} {} {} {}",
                counts.commands.load(Ordering::Relaxed),
                counts.empty_get_mores.load(Ordering::Relaxed),
                counts.writes.load(Ordering::Relaxed),
                counts.events.load(Ordering::Relaxed)
            ),
            ["QUIT"] => break,
            _ => return Err(format!("peer: unknown command {line}").into()),
        }
    }
    if let Locker::Ours(lock) = &locker {
        lock.finish_releases(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// One acquisition in a contention run: how long it waited, when it got
/// the lock (epoch microseconds, comparable across the machine's
/// processes) and which of the peer's tasks took it.
pub struct Sample {
    pub waited: Duration,
    pub at_us: u128,
    pub worker: usize,
}

/// `tasks` tasks take and release `key` until `window` has passed; every
/// acquisition they made.
async fn contend(locker: &Locker, key: &str, tasks: usize, window: Duration) -> Vec<Sample> {
    let end = Instant::now() + window;
    let mut handles = Vec::new();
    for worker in 0..tasks {
        let (locker, key) = (locker.clone(), key.to_owned());
        handles.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                let start = Instant::now();
                let Ok(held) = locker.acquire(&key).await else {
                    continue;
                };
                samples.push(Sample {
                    waited: start.elapsed(),
                    at_us: now_us(),
                    worker,
                });
                let _ = locker.release(held).await;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap_or_default());
    }
    all
}
