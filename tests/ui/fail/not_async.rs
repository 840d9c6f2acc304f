use mongolock::mongo_locked;

#[mongo_locked(key = "job")]
fn not_async() -> Result<(), mongolock::Error> {
    Ok(())
}

fn main() {
    // The function is still emitted: no second error here.
    let _ = not_async();
}
