//! Request and response heads from raw bytes: strict checks, httparse, framing. A parsed request
//! target never holds a fragment (`#`, row 100).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use airlock::http::head;
    if let Ok(req) = head::parse_request(data) {
        assert!(!req.target.contains('#'), "{}", req.target);
        let _ = head::request_framing(&req);
        let _ = head::wants_close(req.version, &req.headers);
    }
    if let Ok(resp) = head::parse_response(data) {
        let _ = head::response_framing("GET", &resp);
    }
});
