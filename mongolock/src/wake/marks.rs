//! What a write tells the waiters: the release id's marks (see
//! [`RELEASE_ID`](crate::query)), and the queue's head.

use mongodb::bson::{doc, Document};

use crate::query::{ANYONE, GRANTED_TO, PROCESS, QUEUE, RELEASE_ID, TURN, WAITER};

/// The head of a key's queue: whose turn it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(super) process: String,
    pub(super) waiter: String,
}

/// What a release id says (see [`crate::query::RELEASE_ID`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Marks<'a> {
    /// The id of the write, as its writer chose it.
    pub(super) own: &'a str,
    /// The process it handed the lock over to.
    pub(super) granted_to: Option<&'a str>,
    /// The waiter whose turn the write made it, if it names one (not when
    /// it left the lock free to anyone, or still held).
    pub(super) turn: Option<Head>,
}

impl<'a> Marks<'a> {
    pub(super) fn of(id: &'a str) -> Self {
        let (rest, turn) = if let Some(rest) = id.strip_suffix(ANYONE) {
            (rest, None)
        } else if let Some((rest, head)) = id.split_once(TURN) {
            let turn = head.split_once(':').map(|(process, waiter)| Head {
                process: process.to_owned(),
                waiter: waiter.to_owned(),
            });
            (rest, turn)
        } else {
            (id, None)
        };
        let (own, granted_to) = match rest.split_once(GRANTED_TO) {
            Some((own, to)) => (own, Some(to)),
            None => (rest, None),
        };
        Marks {
            own,
            granted_to,
            turn,
        }
    }
}

/// The lock document of `key` as an `update` event tells it: MongoDB 5.0+
/// sends only the fields a write `changed`, and no stream of ours looks the
/// document up. Those fields, the key, and, standing in for the queue, the
/// waiter whose turn the release id names (none when it names nobody's, or
/// anyone's). A whole document (a reply, a `replace`) is read as it is: its
/// queue is the truth, also after writes that set no release id.
pub(super) fn changed_view(key: &str, changed: &Document) -> Document {
    let mut view = changed.clone();
    view.insert("_id", key);
    view.remove(QUEUE);
    let turn = changed
        .get_str(RELEASE_ID)
        .ok()
        .and_then(|id| Marks::of(id).turn);
    if let Some(head) = turn {
        view.insert(
            QUEUE,
            vec![doc! { PROCESS: head.process, WAITER: head.waiter }],
        );
    }
    view
}

impl Head {
    /// The first entry of a lock document's queue, if any.
    pub(crate) fn of(doc: Option<&Document>) -> Option<Self> {
        let entry = doc?.get_array(QUEUE).ok()?.first()?.as_document()?;
        Some(Self {
            process: entry.get_str(PROCESS).ok()?.to_owned(),
            waiter: entry.get_str(WAITER).ok()?.to_owned(),
        })
    }
}
