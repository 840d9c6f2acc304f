use mongolock::mongo_locked;

#[derive(Debug)]
struct AppError;

#[mongo_locked(key = "job")]
async fn job() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = job();
}
