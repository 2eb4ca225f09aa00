//! WebSocket frames from an upstream: whatever the bytes and wherever they are cut, the scrubbed
//! output is well-formed frames and no secret survives in a message (review B7, row 80).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: (u8, Vec<u8>)| {
    use airlock::http::ws::ScrubFrames;
    use airlock::scrub::Masker;
    use airlock::secret::Secret;
    let secret = b"sk-live-123456";
    let secrets = Masker::new(vec![Secret::new(secret.to_vec())]);
    let (cut, input) = data;
    let cut = usize::from(cut).min(input.len());
    let mut f = ScrubFrames::new(&secrets);
    let mut out = match f.push(&input[..cut]) {
        Ok(o) => o,
        Err(_) => return,
    };
    match f.push(&input[cut..]) {
        Ok(o) => out.extend(o),
        Err(_) => return,
    }
    // Re-read what went out: unmasked frames only; concatenate each message's payload.
    let mut rest = &out[..];
    let mut message = Vec::new();
    while rest.len() >= 2 {
        assert_eq!(rest[1] & 0x80, 0, "frames to the agent are unmasked");
        let (len, size) = match rest[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (usize::from(n), 2),
        };
        let payload = &rest[size..size + len];
        if rest[0] & 0x08 != 0 {
            assert!(!payload.windows(secret.len()).any(|w| w == secret));
        } else {
            message.extend_from_slice(payload);
            if rest[0] & 0x80 != 0 {
                assert!(!message.windows(secret.len()).any(|w| w == secret));
                message.clear();
            }
        }
        rest = &rest[size + len..];
    }
    assert!(rest.is_empty(), "output ends on a frame boundary");
});
