//! The SSRF classifier over every IPv4 and IPv6 address (rows 29-33).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: [u8; 16]| {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v6 = Ipv6Addr::from(data);
    let _ = airlock::netguard::classify(IpAddr::V6(v6));
    let v4 = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    let _ = airlock::netguard::classify(IpAddr::V4(v4));
});
