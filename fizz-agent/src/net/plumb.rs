//! Container plumbing, CNI-style, over rtnetlink (the only module that uses
//! it): a veth pair per container, one end moved into the container's
//! network namespace as `eth0` with a /32 from the node's range, a default
//! route through a link-local gateway that the host end answers for, and
//! static neighbour entries both ways so no ARP is ever needed.
//!
//! Each netlink conversation runs on a dedicated thread in the namespace it
//! talks to (see `netns`), with a runtime of its own.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    neighbour::NeighbourState,
    route::RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netns;

/// The link-local gateway every container routes through. The host end of
/// each veth answers for it (static neighbour entry in the container), and
/// the node's DNS server listens on it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The device that holds `GATEWAY` on the node: loopback, which every
/// kernel has (a dummy device needs a module that may be missing).
pub const GATEWAY_DEV: &str = "lo";

/// Errors plumbing a container, naming the interface or namespace.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// A netlink request failed.
    #[error("{what} ({ifname}): {source}")]
    Netlink { what: &'static str, ifname: String, #[source] source: rtnetlink::Error },
    /// A link that was just made cannot be found.
    #[error("interface {0} not found")]
    NoLink(String),
    /// Entering the container's namespace failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// Setting up a netlink socket or runtime failed.
    #[error("netlink setup: {0}")]
    Io(#[from] std::io::Error),
}

/// What to wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlumbRequest {
    /// The container's init process.
    pub pid: u32,
    /// Name of the host end (≤ 15 bytes).
    pub host_if: String,
    pub addr: Ipv4Addr,
    /// MAC of the container's `eth0`.
    pub mac: [u8; 6],
    /// MTU of both ends: the tunnel's, so that no packet a container sends
    /// is too long for another node.
    pub mtu: u32,
}

/// What was wired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbed {
    pub host_if: String,
    pub host_ifindex: u32,
    pub node_mac: [u8; 6],
}

/// The MAC of both ends of every container veth. Every frame a container
/// sends is addressed to its gateway, i.e. to this MAC, which is also the MAC
/// of every other container's `eth0`: the datapath hands a frame from one
/// container to another without writing a byte of it. (Each veth is a
/// point-to-point link, so the duplicates never meet on one segment.)
pub const VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// The MAC of a container's `eth0` (the same for all; see `VETH_MAC`).
pub fn container_mac(_addr: Ipv4Addr) -> [u8; 6] {
    VETH_MAC
}

/// Turns IPv6 off on an interface of the calling thread's namespace, best
/// effort: both ends of a veth share a MAC, so their derived link-local
/// addresses would collide.
fn disable_ipv6(ifname: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1");
}

/// Runs `f` with a netlink handle in the calling thread's namespace. It runs
/// on a thread of its own (which inherits that namespace) with a runtime of
/// its own, so callers may be async tasks, blocking code or namespace threads.
fn with_handle<T, F, Fut>(f: F) -> Result<T, PlumbError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, PlumbError>>,
{
    std::thread::scope(|s| {
        // A thread that cannot be made (the system is out of them) is an error, not a panic.
        std::thread::Builder::new()
            .spawn_scoped(s, || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()?;
                    let task = tokio::spawn(conn);
                    let out = f(handle).await;
                    task.abort();
                    out
                })
            })?
            .join()
            .unwrap_or_else(|_| Err(PlumbError::Io(std::io::Error::other("the netlink thread panicked"))))
    })
}

fn nl(what: &'static str, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let ifname = ifname.to_string();
    move |source| PlumbError::Netlink { what, ifname, source }
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, PlumbError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("looking up", name)(e)),
    }
}

fn mac_of(link: &LinkMessage) -> [u8; 6] {
    for a in &link.attributes {
        if let LinkAttribute::Address(m) = a {
            if m.len() == 6 {
                let mut out = [0u8; 6];
                out.copy_from_slice(m);
                return out;
            }
        }
    }
    [0; 6]
}

/// Wires a running container. Called in the node's namespace.
pub fn plumb(req: &PlumbRequest) -> Result<Plumbed, PlumbError> {
    let tmp = format!("fzt{:08x}", req.pid);
    let host_if = req.host_if.clone();
    let (host_ifindex, node_mac) = with_handle(|h| async move {
        if let Some(old) = link_by_name(&h, &host_if).await? {
            h.link().del(old.header.index).execute().await.map_err(nl("deleting stale", &host_if))?;
        }
        if let Some(old) = link_by_name(&h, &tmp).await? {
            h.link().del(old.header.index).execute().await.map_err(nl("deleting stale", &tmp))?;
        }
        h.link()
            .add(LinkVeth::new(&host_if, &tmp).mtu(req.mtu).build())
            .execute()
            .await
            .map_err(nl("creating veth", &host_if))?;
        let host = link_by_name(&h, &host_if).await?.ok_or_else(|| PlumbError::NoLink(host_if.clone()))?;
        let peer = link_by_name(&h, &tmp).await?.ok_or_else(|| PlumbError::NoLink(tmp.clone()))?;
        h.link()
            .set(LinkUnspec::new_with_index(peer.header.index).setns_by_pid(req.pid).build())
            .execute()
            .await
            .map_err(nl("moving into the container", &tmp))?;
        disable_ipv6(&host_if);
        h.link()
            .set(LinkUnspec::new_with_index(host.header.index).address(VETH_MAC.to_vec()).up().build())
            .execute()
            .await
            .map_err(nl("setting up", &host_if))?;
        Ok((host.header.index, VETH_MAC))
    })?;

    let ns = format!("/proc/{}/ns/net", req.pid);
    let (tmp2, addr, mac, mtu) = (format!("fzt{:08x}", req.pid), req.addr, req.mac, req.mtu);
    netns::run_in(&ns, move || {
        with_handle(|h| async move {
            if let Some(lo) = link_by_name(&h, "lo").await? {
                h.link().set(LinkUnspec::new_with_index(lo.header.index).up().build()).execute().await.map_err(nl("setting up", "lo"))?;
            }
            let peer = link_by_name(&h, &tmp2).await?.ok_or_else(|| PlumbError::NoLink(tmp2.clone()))?;
            let idx = peer.header.index;
            disable_ipv6(&tmp2);
            h.link()
                .set(LinkUnspec::new_with_index(idx).name("eth0".to_string()).address(mac.to_vec()).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(nl("naming", "eth0"))?;
            h.address().add(idx, IpAddr::V4(addr), 32).execute().await.map_err(nl("adding the address", "eth0"))?;
            let gw = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(idx)
                .scope(RouteScope::Link)
                .build();
            h.route().add(gw).execute().await.map_err(nl("adding the gateway route", "eth0"))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(GATEWAY)
                .output_interface(idx)
                .build();
            h.route().add(default).execute().await.map_err(nl("adding the default route", "eth0"))?;
            h.neighbours()
                .add(idx, IpAddr::V4(GATEWAY))
                .link_layer_address(&node_mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl("adding the gateway neighbour", "eth0"))?;
            Ok(())
        })
    })??;

    let host_if = req.host_if.clone();
    with_handle(|h| async move {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(host_ifindex)
            .scope(RouteScope::Link)
            .build();
        h.route().add(route).replace().execute().await.map_err(nl("adding the container route", &host_if))?;
        h.neighbours()
            .add(host_ifindex, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl("adding the container neighbour", &host_if))?;
        Ok(())
    })?;
    Ok(Plumbed { host_if: req.host_if.clone(), host_ifindex, node_mac })
}

/// Removes a container's veth (both ends go; so do its routes). Missing is
/// not an error.
pub fn unplumb(host_if: &str) -> Result<(), PlumbError> {
    let host_if = host_if.to_string();
    with_handle(|h| async move {
        if let Some(l) = link_by_name(&h, &host_if).await? {
            h.link().del(l.header.index).execute().await.map_err(nl("deleting", &host_if))?;
        }
        Ok(())
    })
}

/// Sets the MTU of the `eth0` of the container whose init is `pid`.
pub fn set_container_mtu(pid: u32, mtu: u32) -> Result<(), PlumbError> {
    netns::run_in(&format!("/proc/{pid}/ns/net"), move || {
        with_handle(|h| async move {
            let eth0 = link_by_name(&h, "eth0").await?.ok_or_else(|| PlumbError::NoLink("eth0".into()))?;
            h.link()
                .set(LinkUnspec::new_with_index(eth0.header.index).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl("setting the MTU of", "eth0"))
        })
    })?
}

/// The host end of a veth, if it exists: `(ifindex, mac)`.
pub fn host_link(host_if: &str) -> Result<Option<(u32, [u8; 6])>, PlumbError> {
    let host_if = host_if.to_string();
    with_handle(|h| async move { Ok(link_by_name(&h, &host_if).await?.map(|l| (l.header.index, mac_of(&l)))) })
}

/// Makes sure the node holds `GATEWAY` (on loopback), for the DNS server and
/// anything else containers reach at their gateway.
pub fn ensure_gateway() -> Result<(), PlumbError> {
    with_handle(|h| async move {
        let dev = link_by_name(&h, GATEWAY_DEV).await?.ok_or_else(|| PlumbError::NoLink(GATEWAY_DEV.into()))?;
        let idx = dev.header.index;
        h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await.map_err(nl("setting up", GATEWAY_DEV))?;
        match h.address().add(idx, IpAddr::V4(GATEWAY), 32).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(nl("adding the gateway address", GATEWAY_DEV)(e)),
        }
    })
}

/// The first global IPv4 address of this namespace (not loopback, not
/// link-local): what a node advertises to its peers by default.
pub fn primary_ipv4() -> Result<Option<Ipv4Addr>, PlumbError> {
    use netlink_packet_route::address::AddressAttribute;
    with_handle(|h| async move {
        let mut addrs = h.address().get().execute();
        let mut found = None;
        while let Some(msg) = addrs.try_next().await.map_err(nl("listing addresses", "*"))? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) = a {
                    if !v4.is_loopback() && !v4.is_link_local() && found.is_none() {
                        found = Some(*v4);
                    }
                }
            }
        }
        Ok(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veth_mac_is_local_unicast() {
        let m = container_mac(Ipv4Addr::new(10, 42, 3, 7));
        assert_eq!(m, VETH_MAC);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
    }
}
