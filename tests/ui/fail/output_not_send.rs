use mongolock::mongo_locked;

// The output is kept while the lock is released, so the future is `Send`
// only if the output is.
#[mongo_locked(key = "job")]
async fn job() -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

fn main() {
    tokio::spawn(async {
        let _ = job().await;
    });
}
