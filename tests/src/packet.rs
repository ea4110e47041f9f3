//! Crafting and checking raw frames for `BPF_PROG_TEST_RUN` tests.

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// A frame to build: Ethernet + IPv4 (+ options) + TCP or UDP + payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    /// IP options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    /// The raw fragment field (flags and offset).
    pub frag: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Frame {
        Frame {
            src_mac: [0x0a, 0x58, 1, 1, 1, 1],
            dst_mac: [0x0a, 0x58, 2, 2, 2, 2],
            src,
            dst,
            proto: TCP,
            sport,
            dport,
            ttl: 64,
            ip_options: Vec::new(),
            frag: 0x4000,
            tcp_flags: 0x02,
            seq: 1000,
            ack: 0,
            payload: Vec::new(),
        }
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Frame {
        Frame { proto: UDP, tcp_flags: 0, ..Frame::tcp(src, sport, dst, dport) }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4_len = match self.proto {
            TCP => 20,
            UDP => 8,
            _ => 0,
        } + self.payload.len();
        let ihl = 20 + self.ip_options.len();
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_start = f.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(self.ttl);
        f.push(self.proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&self.ip_options);
        let c = csum(&f[ip_start..ip_start + ihl]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            TCP => {
                f.extend_from_slice(&self.seq.to_be_bytes());
                f.extend_from_slice(&self.ack.to_be_bytes());
                f.push(5 << 4);
                f.push(self.tcp_flags);
                f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
            UDP => {
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            _ => {}
        }
        f.extend_from_slice(&self.payload);
        if self.proto == TCP || self.proto == UDP {
            let c = l4_csum(self.src, self.dst, self.proto, &f[l4..]);
            let off = l4 + if self.proto == TCP { 16 } else { 6 };
            f[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        f
    }
}

/// RFC 1071 checksum.
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 { u16::from_be_bytes([ch[0], ch[1]]) } else { u16::from(ch[0]) << 8 };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The transport checksum with the IPv4 pseudo-header.
pub fn l4_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12 + seg.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    p.extend_from_slice(seg);
    csum(&p)
}

/// A parsed IPv4 frame, for checking what the program emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub ihl: usize,
    /// Source and destination port (TCP/UDP), or type and code (ICMP).
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub ip_csum_ok: bool,
    pub l4_csum_ok: bool,
    /// The bytes after the transport header.
    pub payload: Vec<u8>,
}

pub fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < tot || tot < ihl {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let seg = &ip[ihl..tot];
    let (sport, dport, tcp_flags, seq, ack, hdr) = match proto {
        TCP if seg.len() >= 20 => (
            u16::from_be_bytes([seg[0], seg[1]]),
            u16::from_be_bytes([seg[2], seg[3]]),
            seg[13],
            u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
            u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]),
            usize::from(seg[12] >> 4) * 4,
        ),
        UDP if seg.len() >= 8 => (u16::from_be_bytes([seg[0], seg[1]]), u16::from_be_bytes([seg[2], seg[3]]), 0, 0, 0, 8),
        ICMP if seg.len() >= 8 => (u16::from(seg[0]), u16::from(seg[1]), 0, 0, 0, 8),
        _ => return None,
    };
    let l4_csum_ok = match proto {
        TCP | UDP => {
            let stored = if proto == UDP { u16::from_be_bytes([seg[6], seg[7]]) } else { 1 };
            (proto == UDP && stored == 0) || l4_csum(src, dst, proto, seg) == 0
        }
        _ => csum(seg) == 0,
    };
    Some(Parsed {
        src_mac: f[6..12].try_into().ok()?,
        dst_mac: f[0..6].try_into().ok()?,
        src,
        dst,
        proto,
        ttl: ip[8],
        ihl,
        sport,
        dport,
        tcp_flags,
        seq,
        ack,
        ip_csum_ok: csum(&ip[..ihl]) == 0,
        l4_csum_ok,
        payload: seg[hdr.min(seg.len())..].to_vec(),
    })
}
