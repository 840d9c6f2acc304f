//! A fleet that migrates from the Python package `mongolock` job by job:
//! Python workers (the real package, 1.3.4, run by `tests/python/peer.py`)
//! and this crate share the default namespace and meet each other's lock
//! documents. Neither may take a lock the other holds.

use std::process::Command;
use std::time::Duration;

use mongolock::{Error, MongoLock};
use mongolock_suite::{fresh_collection, server_uri, workspace_root, Commands};

/// A Python worker on the same collection.
struct PythonPeer {
    python: String,
    uri: String,
    db: String,
    collection: String,
}

impl PythonPeer {
    fn new(lock: &MongoLock) -> Self {
        let out = Command::new(workspace_root().join("scripts/python-mongolock"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/python-mongolock: {e}"));
        assert!(
            out.status.success(),
            "cannot install the Python package mongolock: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let namespace = lock.collection().namespace();
        Self {
            python: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            uri: server_uri().unwrap(),
            db: namespace.db,
            collection: namespace.coll,
        }
    }

    fn run(&self, args: &[&str]) -> bool {
        let out = Command::new(&self.python)
            .arg(workspace_root().join("tests/python/peer.py"))
            .args([&self.uri, &self.db, &self.collection])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "peer.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.trim() == "True"
    }

    fn lock(&self, key: &str, owner: &str, expire: Option<u32>) -> bool {
        let expire = expire.map(|e| e.to_string());
        let mut args = vec!["lock", key, owner];
        args.extend(expire.as_deref());
        self.run(&args)
    }

    fn release(&self, key: &str, owner: &str) {
        self.run(&["release", key, owner]);
    }

    fn is_locked(&self, key: &str) -> bool {
        self.run(&["is_locked", key, "-"])
    }
}

#[tokio::test]
async fn python_package_locks_are_respected_and_respect_ours() {
    let lock = MongoLock::with_collection(fresh_collection("python_package").await);
    let py = PythonPeer::new(&lock);

    // Held by Python, with and without an expiry: not ours to take.
    assert!(py.lock("with-expiry", "py-worker", Some(60)));
    assert!(py.lock("no-expiry", "py-worker", None));
    for key in ["with-expiry", "no-expiry"] {
        assert!(lock.is_locked(key).await.unwrap(), "{key}");
        assert!(!lock.lock(key, "rust-worker").await.unwrap(), "{key}");
        match lock.acquire(key).await {
            Err(Error::Locked { owner, .. }) => assert_eq!(owner.as_deref(), Some("py-worker")),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(lock.list().await.unwrap().len(), 2);

    // Released by Python (it rewrites the whole document): ours to take.
    py.release("with-expiry", "py-worker");
    assert!(!lock.is_locked("with-expiry").await.unwrap());
    let guard = lock.acquire("with-expiry").await.unwrap();
    assert!(guard.token() > 0);

    // Held by us: Python sees it locked and cannot take it.
    assert!(py.is_locked("with-expiry"));
    assert!(!py.lock("with-expiry", "py-worker", Some(60)));
    // Released by us: Python can.
    assert!(guard.release().await.unwrap());
    assert!(!py.is_locked("with-expiry"));
    assert!(py.lock("with-expiry", "py-worker", Some(60)));
    assert!(!lock.lock("with-expiry", "rust-worker").await.unwrap());
}

#[tokio::test]
async fn expired_python_lock_is_taken_and_converted() {
    let lock = MongoLock::with_collection(fresh_collection("python_expired").await);
    let py = PythonPeer::new(&lock);
    assert!(py.lock("job", "py-worker", Some(1)));
    // Waits for the Python lease to end by the server's clock, then takes it.
    let guard = lock
        .acquire("job")
        .timeout(Duration::from_secs(20))
        .await
        .unwrap();
    let info = lock.get_lock_info("job").await.unwrap().unwrap();
    assert_eq!(info.owner.as_deref(), Some(guard.owner()));
    assert_eq!(info.token, guard.token());
    assert!(py.is_locked("job"), "the Python side must see our lock");
    assert!(guard.release().await.unwrap());
}

/// A release by the Python package replaces the whole lock document, our
/// queue and release id included. A waiter of ours queued behind the
/// Python holder hears of it from that replacement's change event, not
/// from a timer (its queue entry here outlasts the test, and its lease
/// check is 30 s away).
#[tokio::test]
async fn a_python_release_wakes_our_queued_waiter_by_its_change_event() {
    let coll = fresh_collection("python_wakes").await;
    let (lock, commands) = Commands::lock(&coll).await;
    let lock = lock.with_queue_expiry(Duration::from_secs(600)).unwrap();
    let py = PythonPeer::new(&lock);
    assert!(py.lock("job", "py-worker", Some(600)));
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire("job").timeout(Duration::from_secs(600)).await }
    });
    // Its light attempt, its queued one, and the look after the stream
    // opened: asleep, listening.
    commands.until_listening(3).await;
    let delivered = commands.delivered();
    py.release("job", "py-worker");
    let guard = waiter.await.unwrap().unwrap();
    assert!(
        commands.delivered() > delivered,
        "the waiter took the lock without hearing of the release"
    );
    assert!(guard.release().await.unwrap());
}

/// The Python package replaces the whole document when it takes and when
/// it releases a lock, so our fencing token is gone after it held the key.
/// The next token of ours still grows: the server's clock stamps it (epoch
/// ms x 1000), whether the pipeline takes the lock or the quick take of a
/// process that saw the key before proposes it.
#[tokio::test]
async fn tokens_keep_growing_after_the_python_package_held_the_key() {
    let coll = fresh_collection("python_tokens").await;
    let lock = MongoLock::with_collection(coll.clone());
    // Another process checks that the Python holder keeps ours out, so
    // `lock` never finds the key taken and takes it quickly each round.
    let other = MongoLock::with_collection(coll);
    let py = PythonPeer::new(&lock);
    let mut tokens = Vec::new();
    for round in 0..3 {
        let guard = lock.acquire("job").await.unwrap();
        tokens.push(guard.token());
        assert!(guard.release().await.unwrap());
        assert!(py.lock("job", "py-worker", Some(60)), "round {round}");
        assert!(matches!(
            other.acquire("job").await,
            Err(mongolock::Error::Locked { .. })
        ));
        py.release("job", "py-worker");
        let doc = lock.get_lock_info("job").await.unwrap().unwrap();
        assert_eq!(doc.token, 0, "the package's release dropped our token");
    }
    let last = lock.acquire("job").await.unwrap();
    tokens.push(last.token());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens in the order of acquisition: {tokens:?}"
    );
}
