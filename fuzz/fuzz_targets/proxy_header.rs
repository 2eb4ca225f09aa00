//! A balancer's PROXY protocol v2 header (`proxy_protocol_from`): any bytes parse to an address,
//! none, or an error, never a panic; an address comes only from a header that starts with the
//! v2 signature.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some(_)) = airlock::proxy::proxy_protocol::source_of(data) {
        assert!(data.starts_with(b"\r\n\r\n\0\r\nQUIT\n"));
    }
});
