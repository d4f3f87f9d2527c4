//! The checker must catch each anomaly kind, and only that kind.

use super::*;

fn input(conv: &str, id: &str, stored: bool) -> Input {
    Input::plain(conv, id, stored)
}

fn seen(conv: &str, id: &str, seq: i64) -> Seen {
    Seen {
        conversation_id: conv.into(),
        client_msg_id: id.into(),
        seq,
    }
}

/// Two stored messages and one pushed-only message, handled perfectly.
fn clean() -> History {
    let msgs = [seen("c", "a", 1), seen("c", "b", 2)];
    History {
        inputs: vec![
            Input {
                raises_read_of: Some("u".into()),
                ..input("c", "a", true)
            },
            Input {
                receipt: Some(("v".into(), "c".into(), 1)),
                ..input("c", "t", false)
            },
            Input {
                raises_read_of: Some("u".into()),
                ..input("c", "b", true)
            },
        ],
        pushes: vec![vec![msgs[0].clone(), seen("c", "t", 0), msgs[1].clone()]],
        persistence_records: vec![msgs.to_vec()],
        persisted: msgs.to_vec(),
        cached: msgs.to_vec(),
        read_seqs: vec![
            ("u".into(), "c".into(), 2, "mongo"),
            ("u".into(), "c".into(), 2, "redis"),
            ("v".into(), "c".into(), 1, "mongo"),
        ],
        max_seqs: [("c".to_string(), 2)].into_iter().collect(),
        read_seq_writes: Vec::new(),
        open: false,
        cache_partial: false,
    }
}

#[test]
fn a_clean_history_has_no_anomalies() {
    let r = check(&clean());
    assert_eq!(r.anomalies(), 0, "{:?}", r.examples);
    assert_eq!(
        (r.messages, r.stored, r.persisted, r.pushed, r.cached),
        (3, 2, 2, 3, 2)
    );
}

#[test]
fn redeliveries_with_the_same_seq_are_fine() {
    let mut h = clean();
    h.inputs.push(input("c", "a", true));
    h.pushes[0].push(seen("c", "a", 1));
    h.pushes[0].push(seen("c", "b", 2));
    h.persistence_records[0].push(seen("c", "a", 1));
    assert_eq!(check(&h).anomalies(), 0);
}

#[test]
fn catches_two_messages_at_one_seq() {
    let mut h = clean();
    h.cached[1] = seen("c", "b", 1);
    let r = check(&h);
    assert!(r.seq_conflicts >= 1);
    assert!(r.duplicates >= 1, "b is also seen at two seqs");
}

#[test]
fn catches_a_message_at_two_seqs() {
    let mut h = clean();
    h.pushes[0].push(seen("c", "b", 3));
    let r = check(&h);
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.seq_conflicts, 0);
}

#[test]
fn catches_seqs_out_of_input_order() {
    let mut h = clean();
    for s in [
        &mut h.persisted,
        &mut h.cached,
        &mut h.persistence_records[0],
    ] {
        s[0].seq = 2;
        s[1].seq = 1;
    }
    h.pushes[0][0].seq = 2;
    h.pushes[0][2].seq = 1;
    let r = check(&h);
    assert_eq!(r.seq_conflicts, 0);
    assert!(r.order_violations >= 1, "{r:?}");
}

#[test]
fn catches_push_order_going_backwards() {
    let mut h = clean();
    h.pushes[0].swap(0, 2);
    let r = check(&h);
    assert_eq!(r.order_violations, 1, "{:?}", r.examples);
}

#[test]
fn catches_persistence_order_going_backwards() {
    let mut h = clean();
    h.persistence_records[0].swap(0, 1);
    assert_eq!(check(&h).order_violations, 1);
}

#[test]
fn catches_a_message_never_persisted() {
    let mut h = clean();
    h.persisted.pop();
    let r = check(&h);
    assert_eq!(r.lost, 1);
    assert_eq!(r.persisted, 1);
}

#[test]
fn catches_a_message_never_cached() {
    let mut h = clean();
    h.cached.remove(0);
    assert_eq!(check(&h).lost, 1);
}

#[test]
fn catches_a_read_seq_written_back_even_if_raised_again_later() {
    let mut h = clean();
    for v in [1, 2, 1, 2] {
        h.read_seq_writes.push(("u".into(), "c".into(), v));
    }
    h.read_seq_writes.push(("v".into(), "c".into(), 1));
    let r = check(&h);
    assert_eq!((r.read_seq_behind, r.anomalies()), (1, 1), "{r:?}");
}

#[test]
fn a_partial_cache_excuses_missing_entries_but_not_wrong_ones() {
    let mut h = clean();
    h.cached.remove(0);
    h.cache_partial = true;
    let r = check(&h);
    assert_eq!(r.anomalies(), 0, "{:?}", r.examples);
    assert_eq!(r.cached, 1);
    // An entry that is there must still agree with Mongo.
    h.cached = vec![seen("c", "a", 2)];
    let r = check(&h);
    assert!(r.seq_conflicts > 0 || r.duplicates > 0, "{r:?}");
}

#[test]
fn catches_a_message_never_pushed() {
    let mut h = clean();
    h.pushes[0].remove(1);
    let r = check(&h);
    assert_eq!(r.lost, 1);
    assert_eq!(r.pushed, 2);
    assert_eq!(r.units_pushed, 2);
}

#[test]
fn a_message_in_two_conversations_counts_once_and_needs_both_pushes() {
    let mut h = clean();
    h.inputs.push(input("n", "a", true));
    h.persisted.push(seen("n", "a", 1));
    h.cached.push(seen("n", "a", 1));
    let r = check(&h);
    assert_eq!((r.messages, r.units), (3, 4));
    assert_eq!(r.pushed, 2, "a's copy in n was never pushed");
    assert_eq!(r.lost, 1);
    h.pushes[0].push(seen("n", "a", 1));
    let r = check(&h);
    assert_eq!((r.pushed, r.lost), (3, 0));
}

#[test]
fn catches_a_phantom_message() {
    let mut h = clean();
    h.persisted.push(seen("c", "zzz", 9));
    assert_eq!(check(&h).phantoms, 1);
}

#[test]
fn catches_a_read_seq_above_max() {
    let mut h = clean();
    h.read_seqs.push(("v".into(), "c".into(), 3, "redis"));
    assert_eq!(check(&h).read_seq_above_max, 1);
}

#[test]
fn catches_a_read_seq_an_older_write_put_back() {
    let mut h = clean();
    // u sent seq 2; a read-then-write raise from an older value left 1.
    h.read_seqs[0].2 = 1;
    let r = check(&h);
    assert_eq!((r.read_seq_behind, r.anomalies()), (1, 1), "{r:?}");
}

#[test]
fn catches_a_read_receipt_that_never_reached_mongo() {
    let mut h = clean();
    h.read_seqs.retain(|(user, ..)| user != "v");
    let r = check(&h);
    assert_eq!((r.read_seq_behind, r.anomalies()), (1, 1), "{r:?}");
}

#[test]
fn a_partial_cache_excuses_a_lost_redis_read_seq_but_not_a_mongo_one() {
    let mut h = clean();
    h.read_seqs.retain(|(_, _, _, source)| *source != "redis");
    assert_eq!(
        check(&h).read_seq_behind,
        1,
        "Redis lost it, nobody said so"
    );
    h.cache_partial = true;
    assert_eq!(check(&h).anomalies(), 0);
    h.read_seqs[0].2 = 1;
    assert_eq!(check(&h).read_seq_behind, 1);
}

#[test]
fn an_open_history_counts_other_traffic_but_still_finds_its_conflicts() {
    let mut h = clean();
    h.open = true;
    // Someone else's message in another conversation: not a phantom.
    h.persisted.push(seen("d", "x", 1));
    let r = check(&h);
    assert_eq!((r.anomalies(), r.phantoms, r.others), (0, 0, 1), "{r:?}");
    // Someone else's message at a seq ours holds: a conflict.
    h.cached.push(seen("c", "y", 2));
    let r = check(&h);
    assert_eq!(r.seq_conflicts, 1, "{r:?}");
}

#[test]
fn with_no_inputs_the_outputs_alone_are_checked() {
    let h = History {
        open: true,
        persisted: vec![seen("c", "a", 1), seen("c", "b", 2), seen("c", "a", 3)],
        read_seqs: vec![("u".into(), "c".into(), 9, "mongo")],
        max_seqs: [("c".to_string(), 3)].into_iter().collect(),
        ..History::default()
    };
    let r = check(&h);
    assert_eq!(r.duplicates, 1, "a at seqs 1 and 3: {r:?}");
    assert_eq!(r.read_seq_above_max, 1, "{r:?}");
    assert_eq!((r.lost, r.phantoms, r.others), (0, 0, 2));
}
