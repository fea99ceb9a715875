//! Who sent a request: the one trusted-proxy rule (`client_addr`) and the proxy blocks it
//! trusts (`TrustedNet`). A leaf module: the edge computes the client once, and everything that
//! names it (log line, history, flood key, usage, admin audit) takes it from here.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A CIDR block of proxies whose `X-Forwarded-For` / `X-Real-IP` are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet {
    addr: IpAddr,
    prefix: u8,
}

impl TrustedNet {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address.
    pub fn parse(text: &str) -> Option<TrustedNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a: IpAddr = text.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(TrustedNet { addr, prefix })
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Who sent a request: the TCP peer itself, or — when the peer is a trusted proxy — the
/// address that proxy forwarded (which has no port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    /// The peer is the client.
    Peer(SocketAddr),
    /// A trusted proxy named the client.
    Forwarded(IpAddr),
}

impl ClientAddr {
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        match self {
            ClientAddr::Peer(a) => a.ip(),
            ClientAddr::Forwarded(ip) => *ip,
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Peer(a) => a.fmt(f),
            ClientAddr::Forwarded(ip) => ip.fmt(f),
        }
    }
}

/// The one client-address rule: the peer, or — when the peer is one of `trusted` proxies — the
/// address it forwarded (`X-Real-IP`, else the last `X-Forwarded-For` entry). A forwarded
/// address only ever names the client in logs, history and usage; it never authorizes.
pub fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[TrustedNet],
) -> Option<ClientAddr> {
    let peer = peer?;
    if trusted.iter().any(|n| n.contains(peer.ip())) {
        // Constant names: no parsing of a header name per request.
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let forwarded = text(&X_REAL_IP)
            .or_else(|| text(&X_FORWARDED_FOR).and_then(|f| f.rsplit(',').next()))
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return Some(ClientAddr::Forwarded(ip));
        }
    }
    Some(ClientAddr::Peer(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_nets() {
        let n = TrustedNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(
            TrustedNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(TrustedNet::parse("10.0.0.0/33").is_none());
        assert!(TrustedNet::parse("nope").is_none());
    }
}
