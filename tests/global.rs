//! The process-wide lock. One test, since the state is global to the binary.

use mongolock::{configure, global, Error};
use mongolock_suite::fresh_lock;

#[tokio::test]
async fn global_is_configured_once() {
    assert!(matches!(global(), Err(Error::NotConfigured)));
    let lock = fresh_lock("global").await;
    let namespace = lock.collection().namespace();
    configure(lock.clone()).unwrap();
    assert_eq!(global().unwrap().collection().namespace(), namespace);
    assert!(matches!(configure(lock), Err(Error::AlreadyConfigured)));
    assert_eq!(global().unwrap().collection().namespace(), namespace);
}
