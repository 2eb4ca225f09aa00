//! Chunk-size lines of the chunked transfer coding (row 14).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(n) = airlock::http::body::parse_chunk_size(data) {
        assert!(n < 1 << 60);
    }
});
