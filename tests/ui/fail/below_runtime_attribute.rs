use mongolock::mongo_locked;

#[tokio::main]
#[mongo_locked(key = "main")]
async fn main() -> Result<(), mongolock::Error> {
    Ok(())
}
