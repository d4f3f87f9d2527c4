//! The history checker: one set of rules for the demo, the simulator and
//! `audit`.
//!
//! A [`History`] lists what went in (every input message, in the order the
//! log holds it) and what came out (every `toPush` and `toMongo` record in
//! log order, the final Mongo slots, the final cache entries, read seqs and
//! max seqs). [`check`] looks for the anomalies our promises rule out:
//!
//! - **seq conflict**: two different messages observed at one
//!   `(conversation, seq)` — in pushes, persistence records, Mongo or cache;
//! - **duplicate**: one message observed at two different seqs;
//! - **order violation**: within a conversation, seqs not strictly
//!   increasing in input order, or a push/persistence log whose first
//!   occurrences of seqs go backwards;
//! - **lost**: an input message missing a push, or (stored) missing its Mongo
//!   slot or cache entry; **phantom**: an observed message never input;
//! - **read seq above max**: a user's read seq beyond the conversation's max
//!   seq; **read seq behind**: a user's read seq below what an input asked
//!   for (the seq of the user's own stored chat message, a read receipt) —
//!   a raise that was lost or overwritten by an older value — or, where
//!   the store logs its writes, a read seq ever written back to a lower
//!   value.
//!
//! A message is identified by `(conversation, clientMsgID)`. Observations
//! whose outcome was unknown are simply observations: the checker never
//! guesses what did not show up.

use std::collections::{BTreeMap, BTreeSet};

/// A message identity: conversation and `clientMsgID`.
pub type MsgId = (String, String);

/// One message as the input log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Conversation.
    pub conversation_id: String,
    /// `clientMsgID`.
    pub client_msg_id: String,
    /// Whether it should get a seq, a cache entry and a Mongo slot.
    pub stored: bool,
    /// The user whose read seq in this conversation must reach this
    /// message's seq (the sender of a stored chat message), if any.
    pub raises_read_of: Option<String>,
    /// The read seq this message asks for, as `(user, conversation, seq)`
    /// (a read receipt; Mongo only, as in OpenIM).
    pub receipt: Option<(String, String, i64)>,
}

impl Input {
    /// A message that raises no read seq.
    pub fn plain(conversation_id: &str, client_msg_id: &str, stored: bool) -> Self {
        Self {
            conversation_id: conversation_id.to_string(),
            client_msg_id: client_msg_id.to_string(),
            stored,
            raises_read_of: None,
            receipt: None,
        }
    }
}

/// One message seen in an output log, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Conversation.
    pub conversation_id: String,
    /// `clientMsgID`.
    pub client_msg_id: String,
    /// The seq it carried (0 for unstored messages).
    pub seq: i64,
}

/// Everything observed about a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Input messages in log order (partition by partition, offset order),
    /// redeliveries and producer duplicates included.
    pub inputs: Vec<Input>,
    /// `toPush` messages, per partition in offset order.
    pub pushes: Vec<Vec<Seen>>,
    /// `toMongo` messages, per partition in offset order.
    pub persistence_records: Vec<Vec<Seen>>,
    /// Final Mongo slots.
    pub persisted: Vec<Seen>,
    /// Final `MSG_CACHE` entries.
    pub cached: Vec<Seen>,
    /// Final read seqs: `(user, conversation, read_seq, where)`.
    pub read_seqs: Vec<(String, String, i64, &'static str)>,
    /// Every Mongo read seq value written, `(user, conversation, value)` in
    /// write order, where the store can tell (the simulator's); empty
    /// otherwise. A value below an earlier one is a read seq moving back.
    pub read_seq_writes: Vec<(String, String, i64)>,
    /// Max seq per conversation (Redis `CURR`, or Mongo's highest slot).
    pub max_seqs: BTreeMap<String, i64>,
    /// The outputs hold other traffic too (a shared production system):
    /// an observed message that is not among `inputs` is not a phantom but
    /// someone else's message, still checked for seq conflicts, duplicates
    /// and order. With no inputs at all this checks the outputs alone.
    pub open: bool,
    /// The cache may have lost entries behind our back (a Redis restart
    /// without persistence, a failover, an operator's FLUSHALL): a stored
    /// message missing from the cache is not counted as lost. Entries that
    /// are there are still checked for conflicts.
    pub cache_partial: bool,
}

/// Anomaly counts, and a few examples of each for the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Distinct input messages (by `clientMsgID`; a notification and its
    /// chat clone are one message).
    pub messages: u64,
    /// Input messages every unit of which was pushed.
    pub pushed: u64,
    /// Distinct units: a message in one conversation.
    pub units: u64,
    /// Distinct units that must be stored.
    pub stored: u64,
    /// Stored messages found in Mongo.
    pub persisted: u64,
    /// Stored messages found in the cache.
    pub cached: u64,
    /// Units pushed at least once.
    pub units_pushed: u64,
    /// `(conversation, seq)` pairs holding two different messages.
    pub seq_conflicts: u64,
    /// Messages seen at two different seqs.
    pub duplicates: u64,
    /// Order violations (input order, push log, persistence log).
    pub order_violations: u64,
    /// Input messages missing an effect.
    pub lost: u64,
    /// Messages observed that were never input.
    pub phantoms: u64,
    /// Stored messages observed that are other traffic (open histories
    /// only, see [`History::open`]).
    pub others: u64,
    /// Read seqs above the conversation's max seq.
    pub read_seq_above_max: u64,
    /// Read seqs below what an input asked for (or missing).
    pub read_seq_behind: u64,
    /// Up to a few examples per anomaly kind.
    pub examples: Vec<String>,
}

impl Report {
    /// Total anomalies of every kind.
    pub fn anomalies(&self) -> u64 {
        self.seq_conflicts
            + self.duplicates
            + self.order_violations
            + self.lost
            + self.phantoms
            + self.read_seq_above_max
            + self.read_seq_behind
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 20 {
            self.examples.push(text);
        }
    }
}

/// Counts first-occurrence order violations of one log: per conversation,
/// the seqs in the order they first appear must increase.
fn log_order_violations(log: &[Vec<Seen>], what: &str, report: &mut Report) {
    for partition in log {
        let mut seen: BTreeMap<&str, (BTreeSet<i64>, i64)> = BTreeMap::new();
        for s in partition.iter().filter(|s| s.seq > 0) {
            let (set, last) = seen.entry(&s.conversation_id).or_default();
            if set.insert(s.seq) {
                if s.seq < *last {
                    report.order_violations += 1;
                    report.example(format!(
                        "{what} order: {} seq {} after {}",
                        s.conversation_id, s.seq, last
                    ));
                }
                *last = (*last).max(s.seq);
            }
        }
    }
}

/// Checks `h` and reports every anomaly found.
pub fn check(h: &History) -> Report {
    let mut r = Report::default();

    // Inputs: distinct messages, first-appearance order per conversation.
    let mut expected: BTreeMap<MsgId, bool> = BTreeMap::new();
    let mut order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in &h.inputs {
        let id = (i.conversation_id.clone(), i.client_msg_id.clone());
        if expected.insert(id, i.stored).is_none() && i.stored {
            order
                .entry(&i.conversation_id)
                .or_default()
                .push(&i.client_msg_id);
        }
    }
    r.units = expected.len() as u64;
    r.stored = expected.values().filter(|s| **s).count() as u64;

    // Every observation of a stored message, from every source.
    let mut seqs_of: BTreeMap<MsgId, BTreeSet<i64>> = BTreeMap::new();
    let mut at_seq: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    let mut pushed: BTreeSet<MsgId> = BTreeSet::new();
    let mut persisted: BTreeSet<MsgId> = BTreeSet::new();
    let mut cached: BTreeSet<MsgId> = BTreeSet::new();
    let mut others: BTreeSet<MsgId> = BTreeSet::new();
    let open = h.open;
    let mut observe = |s: &Seen, r: &mut Report| {
        let id = (s.conversation_id.clone(), s.client_msg_id.clone());
        match expected.get(&id) {
            None if open => {
                if s.seq > 0 {
                    r.others += u64::from(others.insert(id.clone()));
                    seqs_of.entry(id).or_default().insert(s.seq);
                    at_seq
                        .entry((s.conversation_id.clone(), s.seq))
                        .or_default()
                        .insert(s.client_msg_id.clone());
                }
            }
            None => {
                r.phantoms += 1;
                r.example(format!(
                    "phantom: {} {} at seq {}",
                    s.conversation_id, s.client_msg_id, s.seq
                ));
            }
            Some(true) => {
                seqs_of.entry(id).or_default().insert(s.seq);
                at_seq
                    .entry((s.conversation_id.clone(), s.seq))
                    .or_default()
                    .insert(s.client_msg_id.clone());
            }
            Some(false) => {}
        }
    };
    for s in h.pushes.iter().flatten() {
        observe(s, &mut r);
        pushed.insert((s.conversation_id.clone(), s.client_msg_id.clone()));
    }
    for s in h.persistence_records.iter().flatten() {
        observe(s, &mut r);
    }
    for s in &h.persisted {
        observe(s, &mut r);
        persisted.insert((s.conversation_id.clone(), s.client_msg_id.clone()));
    }
    for s in &h.cached {
        observe(s, &mut r);
        cached.insert((s.conversation_id.clone(), s.client_msg_id.clone()));
    }

    for ((conv, seq), ids) in &at_seq {
        if ids.len() > 1 {
            r.seq_conflicts += 1;
            r.example(format!("seq conflict: {conv} seq {seq} holds {ids:?}"));
        }
    }
    for ((conv, id), seqs) in &seqs_of {
        if seqs.len() > 1 || seqs.iter().any(|s| *s < 1) {
            r.duplicates += 1;
            r.example(format!("duplicate: {conv} {id} at seqs {seqs:?}"));
        }
    }

    // Seqs increase in input order within each conversation.
    for (conv, ids) in &order {
        let mut last = 0i64;
        for id in ids {
            let key = (conv.to_string(), id.to_string());
            if let Some(seq) = seqs_of.get(&key).and_then(|s| s.iter().next()) {
                if *seq <= last {
                    r.order_violations += 1;
                    r.example(format!(
                        "input order: {conv} {id} got seq {seq} after {last}"
                    ));
                }
                last = last.max(*seq);
            }
        }
    }
    log_order_violations(&h.pushes, "push", &mut r);
    log_order_violations(&h.persistence_records, "persistence", &mut r);

    // Effects of every input message.
    let mut message_pushed: BTreeMap<&str, bool> = BTreeMap::new();
    for (id, stored) in &expected {
        let p = pushed.contains(id);
        r.units_pushed += u64::from(p);
        *message_pushed.entry(&id.1).or_insert(true) &= p;
        let mut missing = Vec::new();
        if !p {
            missing.push("push");
        }
        if *stored {
            let in_mongo = persisted.contains(id);
            let in_cache = cached.contains(id);
            r.persisted += u64::from(in_mongo);
            r.cached += u64::from(in_cache);
            if !in_mongo {
                missing.push("mongo");
            }
            if !in_cache && !h.cache_partial {
                missing.push("cache");
            }
        }
        if !missing.is_empty() {
            r.lost += 1;
            r.example(format!("lost: {} {} missing {missing:?}", id.0, id.1));
        }
    }

    r.messages = message_pushed.len() as u64;
    r.pushed = message_pushed.values().filter(|p| **p).count() as u64;

    for (user, conv, read, source) in &h.read_seqs {
        let max = h.max_seqs.get(conv).copied().unwrap_or(0);
        if *read > max {
            r.read_seq_above_max += 1;
            r.example(format!(
                "read seq ({source}): {user} in {conv} at {read} > max {max}"
            ));
        }
    }
    read_seq_floors(h, &seqs_of, &mut r);
    let mut last: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (user, conv, value) in &h.read_seq_writes {
        let prev = last.entry((user, conv)).or_insert(*value);
        if *value < *prev {
            r.read_seq_behind += 1;
            r.example(format!(
                "read seq (mongo): {user} in {conv} written back from {prev} to {value}"
            ));
        }
        *prev = (*prev).max(*value);
    }
    r
}

/// Every read seq must be at least what the inputs asked for: in Mongo the
/// senders' own stored chat messages and the read receipts, in Redis the
/// senders' messages (unless the cache may have lost entries). A message
/// seen at several seqs asks for the lowest.
fn read_seq_floors(h: &History, seqs_of: &BTreeMap<MsgId, BTreeSet<i64>>, r: &mut Report) {
    type Floors<'a> = BTreeMap<(&'a str, &'a str), i64>;
    let mut mongo: Floors<'_> = BTreeMap::new();
    let mut redis: Floors<'_> = BTreeMap::new();
    fn raise<'a>(floors: &mut Floors<'a>, key: (&'a str, &'a str), seq: i64) {
        let f = floors.entry(key).or_insert(seq);
        *f = (*f).max(seq);
    }
    for i in &h.inputs {
        if let Some(user) = &i.raises_read_of {
            let id = (i.conversation_id.clone(), i.client_msg_id.clone());
            if let Some(seq) = seqs_of.get(&id).and_then(|s| s.first()) {
                let key = (user.as_str(), i.conversation_id.as_str());
                raise(&mut mongo, key, *seq);
                raise(&mut redis, key, *seq);
            }
        }
        if let Some((user, conv, seq)) = &i.receipt {
            raise(&mut mongo, (user.as_str(), conv.as_str()), *seq);
        }
    }
    let mut actual: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for (user, conv, read, source) in &h.read_seqs {
        let a = actual.entry((source, user, conv)).or_insert(*read);
        *a = (*a).max(*read);
    }
    let sources: &[(&str, &Floors<'_>)] = if h.cache_partial {
        &[("mongo", &mongo)]
    } else {
        &[("mongo", &mongo), ("redis", &redis)]
    };
    for (source, floors) in sources {
        for ((user, conv), floor) in floors.iter() {
            let read = actual.get(&(*source, *user, *conv)).copied().unwrap_or(0);
            if read < *floor {
                r.read_seq_behind += 1;
                r.example(format!(
                    "read seq ({source}): {user} in {conv} at {read} < {floor} asked for"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
