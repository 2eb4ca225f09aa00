//! The SSRF guard (R4): decides whether an upstream address may be dialled.
//!
//! [`classify`] canonicalises an address (IPv4-mapped, IPv4-compatible, NAT64, 6to4 and Teredo
//! forms are unwrapped to the IPv4 they carry) and names its range. [`Guard::check`] applies the
//! configured exceptions: `--allow-private-ranges` and `--network-allow CIDR` open private ranges,
//! but metadata endpoints stay blocked always. This module does no I/O; the dialer calls it for
//! every resolved address and dials only vetted ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Cidr;

/// What an address is, after unwrapping embedded IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Public,
    /// Loopback, RFC 1918, ULA, link-local, CGNAT, unspecified, "this network" and the like.
    Private,
    /// Cloud metadata endpoints: never dialled.
    Metadata,
    /// Multicast, broadcast, reserved, documentation: never a real upstream.
    Reserved,
}

/// Why an address was refused (`destination_blocked`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("destination_blocked: {ip} is a {class:?} address")]
pub struct Blocked {
    pub ip: IpAddr,
    pub class: Class,
}

/// The configured policy for upstream addresses.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    pub allow_private_ranges: bool,
    pub allow: Vec<Cidr>,
}

impl Guard {
    /// Refuses metadata and reserved addresses always; private ones unless allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let class = classify(ip);
        let allowed = match class {
            Class::Public => true,
            Class::Private => {
                self.allow_private_ranges || self.allow.iter().any(|c| c.contains(ip))
            }
            Class::Metadata | Class::Reserved => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Blocked { ip, class })
        }
    }
}

/// Unwraps IPv4 carried inside IPv6 forms that route to it.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(last32); // ::a.b.c.d (IPv4-compatible, deprecated); not :: or ::1
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(last32); // NAT64 64:ff9b::/96 and local-use 64:ff9b:1::/48
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let x = u32::from(last32) ^ u32::MAX; // Teredo client address, obfuscated
        return Some(Ipv4Addr::from(x));
    }
    None
}

pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if matches!(
        o,
        [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200] | [192, 0, 0, 192]
    ) {
        return Class::Metadata;
    }
    if ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (18..20).contains(&o[1]))
    {
        return Class::Private;
    }
    if ip.is_multicast() || ip.is_broadcast() || ip.is_documentation() || o[0] >= 240 {
        return Class::Reserved;
    }
    Class::Public
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let s = ip.segments();
    if s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254] {
        return Class::Metadata;
    }
    if ip.is_loopback()
        || ip.is_unspecified()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0
    // site-local (deprecated)
    {
        return Class::Private;
    }
    if ip.is_multicast() || (s[0] == 0x2001 && s[1] == 0x0db8) || s[0] == 0x0100 {
        return Class::Reserved;
    }
    Class::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Class {
        classify(s.parse().unwrap())
    }

    /// SECURITY-TESTS.md rows 29-30 (E-01): loopback spellings and IPv6 embeddings of private and
    /// metadata IPv4 are caught.
    #[test]
    fn row29_row30_embedded_and_odd_forms() {
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(c(private), Class::Private, "{private}");
        }
        for meta in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert_eq!(c(meta), Class::Metadata, "{meta}");
        }
        // Teredo: client address 127.0.0.1 stored XOR 0xffffffff.
        let teredo: Ipv6Addr = "2001:0:4136:e378:8000:63bf:80ff:fffe".parse().unwrap();
        assert_eq!(embedded_v4(teredo), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(classify(IpAddr::V6(teredo)), Class::Private);
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(c(public), Class::Public, "{public}");
        }
        for reserved in [
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "ff02::1",
            "2001:db8::1",
            "192.0.2.1",
        ] {
            assert_eq!(c(reserved), Class::Reserved, "{reserved}");
        }
    }

    /// SECURITY-TESTS.md row 33 (E-04): metadata stays blocked when private ranges are allowed.
    #[test]
    fn row33_metadata_blocked_even_when_private_allowed() {
        let g = Guard {
            allow_private_ranges: true,
            allow: vec!["169.254.0.0/16".parse().unwrap()],
        };
        assert!(g.check("10.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check("169.254.169.254".parse().unwrap()).is_err());
        assert!(g.check("::ffff:169.254.169.254".parse().unwrap()).is_err());
        let strict = Guard::default();
        assert!(strict.check("127.0.0.1".parse().unwrap()).is_err());
        let narrow = Guard {
            allow_private_ranges: false,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
        };
        assert!(narrow.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(narrow.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(narrow.check("1.1.1.1".parse().unwrap()).is_ok());
    }
}
