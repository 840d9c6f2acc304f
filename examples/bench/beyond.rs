//! Rows for what is built on the lock: leader failover, semaphore
//! throughput against the lock's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongolock::MongoLock;

use crate::{Bench, Result};

/// A leader's lease in the failover rows.
pub const TERM_LEASE: Duration = Duration::from_secs(1);

/// A runtime of its own, as a process has: its tasks (renewals, the
/// driver's) run on its own thread, whoever blocks elsewhere.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Leader failover, `rounds` times: a leader in a runtime of its own (a
/// process) dies (its runtime is dropped: no resignation, no renewal),
/// and the time until the waiting candidate leads is measured; and the
/// time from a resignation to the next leader. Returns (after a death,
/// after a resignation), the mean of each.
pub fn failover(bench: &Bench, rounds: u32) -> Result<(Duration, Duration)> {
    let (mut died, mut resigned) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let name = format!("leader-{round}");
        let main = runtime()?;
        let leader_rt = runtime()?;
        let leader_name = name.clone();
        let leadership = leader_rt.block_on(async move {
            bench_lock(bench)
                .await?
                .election(leader_name)
                .lease(TERM_LEASE)
                .campaign("first")
                .await
                .map_err(crate::BoxError::from)
        })?;
        let waiting_lock = main.block_on(bench_lock(bench))?;
        let waiter = main.spawn({
            let name = name.clone();
            async move {
                let election = waiting_lock.election(name).lease(TERM_LEASE);
                let led = election.campaign("second").await;
                (Instant::now(), led, election)
            }
        });
        // Let the candidate queue (it learns of the leader's lease).
        std::thread::sleep(Duration::from_millis(300));
        let death = Instant::now();
        std::mem::forget(leadership);
        leader_rt.shutdown_background();
        let (led_at, second, election) = main.block_on(waiter)?;
        died += led_at - death;
        let second = second?;
        // A third candidate; the second resigns to it.
        let third = main.spawn(async move {
            election
                .campaign("third")
                .await
                .map(|l| (Instant::now(), l))
        });
        main.block_on(tokio::time::sleep(Duration::from_millis(300)));
        let resigned_at = Instant::now();
        main.block_on(second.resign())?;
        let (third_at, third) = main.block_on(third)??;
        resigned += third_at - resigned_at;
        main.block_on(third.resign())?;
    }
    Ok((died / rounds, resigned / rounds))
}

async fn bench_lock(bench: &Bench) -> Result<MongoLock> {
    bench.lock("election").await
}

/// The work a holder does in the throughput rows: with none, a semaphore
/// cannot beat the lock (its line is a lock too); with some, its permits
/// work side by side.
pub const HOLD: Duration = Duration::from_millis(20);

/// Acquisitions per second by `tasks` tasks of one process, each holding
/// for [`HOLD`], for `run`: through a semaphore of `permits`, or
/// (with `permits` 0) the plain fair lock.
pub async fn throughput(bench: &Bench, permits: u32, tasks: usize, run: Duration) -> Result<f64> {
    let lock: MongoLock = bench.lock("throughput").await?;
    let name = format!("throughput-{permits}-{}", rand::random::<u32>());
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + run;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (lock, name, done) = (lock.clone(), name.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let wait = Duration::from_secs(5);
                let ok = if permits == 0 {
                    match lock.acquire(name.as_str()).timeout(wait).await {
                        Ok(guard) => {
                            tokio::time::sleep(HOLD).await;
                            guard.release().await.is_ok()
                        }
                        Err(_) => false,
                    }
                } else {
                    match lock
                        .semaphore(name.as_str(), permits)
                        .acquire_within(wait)
                        .await
                    {
                        Ok(permit) => {
                            tokio::time::sleep(HOLD).await;
                            permit.release().await.is_ok()
                        }
                        Err(_) => false,
                    }
                };
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    lock.finish_releases(Duration::from_secs(10)).await;
    Ok(done.load(Ordering::Relaxed) as f64 / run.as_secs_f64())
}
