use mongolock::mongo_locked;

#[mongo_locked(key = "count", on_busy = skip)]
async fn count() -> Result<u32, mongolock::Error> {
    Ok(1)
}

fn main() {
    let _ = count();
}
