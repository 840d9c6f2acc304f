//! [`MongoLock::check`]: what an operator wants to know at start-up about
//! the deployment the locks live on.

use std::fmt;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::WriteConcern;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::mongo_lock::MongoLock;
use crate::query;

/// The kind of deployment the server says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One `mongod` on its own: no change streams, no failover.
    Standalone,
    /// A replica set.
    ReplicaSet {
        /// The set's name.
        name: String,
        /// Data-bearing members and passives the server lists.
        members: usize,
        /// Arbiters: with one and a data-bearing member down, majority
        /// writes (every lock write) cannot commit.
        arbiters: usize,
    },
    /// A `mongos` in front of a sharded cluster.
    Sharded,
    /// No server: [`MongoLock::in_memory`], for tests.
    InMemory,
}

/// Whether waiters can learn of releases from a change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeStreams {
    /// A stream on the lock collection opens: waiters are woken by events.
    Available,
    /// Turned off with [`MongoLock::with_change_streams`]: waiters poll.
    Disabled,
    /// The server refused to open one: waiters poll.
    Unavailable {
        /// The server's reason.
        reason: String,
    },
}

/// What [`MongoLock::check`] found. Its `Display` is a short report, one
/// line a finding.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Deployment {
    /// The collection the locks live in, as `db.collection`.
    pub namespace: String,
    /// What the server says it is.
    pub topology: Topology,
    /// The server's version (`buildInfo`), when it tells.
    pub server_version: Option<String>,
    /// Whether waiters are woken by change events.
    pub change_streams: ChangeStreams,
    /// The server's clock minus this machine's, in milliseconds, within
    /// half of [`round_trip`](Self::round_trip). No lock decision reads
    /// this machine's clock; a large offset only shows a machine without
    /// time synchronisation.
    pub clock_offset_millis: i64,
    /// The round trip of the clock reading.
    pub round_trip: Duration,
    /// The write concern lock writes use (`None`: the server's default).
    pub write_concern: Option<WriteConcern>,
    /// How long a lock-shaped write and its removal took together, with
    /// that write concern.
    pub write_round_trip: Duration,
    /// Whether the TTL index that cleans up old lock documents exists.
    pub ttl_index: bool,
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lock collection   {}", self.namespace)?;
        match &self.topology {
            Topology::Standalone => writeln!(f, "topology          standalone")?,
            Topology::ReplicaSet {
                name,
                members,
                arbiters,
            } => writeln!(
                f,
                "topology          replica set {name:?}: {members} member(s), {arbiters} arbiter(s)"
            )?,
            Topology::Sharded => writeln!(f, "topology          sharded cluster (mongos)")?,
            Topology::InMemory => {
                writeln!(f, "topology          in memory (no server; for tests)")?
            }
        }
        if let Some(version) = &self.server_version {
            writeln!(f, "server version    {version}")?;
        }
        match &self.change_streams {
            ChangeStreams::Available => writeln!(f, "change streams    available")?,
            ChangeStreams::Disabled => writeln!(f, "change streams    turned off (waiters poll)")?,
            ChangeStreams::Unavailable { reason } => {
                writeln!(f, "change streams    unavailable (waiters poll): {reason}")?
            }
        }
        writeln!(
            f,
            "server clock      {:+} ms against this machine (round trip {:.1?})",
            self.clock_offset_millis, self.round_trip
        )?;
        match &self.write_concern {
            Some(wc) => writeln!(
                f,
                "write concern     w={} wtimeout={} ({:.1?} for a write and its removal)",
                wc.w.as_ref()
                    .map_or_else(|| "default".to_owned(), |w| format!("{w:?}")),
                wc.w_timeout
                    .map_or_else(|| "none".to_owned(), |t| format!("{t:?}")),
                self.write_round_trip
            )?,
            None => writeln!(
                f,
                "write concern     the server's default ({:.1?} for a write and its removal)",
                self.write_round_trip
            )?,
        }
        write!(
            f,
            "TTL index         {}",
            if self.ttl_index {
                "present"
            } else {
                "missing (built in the background at the first lock)"
            }
        )
    }
}

/// Codes of a command refused for lack of a privilege: 13 (Unauthorized)
/// and 8000, which Atlas's shared tier returns.
fn unauthorized(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    let code = match error.kind.as_ref() {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
        _ => return false,
    };
    matches!(code, 13 | 8000)
}

impl MongoLock {
    /// Checks the deployment the locks live on and reports what an operator
    /// wants to know at start-up: the topology, whether change streams
    /// work, the server's clock against this machine's, the write concern
    /// in force (by writing and removing a lock-shaped document with it),
    /// and whether the TTL index exists. It changes no lock.
    ///
    /// A privilege the locks need and the user lacks comes back as
    /// [`Error::MissingPrivilege`] naming it; every round trip is bounded by
    /// the [operation timeout](Self::with_operation_timeout).
    ///
    /// ```no_run
    /// # async fn demo(lock: mongolock::MongoLock) -> mongolock::Result<()> {
    /// println!("{}", lock.check().await?);
    /// # Ok(()) }
    /// ```
    pub async fn check(&self) -> Result<Deployment> {
        let collection = self.collection();
        if self.memory().is_some() {
            return Ok(Deployment {
                namespace: "(in memory)".to_owned(),
                topology: Topology::InMemory,
                server_version: None,
                change_streams: ChangeStreams::Disabled,
                clock_offset_millis: 0,
                round_trip: Duration::ZERO,
                write_concern: None,
                write_round_trip: Duration::ZERO,
                ttl_index: false,
            });
        }
        let namespace = collection.namespace().to_string();
        let client = collection.client();
        let probe_key = format!("mongolock.check:{}", crate::owner::unique_owner());
        let limit = self.operation_timeout();

        let (hello, probe) = self
            .bounded(&probe_key, limit, async {
                Ok(crate::clock::hello(client).await?)
            })
            .await?;
        let server_now = hello
            .get_datetime("localTime")
            .copied()
            .map_err(|_| Error::Corrupt {
                key: probe_key.clone(),
                reason: "the server's hello reply has no localTime".to_owned(),
            })?;
        let (clock_offset_millis, round_trip) = self.server_clock().observe(&probe, server_now);
        let topology = topology(&hello);
        let server_version = self
            .bounded(&probe_key, limit, async {
                Ok(client
                    .database("admin")
                    .run_command(doc! { "buildInfo": 1 })
                    .await?)
            })
            .await
            .ok()
            .and_then(|info| info.get_str("version").ok().map(str::to_owned));

        let privilege = |privilege: &'static str| {
            let namespace = namespace.clone();
            move |error: Error| match error {
                Error::Mongo(cause) if unauthorized(&cause) => Error::MissingPrivilege {
                    privilege,
                    namespace,
                    cause,
                },
                other => other,
            }
        };

        self.bounded(&probe_key, limit, async {
            Ok(collection.find_one(query::by_key(&probe_key)).await?)
        })
        .await
        .map_err(privilege("find"))?;
        let started = Instant::now();
        let probe_doc = doc! {
            "_id": &probe_key,
            // Already past: the TTL index removes it if the removal below
            // does not happen.
            query::EXPIRES_AT: DateTime::from_millis(0),
        };
        self.bounded(&probe_key, limit, async {
            Ok(collection.insert_one(probe_doc).await?)
        })
        .await
        .map_err(privilege("insert"))?;
        self.bounded(&probe_key, limit, async {
            Ok(collection
                .update_one(
                    query::by_key(&probe_key),
                    doc! { "$set": { "checked": true } },
                )
                .await?)
        })
        .await
        .map_err(privilege("update"))?;
        self.bounded(&probe_key, limit, async {
            Ok(collection.delete_one(query::by_key(&probe_key)).await?)
        })
        .await
        .map_err(privilege("remove"))?;
        let write_round_trip = started.elapsed();

        let ttl_index = self
            .bounded(&probe_key, limit, async { self.ttl_index_exists().await })
            .await
            .map_err(privilege("listIndexes"))?;

        let change_streams = if !self.settings().change_streams {
            ChangeStreams::Disabled
        } else {
            let opened = self
                .bounded(&probe_key, limit, async {
                    Ok(collection
                        .watch()
                        .max_await_time(Duration::from_millis(1))
                        .await?)
                })
                .await;
            match opened.map_err(privilege("changeStream")) {
                Ok(_stream) => ChangeStreams::Available,
                Err(missing @ Error::MissingPrivilege { .. }) => return Err(missing),
                Err(other) => ChangeStreams::Unavailable {
                    reason: other.to_string(),
                },
            }
        };

        Ok(Deployment {
            namespace,
            topology,
            server_version,
            change_streams,
            clock_offset_millis,
            round_trip,
            write_concern: collection.write_concern().cloned(),
            write_round_trip,
            ttl_index,
        })
    }
}

/// The topology a `hello` (or `isMaster`) reply describes.
fn topology(hello: &Document) -> Topology {
    if hello.get_str("msg") == Ok("isdbgrid") {
        return Topology::Sharded;
    }
    match hello.get_str("setName") {
        Ok(name) => {
            let count = |field| hello.get_array(field).map_or(0, |a| a.len());
            Topology::ReplicaSet {
                name: name.to_owned(),
                members: count("hosts") + count("passives"),
                arbiters: count("arbiters"),
            }
        }
        Err(_) => Topology::Standalone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_replies_name_their_topology() {
        assert_eq!(topology(&doc! { "msg": "isdbgrid" }), Topology::Sharded);
        assert_eq!(topology(&doc! { "ok": 1 }), Topology::Standalone);
        assert_eq!(
            topology(&doc! { "setName": "rs0", "hosts": ["a:1", "b:1"], "arbiters": ["c:1"] }),
            Topology::ReplicaSet {
                name: "rs0".into(),
                members: 2,
                arbiters: 1
            }
        );
    }
}
