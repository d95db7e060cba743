//! Incremental Server-Sent Events parser for LLM response streams.
//!
//! The filter forwards every body chunk untouched and only observes it, so the parser must accept
//! arbitrary chunk boundaries (inside a line, between a CR and its LF, inside a UTF-8 BOM) and keep
//! bounded state however long the stream runs. Field values are therefore streamed straight into
//! the current event instead of buffering whole lines: state is the kept `data` and `event` values
//! (each capped at `max_event_bytes`) plus a few bytes of field name, whatever the line length.
//!
//! Unlike a browser `EventSource`, every block ended by a blank line is reported, even one with no
//! fields, so the reported `start..end` ranges tile the stream and callers can map events back to
//! byte positions.

/// UTF-8 byte order mark, skipped once at stream start as the SSE spec requires.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Longest field name worth keeping: only `data` and `event` matter, anything longer is ignored.
const NAME_CAP: usize = 8;

/// One block of the stream terminated by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Value of the last `event:` field in the block, if any (leading single space after the
    /// colon removed, per the SSE spec).
    pub event: Option<String>,
    /// `data:` field values joined with "\n" (per the spec; one leading space after the colon
    /// removed). Empty if none.
    pub data: Vec<u8>,
    /// Absolute stream offset of the block's first byte (the byte after the previous block's
    /// terminating blank line, or 0).
    pub start: u64,
    /// Absolute stream offset just past the blank line that terminated this block.
    pub end: u64,
    /// True if the data exceeded the parser's cap and was cut (the event is then unusable for
    /// JSON).
    pub truncated: bool,
}

/// Where the parser is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// No byte of the line seen yet: a line ending here is blank and ends the block.
    Start,
    /// Reading the field name, before any colon.
    Name,
    /// Comment or ignored field: discard bytes until the line ends.
    Skip,
    /// Inside a `data` value; `fresh` until its first byte, so one leading space can be stripped
    /// even when the chunk boundary falls right after the colon.
    Data { fresh: bool },
    /// Inside an `event` value; `fresh` as for `Data`.
    Event { fresh: bool },
}

/// Incremental SSE parser; see the module docs.
#[derive(Debug, Clone)]
pub struct SseParser {
    max: usize,
    offset: u64,
    /// BOM bytes matched so far at stream start; `None` once the BOM is skipped or ruled out.
    bom_matched: Option<usize>,
    /// The last byte consumed was a CR ending a line, so an LF opening the next chunk belongs to
    /// the same line ending.
    pending_cr: bool,
    /// Block ended by a CR that closed the previous chunk, held back until the next byte shows
    /// whether an LF follows: its `end` then does not depend on where chunks were cut.
    deferred: Option<SseEvent>,
    line: Line,
    name: [u8; NAME_CAP],
    /// Length of the field name; above `NAME_CAP` means "too long to be a field we care about".
    name_len: usize,
    block_start: u64,
    has_fields: bool,
    has_event: bool,
    event: Vec<u8>,
    has_data: bool,
    data: Vec<u8>,
    truncated: bool,
}

impl SseParser {
    /// `max_event_bytes` caps the data kept for one event (excess is dropped and `truncated`
    /// set), and the partial-line buffer.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max: max_event_bytes,
            offset: 0,
            bom_matched: Some(0),
            pending_cr: false,
            deferred: None,
            line: Line::Start,
            name: [0; NAME_CAP],
            name_len: 0,
            block_start: 0,
            has_fields: false,
            has_event: false,
            event: Vec::new(),
            has_data: false,
            data: Vec::new(),
            truncated: false,
        }
    }

    /// Feeds the next chunk; appends every block completed inside it to `out`, in order.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        if self.pending_cr {
            if let Some((&first, tail)) = rest.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    rest = tail;
                    self.offset += 1;
                    if let Some(ev) = self.deferred.as_mut() {
                        ev.end = self.offset;
                        self.block_start = self.offset;
                    }
                }
                if let Some(ev) = self.deferred.take() {
                    out.push(ev);
                }
            }
        }
        while let Some(matched) = self.bom_matched {
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            if BOM.get(matched) == Some(&b) {
                rest = tail;
                self.offset += 1;
                self.bom_matched = (matched + 1 < BOM.len()).then_some(matched + 1);
            } else {
                // Not a BOM after all: the bytes matched so far are ordinary line content.
                self.bom_matched = None;
                self.line_bytes(BOM.get(..matched).unwrap_or_default());
            }
        }
        while !rest.is_empty() {
            let Some((content, tail)) = rest
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .and_then(|i| rest.split_at_checked(i))
            else {
                self.line_bytes(rest);
                self.offset += rest.len() as u64;
                break;
            };
            self.line_bytes(content);
            let (term_len, cr_at_chunk_end) = match tail {
                [b'\r', b'\n', ..] => (2, false),
                [b'\r'] => (1, true),
                _ => (1, false),
            };
            rest = tail.get(term_len..).unwrap_or_default();
            self.offset += (content.len() + term_len) as u64;
            self.pending_cr = cr_at_chunk_end;
            self.end_line(out);
        }
    }

    /// End of stream: if an unterminated block has any field, returns it as a final event (some
    /// servers omit the last blank line). Returns None otherwise.
    pub fn finish(&mut self) -> Option<SseEvent> {
        self.pending_cr = false;
        if let Some(ev) = self.deferred.take() {
            return Some(ev);
        }
        if let Some(matched) = self.bom_matched.take() {
            self.line_bytes(BOM.get(..matched).unwrap_or_default());
        }
        // An unterminated last line still counts: servers that drop the final blank line often
        // drop the final newline too.
        if self.line == Line::Name {
            self.line = self.begin_value();
        }
        self.line = Line::Start;
        let has_fields = self.has_fields;
        let ev = self.take_event();
        has_fields.then_some(ev)
    }

    /// Total bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Consumes line content (no CR or LF) of the current line.
    fn line_bytes(&mut self, mut seg: &[u8]) {
        while let Some(&first) = seg.first() {
            match self.line {
                Line::Start => {
                    if first == b':' {
                        self.line = Line::Skip;
                        return;
                    }
                    self.line = Line::Name;
                    self.name_len = 0;
                    self.has_fields = true;
                }
                Line::Name => {
                    let Some((name, value)) = seg
                        .iter()
                        .position(|&b| b == b':')
                        .and_then(|i| seg.split_at_checked(i))
                    else {
                        self.push_name(seg);
                        return;
                    };
                    self.push_name(name);
                    seg = value.get(1..).unwrap_or_default();
                    self.line = self.begin_value();
                }
                Line::Skip => return,
                Line::Data { fresh } => {
                    if fresh {
                        seg = seg.strip_prefix(b" ").unwrap_or(seg);
                        self.line = Line::Data { fresh: false };
                    }
                    self.truncated |= !append_capped(&mut self.data, seg, self.max);
                    return;
                }
                Line::Event { fresh } => {
                    if fresh {
                        seg = seg.strip_prefix(b" ").unwrap_or(seg);
                        self.line = Line::Event { fresh: false };
                    }
                    self.truncated |= !append_capped(&mut self.event, seg, self.max);
                    return;
                }
            }
        }
    }

    fn push_name(&mut self, bytes: &[u8]) {
        let end = self.name_len.saturating_add(bytes.len());
        match self.name.get_mut(self.name_len..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.name_len = end;
            }
            None => self.name_len = NAME_CAP + 1,
        }
    }

    /// The field name is complete (colon or line end): starts its value and says how to read it.
    fn begin_value(&mut self) -> Line {
        match self.name.get(..self.name_len) {
            Some(b"data") => {
                if self.has_data {
                    self.truncated |= !append_capped(&mut self.data, b"\n", self.max);
                }
                self.has_data = true;
                Line::Data { fresh: true }
            }
            Some(b"event") => {
                self.has_event = true;
                self.event.clear();
                Line::Event { fresh: true }
            }
            _ => Line::Skip,
        }
    }

    /// Called after the line terminator has been consumed and counted in `offset`.
    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        match self.line {
            Line::Start => {
                let ev = self.take_event();
                if self.pending_cr {
                    self.deferred = Some(ev);
                } else {
                    out.push(ev);
                }
            }
            Line::Name => {
                // `name` alone is a field with an empty value.
                self.begin_value();
            }
            Line::Skip | Line::Data { .. } | Line::Event { .. } => {}
        }
        self.line = Line::Start;
    }

    /// Closes the current block at `offset` and resets the per-block state.
    fn take_event(&mut self) -> SseEvent {
        let ev = SseEvent {
            event: self
                .has_event
                .then(|| String::from_utf8_lossy(&self.event).into_owned()),
            data: std::mem::take(&mut self.data),
            start: self.block_start,
            end: self.offset,
            truncated: self.truncated,
        };
        self.block_start = self.offset;
        self.has_fields = false;
        self.has_event = false;
        self.event.clear();
        self.has_data = false;
        self.truncated = false;
        ev
    }
}

/// Appends as much of `bytes` as fits under `cap`; returns false if anything was dropped.
///
/// Grows the buffer geometrically (amortized O(1) per byte even when fed byte by byte) but never
/// reserves past `cap`, so the allocation itself stays bounded.
fn append_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) -> bool {
    let take = bytes.len().min(cap.saturating_sub(buf.len()));
    if take > buf.capacity() - buf.len() {
        let target = (buf.len() + take)
            .max(buf.capacity().saturating_mul(2))
            .min(cap);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes.get(..take).unwrap_or_default());
    take == bytes.len()
}

#[cfg(test)]
pub(crate) mod tests;
