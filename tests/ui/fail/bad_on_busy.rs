use mongolock::mongo_locked;

#[mongo_locked(key = "job", on_busy = wait)]
async fn job() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = job();
}
