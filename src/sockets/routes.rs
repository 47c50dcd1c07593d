//! The pod's default gateways, from the kernel's routing tables
//! (`/proc/net/route`, `/proc/net/ipv6_route`) of the network namespace the
//! sidecar shares with NGINX.
//!
//! Why they matter: the kubelet runs in the node's network namespace and
//! reaches a pod through the node's end of the pod's link, which is the
//! pod's default gateway with bridge CNIs (flannel, kubenet, bridge with
//! `isDefaultGateway`) and Cilium (`cilium_host`). So the gateway is where
//! the kubelet's probes and hooks come from, and another pod cannot send
//! from it (see `crate::auth::Access`).
//!
//! Total parsers: a line they cannot read is skipped, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Route flags (include/uapi/linux/route.h): the route is up and goes
/// through a gateway.
const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// The gateways of the default routes in `/proc/net/route`'s text.
///
/// Addresses are printed as the kernel holds them (network order) read as
/// a native `u32` in hex, so the native byte order gives them back.
pub fn default_gateways_v4(table: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, dest, gateway, flags, _, _, _, mask, ..] = f[..] else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gateway), Some(flags), Some(mask)) =
            (hex(dest), hex(gateway), hex(flags), hex(mask))
        else {
            continue;
        };
        if dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY {
            let ip = Ipv4Addr::from(gateway.to_ne_bytes());
            if !ip.is_unspecified() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The next hops of the default routes in `/proc/net/ipv6_route`'s text
/// (addresses as 32 hex digits in network order; no header line).
pub fn default_gateways_v6(table: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dest, dest_len, _, _, next_hop, _, _, _, flags, ..] = f[..] else {
            continue;
        };
        let addr = |s: &str| {
            (s.len() == 32)
                .then(|| u128::from_str_radix(s, 16).ok())
                .flatten()
        };
        let (Some(dest), Ok(dest_len), Some(next_hop), Ok(flags)) = (
            addr(dest),
            u8::from_str_radix(dest_len, 16),
            addr(next_hop),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if dest == 0 && dest_len == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY {
            let ip = Ipv6Addr::from(next_hop);
            if !ip.is_unspecified() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// This network namespace's default gateways, IPv4 then IPv6; empty when
/// there is no default route (or the tables cannot be read).
pub(crate) fn default_gateways() -> Vec<IpAddr> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let v4 = default_gateways_v4(&read("/proc/net/route"));
    let v6 = default_gateways_v6(&read("/proc/net/ipv6_route"));
    v4.into_iter()
        .map(IpAddr::V4)
        .chain(v6.into_iter().map(IpAddr::V6))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_s_gateway_is_read_from_the_kernels_tables() {
        // As a pod on a bridge with a default route prints them (x86_64).
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0101D50A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0001D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let want = if cfg!(target_endian = "little") {
            vec![Ipv4Addr::new(10, 213, 1, 1)]
        } else {
            vec![Ipv4Addr::new(1, 1, 213, 10)]
        };
        assert_eq!(default_gateways_v4(v4), want);
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
                  00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";
        assert_eq!(
            default_gateways_v6(v6),
            vec!["fd00::1".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn no_default_route_no_gateway() {
        // A pod whose CNI gives it only its subnet (the test rigs' bridge).
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t0001D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(default_gateways_v4(v4).is_empty());
        // A default route that is down, or not through a gateway.
        let down = "h\neth0\t00000000\t0101D50A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert!(default_gateways_v4(down).is_empty());
        assert!(default_gateways_v6("").is_empty());
    }
}
