//! Default owner tokens.

use rand::Rng;

/// A fresh owner token, unique for each call: `host:pid:random`.
///
/// The host and process make it readable in `get_lock_info`; the 64 random
/// bits make it unique, so two acquisitions never share an owner and one can
/// never release or renew the other's lock (the Python package's shared-name trap).
pub fn unique_owner() -> String {
    let suffix: u64 = rand::rng().random();
    format!("{}:{}:{suffix:016x}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_unique_and_name_the_process() {
        let a = unique_owner();
        let b = unique_owner();
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
        assert!(crate::validate::owner(&a).is_ok());
    }
}
