//! A last-writer-wins map, pure: every key holds the value of its latest write, ordered by
//! hybrid logical clock stamps; a delete is a write of no value (a tombstone), so it wins over
//! older writes wherever it arrives. Merging is commutative, associative and idempotent: nodes
//! that have received the same writes hold the same map, whatever the order or repetition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// When a write happened: an HLC time and the writer's clock id, totally ordered.
pub type Stamp = uhlc::Timestamp;

/// One key's latest write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry<V> {
    pub stamp: Stamp,
    /// `None` is a tombstone: the key was deleted.
    pub value: Option<V>,
}

/// The map. Keys are strings so that the store, the wire and the logs can show them.
#[derive(Clone, Debug, PartialEq)]
pub struct Lww<V> {
    entries: BTreeMap<String, Entry<V>>,
}

impl<V> Default for Lww<V> {
    fn default() -> Self {
        Lww { entries: BTreeMap::new() }
    }
}

impl<V: Clone> Lww<V> {
    /// Takes `entry` for `key` if it is newer than what the map holds; returns whether it did.
    /// Equal stamps keep the held entry (stamps are unique per writer, so equal stamps are the
    /// same write).
    pub fn merge(&mut self, key: &str, entry: Entry<V>) -> bool {
        match self.entries.get(key) {
            Some(held) if held.stamp >= entry.stamp => false,
            _ => {
                self.entries.insert(key.to_string(), entry);
                true
            }
        }
    }

    /// The live value of `key` (none if absent or deleted).
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// The entry of `key`, tombstone included.
    pub fn entry(&self, key: &str) -> Option<&Entry<V>> {
        self.entries.get(key)
    }

    /// Live values whose keys start with `prefix`, in key order.
    pub fn live<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a V)> + 'a {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| Some((k.as_str(), e.value.as_ref()?)))
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry<V>)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries of this map that `other` lacks or holds older.
    pub fn newer_than(&self, other: &BTreeMap<String, Stamp>) -> Vec<(String, Entry<V>)> {
        self.entries
            .iter()
            .filter(|(k, e)| other.get(*k).is_none_or(|s| *s < e.stamp))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every key's stamp.
    pub fn stamps(&self) -> BTreeMap<String, Stamp> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.stamp)).collect()
    }

    /// A hash of every key and stamp: two maps with equal summaries hold the same writes.
    pub fn summary(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, e) in &self.entries {
            h.update((k.len() as u32).to_be_bytes());
            h.update(k.as_bytes());
            h.update(e.stamp.get_time().as_u64().to_be_bytes());
            h.update(e.stamp.get_id().to_le_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uhlc::{ID, NTP64};

    fn stamp(t: u64, id: u8) -> Stamp {
        Stamp::new(NTP64(t), ID::try_from(id).unwrap())
    }

    fn put(v: u32, t: u64, id: u8) -> Entry<u32> {
        Entry { stamp: stamp(t, id), value: Some(v) }
    }

    #[test]
    fn the_latest_write_wins_and_a_tombstone_is_a_write() {
        let mut m = Lww::default();
        assert!(m.merge("a", put(1, 10, 1)));
        assert!(!m.merge("a", put(2, 9, 1)), "older");
        assert!(!m.merge("a", put(3, 10, 1)), "the same write again");
        assert!(m.merge("a", put(4, 10, 2)), "same time, higher id");
        assert_eq!(m.get("a"), Some(&4));
        assert!(m.merge("a", Entry { stamp: stamp(11, 1), value: None }));
        assert_eq!(m.get("a"), None);
        assert!(!m.merge("a", put(5, 10, 3)), "a delete wins over older writes arriving late");
        assert!(m.merge("a", put(6, 12, 1)), "and loses to newer ones");
        assert_eq!(m.get("a"), Some(&6));
    }

    #[test]
    fn live_lists_a_prefix_without_tombstones() {
        let mut m = Lww::default();
        m.merge("svc/a/x", put(1, 1, 1));
        m.merge("svc/a/y", Entry { stamp: stamp(1, 1), value: None });
        m.merge("svc/a/z", put(3, 1, 1));
        m.merge("svc/b/x", put(4, 1, 1));
        m.merge("scale/a/x", put(5, 1, 1));
        let got: Vec<(&str, &u32)> = m.live("svc/a/").collect();
        assert_eq!(got, vec![("svc/a/x", &1), ("svc/a/z", &3)]);
    }

    use crate::hash::SplitMix64 as Rng;

    #[test]
    fn replicas_that_saw_the_same_writes_agree_whatever_the_order() {
        let mut rng = Rng(7);
        for case in 0..300 {
            // Writes by 3 writers to a few keys, some deletes, some repeated.
            let mut writes: Vec<(String, Entry<u32>)> = (0..rng.below(40))
                .map(|i| {
                    let key = format!("k{}", rng.below(6));
                    let value = (rng.below(5) != 0).then_some(i as u32);
                    (key, Entry { stamp: stamp(rng.below(20), 1 + rng.below(3) as u8), value })
                })
                .collect();
            // Equal stamps are the same write: keep one value per (key, stamp).
            let mut seen = BTreeMap::new();
            writes.retain(|(k, e)| seen.insert((k.clone(), e.stamp), ()).is_none());
            let mut a = Lww::default();
            for (k, e) in &writes {
                a.merge(k, e.clone());
            }
            // Another replica gets them shuffled, some twice, and in two halves merged later.
            let mut shuffled = writes.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let extra: Vec<_> = shuffled.iter().take(5).cloned().collect();
            shuffled.extend(extra);
            let (h1, h2) = shuffled.split_at(shuffled.len() / 2);
            let (mut b1, mut b2) = (Lww::default(), Lww::default());
            for (k, e) in h1 {
                b1.merge(k, e.clone());
            }
            for (k, e) in h2 {
                b2.merge(k, e.clone());
            }
            for (k, e) in b1.newer_than(&b2.stamps()) {
                b2.merge(&k, e);
            }
            assert_eq!(a, b2, "case {case}");
            assert_eq!(a.summary(), b2.summary(), "case {case}");
            assert!(b2.newer_than(&a.stamps()).is_empty() && a.newer_than(&b2.stamps()).is_empty());
        }
    }
}
