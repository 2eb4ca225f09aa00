//! Response scrubbing: whatever the split, output length equals input length and no secret
//! survives (row 25).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: (u8, Vec<u8>)| {
    use airlock::scrub::{Masker, Scrubber};
    use airlock::secret::Secret;
    let secrets = Masker::new(vec![
        Secret::new(b"sk-live-123456".to_vec()),
        Secret::new(b"tok_abcdef".to_vec()),
    ]);
    let (cut, input) = data;
    let cut = usize::from(cut).min(input.len());
    let mut sc = Scrubber::new(&secrets);
    let mut out = sc.push(&input[..cut]);
    out.extend(sc.push(&input[cut..]));
    out.extend(sc.finish());
    assert_eq!(out.len(), input.len());
    assert!(!out.windows(14).any(|w| w == b"sk-live-123456"));
});
