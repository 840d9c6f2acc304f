use mongolock::mongo_locked;

#[mongo_locked(key = "job", expire = 60)]
async fn job() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = job();
}
