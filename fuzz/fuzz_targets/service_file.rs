//! Service files (YAML) and their validation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = airlock::spec::ServiceFile::from_yaml(text) {
            let _ = airlock::spec::check_unique_matchers(&file.services);
        }
    }
});
