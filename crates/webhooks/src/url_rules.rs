//! Which URLs a subscription may deliver to: the operator's allow and deny lists, and never the service itself.
//!
//! A webhook makes this server send requests where a subscriber says, so an unchecked URL would let any consumer
//! probe the operator's internal network. Rules, checked in this order (the first that refuses names itself in
//! the error):
//! 1. the scheme is `http` or `https` and the URL has a host;
//! 2. no `deny` pattern matches the host;
//! 3. the host and port are not the service's own listen address (so a webhook cannot call the admin API);
//! 4. if `allow` is not empty, one of its patterns matches the host.
//!
//! Patterns: `*.example.org` (any subdomain, not `example.org` itself), an exact host name, an IP address, or an
//! IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`). Names are compared case-insensitively, without a
//! trailing dot. IP and network patterns also apply to the addresses a host name resolves to (see
//! [`UrlPolicy::address_denied`], used by the delivery client's resolver), so `deny = ["169.254.0.0/16"]` cannot
//! be sidestepped with a DNS name that points there.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use reqwest::Url;

/// A URL's host, as the patterns see it.
enum Host<'a> {
    Domain(&'a str),
    Ip(IpAddr),
}

/// One pattern of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*.example.org`: stored as `.example.org`.
    Suffix(String),
    Name(String),
    Network {
        addr: IpAddr,
        prefix: u8,
    },
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if t.is_empty() {
            return Err("an empty pattern".to_owned());
        }
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("{text:?}: '*.' must be followed by a domain"));
            }
            return Ok(Pattern::Suffix(format!(".{rest}")));
        }
        if t.contains('*') {
            return Err(format!("{text:?}: '*' is only allowed as a leading '*.'"));
        }
        if let Some((addr, prefix)) = t.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?}: not an IP network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?;
            return Ok(Pattern::Network { addr, prefix });
        }
        let unbracketed = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(&t);
        if let Ok(addr) = unbracketed.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Pattern::Network { addr, prefix });
        }
        if !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            return Err(format!("{text:?}: not a host name, IP address or network"));
        }
        Ok(Pattern::Name(t))
    }

    fn matches_name(&self, host: &str) -> bool {
        match self {
            Pattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Pattern::Name(name) => host == name,
            Pattern::Network { .. } => false,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        let Pattern::Network { addr, prefix } = self else {
            return false;
        };
        match (canonical(*addr), canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn matches(&self, host: &Host<'_>) -> bool {
        match host {
            Host::Domain(name) => self.matches_name(name),
            Host::Ip(ip) => self.matches_ip(*ip),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are the IPv4 address they carry: a deny rule for `10.0.0.0/8`
/// must not be sidestepped by writing the address the other way.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Why a URL was refused: `rule` is stable text a client can show (`"deny 10.0.0.0/8"`, `"allow"`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook URL refused by rule '{rule}': {reason}")]
pub struct UrlRefused {
    pub rule: String,
    pub reason: String,
}

/// The operator's URL rules plus the service's own listen addresses.
#[derive(Clone, Default)]
pub struct UrlPolicy {
    allow: Vec<(String, Pattern)>,
    deny: Vec<(String, Pattern)>,
    own: Vec<SocketAddr>,
}

impl fmt::Debug for UrlPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |list: &[(String, Pattern)]| list.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
        f.debug_struct("UrlPolicy")
            .field("allow", &names(&self.allow))
            .field("deny", &names(&self.deny))
            .field("own", &self.own)
            .finish()
    }
}

impl UrlPolicy {
    /// Builds the policy; a pattern that does not parse is an error naming it (configuration is strict).
    pub fn new(allow: &[String], deny: &[String], own: &[SocketAddr]) -> Result<Self, String> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|t| Pattern::parse(t).map(|p| (t.trim().to_owned(), p)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(UrlPolicy { allow: parse(allow)?, deny: parse(deny)?, own: own.to_vec() })
    }

    /// Checks one URL; returns it parsed.
    pub fn check(&self, text: &str) -> Result<Url, UrlRefused> {
        let refuse = |rule: &str, reason: String| UrlRefused { rule: rule.to_owned(), reason };
        let url = Url::parse(text).map_err(|e| refuse("syntax", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(
                "scheme",
                format!("only http and https URLs are allowed, not {}", url.scheme()),
            ));
        }
        // The URL parser has normalised the host already (IPv4 in dotted decimal, IPv6 in brackets, names in
        // lower case), so parsing its text form is exact.
        let host = match url.host_str() {
            None | Some("") => return Err(refuse("syntax", "the URL has no host".to_owned())),
            Some(text) => {
                let unbracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
                match unbracketed.parse::<IpAddr>() {
                    Ok(ip) => OwnedHost::Ip(ip),
                    Err(_) => OwnedHost::Domain(text.trim_end_matches('.').to_ascii_lowercase()),
                }
            }
        };
        let host_ref = host.as_ref();
        if let Some((text, _)) = self.deny.iter().find(|(_, p)| p.matches(&host_ref)) {
            return Err(refuse(
                &format!("deny {text}"),
                format!("the host matches the deny list entry {text:?}"),
            ));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        if self.is_own(&host_ref, port) {
            return Err(refuse(
                "own-address",
                "the URL points at this service's own listen address".to_owned(),
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|(_, p)| p.matches(&host_ref)) {
            let list = self.allow.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(", ");
            return Err(refuse("allow", format!("the host matches no allow list entry ({list})")));
        }
        Ok(url)
    }

    fn is_own(&self, host: &Host<'_>, port: u16) -> bool {
        self.own.iter().any(|own| {
            if own.port() != port {
                return false;
            }
            let own_ip = canonical(own.ip());
            // A wildcard or loopback listener answers on every loopback address (and "localhost").
            let local_listener = own_ip.is_unspecified() || own_ip.is_loopback();
            match host {
                Host::Domain(name) => {
                    local_listener && (*name == "localhost" || name.ends_with(".localhost"))
                }
                Host::Ip(ip) => {
                    let ip = canonical(*ip);
                    ip == own_ip || (local_listener && (ip.is_loopback() || ip.is_unspecified()))
                }
            }
        })
    }

    /// Whether an address a host name resolved to falls under an IP or network deny pattern (names were
    /// checked already, on the URL).
    pub fn address_denied(&self, ip: IpAddr) -> Option<&str> {
        self.deny.iter().find(|(_, p)| p.matches_ip(ip)).map(|(t, _)| t.as_str())
    }
}

enum OwnedHost {
    Domain(String),
    Ip(IpAddr),
}

impl OwnedHost {
    fn as_ref(&self) -> Host<'_> {
        match self {
            OwnedHost::Domain(name) => Host::Domain(name),
            OwnedHost::Ip(ip) => Host::Ip(*ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], own: &[&str]) -> UrlPolicy {
        let s = |l: &[&str]| l.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let own: Vec<SocketAddr> = own.iter().map(|a| a.parse().expect("socket address")).collect();
        UrlPolicy::new(&s(allow), &s(deny), &own).expect("valid patterns")
    }

    fn rule(p: &UrlPolicy, url: &str) -> Option<String> {
        p.check(url).err().map(|e| e.rule)
    }

    #[test]
    fn default_policy_allows_any_http_or_https_url() {
        let p = policy(&[], &[], &[]);
        for ok in ["http://example.org/hook", "https://10.1.2.3:8443/x?y=1", "http://[::1]:9/", "http://a"] {
            assert_eq!(rule(&p, ok), None, "{ok}");
        }
    }

    #[test]
    fn only_http_and_https_are_allowed() {
        let p = policy(&[], &[], &[]);
        for bad in ["ftp://example.org/", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)"] {
            assert_eq!(rule(&p, bad).as_deref(), Some("scheme"), "{bad}");
        }
        assert_eq!(rule(&p, "not a url").as_deref(), Some("syntax"));
    }

    #[test]
    fn wildcard_allow_matches_subdomains_only() {
        let p = policy(&["*.example.org", "127.0.0.1"], &[], &[]);
        assert_eq!(rule(&p, "https://hooks.example.org/a"), None);
        assert_eq!(rule(&p, "https://a.b.EXAMPLE.org./a"), None, "case and trailing dot do not matter");
        assert_eq!(rule(&p, "http://127.0.0.1:5000/"), None);
        assert_eq!(rule(&p, "https://example.org/").as_deref(), Some("allow"));
        assert_eq!(rule(&p, "https://badexample.org/").as_deref(), Some("allow"));
        assert_eq!(rule(&p, "http://127.0.0.2/").as_deref(), Some("allow"));
    }

    #[test]
    fn deny_beats_allow_and_names_the_entry() {
        let p = policy(&["*.example.org"], &["internal.example.org", "10.0.0.0/8"], &[]);
        assert_eq!(rule(&p, "https://internal.example.org/").as_deref(), Some("deny internal.example.org"));
        let p = policy(&[], &["10.0.0.0/8", "fd00::/8"], &[]);
        assert_eq!(rule(&p, "http://10.200.3.4/").as_deref(), Some("deny 10.0.0.0/8"));
        assert_eq!(rule(&p, "http://[::ffff:10.0.0.1]/").as_deref(), Some("deny 10.0.0.0/8"), "mapped IPv4");
        assert_eq!(rule(&p, "http://[fd12::1]/").as_deref(), Some("deny fd00::/8"));
        assert_eq!(rule(&p, "http://11.0.0.1/"), None);
    }

    #[test]
    fn the_services_own_listen_address_is_always_refused() {
        let p = policy(&[], &[], &["127.0.0.1:8080"]);
        for own in [
            "http://127.0.0.1:8080/v1/topics",
            "http://localhost:8080/",
            "http://[::1]:8080/",
            "http://127.0.0.2:8080/",
        ] {
            assert_eq!(rule(&p, own).as_deref(), Some("own-address"), "{own}");
        }
        assert_eq!(rule(&p, "http://127.0.0.1:8081/"), None, "another port is another service");
        let p = policy(&[], &[], &["0.0.0.0:80"]);
        assert_eq!(rule(&p, "http://localhost/").as_deref(), Some("own-address"), "default port 80");
        let p = policy(&[], &[], &["192.0.2.10:8443"]);
        assert_eq!(rule(&p, "https://192.0.2.10:8443/").as_deref(), Some("own-address"));
        assert_eq!(rule(&p, "https://127.0.0.1:8443/"), None, "a specific listener is not on loopback");
    }

    #[test]
    fn resolved_addresses_are_checked_against_ip_deny_patterns() {
        let p = policy(&[], &["169.254.0.0/16", "metadata.internal"], &[]);
        assert_eq!(p.address_denied("169.254.169.254".parse().expect("ip")), Some("169.254.0.0/16"));
        assert_eq!(p.address_denied("8.8.8.8".parse().expect("ip")), None);
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["", "*", "a.*.org", "10.0.0.0/33", "::/129", "exa mple.org", "*."] {
            let list = vec![bad.to_owned()];
            assert!(UrlPolicy::new(&list, &[], &[]).is_err(), "{bad:?}");
        }
        let ok = vec!["*.example.org".to_owned(), "[::1]".to_owned(), "0.0.0.0/0".to_owned()];
        assert!(UrlPolicy::new(&ok, &ok, &[]).is_ok());
    }
}
