//! The flow cache: each CPU's copy of what conntrack says about the flows
//! whose packets it rewrote lately (`FZ_FLOW_CACHE`, one cache line per
//! slot, direct-mapped by `flow_slot`).
//!
//! An established flow's packet then reads one line of its CPU's own
//! region, plus its slot's epoch, where a conntrack lookup hashes the key and
//! walks a bucket into a table of 262,144 entries: a cold bucket, key and
//! value, each on 4 KiB pages. Conntrack stays the truth:
//! - a copy is trusted for `FLOW_CACHE_JIFFIES` only, then the next packet
//!   reads conntrack again (which refreshes the entry's age and its LRU
//!   standing);
//! - packets that change a flow's state (SYN, FIN, RST) always go to
//!   conntrack, and so does a flow's first reply (its slot is empty);
//! - whoever changes a flow in conntrack adds 1 to its key's slot epoch in
//!   `FZ_FLOW_EPOCHS` afterwards (`forget`, and the agent likewise); a copy
//!   carries the epoch read *before* the lookup it was made from, so a copy
//!   of an entry that changed meanwhile is never used.
//!
//! No locks: a region is written only by its CPU, and TC programs do not
//! nest on one CPU.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::{bpf_get_smp_processor_id, bpf_jiffies64},
    macros::map,
    maps::Array,
};
use fizz_common::{flow_slot, CtKey, CtValue, FlowCacheSlot, FLOW_CACHE_JIFFIES, FLOW_CACHE_SLOTS};

/// Declared for one CPU; the loader sizes it to every possible CPU. (A CPU
/// beyond its size finds no slot, and reads conntrack.)
#[map(name = "FZ_FLOW_CACHE")]
static FLOW_CACHE: Array<FlowCacheSlot> = Array::pinned(FLOW_CACHE_SLOTS, BPF_F_MMAPABLE);

/// Memory-mappable, so that the agent adds to an epoch atomically.
#[map(name = "FZ_FLOW_EPOCHS")]
static FLOW_EPOCHS: Array<u64> = Array::pinned(FLOW_CACHE_SLOTS, BPF_F_MMAPABLE);

/// What rewriting a packet of a flow takes, from conntrack or its copy.
#[derive(Clone, Copy)]
pub struct Nat {
    pub addr_be: u32,
    pub port_be: u16,
    /// `CtValue::kind`.
    pub kind: u8,
    pub backend_id: u32,
}

impl Nat {
    #[inline(always)]
    pub fn of(ct: &CtValue) -> Nat {
        Nat { addr_be: ct.nat_addr_be, port_be: ct.nat_port_be, kind: ct.kind, backend_id: ct.backend_id }
    }
}

/// A key's slot, with the slot's epoch when it was taken; or none (every
/// field defined, so that paths merging both leave no register unset).
pub struct Slot {
    index: u32,
    epoch: u64,
    some: bool,
}

impl Slot {
    /// The slot of `key`. Taken before conntrack is read, so that a copy
    /// made from that read is filed under an epoch no newer than the entry.
    #[inline(always)]
    pub fn of(key: &CtKey) -> Slot {
        let index = flow_slot(key);
        let epoch = match FLOW_EPOCHS.get_ptr(index) {
            // SAFETY: the pointer comes from a successful array lookup: valid
            // and aligned; other CPUs add to it atomically meanwhile.
            Some(p) => unsafe { core::ptr::read_volatile(p) },
            None => 0,
        };
        Slot { index, epoch, some: true }
    }

    /// No slot: nothing is found, nothing filed.
    #[inline(always)]
    pub fn none() -> Slot {
        Slot { index: 0, epoch: 0, some: false }
    }

    /// This CPU's copy of the slot.
    #[inline(always)]
    fn mine(&self) -> Option<*mut FlowCacheSlot> {
        // SAFETY: a plain helper call with no arguments (inlined by the kernel).
        let cpu = unsafe { bpf_get_smp_processor_id() };
        FLOW_CACHE.get_ptr_mut(cpu * FLOW_CACHE_SLOTS + self.index)
    }

    /// The cached copy for `key`, if this CPU holds one that is still good.
    #[inline(always)]
    pub fn get(&self, key: &CtKey) -> Option<Nat> {
        if !self.some {
            return None;
        }
        // SAFETY: from a successful array lookup; only this CPU writes it.
        let c = unsafe { &*self.mine()? };
        // SAFETY: a plain helper call with no arguments (inlined by the kernel).
        let now = unsafe { bpf_jiffies64() };
        if c.key != *key || c.epoch != self.epoch || now >= c.until_jiffies {
            return None;
        }
        Some(Nat { addr_be: c.nat_addr_be, port_be: c.nat_port_be, kind: c.kind, backend_id: c.backend_id })
    }

    /// Files a copy of `nat`, just read from conntrack for `key`.
    #[inline(always)]
    pub fn fill(&self, key: &CtKey, nat: &Nat) {
        if !self.some {
            return;
        }
        let Some(c) = self.mine() else {
            return;
        };
        // SAFETY: as above.
        let until_jiffies = unsafe { bpf_jiffies64() } + FLOW_CACHE_JIFFIES;
        // SAFETY: from a successful array lookup; only this CPU writes it,
        // and no program nests on this CPU to read it half-written.
        unsafe {
            (*c).key = *key;
            (*c).nat_addr_be = nat.addr_be;
            (*c).nat_port_be = nat.port_be;
            (*c).kind = nat.kind;
            (*c).backend_id = nat.backend_id;
            (*c).epoch = self.epoch;
            (*c).until_jiffies = until_jiffies;
        }
    }
}

/// Stops every CPU's copy of `key` from being used: after its conntrack
/// entry was written or removed.
#[inline(always)]
pub fn forget(key: &CtKey) {
    if let Some(p) = FLOW_EPOCHS.get_ptr_mut(flow_slot(key)) {
        // SAFETY: from a successful array lookup: valid and aligned for a
        // `u64`, and every writer adds to it atomically. (The target has no
        // atomic read-modify-write in `core`; the instruction is `BPF_ATOMIC
        // | BPF_ADD`.)
        unsafe {
            core::arch::asm!("lock *(u64 *)({p} + 0) += {one}", p = in(reg) p, one = in(reg) 1u64,
                options(nostack, preserves_flags))
        };
    }
}
