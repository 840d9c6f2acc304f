//! The TTL index that deletes lock documents long after their lease
//! ended (`cleanup_after`).

use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::error::Result;
use crate::mongo_lock::MongoLock;
use crate::query;

const TTL_INDEX_NAME: &str = "mongolock_expires_at_ttl";

impl MongoLock {
    /// Creates the TTL index that removes stale documents, once per
    /// `MongoLock` (clones share it), or changes its delay with `collMod` if
    /// it exists with another one. A transient error is returned (the
    /// attempt fails as it would have, and the next one tries again); any
    /// other failure (permissions) is logged, not returned: the locks are
    /// correct without the index, only untidy.
    pub(crate) async fn ensure_ttl_index(&self) -> Result<()> {
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

    async fn create_or_update_ttl_index(&self) -> Result<()> {
        let after = self.settings().cleanup_after;
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
}
