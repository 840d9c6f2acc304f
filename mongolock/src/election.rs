//! Leader election on the lock core: a campaign is a fair, renewed
//! acquisition of the election's key that waits as long as it takes; a
//! term is one acquisition, with its fencing token; the leader proclaims a
//! value in the lock document; observers read the changes of that one
//! document from a change stream.

use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::info::LockInfo;
use crate::mongo_lock::MongoLock;
use crate::query::{self, ACQUIRED_AT, EXPIRES_AT, OWNER, TOKEN, VALUE};
use crate::validate;

/// The lease of a term unless changed with [`Election::lease`]: renewed
/// every third of it while the leader lives (Kubernetes' leader election
/// uses 15 s too).
pub const DEFAULT_TERM_LEASE: Duration = Duration::from_secs(15);

/// How long one wait of a campaign lasts before it asks again; a campaign
/// waits for as many as it takes.
const CAMPAIGN_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// How often an observer without a change stream reads the leader.
const OBSERVER_POLL: Duration = Duration::from_millis(200);

/// An election: processes [campaign](Self::campaign) for one name, one of
/// them leads at a time. Made by [`MongoLock::election`].
///
/// ```no_run
/// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
/// let election = lock.election("scheduler");
/// // Waits, in line, until this process leads.
/// let leadership = election.campaign("10.0.0.7:8080").await?;
/// tokio::select! {
///     _ = async { /* lead: run the singleton service */ } => {}
///     lost = leadership.lost() => eprintln!("no longer the leader: {lost}"),
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    lock: MongoLock,
    name: String,
    lease: Duration,
}

/// This process's term as leader. It ends with [`resign`](Self::resign),
/// when dropped (resigning in the background), or when the lease is lost
/// ([`lost`](Self::lost) resolves, [`is_lost`](Self::is_lost) turns true,
/// before the server lets another candidate lead).
#[derive(Debug)]
#[must_use = "dropping the leadership resigns at once"]
pub struct Leadership {
    guard: LockGuard,
}

/// Who leads, as the server's lock document says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's owner token (`host:pid:random` by default).
    pub owner: String,
    /// When its term began, by the server's clock.
    pub since: Option<DateTime>,
    /// When its lease ends unless renewed, by the server's clock.
    pub expires_at: DateTime,
    /// The term's fencing token: it grows with every term.
    pub token: i64,
    /// What the leader proclaimed (its address, say), if anything yet.
    pub value: Option<String>,
}

impl Leader {
    fn from_info(info: LockInfo) -> Option<Self> {
        Some(Self {
            owner: info.owner?,
            since: info.acquired_at,
            expires_at: info.expires_at,
            token: info.token,
            value: info.value,
        })
    }
}

impl MongoLock {
    /// An election for `name` (the lock key it uses). See [`Election`].
    pub fn election(&self, name: impl Into<String>) -> Election {
        Election {
            lock: self.clone(),
            name: name.into(),
            lease: DEFAULT_TERM_LEASE,
        }
    }
}

impl Election {
    /// The lease of a term (default [`DEFAULT_TERM_LEASE`]), renewed every
    /// third of it. A leader that stops (crash, pause) leads for at most
    /// this long; shorter means faster failover and more renewals.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The election's name (its lock key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until this process leads, in line with the other candidates
    /// (first come, first served, across processes, no herd), then
    /// proclaims `value` and returns the term. Cancelling the wait leaves
    /// the line. Errors only on bad input or a non-transient server error;
    /// transient ones are ridden through.
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership> {
        let value = value.into();
        validate::positive_millis("lease", self.lease)?;
        let _waiting = crate::metrics::Gauged::waiter(&self.name);
        loop {
            let acquired = self
                .lock
                .acquire(self.name.as_str())
                .expires(self.lease)
                .renew(true)
                .fair(true)
                .timeout(CAMPAIGN_WAIT)
                .await;
            match acquired {
                Ok(guard) => {
                    let leadership = Leadership { guard };
                    tracing::info!(election = %self.name, token = leadership.token(), "mongolock: leading");
                    crate::metrics::leader_changed(&self.name);
                    leadership.proclaim(value).await?;
                    return Ok(leadership);
                }
                Err(Error::Locked { .. } | Error::TimedOut { .. }) => continue,
                Err(other) => return Err(other),
            }
        }
    }

    /// The current leader, by the server's clock; `None` while nobody
    /// leads.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        if !self.lock.is_locked(&self.name).await? {
            return Ok(None);
        }
        Ok(self
            .lock
            .get_lock_info(&self.name)
            .await?
            .and_then(Leader::from_info))
    }

    /// Every change of leadership, in order: each new term, each value a
    /// leader proclaims, each resignation (`None`). From a change stream
    /// on the election's document where there is one (each event read
    /// from the write itself, so no term is missed however fast they
    /// come), from polling every 200 ms otherwise (where a term shorter
    /// than that can be missed). It starts with the leader now.
    pub fn observe(&self) -> Observer {
        let (tx, rx) = mpsc::unbounded_channel();
        let election = self.clone();
        let task = tokio::spawn(async move { election.feed(tx).await });
        Observer { rx, task }
    }

    async fn feed(self, tx: mpsc::UnboundedSender<Option<Leader>>) {
        let mut last: Option<Leader> = None;
        let send = |next: Option<Leader>, last: &mut Option<Leader>| -> bool {
            if next == *last {
                return true;
            }
            *last = next.clone();
            tx.send(next).is_ok()
        };
        let streams = self.lock.memory().is_none() && self.lock.settings().change_streams;
        if streams {
            let opened = self
                .lock
                .collection()
                .watch()
                .pipeline([doc! { "$match": { "documentKey._id": &self.name } }])
                .await;
            match opened {
                Ok(mut stream) => {
                    // The leader before the first event (a write after the
                    // stream opened is seen as an event too).
                    if let Ok(now) = self.leader().await {
                        if !send(now, &mut last) {
                            return;
                        }
                    }
                    while let Some(event) = stream.next().await {
                        let Ok(event) = event else { break };
                        let next = term_of(&event, last.as_ref());
                        if !send(next, &mut last) {
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(election = %self.name, %error, "mongolock: no change stream for the election; observers poll");
                }
            }
        }
        loop {
            if let Ok(now) = self.leader().await {
                if !send(now, &mut last) {
                    return;
                }
            }
            tokio::time::sleep(OBSERVER_POLL).await;
            if tx.is_closed() {
                return;
            }
        }
    }
}

/// The leadership after a change event on the election's document, read
/// from the write itself: the whole document of an insert or replacement
/// (how 4.4 reports pipeline updates), the changed fields of an update
/// (5.0+), merged into the term they belong to.
fn term_of(event: &ChangeStreamEvent<Document>, last: Option<&Leader>) -> Option<Leader> {
    match event.operation_type {
        OperationType::Insert | OperationType::Replace => event
            .full_document
            .as_ref()
            .and_then(|d| LockInfo::from_document(d).ok())
            .and_then(Leader::from_info),
        OperationType::Update => {
            let description = event.update_description.as_ref()?;
            if description.removed_fields.iter().any(|f| f == OWNER) {
                return None;
            }
            let changed = &description.updated_fields;
            let date = |field: &str| changed.get_datetime(field).ok().copied();
            let value = |token: i64| {
                changed
                    .get_document(VALUE)
                    .ok()
                    .filter(|v| v.get_i64(query::VALUE_TOKEN) == Ok(token))
                    .and_then(|v| v.get_str(query::VALUE_TEXT).ok())
                    .map(str::to_owned)
            };
            match changed.get(TOKEN) {
                // A new term.
                // Its owner is among the changed fields unless the last
                // term's owner won again.
                Some(Bson::Int64(token)) => Some(Leader {
                    owner: match changed.get_str(OWNER) {
                        Ok(owner) => owner.to_owned(),
                        Err(_) => last?.owner.clone(),
                    },
                    since: date(ACQUIRED_AT),
                    expires_at: date(EXPIRES_AT)?,
                    token: *token,
                    value: value(*token),
                }),
                // The same term: renewed, or a value proclaimed.
                _ => {
                    let mut same = last?.clone();
                    if let Some(expires) = date(EXPIRES_AT) {
                        same.expires_at = expires;
                    }
                    if let Some(value) = value(same.token) {
                        same.value = Some(value);
                    }
                    Some(same)
                }
            }
        }
        _ => None,
    }
}

/// The changes of an election's leadership, from [`Election::observe`].
/// Dropping it stops the watch.
#[derive(Debug)]
pub struct Observer {
    rx: mpsc::UnboundedReceiver<Option<Leader>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// The next change: `Some(leader)` for a new term or a change in it,
    /// `None` when nobody leads any more. Waits for it.
    pub async fn changed(&mut self) -> Option<Leader> {
        // The sender lives as long as the task, which this handle ends.
        self.rx.recv().await.flatten()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leadership {
    /// The term's fencing token: pass it to what the leader writes, so a
    /// deposed leader's writes are refused there.
    pub fn token(&self) -> i64 {
        self.guard.token()
    }

    /// The lock held for the term.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Whether the term is over (see [`LockGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Resolves when the term is lost: a renewal found another leader or
    /// could not be confirmed before the lease (less the drift allowance)
    /// ran out.
    pub async fn lost(&self) -> Error {
        self.guard.lost().await
    }

    /// Proclaims `value` (an address, a version) for observers, in the
    /// lock document, checked against this term's owner and token; `false`
    /// if the term is over.
    pub async fn proclaim(&self, value: impl Into<String>) -> Result<bool> {
        let value = value.into();
        let lock = self.guard.lock();
        let key = self.guard.key();
        let filter = query::by_holder(key, self.guard.owner(), Some(self.token()));
        let value = doc! { query::VALUE_TOKEN: self.token(), query::VALUE_TEXT: value };
        if let Some(memory) = lock.memory() {
            return memory.set_field(key, &filter, VALUE, value.into());
        }
        let set = lock
            .collection()
            .update_one(filter, doc! { "$set": { VALUE: value } });
        let updated = lock
            .bounded(key, lock.operation_timeout(), async { Ok(set.await?) })
            .await?;
        Ok(updated.matched_count == 1)
    }

    /// Ends the term: releases the lock, which goes to the next candidate
    /// in line at once.
    pub async fn resign(self) -> Result<bool> {
        self.guard.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MongoDB 5.0+ sends only the changed fields: a new term won by the
    /// last term's owner does not name it.
    #[test]
    fn a_new_term_by_the_same_owner_keeps_its_owner() {
        let ends = DateTime::from_millis(2_000);
        let event: ChangeStreamEvent<Document> = mongodb::bson::from_document(doc! {
            "_id": { "_data": "0" },
            "operationType": "update",
            "documentKey": { "_id": "leader" },
            "updateDescription": {
                "updatedFields": { TOKEN: 8_i64, EXPIRES_AT: ends, ACQUIRED_AT: ends },
                "removedFields": [],
            },
        })
        .unwrap();
        let last = Leader {
            owner: "a".to_owned(),
            since: None,
            expires_at: DateTime::from_millis(1_000),
            token: 7,
            value: None,
        };
        let next = term_of(&event, Some(&last)).unwrap();
        assert_eq!(
            (next.owner.as_str(), next.token, next.expires_at),
            ("a", 8, ends)
        );
        assert_eq!(term_of(&event, None), None, "an owner nobody saw");
    }
}
