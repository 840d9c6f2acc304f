//! The lock client and its simple operations.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::{IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};
use tokio::time::Instant;

use crate::acquire::{Acquire, Lock};
use crate::clock::ServerClock;
use crate::contention::Contention;
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::lease::Anchor;
use crate::query::{self, HandOver};
use crate::validate;
use crate::wait::Backoff;
use crate::wake::Wakeups;

/// The database [`MongoLock::new`] uses, as in the Python package.
pub const DEFAULT_DATABASE: &str = "mongolock";
/// The collection [`MongoLock::new`] uses, as in the Python package.
pub const DEFAULT_COLLECTION: &str = "lock";
/// The lease when none is given.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(60);
/// How long after its lease ended a lock document is deleted by the TTL
/// index, unless changed with [`MongoLock::with_cleanup_after`].
pub const DEFAULT_CLEANUP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest [`MongoLock::with_cleanup_after`] accepted. A deleted
/// document takes its fencing token with it; the next token is made from the
/// server's clock, which must not have fallen behind the clock that stamped
/// the old one by more than this (see [`MongoLock::with_max_clock_skew`]).
pub const MIN_CLEANUP_AFTER: Duration = Duration::from_secs(60);
/// How far apart the clocks of the servers that stamp `$$NOW` (the primary
/// of each replica set over time, every `mongos`) may be, unless changed with
/// [`MongoLock::with_max_clock_skew`]. NTP keeps hosts of one network within
/// a few milliseconds; this leaves a margin of ten.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_millis(50);
/// How long one server round trip that has no deadline of its own may take,
/// unless changed with [`MongoLock::with_operation_timeout`]: the driver's
/// default server selection timeout.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fair waiter's queue entry lasts after its last attempt (see
/// [`MongoLock::with_queue_expiry`]).
pub const DEFAULT_QUEUE_EXPIRY: Duration = Duration::from_secs(15);

/// How long a `MongoLock`'s change stream stays open with no waiter, unless
/// changed with [`MongoLock::with_stream_idle_close`].
pub const DEFAULT_STREAM_IDLE_CLOSE: Duration = Duration::from_secs(60);

const TTL_INDEX_NAME: &str = "mongolock_expires_at_ttl";

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
    wakeups: Arc<Wakeups>,
    clock: ServerClock,
    contention: Contention,
    releases: Arc<PendingReleases>,
}

/// Settings kept when a `with_*` method makes a new `MongoLock`.
#[derive(Debug, Clone, Copy)]
struct Settings {
    backoff: Backoff,
    cleanup_after: Duration,
    change_streams: bool,
    max_clock_skew: Duration,
    operation_timeout: Duration,
    fair: bool,
    queue_expiry: Duration,
    stream_idle_close: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            cleanup_after: DEFAULT_CLEANUP_AFTER,
            change_streams: true,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            fair: true,
            queue_expiry: DEFAULT_QUEUE_EXPIRY,
            stream_idle_close: DEFAULT_STREAM_IDLE_CLOSE,
        }
    }
}

impl std::fmt::Debug for MongoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoLock")
            .field("namespace", &self.inner.collection.namespace().to_string())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl MongoLock {
    /// Locks in collection `lock` of the client's default database (the one
    /// its connection string names, as in `mongodb://host/jobs`) or, without
    /// one, of database `mongolock`, as the Python package does. Written with
    /// majority write concern so that an acquisition survives a failover; a
    /// write the majority does not confirm within
    /// [`DEFAULT_OPERATION_TIMEOUT`] fails rather than hangs.
    pub fn new(client: &Client) -> Self {
        let write_concern = WriteConcern::builder()
            .w(mongodb::options::Acknowledgment::Majority)
            .w_timeout(DEFAULT_OPERATION_TIMEOUT)
            .build();
        let database = client
            .default_database()
            .unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        let collection = database.collection_with_options(
            DEFAULT_COLLECTION,
            mongodb::options::CollectionOptions::builder()
                .write_concern(write_concern)
                .build(),
        );
        Self::with_collection(collection)
    }

    /// Connects with a connection string and uses [`MongoLock::new`]'s
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
        let client = Client::with_uri_str(&uri)
            .await
            .map_err(|e| match *e.kind {
                mongodb::error::ErrorKind::InvalidArgument { ref message, .. } => {
                    Error::InvalidUri(crate::redact::redact_uri(message))
                }
                _ => Error::Mongo(e),
            })?;
        Ok(Self::new(&client))
    }

    /// Locks in a collection you configured: names, write concern, read
    /// preference. Use majority write concern on replica sets; with a weaker
    /// one a failover can forget an acquisition.
    pub fn with_collection(collection: Collection<Document>) -> Self {
        Self::from_parts(collection, Settings::default())
    }

    /// A new `MongoLock` on the same collection with changed settings.
    fn with_settings(self, settings: Settings) -> Self {
        Self::from_parts(self.inner.collection.clone(), settings)
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
    /// waiter for `after` (default [`DEFAULT_STREAM_IDLE_CLOSE`]); the next
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
    /// (default [`DEFAULT_CLEANUP_AFTER`], at least [`MIN_CLEANUP_AFTER`], and
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
    /// [`DEFAULT_MAX_CLOCK_SKEW`]). Those are the primary of a replica set
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
    /// bounded by `timeout` (default [`DEFAULT_OPERATION_TIMEOUT`]); one that
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
    /// after each of its attempts (default [`DEFAULT_QUEUE_EXPIRY`], at least
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
                wakeups: Arc::new(Wakeups::new(
                    settings.change_streams,
                    settings.stream_idle_close,
                )),
                clock: ServerClock::default(),
                // A queue formed on a key lasts while its waiters re-ask.
                contention: Contention::new(settings.queue_expiry),
                releases: Arc::default(),
            }),
        }
    }

    pub(crate) fn wakeups(&self) -> &Arc<Wakeups> {
        &self.inner.wakeups
    }

    pub(crate) fn server_clock(&self) -> &ServerClock {
        &self.inner.clock
    }

    pub(crate) fn contention(&self) -> &Contention {
        &self.inner.contention
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

    /// Tries to take `key` for `owner`; resolves to `true` if `owner` holds it
    /// afterwards. The Python package's `lock(key, owner, expire, timeout)`.
    ///
    /// Without [`timeout`](Lock::timeout) it makes a single attempt; with one
    /// it retries until the deadline. The lease (default 60 s) starts when the
    /// lock is taken.
    ///
    /// Unlike the Python package, an attempt by the current holder succeeds and renews
    /// the lease: a retry after a lost reply must not lock you out of your own
    /// lock. Give each worker its own owner, or use [`acquire`](Self::acquire),
    /// which makes a unique one.
    pub fn lock(&self, key: impl Into<String>, owner: impl Into<String>) -> Lock {
        Lock::new(self.clone(), key.into(), owner.into())
    }

    /// Takes `key` and returns a [`LockGuard`](crate::LockGuard) that releases
    /// it. The Python package's context manager: on timeout it fails with
    /// [`Error::Locked`], the Python package's `MongoLockLocked`.
    pub fn acquire(&self, key: impl Into<String>) -> Acquire {
        Acquire::new(self.clone(), key.into())
    }

    /// Releases `key` if `owner` holds it; resolves to `true` only then. The
    /// document stays (marked free) so the fencing token keeps growing.
    pub fn release(&self, key: impl Into<String>, owner: impl Into<String>) -> Release {
        Release {
            lock: self.clone(),
            key: key.into(),
            owner: owner.into(),
        }
    }

    /// Extends `owner`'s lease on `key` from the server's now, in one
    /// owner-checked round trip; resolves to `true` if `owner` holds it.
    pub fn touch(&self, key: impl Into<String>, owner: impl Into<String>) -> Touch {
        Touch {
            lock: self.clone(),
            key: key.into(),
            owner: owner.into(),
            expires: DEFAULT_EXPIRES,
        }
    }

    /// The lock document for `key`, if there is one, as the server wrote it.
    pub async fn get_lock_info(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
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
            .map_err(|_| Error::TimedOut {
                key: key.to_owned(),
                timeout: limit,
                cause: None,
            })?
    }

    /// Creates the TTL index that removes stale documents, once per
    /// `MongoLock` (clones share it), or changes its delay with `collMod` if
    /// it exists with another one. A transient error is returned (the
    /// attempt fails as it would have, and the next one tries again); any
    /// other failure (permissions) is logged, not returned: the locks are
    /// correct without the index, only untidy.
    pub(crate) async fn ensure_ttl_index(&self) -> Result<()> {
        self.inner
            .ttl_index
            .get_or_try_init(|| async {
                let namespace = self.collection().namespace();
                match self.create_or_update_ttl_index().await {
                    Ok(()) => {
                        tracing::debug!(%namespace, "mongolock TTL index ready");
                        Ok(())
                    }
                    Err(error) if error.is_transient() => Err(error),
                    Err(error) => {
                        tracing::warn!(%namespace, %error, "could not create the mongolock TTL index; stale lock documents will not be cleaned up");
                        Ok(())
                    }
                }
            })
            .await
            .map(|_| ())
    }

    async fn create_or_update_ttl_index(&self) -> Result<()> {
        let after = self.inner.settings.cleanup_after;
        /// A collection that does not exist yet has no indexes.
        const NAMESPACE_NOT_FOUND: i32 = 26;
        let mut existing = None;
        match self.collection().list_indexes().await {
            Ok(mut indexes) => {
                while let Some(index) = futures_util::TryStreamExt::try_next(&mut indexes).await? {
                    if let Some(options) = index.options {
                        if options.name.as_deref() == Some(TTL_INDEX_NAME) {
                            existing = Some(options.expire_after);
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) =>
                {}
            Err(e) => return Err(e.into()),
        }
        match existing {
            Some(Some(current)) if current == after => Ok(()),
            Some(_) => {
                let seconds = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
                self.collection()
                    .client()
                    .database(&self.collection().namespace().db)
                    .run_command(doc! {
                        "collMod": self.collection().name(),
                        "index": { "name": TTL_INDEX_NAME, "expireAfterSeconds": seconds },
                    })
                    .await?;
                tracing::info!(namespace = %self.collection().namespace(), ?after, "mongolock TTL index delay changed");
                Ok(())
            }
            None => {
                let index = IndexModel::builder()
                    .keys(doc! { query::EXPIRES_AT: 1 })
                    .options(
                        IndexOptions::builder()
                            .name(TTL_INDEX_NAME.to_owned())
                            .expire_after(after)
                            .build(),
                    )
                    .build();
                self.collection().create_index(index).await?;
                Ok(())
            }
        }
    }

    /// The owner-checked release shared by [`release`](Self::release) and
    /// guards.
    pub(crate) async fn release_held(
        &self,
        key: &str,
        owner: &str,
        token: Option<i64>,
        min_hold_millis: i64,
        hand_over: HandOver,
    ) -> Result<bool> {
        let released = self
            .release_where(
                key,
                query::by_holder(key, owner, token),
                min_hold_millis,
                hand_over,
            )
            .await?;
        tracing::debug!(key, owner, released, "mongolock release");
        Ok(released)
    }

    /// Releases the lock document `filter` matches, within the operation
    /// timeout, and hands the lock over to or wakes the waiter of this
    /// `MongoLock` whose turn it is, if any (whose change event then wakes
    /// nobody else here). The reply carries the queue and the new holder, to
    /// know whose turn it is.
    pub(crate) async fn release_where(
        &self,
        key: &str,
        filter: Document,
        min_hold_millis: i64,
        hand_over: HandOver,
    ) -> Result<bool> {
        let local = self.wakeups().releasing_here(key, min_hold_millis <= 0);
        let write = |filter: Document, hand_over: bool| {
            self.collection()
                .find_one_and_update(
                    filter,
                    query::release_update(min_hold_millis, local.id(), hand_over),
                )
                .projection(
                    query::RELEASE_VIEW
                        .iter()
                        .map(|f| ((*f).to_owned(), Bson::Int32(1)))
                        .collect(),
                )
                .return_document(mongodb::options::ReturnDocument::After)
        };
        if hand_over == HandOver::ToHeadIfQueued && min_hold_millis <= 0 {
            // No queue means nothing to hand over and no head to name: the
            // plain update, which returns no document, says all there is.
            let plain = self.collection().update_one(
                query::without_queue(filter.clone()),
                query::release_update(0, local.id(), false),
            );
            let plain = self
                .bounded(key, self.operation_timeout(), async { Ok(plain.await?) })
                .await?;
            if plain.matched_count == 1 {
                let left = doc! { query::RELEASE_ID: local.id() };
                local.released_here(&left);
                return Ok(true);
            }
        }
        let update = write(filter, hand_over != HandOver::Never);
        let released = self
            .bounded(key, self.operation_timeout(), async { Ok(update.await?) })
            .await?;
        let Some(released) = released else {
            return Ok(false);
        };
        local.released_here(&released);
        Ok(true)
    }

    /// Starts [`release_where`](Self::release_where) in the background, for
    /// a guard dropped unreleased or an abandoned acquisition;
    /// [`finish_releases`](Self::finish_releases) waits for it. Outside a
    /// tokio runtime nothing can run it: that is logged, and the lease runs
    /// out by itself.
    ///
    /// With [`Until::Found`] (an acquisition whose attempt went unanswered,
    /// which the server may still apply after this release) it is repeated
    /// with backoff until it releases something or the operation timeout has
    /// passed.
    pub(crate) fn release_in_background(
        &self,
        key: String,
        filter: Document,
        min_hold_millis: i64,
        hand_over: HandOver,
        until: Until,
    ) {
        let (lock, task_key) = (self.clone(), key.clone());
        let spawned = self.in_background(async move {
            let key = task_key;
            let give_up = tokio::time::Instant::now() + lock.operation_timeout();
            let mut retry = 0;
            loop {
                match lock
                    .release_where(&key, filter.clone(), min_hold_millis, hand_over)
                    .await
                {
                    Ok(false) if until == Until::Found && tokio::time::Instant::now() < give_up => {
                        tokio::time::sleep(lock.backoff().delay(retry)).await;
                        retry += 1;
                    }
                    Ok(released) => {
                        tracing::debug!(%key, released, "mongolock background release");
                        return;
                    }
                    Err(error) => {
                        crate::metrics::release_failed(&key);
                        tracing::warn!(%key, %error, "mongolock background release failed; the lease will run out");
                        return;
                    }
                }
            }
        });
        if !spawned {
            tracing::warn!(%key, "mongolock cannot release outside a tokio runtime; the lease will run out");
        }
    }

    /// Runs `task` on the current tokio runtime, counted by
    /// [`finish_releases`](Self::finish_releases) until it ends. `false`
    /// (and nothing runs) outside a runtime.
    fn in_background(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let ticket = self.inner.releases.start();
        runtime.spawn(async move {
            let _ticket = ticket;
            task.await;
        });
        true
    }

    /// Takes a fair waiter that gave up out of `key`'s queue, in the
    /// background, so that the next in line need not wait for its entry to
    /// lapse; then releases the lock if a release handed it over to that
    /// waiter before it left (in that order: once out of the queue, no
    /// release can hand the lock to it any more). Only the waiter's own entry
    /// and lock are touched; if this never runs, both lapse by themselves
    /// within the queue expiry.
    pub(crate) fn leave_queue_in_background(&self, key: String, owner: String, claim: String) {
        let lock = self.clone();
        self.in_background(async move {
            let leave = lock.collection().update_one(
                query::by_key(&key),
                doc! { "$pull": { query::QUEUE: { query::WAITER: &claim } } },
            );
            let left = lock
                .bounded(&key, lock.operation_timeout(), async { Ok(leave.await?) })
                .await;
            let released = match left {
                Ok(_) => {
                    let filter = query::by_claim(&key, &owner, &claim);
                    lock.release_where(&key, filter, 0, HandOver::ToHead)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = released {
                tracing::debug!(%key, %error, "mongolock could not leave the queue; the entry will lapse");
            }
        });
    }

    /// Waits until the releases started in the background (by guards dropped
    /// unreleased, by `#[mongo_locked]` functions whose future was dropped)
    /// are done, for at most `within`; `true` if none is left. Call it before
    /// the runtime shuts down, at the end of `main`: a runtime that ends
    /// drops the tasks it has not run, and a release that never ran leaves
    /// the lock taken until its lease runs out. Each release is bounded by
    /// the [operation timeout](Self::with_operation_timeout).
    ///
    /// ```no_run
    /// # async fn demo(lock: mongolock::MongoLock) {
    /// use std::time::Duration;
    /// let guard = lock.acquire("job").await;
    /// drop(guard); // released in the background
    /// lock.finish_releases(Duration::from_secs(5)).await;
    /// # }
    /// ```
    pub async fn finish_releases(&self, within: Duration) -> bool {
        self.inner.releases.wait_idle(within).await
    }

    /// The owner-checked lease extension shared by [`touch`](Self::touch) and
    /// guards.
    pub(crate) async fn touch_held(
        &self,
        key: &str,
        owner: &str,
        token: Option<i64>,
        lease_millis: i64,
    ) -> Result<Option<LockInfo>> {
        let touch = self
            .collection()
            .find_one_and_update(
                query::by_holder(key, owner, token),
                query::touch_pipeline(lease_millis),
            )
            .return_document(mongodb::options::ReturnDocument::After);
        let updated = self
            .bounded(key, self.operation_timeout(), async { Ok(touch.await?) })
            .await?;
        let info = updated.as_ref().map(LockInfo::from_document).transpose()?;
        tracing::debug!(key, owner, touched = info.is_some(), "mongolock touch");
        Ok(info)
    }
}

/// How long a background release keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// One release.
    Done,
    /// Until it releases something, within the operation timeout.
    Found,
}

/// How many background releases are under way, for
/// [`MongoLock::finish_releases`].
#[derive(Debug)]
pub(crate) struct PendingReleases(tokio::sync::watch::Sender<usize>);

impl Default for PendingReleases {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

/// One background release; counted until dropped, which happens also when a
/// runtime shutting down drops the task unrun.
struct ReleaseTicket(Arc<PendingReleases>);

impl PendingReleases {
    fn start(self: &Arc<Self>) -> ReleaseTicket {
        self.0.send_modify(|n| *n += 1);
        ReleaseTicket(self.clone())
    }

    async fn wait_idle(&self, within: Duration) -> bool {
        let mut pending = self.0.subscribe();
        tokio::time::timeout(within, pending.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for ReleaseTicket {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Refuses a cleanup delay that a clock skew could outrun: tokens made from
/// a clock behind by more than the delay could repeat a deleted one.
fn validate_clocks(settings: &Settings) -> Result<()> {
    validate::bounded("cleanup_after", settings.cleanup_after)?;
    let reason = if settings.cleanup_after < MIN_CLEANUP_AFTER {
        "must be at least mongolock::MIN_CLEANUP_AFTER (60 s)"
    } else if settings.cleanup_after <= settings.max_clock_skew {
        "must be longer than the maximum clock skew, or fencing tokens could repeat"
    } else {
        return Ok(());
    };
    Err(Error::InvalidDuration {
        what: "cleanup_after",
        duration: settings.cleanup_after,
        reason,
    })
}

/// The pending [`MongoLock::release`]. Await it for a `bool`.
#[must_use = "a release does nothing until awaited"]
#[derive(Debug)]
pub struct Release {
    lock: MongoLock,
    key: String,
    owner: String,
}

impl IntoFuture for Release {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<Result<bool>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            validate::holder(&self.key, &self.owner)?;
            self.lock
                .release_held(&self.key, &self.owner, None, 0, HandOver::Never)
                .await
        })
    }
}

/// The pending [`MongoLock::touch`]. Await it for a `bool`.
#[must_use = "a touch does nothing until awaited"]
#[derive(Debug)]
pub struct Touch {
    lock: MongoLock,
    key: String,
    owner: String,
    expires: Duration,
}

impl Touch {
    /// The new lease, counted from the server's now (default 60 s).
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }
}

impl IntoFuture for Touch {
    type Output = Result<bool>;
    type IntoFuture = BoxFuture<Result<bool>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            validate::holder(&self.key, &self.owner)?;
            let lease = validate::positive_millis("expires", self.expires)?;
            let touched = self
                .lock
                .touch_held(&self.key, &self.owner, None, lease)
                .await?;
            Ok(touched.is_some())
        })
    }
}
