//! The lock client and its simple operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{ClientOptions, WriteConcern};
use mongodb::{Client, Collection};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::contention::Contention;
use crate::error::{Error, Result};
use crate::heartbeats::Heartbeats;
use crate::info::LockInfo;
use crate::lease::Anchor;
use crate::memory::Memory;
use crate::pending::PendingReleases;
use crate::query::{self, HandOver};
use crate::settings::{
    validate_clocks, Settings, DEFAULT_COLLECTION, DEFAULT_DATABASE, DEFAULT_OPERATION_TIMEOUT,
};
use crate::validate;
use crate::wake::Wakeups;

/// A boxed future, the output of every operation builder.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Distributed locks kept in one MongoDB collection.
///
/// Cheap to clone: clones share the collection handle and settings. Every
/// decision about who holds a lock is made by the server, with its clock, in
/// one atomic operation.
///
/// ```no_run
/// # async fn demo() -> mongolock::Result<()> {
/// use std::time::Duration;
/// use mongolock::MongoLock;
///
/// let lock = MongoLock::connect("mongodb://localhost:27017").await?;
/// if lock.lock("nightly-report", "worker-1").expires(Duration::from_secs(30)).await? {
///     // ... the work ...
///     lock.release("nightly-report", "worker-1").await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MongoLock {
    inner: Arc<Inner>,
}

struct Inner {
    collection: Collection<Document>,
    settings: Settings,
    ttl_index: tokio::sync::OnceCell<()>,
    ttl_index_started: std::sync::atomic::AtomicBool,
    runs_index_started: std::sync::atomic::AtomicBool,
    wakeups: Arc<Wakeups>,
    clock: ServerClock,
    contention: Contention,
    releases: Arc<PendingReleases>,
    /// The driver's heartbeat failures, on clients this crate built.
    heartbeats: Option<Arc<Heartbeats>>,
    /// The in-process store of [`MongoLock::in_memory`], instead of the
    /// collection.
    memory: Option<Arc<Memory>>,
}

impl std::fmt::Debug for MongoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoLock")
            .field("namespace", &self.inner.collection.namespace().to_string())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// Databases a connection string may name that are never a lock database.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

impl MongoLock {
    /// Locks in collection `lock` of the client's default database (the one
    /// its connection string names, as in `mongodb://host/jobs`) or, without
    /// one, of database `mongolock`, as the Python package does. `admin`,
    /// `local` and `config` are never taken as the lock database: old
    /// connection strings name `admin` as the database to authenticate
    /// against (`mongodb://user:pw@host/admin`), and an application cannot
    /// (and should not) write locks there; `mongolock` is used instead. Written with
    /// majority write concern so that an acquisition survives a failover; a
    /// write the majority does not confirm within
    /// [`DEFAULT_OPERATION_TIMEOUT`](crate::DEFAULT_OPERATION_TIMEOUT) fails rather than hangs.
    ///
    /// The cause of an [`Error::TimedOut`] is then the last error of an
    /// attempt that finished: this client's heartbeats are not seen, so a
    /// wait cut short while the driver is still selecting a server has no
    /// cause. Build the client with
    /// [`connect_with_options`](Self::connect_with_options) to have its last
    /// heartbeat failure there too.
    pub fn new(client: &Client) -> Self {
        let write_concern = WriteConcern::builder()
            .w(mongodb::options::Acknowledgment::Majority)
            .w_timeout(DEFAULT_OPERATION_TIMEOUT)
            .build();
        let database = client
            .default_database()
            .filter(|db| !SYSTEM_DATABASES.contains(&db.name()))
            .unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        let collection = database.collection_with_options(
            DEFAULT_COLLECTION,
            mongodb::options::CollectionOptions::builder()
                .write_concern(write_concern)
                .build(),
        );
        Self::with_collection(collection)
    }

    /// Connects with a connection string and uses [`MongoLock::new`](crate::MongoLock::new)'s
    /// defaults. As with the Python package's `MongoLock('localhost:27017')`,
    /// a bare `host:port` works (`mongodb://` is added).
    ///
    /// Connecting is lazy, as in the MongoDB driver: nothing is sent here,
    /// and an unreachable server is reported by the first operation, after
    /// the driver's server selection timeout (30 s unless the string sets
    /// `serverSelectionTimeoutMS`). A malformed string gives
    /// [`Error::InvalidUri`], whose message never contains the URI's
    /// password.
    pub async fn connect(uri: &str) -> Result<Self> {
        let bare_hosts =
            !uri.is_empty() && !uri.contains("://") && !uri.contains(char::is_whitespace);
        let uri = if bare_hosts {
            format!("mongodb://{uri}")
        } else {
            uri.to_owned()
        };
        let options = ClientOptions::parse(&uri)
            .await
            .map_err(|e| match *e.kind {
                mongodb::error::ErrorKind::InvalidArgument { ref message, .. } => {
                    Error::InvalidUri(crate::redact::redact_uri(message))
                }
                _ => Error::Mongo(e),
            })?;
        Self::connect_with_options(options)
    }

    /// Connects with client options you built (TLS, credentials, pool
    /// sizes) and uses [`MongoLock::new`](crate::MongoLock::new)'s
    /// defaults.
    ///
    /// Unlike [`MongoLock::new`] with a client you built, the client made
    /// here reports the driver's heartbeats to the lock, so that a timeout
    /// against a server it cannot reach carries the driver's last heartbeat
    /// failure (connection refused, unknown host, a TLS error) as its
    /// [cause](Error::TimedOut). An SDAM event handler already in `options`
    /// still receives every event.
    pub fn connect_with_options(mut options: ClientOptions) -> Result<Self> {
        let heartbeats = Arc::new(Heartbeats::default());
        options.sdam_event_handler = Some(heartbeats.handler(options.sdam_event_handler.take()));
        let client = Client::with_options(options)?;
        let mut lock = Self::new(&client);
        if let Some(inner) = Arc::get_mut(&mut lock.inner) {
            inner.heartbeats = Some(heartbeats);
        }
        Ok(lock)
    }

    /// Locks kept in this process, without MongoDB: for the unit tests of
    /// code that takes locks (`#[mongo_locked]` functions, scheduled jobs),
    /// as ShedLock's in-memory provider is for Java. Clones share the
    /// store; each call makes a new, empty one.
    ///
    /// It keeps the semantics a test can observe: one holder per key,
    /// leases and their expiry, re-entry by owner, fencing tokens,
    /// `on_busy = skip` and timeouts, FIFO waiters, the lost signal (a
    /// lease that runs out, a [`force_release`](Self::force_release)),
    /// tick claims and run records. This machine's clock stands in for the
    /// server's. Waiters are woken by releases in the process and poll
    /// every 1 to 20 ms otherwise; there is no change stream, no direct
    /// handoff (the head takes the lock at its next attempt), no TTL
    /// cleanup. Call it inside a tokio runtime (the unused driver handle
    /// behind [`collection`](Self::collection) needs one).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mongolock::Result<()> {
    /// let lock = mongolock::MongoLock::in_memory()?;
    /// let guard = lock.acquire("job").await?;
    /// assert!(lock.acquire("job").await.is_err());
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn in_memory() -> Result<Self> {
        // Never contacted: no operation of an in-memory lock reaches it.
        let options = ClientOptions::builder()
            .hosts(vec![mongodb::options::ServerAddress::Tcp {
                host: "mongolock-in-memory.invalid".to_owned(),
                port: Some(1),
            }])
            .build();
        let client = Client::with_options(options)?;
        let settings = Settings {
            change_streams: false,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(20))?,
            ..Settings::default()
        };
        let mut lock = Self::from_parts(
            client
                .database(DEFAULT_DATABASE)
                .collection(DEFAULT_COLLECTION),
            settings,
        );
        if let Some(inner) = Arc::get_mut(&mut lock.inner) {
            inner.memory = Some(Arc::new(Memory::default()));
        }
        Ok(lock)
    }

    /// The in-process store, for an [`in_memory`](Self::in_memory) lock.
    pub(crate) fn memory(&self) -> Option<&Memory> {
        self.inner.memory.as_deref()
    }

    /// Locks in a collection you configured: names, write concern, read
    /// preference. Use majority write concern on replica sets; with a weaker
    /// one a failover can forget an acquisition.
    pub fn with_collection(collection: Collection<Document>) -> Self {
        Self::from_parts(collection, Settings::default())
    }

    /// A new `MongoLock` on the same collection with changed settings.
    fn with_settings(self, settings: Settings) -> Self {
        let mut lock = Self::from_parts(self.inner.collection.clone(), settings);
        if let Some(inner) = Arc::get_mut(&mut lock.inner) {
            inner.heartbeats.clone_from(&self.inner.heartbeats);
            inner.memory.clone_from(&self.inner.memory);
        }
        lock
    }

    /// The same locks, polling with `backoff` when no change stream tells
    /// waiters of releases.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        let settings = Settings {
            backoff,
            ..self.inner.settings
        };
        self.with_settings(settings)
    }

    /// The same locks, with waiters woken by a change stream (`true`, the
    /// default) or polling only (`false`). Without change stream support
    /// (a standalone server, missing permissions) waiters poll anyway.
    pub fn with_change_streams(self, enabled: bool) -> Self {
        let settings = Settings {
            change_streams: enabled,
            ..self.inner.settings
        };
        self.with_settings(settings)
    }

    /// The same locks, with the change stream closed once it has had no
    /// waiter for `after` (default [`DEFAULT_STREAM_IDLE_CLOSE`](crate::DEFAULT_STREAM_IDLE_CLOSE)); the next
    /// waiter that finds a lock taken opens it again. The stream is checked
    /// each time the server answers one of its `getMore`s, which it does at
    /// least every 10 s, so it closes between `after` and `after` + 10 s.
    ///
    /// An open stream costs the server a cursor (on MongoDB, one that reads
    /// the oplog) and a `getMore` per 10 s while nothing happens; a
    /// reopened one costs an `aggregate`, and every waiter then looks at its
    /// lock once more. `Duration::ZERO` closes it at the first check without
    /// a waiter. `after` over [`MAX_DURATION`](crate::MAX_DURATION) is an
    /// [`Error::InvalidDuration`].
    pub fn with_stream_idle_close(self, after: Duration) -> Result<Self> {
        validate::bounded("stream_idle_close", after)?;
        let settings = Settings {
            stream_idle_close: after,
            ..self.inner.settings
        };
        Ok(self.with_settings(settings))
    }

    /// The same locks, with lock documents deleted `after` their lease ended
    /// (default [`DEFAULT_CLEANUP_AFTER`](crate::DEFAULT_CLEANUP_AFTER), at least [`MIN_CLEANUP_AFTER`](crate::MIN_CLEANUP_AFTER), and
    /// longer than the [maximum clock skew](Self::with_max_clock_skew)).
    ///
    /// A deleted document takes its fencing token with it, and the next
    /// acquisition starts from the server's clock (in microseconds of
    /// millisecond resolution). Tokens therefore keep growing across a
    /// deletion as long as no server clock is behind by more than `after`.
    pub fn with_cleanup_after(self, after: Duration) -> Result<Self> {
        let settings = Settings {
            cleanup_after: after,
            ..self.inner.settings
        };
        validate_clocks(&settings)?;
        Ok(self.with_settings(settings))
    }

    /// The same locks, assuming the clocks of the servers that stamp
    /// `$$NOW` are at most `skew` apart (default
    /// [`DEFAULT_MAX_CLOCK_SKEW`](crate::DEFAULT_MAX_CLOCK_SKEW)). Those are the primary of a replica set
    /// (a failover hands the decision to another host's clock) and, on a
    /// sharded cluster, every `mongos`.
    ///
    /// A holder treats its lease as ended [`drift_allowance`] early, so it
    /// knows it lost the lock before any server can let another worker in.
    /// `skew` must be shorter than the cleanup delay.
    ///
    /// [`drift_allowance`]: Self::drift_allowance
    pub fn with_max_clock_skew(self, skew: Duration) -> Result<Self> {
        validate::bounded("max_clock_skew", skew)?;
        let settings = Settings {
            max_clock_skew: skew,
            ..self.inner.settings
        };
        validate_clocks(&settings)?;
        Ok(self.with_settings(settings))
    }

    /// The same locks, with each server round trip that has no deadline of
    /// its own (a single attempt, a touch, a renewal, a release, a read)
    /// bounded by `timeout` (default [`DEFAULT_OPERATION_TIMEOUT`](crate::DEFAULT_OPERATION_TIMEOUT)); one that
    /// takes longer fails with [`Error::TimedOut`]. Waits with a timeout are
    /// bounded by their deadline instead.
    pub fn with_operation_timeout(self, timeout: Duration) -> Result<Self> {
        validate::positive_millis("operation_timeout", timeout)?;
        let settings = Settings {
            operation_timeout: timeout,
            ..self.inner.settings
        };
        Ok(self.with_settings(settings))
    }

    /// The same locks, with [`acquire()`](Self::acquire) fair (`true`, the
    /// default) or not unless the acquisition says otherwise with
    /// [`Acquire::fair`](crate::Acquire::fair).
    pub fn with_fairness(self, fair: bool) -> Self {
        let settings = Settings {
            fair,
            ..self.inner.settings
        };
        self.with_settings(settings)
    }

    /// The same locks, with a fair waiter's queue entry lasting `expiry`
    /// after each of its attempts (default [`DEFAULT_QUEUE_EXPIRY`](crate::DEFAULT_QUEUE_EXPIRY), at least
    /// 30 ms). A waiting waiter re-asks every `expiry / 3`, which is all a
    /// waiter costs the server while the lock stays taken; a waiter that
    /// died holds up the queue for at most `expiry`, also when a release
    /// hands it the lock (its lease is cut at its entry's expiry).
    pub fn with_queue_expiry(self, expiry: Duration) -> Result<Self> {
        validate::bounded("queue_expiry", expiry)?;
        if expiry < Duration::from_millis(30) {
            return Err(Error::InvalidDuration {
                what: "queue_expiry",
                duration: expiry,
                reason: "must be at least 30 ms",
            });
        }
        let settings = Settings {
            queue_expiry: expiry,
            ..self.inner.settings
        };
        Ok(self.with_settings(settings))
    }

    /// How long the run records of [scheduled jobs](crate::Job) are kept
    /// (default [`DEFAULT_RUN_HISTORY`](crate::DEFAULT_RUN_HISTORY), 30
    /// days): a TTL index on their start deletes older ones.
    pub fn with_run_history(self, keep: Duration) -> Result<Self> {
        validate::positive_millis("run_history", keep)?;
        let settings = Settings {
            run_history: keep,
            ..*self.settings()
        };
        Ok(self.with_settings(settings))
    }

    pub(crate) fn fair_by_default(&self) -> bool {
        self.inner.settings.fair
    }

    pub(crate) fn queue_expiry(&self) -> Duration {
        self.inner.settings.queue_expiry
    }

    pub(crate) fn queue_expiry_millis(&self) -> i64 {
        i64::try_from(self.queue_expiry().as_millis()).unwrap_or(i64::MAX)
    }

    /// How much earlier than the server a holder counts its lease of
    /// `lease` as ended: the [maximum clock skew](Self::with_max_clock_skew),
    /// plus 1% of the lease for clocks that run at different rates (Redlock's
    /// drift factor), plus 1 ms for the server's rounding to whole
    /// milliseconds.
    pub fn drift_allowance(&self, lease: Duration) -> Duration {
        self.inner.settings.max_clock_skew + lease / 100 + Duration::from_millis(1)
    }

    /// How long a holder counts a lease of `lease` to last, from when its
    /// request was sent: the whole milliseconds the server adds, less the
    /// [drift allowance](Self::drift_allowance). Zero when the allowance
    /// eats the lease: such a lease is lost at once.
    pub(crate) fn local_lease(&self, lease: Duration) -> Duration {
        let whole = Duration::from_millis(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        whole.saturating_sub(self.drift_allowance(whole))
    }

    /// The last local instant at which a lease ending at `expires` (server
    /// time) may be believed held, counted from `anchor` less the drift
    /// allowance of the span (see [`Anchor::believed_until`]).
    pub(crate) fn believed_until(&self, anchor: Anchor, expires: DateTime) -> Instant {
        anchor.believed_until(expires, |span| self.drift_allowance(span))
    }

    /// The longest a single round trip may take.
    pub(crate) fn operation_timeout(&self) -> Duration {
        self.inner.settings.operation_timeout
    }

    fn from_parts(collection: Collection<Document>, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                collection,
                settings,
                ttl_index: tokio::sync::OnceCell::new(),
                ttl_index_started: std::sync::atomic::AtomicBool::new(false),
                runs_index_started: std::sync::atomic::AtomicBool::new(false),
                wakeups: Arc::new(Wakeups::new(
                    settings.change_streams,
                    settings.stream_idle_close,
                )),
                clock: ServerClock::default(),
                // A queue formed on a key lasts while its waiters re-ask.
                contention: Contention::new(settings.queue_expiry),
                releases: Arc::default(),
                heartbeats: None,
                memory: None,
            }),
        }
    }

    pub(crate) fn wakeups(&self) -> &Arc<Wakeups> {
        &self.inner.wakeups
    }

    pub(crate) fn server_clock(&self) -> &ServerClock {
        &self.inner.clock
    }

    /// Makes sure the estimate of the server's clock is fresh (see
    /// [`ServerClock::refresh`]); an in-memory lock's server clock is this
    /// machine's.
    pub(crate) async fn refresh_clock(&self) {
        if self.memory().is_some() {
            let probe = crate::clock::Probe::start();
            self.server_clock().observe(&probe, DateTime::now());
            return;
        }
        self.server_clock()
            .refresh(self.collection().client())
            .await;
    }

    pub(crate) fn contention(&self) -> &Contention {
        &self.inner.contention
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn ttl_index(&self) -> &tokio::sync::OnceCell<()> {
        &self.inner.ttl_index
    }

    /// Whether the background build of the TTL index was started; set by
    /// the call that starts it.
    pub(crate) fn ttl_index_starting(&self) -> bool {
        self.inner
            .ttl_index_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether the background build of the run records' TTL index was
    /// started; set by the call that starts it.
    pub(crate) fn runs_index_starting(&self) -> bool {
        self.inner
            .runs_index_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub(crate) fn releases(&self) -> &Arc<PendingReleases> {
        &self.inner.releases
    }

    /// The collection the locks live in.
    pub fn collection(&self) -> &Collection<Document> {
        &self.inner.collection
    }

    /// The backoff between attempts of a waiting [`lock`](Self::lock) or
    /// [`acquire`](Self::acquire).
    pub fn backoff(&self) -> Backoff {
        self.inner.settings.backoff
    }

    /// The lock document for `key`, if there is one, as the server wrote it.
    pub async fn get_lock_info(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        if let Some(memory) = self.memory() {
            return memory
                .find(key)
                .as_ref()
                .map(LockInfo::from_document)
                .transpose();
        }
        let found = self
            .bounded(key, self.operation_timeout(), async {
                Ok(self.collection().find_one(query::by_key(key)).await?)
            })
            .await?;
        found.as_ref().map(LockInfo::from_document).transpose()
    }

    /// Whether a lease on `key` is running, judged by the server's clock.
    pub async fn is_locked(&self, key: &str) -> Result<bool> {
        validate::key(key)?;
        if let Some(memory) = self.memory() {
            return Ok(memory.is_held(key));
        }
        let mut filter = query::by_key(key);
        filter.insert("$expr", query::held_expr());
        let count = self
            .bounded(key, self.operation_timeout(), async {
                Ok(self.collection().count_documents(filter).await?)
            })
            .await?;
        Ok(count > 0)
    }

    /// The locks held now, by the server's clock, ordered by key: owner,
    /// since, expires and fencing token of each. For dashboards and admin
    /// tools; it reads the whole collection's held locks.
    pub async fn list(&self) -> Result<Vec<LockInfo>> {
        if let Some(memory) = self.memory() {
            return memory.held().iter().map(LockInfo::from_document).collect();
        }
        let read = async {
            let mut cursor = self
                .collection()
                .find(doc! { "$expr": query::held_expr() })
                .sort(doc! { "_id": 1 })
                .await?;
            let mut held = Vec::new();
            while let Some(doc) = futures_util::TryStreamExt::try_next(&mut cursor).await? {
                held.push(LockInfo::from_document(&doc)?);
            }
            Ok(held)
        };
        self.bounded("", self.operation_timeout(), read).await
    }

    /// Frees `key` whoever holds it, ignoring owner and minimum hold. An
    /// admin operation for a lock whose holder is known to be gone: the
    /// holder, if alive, is not told, and loses its lock at its next
    /// renewal. Resolves to `true` if a lease was running. The fencing token
    /// carries on as after any release.
    pub async fn force_release(&self, key: &str) -> Result<bool> {
        validate::key(key)?;
        let mut filter = query::by_key(key);
        filter.insert("$expr", query::held_expr());
        let released = self.release_where(key, filter, 0, HandOver::Never).await?;
        tracing::info!(key, released, "mongolock force_release");
        Ok(released)
    }

    /// Runs `op`, failing with [`Error::TimedOut`] if it takes longer than
    /// `limit`.
    pub(crate) async fn bounded<T>(
        &self,
        key: &str,
        limit: Duration,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(limit, op)
            .await
            .map_err(|_| self.timed_out(key, limit, None))?
    }

    /// The error of a wait or round trip on `key` that outlasted `timeout`:
    /// its cause is the driver's last error in it or, with none, the last
    /// heartbeat failure of a server the driver cannot reach.
    pub(crate) fn timed_out(
        &self,
        key: &str,
        timeout: Duration,
        cause: Option<mongodb::error::Error>,
    ) -> Error {
        let cause = cause.or_else(|| {
            self.inner
                .heartbeats
                .as_ref()
                .and_then(|h| h.last_failure())
        });
        Error::TimedOut {
            key: key.to_owned(),
            timeout,
            cause,
        }
    }
}
