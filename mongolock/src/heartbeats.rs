//! The driver's last word on each server it could not reach, kept so that a
//! timeout against an unreachable server says why (connection refused, no
//! such host, TLS) instead of only "no answer".
//!
//! The driver reports it in its SDAM heartbeat events, which exist only on
//! clients built with a handler; [`MongoLock::connect`](crate::MongoLock::connect)
//! and [`MongoLock::connect_with_options`](crate::MongoLock::connect_with_options)
//! install [`Heartbeats::handler`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use mongodb::options::ServerAddress;

/// The last heartbeat failure of every server whose last heartbeat failed.
#[derive(Debug, Default)]
pub(crate) struct Heartbeats {
    failing: Mutex<HashMap<ServerAddress, mongodb::error::Error>>,
}

impl Heartbeats {
    fn note(&self, event: &SdamEvent) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            SdamEvent::ServerHeartbeatFailed(e) => {
                failing.insert(e.server_address.clone(), e.failure.clone());
            }
            SdamEvent::ServerHeartbeatSucceeded(e) => {
                failing.remove(&e.server_address);
            }
            SdamEvent::ServerClosed(e) => {
                failing.remove(&e.address);
            }
            _ => {}
        }
    }

    /// The failure of a server that has not answered since, if any.
    pub(crate) fn last_failure(&self) -> Option<mongodb::error::Error> {
        let failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        failing.values().next().cloned()
    }

    /// A handler that records heartbeats here and passes every event on to
    /// `theirs`, the handler the user's options already had.
    pub(crate) fn handler(
        self: &Arc<Self>,
        theirs: Option<EventHandler<SdamEvent>>,
    ) -> EventHandler<SdamEvent> {
        let this = Arc::clone(self);
        EventHandler::callback(move |event| {
            this.note(&event);
            match &theirs {
                None => {}
                Some(EventHandler::Callback(f)) => f(event),
                Some(EventHandler::AsyncCallback(f)) => {
                    tokio::spawn(f(event));
                }
                Some(EventHandler::TokioMpsc(sender)) => {
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        // A closed receiver means the user stopped listening.
                        let _ = sender.send(event).await;
                    });
                }
                Some(_) => {
                    tracing::debug!(
                        "mongolock: an SDAM event handler of an unknown kind is not called"
                    );
                }
            }
        })
    }
}
