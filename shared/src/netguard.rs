//! SSRF protection for URLs that users give us: a DNS resolver that drops refused addresses
//! (so the address that was checked is the one connected to), a check of IP-literal hosts,
//! and a redirect policy that checks every hop again.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Ranges never fetched unless private networks are allowed: loopback, private, link-local
/// (cloud metadata), CGNAT, multicast, unspecified, documentation and reserved space.
static REFUSED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|n| n.parse().expect("valid network"))
    .collect()
});

/// Which addresses outgoing requests may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

/// A URL or address we refuse to contact, with the reason shown to the user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl AddressPolicy {
    /// Refuses private networks unless `allow_private`; `allowed` are admitted anyway.
    pub fn new(allow_private: bool, allowed: &[IpNet]) -> Self {
        Self {
            allow_private,
            allowed: allowed.to_vec(),
        }
    }

    /// Whether `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_private || self.allowed.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        let ip = canonical(ip);
        !REFUSED.iter().any(|n| n.contains(&ip))
    }

    /// The host of `url` when it is an IP literal this policy refuses.
    pub fn refused_literal(&self, url: &url::Url) -> Option<IpAddr> {
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => IpAddr::V4(ip),
            url::Host::Ipv6(ip) => IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        (!self.permits(ip)).then_some(ip)
    }

    /// Checks the scheme, and the host when it is an IP literal (no DNS involved then).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "refused to fetch {url}: only http and https URLs are allowed"
            )));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refused(format!("refused to fetch {url}: it has no host"))),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused(refusal(url.host_str().unwrap_or_default(), ip)))
        }
    }
}

/// IPv6 addresses that carry an IPv4 address are judged as the IPv4 address inside:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
/// 6to4 (`2002:aabb:ccdd::/48`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        IpAddr::V4(std::net::Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => ip,
        [0, 0, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => ip,
    }
}

fn refusal(host: &str, ip: IpAddr) -> String {
    format!(
        "refused to connect to {host} ({ip}): the address is in a private, loopback, link-local or \
         reserved network; an operator can admit it with allowed_networks"
    )
}

/// A name that does not exist in DNS (NXDOMAIN), as opposed to a resolver that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("host not found: {0} does not exist in DNS")]
pub struct HostNotFound(pub String);

/// Whether a lookup failed because the name does not exist (glibc's EAI_NONAME and
/// EAI_NODATA, musl's and BSD's wording), rather than because the resolver failed.
fn is_not_found(error: &std::io::Error) -> bool {
    let text = error.to_string();
    [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
        "nodename nor servname provided",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Resolves with the system resolver, then keeps only permitted addresses.
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let looked_up = tokio::net::lookup_host((host.as_str(), 0)).await;
            let addrs: Vec<SocketAddr> = match looked_up {
                Ok(addrs) => addrs.collect(),
                Err(e) if is_not_found(&e) => return Err(Box::new(HostNotFound(host.clone())) as _),
                Err(e) => return Err(format!("cannot resolve {host}: {e}").into()),
            };
            let permitted: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let ip = addrs.first().map(|a| a.ip());
                return Err(match ip {
                    Some(ip) => Box::new(Refused(refusal(&host, ip))) as _,
                    None => format!("{host} resolves to no address").into(),
                });
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Options of a guarded client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest pause between two reads.
    pub read_timeout: Duration,
    /// 0 refuses every redirect.
    pub max_redirects: usize,
    pub user_agent: String,
}

/// An HTTP client that only reaches addresses `policy` permits, on every hop.
pub fn client(policy: AddressPolicy, options: &ClientOptions) -> reqwest::Result<reqwest::Client> {
    let policy = Arc::new(policy);
    let hop_policy = policy.clone();
    let max_redirects = options.max_redirects;
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects {
            let msg = format!("more than {max_redirects} redirects");
            return attempt.error(msg);
        }
        match hop_policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    });
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(redirect)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .user_agent(options.user_agent.clone())
        .build()
}

/// An error and its causes on one line, without repeats.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The name that does not exist inside a request error, if the error is one.
pub fn host_not_found_in(error: &(dyn std::error::Error + 'static)) -> Option<HostNotFound> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(nx) = e.downcast_ref::<HostNotFound>() {
            return Some(nx.clone());
        }
        source = e.source();
    }
    None
}

/// The refusal inside a request error, if the error is one.
pub fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        !AddressPolicy::new(false, &[]).permits(ip.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(ip), "{ip} should be permitted");
        }
    }

    #[test]
    fn allowed_networks_admit_trusted_private_hosts() {
        let policy = AddressPolicy::new(false, &["10.20.0.0/16".parse().unwrap()]);
        assert!(policy.permits("10.20.3.4".parse().unwrap()));
        assert!(!policy.permits("10.21.3.4".parse().unwrap()));
    }

    #[test]
    fn ip_literal_urls_are_checked_without_dns() {
        for url in [
            "http://[::ffff:127.0.0.1]:8080/hook",
            "http://[::ffff:7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            assert!(
                AddressPolicy::new(false, &[])
                    .check_url(&url.parse().unwrap())
                    .is_err(),
                "{url} should be refused"
            );
        }
        let policy = AddressPolicy::new(false, &[]);
        let err = policy
            .check_url(&"http://169.254.169.254/latest".parse().unwrap())
            .unwrap_err();
        assert!(err.0.contains("169.254.169.254"), "{err}");
        assert!(policy
            .check_url(&"ftp://example.com/a".parse().unwrap())
            .is_err());
        assert!(policy
            .check_url(&"https://example.com/a.mp4".parse().unwrap())
            .is_ok());
    }
}
