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

use crate::stats::{Report, Usage};

/// What a provider handler decided to send, before transport knobs
/// (delay, gzip, truncation, pacing) are applied.
pub enum Reply {
    Json {
        status: StatusCode,
        body: Vec<u8>,
        usage: Option<Usage>,
    },
    Sse {
        script: SseScript,
        usage: Option<Usage>,
    },
}

/// An SSE stream as runs of identical events, so K content deltas cost one
/// buffer shared by reference count rather than K copies.
#[derive(Default)]
pub struct SseScript {
    // Stored in reverse so the next event is popped off the end.
    runs: Vec<(Bytes, u64)>,
}

impl SseScript {
    pub fn push(&mut self, event: Bytes) {
        self.push_repeated(event, 1);
    }

    pub fn push_repeated(&mut self, event: Bytes, n: u64) {
        if n > 0 {
            self.runs.insert(0, (event, n));
        }
    }

    fn next_event(&mut self) -> Option<Bytes> {
        let (event, left) = self.runs.last_mut()?;
        *left -= 1;
        if *left == 0 {
            self.runs.pop().map(|(e, _)| e)
        } else {
            Some(event.clone())
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
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
}
