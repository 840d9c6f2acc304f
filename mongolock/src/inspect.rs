//! Reading locks without taking them, and the admin's forced release.

use mongodb::bson::doc;

use crate::error::Result;
use crate::info::LockInfo;
use crate::mongo_lock::MongoLock;
use crate::query::{self, HandOver};
use crate::validate;

impl MongoLock {
    /// The lock document for `key`, if there is one, as the server wrote it.
    pub async fn get_lock_info(&self, key: &str) -> Result<Option<LockInfo>> {
        self.read_lock(key, false).await
    }

    /// The lock document for `key` if a lease on it is running, judged by
    /// the server's clock: one read, so the holder it shows is the one whose
    /// lease runs.
    pub(crate) async fn held_info(&self, key: &str) -> Result<Option<LockInfo>> {
        self.read_lock(key, true).await
    }

    /// The lock document for `key`; with `held`, only while a lease on it
    /// is running by the server's clock.
    async fn read_lock(&self, key: &str, held: bool) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        let found = match self.memory() {
            Some(memory) => (!held || memory.is_held(key))
                .then(|| memory.find(key))
                .flatten(),
            None => {
                let filter = if held {
                    query::held_by_key(key)
                } else {
                    query::by_key(key)
                };
                self.bounded(key, self.operation_timeout(), async {
                    Ok(self.collection().find_one(filter).await?)
                })
                .await?
            }
        };
        found.as_ref().map(LockInfo::from_document).transpose()
    }

    /// Whether a lease on `key` is running, judged by the server's clock.
    pub async fn is_locked(&self, key: &str) -> Result<bool> {
        validate::key(key)?;
        if let Some(memory) = self.memory() {
            return Ok(memory.is_held(key));
        }
        let filter = query::held_by_key(key);
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
        let filter = query::held_by_key(key);
        let released = self.release_where(key, filter, 0, HandOver::Never).await?;
        tracing::info!(key, released, "mongolock force_release");
        Ok(released)
    }
}
