//! Which input offsets may be committed.
//!
//! A record is *done* when every unit of work it produced has been
//! acknowledged. Units finish in any order (conversations progress
//! independently), but a partition's commit point only moves over a
//! contiguous run of done records: committing offset `o` promises that every
//! record below `o` is done. This is the opposite of OpenIM's "mark the last
//! record of the batch", which commits past failures and across partitions.

use std::collections::{BTreeMap, VecDeque};

/// Progress of one partition.
#[derive(Debug, Default)]
struct Partition {
    /// Records not yet committable, in offset order, with the number of
    /// their units still outstanding.
    pending: VecDeque<(i64, u32)>,
    /// The offset to resume from if we committed now.
    next: Option<i64>,
    /// The last offset we reported for commit.
    reported: Option<i64>,
}

impl Partition {
    /// Where `offset` sits in `pending`. Offsets are increasing and, on a
    /// topic without gaps, consecutive, so the distance from the front is
    /// tried first; a gap (compaction, transaction markers) falls back to a
    /// binary search.
    fn index_of(&self, offset: i64) -> Option<usize> {
        let front = self.pending.front()?.0;
        let guess = usize::try_from(offset.checked_sub(front)?).ok()?;
        if self.pending.get(guess).is_some_and(|(o, _)| *o == offset) {
            return Some(guess);
        }
        self.pending.binary_search_by_key(&offset, |(o, _)| *o).ok()
    }

    fn advance(&mut self) {
        while let Some(&(off, 0)) = self.pending.front() {
            self.pending.pop_front();
            self.next = Some(off + 1);
        }
    }
}

/// Tracks outstanding units per record for every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: BTreeMap<i32, Partition>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a record that will complete after `units` acknowledgements
    /// (0 means it is done already). Offsets of a partition must be
    /// registered in increasing order; a repeat or older offset (a
    /// redelivery already registered) is ignored and reported as `false`.
    pub fn track(&mut self, partition: i32, offset: i64, units: u32) -> bool {
        let p = self.parts.entry(partition).or_default();
        let newest = p.pending.back().map(|(o, _)| *o).or(p.next.map(|n| n - 1));
        if newest.is_some_and(|n| offset <= n) {
            return false;
        }
        p.pending.push_back((offset, units));
        p.advance();
        true
    }

    /// One unit of `(partition, offset)` is acknowledged. Unknown records
    /// (for example of a revoked partition) are ignored.
    pub fn done(&mut self, partition: i32, offset: i64) {
        let Some(p) = self.parts.get_mut(&partition) else {
            return;
        };
        let Some(i) = p.index_of(offset) else {
            return;
        };
        let left = &mut p.pending[i].1;
        *left = left.saturating_sub(1);
        if i == 0 {
            p.advance();
        }
    }

    /// The `(partition, next_offset)` pairs that moved since the last call.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (part, p) in &mut self.parts {
            if let Some(n) = p.next
                && p.reported != Some(n)
            {
                p.reported = Some(n);
                out.push((*part, n));
            }
        }
        out
    }

    /// Every partition's commit point, whether or not it moved.
    pub fn commit_points(&self) -> Vec<(i32, i64)> {
        self.parts
            .iter()
            .filter_map(|(part, p)| p.next.map(|n| (*part, n)))
            .collect()
    }

    /// Forgets `partitions` (revoked): their records will be someone else's.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.parts.remove(p);
        }
    }

    /// Records registered and not yet done, over all partitions.
    pub fn outstanding(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.pending.iter().filter(|(_, n)| *n > 0).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commit_waits_for_the_oldest_record() {
        let mut t = OffsetTracker::new();
        t.track(0, 10, 1);
        t.track(0, 11, 2);
        t.track(0, 12, 1);
        t.done(0, 12);
        t.done(0, 11);
        assert_eq!(t.take_commits(), vec![]);
        t.done(0, 10);
        assert_eq!(t.take_commits(), vec![(0, 11)]);
        t.done(0, 11);
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        assert_eq!(
            t.take_commits(),
            vec![],
            "unchanged points are not repeated"
        );
        assert_eq!(t.commit_points(), vec![(0, 13)]);
    }

    #[test]
    fn zero_unit_records_are_done_at_once_and_partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.track(0, 0, 1);
        t.track(1, 5, 0);
        assert_eq!(t.take_commits(), vec![(1, 6)]);
        t.done(0, 0);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
    }

    #[test]
    fn redelivered_offsets_and_revoked_partitions_are_ignored() {
        let mut t = OffsetTracker::new();
        assert!(t.track(0, 1, 1));
        assert!(!t.track(0, 1, 1));
        t.revoke(&[0]);
        t.done(0, 1);
        assert_eq!(t.take_commits(), vec![]);
        assert_eq!(t.outstanding(), 0);
    }

    proptest! {
        /// Whatever order units finish in, the commit point is always one
        /// past the longest done prefix, whether offsets are consecutive or
        /// have gaps (as after compaction).
        #[test]
        fn commit_point_is_the_done_prefix(
            records in proptest::collection::vec((0u32..3, 1i64..4), 1..40),
            gaps in any::<bool>(),
            order in any::<u64>(),
        ) {
            let mut t = OffsetTracker::new();
            let mut tokens = Vec::new();
            let mut offsets = Vec::new();
            let mut off = 0i64;
            for (i, (n, stride)) in records.iter().enumerate() {
                off += if gaps { *stride } else { 1 };
                offsets.push(off);
                t.track(0, off, *n);
                for _ in 0..*n { tokens.push(i); }
            }
            // A deterministic shuffle of completion order.
            let mut x = order | 1;
            for i in (1..tokens.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                tokens.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut left: Vec<u32> = records.iter().map(|(n, _)| *n).collect();
            for i in tokens {
                t.done(0, offsets[i]);
                left[i] -= 1;
                let prefix = left.iter().take_while(|n| **n == 0).count();
                let expect = (prefix > 0).then(|| offsets[prefix - 1] + 1);
                prop_assert_eq!(t.commit_points().first().map(|p| p.1), expect);
            }
        }
    }
}
