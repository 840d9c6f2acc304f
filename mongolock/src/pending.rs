//! The releases left to the background, counted so that
//! `finish_releases` can wait for them.

use std::sync::Arc;
use std::time::Duration;

/// How many background releases are under way, for
/// [`MongoLock::finish_releases`](crate::MongoLock::finish_releases).
#[derive(Debug)]
pub(crate) struct PendingReleases(tokio::sync::watch::Sender<usize>);

impl Default for PendingReleases {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

/// One background release; counted until dropped, which happens also when a
/// runtime shutting down drops the task unrun.
pub(crate) struct ReleaseTicket(Arc<PendingReleases>);

impl PendingReleases {
    pub(crate) fn start(self: &Arc<Self>) -> ReleaseTicket {
        self.0.send_modify(|n| *n += 1);
        ReleaseTicket(self.clone())
    }

    pub(crate) async fn wait_idle(&self, within: Duration) -> bool {
        let mut pending = self.0.subscribe();
        tokio::time::timeout(within, pending.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for ReleaseTicket {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
