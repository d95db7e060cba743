//! The few host services the filter's logic needs, behind one trait.
//!
//! A host crate implements it (the proxy-wasm filter in the repository root's `src/proxy.rs`
//! and the native dynamic module in `native/`, both driving `adapter/src/adapter.rs`);
//! everything in this crate takes `&dyn Host`, so the ledger, metrics and the per-call steps
//! run natively in unit tests against the in-memory `fake::FakeHost` (built for this crate's
//! tests and with the `test-host` feature).

use std::fmt;

/// A host call that failed, with the proxy-wasm status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// `set_shared_data` saw a newer version of the key than the cas it was given.
    CasMismatch,
    /// Any other non-OK status.
    Status(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::CasMismatch => f.write_str("cas mismatch"),
            HostError::Status(code) => write!(f, "host status {code}"),
        }
    }
}

/// A value read from shared data with its version (cas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub cas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

pub trait Host {
    /// Wall-clock time, Unix nanoseconds.
    fn now_unix_nanos(&self) -> u64;
    /// Reads a shared-data key; `Ok(None)` if it does not exist.
    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, HostError>;
    /// Writes a shared-data key. `cas` 0 is unconditional, and so is any write of a key that
    /// does not exist yet (that is how Envoy's host behaves: see `ledger` for why it matters).
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError>;
    /// Sends an HTTP request to an Envoy cluster; the reply comes to the root context with
    /// the returned token.
    fn dispatch_http(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError>;
    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError>;
}

impl dyn Host + '_ {
    pub fn now_unix_secs(&self) -> i64 {
        i64::try_from(self.now_unix_nanos() / 1_000_000_000).unwrap_or(i64::MAX)
    }
}

/// In-memory host with the same shared-data semantics as Envoy's, for tests and benchmarks.
#[cfg(any(test, feature = "test-host"))]
pub mod fake {
    use super::{Host, HostError, MetricKind, Versioned};
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    pub struct FakeHost {
        now_nanos: Cell<u64>,
        shared: RefCell<BTreeMap<String, Versioned>>,
        next_cas: Cell<u32>,
        metric_names: RefCell<Vec<(MetricKind, String)>>,
        metric_values: RefCell<Vec<i64>>,
        /// Makes the next N `shared_set` calls with a cas fail, to exercise retry paths.
        forced_cas_failures: Cell<u32>,
        /// While set, every shared-data read and write fails with this host status.
        shared_failure: Cell<Option<u32>>,
        dispatched: RefCell<Vec<Dispatched>>,
    }

    /// One `dispatch_http` call the fake received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Dispatched {
        pub token: u32,
        pub cluster: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl FakeHost {
        pub fn new() -> FakeHost {
            FakeHost::default()
        }

        pub fn at_unix_secs(self, secs: i64) -> FakeHost {
            self.set_unix_secs(secs);
            self
        }

        pub fn set_unix_secs(&self, secs: i64) {
            self.now_nanos
                .set(u64::try_from(secs).unwrap_or(0) * 1_000_000_000);
        }

        /// Makes every shared-data read and write fail with `status` (None: works again).
        pub fn fail_shared_data(&self, status: Option<u32>) {
            self.shared_failure.set(status);
        }

        pub fn fail_next_cas_writes(&self, count: u32) {
            self.forced_cas_failures.set(count);
        }

        /// Every `dispatch_http` so far.
        pub fn dispatched(&self) -> Vec<Dispatched> {
            self.dispatched.borrow().clone()
        }

        /// Current value of a metric by full name (counters summed over duplicate ids).
        pub fn metric(&self, name: &str) -> Option<i64> {
            let names = self.metric_names.borrow();
            let values = self.metric_values.borrow();
            let mut found = None;
            for (index, (_, metric_name)) in names.iter().enumerate() {
                if metric_name == name {
                    let value = values.get(index).copied().unwrap_or(0);
                    found = Some(found.unwrap_or(0) + value);
                }
            }
            found
        }

        pub fn metric_names(&self) -> Vec<String> {
            self.metric_names
                .borrow()
                .iter()
                .map(|(_, name)| name.clone())
                .collect()
        }

        pub fn shared_keys(&self) -> Vec<String> {
            self.shared.borrow().keys().cloned().collect()
        }

        pub fn raw_shared(&self, key: &str) -> Option<Vec<u8>> {
            self.shared.borrow().get(key).map(|v| v.value.clone())
        }
    }

    impl Host for FakeHost {
        fn now_unix_nanos(&self) -> u64 {
            self.now_nanos.get()
        }

        fn shared_get(&self, key: &str) -> Result<Option<Versioned>, HostError> {
            if let Some(status) = self.shared_failure.get() {
                return Err(HostError::Status(status));
            }
            Ok(self.shared.borrow().get(key).cloned())
        }

        fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
            if let Some(status) = self.shared_failure.get() {
                return Err(HostError::Status(status));
            }
            let mut shared = self.shared.borrow_mut();
            if let Some(existing) = shared.get(key) {
                if cas != 0 && self.forced_cas_failures.get() > 0 {
                    self.forced_cas_failures
                        .set(self.forced_cas_failures.get() - 1);
                    return Err(HostError::CasMismatch);
                }
                if cas != 0 && cas != existing.cas {
                    return Err(HostError::CasMismatch);
                }
            }
            let next = self.next_cas.get().wrapping_add(1).max(1);
            self.next_cas.set(next);
            shared.insert(
                key.to_string(),
                Versioned {
                    value: value.to_vec(),
                    cas: next,
                },
            );
            Ok(())
        }

        fn dispatch_http(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            _timeout_ms: u32,
        ) -> Result<u32, HostError> {
            let mut dispatched = self.dispatched.borrow_mut();
            let token = u32::try_from(dispatched.len() + 1).map_err(|_| HostError::Status(1))?;
            dispatched.push(Dispatched {
                token,
                cluster: cluster.to_string(),
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
            });
            Ok(token)
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
            let mut names = self.metric_names.borrow_mut();
            names.push((kind, name.to_string()));
            self.metric_values.borrow_mut().push(0);
            u32::try_from(names.len() - 1).map_err(|_| HostError::Status(1))
        }

        fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
            let mut values = self.metric_values.borrow_mut();
            let slot = values.get_mut(id as usize).ok_or(HostError::Status(1))?;
            *slot += delta;
            Ok(())
        }

        fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
            let mut values = self.metric_values.borrow_mut();
            let slot = values.get_mut(id as usize).ok_or(HostError::Status(1))?;
            *slot = i64::try_from(value).unwrap_or(i64::MAX);
            Ok(())
        }
    }
}
