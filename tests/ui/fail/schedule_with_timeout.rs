use mongolock::mongo_locked;

// A scheduled run claims its tick once: waiting for the lock makes no sense.
#[mongo_locked(key = "report", schedule = "0 2 * * *", timeout = 10)]
async fn report() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = report();
}
