//! The document store adapter (`backends::mongo`) on a real MongoDB-wire
//! server: OpenIM's documents, field by field, and the write semantics the
//! pipeline relies on (idempotent slot writes, atomic reservations,
//! max-only read seqs).
//!
//! Needs `MONGODB_URI` (see `tests/support`); each test uses a database of
//! its own.

mod support;

use std::sync::Arc;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use msgtransfer::backends::mongo::MongoStore;
use msgtransfer::ports::DocStore;
use msgtransfer::ports::store::SlotMsg;
use msgtransfer::proto::MsgData;

fn message(seq: i64, text: &str) -> std::sync::Arc<SlotMsg> {
    std::sync::Arc::new(SlotMsg::encode(MsgData {
        send_id: "alice".into(),
        recv_id: "bob".into(),
        client_msg_id: format!("c{seq}"),
        server_msg_id: format!("s{seq}"),
        sender_platform_id: 2,
        session_type: 1,
        msg_from: 100,
        content_type: 101,
        content: text.as_bytes().to_vec(),
        seq,
        send_time: 1_764_000_000_000 + seq,
        create_time: 1_764_000_000_000 + seq,
        status: 2,
        ..MsgData::default()
    }))
}

async fn bucket(db: &mongodb::Database, doc_id: &str) -> Document {
    db.collection::<Document>("msg")
        .find_one(doc! {"doc_id": doc_id})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no bucket {doc_id}"))
}

fn slot(b: &Document, i: usize) -> &Document {
    b.get_array("msgs").unwrap()[i].as_document().unwrap()
}

#[tokio::test]
async fn a_new_bucket_has_openims_hundred_slots_and_field_names() {
    let db = support::mongo_db("bkt").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    store
        .write_bucket(
            "si_alice_bob:0".into(),
            vec![(0, message(1, "hi")), (4, message(5, "yo"))],
        )
        .await
        .unwrap();
    let b = bucket(&db, "si_alice_bob:0").await;
    let msgs = b.get_array("msgs").unwrap();
    assert_eq!(msgs.len(), 100);
    let first = slot(&b, 0);
    let m = first.get_document("msg").unwrap();
    assert_eq!(m.get_str("client_msg_id").unwrap(), "c1");
    assert_eq!(m.get_str("send_id").unwrap(), "alice");
    assert_eq!(m.get_str("content").unwrap(), "hi");
    assert_eq!(m.get_i64("seq").unwrap(), 1);
    assert_eq!(m.get_i32("session_type").unwrap(), 1);
    assert_eq!(m.get_i32("content_type").unwrap(), 101);
    assert_eq!(m.get_i64("send_time").unwrap(), 1_764_000_000_001);
    assert_eq!(m.get("options"), Some(&Bson::Null));
    assert_eq!(m.get("offline_push"), Some(&Bson::Null));
    assert!(!m.get_bool("is_read").unwrap());
    assert_eq!(first.get("revoke"), Some(&Bson::Null));
    assert_eq!(first.get_array("del_list").unwrap().len(), 0);
    assert!(!first.get_bool("is_read").unwrap());
    assert_eq!(
        slot(&b, 4)
            .get_document("msg")
            .unwrap()
            .get_i64("seq")
            .unwrap(),
        5
    );
    // Every other slot is empty in OpenIM's shape.
    let empty = slot(&b, 1);
    assert_eq!(empty.get("msg"), Some(&Bson::Null));
    assert_eq!(empty.get_array("del_list").unwrap().len(), 0);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn rewriting_a_slot_keeps_what_others_wrote_beside_the_message() {
    let db = support::mongo_db("rw").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    store
        .write_bucket("sg_g1:3".into(), vec![(7, message(308, "first"))])
        .await
        .unwrap();
    // Someone (the API) deletes the message for a user and marks it read.
    db.collection::<Document>("msg")
        .update_one(
            doc! {"doc_id": "sg_g1:3"},
            doc! {"$set": {"msgs.7.del_list": ["carol"], "msgs.7.is_read": true}},
        )
        .await
        .unwrap();
    // A redelivery writes the slot again, and a new slot beside it.
    store
        .write_bucket(
            "sg_g1:3".into(),
            vec![(7, message(308, "again")), (8, message(309, "next"))],
        )
        .await
        .unwrap();
    let b = bucket(&db, "sg_g1:3").await;
    let s7 = slot(&b, 7);
    assert_eq!(
        s7.get_document("msg").unwrap().get_str("content").unwrap(),
        "again"
    );
    assert_eq!(
        s7.get_array("del_list").unwrap(),
        &vec![Bson::String("carol".into())]
    );
    assert!(s7.get_bool("is_read").unwrap());
    assert_eq!(
        slot(&b, 8)
            .get_document("msg")
            .unwrap()
            .get_i64("seq")
            .unwrap(),
        309
    );
    let n = db
        .collection::<Document>("msg")
        .count_documents(doc! {"doc_id": "sg_g1:3"})
        .await
        .unwrap();
    assert_eq!(n, 1, "one document per bucket");
    db.drop().await.unwrap();
}

/// Two writers create the same bucket at once (two instances during a
/// rebalance): one insert wins, the other hits the unique index and falls
/// back to updating its slots. Both writes land, in one document.
///
/// Two writers, not more: FerretDB v1 (the test server) applies concurrent
/// updates of one document as read-modify-write without isolation, so a
/// third writer's update could erase a second's (upstream FerretDB issue
/// #3040); real MongoDB updates one document atomically. The pipeline
/// never has two batches of one conversation in flight in one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_writes_of_one_bucket_all_land() {
    let db = support::mongo_db("race").await;
    let store = Arc::new(MongoStore::new(&db));
    store.ensure_indexes().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..2_usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let slots = (0..5).map(|k| {
                let i = w * 5 + k;
                (i, message(i as i64 + 1, "x"))
            });
            store
                .write_bucket("sg_race:0".into(), slots.collect())
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let b = bucket(&db, "sg_race:0").await;
    for i in 0..10 {
        let m = slot(&b, i)
            .get_document("msg")
            .unwrap_or_else(|_| panic!("slot {i} lost: {:?}", slot(&b, i)));
        assert_eq!(m.get_i64("seq").unwrap(), i as i64 + 1);
    }
    assert_eq!(slot(&b, 10).get("msg"), Some(&Bson::Null));
    let n = db
        .collection::<Document>("msg")
        .count_documents(doc! {"doc_id": "sg_race:0"})
        .await
        .unwrap();
    assert_eq!(n, 1, "one document per bucket");
    db.drop().await.unwrap();
}

#[tokio::test]
async fn seq_reservations_and_read_seqs_follow_openim() {
    let db = support::mongo_db("seq").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    assert_eq!(store.reserve_seqs("sg_x", 102).await.unwrap(), 0);
    assert_eq!(store.reserve_seqs("sg_x", 150).await.unwrap(), 102);
    assert_eq!(store.reserve_seqs("si_a_b", 52).await.unwrap(), 0);
    let seqs: Vec<Document> = db
        .collection::<Document>("seq")
        .find(doc! {})
        .sort(doc! {"conversation_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[0].get_str("conversation_id").unwrap(), "sg_x");
    assert_eq!(seqs[0].get_i64("max_seq").unwrap(), 252);
    assert_eq!(seqs[1].get_i64("max_seq").unwrap(), 52);

    store.raise_read_seq("alice", "sg_x", 40).await.unwrap();
    store.raise_read_seq("alice", "sg_x", 12).await.unwrap(); // never backwards
    store.raise_read_seq("bob", "sg_x", 7).await.unwrap();
    let read = |user: &'static str| {
        let db = db.clone();
        async move {
            db.collection::<Document>("seq_user")
                .find_one(doc! {"user_id": user, "conversation_id": "sg_x"})
                .await
                .unwrap()
                .unwrap()
                .get_i64("read_seq")
                .unwrap()
        }
    };
    assert_eq!(read("alice").await, 40);
    assert_eq!(read("bob").await, 7);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn unique_indexes_refuse_a_second_bucket_or_seq_document() {
    let db = support::mongo_db("idx").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    store.ensure_indexes().await.unwrap(); // idempotent
    store
        .write_bucket("si_a_b:0".into(), vec![(0, message(1, "a"))])
        .await
        .unwrap();
    let dup = db
        .collection::<Document>("msg")
        .insert_one(doc! {"doc_id": "si_a_b:0", "msgs": []})
        .await;
    assert!(dup.is_err(), "a second si_a_b:0 was accepted");
    store.reserve_seqs("si_a_b", 51).await.unwrap();
    let dup = db
        .collection::<Document>("seq")
        .insert_one(doc! {"conversation_id": "si_a_b", "max_seq": 1_i64})
        .await;
    assert!(dup.is_err(), "a second seq document was accepted");
    db.drop().await.unwrap();
}

/// Documents OpenIM created carry an ObjectId `_id`; ours carry their
/// natural key. Writes find OpenIM's by natural key and never create a
/// second document beside them.
#[tokio::test]
async fn documents_openim_created_are_updated_in_place() {
    let db = support::mongo_db("legacy").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    let slots: Vec<Bson> = (0..100)
        .map(|_| {
            Bson::Document(
                doc! {"msg": Bson::Null, "revoke": Bson::Null, "del_list": [], "is_read": false},
            )
        })
        .collect();
    let msg = db.collection::<Document>("msg");
    msg.insert_one(doc! {"doc_id": "si_a_b:0", "msgs": slots})
        .await
        .unwrap();
    db.collection::<Document>("seq")
        .insert_one(doc! {"conversation_id": "si_a_b", "max_seq": 50_i64, "min_seq": 0_i64})
        .await
        .unwrap();
    db.collection::<Document>("seq_user")
        .insert_one(doc! {"user_id": "a", "conversation_id": "si_a_b", "read_seq": 9_i64, "min_seq": 0_i64, "max_seq": 0_i64})
        .await
        .unwrap();

    store
        .write_bucket("si_a_b:0".into(), vec![(3, message(4, "x"))])
        .await
        .unwrap();
    assert_eq!(store.reserve_seqs("si_a_b", 50).await.unwrap(), 50);
    store.raise_read_seq("a", "si_a_b", 4).await.unwrap();
    store.raise_read_seq("a", "si_a_b", 12).await.unwrap();

    for coll in ["msg", "seq", "seq_user"] {
        let n = db
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(n, 1, "{coll}: a second document beside OpenIM's");
    }
    let b = bucket(&db, "si_a_b:0").await;
    assert!(matches!(b.get("_id"), Some(Bson::ObjectId(_))));
    let m = slot(&b, 3).get_document("msg").unwrap();
    assert_eq!(m.get_i64("seq").unwrap(), 4);
    let seq = db
        .collection::<Document>("seq")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq.get_i64("max_seq").unwrap(), 100);
    let read = db
        .collection::<Document>("seq_user")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.get_i64("read_seq").unwrap(), 12);
    db.drop().await.unwrap();
}

/// Our own documents are keyed by their natural key, so servers that only
/// index `_id` lookups (FerretDB v1) find them without a scan.
#[tokio::test]
async fn new_documents_are_keyed_by_their_natural_key() {
    let db = support::mongo_db("ids").await;
    let store = MongoStore::new(&db);
    store.ensure_indexes().await.unwrap();
    store
        .write_bucket("sg_g1:2".into(), vec![(0, message(201, "x"))])
        .await
        .unwrap();
    store.reserve_seqs("sg_g1", 100).await.unwrap();
    store.raise_read_seq("u:1", "sg_g1", 201).await.unwrap();
    let id = |coll: &'static str| {
        let db = db.clone();
        async move {
            db.collection::<Document>(coll)
                .find_one(doc! {})
                .await
                .unwrap()
                .unwrap()
                .get_str("_id")
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(id("msg").await, "sg_g1:2");
    assert_eq!(id("seq").await, "sg_g1");
    assert_eq!(id("seq_user").await, "5:sg_g1:u:1");
    let su = db
        .collection::<Document>("seq_user")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(su.get_str("user_id").unwrap(), "u:1");
    assert_eq!(su.get_str("conversation_id").unwrap(), "sg_g1");
    db.drop().await.unwrap();
}

/// The dedup ledger on a real server: entries recorded once, a redelivery's
/// identical entries accepted, a different seq for a recorded message
/// reported (and not written), lookups across windows, and windows older
/// than the previous one dropped whole.
#[tokio::test]
async fn the_dedup_ledger_records_once_reports_conflicts_and_drops_old_windows() {
    let db = support::mongo_db("ledger").await;
    let window = 60_000;
    let store = MongoStore::new(&db).with_ledger_window(window);
    let t0 = 1_764_000_000_000_i64;
    let entries = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
        pairs.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    };
    let none = store
        .record_seqs("si_a_b", entries(&[("m1", 1), ("m2", 2)]), t0)
        .await
        .unwrap();
    assert!(none.is_empty());
    // A redelivery (same seqs) plus one new message: fine, and m3 recorded.
    let none = store
        .record_seqs(
            "si_a_b",
            entries(&[("m1", 1), ("m2", 2), ("m3", 3)]),
            t0 + 1,
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // Another seq for m2: reported with the recorded one, which stays.
    let conflicts = store
        .record_seqs("si_a_b", entries(&[("m2", 9), ("m4", 4)]), t0 + 2)
        .await
        .unwrap();
    assert_eq!(conflicts, entries(&[("m2", 2)]));
    let ids = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut found = store
        .recorded_seqs("si_a_b", ids(&["m1", "m2", "m4", "m5"]))
        .await
        .unwrap();
    found.sort();
    assert_eq!(found, entries(&[("m1", 1), ("m2", 2), ("m4", 4)]));
    assert!(
        store
            .recorded_seqs("sg_other", ids(&["m1"]))
            .await
            .unwrap()
            .is_empty(),
        "entries belong to their conversation"
    );
    // The next window: m1 still found (previous window), new entries go to
    // the new window's collection.
    store
        .record_seqs("si_a_b", entries(&[("m6", 6)]), t0 + window)
        .await
        .unwrap();
    let found = store
        .recorded_seqs("si_a_b", ids(&["m1", "m6"]))
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    // Two windows on, the first window's collection is dropped.
    store
        .record_seqs("si_a_b", entries(&[("m7", 7)]), t0 + 2 * window)
        .await
        .unwrap();
    let found = store
        .recorded_seqs("si_a_b", ids(&["m1", "m6", "m7"]))
        .await
        .unwrap();
    let mut found: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
    found.sort();
    assert_eq!(found, ids(&["m6", "m7"]));
    let mut names = db.list_collection_names().await.unwrap();
    names.retain(|n| n.starts_with("msgtransfer_dedup_"));
    assert_eq!(names.len(), 2, "{names:?}");
    db.drop().await.unwrap();
}

/// Many raises of one read seq at once (a receipt batch and the sender's
/// own messages race like this): the highest one must stand. FerretDB v1
/// applies `$max` as read-modify-write, so without the read-back in
/// `raise_read_seq` a lower raise can overwrite a higher one (the bench's
/// audit caught one such read seq behind).
#[tokio::test]
async fn concurrent_raises_of_one_read_seq_leave_the_highest() {
    let db = support::mongo_db("raises").await;
    let store = Arc::new(MongoStore::new(&db));
    store.ensure_indexes().await.unwrap();
    for round in 0..5_i64 {
        let user = format!("u{round}");
        let raises = (1..=40_i64).map(|seq| {
            let store = store.clone();
            let user = user.clone();
            // Spread the seqs so that lower ones often land last.
            let seq = (seq * 17) % 41;
            tokio::spawn(async move { store.raise_read_seq(&user, "si_r", seq).await })
        });
        for r in futures::future::join_all(raises).await {
            r.unwrap().unwrap();
        }
        let doc = db
            .collection::<Document>("seq_user")
            .find_one(doc! {"user_id": &user, "conversation_id": "si_r"})
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            doc.get_i64("read_seq").unwrap(),
            40,
            "round {round}: {doc:?}"
        );
    }
    db.drop().await.unwrap();
}
