//! Token counts by billing class, as the provider reported them.

/// Tokens of one call, split by the rate each class is billed at.
///
/// Classes never overlap: `input` excludes cached and cache-write tokens, so the sum of all
/// classes but `reasoning` is what the provider bills. `reasoning` is informational: providers
/// bill it as output and already include it in `output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Uncached input tokens, billed at the input rate.
    pub input: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache (Anthropic 5-minute tier, or unsplit).
    pub cache_write_5m: u64,
    /// Input tokens written to the 1-hour prompt cache tier (Anthropic).
    pub cache_write_1h: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Reasoning / thinking tokens, already counted in `output`.
    pub reasoning: u64,
}

impl Usage {
    /// All input-side tokens, whatever their rate.
    pub fn total_input(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }
}
