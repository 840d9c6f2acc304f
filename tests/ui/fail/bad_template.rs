use mongolock::mongo_locked;

#[mongo_locked(key = "job:{id:?}")]
async fn job(id: u32) -> Result<u32, mongolock::Error> {
    Ok(id)
}

fn main() {
    let _ = job(1);
}
