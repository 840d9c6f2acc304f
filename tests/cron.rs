//! `examples/cron.rs` as three processes for a few ticks: every tick ran
//! exactly once across them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use mongodb::bson::Document;
use mongolock_suite::server_uri;

/// The example's binary, built next to this test's (`cargo test` builds
/// examples; a lone `cargo test --test cron` builds it here).
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .expect("the test binary's folder");
    let binary = deps.join("../examples/cron");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--example", "cron"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cannot build examples/cron.rs");
    }
    binary
}

#[tokio::test]
async fn each_tick_runs_once_across_three_processes() {
    let uri = server_uri().unwrap();
    let runs = format!("cron_runs_{:08x}", rand::random::<u32>());
    let status = Command::new(example_binary())
        .env("MONGODB_URI", &uri)
        .env("CRON_TICKS", "4")
        .env("CRON_RUNS", &runs)
        .status()
        .expect("the example runs");
    assert!(status.success());

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let collection = client
        .database("mongolock_demo")
        .collection::<Document>(&runs);
    let mut cursor = collection.find(mongodb::bson::doc! {}).await.unwrap();
    let mut per_tick: HashMap<i64, Vec<String>> = HashMap::new();
    while cursor.advance().await.unwrap() {
        let run = cursor.deserialize_current().unwrap();
        per_tick
            .entry(run.get_i64("tick").unwrap())
            .or_default()
            .push(run.get_str("worker").unwrap().to_owned());
    }
    assert!(per_tick.len() >= 2, "too few ticks ran: {per_tick:?}");
    for (tick, workers) in &per_tick {
        assert_eq!(workers.len(), 1, "tick {tick} ran on {workers:?}");
    }
}
