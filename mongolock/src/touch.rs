//! Extending a held lease: the Python package's `touch(key, owner)` and the
//! owner- and token-checked renewal under it.

use std::future::IntoFuture;
use std::time::Duration;

use crate::error::Result;
use crate::info::LockInfo;
use crate::mongo_lock::{BoxFuture, MongoLock};
use crate::query;
use crate::settings::DEFAULT_EXPIRES;
use crate::validate;

impl MongoLock {
    /// Extends `owner`'s lease on `key` from the server's now, in one
    /// owner-checked round trip; resolves to `true` if `owner` holds it.
    pub fn touch(&self, key: impl Into<String>, owner: impl Into<String>) -> Touch {
        Touch::new(self.clone(), key.into(), owner.into())
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
        let filter = query::by_holder(key, owner, token);
        let updated = match self.memory() {
            Some(memory) => memory.touch(key, &filter, lease_millis)?,
            None => {
                let touch = self
                    .collection()
                    .find_one_and_update(filter, query::touch_pipeline(lease_millis))
                    .return_document(mongodb::options::ReturnDocument::After);
                self.bounded(key, self.operation_timeout(), async { Ok(touch.await?) })
                    .await?
            }
        };
        let info = updated.as_ref().map(LockInfo::from_document).transpose()?;
        tracing::debug!(key, owner, touched = info.is_some(), "mongolock touch");
        Ok(info)
    }
}

/// The pending [`MongoLock::touch`](crate::MongoLock::touch). Await it for a `bool`.
#[must_use = "a touch does nothing until awaited"]
#[derive(Debug)]
pub struct Touch {
    lock: MongoLock,
    key: String,
    owner: String,
    expires: Duration,
}

impl Touch {
    pub(crate) fn new(lock: MongoLock, key: String, owner: String) -> Self {
        Self {
            lock,
            key,
            owner,
            expires: DEFAULT_EXPIRES,
        }
    }

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
