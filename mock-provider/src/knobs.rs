//! `x-mock-*` request headers: how a test dictates usage, failures and timing.

use std::time::Duration;

use hyper::header::HeaderMap;
use hyper::StatusCode;

/// Ceiling for the body's `max_tokens` default; headers are not capped.
pub const MAX_DEFAULT_OUTPUT: u64 = 4096;
/// Default output tokens when neither a header nor the body says.
pub const DEFAULT_OUTPUT: u64 = 16;
/// Default content chunk count is min(output, this).
pub const MAX_DEFAULT_CHUNKS: u64 = 500;
/// Longest delay a header may ask for: long enough for any timeout test,
/// short enough that a typo cannot wedge a connection for hours.
const MAX_DELAY_MS: u64 = 600_000;

#[derive(Debug, Default)]
pub struct Knobs<'a> {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub model: Option<&'a str>,
    pub chunks: Option<u64>,
    pub status: Option<StatusCode>,
    pub truncate_after: Option<u64>,
    pub delay: Duration,
    pub chunk_delay: Duration,
    pub gzip: bool,
    pub no_usage: bool,
    /// Labels the response with this content type instead of the true one.
    pub content_type: Option<&'a str>,
}

impl<'a> Knobs<'a> {
    /// One pass over the headers instead of a hash lookup per knob. Unknown
    /// `x-mock-*` names are rejected so a typo fails loudly instead of
    /// silently testing the default.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, String> {
        let mut k = Knobs::default();
        for (name, value) in headers {
            let Some(knob) = name.as_str().strip_prefix("x-mock-") else {
                continue;
            };
            let text = value
                .to_str()
                .map_err(|_| format!("header {name} must be visible ASCII"))?
                .trim();
            let num = || -> Result<u64, String> {
                text.parse::<u64>()
                    .map_err(|_| format!("header {name} must be an unsigned integer, got {text:?}"))
            };
            let ms = || -> Result<Duration, String> {
                let n = num()?;
                if n > MAX_DELAY_MS {
                    return Err(format!("header {name} must be at most {MAX_DELAY_MS}"));
                }
                Ok(Duration::from_millis(n))
            };
            match knob {
                "input-tokens" => k.input_tokens = Some(num()?),
                "output-tokens" => k.output_tokens = Some(num()?),
                "cached-tokens" => k.cached_tokens = num()?,
                "cache-write-tokens" => k.cache_write_tokens = num()?,
                "reasoning-tokens" => k.reasoning_tokens = num()?,
                "model" => k.model = Some(text),
                "chunks" => k.chunks = Some(num()?),
                "truncate-after" => k.truncate_after = Some(num()?),
                "delay-ms" => k.delay = ms()?,
                "chunk-delay-ms" => k.chunk_delay = ms()?,
                "status" => {
                    let code = u16::try_from(num()?).ok();
                    // 1xx would be an interim response, not a failure.
                    match code.and_then(|c| StatusCode::from_u16(c).ok()) {
                        Some(s) if s.as_u16() >= 200 => k.status = Some(s),
                        _ => return Err(format!("header {name} must be a status in 200..=999")),
                    }
                }
                "content-encoding" => match text.to_ascii_lowercase().as_str() {
                    "gzip" => k.gzip = true,
                    "identity" | "" => k.gzip = false,
                    _ => return Err(format!("header {name}: only gzip is supported")),
                },
                "content-type" => k.content_type = Some(text),
                "no-usage" => {
                    k.no_usage = !matches!(text.to_ascii_lowercase().as_str(), "0" | "false" | "no")
                }
                _ => return Err(format!("unknown mock header {name}")),
            }
        }
        Ok(k)
    }

    pub fn input_tokens(&self, body_len: usize) -> u64 {
        self.input_tokens
            .unwrap_or_else(|| (u64::try_from(body_len / 4).unwrap_or(u64::MAX)).max(1))
    }

    pub fn output_tokens(&self, requested_max: Option<u64>) -> u64 {
        self.output_tokens
            .unwrap_or_else(|| requested_max.map_or(DEFAULT_OUTPUT, |m| m.min(MAX_DEFAULT_OUTPUT)))
    }

    pub fn content_chunks(&self, output_tokens: u64) -> u64 {
        self.chunks
            .unwrap_or_else(|| output_tokens.clamp(1, MAX_DEFAULT_CHUNKS))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn defaults() {
        let h = headers(&[("content-type", "application/json")]);
        let k = Knobs::from_headers(&h).unwrap();
        assert_eq!(k.input_tokens(0), 1);
        assert_eq!(k.input_tokens(403), 100);
        assert_eq!(k.output_tokens(None), 16);
        assert_eq!(k.output_tokens(Some(10_000)), 4096);
        assert_eq!(k.content_chunks(0), 1);
        assert_eq!(k.content_chunks(3), 3);
        assert_eq!(k.content_chunks(9000), 500);
        assert!(k.status.is_none() && !k.gzip && !k.no_usage);
    }

    #[test]
    fn parses_all_knobs() {
        let h = headers(&[
            ("x-mock-input-tokens", "100"),
            ("x-mock-output-tokens", "9000"),
            ("x-mock-cached-tokens", "7"),
            ("x-mock-status", "503"),
            ("x-mock-content-encoding", "gzip"),
            ("x-mock-no-usage", "1"),
            ("x-mock-chunks", "0"),
            ("x-mock-delay-ms", "5"),
            ("x-mock-content-type", "text/plain"),
        ]);
        let k = Knobs::from_headers(&h).unwrap();
        assert_eq!(k.input_tokens(1), 100);
        assert_eq!(k.output_tokens(Some(1)), 9000);
        assert_eq!(k.cached_tokens, 7);
        assert_eq!(k.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(k.gzip && k.no_usage);
        assert_eq!(k.content_chunks(50), 0);
        assert_eq!(k.delay, Duration::from_millis(5));
        assert_eq!(k.content_type, Some("text/plain"));
    }

    #[test]
    fn rejects_bad_values() {
        for (n, v) in [
            ("x-mock-input-tokens", "-1"),
            ("x-mock-output-tokens", "lots"),
            ("x-mock-status", "99"),
            ("x-mock-status", "1000"),
            ("x-mock-status", "100"),
            ("x-mock-delay-ms", "99999999999"),
            ("x-mock-content-encoding", "br"),
            ("x-mock-imput-tokens", "1"),
        ] {
            let h = headers(&[(n, v)]);
            assert!(Knobs::from_headers(&h).is_err(), "{n}: {v}");
        }
    }
}
