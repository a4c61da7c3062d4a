//! Whole-entry replays (reference 3.7).
//!
//! When the retries of one copy are spent on a transient error, the processor does not hold
//! the entry: it appends a *replay entry* ([`crate::entry::Parsed::replay`]) to
//! `backbeat-replication` and finishes the original one. The replay entry is the entry narrowed
//! to the site (`storageClass` = the site, one backend, PENDING), with `replayCount` set, so
//! only that site's processor takes it (the others skip it as not theirs) and it waits in the
//! log, not in a concurrency slot, behind the site's other work. Counting as the original: the
//! first failure sets the count to `replay - 1`, each later failure decrements it, and a
//! failure at count 0 is FAILED. With `replay = 0` the first failure is FAILED.
//!
//! The replay entry is appended before the original's offset is committed: a crash in
//! between replays the original again, which at worst appends a second replay entry; the
//! status processor's guard (site still PENDING) keeps the outcome counted once.

/// The `replayCount` a replay entry of an entry carrying `current` gets, or `None` when the
/// replays are spent (the entry is FAILED). `total` is `[replication.retry] replay`.
pub fn next_replay(current: Option<u32>, total: u32) -> Option<u32> {
    let left = current.map_or(total, |n| n.min(total));
    left.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_counts_down_then_fails() {
        assert_eq!(next_replay(None, 0), None);
        assert_eq!(next_replay(None, 2), Some(1));
        assert_eq!(next_replay(Some(1), 2), Some(0));
        assert_eq!(next_replay(Some(0), 2), None);
        // The configuration shrank since the entry was queued.
        assert_eq!(next_replay(Some(7), 2), Some(1));
    }
}
