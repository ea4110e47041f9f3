//! `BPF_PROG_TEST_RUN`: runs the loaded program on a crafted packet and
//! returns its verdict and the packet as it left. aya has no wrapper for it.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::programs::SchedClassifier;

/// The `test` member of `union bpf_attr`, padded to the size the kernel
/// accepts; unused tail bytes must be zero.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// What one run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The TC action (`TC_ACT_*`).
    pub retval: u32,
    /// The packet after the program (rewritten, resized).
    pub data: Vec<u8>,
}

/// Runs `prog` once over `packet` (an Ethernet frame, at least 14 bytes).
pub fn test_run(prog: &SchedClassifier, packet: &[u8]) -> std::io::Result<TestRun> {
    test_run_repeat(prog, packet, 1).map(|(r, _)| r)
}

/// Runs `prog` `repeat` times over `packet` in the kernel and returns the
/// last run and the kernel's mean time per run in nanoseconds.
pub fn test_run_repeat(prog: &SchedClassifier, packet: &[u8], repeat: u32) -> std::io::Result<(TestRun, u32)> {
    let fd = prog.fd().map_err(std::io::Error::other)?;
    let raw = fd.as_fd().as_raw_fd();
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: raw as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix whose
    // pointers reference `packet` and `out`, both alive and of the stated
    // sizes for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((TestRun { retval: attr.retval, data: out }, attr.duration))
}
