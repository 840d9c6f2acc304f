//! The lock client and its simple operations.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::{IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};

use crate::acquire::{Acquire, Lock};
use crate::clock::ServerClock;
use crate::error::{Error, Result};
use crate::info::LockInfo;
use crate::query;
use crate::validate;
use crate::wait::Backoff;
use crate::wake::Wakeups;

/// The database [`MongoLock::new`] uses, as in the seed.
pub const DEFAULT_DATABASE: &str = "mongolock";
/// The collection [`MongoLock::new`] uses, as in the seed.
pub const DEFAULT_COLLECTION: &str = "lock";
/// The lease when none is given.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(60);
/// How long after its lease ended a lock document is deleted by the TTL
/// index, unless changed with [`MongoLock::with_cleanup_after`].
pub const DEFAULT_CLEANUP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

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
    backoff: Backoff,
    cleanup_after: Duration,
    ttl_index: tokio::sync::OnceCell<()>,
    wakeups: Arc<Wakeups>,
    clock: ServerClock,
}

/// Settings kept when a `with_*` method makes a new `MongoLock`.
#[derive(Clone, Copy)]
struct Settings {
    backoff: Backoff,
    cleanup_after: Duration,
    change_streams: bool,
}

impl std::fmt::Debug for MongoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoLock")
            .field("namespace", &self.inner.collection.namespace().to_string())
            .field("backoff", &self.inner.backoff)
            .field("cleanup_after", &self.inner.cleanup_after)
            .field("change_streams", &self.inner.wakeups.enabled())
            .finish()
    }
}

impl MongoLock {
    /// Locks in database `mongolock`, collection `lock`, written with
    /// majority write concern so that an acquisition survives a failover.
    pub fn new(client: &Client) -> Self {
        let collection = client.database(DEFAULT_DATABASE).collection_with_options(
            DEFAULT_COLLECTION,
            mongodb::options::CollectionOptions::builder()
                .write_concern(WriteConcern::majority())
                .build(),
        );
        Self::with_collection(collection)
    }

    /// Connects with a connection string, like the seed's
    /// `MongoLock('localhost:27017')`, and uses [`MongoLock::new`]'s defaults.
    ///
    /// A malformed string gives [`Error::InvalidUri`], whose message never
    /// contains the URI's password.
    pub async fn connect(uri: &str) -> Result<Self> {
        let client = Client::with_uri_str(uri).await.map_err(|e| match *e.kind {
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
        Self::from_parts(
            collection,
            Settings {
                backoff: Backoff::default(),
                cleanup_after: DEFAULT_CLEANUP_AFTER,
                change_streams: true,
            },
        )
    }

    fn settings(&self) -> Settings {
        Settings {
            backoff: self.inner.backoff,
            cleanup_after: self.inner.cleanup_after,
            change_streams: self.inner.wakeups.enabled(),
        }
    }

    /// The same locks, polling with `backoff` when no change stream tells
    /// waiters of releases.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        let settings = Settings {
            backoff,
            ..self.settings()
        };
        Self::from_parts(self.inner.collection.clone(), settings)
    }

    /// The same locks, with waiters woken by a change stream (`true`, the
    /// default) or polling only (`false`). Without change stream support
    /// (a standalone server, missing permissions) waiters poll anyway.
    pub fn with_change_streams(self, enabled: bool) -> Self {
        let settings = Settings {
            change_streams: enabled,
            ..self.settings()
        };
        Self::from_parts(self.inner.collection.clone(), settings)
    }

    /// The same locks, with lock documents deleted `after` their lease ended
    /// (default [`DEFAULT_CLEANUP_AFTER`]). Deleting a document never resets
    /// its key's fencing token.
    pub fn with_cleanup_after(self, after: Duration) -> Result<Self> {
        validate::positive_millis("cleanup_after", after)?;
        if after < Duration::from_secs(1) {
            return Err(Error::InvalidDuration {
                what: "cleanup_after",
                duration: after,
                reason: "TTL indexes count whole seconds: use at least 1 second",
            });
        }
        let settings = Settings {
            cleanup_after: after,
            ..self.settings()
        };
        Ok(Self::from_parts(self.inner.collection.clone(), settings))
    }

    fn from_parts(collection: Collection<Document>, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                collection,
                backoff: settings.backoff,
                cleanup_after: settings.cleanup_after,
                ttl_index: tokio::sync::OnceCell::new(),
                wakeups: Arc::new(Wakeups::new(settings.change_streams)),
                clock: ServerClock::default(),
            }),
        }
    }

    pub(crate) fn wakeups(&self) -> &Arc<Wakeups> {
        &self.inner.wakeups
    }

    pub(crate) fn server_clock(&self) -> &ServerClock {
        &self.inner.clock
    }

    /// The collection the locks live in.
    pub fn collection(&self) -> &Collection<Document> {
        &self.inner.collection
    }

    /// The backoff between attempts of a waiting [`lock`](Self::lock) or
    /// [`acquire`](Self::acquire).
    pub fn backoff(&self) -> Backoff {
        self.inner.backoff
    }

    /// Tries to take `key` for `owner`; resolves to `true` if `owner` holds it
    /// afterwards. The seed's `lock(key, owner, expire, timeout)`.
    ///
    /// Without [`timeout`](Lock::timeout) it makes a single attempt; with one
    /// it retries until the deadline. The lease (default 60 s) starts when the
    /// lock is taken.
    ///
    /// Unlike the seed, an attempt by the current holder succeeds and renews
    /// the lease: a retry after a lost reply must not lock you out of your own
    /// lock. Give each worker its own owner, or use [`acquire`](Self::acquire),
    /// which makes a unique one.
    pub fn lock(&self, key: impl Into<String>, owner: impl Into<String>) -> Lock {
        Lock::new(self.clone(), key.into(), owner.into())
    }

    /// Takes `key` and returns a [`LockGuard`](crate::LockGuard) that releases
    /// it. The seed's context manager: on timeout it fails with
    /// [`Error::Locked`], the seed's `MongoLockLocked`.
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
        let found = self.collection().find_one(query::by_key(key)).await?;
        found.as_ref().map(LockInfo::from_document).transpose()
    }

    /// Whether a lease on `key` is running, judged by the server's clock.
    pub async fn is_locked(&self, key: &str) -> Result<bool> {
        validate::key(key)?;
        let mut filter = query::by_key(key);
        filter.insert("$expr", query::held_expr());
        Ok(self.collection().count_documents(filter).await? > 0)
    }

    /// The locks held now, by the server's clock, ordered by key: owner,
    /// since, expires and fencing token of each. For dashboards and admin
    /// tools; it reads the whole collection's held locks.
    pub async fn list(&self) -> Result<Vec<LockInfo>> {
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
        let result = self
            .collection()
            .update_one(filter, query::release_pipeline(0))
            .await?;
        let released = result.matched_count == 1;
        tracing::info!(key, released, "mongolock force_release");
        if released {
            self.wakeups().wake(key);
        }
        Ok(released)
    }

    /// Creates the TTL index that removes stale documents, once per
    /// `MongoLock` (clones share it). Failure is logged, not returned: the
    /// locks are correct without it, only untidy.
    pub(crate) async fn ensure_ttl_index(&self) {
        self.inner
            .ttl_index
            .get_or_init(|| async {
                let index = IndexModel::builder()
                    .keys(doc! { query::EXPIRES_AT: 1 })
                    .options(
                        IndexOptions::builder()
                            .name(TTL_INDEX_NAME.to_owned())
                            .expire_after(self.inner.cleanup_after)
                            .build(),
                    )
                    .build();
                match self.collection().create_index(index).await {
                    Ok(_) => tracing::debug!(
                        namespace = %self.collection().namespace(),
                        "mongolock TTL index ready"
                    ),
                    Err(error) => tracing::warn!(
                        namespace = %self.collection().namespace(),
                        %error,
                        "could not create the mongolock TTL index; stale lock documents will not be cleaned up"
                    ),
                }
            })
            .await;
    }

    /// The owner-checked release shared by [`release`](Self::release) and
    /// guards.
    pub(crate) async fn release_held(
        &self,
        key: &str,
        owner: &str,
        token: Option<i64>,
        min_hold_millis: i64,
    ) -> Result<bool> {
        let result = self
            .collection()
            .update_one(
                query::by_holder(key, owner, token),
                query::release_pipeline(min_hold_millis),
            )
            .await?;
        let released = result.matched_count == 1;
        tracing::debug!(key, owner, released, "mongolock release");
        if released {
            self.wakeups().wake(key);
        }
        Ok(released)
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
        let updated = self
            .collection()
            .find_one_and_update(
                query::by_holder(key, owner, token),
                query::touch_pipeline(lease_millis),
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await?;
        let info = updated.as_ref().map(LockInfo::from_document).transpose()?;
        tracing::debug!(key, owner, touched = info.is_some(), "mongolock touch");
        Ok(info)
    }
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
                .release_held(&self.key, &self.owner, None, 0)
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
