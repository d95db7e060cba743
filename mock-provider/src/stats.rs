//! What the mock has REPORTED as usage, so tests can compare the filter's
//! accounting with ground truth.
//!
//! One mutex guards everything: a snapshot must be consistent (the total must
//! equal the sum of the agents), and with one short critical section per call
//! the lock is never the bottleneck next to HTTP parsing.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::json::JsonBuf;

/// Token figures exactly as one response reported them (after clamping), so
/// the stats equal what a correct meter would have read off the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub calls: u64,
    pub usage: Usage,
}

impl Counters {
    // Saturating because token figures come from client headers and may be huge.
    fn add(&mut self, u: &Usage) {
        self.calls = self.calls.saturating_add(1);
        let s = &mut self.usage;
        s.input_tokens = s.input_tokens.saturating_add(u.input_tokens);
        s.output_tokens = s.output_tokens.saturating_add(u.output_tokens);
        s.cached_tokens = s.cached_tokens.saturating_add(u.cached_tokens);
        s.cache_write_tokens = s.cache_write_tokens.saturating_add(u.cache_write_tokens);
        s.reasoning_tokens = s.reasoning_tokens.saturating_add(u.reasoning_tokens);
    }

    fn write_json(&self, out: &mut JsonBuf) {
        let u = &self.usage;
        out.raw("{\"calls\":")
            .num(self.calls)
            .raw(",\"input_tokens\":")
            .num(u.input_tokens)
            .raw(",\"output_tokens\":")
            .num(u.output_tokens)
            .raw(",\"cached_tokens\":")
            .num(u.cached_tokens)
            .raw(",\"cache_write_tokens\":")
            .num(u.cache_write_tokens)
            .raw(",\"reasoning_tokens\":")
            .num(u.reasoning_tokens)
            .raw("}");
    }
}

#[derive(Default)]
struct Inner {
    // BTreeMap so /mock/stats lists agents in a stable order.
    agents: BTreeMap<String, Counters>,
    total: Counters,
    unreported_calls: u64,
    /// Provider calls whose request declared no content-length (sent chunked).
    unsized_requests: u64,
    /// Provider calls carrying an `x-agent-budget-claim-*` header, which carry JWT claims to
    /// the gateway's filter and must stop there.
    claim_header_requests: u64,
}

pub struct Stats {
    inner: Mutex<Inner>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub const fn new() -> Self {
        Stats {
            inner: Mutex::new(Inner {
                agents: BTreeMap::new(),
                total: Counters {
                    calls: 0,
                    usage: Usage {
                        input_tokens: 0,
                        output_tokens: 0,
                        cached_tokens: 0,
                        cache_write_tokens: 0,
                        reasoning_tokens: 0,
                    },
                },
                unreported_calls: 0,
                unsized_requests: 0,
                claim_header_requests: 0,
            }),
        }
    }

    // A panic while holding the lock cannot leave the counters half-updated in
    // a way that matters more than losing the mock, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_reported(&self, agent: &str, usage: &Usage) {
        let mut g = self.lock();
        g.total.add(usage);
        // Look up by &str first so only an agent's first call allocates.
        if let Some(c) = g.agents.get_mut(agent) {
            c.add(usage);
        } else {
            let mut c = Counters::default();
            c.add(usage);
            g.agents.insert(agent.to_owned(), c);
        }
    }

    pub fn record_unreported(&self) {
        let mut g = self.lock();
        g.unreported_calls = g.unreported_calls.saturating_add(1);
    }

    pub fn record_unsized_request(&self) {
        let mut g = self.lock();
        g.unsized_requests = g.unsized_requests.saturating_add(1);
    }

    pub fn record_claim_header_request(&self) {
        let mut g = self.lock();
        g.claim_header_requests = g.claim_header_requests.saturating_add(1);
    }

    /// Forgets agents entirely (rather than keeping zeroed entries) so a test
    /// can compare the whole document after a reset.
    pub fn reset(&self) {
        let mut g = self.lock();
        *g = Inner::default();
    }

    pub fn to_json(&self) -> Bytes {
        let g = self.lock();
        let mut out = JsonBuf::with_capacity(256 + g.agents.len() * 192);
        out.raw("{\"agents\":{");
        for (i, (agent, c)) in g.agents.iter().enumerate() {
            if i > 0 {
                out.raw(",");
            }
            out.str(agent).raw(":");
            c.write_json(&mut out);
        }
        out.raw("},\"total\":");
        g.total.write_json(&mut out);
        out.raw(",\"unreported_calls\":")
            .num(g.unreported_calls)
            .raw(",\"unsized_requests\":")
            .num(g.unsized_requests)
            .raw(",\"claim_header_requests\":")
            .num(g.claim_header_requests)
            .raw("}");
        drop(g);
        out.into_bytes()
    }

    #[cfg(test)]
    pub fn agent(&self, agent: &str) -> Option<Counters> {
        self.lock().agents.get(agent).copied()
    }

    #[cfg(test)]
    pub fn totals(&self) -> (Counters, u64) {
        let g = self.lock();
        (g.total, g.unreported_calls)
    }
}

/// The stats entry owed for one provider call.
///
/// It travels with the response body and is settled only when the last byte
/// of a complete response has been handed to the connection. If it is dropped
/// unsettled (client went away, truncated response, cancelled during a delay)
/// the call counts as unreported, which is what the client actually saw.
pub struct Report {
    stats: &'static Stats,
    agent: Option<HeaderValue>,
    usage: Option<Usage>,
    settled: bool,
}

impl Report {
    pub fn new(stats: &'static Stats, agent: Option<HeaderValue>) -> Self {
        Report {
            stats,
            agent,
            usage: None,
            settled: false,
        }
    }

    /// The usage the response carries; `None` (the default) means the
    /// response has no usage report and completes as an unreported call.
    pub fn set_usage(&mut self, usage: Option<Usage>) {
        self.usage = usage;
    }

    pub fn settle(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        match &self.usage {
            Some(u) => {
                let agent = match &self.agent {
                    None => std::borrow::Cow::Borrowed("-"),
                    Some(v) => String::from_utf8_lossy(v.as_bytes()),
                };
                self.stats.record_reported(&agent, u);
            }
            None => self.stats.record_unreported(),
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.stats.record_unreported();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak() -> &'static Stats {
        Box::leak(Box::new(Stats::new()))
    }

    fn u(i: u64, o: u64) -> Usage {
        Usage {
            input_tokens: i,
            output_tokens: o,
            cached_tokens: 1,
            cache_write_tokens: 2,
            reasoning_tokens: 3,
        }
    }

    #[test]
    fn counts_reported_per_agent_and_total() {
        let s = leak();
        let mut r = Report::new(s, Some(HeaderValue::from_static("a")));
        r.set_usage(Some(u(10, 5)));
        r.settle();
        drop(r);
        let mut r = Report::new(s, None);
        r.set_usage(Some(u(1, 1)));
        r.settle();
        let mut r = Report::new(s, Some(HeaderValue::from_static("a")));
        r.set_usage(Some(u(2, 2)));
        r.settle();

        let a = s.agent("a").unwrap();
        assert_eq!(a.calls, 2);
        assert_eq!(a.usage.input_tokens, 12);
        assert_eq!(a.usage.reasoning_tokens, 6);
        assert_eq!(s.agent("-").unwrap().calls, 1);
        let (total, unreported) = s.totals();
        assert_eq!(total.calls, 3);
        assert_eq!(total.usage.output_tokens, 8);
        assert_eq!(total.usage.cache_write_tokens, 6);
        assert_eq!(unreported, 0);
    }

    #[test]
    fn unsettled_or_usage_less_reports_are_unreported() {
        let s = leak();
        drop(Report::new(s, None)); // dropped mid-flight
        let mut r = Report::new(s, None);
        r.settle(); // completed, but carried no usage
        let mut r = Report::new(s, None);
        r.set_usage(Some(u(1, 1)));
        drop(r); // had usage, but never completed
        let (total, unreported) = s.totals();
        assert_eq!(total.calls, 0);
        assert_eq!(unreported, 3);
    }

    #[test]
    fn json_shape_and_reset() {
        let s = leak();
        let mut r = Report::new(s, Some(HeaderValue::from_static("ag\"x")));
        r.set_usage(Some(u(4, 2)));
        r.settle();
        drop(Report::new(s, None));
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["agents"]["ag\"x"]["calls"], 1);
        assert_eq!(v["agents"]["ag\"x"]["input_tokens"], 4);
        assert_eq!(v["total"]["cached_tokens"], 1);
        assert_eq!(v["total"]["cache_write_tokens"], 2);
        assert_eq!(v["total"]["reasoning_tokens"], 3);
        assert_eq!(v["unreported_calls"], 1);

        s.reset();
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["agents"], serde_json::json!({}));
        assert_eq!(v["total"]["calls"], 0);
        assert_eq!(v["unreported_calls"], 0);
    }

    #[test]
    fn exact_under_concurrency() {
        let s = leak();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let agent =
                            HeaderValue::from_static(if t % 2 == 0 { "even" } else { "odd" });
                        let mut r = Report::new(s, Some(agent));
                        r.set_usage(Some(u(1, 2)));
                        r.settle();
                        drop(Report::new(s, None));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (total, unreported) = s.totals();
        assert_eq!(total.calls, 8000);
        assert_eq!(total.usage.output_tokens, 16000);
        assert_eq!(unreported, 8000);
        assert_eq!(s.agent("even").unwrap().calls, 4000);
    }
}
