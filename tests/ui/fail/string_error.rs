use mongolock::mongo_locked;

#[mongo_locked(key = "job")]
async fn job() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = job();
}
