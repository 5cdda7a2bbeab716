//! Where a webhook may post: `http` or `https` URLs whose host resolves to public
//! addresses only (unless private targets are allowed). The address checked is the
//! address connected to, so a DNS answer that changes between the check and the
//! connection (DNS rebinding) cannot reach an internal service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use memhub_types::{Error, ErrorCode};
use url::Url;

/// A checked destination: the URL and the one address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: Url,
    /// The host name as written in the URL (for TLS and `Host`), when it is not an IP literal.
    pub domain: Option<String>,
    pub addr: SocketAddr,
}

fn refused(why: impl Into<String>) -> Error {
    Error::field(ErrorCode::InvalidField, "url", why)
}

/// Parse and check a webhook URL's form (not yet its addresses).
pub fn parse(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refused(format!("scheme {:?} is not http or https", parsed.scheme())));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("credentials in the URL are refused; the signature authenticates deliveries"));
    }
    if parsed.host().is_none() {
        return Err(refused("the URL has no host"));
    }
    Ok(parsed)
}

/// Whether `ip` is an address on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unique-local, multicast, broadcast, documentation,
/// benchmarking, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 maps to IPv4 we cannot check
}

/// Resolve `url`'s host once and pick the first address allowed.
pub async fn resolve(url: &Url, allow_private: bool) -> Result<Target, Error> {
    let port = url.port_or_known_default().ok_or_else(|| refused("the URL has no port"))?;
    let (domain, candidates): (Option<String>, Vec<SocketAddr>) = match url.host() {
        Some(url::Host::Ipv4(ip)) => (None, vec![SocketAddr::new(IpAddr::V4(ip), port)]),
        Some(url::Host::Ipv6(ip)) => (None, vec![SocketAddr::new(IpAddr::V6(ip), port)]),
        Some(url::Host::Domain(d)) => {
            let found = tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| refused(format!("cannot resolve {d}: {e}")))?
                .collect();
            (Some(d.to_string()), found)
        }
        None => return Err(refused("the URL has no host")),
    };
    let addr = candidates.iter().copied().find(|a| allow_private || is_public(a.ip())).ok_or_else(|| {
        refused(format!(
            "{} resolves to a private, loopback or link-local address; set webhooks.allow_private_targets = true to allow it",
            url.host_str().unwrap_or_default()
        ))
    })?;
    Ok(Target { url: url.clone(), domain, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_private_target_is_refused_naming_the_url() {
        for url in ["http://127.0.0.1:9/hook", "http://[::1]/x", "http://localhost:8080/", "http://169.254.169.254/"] {
            let e = resolve(&parse(url).unwrap(), false).await.unwrap_err();
            assert_eq!(e.field.as_deref(), Some("url"), "{url}");
        }
        let allowed = resolve(&parse("http://127.0.0.1:9/hook").unwrap(), true).await.unwrap();
        assert_eq!(allowed.addr, "127.0.0.1:9".parse().unwrap());
        for bad in ["ftp://example.com/", "http://user:pw@example.com/", "not a url", "file:///etc/passwd"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
