//! The TOML config file.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = airlock::config::FileConfig::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
