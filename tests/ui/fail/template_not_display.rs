use mongolock::mongo_locked;

#[mongo_locked(key = "job:{ids}", expires = 60)]
async fn job(ids: Vec<u32>) -> Result<(), mongolock::Error> {
    let _ = ids;
    Ok(())
}

fn main() {
    let _ = job(vec![1]);
}
