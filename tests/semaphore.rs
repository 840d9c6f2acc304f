//! Counting semaphores: FIFO waiters and permits in one process, and a
//! cross-process torture: 4 processes x 4 tasks on 3 permits (lease 1 s,
//! renewed), processes killed and frozen past the lease at random. Each
//! task logs its believed holds on the machine's one clock (every instant
//! at which `is_lost()` still said false, the timestamp taken before the
//! check, from the first check after `acquire_within` returned); the test checks that no
//! more than 3 were believed at any instant, that each permit's tokens grow
//! in the order of its holds, and that permits kept being taken after the
//! last kill (a dead holder's permit comes back after its lease).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongolock::{Error, MongoLock};
use mongolock_suite::beliefs::{most_at_once, Belief};
use mongolock_suite::fresh_lock;
use rand::Rng;
use tokio::process::Child;

const ROLE: &str = "MONGOLOCK_SEMAPHORE_ROLE";
const COLLECTION: &str = "MONGOLOCK_SEMAPHORE_COLLECTION";
const STOP_AT: &str = "MONGOLOCK_SEMAPHORE_STOP_AT";
const PERMITS: u32 = 3;
const LEASE: Duration = Duration::from_secs(1);
const RUN: Duration = Duration::from_secs(20);
const QUEUE_EXPIRY: Duration = Duration::from_secs(1);

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[tokio::test]
async fn permits_are_given_in_the_order_waiters_asked() {
    let lock = fresh_lock("semaphore_fifo").await;
    let sem = lock.semaphore("export", 2);
    let a = sem.acquire().await.unwrap();
    let b = sem.acquire().await.unwrap();
    assert_ne!(a.index(), b.index());
    assert!(matches!(sem.acquire().await, Err(Error::Locked { .. })));
    assert_eq!(sem.in_use().await.unwrap(), 2);
    let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..3 {
        let (sem, order) = (sem.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let permit = sem.acquire_within(Duration::from_secs(30)).await.unwrap();
            order.lock().await.push(n);
            tokio::time::sleep(Duration::from_millis(50)).await;
            permit.release().await.unwrap();
        }));
        // Each waits in line (the head holds the gate; the others queue
        // on it) before the next asks.
        let wanted = n;
        while lock
            .get_lock_info("export")
            .await
            .unwrap()
            .map_or(0, |i| i.waiters + usize::from(i.owner.is_some()))
            < wanted + 1
        {
            tokio::task::yield_now().await;
        }
    }
    a.release().await.unwrap();
    b.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().await, vec![0, 1, 2]);
    assert!(matches!(
        lock.semaphore("bad", 0).acquire().await,
        Err(Error::InvalidPermits { .. })
    ));
}

async fn lock_of(collection: &str) -> MongoLock {
    let uri = mongolock_suite::server_uri().unwrap();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    MongoLock::with_collection(client.database("mongolock_test").collection(collection))
}

/// A worker process: 4 tasks take a permit, hold it 50-300 ms while
/// checking it, return it, and again, until `stop_at`. Prints
/// `P index token start end` per hold (and `H index token at` while held).
async fn worker(collection: &str, stop_at: i64) {
    // A killed process's waiters leave entries in the line: they lapse
    // after the queue expiry (15 s by default), short here.
    let lock = lock_of(collection)
        .await
        .with_queue_expiry(QUEUE_EXPIRY)
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let sem = lock.semaphore("export", PERMITS).expires(LEASE).renew(true);
        tasks.push(tokio::spawn(async move {
            while now_us() < stop_at {
                let Ok(permit) = sem.acquire_within(Duration::from_secs(5)).await else {
                    continue;
                };
                let (index, token) = (permit.index(), permit.token());
                let hold = rand::rng().random_range(50_000..300_000);
                // A belief is an instant taken before a check that said
                // held: the first such is the hold's start (a freeze right
                // after `acquire_within` returned must not count as held).
                let mut held: Option<(i64, i64)> = None;
                loop {
                    let at = now_us();
                    if permit.is_lost() {
                        break;
                    }
                    let start = held.map_or(at, |(start, _)| start);
                    held = Some((start, at));
                    println!("H {index} {token} {at}");
                    if at - start > hold {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Some((start, last)) = held {
                    println!("P {index} {token} {start} {last}");
                }
                let _ = permit.release().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    lock.finish_releases(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn child() {
    let (Ok(_), Ok(collection), Ok(stop_at)) = (
        std::env::var(ROLE),
        std::env::var(COLLECTION),
        std::env::var(STOP_AT),
    ) else {
        return;
    };
    worker(&collection, stop_at.parse().unwrap()).await;
}

/// Holds as printed: `(index, token) -> (start, last)`, the last instant
/// updated by `H` lines, so a killed holder's hold ends at its last word.
type Holds = Arc<Mutex<BTreeMap<(u32, i64), (i64, i64)>>>;

fn spawn(collection: &str, stop_at: i64, holds: &Holds) -> Child {
    let holds = holds.clone();
    let env = [
        (ROLE, "worker".to_owned()),
        (COLLECTION, collection.to_owned()),
        (STOP_AT, stop_at.to_string()),
    ];
    let child = mongolock_suite::child_test(&env, move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields
            .iter()
            .position(|f| *f == "H" || *f == "P")
            .unwrap_or(fields.len());
        let n: Vec<i64> = fields[at..]
            .iter()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let mut holds = holds.lock().unwrap();
        match (fields.get(at), n.as_slice()) {
            (Some(&"H"), [index, token, at]) => {
                let entry = holds.entry((*index as u32, *token)).or_insert((*at, *at));
                entry.1 = entry.1.max(*at);
            }
            (Some(&"P"), [index, token, start, end]) => {
                holds.insert((*index as u32, *token), (*start, *end));
            }
            _ => {}
        }
    });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_holders_than_permits_under_kills_and_pauses() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let collection = format!("semaphore_{:08x}", rand::random::<u32>());
    let holds: Holds = Arc::default();
    let stop_at = now_us() + i64::try_from(RUN.as_micros()).unwrap();
    let mut workers: Vec<Child> = (0..4)
        .map(|_| spawn(&collection, stop_at, &holds))
        .collect();
    let mut last_kill = 0;
    let mut kills = 0;
    while now_us() < stop_at - 6_000_000 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let at = rand::rng().random_range(0..workers.len());
        let pid = workers[at].id().unwrap();
        if rand::rng().random_bool(0.5) {
            mongolock_suite::signal(pid, "-KILL");
            let _ = workers[at].wait().await;
            workers[at] = spawn(&collection, stop_at, &holds);
            last_kill = now_us();
            kills += 1;
        } else {
            mongolock_suite::signal(pid, "-STOP");
            tokio::time::sleep(LEASE * 2).await;
            mongolock_suite::signal(pid, "-CONT");
        }
    }
    for w in &mut workers {
        let _ = w.wait().await;
    }
    let holds = holds.lock().unwrap().clone();
    let beliefs: Vec<Belief> = holds
        .iter()
        .map(|((index, token), (start, end))| Belief {
            worker: format!("permit {index}"),
            token: *token,
            start: *start,
            end: *end,
        })
        .collect();
    let (most, when) = most_at_once(&beliefs);
    // Per permit: no two holds at once, tokens growing with the holds.
    let mut per_permit: BTreeMap<u32, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for ((index, token), (start, end)) in &holds {
        per_permit
            .entry(*index)
            .or_default()
            .push((*start, *end, *token));
    }
    for (index, holds) in &mut per_permit {
        holds.sort();
        for pair in holds.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "permit {index} held twice at once: {pair:?}"
            );
            assert!(
                pair[0].2 < pair[1].2,
                "permit {index}'s token went back: {pair:?}"
            );
        }
    }
    let after_kill = beliefs
        .iter()
        .filter(|b| b.start > last_kill + 1_000_000)
        .count();
    eprintln!(
        "{} holds, {kills} kills, at most {most} at once, {after_kill} holds more than a lease after the last kill",
        beliefs.len()
    );
    assert!(most <= PERMITS as usize, "{most} holders at once at {when}");
    assert!(
        most == PERMITS as usize,
        "the permits were never all in use: {most}"
    );
    assert!(after_kill > 0, "no permit was taken after the last kill");
}

#[mongolock::mongo_locked(key = "exports", permits = 2, lock = lock, on_busy = skip)]
async fn export(
    lock: &MongoLock,
    entered: tokio::sync::mpsc::Sender<()>,
    mut leave: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<()>, Error> {
    entered.send(()).await.unwrap();
    leave.wait_for(|go| *go).await.unwrap();
    Ok(Some(()))
}

/// `#[mongo_locked(permits = 2)]`: two calls run at once, a third is
/// skipped while they do.
#[tokio::test]
async fn the_attribute_lets_as_many_calls_in_as_there_are_permits() {
    let lock = fresh_lock("semaphore_macro").await;
    let (entered, mut inside) = tokio::sync::mpsc::channel(4);
    let (go, leave) = tokio::sync::watch::channel(false);
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (lock, entered, leave) = (lock.clone(), entered.clone(), leave.clone());
            tokio::spawn(async move { export(&lock, entered, leave).await })
        })
        .collect();
    // Both calls are let in (a minute is far more than they need).
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), inside.recv())
            .await
            .expect("two calls were not let in at once")
            .unwrap();
    }
    let third = export(&lock, entered.clone(), leave.clone()).await.unwrap();
    assert_eq!(third, None, "a third call ran beside two");
    go.send(true).unwrap();
    for call in running {
        assert_eq!(call.await.unwrap().unwrap(), Some(()));
    }
}
