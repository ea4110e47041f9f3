//! `fz_floor`: a classifier that does nothing and hands each packet to the
//! next program on its hook. The agent never loads it. The VIP benchmark
//! attaches it in front of `from_container` to measure, in the same run,
//! what running any program costs on that host (dispatch, the run-time
//! statistics' clock reads, a cold first instruction), so that
//! `from_container`'s own cost can be told apart from it.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
pub fn fz_floor(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
