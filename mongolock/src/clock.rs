//! An estimate of the server's clock, to turn a lease's end (server time)
//! into a local moment to wake at. It only ever schedules a retry; no lock
//! decision depends on it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Client;
use tokio::time::Instant;

/// How long a sample is trusted before a waiter asks the server again.
const SAMPLE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Server wall clock minus ours, in milliseconds.
    offset_millis: i64,
    rtt: Duration,
    taken: Instant,
}

/// The best recent sample of the server-client clock offset.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    sample: Mutex<Option<Sample>>,
    /// Held while one waiter asks the server, so a crowd of new waiters
    /// sends one `hello`, not one each.
    refreshing: tokio::sync::Mutex<()>,
}

/// A round trip whose reply carried the server's time.
pub(crate) struct Probe {
    sent_wall: SystemTime,
    sent: Instant,
}

impl Probe {
    pub(crate) fn start() -> Self {
        Self {
            sent_wall: SystemTime::now(),
            sent: Instant::now(),
        }
    }

    /// When the request left.
    pub(crate) fn sent(&self) -> Instant {
        self.sent
    }
}

fn wall_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn wall_millis(t: SystemTime) -> i64 {
    // Truncated toward zero, as whole milliseconds of the span from the epoch.
    wall_micros(t) / 1000
}

impl ServerClock {
    /// Records that the server's clock read `server` during the round trip
    /// that `probe` started. Keeps the sample with the tighter round trip,
    /// unless the kept one is stale. Returns this round trip's reading: the
    /// server's clock minus ours, in milliseconds, and the round trip.
    pub(crate) fn observe(&self, probe: &Probe, server: DateTime) -> (i64, Duration) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(probe.sent);
        let half = i64::try_from((rtt / 2).as_millis()).unwrap_or(i64::MAX);
        let local = wall_millis(probe.sent_wall).saturating_add(half);
        let candidate = Sample {
            offset_millis: server.timestamp_millis().saturating_sub(local),
            rtt,
            taken: now,
        };
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        let keep_old = sample.is_some_and(|old| {
            now.saturating_duration_since(old.taken) < SAMPLE_TTL && old.rtt < rtt
        });
        if !keep_old {
            *sample = Some(candidate);
        }
        (candidate.offset_millis, candidate.rtt)
    }

    fn fresh(&self) -> Option<Sample> {
        let sample = *self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        sample.filter(|s| s.taken.elapsed() < SAMPLE_TTL)
    }

    /// The local moment the server's clock reads `server`, if known.
    pub(crate) fn local_instant(&self, server: DateTime) -> Option<Instant> {
        let sample = self.fresh()?;
        let local_target = server
            .timestamp_millis()
            .saturating_sub(sample.offset_millis);
        let ahead = local_target.saturating_sub(wall_millis(SystemTime::now()));
        let now = Instant::now();
        Some(match u64::try_from(ahead) {
            Ok(ms) => now + Duration::from_millis(ms),
            Err(_) => now,
        })
    }
}

impl ServerClock {
    /// The server's clock now, in epoch milliseconds, by the kept sample,
    /// or this machine's clock while none is known.
    pub(crate) fn server_now_millis(&self) -> i64 {
        let local = wall_millis(SystemTime::now());
        self.fresh()
            .map_or(local, |s| local.saturating_add(s.offset_millis))
    }

    /// A lower bound of the server's clock now, in epoch microseconds, by
    /// the kept sample: the server read its clock somewhere within the
    /// sample's round trip, so its offset is known within half of it, and
    /// the reading was rounded down to a millisecond. `None` while no fresh
    /// sample is kept. It only proposes a fencing token (see
    /// [`crate::query::quick_take`]): the server decides whether it grows.
    pub(crate) fn floor_micros(&self) -> Option<i64> {
        let sample = self.fresh()?;
        let local = wall_micros(SystemTime::now());
        let half_rtt = i64::try_from((sample.rtt / 2).as_micros()).ok()?;
        Some(
            local
                .saturating_add(sample.offset_millis.saturating_mul(1000))
                .saturating_sub(half_rtt)
                .saturating_sub(1000),
        )
    }

    /// Forgets the kept sample, so that the next [`refresh`](Self::refresh)
    /// asks the server: the server's clock may have stepped.
    pub(crate) fn forget(&self) {
        *self.sample.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Makes sure the estimate is fresh, asking `client`'s server (`hello`
    /// reports its time) at most once a minute. Failure leaves it unknown:
    /// waiters then poll.
    pub(crate) async fn refresh(&self, client: &Client) {
        if self.fresh().is_some() {
            return;
        }
        // Another waiter is asking; this one polls until the answer is in.
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            return;
        };
        match hello(client).await {
            Ok((reply, probe)) => match reply.get_datetime("localTime") {
                Ok(server) => {
                    self.observe(&probe, *server);
                }
                Err(_) => tracing::debug!("mongolock: the server's hello has no localTime"),
            },
            Err(error) => tracing::debug!(%error, "mongolock: cannot read the server's clock"),
        }
    }
}

/// The server's `hello` reply (which carries its clock, `localTime`) and the
/// probe of its round trip. Servers before 4.4.2 do not know `hello` (59,
/// CommandNotFound): they are asked the legacy `isMaster`, which answers the
/// same fields.
pub(crate) async fn hello(client: &Client) -> mongodb::error::Result<(Document, Probe)> {
    /// CommandNotFound.
    const COMMAND_NOT_FOUND: i32 = 59;
    let db = client.database("admin");
    let probe = Probe::start();
    match db.run_command(doc! { "hello": 1 }).await {
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == COMMAND_NOT_FOUND) =>
        {
            tracing::debug!("mongolock: the server does not know hello; asking isMaster");
            let probe = Probe::start();
            let reply = db.run_command(doc! { "isMaster": 1 }).await?;
            Ok((reply, probe))
        }
        other => other.map(|reply| (reply, probe)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_ahead_of_us_wakes_us_earlier_by_that_much() {
        let clock = ServerClock::default();
        assert!(clock.local_instant(DateTime::now()).is_none());
        let probe = Probe::start();
        // The server reads 10 s ahead of us.
        let server_now = DateTime::from_millis(wall_millis(SystemTime::now()) + 10_000);
        clock.observe(&probe, server_now);
        let at = clock
            .local_instant(DateTime::from_millis(server_now.timestamp_millis() + 2_000))
            .unwrap();
        let wait = at.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::from_millis(1500) && wait <= Duration::from_millis(2100),
            "{wait:?}"
        );
        // A time already past on the server is now.
        let past = clock.local_instant(server_now).unwrap();
        assert!(past <= Instant::now());
    }

    #[test]
    fn the_floor_is_below_the_servers_clock_by_the_round_trip() {
        let clock = ServerClock::default();
        assert_eq!(clock.floor_micros(), None, "no sample, no floor");
        let probe = Probe::start();
        let server_now = DateTime::from_millis(wall_millis(SystemTime::now()) + 10_000);
        clock.observe(&probe, server_now);
        let observed = Instant::now();
        let floor = clock.floor_micros().unwrap();
        // The server reads about 10 s ahead; the floor is under it (plus
        // the time since, as the server's clock ran on), and no further
        // under it than the (tiny) round trip and the rounding.
        let server_micros = server_now.timestamp_millis() * 1000;
        let since = i64::try_from(observed.elapsed().as_micros()).unwrap();
        assert!(
            floor < server_micros + 1000 + since,
            "{floor} vs {server_micros}"
        );
        assert!(
            floor > server_micros - 1_000_000,
            "{floor} vs {server_micros}"
        );
        clock.forget();
        assert_eq!(clock.floor_micros(), None);
    }
}
