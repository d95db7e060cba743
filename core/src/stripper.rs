//! Removes the usage report the filter asked for on the client's behalf from the SSE bytes
//! the client sees.
//!
//! The stream's events are parsed and metered elsewhere; this module only cuts the byte
//! spans it is told to drop, forwarding complete events only, so a usage event split over
//! chunks can still be removed whole.

/// Cap on one SSE event's data and on the bytes held back while stripping a usage chunk.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// What to forward for one response chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Forward the chunk as it is.
    Pass,
    /// Forward these bytes instead of the chunk.
    Replace(Vec<u8>),
}

/// Removes the usage-only events the filter asked for from the byte stream the client sees.
///
/// Forwards complete events only, holding back a trailing partial event until it completes
/// (an SSE client cannot act on a partial event anyway, so time-to-token is unchanged).
#[derive(Debug, Default)]
pub(crate) struct UsageStripper {
    held: Vec<u8>,
}

impl UsageStripper {
    /// `chunk` spans stream offsets `chunk_start..chunk_start+len`; held bytes precede it.
    /// `boundary` is the end of the last complete event; `drops` are spans to remove.
    pub(crate) fn process(
        &mut self,
        chunk: &[u8],
        chunk_start: u64,
        boundary: u64,
        drops: &[(u64, u64)],
        end_of_stream: bool,
    ) -> ChunkOutcome {
        let held_start = chunk_start.saturating_sub(self.held.len() as u64);
        let chunk_end = chunk_start.saturating_add(chunk.len() as u64);
        let cut = if end_of_stream {
            chunk_end
        } else {
            boundary.clamp(held_start, chunk_end)
        };
        if self.held.is_empty() && drops.is_empty() && cut == chunk_end {
            return ChunkOutcome::Pass;
        }
        let mut stream = std::mem::take(&mut self.held);
        stream.extend_from_slice(chunk);
        let local =
            |offset: u64| usize::try_from(offset.saturating_sub(held_start)).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(stream.len());
        let mut position = held_start;
        for &(start, end) in drops {
            if start >= position && end <= cut {
                out.extend_from_slice(
                    stream
                        .get(local(position)..local(start))
                        .unwrap_or_default(),
                );
                position = end;
            }
        }
        out.extend_from_slice(stream.get(local(position)..local(cut)).unwrap_or_default());
        self.held = stream.get(local(cut)..).unwrap_or_default().to_vec();
        if self.held.len() > MAX_EVENT_BYTES {
            // An event this large is not a usage chunk: stop holding it back.
            out.append(&mut self.held);
        }
        ChunkOutcome::Replace(out)
    }
}

#[cfg(test)]
mod tests;
