//! Where a seq lives in Mongo: documents ("buckets") of 100 message slots.
//!
//! Seqs 1..=100 are in document `<conv>:0`, 101..=200 in `<conv>:1`, and so
//! on; the slot is `(seq - 1) % 100` (reference §8.1). Seqs start at 1; a
//! seq below 1 has no place and callers must reject it before asking.

/// Message slots in one `msg` document.
pub const SLOTS_PER_DOC: i64 = 100;

/// The bucket number of `seq` (which must be ≥ 1).
pub fn doc_index(seq: i64) -> i64 {
    debug_assert!(seq >= 1, "seq {seq} has no bucket");
    (seq - 1) / SLOTS_PER_DOC
}

/// The slot of `seq` inside its bucket.
pub fn slot(seq: i64) -> usize {
    debug_assert!(seq >= 1, "seq {seq} has no slot");
    // (seq - 1) % 100 is in 0..100, so the cast cannot truncate.
    ((seq - 1) % SLOTS_PER_DOC) as usize
}

/// The `doc_id` of the bucket holding `seq` of `conversation_id`.
pub fn doc_id(conversation_id: &str, seq: i64) -> String {
    format!("{conversation_id}:{}", doc_index(seq))
}

/// Splits a conversation ID and bucket number back out of a `doc_id`.
/// The conversation ID may itself contain `:`; the bucket is after the last.
pub fn parse_doc_id(doc_id: &str) -> Option<(&str, i64)> {
    let (conv, idx) = doc_id.rsplit_once(':')?;
    let idx: i64 = idx.parse().ok()?;
    (idx >= 0).then_some((conv, idx))
}

/// The seq stored at `slot` of bucket `index`.
pub fn seq_at(index: i64, slot: usize) -> i64 {
    index * SLOTS_PER_DOC + slot as i64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_boundaries() {
        assert_eq!(doc_id("sg_g42", 1), "sg_g42:0");
        assert_eq!(slot(1), 0);
        assert_eq!(doc_id("sg_g42", 100), "sg_g42:0");
        assert_eq!(slot(100), 99);
        assert_eq!(doc_id("sg_g42", 101), "sg_g42:1");
        assert_eq!(slot(101), 0);
        assert_eq!(doc_id("si_a_b", 12345), "si_a_b:123");
        assert_eq!(slot(12345), 44);
    }

    #[test]
    fn doc_ids_parse_back_and_slots_map_to_seqs() {
        for seq in [1, 2, 99, 100, 101, 250, 10_000] {
            let id = doc_id("x:y", seq);
            let (conv, idx) = parse_doc_id(&id).unwrap();
            assert_eq!(conv, "x:y");
            assert_eq!(seq_at(idx, slot(seq)), seq);
        }
        assert!(parse_doc_id("nocolon").is_none());
        assert!(parse_doc_id("a:-1").is_none());
    }
}
