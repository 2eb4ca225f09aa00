//! Response scrubbing (security.md row 25, R6 defence in depth): an injected secret echoed back
//! by an upstream is replaced by a same-length mask before the agent sees it.
//!
//! [`Scrubber`] works on a stream: it masks every complete occurrence, and holds back only the
//! shortest tail that could still be the start of a secret, so a secret split across reads is
//! caught and bytes that cannot begin a secret are never delayed. Masks keep lengths, so framing
//! (Content-Length) is unchanged. Compressed or re-encoded echoes (gzip, base64 of a value that
//! was injected raw) are out of scope.

use crate::secret::Secret;

/// Byte used for masks.
pub const MASK: u8 = b'*';
/// Values shorter than this are not scrubbed (masking them would shred ordinary text).
pub const MIN_LEN: usize = 6;

/// Streaming masker over a set of secrets.
#[derive(Debug)]
pub struct Scrubber<'a> {
    secrets: &'a [Secret],
    held: Vec<u8>,
}

impl<'a> Scrubber<'a> {
    pub fn new(secrets: &'a [Secret]) -> Self {
        Self {
            secrets,
            held: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Takes the next bytes of the stream; returns what may be emitted now.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(input);
        mask(self.secrets, &mut data);
        let keep = self
            .secrets
            .iter()
            .map(|s| {
                let s = s.expose();
                (1..s.len().min(data.len() + 1))
                    .rev()
                    .find(|&k| data.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        self.held = data.split_off(data.len() - keep);
        data
    }

    /// The end of the stream: what was held cannot complete a secret any more.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Masks every occurrence of every secret in `data`, in place (SIMD substring search).
pub fn mask(secrets: &[Secret], data: &mut [u8]) {
    for s in secrets {
        let s = s.expose();
        if s.is_empty() || s.len() > data.len() {
            continue;
        }
        let finder = memchr::memmem::Finder::new(s);
        let mut from = 0;
        while let Some(at) = finder.find(&data[from..]) {
            let start = from + at;
            data[start..start + s.len()].fill(MASK);
            from = start + s.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Vec<Secret> {
        vec![
            Secret::new(b"sk-live-123456".to_vec()),
            Secret::new(b"tok_abcdef".to_vec()),
        ]
    }

    /// Row 25 (D-03): whole, split across every boundary, repeated.
    #[test]
    fn row25_masks_across_chunk_boundaries() {
        let s = secrets();
        let text = b"echo sk-live-123456 and tok_abcdef twice sk-live-123456!";
        let expected = b"echo ************** and ********** twice **************!";
        for split in 0..text.len() {
            let mut sc = Scrubber::new(&s);
            let mut out = sc.push(&text[..split]);
            out.extend(sc.push(&text[split..]));
            out.extend(sc.finish());
            assert_eq!(out, expected, "split at {split}");
        }
        // Byte by byte.
        let mut sc = Scrubber::new(&s);
        let mut out = Vec::new();
        for b in text {
            out.extend(sc.push(&[*b]));
        }
        out.extend(sc.finish());
        assert_eq!(out, expected);
    }

    #[test]
    fn bytes_that_cannot_start_a_secret_are_not_delayed() {
        let s = secrets();
        let mut sc = Scrubber::new(&s);
        assert_eq!(sc.push(b"data: hello\n\n"), b"data: hello\n\n");
        // "sk-" could start a secret: held back until disproved.
        assert_eq!(sc.push(b"x sk-"), b"x ");
        assert_eq!(sc.push(b"nope"), b"sk-nope");
        assert_eq!(sc.finish(), b"");
    }
}
