use mongolock::mongo_locked;

#[mongo_locked(key = "job", expires = -5)]
async fn job() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = job();
}
