use mongolock::mongo_locked;

#[mongo_locked(key = "job")]
async fn job() -> u32 {
    1
}

fn main() {
    let _ = job();
}
