//! The TTL index that deletes lock documents long after their lease
//! ended (`cleanup_after`).

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::Collection;
use mongodb::IndexModel;

use crate::error::Result;
use crate::mongo_lock::MongoLock;
use crate::query;

const TTL_INDEX_NAME: &str = "mongolock_expires_at_ttl";

/// How often the background build of the TTL index is tried after a
/// transient error before it gives up (with a warning).
const TTL_INDEX_TRIES: u32 = 5;

impl MongoLock {
    /// Starts building the TTL index in the background, once per
    /// `MongoLock` (clones share it); called by every attempt. No lock waits
    /// for the index: on a replica set with a voting member down an index
    /// build waits for that member (the commit quorum), and a first
    /// acquisition that waited with it would hang until its timeout. A
    /// transient failure is tried again with backoff a few times, each try
    /// bounded by the operation timeout; the last failure is logged once.
    pub(crate) fn start_ttl_index(&self) {
        if self.memory().is_some() || self.ttl_index().initialized() || self.ttl_index_starting() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lock = self.clone();
        runtime.spawn(async move {
            let namespace = lock.collection().namespace();
            for retry in 0..TTL_INDEX_TRIES {
                let tried =
                    tokio::time::timeout(lock.operation_timeout(), lock.ensure_ttl_index()).await;
                match tried {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) if retry + 1 == TTL_INDEX_TRIES => {
                        tracing::warn!(%namespace, %error, "could not create the mongolock TTL index; stale lock documents will not be cleaned up");
                    }
                    Err(_) if retry + 1 == TTL_INDEX_TRIES => {
                        tracing::warn!(%namespace, "the mongolock TTL index was not built within the operation timeout; stale lock documents will not be cleaned up");
                    }
                    _ => tokio::time::sleep(lock.backoff().delay(retry)).await,
                }
            }
        });
    }

    /// Creates the TTL index that deletes a lock document
    /// [`cleanup_after`](crate::MongoLock::with_cleanup_after) after its
    /// lease ended, or changes its delay with `collMod` if it exists with
    /// another one, and waits for it; done once per `MongoLock` (clones
    /// share it). The first lock attempt starts this in the background, so
    /// calling it is optional: do it at start-up to learn at once whether the
    /// index can be built. A transient error is returned; any other failure
    /// (permissions) is logged, not returned: the locks are correct without
    /// the index, only untidy.
    ///
    /// ```no_run
    /// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
    /// lock.ensure_ttl_index().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ensure_ttl_index(&self) -> Result<()> {
        if self.memory().is_some() {
            return Ok(());
        }
        self.ttl_index()
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

    /// Whether the TTL index exists (under this crate's name).
    pub(crate) async fn ttl_index_exists(&self) -> Result<bool> {
        Ok(ttl_index_expiry(self.collection(), TTL_INDEX_NAME)
            .await?
            .is_some())
    }

    async fn create_or_update_ttl_index(&self) -> Result<()> {
        let after = self.settings().cleanup_after;
        self.ensure_ttl_on(self.collection(), TTL_INDEX_NAME, query::EXPIRES_AT, after)
            .await
    }

    /// Makes sure `collection` has the TTL index `name` on `field` that
    /// deletes a document `after` the date there: creates it, or changes
    /// its delay with `collMod`.
    pub(crate) async fn ensure_ttl_on(
        &self,
        collection: &Collection<Document>,
        name: &str,
        field: &str,
        after: Duration,
    ) -> Result<()> {
        match ttl_index_expiry(collection, name).await? {
            Some(Some(current)) if current == after => Ok(()),
            Some(_) => {
                let seconds = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
                collection
                    .client()
                    .database(&collection.namespace().db)
                    .run_command(doc! {
                        "collMod": collection.name(),
                        "index": { "name": name, "expireAfterSeconds": seconds },
                    })
                    .await?;
                tracing::info!(namespace = %collection.namespace(), ?after, "mongolock TTL index delay changed");
                Ok(())
            }
            None => {
                let index = IndexModel::builder()
                    .keys(doc! { field: 1 })
                    .options(
                        IndexOptions::builder()
                            .name(name.to_owned())
                            .expire_after(after)
                            .build(),
                    )
                    .build();
                collection.create_index(index).await?;
                Ok(())
            }
        }
    }
}

/// The delay of `collection`'s TTL index `name`: `None` without the index,
/// `Some(None)` for an index of that name without one.
async fn ttl_index_expiry(
    collection: &Collection<Document>,
    name: &str,
) -> Result<Option<Option<Duration>>> {
    /// A collection that does not exist yet has no indexes.
    const NAMESPACE_NOT_FOUND: i32 = 26;
    let mut existing = None;
    match collection.list_indexes().await {
        Ok(mut indexes) => {
            while let Some(index) = futures_util::TryStreamExt::try_next(&mut indexes).await? {
                if let Some(options) = index.options {
                    if options.name.as_deref() == Some(name) {
                        existing = Some(options.expire_after);
                    }
                }
            }
        }
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) =>
            {}
        Err(e) => return Err(e.into()),
    }
    Ok(existing)
}
