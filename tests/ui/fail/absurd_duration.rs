use mongolock::mongo_locked;

#[mongo_locked(key = "job", timeout = "400d")]
async fn job() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = job();
}
