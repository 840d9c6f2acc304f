//! Counting semaphores on the lock core: permit `i` of semaphore `name`
//! is the lock `name#i`, with its own holder, lease, renewal and fencing
//! token; waiters queue FIFO across processes on the lock `name` (the
//! *gate*), whose holder, the head of the line, takes the first permit
//! that frees.

use std::time::Duration;

use futures_util::future::select_ok;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::mongo_lock::{BoxFuture, MongoLock};
use crate::settings::DEFAULT_EXPIRES;

/// The most permits a semaphore may have: each is a lock document, and a
/// waiting head watches all of them.
pub const MAX_PERMITS: u32 = 1_000;

/// The longest lease of the gate, the lock the head of the line holds
/// while it waits for a permit: a head that died holds the line up no
/// longer than this.
const GATE_LEASE: Duration = Duration::from_secs(15);

/// A counting semaphore: at most `permits` holders at once. Made by
/// [`MongoLock::semaphore`].
///
/// ```no_run
/// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
/// use std::time::Duration;
///
/// // At most three exports at once across the fleet.
/// let exports = lock.semaphore("export", 3);
/// let permit = exports.acquire_within(Duration::from_secs(60)).await?;
/// // ... the export, with permit.token() as fencing token ...
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    lock: MongoLock,
    name: String,
    permits: u32,
    lease: Option<Duration>,
    renew: Option<bool>,
}

/// A held permit: a lock of its own (its guard), released on
/// [`release`](Self::release) or drop.
#[derive(Debug)]
#[must_use = "dropping the permit releases it at once"]
pub struct Permit {
    guard: LockGuard,
    index: u32,
    /// Counts the permit in the `metrics` gauge while it lives.
    _in_use: crate::metrics::Gauged,
}

impl MongoLock {
    /// A semaphore named `name` with `permits` permits. See [`Semaphore`].
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> Semaphore {
        Semaphore {
            lock: self.clone(),
            name: name.into(),
            permits,
            lease: None,
            renew: None,
        }
    }
}

/// The lock key of permit `index` of semaphore `name`.
fn permit_key(name: &str, index: u32) -> String {
    format!("{name}#{index}")
}

impl Semaphore {
    /// The lease of a permit. Without it, permits take the default lease
    /// ([`DEFAULT_EXPIRES`](crate::DEFAULT_EXPIRES)) and renew it while
    /// held; with it, they are held that long unless [`renew`](Self::renew)d.
    pub fn expires(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Renew a permit's lease in the background while it is held.
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = Some(renew);
        self
    }

    /// The number of permits, for acquisitions from now on. Lowering it
    /// does not break holders: permits above the new number are kept until
    /// released, and are not given out again.
    pub fn with_permits(mut self, permits: u32) -> Self {
        self.permits = permits;
        self
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Result<()> {
        crate::validate::key(&self.name)?;
        if self.permits == 0 || self.permits > MAX_PERMITS {
            return Err(Error::InvalidPermits {
                name: self.name.clone(),
                permits: self.permits,
            });
        }
        Ok(())
    }

    /// One permit's acquisition: a single attempt, or with a timeout.
    fn take(&self, index: u32, timeout: Option<Duration>) -> BoxFuture<Result<LockGuard>> {
        let lease = self.lease.unwrap_or(DEFAULT_EXPIRES);
        let renew = self.renew.unwrap_or(self.lease.is_none());
        let mut acquire = self
            .lock
            .acquire(permit_key(&self.name, index))
            .expires(lease)
            .renew(renew)
            .fair(false);
        if let Some(timeout) = timeout {
            acquire = acquire.timeout(timeout);
        }
        Box::pin(std::future::IntoFuture::into_future(acquire))
    }

    fn busy(&self) -> Error {
        Error::Locked {
            key: self.name.clone(),
            owner: None,
            since: None,
            expires: None,
        }
    }

    /// Takes a free permit now, or fails with [`Error::Locked`] (also when
    /// others are queued in line: a single attempt does not jump it).
    pub async fn acquire(&self) -> Result<Permit> {
        self.acquire_until(None).await
    }

    /// Waits in line (FIFO across processes) for a permit, for at most
    /// `timeout`; then fails with [`Error::Locked`].
    pub async fn acquire_within(&self, timeout: Duration) -> Result<Permit> {
        crate::validate::bounded("timeout", timeout)?;
        self.acquire_until(Some(Instant::now() + timeout)).await
    }

    async fn acquire_until(&self, deadline: Option<Instant>) -> Result<Permit> {
        self.check()?;
        let remaining = |deadline: Option<Instant>| {
            deadline.map(|d| d.saturating_duration_since(Instant::now()))
        };
        // Nobody in line (no waiter queued at the gate, and no head holding
        // it for a permit): a free permit is taken directly. A single
        // attempt never waits for the head's choice, only for the line.
        let line = self.lock.get_lock_info(&self.name).await?;
        let queued = line.as_ref().map_or(0, |l| l.waiters);
        let head = line.is_some_and(|l| l.owner.is_some());
        if queued == 0 && (!head || deadline.is_none()) {
            match self.first_free(None).await {
                Ok((guard, index)) => return Ok(self.permit(guard, index)),
                Err(Error::Locked { .. }) if deadline.is_some() => {}
                Err(other) => return Err(other),
            }
        } else if deadline.is_none() {
            return Err(self.busy());
        }
        // The head of the line holds the gate while it waits for a permit.
        // A head that dies holds the line up for the gate's lease: the
        // permits' own, at most GATE_LEASE.
        let gate_lease = self.lease.unwrap_or(DEFAULT_EXPIRES).min(GATE_LEASE);
        let mut gate = self
            .lock
            .acquire(self.name.as_str())
            .expires(gate_lease)
            .fair(true)
            .renew(true);
        if let Some(timeout) = remaining(deadline).filter(|t| !t.is_zero()) {
            gate = gate.timeout(timeout);
        }
        let _waiting = crate::metrics::Gauged::waiter(&self.name);
        let gate = match gate.await {
            Ok(gate) => gate,
            Err(Error::Locked { .. }) => return Err(self.busy()),
            Err(other) => return Err(other),
        };
        let permit = self.first_free(deadline).await;
        // The line moves on whatever happened (a failed release is logged
        // by the guard's background release when dropped).
        drop(gate);
        let (guard, index) = permit?;
        Ok(self.permit(guard, index))
    }

    fn permit(&self, guard: LockGuard, index: u32) -> Permit {
        Permit {
            guard,
            index,
            _in_use: crate::metrics::Gauged::permit(&self.name),
        }
    }

    /// The first permit free: each tried once, then (with time left) all
    /// waited for at once, the first taken wins.
    async fn first_free(&self, deadline: Option<Instant>) -> Result<(LockGuard, u32)> {
        for index in 0..self.permits {
            match self.take(index, None).await {
                Ok(guard) => return Ok((guard, index)),
                Err(Error::Locked { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        let Some(timeout) = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .filter(|t| !t.is_zero())
        else {
            return Err(self.busy());
        };
        let waits = (0..self.permits).map(|index| {
            let wait = self.take(index, Some(timeout));
            Box::pin(async move { wait.await.map(|guard| (guard, index)) })
        });
        // The others are dropped: one that took its permit meanwhile
        // releases it in the background.
        match select_ok(waits).await {
            Ok((taken, _others)) => Ok(taken),
            Err(Error::Locked { .. }) => Err(self.busy()),
            Err(other) => Err(other),
        }
    }

    /// How many permits are held now, by the server's clock.
    pub async fn in_use(&self) -> Result<u32> {
        self.check()?;
        let mut held = 0;
        for index in 0..self.permits {
            if self.lock.is_locked(&permit_key(&self.name, index)).await? {
                held += 1;
            }
        }
        Ok(held)
    }
}

impl Permit {
    /// Which permit (0 to permits - 1).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The permit's lock.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// The permit's fencing token: it grows with every holder of this
    /// permit.
    pub fn token(&self) -> i64 {
        self.guard.token()
    }

    /// The lock itself, for code that works with guards.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }

    /// Whether the permit was lost (see [`LockGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Resolves when the permit is lost.
    pub async fn lost(&self) -> Error {
        self.guard.lost().await
    }

    /// Returns the permit; the head of the line takes it at once.
    pub async fn release(self) -> Result<bool> {
        self.guard.release().await
    }
}
