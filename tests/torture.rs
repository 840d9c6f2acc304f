//! Several OS processes, each with several tasks, fight over a few keys
//! while faults are injected into their lock connections; and a holder is
//! killed with SIGKILL. Runs its own server (fail points are server-wide).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};
use mongolock::MongoLock;
use mongolock_suite::{fail_command, LocalServer, Witness};
use rand::Rng;
use tokio::io::AsyncBufReadExt;

const ROLE: &str = "MONGOLOCK_TORTURE_ROLE";
const URI: &str = "MONGOLOCK_TORTURE_URI";
const APP: &str = "MONGOLOCK_TORTURE_APP";
const PROCESSES: usize = 3;
const TASKS: usize = 4;
const ROUNDS: usize = 10;
const KEYS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

async fn client(uri: &str, app: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.unwrap();
    options.app_name = Some(app.to_owned());
    Client::with_options(options).unwrap()
}

fn collections(
    client: &Client,
) -> (
    Collection<Document>,
    Collection<Document>,
    Collection<Document>,
) {
    let db = client.database("torture");
    (
        db.collection("lock"),
        db.collection("state"),
        db.collection("log"),
    )
}

/// One child process: TASKS tasks, ROUNDS acquisitions each, of random keys.
async fn worker_process(uri: &str, app: &str) {
    // The lock's connections get faults; the bookkeeping's never do.
    // Fair (the default, said here since the test is about it): waiters of
    // all processes queue, and the head alone may take a released lock.
    let lock =
        MongoLock::with_collection(collections(&client(uri, app).await).0).with_fairness(true);
    let (_, state, log) = collections(&client(uri, "bookkeeping").await);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (lock, state, log) = (lock.clone(), state.clone(), log.clone());
        let witness = Witness::new(state.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < ROUNDS {
                let (key, hold, renew) = {
                    let mut rng = rand::rng();
                    (
                        format!("k{}", rng.random_range(0..KEYS)),
                        Duration::from_millis(rng.random_range(0..15)),
                        rng.random_bool(0.5),
                    )
                };
                let Ok(guard) = lock
                    .acquire(&key)
                    .expires(Duration::from_secs(3))
                    .renew(renew)
                    .timeout(WAIT)
                    .await
                else {
                    continue; // an injected fault: try again
                };
                critical_section(
                    &witness,
                    &log,
                    &state,
                    &key,
                    guard.token(),
                    guard.owner(),
                    hold,
                )
                .await;
                done += 1;
                let _ = guard.release().await; // a failed release expires
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn critical_section(
    witness: &Witness,
    log: &Collection<Document>,
    seq: &Collection<Document>,
    key: &str,
    token: i64,
    owner: &str,
    hold: Duration,
) {
    witness.enter(key).await.unwrap();
    let seq = seq
        .find_one_and_update(doc! { "_id": "seq" }, doc! { "$inc": { "n": 1_i64 } })
        .upsert(true)
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .unwrap()
        .and_then(|d| d.get_i64("n").ok());
    log.insert_one(doc! { "key": key, "token": token, "owner": owner, "seq": seq })
        .await
        .unwrap();
    witness.bump(key, hold).await.unwrap();
    witness.leave(key).await.unwrap();
}

/// The child side of both tests; does nothing in a normal run.
#[tokio::test]
async fn child() {
    let (Ok(role), Ok(uri)) = (std::env::var(ROLE), std::env::var(URI)) else {
        return;
    };
    let app = std::env::var(APP).unwrap_or_default();
    match role.as_str() {
        "worker" => worker_process(&uri, &app).await,
        "holder" => {
            let lock = MongoLock::with_collection(collections(&client(&uri, &app).await).0);
            let guard = lock
                .acquire("crash")
                .expires(Duration::from_secs(2))
                .await
                .unwrap();
            println!("HOLDING {}", guard.token());
            std::future::pending::<()>().await;
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn_child(role: &str, uri: &str, app: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(URI, uri)
        .env(APP, app)
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn processes_under_faults_never_overlap_and_tokens_grow() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let server = LocalServer::start(&["--enable-test-commands"]).unwrap();
    let admin = Client::with_uri_str(server.uri()).await.unwrap();
    let mut children = Vec::new();
    for p in 0..PROCESSES {
        let mut command = spawn_child("worker", server.uri(), &format!("proc{p}"));
        command.stdout(Stdio::null());
        children.push(tokio::spawn(async move { command.status().await }));
    }
    let faults = [
        doc! { "closeConnection": true },
        doc! { "errorCode": 2 },
        doc! { "blockConnection": true, "blockTimeMS": 200 },
    ];
    let mut injected = 0;
    // Every run is bounded: a stuck worker fails the test, it does not hang CI.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while children.iter().any(|c| !c.is_finished()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers did not finish in time"
        );
        let data = {
            let mut rng = rand::rng();
            let mut data = faults[rng.random_range(0..faults.len())].clone();
            data.insert(
                "failCommands",
                vec![["findAndModify", "update"][rng.random_range(0..2)]],
            );
            data.insert("appName", format!("proc{}", rng.random_range(0..PROCESSES)));
            data
        };
        fail_command(&admin, 1, data).await;
        injected += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for child in children {
        assert!(
            child.await.unwrap().unwrap().success(),
            "a worker process failed"
        );
    }

    let (_, state, log) = collections(&admin);
    let entries: Vec<Document> = log
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(entries.len(), PROCESSES * TASKS * ROUNDS);
    let mut last_token: HashMap<String, i64> = HashMap::new();
    let mut per_key: HashMap<String, i64> = HashMap::new();
    for entry in &entries {
        let key = entry.get_str("key").unwrap().to_owned();
        let token = entry.get_i64("token").unwrap();
        if let Some(previous) = last_token.insert(key.clone(), token) {
            assert!(
                token > previous,
                "token went from {previous} to {token} on {key}"
            );
        }
        *per_key.entry(key).or_default() += 1;
    }
    let witness = Witness::new(state);
    for (key, acquisitions) in &per_key {
        let count = witness.count(key).await.unwrap();
        assert_eq!(count, Some(*acquisitions), "lost updates on {key}");
    }
    let overlaps = witness.overlaps().await.unwrap();
    println!(
        "torture: {PROCESSES} processes x {TASKS} tasks, {} acquisitions on {KEYS} keys, \
         {injected} faults armed, {overlaps} overlapping holders",
        entries.len(),
    );
    assert_eq!(overlaps, 0, "two holders of one key at once");
}

#[tokio::test]
async fn killed_holders_lock_is_taken_once_its_lease_ran_out_and_not_before() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let server = LocalServer::start(&[]).unwrap();
    let mut holder = spawn_child("holder", server.uri(), "holder")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let token = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the holder exited early");
        // The test harness prints "test child ... " on the same line.
        if let Some((_, token)) = line.split_once("HOLDING ") {
            break token.trim().parse::<i64>().unwrap();
        }
    };
    let client = Client::with_uri_str(server.uri()).await.unwrap();
    let lock = MongoLock::with_collection(collections(&client).0);
    let held = lock.get_lock_info("crash").await.unwrap().unwrap();
    assert_eq!(held.token, token);

    holder.kill().await.unwrap(); // SIGKILL: no release, no cleanup

    let next = lock.acquire("crash").timeout(WAIT).await.unwrap();
    assert!(
        next.acquired_at().unwrap() >= held.expires_at,
        "taken before the lease ran out"
    );
    assert!(next.token() > token);
}
