use mongolock::mongo_locked;

#[mongo_locked(key = "job", timeout = 5, timeout = 10)]
async fn job() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = job();
}
