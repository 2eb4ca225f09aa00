//! CONNECT authorities and host matchers (rows 5-7).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = airlock::proxy::authority::parse_authority(s);
        let _ = airlock::spec::HostPattern::parse(s).map(|p| p.to_string());
        let _ = airlock::policy::check_path(s);
    }
});
