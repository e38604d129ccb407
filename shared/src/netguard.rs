//! SSRF protection for URLs that users give us: a DNS resolver that drops refused addresses
//! (so the address that was checked is the one connected to), a check of IP-literal hosts,
//! and a redirect policy that checks every hop again. The clients never read the
//! environment's proxy variables; a proxy is only used when configured (`fetch.proxy`,
//! `webhook.proxy`), and its own address is checked like a target's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::redact::{self, Show};

/// IPv4 blocks never contacted unless admitted: every entry of IANA's IPv4 Special-Purpose
/// Address Registry, and multicast. Anycast service blocks the registry calls globally
/// reachable (AS112 DNS sinks, AMT relays, PCP/TURN anycast inside 192.0.0.0/24) are refused
/// too: they serve no files, so refusing them costs nothing.
static REFUSED_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",       // "this network" (RFC 791)
        "10.0.0.0/8",      // private (RFC 1918)
        "100.64.0.0/10",   // shared address space, CGNAT (RFC 6598)
        "127.0.0.0/8",     // loopback
        "169.254.0.0/16",  // link-local, cloud metadata
        "172.16.0.0/12",   // private
        "192.0.0.0/24",    // IETF protocol assignments (RFC 6890)
        "192.0.2.0/24",    // documentation, TEST-NET-1
        "192.31.196.0/24", // AS112-v4 (RFC 7535)
        "192.52.193.0/24", // AMT (RFC 7450)
        "192.88.99.0/24",  // deprecated 6to4 relay anycast (RFC 7526)
        "192.168.0.0/16",  // private
        "192.175.48.0/24", // AS112 direct delegation (RFC 7534)
        "198.18.0.0/15",   // benchmarking (RFC 2544)
        "198.51.100.0/24", // documentation, TEST-NET-2
        "203.0.113.0/24",  // documentation, TEST-NET-3
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, and 255.255.255.255 (limited broadcast)
    ]
    .iter()
    .map(|n| n.parse().expect("valid network"))
    .collect()
});

/// IPv6's global unicast space: everything outside it (`::/128`, `::1`, IPv4-compatible and
/// IPv4-translated addresses, `64:ff9b:1::/48`, `100::/64`, `100:0:0:1::/64`, `5f00::/16`,
/// `fc00::/7`, `fe80::/10`, `fec0::/10`, `ff00::/8` and all unassigned space) is refused.
static GLOBAL_UNICAST_V6: LazyLock<Ipv6Net> =
    LazyLock::new(|| "2000::/3".parse().expect("valid network"));

/// Blocks of IANA's IPv6 Special-Purpose Address Registry inside the global unicast space.
/// `2002::/16` (6to4) is not here: it is judged by the IPv4 address it carries.
static REFUSED_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    [
        // IETF protocol assignments: Teredo (2001::/32, its embedded addresses are
        // obfuscated), PCP/TURN/DNS-SD anycast, benchmarking (2001:2::/48), AMT, AS112-v6,
        // ORCHID and ORCHIDv2 (identifiers, not locators), drone remote IDs.
        "2001::/23",
        "2001:db8::/32",     // documentation
        "2620:4f:8000::/48", // AS112 direct delegation
        "3fff::/20",         // documentation (RFC 9637)
    ]
    .iter()
    .map(|n| n.parse().expect("valid network"))
    .collect()
});

/// Domains whose names only resolve inside a local network (RFC 6761, 6762, 8375, 9476,
/// ICANN's `.internal`, and names ICANN will never delegate or that are common on LANs).
/// Only consulted when a proxy resolves names for us: without one, the resolver sees the
/// real addresses and judges those.
const PRIVATE_NAME_SUFFIXES: &[&str] = &[
    "local",
    "internal",
    "home.arpa",
    "lan",
    "localdomain",
    "intranet",
    "corp",
    "home",
    "private",
    "test",
    "invalid",
    "example",
    "onion",
    "alt",
];

/// Whether `ip` is globally reachable unicast, the only kind of address fetched by default.
/// Pure: nothing is resolved or contacted.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => !REFUSED_V4.iter().any(|n| n.contains(&v4)),
        IpAddr::V6(v6) => {
            GLOBAL_UNICAST_V6.contains(&v6) && !REFUSED_V6.iter().any(|n| n.contains(&v6))
        }
    }
}

/// An outgoing HTTP proxy, configured as `<section>.proxy`.
#[derive(Debug, Clone)]
struct Proxy {
    url: url::Url,
    /// The setting that configures it, e.g. `fetch.proxy`.
    key: String,
    /// The section whose `allowed_networks` admits it, e.g. `fetch`.
    section: &'static str,
}

/// Which addresses outgoing requests may reach, and the proxy they go through, if any.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<ipnet::IpNet>,
    proxy: Option<Proxy>,
}

/// A URL or address we refuse to contact, with the reason shown to the user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl AddressPolicy {
    /// Refuses private networks unless `allow_private`; `allowed` are admitted anyway.
    pub fn new(allow_private: bool, allowed: &[ipnet::IpNet]) -> Self {
        Self {
            allow_private,
            allowed: allowed.to_vec(),
            proxy: None,
        }
    }

    /// Sends every request through `proxy` (the setting `<section>.proxy`), if given. Target
    /// names are then resolved by the proxy, so [`Self::check_url`] also refuses names that
    /// only resolve inside a local network.
    pub fn via_proxy(mut self, section: &'static str, proxy: Option<&url::Url>) -> Self {
        self.proxy = proxy.map(|url| Proxy {
            url: url.clone(),
            key: format!("{section}.proxy"),
            section,
        });
        self
    }

    /// Whether `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || self.allowed.iter().any(|n| n.contains(&ip)) || is_global_unicast(ip)
    }

    /// The host of `url` when it is an IP literal this policy refuses.
    pub fn refused_literal(&self, url: &url::Url) -> Option<IpAddr> {
        let ip = literal(url)?;
        (!self.permits(ip)).then_some(ip)
    }

    /// Checks the scheme, and the host when it is an IP literal (no DNS involved then).
    /// Through a proxy, which resolves names itself, also names that would resolve inside
    /// the proxy's network: `localhost` is judged as loopback, private-use domains and
    /// single-label names are refused unless private networks are allowed.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!(
                "refused to fetch {url}: only http and https URLs are allowed"
            )));
        }
        if let Some(ip) = literal(url) {
            return match self.permits(ip) {
                true => Ok(()),
                false => Err(Refused(refusal(url.host_str().unwrap_or_default(), ip))),
            };
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(Refused(format!("refused to fetch {url}: it has no host")));
        };
        match &self.proxy {
            Some(proxy) => self.check_proxied_name(host, proxy),
            // The resolver judges every address the name resolves to.
            None => Ok(()),
        }
    }

    /// A target name the proxy will resolve, judged by what it must resolve to.
    fn check_proxied_name(&self, host: &str, proxy: &Proxy) -> Result<(), Refused> {
        if is_loopback_name(host) {
            return match self.refused_loopback_name(host) {
                Some(ip) => Err(Refused(refusal(host, ip))),
                None => Ok(()),
            };
        }
        if self.allow_private {
            return Ok(());
        }
        match private_name(host) {
            Some(domain) => Err(Refused(format!(
                "refused to fetch from {host}: {domain} names only resolve inside a local network, \
                 and the proxy ({}) would resolve it in its own; use a public name, or an operator \
                 can set {}.allow_private_networks",
                proxy.key, proxy.section
            ))),
            None => Ok(()),
        }
    }

    /// The loopback address `host` stands for when it is `localhost` or below it (RFC 6761:
    /// such names always resolve to loopback) and this policy refuses that address.
    fn refused_loopback_name(&self, host: &str) -> Option<IpAddr> {
        if !is_loopback_name(host) {
            return None;
        }
        [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .find(|ip| !self.permits(*ip))
    }

    /// Why an S3-compatible `endpoint` (of a source rule) cannot be used: not an `http://`
    /// or `https://` URL of a host (and port) without a path or query, or an IP literal (or
    /// `localhost`) this policy refuses. Any other name is checked by the client's resolver
    /// on every connection, as a video URL's is.
    pub fn check_endpoint(&self, endpoint: &url::Url) -> Result<(), String> {
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(format!(
                "must be an http:// or https:// URL, not {}://",
                endpoint.scheme()
            ));
        }
        let Some(host) = endpoint.host_str().filter(|h| !h.is_empty()) else {
            return Err("has no host; give https://HOST[:PORT]".into());
        };
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err("holds a user name or password; give the keys with --s3-access-key-id and --s3-secret-access-key instead".into());
        }
        if endpoint.path() != "/" || endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err("has a path, query or fragment; give https://HOST[:PORT]".into());
        }
        let refused = literal(endpoint)
            .filter(|ip| !self.permits(*ip))
            .or_else(|| self.refused_loopback_name(host));
        if let Some(ip) = refused {
            return Err(format!(
                "{ip} is in a private, loopback, link-local or reserved network, which the worker \
                 refuses as it refuses video URLs there; an operator can admit it with \
                 fetch.allowed_networks (e.g. {})",
                ipnet::IpNet::from(ip)
            ));
        }
        if let Some(proxy) = &self.proxy {
            self.check_proxied_name(host, proxy).map_err(|r| r.0)?;
        }
        Ok(())
    }

    /// Why `proxy`, as the setting `key`, cannot be used: not an `http://` or `https://` URL of
    /// a host (and port), or an address this policy refuses. Its IP literal, or `localhost`,
    /// is checked here, once, since it cannot change; any other name is checked by the
    /// client's resolver on every connection, so the address checked is the one connected to.
    pub fn check_proxy(&self, key: &str, proxy: &url::Url) -> Result<(), String> {
        let section = key.split('.').next().unwrap_or(key);
        if !matches!(proxy.scheme(), "http" | "https") {
            return Err(format!(
                "only http:// and https:// proxies are supported, not {}://",
                proxy.scheme()
            ));
        }
        let Some(host) = proxy.host_str().filter(|h| !h.is_empty()) else {
            return Err("the proxy URL has no host; give http://HOST:PORT".into());
        };
        if proxy.path() != "/" || proxy.query().is_some() || proxy.fragment().is_some() {
            return Err("a proxy URL has no path, query or fragment; give http://HOST:PORT".into());
        }
        let refused = literal(proxy)
            .filter(|ip| !self.permits(*ip))
            .or_else(|| self.refused_loopback_name(host));
        match refused {
            Some(ip) => Err(format!(
                "the proxy's address {ip} is in a private, loopback, link-local or reserved \
                 network; use a proxy on a public address, or admit its network with \
                 {section}.allowed_networks (e.g. {})",
                ipnet::IpNet::from(ip)
            )),
            None => Ok(()),
        }
    }
}

/// The host of `url` when it is an IP literal.
fn literal(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Whether `host` is `localhost` or a name below it.
fn is_loopback_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The private-use domain `host` is in (`.internal`, …), or `a single-label` for a name
/// without a dot, which a resolver completes with its own search domains.
fn private_name(host: &str) -> Option<String> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') {
        return Some("single-label".into());
    }
    PRIVATE_NAME_SUFFIXES
        .iter()
        .find(|suffix| name == **suffix || name.ends_with(&format!(".{suffix}")))
        .map(|suffix| format!(".{suffix}"))
}

/// IPv6 addresses that carry an IPv4 address are judged as the IPv4 address inside:
/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64's well-known prefix (`64:ff9b::/96`) and 6to4
/// (`2002:aabb:ccdd::/48`). (IPv4-compatible `::a.b.c.d` is deprecated and refused as
/// outside the global unicast space.)
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        IpAddr::V4(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    match s {
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

/// Resolves with the system resolver, then keeps only permitted addresses. With a proxy,
/// every name it is asked for is the proxy's (targets are resolved by the proxy).
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            // Named as the proxy in every message, so a video's reason does not blame its source.
            let proxy = policy.proxy.as_ref().map(|p| p.key.as_str());
            let looked_up = tokio::net::lookup_host((host.as_str(), 0)).await;
            let addrs: Vec<SocketAddr> = match (looked_up, proxy) {
                (Ok(addrs), _) => addrs.collect(),
                // A missing proxy is the operator's to fix, not the source's: not "not found".
                (Err(e), Some(key)) => {
                    return Err(format!("cannot resolve the proxy {host} ({key}): {e}").into())
                }
                (Err(e), None) if is_not_found(&e) => {
                    return Err(Box::new(HostNotFound(host.clone())) as _)
                }
                (Err(e), None) => return Err(format!("cannot resolve {host}: {e}").into()),
            };
            let permitted: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let ip = addrs.first().map(|a| a.ip());
                return Err(match (ip, proxy) {
                    (Some(ip), Some(key)) => {
                        Box::new(Refused(refusal(&format!("the proxy {host} ({key})"), ip))) as _
                    }
                    (Some(ip), None) => Box::new(Refused(refusal(&host, ip))) as _,
                    (None, _) => format!("{host} resolves to no address").into(),
                });
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// Options of a guarded client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TCP (and TLS) connect timeout, to the target or to the proxy.
    pub connect_timeout: Duration,
    /// Longest pause between two reads.
    pub read_timeout: Duration,
    /// 0 refuses every redirect.
    pub max_redirects: usize,
    /// Sent as `User-Agent`.
    pub user_agent: String,
}

/// An HTTP client that only reaches addresses `policy` permits, on every hop, through the
/// policy's proxy if it has one. A proxy whose address the policy refuses is a
/// [`crate::process::SettingError`] (exit code 2 at start).
pub fn client(policy: AddressPolicy, options: &ClientOptions) -> anyhow::Result<reqwest::Client> {
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
    build(policy, options, redirect)
}

/// [`client`] that follows no redirect: it answers the 3xx, for a caller that follows
/// redirects itself (deciding at every hop what the request carries) and checks every hop
/// with [`AddressPolicy::check_url`] before it sends it.
pub fn client_without_redirects(
    policy: AddressPolicy,
    options: &ClientOptions,
) -> anyhow::Result<reqwest::Client> {
    build(policy, options, reqwest::redirect::Policy::none())
}

fn build(
    policy: AddressPolicy,
    options: &ClientOptions,
    redirect: reqwest::redirect::Policy,
) -> anyhow::Result<reqwest::Client> {
    let policy = Arc::new(policy);
    // reqwest reads HTTP_PROXY/HTTPS_PROXY/ALL_PROXY by default: a proxy nobody checked
    // would then reach whatever the resolver refuses.
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(proxy) = &policy.proxy {
        let shown = redact::url(proxy.url.as_str(), Show::WithoutCredentials);
        policy.check_proxy(&proxy.key, &proxy.url).map_err(|why| {
            crate::process::SettingError(format!("{} = {shown:?}: {why}", proxy.key))
        })?;
        let all = reqwest::Proxy::all(proxy.url.as_str())
            .map_err(|e| crate::process::SettingError(format!("{} = {shown:?}: {e}", proxy.key)))?;
        builder = builder.proxy(all);
    }
    Ok(builder
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(redirect)
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .user_agent(options.user_agent.clone())
        .build()?)
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
    use ipnet::IpNet;

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

    /// Every entry of IANA's IPv4 and IPv6 Special-Purpose Address Registries (and
    /// multicast, and the deprecated or never-global IPv6 blocks), each with whether its
    /// first and last address is refused. Pure: nothing is contacted.
    const REGISTRY: &[(&str, bool)] = &[
        ("0.0.0.0/8", true),
        ("0.0.0.0/32", true),
        ("10.0.0.0/8", true),
        ("100.64.0.0/10", true),
        ("127.0.0.0/8", true),
        ("169.254.0.0/16", true),
        ("172.16.0.0/12", true),
        ("192.0.0.0/24", true),
        ("192.0.0.0/29", true),
        ("192.0.0.8/32", true),
        ("192.0.0.9/32", true),
        ("192.0.0.10/32", true),
        ("192.0.0.170/32", true),
        ("192.0.0.171/32", true),
        ("192.0.2.0/24", true),
        ("192.31.196.0/24", true),
        ("192.52.193.0/24", true),
        ("192.88.99.0/24", true),
        ("192.168.0.0/16", true),
        ("192.175.48.0/24", true),
        ("198.18.0.0/15", true),
        ("198.51.100.0/24", true),
        ("203.0.113.0/24", true),
        ("224.0.0.0/4", true),
        ("240.0.0.0/4", true),
        ("255.255.255.255/32", true),
        ("::/128", true),
        ("::1/128", true),
        // IPv4-compatible (deprecated), IPv4-translated (SIIT).
        ("::/96", true),
        ("::ffff:0:0:0/96", true),
        // IPv4-mapped and NAT64 carry 0.0.0.0 and 255.255.255.255 at their ends.
        ("::ffff:0:0/96", true),
        ("64:ff9b::/96", true),
        ("64:ff9b:1::/48", true),
        ("100::/64", true),
        ("100:0:0:1::/64", true),
        ("2001::/23", true),
        ("2001::/32", true),
        ("2001:1::1/128", true),
        ("2001:1::2/128", true),
        ("2001:1::3/128", true),
        ("2001:2::/48", true),
        ("2001:3::/32", true),
        ("2001:4:112::/48", true),
        ("2001:10::/28", true),
        ("2001:20::/28", true),
        ("2001:30::/28", true),
        ("2001:db8::/32", true),
        // 6to4 carries 0.0.0.0 and 255.255.255.255 at its ends.
        ("2002::/16", true),
        ("2620:4f:8000::/48", true),
        ("3fff::/20", true),
        ("5f00::/16", true),
        ("fc00::/7", true),
        ("fe80::/10", true),
        ("fec0::/10", true),
        ("ff00::/8", true),
    ];

    #[test]
    fn every_special_purpose_block_is_refused_at_both_ends() {
        for (block, is_refused) in REGISTRY {
            let net: IpNet = block.parse().unwrap();
            for ip in [net.network(), last(net)] {
                assert_eq!(refused(&ip.to_string()), *is_refused, "{ip} in {block}");
            }
        }
    }

    /// The last address of `net` (for IPv6 `broadcast()` is the all-ones host part too).
    fn last(net: IpNet) -> IpAddr {
        net.broadcast()
    }

    #[test]
    fn addresses_just_outside_special_blocks_are_permitted() {
        for ip in [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "191.255.255.255",
            "192.0.1.0",
            "192.0.3.0",
            "192.31.195.255",
            "192.31.197.0",
            "192.52.192.255",
            "192.52.194.0",
            "192.88.98.255",
            "192.88.100.0",
            "192.167.255.255",
            "192.169.0.0",
            "192.175.47.255",
            "192.175.49.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            // Global unicast IPv6 around the special blocks inside 2000::/3.
            "2000::",
            "2001:200::",
            "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db9::",
            "2003::",
            "2620:4f:7fff:ffff:ffff:ffff:ffff:ffff",
            "2620:4f:8001::",
            "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "3fff:1000::",
        ] {
            assert!(!refused(ip), "{ip} should be permitted");
        }
        // Outside 2000::/3 nothing is global unicast: the neighbours of these blocks too.
        for ip in [
            "64:ff9b:0:1::",
            "64:ff9b:2::",
            "100:0:0:2::",
            "5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "5f01::",
            "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe00::",
            "4000::",
            "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_judged_as_ipv4() {
        for (public, private) in [
            ("::ffff:8.8.8.8", "::ffff:10.0.0.1"),
            ("64:ff9b::8.8.8.8", "64:ff9b::192.168.0.1"),
            ("2002:808:808::", "2002:a9fe:a9fe::"),
        ] {
            assert!(!refused(public), "{public} should be permitted");
            assert!(refused(private), "{private} should be refused");
        }
        // Teredo hides its client address (obfuscated): refused whatever it carries.
        assert!(refused("2001:0:808:808::1"));
        // IPv4-translated and IPv4-compatible forms are not used on the wire: refused.
        assert!(refused("::ffff:0:808:808"));
        assert!(refused("::8.8.8.8"));
    }

    fn proxied(allow_private: bool, allowed: &[&str]) -> AddressPolicy {
        let allowed: Vec<IpNet> = allowed.iter().map(|n| n.parse().unwrap()).collect();
        AddressPolicy::new(allow_private, &allowed)
            .via_proxy("fetch", Some(&"http://203.0.113.7:3128".parse().unwrap()))
    }

    #[test]
    fn through_a_proxy_names_are_judged_without_dns() {
        let policy = proxied(false, &[]);
        for url in [
            "http://localhost:8080/a.mp4",
            "http://LOCALHOST./a.mp4",
            "http://video.localhost/a.mp4",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://nas.local/a.mp4",
            "http://router.home.arpa/",
            "http://archive/a.mp4",
            "https://archive./a.mp4",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let err = policy.check_url(&url.parse().unwrap()).unwrap_err();
            assert!(err.0.starts_with("refused to"), "{url}: {err}");
        }
        let err = policy
            .check_url(&"http://metadata.google.internal/".parse().unwrap())
            .unwrap_err();
        assert!(
            err.0.contains(".internal") && err.0.contains("fetch.proxy"),
            "{err}"
        );
        for url in ["https://archive.example.com/a.mp4", "http://8.8.8.8/a.mp4"] {
            assert!(policy.check_url(&url.parse().unwrap()).is_ok(), "{url}");
        }
        // Without a proxy the resolver judges what names resolve to instead.
        let direct = AddressPolicy::new(false, &[]);
        assert!(direct
            .check_url(&"http://archive.internal/a.mp4".parse().unwrap())
            .is_ok());
        // localhost is judged as loopback, which allowed_networks can admit (both families).
        let admitted = proxied(false, &["127.0.0.0/8", "::1/128"]);
        assert!(admitted
            .check_url(&"http://localhost:8080/a.mp4".parse().unwrap())
            .is_ok());
        assert!(admitted
            .check_url(&"http://archive.internal/a.mp4".parse().unwrap())
            .is_err());
        let open = proxied(true, &[]);
        assert!(open
            .check_url(&"http://archive.internal/a.mp4".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn a_proxy_is_checked_like_a_target() {
        let policy = AddressPolicy::new(false, &[]);
        let check = |url: &str| policy.check_proxy("fetch.proxy", &url.parse().unwrap());
        for url in [
            "http://127.0.0.1:3128",
            "http://[::1]:3128",
            "http://10.1.2.3:3128",
            "http://[::ffff:169.254.169.254]:80",
            "http://localhost:3128",
        ] {
            let why = check(url).unwrap_err();
            assert!(why.contains("fetch.allowed_networks"), "{url}: {why}");
        }
        for url in [
            "socks5://203.0.113.7:1080",
            "http://proxy.example.com:3128/path",
        ] {
            assert!(check(url).is_err(), "{url}");
        }
        assert!(check("http://proxy.example.com:3128").is_ok());
        assert!(check("https://user:secret@8.8.8.8:3128/").is_ok());
        let admitted = AddressPolicy::new(false, &["127.0.0.1/32".parse().unwrap()]);
        assert!(admitted
            .check_proxy("fetch.proxy", &"http://127.0.0.1:3128".parse().unwrap())
            .is_ok());
        // The client refuses it too, as a setting error.
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_redirects: 0,
            user_agent: "test".into(),
        };
        let refused = AddressPolicy::new(false, &[])
            .via_proxy("webhook", Some(&"http://127.0.0.1:3128".parse().unwrap()));
        let error = client(refused, &options).unwrap_err();
        assert!(error
            .downcast_ref::<crate::process::SettingError>()
            .is_some());
        assert!(error.to_string().contains("webhook.proxy"), "{error}");
    }

    #[tokio::test]
    async fn a_proxy_name_is_checked_by_the_resolver_on_each_connection() {
        // localhost resolves from the hosts file: nothing leaves the machine.
        let policy = AddressPolicy::new(false, &[])
            .via_proxy("fetch", Some(&"http://localhost:3128".parse().unwrap()));
        let resolver = GuardedResolver {
            policy: Arc::new(policy),
        };
        let Err(error) = resolver.resolve("localhost".parse().unwrap()).await else {
            panic!("the proxy's loopback address must be refused");
        };
        let refused = refusal_in(error.as_ref()).expect("a refusal");
        assert!(
            refused.starts_with("refused to connect to the proxy localhost (fetch.proxy)"),
            "{refused}"
        );
    }

    #[test]
    fn an_s3_endpoint_is_checked_like_a_video_url() {
        let policy = AddressPolicy::new(false, &[]);
        let check = |url: &str| policy.check_endpoint(&url.parse().unwrap());
        for url in [
            "http://169.254.169.254",
            "http://127.0.0.1:9000",
            "http://[::ffff:10.0.0.1]:9000",
            "http://localhost:9000",
        ] {
            let why = check(url).unwrap_err();
            assert!(why.contains("fetch.allowed_networks"), "{url}: {why}");
        }
        for url in [
            "ftp://s3.example.com",
            "https://s3.example.com/bucket",
            "https://s3.example.com/?x=1",
            "https://key:secret@s3.example.com",
        ] {
            let why = check(url).unwrap_err();
            assert!(!why.contains("key:secret"), "{why}");
        }
        assert!(check("https://s3.eu-central-1.amazonaws.com").is_ok());
        assert!(check("https://minio.example.com:9000/").is_ok());
        let admitted = AddressPolicy::new(false, &["127.0.0.1/32".parse().unwrap()]);
        assert!(admitted
            .check_endpoint(&"http://127.0.0.1:9000".parse().unwrap())
            .is_ok());
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
