//! The `metrics` feature: counters and histograms through the `metrics`
//! facade, read back with `metrics-util`'s debugging recorder. Each series
//! is labelled by the key's prefix, never the whole key.

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mongodb::bson::doc;
use mongolock::Error;
use mongolock_suite::FaultServer;

/// Running totals per series: a counter's value, a histogram's sample
/// count. The debugging recorder hands out what changed since its last
/// snapshot, so every snapshot is added here.
struct Totals {
    snapshotter: Snapshotter,
    seen: HashMap<String, u64>,
}

impl Totals {
    fn get(&mut self, name: &str) -> u64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<_> = key
                .labels()
                .map(|l| (l.key(), l.value()))
                .filter(|(k, _)| *k != "outcome" || key.name() == "mongolock_runs_total")
                .collect();
            assert_eq!(
                labels.first(),
                Some(&("prefix", "job")),
                "{}: labelled by prefix, never by the whole key",
                key.name()
            );
            assert!(
                labels.len() == 1 || key.name() == "mongolock_runs_total",
                "{}: {labels:?}",
                key.name()
            );
            let n = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                // A gauge's value now, not a sum.
                DebugValue::Gauge(v) => {
                    self.seen
                        .insert(key.name().to_owned(), v.into_inner() as u64);
                    continue;
                }
            };
            *self.seen.entry(key.name().to_owned()).or_default() += n;
        }
        self.seen.get(name).copied().unwrap_or(0)
    }

    /// Waits until `name` reaches `n`, for series that background tasks
    /// update.
    async fn reaches(&mut self, name: &str, n: u64) {
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            while self.get(name) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{name} never reached {n}");
    }
}

#[tokio::test]
async fn every_series_counts_what_happened() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals {
        snapshotter: recorder.snapshotter(),
        seen: HashMap::new(),
    };
    recorder.install().unwrap();
    let fx = FaultServer::start(&[]).await;
    let lock = fx.lock("holder").await;
    let admin = fx.lock("admin").await;

    let guard = lock.acquire("job:1").await.unwrap();
    assert!(matches!(
        admin.acquire("job:1").await,
        Err(Error::Locked { .. })
    ));
    assert!(guard.release().await.unwrap());
    assert_eq!(totals.get("mongolock_acquisitions_total"), 1);
    assert_eq!(totals.get("mongolock_busy_total"), 1);
    assert_eq!(totals.get("mongolock_wait_seconds"), 1);
    assert_eq!(totals.get("mongolock_hold_seconds"), 1);

    // Renewed in the background, then taken away: lost.
    let renewing = lock
        .acquire("job:2")
        .expires(Duration::from_millis(900))
        .renew_every(Duration::from_millis(100))
        .await
        .unwrap();
    totals.reaches("mongolock_renewals_total", 1).await;
    assert!(admin.force_release("job:2").await.unwrap());
    let _ = renewing.lost().await;
    totals.reaches("mongolock_lost_total", 1).await;

    // A release the server refuses.
    let failing = lock.acquire("job:3").await.unwrap();
    fx.fail(
        1,
        "holder",
        doc! { "failCommands": ["update", "findAndModify"], "errorCode": 2 },
    )
    .await;
    assert!(failing.release().await.is_err());
    assert_eq!(totals.get("mongolock_release_failures_total"), 1);

    // A scheduled job: a run, then one after ticks nobody claimed.
    let job = lock.job("job:4", mongolock::Schedule::parse("500ms").unwrap());
    let ran = job.run(|_| async { Ok::<_, Error>(()) }).await.unwrap();
    assert!(ran.is_some());
    // Ticks pass with nobody claiming them.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let ran = job.run(|_| async { Ok::<_, Error>(()) }).await.unwrap();
    assert!(ran.is_some());
    assert_eq!(totals.get("mongolock_runs_total"), 2);
    assert_eq!(totals.get("mongolock_run_seconds"), 2);
    assert!(totals.get("mongolock_missed_ticks_total") >= 2);

    // Leader election and semaphores.
    let leadership = lock.election("job:5").campaign("here").await.unwrap();
    assert_eq!(totals.get("mongolock_leader_changes_total"), 1);
    leadership.resign().await.unwrap();
    let permit = lock.semaphore("job:6", 2).acquire().await.unwrap();
    assert_eq!(totals.get("mongolock_permits_in_use"), 1);
    permit.release().await.unwrap();
    assert_eq!(totals.get("mongolock_permits_in_use"), 0);
}
