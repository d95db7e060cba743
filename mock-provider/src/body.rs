//! Response bodies: complete, cut short, or a paced SSE stream.
//!
//! A hand-written `Body` rather than a task feeding a channel: no extra task
//! or channel per request, and the body itself knows when its last byte was
//! handed to hyper, which is the moment the call's usage counts as reported.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::StatusCode;
use tokio::time::{Instant, Sleep};

use crate::json::JsonBuf;
use crate::stats::{Report, Usage};

/// What a provider handler decided to send, before transport knobs
/// (delay, gzip, truncation, pacing) are applied.
pub enum Reply {
    Json {
        status: StatusCode,
        body: Vec<u8>,
        usage: Option<Usage>,
    },
    /// A paced stream of events; `json` selects `application/json` (Gemini's
    /// streamed JSON array) instead of `text/event-stream`.
    Sse {
        script: SseScript,
        usage: Option<Usage>,
        json: bool,
    },
}

/// Writes event number `i` (0-based within its run) onto the buffer.
pub type Render = Box<dyn Fn(u64, &mut JsonBuf) + Send + Sync>;

/// Events of a generated run are rendered this many at a time into one
/// buffer and handed out as slices of it: one allocation per block, and
/// memory bounded whatever the event count.
const BLOCK_EVENTS: u64 = 32;

/// Events that differ only by a counter (a sequence number, a cumulative
/// token count), produced on demand.
struct Generated {
    render: Render,
    next: u64,
    end: u64,
    block: Bytes,
    // End offsets in `block` of its events not yet handed out, reversed.
    ends: Vec<usize>,
    start: usize,
}

impl Generated {
    fn next_event(&mut self) -> Option<Bytes> {
        if self.ends.is_empty() {
            if self.next >= self.end {
                return None;
            }
            let stop = self.end.min(self.next.saturating_add(BLOCK_EVENTS));
            let mut buf = JsonBuf::with_capacity(self.block.len().max(256));
            self.ends.clear();
            for i in self.next..stop {
                (self.render)(i, &mut buf);
                self.ends.push(buf.len());
            }
            self.ends.reverse();
            self.next = stop;
            self.block = buf.into_bytes();
            self.start = 0;
        }
        let end = self.ends.pop()?;
        let event = self.block.slice(self.start..end);
        self.start = end;
        Some(event)
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.next >= self.end
    }
}

enum Run {
    /// One event sent `n` times, one buffer shared by reference count.
    Repeat(Bytes, u64),
    Generated(Box<Generated>),
}

/// An SSE stream as runs of events, so K identical content deltas cost one
/// buffer shared by reference count rather than K copies.
#[derive(Default)]
pub struct SseScript {
    runs: Vec<Run>,
    // Index of the run the next event comes from.
    pos: usize,
}

impl SseScript {
    pub fn push(&mut self, event: Bytes) {
        self.push_repeated(event, 1);
    }

    pub fn push_repeated(&mut self, event: Bytes, n: u64) {
        if n > 0 {
            self.runs.push(Run::Repeat(event, n));
        }
    }

    /// `n` events, the i-th (from 0) written by `render(i, buf)`.
    pub fn push_generated(&mut self, n: u64, render: Render) {
        if n > 0 {
            self.runs.push(Run::Generated(Box::new(Generated {
                render,
                next: 0,
                end: n,
                block: Bytes::new(),
                ends: Vec::new(),
                start: 0,
            })));
        }
    }

    fn next_event(&mut self) -> Option<Bytes> {
        loop {
            let run = self.runs.get_mut(self.pos)?;
            let event = match run {
                Run::Repeat(event, left) => {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.pos += 1;
                        // The run is spent: hand over its buffer itself.
                        Some(std::mem::take(event))
                    } else {
                        Some(event.clone())
                    }
                }
                Run::Generated(g) => {
                    let e = g.next_event();
                    if g.is_empty() {
                        self.pos += 1;
                    }
                    e
                }
            };
            if event.is_some() {
                return event;
            }
        }
    }

    // Runs are never empty when pushed and `pos` moves past a run as soon as
    // it is spent, so every run from `pos` on still has events.
    fn is_empty(&self) -> bool {
        self.pos >= self.runs.len()
    }

    /// All events in order; for tests and debugging only.
    #[cfg(test)]
    pub fn events(mut self) -> Vec<Bytes> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}

/// Signals hyper to drop the connection without finishing the message.
#[derive(Debug)]
pub struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock response truncated on purpose")
    }
}

impl Error for Aborted {}

/// Before failing the body, return `Pending` once (after waking ourselves):
/// hyper flushes what it has buffered when the body is not ready, whereas an
/// immediate error would discard the events we promised to send.
#[derive(Default)]
enum Abort {
    #[default]
    Flush,
    Fail,
}

impl Abort {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self {
            Abort::Flush => {
                *self = Abort::Fail;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Abort::Fail => Poll::Ready(Some(Err(Aborted))),
        }
    }
}

struct Sse {
    script: SseScript,
    sent: u64,
    truncate_after: Option<u64>,
    delay: Duration,
    // Allocated once per stream and reset between events.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    abort: Abort,
}

enum Kind {
    Full(Option<Bytes>),
    Truncated {
        head: Option<Bytes>,
        declared_len: u64,
        abort: Abort,
    },
    Sse(Box<Sse>),
}

pub struct MockBody {
    kind: Kind,
    report: Option<Report>,
}

impl MockBody {
    pub fn full(data: Bytes, report: Option<Report>) -> Self {
        MockBody {
            kind: Kind::Full(Some(data)),
            report,
        }
    }

    /// Declares the full length but sends only the first half, then aborts.
    pub fn truncated(data: Bytes, report: Report) -> Self {
        let declared_len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        MockBody {
            kind: Kind::Truncated {
                head: Some(data.slice(..data.len() / 2)),
                declared_len,
                abort: Abort::default(),
            },
            report: Some(report),
        }
    }

    pub fn sse(
        script: SseScript,
        truncate_after: Option<u64>,
        delay: Duration,
        report: Report,
    ) -> Self {
        MockBody {
            kind: Kind::Sse(Box::new(Sse {
                script,
                sent: 0,
                truncate_after,
                delay,
                timer: None,
                waiting: false,
                abort: Abort::default(),
            })),
            report: Some(report),
        }
    }

    fn settle(&mut self) {
        if let Some(r) = self.report.as_mut() {
            r.settle();
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(data) => match data.take() {
                Some(d) => {
                    this.settle();
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                None => Poll::Ready(None),
            },
            Kind::Truncated { head, abort, .. } => match head.take() {
                Some(d) if !d.is_empty() => Poll::Ready(Some(Ok(Frame::data(d)))),
                _ => abort.poll(cx),
            },
            Kind::Sse(s) => {
                if s.waiting {
                    if let Some(t) = s.timer.as_mut() {
                        if t.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                    s.waiting = false;
                }
                if s.truncate_after.is_some_and(|k| s.sent >= k) {
                    return s.abort.poll(cx);
                }
                let Some(event) = s.script.next_event() else {
                    // Only reachable when truncating past the end: the whole
                    // script went out, but the message is never terminated.
                    return s.abort.poll(cx);
                };
                s.sent += 1;
                let more_to_do = !s.script.is_empty() || s.truncate_after.is_some();
                if !more_to_do {
                    this.settle();
                } else if !s.delay.is_zero() {
                    let deadline = Instant::now() + s.delay;
                    match s.timer.as_mut() {
                        Some(t) => t.as_mut().reset(deadline),
                        None => s.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    s.waiting = true;
                }
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Truncated { .. } => false,
            Kind::Sse(s) => s.truncate_after.is_none() && s.script.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            // The full length, so the client sees a short Content-Length body.
            Kind::Truncated { declared_len, .. } => SizeHint::with_exact(*declared_len),
            Kind::Sse(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_yields_runs_in_order() {
        let mut s = SseScript::default();
        s.push(Bytes::from_static(b"a"));
        s.push_repeated(Bytes::from_static(b"b"), 3);
        s.push_repeated(Bytes::from_static(b"x"), 0);
        s.push(Bytes::from_static(b"c"));
        let got: Vec<_> = s.events().into_iter().collect();
        assert_eq!(got, ["a", "b", "b", "b", "c"]);
    }

    #[test]
    fn generated_runs_render_in_blocks_and_in_order() {
        let mut s = SseScript::default();
        s.push(Bytes::from_static(b"<"));
        s.push_generated(0, Box::new(|_, _| unreachable!()));
        s.push_generated(
            BLOCK_EVENTS * 2 + 3,
            Box::new(|i, out| {
                out.raw("e").num(i).raw(";");
            }),
        );
        s.push(Bytes::from_static(b">"));
        assert!(!s.is_empty());
        let got = s.events();
        assert_eq!(got.len() as u64, BLOCK_EVENTS * 2 + 5);
        assert_eq!(got[0], "<");
        for (i, e) in got[1..got.len() - 1].iter().enumerate() {
            assert_eq!(e, format!("e{i};").as_bytes());
        }
        assert_eq!(got.last().unwrap(), ">");
    }
}
