//! The pause nemesis: worker processes loop on one key (fair, `fair(false)`,
//! fair with renewal, and the Python package `mongolock`), while random
//! workers and the server are frozen (SIGSTOP) for longer than both the
//! lease and the queue expiry, and workers are killed and restarted. The
//! Python package's worker starts first, and the Rust workers once it holds
//! the lock, so that every run has ours meet a lock it holds (it takes the
//! lock later only when nobody queues for it, which the run leaves to
//! chance).
//!
//! Each worker logs what it *believes*, on the machine's one clock: every
//! instant at which `is_lost()` still said false, with the timestamp taken
//! before the check (the Python package cannot check, so its belief runs
//! from `lock()`'s return to its own expiry or its release). The test then
//! asserts that no two beliefs overlap and that fencing tokens grow in the
//! order of acquisition. Runs its own server (it pauses it). Writes a
//! summary row to `target/pause-nemesis/`, which `.ci/run` prints.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::Client;
use mongolock::MongoLock;
use mongolock_suite::beliefs::{violations, History};
use mongolock_suite::{signal, workspace_root, LocalServer};
use rand::Rng;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const ROLE: &str = "MONGOLOCK_PAUSE_ROLE";
const URI: &str = "MONGOLOCK_PAUSE_URI";
const STOP_AT: &str = "MONGOLOCK_PAUSE_STOP_AT";
const DB: &str = "pause_nemesis";
const COLLECTION: &str = "lock";
const KEY: &str = "job";
const RUN: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_millis(1500);
const QUEUE_EXPIRY: Duration = Duration::from_secs(1);
/// The Rust workers, by kind; the Python package's worker comes on top.
const KINDS: [&str; 4] = ["fair", "fair", "unfair", "renew"];
/// How long the Python package's worker may take to start and take the
/// free lock, before the Rust workers start; the run is that much longer.
const PYTHON_START: Duration = Duration::from_secs(2);

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One Rust worker: acquire, believe while `is_lost()` says false for up
/// to 300 ms, release; until `stop_at`.
async fn rust_worker(uri: &str, kind: &str, stop_at: i64) {
    let client = Client::with_uri_str(uri).await.unwrap();
    let lock = MongoLock::with_collection(client.database(DB).collection(COLLECTION))
        .with_queue_expiry(QUEUE_EXPIRY)
        .unwrap();
    while now_us() < stop_at {
        let acquire = lock
            .acquire(KEY)
            .expires(LEASE)
            .timeout(Duration::from_secs(3))
            .fair(kind != "unfair")
            .renew(kind == "renew");
        let Ok(guard) = acquire.await else {
            continue; // busy, or the server was paused: try again
        };
        let hold = Duration::from_millis(rand::rng().random_range(0..300));
        let until = tokio::time::Instant::now() + hold;
        let token = guard.token();
        let mut believed: Option<(i64, i64)> = None;
        loop {
            let at = now_us();
            if guard.is_lost() {
                break;
            }
            match &mut believed {
                None => {
                    println!("S {token} {at}");
                    believed = Some((at, at));
                }
                Some((_, last)) => {
                    // Every instant, so that a worker killed mid-hold
                    // leaves its last belief, not a guess at it.
                    println!("H {token} {at}");
                    *last = at;
                }
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some((start, end)) = believed {
            println!("B {token} {start} {end}");
        }
        let _ = guard.release().await; // a failed release expires
    }
}

/// The child side; does nothing in a normal run.
#[tokio::test]
async fn child() {
    let (Ok(role), Ok(uri), Ok(stop_at)) = (
        std::env::var(ROLE),
        std::env::var(URI),
        std::env::var(STOP_AT),
    ) else {
        return;
    };
    rust_worker(&uri, &role, stop_at.parse().unwrap()).await;
}

struct Worker {
    name: String,
    kind: &'static str,
    child: Child,
    pid: u32,
}

/// Starts a worker whose output goes to `history`; `holds` is told when it
/// first reports holding the lock.
fn spawn(
    kind: &'static str,
    name: String,
    uri: &str,
    stop_at: i64,
    python: &str,
    history: &Arc<Mutex<History>>,
    holds: Option<tokio::sync::oneshot::Sender<()>>,
) -> Worker {
    let mut command = if kind == "python" {
        let mut command = Command::new(python);
        command
            .arg(workspace_root().join("tests/python/pause_worker.py"))
            .args([uri, DB, COLLECTION, KEY, &name, &stop_at.to_string()]);
        command
    } else {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(ROLE, kind)
            .env(URI, uri)
            .env(STOP_AT, stop_at.to_string());
        command
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let pid = child.id().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (history, worker) = (history.clone(), name.clone());
    tokio::spawn(async move {
        let mut holds = holds;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            history.lock().unwrap().line(&worker, &line);
            if line.starts_with("S ") {
                if let Some(holds) = holds.take() {
                    let _ = holds.send(());
                }
            }
        }
    });
    Worker {
        name,
        kind,
        child,
        pid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_workers_and_server_never_believe_at_once_and_tokens_grow() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let out = std::process::Command::new(workspace_root().join("scripts/python-mongolock"))
        .output()
        .expect("cannot run scripts/python-mongolock");
    assert!(
        out.status.success(),
        "cannot install the Python package mongolock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let server = LocalServer::start(&[]).unwrap();
    let uri = server.uri().to_owned();
    let stop_at = now_us() + i64::try_from((RUN + PYTHON_START).as_micros()).unwrap();
    let history = Arc::new(Mutex::new(History::default()));
    // The Python package's worker first, and the Rust workers once it
    // holds the lock: in every run ours meet a lock the Python package
    // holds. (Later it wins only when nobody queues: it cannot queue.)
    let (holds, held) = tokio::sync::oneshot::channel();
    let name = format!("python{}", KINDS.len());
    let first = spawn(
        "python",
        name,
        &uri,
        stop_at,
        &python,
        &history,
        Some(holds),
    );
    tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the Python package's worker did not take the free lock")
        .expect("the Python package's worker ended before holding the lock");
    let mut workers: Vec<Worker> = KINDS
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            spawn(
                kind,
                format!("{kind}{i}"),
                &uri,
                stop_at,
                &python,
                &history,
                None,
            )
        })
        .collect();
    workers.push(first);
    // Freezes run side by side (several workers, and the server, may be
    // stopped at once); a frozen worker is not killed, so a killed worker's
    // last belief ends when it was killed.
    let frozen_now: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut freezes = tokio::task::JoinSet::new();
    let (mut frozen, mut server_frozen, mut killed) = (0, 0, 0);
    let mut generation = 0;
    while now_us() < stop_at {
        let (pause, action, victim, freeze) = {
            let mut rng = rand::rng();
            (
                Duration::from_millis(rng.random_range(100..600)),
                rng.random_range(0..20),
                rng.random_range(0..workers.len()),
                Duration::from_millis(rng.random_range(100..4000)),
            )
        };
        tokio::time::sleep(pause).await;
        let pid = workers[victim].pid;
        if frozen_now.lock().unwrap().contains(&pid) {
            continue;
        }
        match action {
            // Freeze a worker, often past its lease and its queue entry.
            0..=11 => {
                frozen_now.lock().unwrap().push(pid);
                signal(pid, "-STOP");
                let frozen_now = frozen_now.clone();
                freezes.spawn(async move {
                    tokio::time::sleep(freeze).await;
                    signal(pid, "-CONT");
                    frozen_now.lock().unwrap().retain(|p| *p != pid);
                });
                frozen += 1;
            }
            // Freeze the server (up to 2 s).
            12..=14 => {
                let server_pid = server.pid();
                if frozen_now.lock().unwrap().contains(&server_pid) {
                    continue;
                }
                frozen_now.lock().unwrap().push(server_pid);
                server.pause();
                let frozen_now = frozen_now.clone();
                freezes.spawn(async move {
                    tokio::time::sleep(freeze / 2).await;
                    signal(server_pid, "-CONT");
                    frozen_now.lock().unwrap().retain(|p| *p != server_pid);
                });
                server_frozen += 1;
            }
            // Kill a Rust worker mid-whatever (its last belief is the last
            // instant it logged), and start another of its kind. (The
            // Python package's belief runs to its own expiry whatever it
            // does, so killing it would only shorten what it logs.)
            15 if workers[victim].kind != "python" => {
                let worker = &mut workers[victim];
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
                // Let its output drain before closing its last belief.
                tokio::time::sleep(Duration::from_millis(50)).await;
                history.lock().unwrap().killed(&worker.name);
                generation += 1;
                let name = format!("{}-{generation}", worker.name);
                *worker = spawn(worker.kind, name, &uri, stop_at, &python, &history, None);
                killed += 1;
            }
            _ => {}
        }
    }
    while freezes.join_next().await.is_some() {}
    for worker in &mut workers {
        let status = tokio::time::timeout(Duration::from_secs(60), worker.child.wait())
            .await
            .expect("a worker did not stop in time")
            .unwrap();
        assert!(status.success(), "worker {} failed: {status}", worker.name);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut history = std::mem::take(&mut *history.lock().unwrap());
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for belief in &history.beliefs {
        let kind = belief
            .worker
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *by_worker.entry(kind.to_owned()).or_default() += 1;
    }
    let mut counts: Vec<_> = by_worker.into_iter().collect();
    counts.sort();
    let found = violations(&mut history.beliefs);
    println!(
        "pause nemesis: {} beliefs over {} s ({counts:?}); {frozen} worker freezes, \
         {server_frozen} server freezes, {killed} kills; {} violations",
        history.beliefs.len(),
        RUN.as_secs(),
        found.len(),
    );
    for violation in &found {
        println!("{violation}");
    }
    // A row for `.ci/run` to print.
    let dir = workspace_root().join("target/pause-nemesis");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("summary.md"),
        format!(
            "| {} s | {} | {counts:?} | {frozen} | {server_frozen} | {killed} | {} |\n",
            RUN.as_secs(),
            history.beliefs.len(),
            found.len(),
        ),
    )
    .unwrap();
    for kind in ["fair", "unfair", "renew", "python"] {
        assert!(
            counts.iter().any(|(k, n)| *k == kind && *n > 0),
            "every kind of worker held the lock, {kind} too: {counts:?}"
        );
    }
    assert!(found.is_empty(), "{} violations", found.len());
}
