use mongolock::mongo_locked;

#[mongo_locked(key = "job")]
const fn constant() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    let _ = constant();
}
