//! Key templates on free functions, with a user error type.
#![deny(warnings)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]

use mongolock::mongo_locked;

#[derive(Debug)]
pub enum AppError {
    Lock(mongolock::Error),
    Other(String),
}

impl From<mongolock::Error> for AppError {
    fn from(e: mongolock::Error) -> Self {
        AppError::Lock(e)
    }
}

pub struct User {
    pub id: u64,
    pub org: Org,
}

pub struct Org {
    pub name: String,
}

#[mongo_locked(key = "report:{user_id}", expires = 60, timeout = 10)]
async fn build_report(user_id: u64) -> Result<String, AppError> {
    if user_id == 0 {
        return Err(AppError::Other("no user".into()));
    }
    Ok(format!("report {user_id}"))
}

#[mongo_locked(
    key = "user:{user.id}:{user.org.name}:{{literal}}",
    expires = "1500ms",
    timeout = "2m"
)]
async fn by_field(user: &User, pair: (u8, u8)) -> Result<(), AppError> {
    let _ = (user.id, pair.0);
    Ok(())
}

#[mongo_locked(key = "pair:{pair.0}-{pair.1}", expires = "1h", timeout = 0)]
async fn tuple_field(pair: (u8, u8)) -> Result<u8, AppError> {
    Ok(pair.0 + pair.1)
}

#[mongo_locked(key = "nightly")]
async fn fixed_key() -> Result<(), mongolock::Error> {
    Ok(())
}

#[mongo_locked(key = "question-mark:{n}")]
async fn uses_question_mark(n: u32) -> Result<u32, AppError> {
    let parsed: u32 = "5".parse().map_err(|_| AppError::Other("parse".into()))?;
    Ok(parsed + n)
}

fn main() {
    let _ = build_report(1);
    let _ = by_field;
    let _ = tuple_field((1, 2));
    let _ = fixed_key();
    let _ = uses_question_mark(1);
}
