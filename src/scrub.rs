//! Response scrubbing (SECURITY-TESTS.md row 25, R6 defence in depth): an injected secret echoed back
//! by an upstream is replaced by a same-length mask before the agent sees it.
//!
//! [`Scrubber`] works on a stream: it masks every complete occurrence, and holds back only the
//! shortest tail that could still be the start of a secret, so a secret split across reads is
//! caught and bytes that cannot begin a secret are never delayed. Masks keep lengths, so framing
//! (Content-Length) is unchanged. What is masked is the vault's whole list (`VaultPolicy::scrub`):
//! bodies, the status line, header names and values, and WebSocket messages
//! (`http::ws`). Credentialed requests ask upstream for `identity` encoding, so a compressed echo
//! does not happen; an upstream that re-encodes a value on purpose (base64 of a value injected
//! raw, hex, reversed) is out of scope: it already holds the secret.

use crate::secret::Secret;

/// Byte used for masks.
pub const MASK: u8 = b'*';
/// Values shorter than this are not scrubbed (masking them would shred ordinary text).
pub const MIN_LEN: usize = 6;

/// The secrets to mask, with one automaton finding all of them in a single pass (Aho-Corasick:
/// a vault has dozens of values, each credential, header value and encoded form, and a pass per
/// value would cost bulk transfers most of their speed). Built once per policy, cheap to clone.
///
/// The automaton holds copies of the values that are not wiped when it is dropped; like the
/// opened credentials themselves they live only in the data plane's memory, which is not
/// dumpable.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    secrets: Vec<Secret>,
    finder: Option<aho_corasick::AhoCorasick>,
}

impl Masker {
    /// Masks `secrets` of at least [`MIN_LEN`] bytes (duplicates dropped).
    pub fn new(mut secrets: Vec<Secret>) -> Self {
        secrets.retain(|s| s.len() >= MIN_LEN);
        secrets.sort_by(|a, b| {
            b.len()
                .cmp(&a.len())
                .then_with(|| a.expose().cmp(b.expose()))
        });
        secrets.dedup_by(|a, b| a.expose() == b.expose());
        let finder = (!secrets.is_empty())
            .then(|| aho_corasick::AhoCorasick::new(secrets.iter().map(Secret::expose)).ok())
            .flatten();
        Self { secrets, finder }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Masks every occurrence of every secret in `data`, in place, overlapping ones included.
    pub fn mask(&self, data: &mut [u8]) {
        let Some(finder) = &self.finder else {
            return;
        };
        let spans: Vec<(usize, usize)> = finder
            .find_overlapping_iter(&*data)
            .map(|m| (m.start(), m.end()))
            .collect();
        for (start, end) in spans {
            data[start..end].fill(MASK);
        }
    }

    /// The longest tail of `data` that is the start (not the whole) of a secret: what must be
    /// held back until the next bytes show whether the secret follows.
    fn open_tail(&self, data: &[u8]) -> usize {
        let Some(&last) = data.last() else {
            return 0;
        };
        let mut keep = 0;
        for s in &self.secrets {
            let s = s.expose();
            // Candidate tails end where the secret has the data's last byte.
            for end in memchr::memchr_iter(last, &s[..s.len() - 1]) {
                let k = end + 1;
                if k > keep && k <= data.len() && data.ends_with(&s[..k]) {
                    keep = k;
                }
            }
        }
        keep
    }
}

/// Streaming masker over a [`Masker`]'s secrets.
#[derive(Debug)]
pub struct Scrubber<'a> {
    masker: &'a Masker,
    held: Vec<u8>,
}

impl<'a> Scrubber<'a> {
    pub fn new(masker: &'a Masker) -> Self {
        Self {
            masker,
            held: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        !self.masker.is_empty()
    }

    /// Takes the next bytes of the stream; returns what may be emitted now.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(input);
        self.masker.mask(&mut data);
        let keep = self.masker.open_tail(&data);
        self.held = data.split_off(data.len() - keep);
        data
    }

    /// The end of the stream: what was held cannot complete a secret any more.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Masker {
        Masker::new(vec![
            Secret::new(b"sk-live-123456".to_vec()),
            Secret::new(b"tok_abcdef".to_vec()),
            Secret::new(b"tok".to_vec()),
        ])
    }

    /// Overlapping secrets are masked as a union; a secret inside another too.
    #[test]
    fn overlapping_secrets_masked() {
        let m = Masker::new(vec![
            Secret::new(b"abcdef123".to_vec()),
            Secret::new(b"123xyz789".to_vec()),
            Secret::new(b"def123".to_vec()),
        ]);
        let mut data = b"..abcdef123xyz789..def123..".to_vec();
        m.mask(&mut data);
        assert_eq!(data, b"..***************..******..");
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
