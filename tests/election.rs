//! Leader election across processes, under a nemesis: three candidate
//! processes campaign for one election (lease 1 s) and lead for a while,
//! then resign and campaign again; a fourth process observes. The nemesis
//! kills the leader (SIGKILL, then a new candidate process in its place)
//! and freezes it (SIGSTOP for 2.5 s, past its lease, then SIGCONT).
//!
//! Each candidate logs what it believes, on the machine's one clock: every
//! instant at which `is_lost()` still said false (the timestamp taken
//! before the check), from the first check after `campaign` returned. The test asserts that no
//! two terms were believed at once, that tokens grow with every term, and
//! that the observer saw every term, in order. It prints the failover time
//! after each kill (from the kill to the next leader's `campaign`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongolock::MongoLock;
use mongolock_suite::beliefs::{violations, History};
use rand::Rng;
use tokio::process::Child;

const ROLE: &str = "MONGOLOCK_ELECTION_ROLE";
const COLLECTION: &str = "MONGOLOCK_ELECTION_COLLECTION";
const STOP_AT: &str = "MONGOLOCK_ELECTION_STOP_AT";
const NAME: &str = "election:scheduler";
const LEASE: Duration = Duration::from_secs(1);
const RUN: Duration = Duration::from_secs(20);

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

async fn lock_of(collection: &str) -> MongoLock {
    let uri = mongolock_suite::server_uri().unwrap();
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    MongoLock::with_collection(client.database("mongolock_test").collection(collection))
}

/// A candidate: campaigns, leads for up to 1.2 s while checking its term,
/// resigns, and again, until `stop_at`.
async fn candidate(collection: &str, stop_at: i64) {
    let lock = lock_of(collection).await;
    let election = lock.election(NAME).lease(LEASE);
    let me = format!("pid {}", std::process::id());
    while now_us() < stop_at {
        let leadership = election.campaign(me.as_str()).await.unwrap();
        let token = leadership.token();
        let hold = rand::rng().random_range(300_000..1_200_000);
        // A belief is an instant taken before a check that said leading:
        // the first such starts the term (a freeze right after `campaign`
        // returned must not count as leading).
        let mut held: Option<(i64, i64)> = None;
        loop {
            let at = now_us();
            if leadership.is_lost() {
                break;
            }
            match held {
                None => println!("S {token} {at}"),
                Some(_) => println!("H {token} {at}"),
            }
            let start = held.map_or(at, |(start, _)| start);
            held = Some((start, at));
            if at - start > hold || at > stop_at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((start, last)) = held {
            println!("B {token} {start} {last}");
        }
        let _ = leadership.resign().await;
    }
    lock.finish_releases(Duration::from_secs(5)).await;
}

/// The observer: prints every change it is told of, in order.
async fn observer(collection: &str, stop_at: i64) {
    let lock = lock_of(collection).await;
    let mut observer = lock.election(NAME).observe();
    loop {
        let wait = Duration::from_micros(u64::try_from(stop_at - now_us()).unwrap_or(0));
        match tokio::time::timeout(wait, observer.changed()).await {
            Ok(Some(leader)) => println!("O {} {}", leader.token, leader.value.unwrap_or_default()),
            Ok(None) => println!("O none"),
            Err(_) => return,
        }
    }
}

#[tokio::test]
async fn child() {
    let (Ok(role), Ok(collection), Ok(stop_at)) = (
        std::env::var(ROLE),
        std::env::var(COLLECTION),
        std::env::var(STOP_AT),
    ) else {
        return;
    };
    let stop_at = stop_at.parse().unwrap();
    match role.as_str() {
        "observer" => observer(&collection, stop_at).await,
        _ => candidate(&collection, stop_at).await,
    }
}

struct Process {
    name: String,
    child: Child,
}

fn spawn(
    role: &str,
    name: String,
    collection: &str,
    stop_at: i64,
    history: &Arc<Mutex<History>>,
    observed: &Arc<Mutex<Vec<String>>>,
) -> Process {
    let (history, observed, worker) = (history.clone(), observed.clone(), name.clone());
    let env = [
        (ROLE, role.to_owned()),
        (COLLECTION, collection.to_owned()),
        (STOP_AT, stop_at.to_string()),
    ];
    let child = mongolock_suite::child_test(&env, move |line| {
        if let Some(at) = line.find("O ") {
            observed.lock().unwrap().push(line[at + 2..].to_owned());
        } else {
            history.lock().unwrap().line(&worker, line);
        }
    });
    Process { name, child }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_never_overlap_tokens_grow_and_observers_see_every_term() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let collection = format!("election_{:08x}", rand::random::<u32>());
    let history = Arc::new(Mutex::new(History::default()));
    let observed: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = now_us();
    let stop_at = start + i64::try_from(RUN.as_micros()).unwrap();
    let observer = spawn(
        "observer",
        "observer".into(),
        &collection,
        stop_at + 3_000_000,
        &history,
        &observed,
    );
    let mut candidates: Vec<Process> = (0..3)
        .map(|i| {
            spawn(
                "candidate",
                format!("c{i}"),
                &collection,
                stop_at,
                &history,
                &observed,
            )
        })
        .collect();
    let mut failovers = Vec::new();
    let mut kills = Vec::new();
    let mut round = 0;
    while now_us() < stop_at - 3_000_000 {
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        // The leader now: the candidate with an open belief.
        let leader = {
            let h = history.lock().unwrap();
            candidates.iter().position(|c| h.open.contains_key(&c.name))
        };
        let Some(at) = leader else { continue };
        round += 1;
        let pid = candidates[at].child.id().unwrap();
        if round % 2 == 1 {
            // Killed: a new candidate process takes its place.
            let killed_at = now_us();
            kills.push(((killed_at - start) / 1000, candidates[at].name.clone()));
            let opened_before = history.lock().unwrap().beliefs.len();
            mongolock_suite::signal(pid, "-KILL");
            let _ = candidates[at].child.wait().await;
            let name = candidates[at].name.clone();
            history.lock().unwrap().killed(&name);
            let new_name = format!("{name}+");
            candidates[at] = spawn(
                "candidate",
                new_name,
                &collection,
                stop_at,
                &history,
                &observed,
            );
            // The next term's start, for the failover figure.
            let next = loop {
                let next_start = {
                    let h = history.lock().unwrap();
                    h.open
                        .values()
                        .map(|(_, s, _)| *s)
                        .filter(|s| *s > killed_at)
                        .min()
                        .or_else(|| {
                            h.beliefs[opened_before..]
                                .iter()
                                .map(|b| b.start)
                                .filter(|s| *s > killed_at)
                                .min()
                        })
                };
                if let Some(next) = next_start {
                    break next;
                }
                if now_us() > stop_at {
                    break killed_at;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            failovers.push((next - killed_at) / 1000);
        } else {
            // Frozen past its lease, then thawed.
            mongolock_suite::signal(pid, "-STOP");
            tokio::time::sleep(LEASE * 5 / 2).await;
            mongolock_suite::signal(pid, "-CONT");
        }
    }
    for c in &mut candidates {
        let _ = c.child.wait().await;
    }
    let mut observer = observer;
    let _ = observer.child.wait().await;

    let mut beliefs = history.lock().unwrap().beliefs.clone();
    if std::env::var("ELECTION_DEBUG").is_ok() {
        let mut sorted = beliefs.clone();
        sorted.sort_by_key(|b| b.start);
        for b in &sorted {
            eprintln!(
                "{} {} {}..{}",
                b.worker,
                b.token,
                (b.start - start) / 1000,
                (b.end - start) / 1000
            );
        }
        eprintln!("kills at: {kills:?}");
    }
    let found = violations(&mut beliefs);
    let terms: Vec<i64> = beliefs.iter().map(|b| b.token).collect();
    let seen: Vec<i64> = observed
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let mut seen_terms = seen.clone();
    seen_terms.dedup();
    eprintln!(
        "{} terms, {} kills (failover ms: {failovers:?}), observer saw {} changes",
        terms.len(),
        failovers.len(),
        seen.len()
    );
    assert!(found.is_empty(), "{found:#?}");
    assert!(terms.len() >= 5, "too few terms: {terms:?}");
    assert!(
        seen_terms.windows(2).all(|w| w[0] < w[1]),
        "the observer saw terms out of order: {seen_terms:?}"
    );
    let seen_set: std::collections::HashSet<i64> = seen_terms.iter().copied().collect();
    let missing: Vec<i64> = terms
        .iter()
        .filter(|t| !seen_set.contains(t))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "terms the observer never saw: {missing:?} of {terms:?}"
    );
}
