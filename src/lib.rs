//! Support for this workspace's tests, examples and benchmarks: a local
//! MongoDB-compatible server (SecantusDB), started on demand.
//!
//! Set `MONGODB_URI` to use another server instead; nothing is started then.
//! Not published: library users never see this crate.

pub mod beliefs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use mongodb::bson::Document;
use mongodb::Collection;
use mongolock::MongoLock;

/// A SecantusDB process owned by this process. It stops when this value is
/// dropped or, at the latest, when this process exits (its supervisor watches
/// our end of a pipe).
#[derive(Debug)]
pub struct LocalServer {
    uri: String,
    pid: u32,
    child: Child,
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
}

impl LocalServer {
    /// Starts a server with extra `secantusd-py` arguments, such as
    /// `--enable-test-commands` or `--storage-path DIR`, installing SecantusDB
    /// first if needed.
    pub fn start(args: &[&str]) -> Result<Self, String> {
        Self::start_with_env(args, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the
    /// server process, such as libfaketime's `LD_PRELOAD` and `FAKETIME`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let script = workspace_root().join("scripts/mongo-server");
        install(&script)?;
        let mut child = Command::new(&script)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the server script has no pipes".to_owned());
        };
        let mut stdout = BufReader::new(stdout);
        let (mut uri, mut pid) = (None, None);
        while uri.is_none() || pid.is_none() {
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "{} exited before the server was ready",
                        script.display()
                    ))
                }
                Ok(_) => {}
            }
            if let Some(v) = line.trim().strip_prefix("uri=") {
                uri = Some(v.to_owned());
            } else if let Some(v) = line.trim().strip_prefix("pid=") {
                pid = v.parse().ok();
            }
        }
        let (Some(uri), Some(pid)) = (uri, pid) else {
            return Err("no uri from the server script".to_owned());
        };
        Ok(Self {
            uri,
            pid,
            child,
            _stdin: stdin,
            _stdout: stdout,
        })
    }

    /// The connection string.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The server's process id (to pause or kill it in fault tests).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Freezes the server process (SIGSTOP): connections stay open, nothing
    /// answers.
    pub fn pause(&self) {
        signal(self.pid, "-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid, "-CONT");
    }
}

/// Sends `signal` (as `kill` spells it: `-STOP`, `-CONT`, `-KILL`) to a
/// process, for the pause and kill nemeses.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill {signal} {pid} failed"
    );
}

/// Installs SecantusDB on first use, once per process, with its progress on
/// our standard error: the first install takes a minute, and a silent
/// minute looks like a hang.
fn install(script: &std::path::Path) -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let status = Command::new(script)
                .arg("--install")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{} --install failed", script.display()))
            }
        })
        .clone()
}

/// A server of its own for fault tests, with `--enable-test-commands` (fail
/// points are server-wide, and such tests pause, kill or restart it), so
/// these tests ignore `MONGODB_URI`.
#[derive(Debug)]
pub struct FaultServer {
    /// The server process.
    pub server: LocalServer,
    /// Arms fail points; its own commands are never failed.
    pub admin: mongodb::Client,
}

impl FaultServer {
    /// Starts one with extra `secantusd-py` arguments.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Starts one with extra arguments and environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--enable-test-commands"];
        all.extend_from_slice(args);
        let server = LocalServer::start_with_env(&all, env)
            .unwrap_or_else(|e| panic!("cannot start the test server: {e}"));
        let admin = mongodb::Client::with_uri_str(server.uri())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        Self { server, admin }
    }

    /// A client that identifies as `app`, so fail points can target it.
    pub async fn client(&self, app: &str) -> mongodb::Client {
        let mut options = mongodb::options::ClientOptions::parse(self.server.uri())
            .await
            .unwrap_or_else(|e| panic!("bad test server URI: {e}"));
        options.app_name = Some(app.to_owned());
        mongodb::Client::with_options(options).unwrap_or_else(|e| panic!("no client: {e}"))
    }

    /// A lock in `faults.lock` whose client identifies as `app`.
    pub async fn lock(&self, app: &str) -> MongoLock {
        let client = self.client(app).await;
        MongoLock::with_collection(client.database("faults").collection("lock"))
    }

    /// Arms `failCommand` for the next `times` commands of `app`'s clients.
    pub async fn fail(&self, times: i32, app: &str, data: Document) {
        let mut data = data;
        data.insert("appName", app);
        fail_command(&self.admin, times, data).await;
    }
}

/// Runs copies of this program as worker processes, one per name in
/// `names` with `role_var` set to it and `env` added, as several machines
/// would run one service, and waits for all of them.
pub fn run_workers(role_var: &str, names: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let program = std::env::current_exe().map_err(|e| format!("no program path: {e}"))?;
    let mut children = Vec::new();
    for name in names {
        let child = Command::new(&program)
            .env(role_var, name)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start worker {name}: {e}"))?;
        children.push(child);
    }
    let succeeded = children
        .into_iter()
        .filter_map(|mut child| child.wait().ok().filter(|status| status.success()))
        .count();
    match names.len() - succeeded {
        0 => Ok(()),
        n => Err(format!("{n} worker(s) failed")),
    }
}

/// Runs this test program again as a child process that runs only its
/// test named `child` (a worker of a multi-process test), with `env` added
/// and `MONGODB_URI` set to [`server_uri`]'s server, and hands each line
/// the child prints to `on_line`. The child is killed when dropped.
pub fn child_test(
    env: &[(&str, String)],
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let program = std::env::current_exe().unwrap_or_else(|e| panic!("no program path: {e}"));
    let uri = server_uri().unwrap_or_else(|e| panic!("no MongoDB server for tests: {e}"));
    let mut child = tokio::process::Command::new(program)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("MONGODB_URI", uri)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start a worker process: {e}"));
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                on_line(&line);
            }
        });
    }
    child
}

/// A free loopback port, for a server that must keep its address across a
/// restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Arms SecantusDB's (and mongod's) `failCommand` fail point for the next
/// `times` matching commands. `data` holds `failCommands` and the fault:
/// `closeConnection`, `errorCode`, or `blockConnection` with `blockTimeMS`.
/// The server must run with `--enable-test-commands`.
pub async fn fail_command(client: &mongodb::Client, times: i32, data: Document) {
    client
        .database("admin")
        .run_command(mongodb::bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": times },
            "data": data,
        })
        .await
        .unwrap_or_else(|e| panic!("configureFailPoint failed: {e}"));
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // Closing stdin (dropped with self) stops the server; SIGTERM makes it
        // immediate.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The root of this workspace.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The server for this process: `MONGODB_URI` if set, else one local server
/// started on first use and shared by every caller in this process.
pub fn server_uri() -> Result<String, String> {
    match external_uri() {
        Some(uri) => Ok(uri),
        None => shared_server().map(|s| s.uri.clone()),
    }
}

/// The process id of [`server_uri`]'s server when it is the local one this
/// process started (to read its CPU time), `None` with `MONGODB_URI`.
pub fn server_pid() -> Option<u32> {
    match external_uri() {
        Some(_) => None,
        None => shared_server().ok().map(LocalServer::pid),
    }
}

/// `MONGODB_URI`, when it is set and not empty.
fn external_uri() -> Option<String> {
    std::env::var("MONGODB_URI")
        .ok()
        .filter(|uri| !uri.is_empty())
}

/// The local server shared by this process's callers, started on first use.
fn shared_server() -> Result<&'static LocalServer, String> {
    static SERVER: OnceLock<Result<LocalServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| LocalServer::start(&[]))
        .as_ref()
        .map_err(Clone::clone)
}

/// A fresh, empty collection for one test, named after it, in database
/// `mongolock_test`, on [`server_uri`]'s server.
pub async fn fresh_collection(name: &str) -> Collection<Document> {
    let uri = match server_uri() {
        Ok(uri) => uri,
        Err(e) => panic!("no MongoDB server for tests: {e}"),
    };
    let client = match mongodb::Client::with_uri_str(&uri).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {uri}: {e}"),
    };
    let suffix: u32 = rand::random();
    client
        .database("mongolock_test")
        .collection(&format!("{name}_{suffix:08x}"))
}

/// A [`MongoLock`] on a [`fresh_collection`].
pub async fn fresh_lock(name: &str) -> MongoLock {
    MongoLock::with_collection(fresh_collection(name).await)
}

/// Bookkeeping for exclusion tests that span processes, kept in one
/// collection: who is inside a critical section, the overlaps seen, and a
/// counter updated with a deliberately non-atomic read-modify-write, whose
/// lost updates would show two holders at once.
#[derive(Debug, Clone)]
pub struct Witness {
    state: Collection<Document>,
}

impl Witness {
    /// Bookkeeping in `state`.
    pub fn new(state: Collection<Document>) -> Self {
        Self { state }
    }

    /// Enters `scope`'s critical section; counts an overlap if someone else
    /// is inside.
    pub async fn enter(&self, scope: &str) -> mongodb::error::Result<()> {
        let inside = self
            .state
            .find_one_and_update(
                mongodb::bson::doc! { "_id": format!("inside:{scope}") },
                mongodb::bson::doc! { "$inc": { "n": 1 } },
            )
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .await?
            .and_then(|d| d.get_i32("n").ok());
        if inside != Some(1) {
            self.state
                .update_one(
                    mongodb::bson::doc! { "_id": "overlaps" },
                    mongodb::bson::doc! { "$inc": { "n": 1 } },
                )
                .upsert(true)
                .await?;
        }
        Ok(())
    }

    /// Adds one to `scope`'s counter by reading it, waiting `hold`, and
    /// writing it back.
    pub async fn bump(&self, scope: &str, hold: std::time::Duration) -> mongodb::error::Result<()> {
        let id = format!("count:{scope}");
        let count = self.count(scope).await?.unwrap_or(0);
        tokio::time::sleep(hold).await;
        self.state
            .update_one(
                mongodb::bson::doc! { "_id": id },
                mongodb::bson::doc! { "$set": { "n": count + 1 } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Leaves `scope`'s critical section.
    pub async fn leave(&self, scope: &str) -> mongodb::error::Result<()> {
        self.state
            .update_one(
                mongodb::bson::doc! { "_id": format!("inside:{scope}") },
                mongodb::bson::doc! { "$inc": { "n": -1 } },
            )
            .await?;
        Ok(())
    }

    /// `scope`'s counter.
    pub async fn count(&self, scope: &str) -> mongodb::error::Result<Option<i64>> {
        let found = self
            .state
            .find_one(mongodb::bson::doc! { "_id": format!("count:{scope}") })
            .await?;
        Ok(found.and_then(|d| d.get_i64("n").ok()))
    }

    /// How many times someone entered a section someone else was in.
    pub async fn overlaps(&self) -> mongodb::error::Result<i32> {
        let found = self
            .state
            .find_one(mongodb::bson::doc! { "_id": "overlaps" })
            .await?;
        Ok(found.and_then(|d| d.get_i32("n").ok()).unwrap_or(0))
    }
}

/// The commands a client sent, as `started` and `succeeded` events, for
/// tests that count round trips or wait for a client to reach a point.
#[derive(Clone, Default)]
pub struct Commands {
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    delivered: std::sync::Arc<std::sync::Mutex<usize>>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Commands {
    /// A lock on `collection` through a client of its own whose commands
    /// are recorded.
    pub async fn lock(collection: &Collection<Document>) -> (MongoLock, Self) {
        Self::lock_at(&server_uri().unwrap(), None, collection).await
    }

    /// [`lock`](Self::lock) on the server at `uri` (a fault server's), with
    /// `app` as the client's name (for fail points that target it).
    pub async fn lock_at(
        uri: &str,
        app: Option<&str>,
        collection: &Collection<Document>,
    ) -> (MongoLock, Self) {
        use mongodb::event::{command::CommandEvent, EventHandler};
        let commands = Self::default();
        let mut options = mongodb::options::ClientOptions::parse(uri).await.unwrap();
        options.app_name = app.map(str::to_owned);
        let record = commands.clone();
        options.command_event_handler = Some(EventHandler::callback(move |event| {
            let entry = match event {
                CommandEvent::Started(e) => (e.command_name, false),
                CommandEvent::Succeeded(e) => {
                    // A stream's events come in `getMore` replies, and in
                    // the `aggregate` reply of one that resumed before them.
                    let cursor = e.reply.get_document("cursor").ok();
                    let batch = ["nextBatch", "firstBatch"]
                        .iter()
                        .find_map(|name| cursor?.get_array(name).ok())
                        .map_or(0, Vec::len);
                    *record.delivered.lock().unwrap() += batch;
                    (e.command_name, true)
                }
                _ => return,
            };
            record.events.lock().unwrap().push(entry);
            record.changed.notify_waiters();
        }));
        let client = mongodb::Client::with_options(options).unwrap();
        let namespace = collection.namespace();
        let lock =
            MongoLock::with_collection(client.database(&namespace.db).collection(&namespace.coll));
        (lock, commands)
    }

    /// The names of the commands started, in order.
    pub fn started(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| !e.1)
            .map(|e| e.0.clone())
            .collect()
    }

    /// How many `name` commands were started, and how many succeeded.
    pub fn count(&self, name: &str) -> (usize, usize) {
        let events = self.events.lock().unwrap();
        let of = |done: bool| events.iter().filter(|e| e.0 == name && e.1 == done).count();
        (of(false), of(true))
    }

    /// How many documents cursor replies brought: for a change stream, the
    /// events it was sent.
    pub fn delivered(&self) -> usize {
        *self.delivered.lock().unwrap()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.events.lock().unwrap().clear();
    }

    /// Resolves once `reached` holds for what was recorded.
    pub async fn until(&self, reached: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if reached(self) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once a waiter of this client is asleep with its change
    /// stream open, after `attempts` lock attempts (`findAndModify`) have
    /// been answered: from then on it hears of releases.
    pub async fn until_listening(&self, attempts: usize) {
        self.until(|c| c.count("findAndModify").1 >= attempts && c.count("getMore").0 >= 1)
            .await;
    }
}
