//! This host's network interfaces.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;

use crate::error::OsReason;

/// Listing the interfaces failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("list network interface addresses: {0}")]
    Interfaces(OsReason),
}

/// One IP address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub name: String,
    pub address: IpAddr,
}

/// The IPv4 and IPv6 addresses of this network namespace's interfaces, in the kernel's order
/// (addresses of other families, such as link-layer ones, are left out).
pub fn interfaces() -> Result<Vec<InterfaceAddress>, NetError> {
    let all = getifaddrs().map_err(|e| NetError::Interfaces(OsReason(e)))?;
    Ok(all
        .filter_map(|i| {
            let addr = i.address?;
            let address = addr
                .as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))?;
            Some(InterfaceAddress {
                name: i.interface_name,
                address,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn names_exist_and_ipv6_addresses_match_the_kernels_record() {
        let found = interfaces().unwrap();
        for i in &found {
            assert!(
                std::path::Path::new("/sys/class/net")
                    .join(&i.name)
                    .exists(),
                "{i:?}"
            );
        }
        // /proc/net/if_inet6: one line per IPv6 address, 32 hex digits first, name last.
        let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bits = u128::from_str_radix(fields[0], 16).unwrap();
            let expected = InterfaceAddress {
                name: fields[5].to_owned(),
                address: IpAddr::from(bits.to_be_bytes()),
            };
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        // A loopback interface that is up has 127.0.0.1.
        let lo_up = std::fs::read_to_string("/sys/class/net/lo/flags").is_ok_and(|f| {
            u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap() & 1 == 1
        });
        if lo_up {
            assert!(found.contains(&InterfaceAddress {
                name: "lo".to_owned(),
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            }));
        }
    }
}
