//! The lock client and its simple operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{DateTime, Document};
use mongodb::options::{ClientOptions, WriteConcern};
use mongodb::{Client, Collection};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::contention::Contention;
use crate::error::{Error, Result};
use crate::heartbeats::Heartbeats;
use crate::lease::Anchor;
use crate::memory::Memory;
use crate::pending::PendingReleases;
use crate::settings::{Settings, DEFAULT_COLLECTION, DEFAULT_DATABASE, DEFAULT_OPERATION_TIMEOUT};
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
    pub(crate) fn with_settings(self, settings: Settings) -> Self {
        let mut lock = Self::from_parts(self.inner.collection.clone(), settings);
        if let Some(inner) = Arc::get_mut(&mut lock.inner) {
            inner.heartbeats.clone_from(&self.inner.heartbeats);
            inner.memory.clone_from(&self.inner.memory);
        }
        lock
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
