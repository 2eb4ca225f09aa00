//! A request's authority (`host:port`), parsed strictly once for CONNECT and absolute-form
//! proxying alike (row 5): a DNS name or IP literal, a port 1-65535 without sign. Owns nothing
//! else: what the host may be reached for is decided by the callers.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::{ErrorKind, ProxyError};

/// Parses a CONNECT authority strictly: `host:port`, a DNS name or IP literal, port 1-65535
/// without sign (row 5). Returns the lowercase host without a trailing dot.
pub fn parse_authority(authority: &str) -> Result<(String, u16), ProxyError> {
    let bad = |m: &str| ProxyError::new(ErrorKind::BadAuthority, m.to_owned());
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("the CONNECT target must be host:port"))?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port must be 1-65535"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = v6.parse().map_err(|_| bad("invalid IPv6 literal"))?;
        return Ok((ip.to_string(), port));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok((host, port));
    }
    crate::spec::host::check_dns_name(&host).map_err(|e| bad(&e))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SECURITY-TESTS.md row 5.
    #[test]
    fn row5_bad_authorities_refused() {
        for bad in [
            "api.x.com",
            "api.x.com:0",
            "api.x.com:65536",
            "api.x.com:+443",
            "user@api.x.com:443",
            "api.x.com#:443",
            "api\\x.com:443",
            "api%2ex.com:443",
            "api x.com:443",
            ":443",
            "[::1:443",
        ] {
            assert_eq!(
                parse_authority(bad).unwrap_err().kind(),
                ErrorKind::BadAuthority,
                "{bad}"
            );
        }
        assert_eq!(
            parse_authority("API.X.com.:443").unwrap(),
            ("api.x.com".into(), 443)
        );
        assert_eq!(parse_authority("[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert_eq!(
            parse_authority("10.0.0.1:443").unwrap(),
            ("10.0.0.1".into(), 443)
        );
    }
}
