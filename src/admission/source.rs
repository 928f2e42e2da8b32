//! The unit every per-source limit counts in: one IPv4 address, or one IPv6 /64.
//!
//! An IPv6 host usually owns a whole /64 and can pick any address in it, so counting
//! single IPv6 addresses would give one attacker 2^64 fresh budgets. IPv4-mapped IPv6
//! addresses (a dual-stack `[::]` listener) count as the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }

    /// Where every source goes once a table is full: they then share one budget
    /// (`::` is never a peer address, so it cannot collide with a real source).
    pub const OVERFLOW: Source = Source(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            _ if *self == Source::OVERFLOW => f.write_str("other sources"),
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::9")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.7")),
            Source::of(ip("10.0.0.7"))
        );
        assert_eq!(Source::of(ip("10.0.0.7")).to_string(), "10.0.0.7");
        assert_ne!(Source::of(ip("10.0.0.7")), Source::of(ip("10.0.0.8")));
    }
}
