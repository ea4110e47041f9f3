//! Rolling updates, pure: how each replica slot of a changed service stands across the
//! cluster → which slots may be replaced now, and whether the update is done or has failed.
//!
//! Every node computes this from the same reports; each acts only on the slots it runs.
//! Slots are taken in replica order, `parallelism` at a time: a slot leaves the window once
//! its new container has stayed ready for `monitor` (+ `delay`) as this node observed it, so
//! the next slot's node starts replacing only then. No node coordinates the others.

use std::{collections::BTreeSet, time::Duration};

use super::plan::{FailureAction, UpdatePolicy};

/// One container of a slot, as this node sees it (its own, or a peer's report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// It runs the service's current definition.
    pub current: bool,
    /// How long it has been seen ready (None: not ready).
    pub ready_for: Option<Duration>,
    /// It failed while an update watched it.
    pub failed: bool,
}

/// How one replica slot stands, over every container of it in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A container of the current definition has stayed ready through the monitor period.
    Settled,
    /// A container of the current definition failed while watched.
    Failed,
    /// A container of the current definition exists, not settled yet; if ready, it settles
    /// after the given time.
    Updating(Option<Duration>),
    /// Only containers of an older definition exist.
    Outdated,
    /// No container exists.
    Empty,
}

/// Folds a slot's containers into its standing.
pub fn slot(policy: &UpdatePolicy, seen: &[Seen]) -> Slot {
    let settle = settle_time(policy);
    let current: Vec<&Seen> = seen.iter().filter(|s| s.current).collect();
    if current.iter().any(|s| !s.failed && s.ready_for.is_some_and(|d| d >= settle)) {
        return Slot::Settled;
    }
    if current.iter().any(|s| s.failed) {
        return Slot::Failed;
    }
    if !current.is_empty() {
        let soonest = current.iter().filter_map(|s| s.ready_for).map(|d| settle.saturating_sub(d)).min();
        return Slot::Updating(soonest);
    }
    if seen.is_empty() {
        Slot::Empty
    } else {
        Slot::Outdated
    }
}

/// How long a new replica must stay ready to count as done.
pub fn settle_time(policy: &UpdatePolicy) -> Duration {
    Duration::from_millis(policy.monitor_ms.saturating_add(policy.delay_ms))
}

/// Where an update stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Slots whose old containers may be replaced now: the first `parallelism` open ones, and
    /// the settled ones (an old container left there is redundant: one of the current
    /// definition serves, as when a node comes back with the old container of a replica that
    /// was replaced elsewhere while it was away).
    pub window: BTreeSet<u32>,
    pub total: usize,
    pub settled: usize,
    pub failed: Vec<u32>,
    /// More slots failed than the policy tolerates: nothing more is replaced.
    pub exceeded: bool,
    /// Every slot is settled, or failed within what is tolerated.
    pub complete: bool,
    /// When the next slot settles (a pass is due then).
    pub wake: Option<Duration>,
}

/// The window and the verdict of an update over its slots (replica number, standing).
pub fn progress(policy: &UpdatePolicy, slots: &[(u32, Slot)]) -> Progress {
    let mut slots = slots.to_vec();
    slots.sort_by_key(|(r, _)| *r);
    let failed: Vec<u32> = slots.iter().filter(|(_, s)| *s == Slot::Failed).map(|(r, _)| *r).collect();
    let allowed = slots.len() as u64 * u64::from(policy.max_failure_permille) / 1000;
    let exceeded = policy.failure_action != FailureAction::Continue && failed.len() as u64 > allowed;
    let open: Vec<u32> = slots.iter().filter(|(_, s)| !matches!(s, Slot::Settled | Slot::Failed)).map(|(r, _)| *r).collect();
    let settled = slots.iter().filter(|(_, s)| *s == Slot::Settled).map(|(r, _)| *r);
    let window = match (exceeded, policy.parallelism) {
        (true, _) => BTreeSet::new(),
        (false, 0) => open.iter().copied().chain(settled).collect(),
        (false, n) => open.iter().copied().take(n as usize).chain(settled).collect(),
    };
    Progress {
        window,
        total: slots.len(),
        settled: slots.iter().filter(|(_, s)| *s == Slot::Settled).count(),
        complete: open.is_empty() && !exceeded,
        exceeded,
        wake: slots.iter().filter_map(|(_, s)| if let Slot::Updating(w) = s { *w } else { None }).min(),
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::plan::UpdateOrder;

    fn policy(parallelism: u32, action: FailureAction, permille: u32) -> UpdatePolicy {
        UpdatePolicy {
            parallelism,
            delay_ms: 1_000,
            monitor_ms: 2_000,
            order: UpdateOrder::StopFirst,
            failure_action: action,
            max_failure_permille: permille,
        }
    }

    fn seen(current: bool, ready_ms: Option<u64>, failed: bool) -> Seen {
        Seen { current, ready_for: ready_ms.map(Duration::from_millis), failed }
    }

    #[test]
    fn a_slot_settles_after_monitor_and_delay_and_a_failure_outranks_a_starting_copy() {
        let p = policy(1, FailureAction::Pause, 0);
        assert_eq!(slot(&p, &[]), Slot::Empty);
        assert_eq!(slot(&p, &[seen(false, Some(9_000), false)]), Slot::Outdated);
        assert_eq!(slot(&p, &[seen(false, Some(9_000), false), seen(true, None, false)]), Slot::Updating(None));
        assert_eq!(slot(&p, &[seen(true, Some(2_500), false)]), Slot::Updating(Some(Duration::from_millis(500))));
        assert_eq!(slot(&p, &[seen(true, Some(3_000), false)]), Slot::Settled);
        assert_eq!(slot(&p, &[seen(true, None, true), seen(true, None, false)]), Slot::Failed);
        // A failed container never settles, however long it then runs.
        assert_eq!(slot(&p, &[seen(true, Some(60_000), true)]), Slot::Failed);
    }

    #[test]
    fn the_window_takes_open_slots_in_replica_order_parallelism_at_a_time() {
        let slots = [(3, Slot::Outdated), (1, Slot::Settled), (2, Slot::Updating(None)), (4, Slot::Outdated)];
        // Settled slot 1 is in every window: an old container left there is redundant.
        let one = progress(&policy(1, FailureAction::Pause, 0), &slots);
        assert_eq!(one.window, [1, 2].into());
        assert_eq!((one.settled, one.total, one.complete), (1, 4, false));
        let two = progress(&policy(2, FailureAction::Pause, 0), &slots);
        assert_eq!(two.window, [1, 2, 3].into());
        let all = progress(&policy(0, FailureAction::Pause, 0), &slots);
        assert_eq!(all.window, [1, 2, 3, 4].into());
        let done = progress(&policy(1, FailureAction::Pause, 0), &[(1, Slot::Settled), (2, Slot::Settled)]);
        assert!(done.complete && done.window == [1, 2].into());
    }

    #[test]
    fn failures_stop_the_update_unless_tolerated_or_continued() {
        let slots = [(1, Slot::Failed), (2, Slot::Outdated), (3, Slot::Outdated), (4, Slot::Outdated)];
        let paused = progress(&policy(1, FailureAction::Pause, 0), &slots);
        assert!(paused.exceeded && paused.window.is_empty() && !paused.complete);
        assert_eq!(paused.failed, vec![1]);
        // A quarter tolerated: one failure of four passes, and the next slot is taken.
        let tolerated = progress(&policy(1, FailureAction::Rollback, 250), &slots);
        assert!(!tolerated.exceeded);
        assert_eq!(tolerated.window, [2].into(), "a failed slot is done, not redone");
        let continued = progress(&policy(1, FailureAction::Continue, 0), &slots);
        assert_eq!(continued.window, [2].into());
        let two_failed = [(1, Slot::Failed), (2, Slot::Failed), (3, Slot::Outdated), (4, Slot::Outdated)];
        assert!(progress(&policy(1, FailureAction::Rollback, 250), &two_failed).exceeded);
        let end = progress(&policy(1, FailureAction::Continue, 0), &[(1, Slot::Failed), (2, Slot::Settled)]);
        assert!(end.complete);
    }

    #[test]
    fn the_wake_is_the_soonest_settling() {
        let slots = [(1, Slot::Updating(Some(Duration::from_millis(700)))), (2, Slot::Updating(Some(Duration::from_millis(200))))];
        assert_eq!(progress(&policy(2, FailureAction::Pause, 0), &slots).wake, Some(Duration::from_millis(200)));
    }
}
