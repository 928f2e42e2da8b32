//! `[[audiosocket]]`: the Asterisk AudioSocket listeners. Each is a TCP port of its own
//! (AudioSocket is not HTTP, so it cannot share `[server] listen`) and names the route
//! its calls take. AudioSocket has no authentication and no TLS, so a listener that
//! other networks can reach must say who may connect (`allow`), or waive that
//! explicitly (`allow_unauthenticated`).

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::ConfigError;

type Result<T> = std::result::Result<T, ConfigError>;

/// One `[[audiosocket]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawAudioSocket {
    pub listen: Option<String>,
    pub route: Option<String>,
    pub allow: Option<Vec<String>>,
    pub allow_unauthenticated: Option<bool>,
}

/// One AudioSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSocketListener {
    pub listen: SocketAddr,
    /// The route every call on this listener takes.
    pub route: String,
    /// Sources allowed to connect; empty: any (only allowed on a private address or
    /// with `allow_unauthenticated`).
    pub allow: Vec<IpNet>,
    pub allow_unauthenticated: bool,
}

impl AudioSocketListener {
    /// Whether a connection from `ip` may go ahead.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(ip))
    }
}

/// An address or a network (`10.0.0.0/8`, `fd00::/8`) of the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Loopback or a private network (RFC 1918, IPv6 unique-local): where plain TCP with
/// no credentials is tolerable.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Compiles the listeners; `route_exists` checks the route names.
pub(crate) fn listeners(
    raw: Vec<RawAudioSocket>,
    route_exists: impl Fn(&str) -> bool,
) -> Result<Vec<AudioSocketListener>> {
    let mut out: Vec<AudioSocketListener> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("audiosocket[{i}].{k}");
        let listen = r
            .listen
            .ok_or_else(|| {
                ConfigError::invalid(key("listen"), "is required, e.g. \"10.0.0.5:9092\"")
            })?
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                ConfigError::invalid(
                    key("listen"),
                    "not a socket address: expected HOST:PORT with an IP address, e.g. \
                     \"127.0.0.1:9092\" or \"[::1]:9092\"",
                )
            })?;
        let route = r.route.unwrap_or_else(|| super::DEFAULT_ROUTE.to_owned());
        if !route_exists(&route) {
            return Err(ConfigError::invalid(
                key("route"),
                format!("no route is called {route:?} (define it in [[routes]], or use \"call\")"),
            ));
        }
        let mut allow = Vec::new();
        for (j, a) in r.allow.unwrap_or_default().iter().enumerate() {
            let net = IpNet::parse(a.trim()).ok_or_else(|| {
                ConfigError::invalid(
                    format!("audiosocket[{i}].allow[{j}]"),
                    "not an IP address or network: expected e.g. \"10.0.0.7\" or \"10.0.0.0/24\"",
                )
            })?;
            allow.push(net);
        }
        let allow_unauthenticated = r.allow_unauthenticated.unwrap_or(false);
        if !is_private(listen.ip()) && allow.is_empty() && !allow_unauthenticated {
            return Err(ConfigError::invalid(
                key("allow"),
                format!(
                    "listen = {listen} is not a loopback or private address, and AudioSocket \
                     has no authentication and no TLS: list the Asterisk hosts in allow = \
                     [\"10.0.0.7\"], or listen on a private address, or set \
                     allow_unauthenticated = true if a firewall already protects the port"
                ),
            ));
        }
        if listen.port() != 0 && out.iter().any(|o| o.listen == listen) {
            return Err(ConfigError::invalid(
                key("listen"),
                format!("{listen} is already used by another [[audiosocket]]"),
            ));
        }
        out.push(AudioSocketListener {
            listen,
            route,
            allow,
            allow_unauthenticated,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(listen: &str, allow: &[&str], unauth: bool) -> RawAudioSocket {
        RawAudioSocket {
            listen: Some(listen.to_owned()),
            route: None,
            allow: Some(allow.iter().map(|s| s.to_string()).collect()),
            allow_unauthenticated: Some(unauth),
        }
    }

    #[test]
    fn networks_match_their_addresses() {
        let net = IpNet::parse("10.1.2.0/24").unwrap();
        assert!(net.contains("10.1.2.77".parse().unwrap()));
        assert!(!net.contains("10.1.3.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.9".parse().unwrap()));
        let one = IpNet::parse("192.0.2.5").unwrap();
        assert!(one.contains("192.0.2.5".parse().unwrap()));
        assert!(!one.contains("192.0.2.6".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(IpNet::parse("10.0.0.0/33"), None);
        assert_eq!(IpNet::parse("example.com"), None);
    }

    #[test]
    fn a_public_listener_needs_an_allow_list_or_the_waiver() {
        let any = |_: &str| true;
        let err = listeners(vec![raw("0.0.0.0:9092", &[], false)], any).unwrap_err();
        assert_eq!(err.key(), Some("audiosocket[0].allow"));
        assert!(err.to_string().contains("no authentication"), "{err}");
        assert!(listeners(vec![raw("0.0.0.0:9092", &["10.0.0.7"], false)], any).is_ok());
        assert!(listeners(vec![raw("0.0.0.0:9092", &[], true)], any).is_ok());
        assert!(listeners(vec![raw("10.0.0.5:9092", &[], false)], any).is_ok());
        assert!(listeners(vec![raw("127.0.0.1:9092", &[], false)], any).is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        let any = |_: &str| true;
        let err = listeners(vec![raw("nonsense", &[], false)], any).unwrap_err();
        assert_eq!(err.key(), Some("audiosocket[0].listen"));
        let err = listeners(vec![raw("127.0.0.1:9092", &["10.0.0.300"], false)], any).unwrap_err();
        assert_eq!(err.key(), Some("audiosocket[0].allow[0]"));
        let err = listeners(vec![raw("127.0.0.1:9092", &[], false)], |_| false).unwrap_err();
        assert_eq!(err.key(), Some("audiosocket[0].route"));
        let two = vec![
            raw("127.0.0.1:9092", &[], false),
            raw("127.0.0.1:9092", &[], false),
        ];
        let err = listeners(two, any).unwrap_err();
        assert_eq!(err.key(), Some("audiosocket[1].listen"));
    }

    #[test]
    fn the_allow_list_decides_who_connects() {
        let l = listeners(vec![raw("127.0.0.1:9092", &["127.0.0.2"], false)], |_| true)
            .unwrap()
            .remove(0);
        assert!(l.allows("127.0.0.2".parse().unwrap()));
        assert!(!l.allows("127.0.0.1".parse().unwrap()));
        let open = listeners(vec![raw("127.0.0.1:9092", &[], false)], |_| true)
            .unwrap()
            .remove(0);
        assert!(open.allows("127.0.0.1".parse().unwrap()));
    }
}
