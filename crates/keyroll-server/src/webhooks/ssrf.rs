//! Which addresses the webhook sender may connect to. Endpoints are registered by admins but
//! named by URL, and a URL can point the server at itself, the cloud metadata service or the
//! private network behind it: loopback, private, link-local, CGNAT, unique-local IPv6 and the
//! IPv4-mapped forms of them are refused unless `webhooks.allow_loopback` /
//! `webhooks.allow_private` say otherwise; unspecified, multicast and broadcast addresses are
//! never a webhook receiver.
//!
//! The filter is applied where the connection is made: [`FilteringResolver`] drops refused
//! addresses from every DNS answer (so a name that resolves differently later, DNS rebinding,
//! gains nothing), and an IP-literal URL, which reqwest connects to without asking the
//! resolver, is checked by [`check_literal`] before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// What the configuration allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// `webhooks.allow_loopback`.
    pub allow_loopback: bool,
    /// `webhooks.allow_private`.
    pub allow_private: bool,
}

/// What kind of address an IP is, for the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reachable on the internet.
    Public,
    /// 127.0.0.0/8, ::1, and 0.0.0.0 / :: (which connect to the host itself).
    Loopback,
    /// RFC 1918, link-local (169.254.0.0/16, fe80::/10), CGNAT (100.64.0.0/10), unique-local
    /// (fc00::/7).
    Private,
    /// Multicast, broadcast, reserved: never a receiver.
    Never,
}

/// The class of `ip` (IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry).
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() || ip.is_unspecified() || a == 0 {
        Class::Loopback
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        Class::Private
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Class::Never
    } else {
        Class::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let first = ip.segments()[0];
    if ip.is_loopback() || ip.is_unspecified() {
        Class::Loopback
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        Class::Private
    } else if ip.is_multicast() {
        Class::Never
    } else {
        Class::Public
    }
}

impl AddressPolicy {
    /// `Ok` when the sender may connect to `ip`, else why not, naming the setting that would
    /// allow it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match classify(ip) {
            Class::Public => Ok(()),
            Class::Loopback if self.allow_loopback => Ok(()),
            Class::Private if self.allow_private => Ok(()),
            Class::Loopback => Err(format!(
                "{ip} is a loopback address; webhooks to it need webhooks.allow_loopback = true \
                 (KEYROLL_WEBHOOKS__ALLOW_LOOPBACK=true)"
            )),
            Class::Private => Err(format!(
                "{ip} is a private or link-local address; webhooks to it need \
                 webhooks.allow_private = true (KEYROLL_WEBHOOKS__ALLOW_PRIVATE=true)"
            )),
            Class::Never => Err(format!(
                "{ip} is a multicast, broadcast or reserved address, never a webhook receiver"
            )),
        }
    }
}

/// The IP of an IP-literal URL host, if it is one.
pub fn literal_host(url: &reqwest::Url) -> Option<IpAddr> {
    // The URL parser has normalised every IPv4 spelling (`2130706433`, `0x7f.1`) to dotted
    // form and brackets IPv6.
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Checks an IP-literal URL (the resolver is not asked for those); a name is left to the
/// resolver.
pub fn check_literal(policy: &AddressPolicy, url: &reqwest::Url) -> Result<(), String> {
    literal_host(url).map_or(Ok(()), |ip| policy.check(ip))
}

/// Checks a URL at registration: its literal address, or every address its name resolves to
/// now, at least one of which must be allowed.
pub async fn check_registration(policy: &AddressPolicy, url: &reqwest::Url) -> Result<(), String> {
    if let Some(ip) = literal_host(url) {
        return policy.check(ip);
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Err(format!("{host} does not resolve: {e}")),
    };
    let mut refusals = Vec::new();
    for a in &addrs {
        match policy.check(a.ip()) {
            Ok(()) => return Ok(()),
            Err(why) => refusals.push(why),
        }
    }
    refusals.dedup();
    Err(format!(
        "{host} resolves only to refused addresses: {}",
        if refusals.is_empty() {
            "none at all".to_owned()
        } else {
            refusals.join("; ")
        }
    ))
}

/// A DNS resolver that answers only the addresses the policy allows (the system resolver
/// underneath).
#[derive(Debug, Clone)]
pub struct FilteringResolver {
    /// What is allowed.
    pub policy: AddressPolicy,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.check(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                let why = all
                    .first()
                    .and_then(|a| policy.check(a.ip()).err())
                    .unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolver as reqwest takes it.
pub fn resolver(policy: AddressPolicy) -> Arc<FilteringResolver> {
    Arc::new(FilteringResolver { policy })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_address_class() {
        for (addr, class) in [
            ("8.8.8.8", Class::Public),
            ("93.184.216.34", Class::Public),
            ("2606:4700::1111", Class::Public),
            ("127.0.0.1", Class::Loopback),
            ("127.10.0.3", Class::Loopback),
            ("::1", Class::Loopback),
            ("0.0.0.0", Class::Loopback),
            ("::", Class::Loopback),
            ("10.1.2.3", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("192.168.1.1", Class::Private),
            ("169.254.169.254", Class::Private),
            ("100.64.0.1", Class::Private),
            ("100.127.255.255", Class::Private),
            ("fd00::1", Class::Private),
            ("fc00::1", Class::Private),
            ("fe80::1", Class::Private),
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::ffff:10.0.0.1", Class::Private),
            ("::ffff:169.254.169.254", Class::Private),
            ("::ffff:8.8.8.8", Class::Public),
            ("224.0.0.1", Class::Never),
            ("255.255.255.255", Class::Never),
            ("240.0.0.1", Class::Never),
            ("ff02::1", Class::Never),
            ("172.32.0.1", Class::Public),
            ("100.128.0.1", Class::Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn the_settings_open_their_class_only_and_are_named() {
        let closed = AddressPolicy::default();
        let err = closed.check(ip("127.0.0.1")).unwrap_err();
        assert!(err.contains("webhooks.allow_loopback"), "{err}");
        let err = closed.check(ip("10.0.0.1")).unwrap_err();
        assert!(err.contains("webhooks.allow_private"), "{err}");
        assert!(closed.check(ip("8.8.8.8")).is_ok());
        let loopback = AddressPolicy {
            allow_loopback: true,
            allow_private: false,
        };
        assert!(loopback.check(ip("::1")).is_ok());
        assert!(loopback.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(loopback.check(ip("192.168.0.1")).is_err());
        let private = AddressPolicy {
            allow_loopback: false,
            allow_private: true,
        };
        assert!(private.check(ip("169.254.169.254")).is_ok());
        assert!(private.check(ip("127.0.0.1")).is_err());
        let open = AddressPolicy {
            allow_loopback: true,
            allow_private: true,
        };
        assert!(open.check(ip("224.0.0.1")).is_err(), "multicast never");
    }

    #[test]
    fn literal_urls_are_checked_without_the_resolver() {
        let closed = AddressPolicy::default();
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]/hook",
            "http://[::ffff:7f00:1]/hook",
            "http://10.0.0.8/hook",
            "http://0.0.0.0:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            let u = reqwest::Url::parse(url).unwrap();
            assert!(check_literal(&closed, &u).is_err(), "{url}");
        }
        let named = reqwest::Url::parse("http://hooks.example/x").unwrap();
        assert!(
            check_literal(&closed, &named).is_ok(),
            "names go to the resolver"
        );
    }

    #[tokio::test]
    async fn localhost_is_refused_at_registration_and_by_the_resolver() {
        use reqwest::dns::Resolve;
        let closed = AddressPolicy::default();
        let u = reqwest::Url::parse("http://localhost:9/hook").unwrap();
        let err = check_registration(&closed, &u).await.unwrap_err();
        assert!(err.contains("allow_loopback"), "{err}");
        let r = FilteringResolver { policy: closed };
        assert!(r.resolve("localhost".parse().unwrap()).await.is_err());
        let open = FilteringResolver {
            policy: AddressPolicy {
                allow_loopback: true,
                allow_private: false,
            },
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(check_registration(&open.policy, &u).await.is_ok());
    }
}
