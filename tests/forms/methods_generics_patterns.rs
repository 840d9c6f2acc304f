//! Methods (every receiver, trait impls), generics, `impl Trait` and pattern
//! arguments, where-clauses.
#![deny(warnings)]
// The futures are built to check their types, never run.
#![allow(clippy::let_underscore_future)]

use std::fmt::Display;

use mongolock::{mongo_locked, MongoLock};

pub struct Shop {
    name: String,
    lock: MongoLock,
    sales: u32,
}

impl Shop {
    fn key(&self) -> String {
        format!("shop:{}", self.name)
    }

    #[mongo_locked(key = "shop:{self.name}")]
    async fn by_ref(&self) -> Result<usize, mongolock::Error> {
        Ok(self.name.len())
    }

    #[mongo_locked(key = self.key(), lock = &self.lock)]
    async fn by_mut(&mut self, n: u32) -> Result<u32, mongolock::Error> {
        self.sales += n;
        Ok(self.sales)
    }

    #[mongo_locked(key = format!("{}:{day}", self.name), expires = "90s")]
    async fn by_value(self, day: u32) -> Result<Self, mongolock::Error> {
        let _ = day;
        Ok(self)
    }
}

pub trait Job {
    fn run(
        &self,
        n: u32,
    ) -> impl std::future::Future<Output = Result<u32, mongolock::Error>> + Send;
}

impl Job for Shop {
    #[mongo_locked(key = "job:{n}")]
    async fn run(&self, n: u32) -> Result<u32, mongolock::Error> {
        Ok(n + self.sales)
    }
}

#[mongo_locked(key = "generic:{item}")]
async fn generic<T: Display + Send + Sync>(item: T) -> Result<String, mongolock::Error> {
    Ok(item.to_string())
}

#[mongo_locked(key = "impl-trait:{item}")]
async fn impl_trait(item: impl Display + Send) -> Result<(), mongolock::Error> {
    let _ = item.to_string();
    Ok(())
}

#[mongo_locked(key = "where:{item}")]
async fn with_where<T>(item: T) -> Result<T, mongolock::Error>
where
    T: Display + Send,
{
    Ok(item)
}

pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[mongo_locked(key = "point:{x}:{y}:{a}:{b}")]
async fn patterns(
    Point { x, y }: Point,
    (a, b): (u8, u8),
    _ignored: u8,
) -> Result<i32, mongolock::Error> {
    Ok(x + y + i32::from(a) + i32::from(b))
}

#[mongo_locked(key = "lifetimes:{text}")]
async fn borrowed<'a>(text: &'a str) -> Result<&'a str, mongolock::Error> {
    Ok(text)
}

fn main() {
    let _ = generic(1);
    let _ = impl_trait("x");
    let _ = with_where(1);
    let _ = patterns(Point { x: 1, y: 2 }, (1, 2), 0);
    let _ = borrowed("x");
    let _ = Shop::by_ref;
    let _ = Shop::by_mut;
    let _ = Shop::by_value;
}
