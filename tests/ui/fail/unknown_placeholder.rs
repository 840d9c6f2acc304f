use mongolock::mongo_locked;

#[mongo_locked(key = "report:{user}")]
async fn job(user_id: u64) -> Result<u64, mongolock::Error> {
    Ok(user_id)
}

fn main() {
    let _ = job(1);
}
