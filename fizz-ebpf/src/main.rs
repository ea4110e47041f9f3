//! Fizz datapath, kernel side.
//!
//! One entry file per hook, named from the container's point of view:
//! `from_container` runs at TC ingress of the host end of every container
//! veth, so it sees every packet a container sends. It does service-VIP
//! load-balancing (DNAT with conntrack, reverse NAT of replies), rejects
//! traffic to VIPs that have nowhere to go, and hands packets for local
//! containers straight to their veth, or sends packets for another node's
//! containers into the WireGuard device. `from_wireguard` runs at TC ingress
//! of that (layer-3) device: it reverses the NAT of replies to flows this
//! node translated, and hands packets for local containers to their veth.
//! `sock` holds four programs on the root cgroup: TCP connects to a VIP from
//! this node's containers are pointed at a backend at `connect()` time, and
//! datagrams of unconnected UDP sockets at `sendmsg()` time, so those flows
//! never need NAT at TC (and `getpeername`, `recvmsg` still show the VIP).
//!
//! Every path returns an explicit TC verdict and bumps a counter: verdicts in
//! `FZ_CPU_VERDICTS`, drops by reason in `FZ_DROPS`.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod checksum;
mod floor;
mod flow_cache;
mod from_container;
mod from_wireguard;
mod maps;
mod nat;
mod packet;
mod reject;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic at run time; the verifier rejects
    // any program whose code could reach this, so it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
