//! A tiny append-only JSON writer.
//!
//! Response bodies have a fixed shape, so writing them directly into one
//! pre-sized buffer avoids building a `serde_json::Value` tree per request,
//! which is the single largest cost a generic serializer would add here.

use std::sync::OnceLock;

use bytes::Bytes;

pub struct JsonBuf(Vec<u8>);

impl JsonBuf {
    pub fn with_capacity(n: usize) -> Self {
        JsonBuf(Vec::with_capacity(n))
    }

    /// Appends pre-formed JSON (or SSE framing) verbatim.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// `raw` for bytes already known to be valid (UTF-8) JSON text.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn num(&mut self, n: u64) -> &mut Self {
        let mut b = itoa::Buffer::new();
        self.0.extend_from_slice(b.format(n).as_bytes());
        self
    }

    /// Appends `s` as a quoted JSON string. Only the model name and error
    /// messages come from clients, but those can contain anything.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'"');
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            if let Some(run) = bytes.get(start..i) {
                self.0.extend_from_slice(run);
            }
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.extend_from_slice(b"\\u00");
                for nibble in [b >> 4, b & 0xf] {
                    self.0
                        .push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
                }
            } else {
                self.0.extend_from_slice(esc);
            }
            start = i + 1;
        }
        if let Some(run) = bytes.get(start..) {
            self.0.extend_from_slice(run);
        }
        self.0.push(b'"');
        self
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.0)
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Largest generated completion text: keeps responses realistic in size while
/// bounding what a huge `x-mock-output-tokens` can make the mock allocate.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// `"tok "` repeated up to MAX_TEXT_BYTES, shared by every request.
fn shared_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| "tok ".repeat(MAX_TEXT_BYTES / 4))
}

fn text_len(words: u64) -> usize {
    usize::try_from(words.saturating_mul(4))
        .unwrap_or(MAX_TEXT_BYTES)
        .min(MAX_TEXT_BYTES)
}

/// Completion text of about 4 bytes per output token ("tok tok tok"),
/// sliced from one shared string so no request has to build it.
pub fn mock_text(output_tokens: u64) -> &'static str {
    // Drop the trailing space of the last word.
    shared_text()
        .get(..text_len(output_tokens).saturating_sub(1))
        .unwrap_or("")
}

/// What K streamed `"tok "` deltas add up to (capped like `mock_text`), for
/// the events that repeat the whole streamed text.
pub fn streamed_text(deltas: u64) -> &'static str {
    shared_text().get(..text_len(deltas)).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings_like_serde_json() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "nl\nx\u{1}\u{1f}",
            "ünï€",
            "",
        ] {
            let mut b = JsonBuf::with_capacity(8);
            b.str(s);
            let ours = String::from_utf8(b.into_vec()).unwrap();
            let parsed: String = serde_json::from_str(&ours).unwrap();
            assert_eq!(parsed, s);
        }
    }

    #[test]
    fn text_is_about_four_bytes_per_token_and_capped() {
        assert_eq!(mock_text(0), "");
        assert_eq!(mock_text(1), "tok");
        assert_eq!(mock_text(3), "tok tok tok");
        assert_eq!(mock_text(u64::MAX).len(), MAX_TEXT_BYTES - 1);
        assert_eq!(streamed_text(0), "");
        assert_eq!(streamed_text(2), "tok tok ");
        assert_eq!(streamed_text(u64::MAX).len(), MAX_TEXT_BYTES);
    }
}
