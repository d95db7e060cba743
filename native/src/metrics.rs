//! The core's metrics on Envoy's dynamic-module stats. The core names a metric with its
//! labels as name segments (`agent_budget_calls.agent.<a>.outcome.<o>`, see
//! `agent_budget_core::metrics`); the wasm build leaves them to Envoy's `stats_tags`. Here
//! each name becomes a family (`agent_budget_calls`, labels `agent`, `outcome`) defined once
//! per configuration and updated with label values, so Envoy exports the same names and
//! labels without tag rules.
//!
//! Workers count into the registry; the main thread hands the changes to Envoy on the tick
//! (the ABI's configuration-level metric calls), as the wasm build's counts leave on the tick.

use crate::ffi::{ConfigHandle, Family};
use agent_budget_core::host::{HostError, MetricKind};
use std::collections::HashMap;
use std::sync::Mutex;

/// Envoy refused a metric (proxy-wasm's `InternalFailure`, as the wasm build would see).
const REFUSED: HostError = HostError::Status(10);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    kind: Family,
    family: String,
    label_names: Vec<String>,
    label_values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add(u64),
    Set(u64),
}

#[derive(Debug, Default)]
struct Inner {
    metrics: Vec<Metric>,
    ids: HashMap<(Family, String), u32>,
    /// Envoy's id of each family (None: Envoy refused it).
    families: HashMap<(Family, String, Vec<String>), Option<usize>>,
    changes: HashMap<u32, Change>,
}

#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// A core metric name split into its family and `(label, value)` pairs; a name whose
/// segments do not pair up is a family of its own, without labels.
fn split(name: &str) -> (String, Vec<String>, Vec<String>) {
    let mut segments = name.split('.');
    let family = segments.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = segments.collect();
    if rest.len() % 2 != 0 {
        return (name.to_string(), Vec::new(), Vec::new());
    }
    let (names, values) = rest
        .chunks(2)
        .filter_map(|pair| match pair {
            [label, value] => Some((label.to_string(), value.to_string())),
            _ => None,
        })
        .unzip();
    (family, names, values)
}

impl Registry {
    /// The id of a metric by its core name (the same id for the same name, on every worker).
    pub fn define(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        let kind = match kind {
            MetricKind::Counter => Family::Counter,
            MetricKind::Gauge => Family::Gauge,
        };
        let mut inner = self.inner.lock().map_err(|_| REFUSED)?;
        if let Some(id) = inner.ids.get(&(kind, name.to_string())) {
            return Ok(*id);
        }
        let id = u32::try_from(inner.metrics.len()).map_err(|_| REFUSED)?;
        let (family, label_names, label_values) = split(name);
        inner.metrics.push(Metric {
            kind,
            family,
            label_names,
            label_values,
        });
        inner.ids.insert((kind, name.to_string()), id);
        Ok(id)
    }

    pub fn increment(&self, id: u32, delta: i64) -> Result<(), HostError> {
        // Counters only grow.
        let delta = u64::try_from(delta).map_err(|_| HostError::Status(2))?;
        let mut inner = self.inner.lock().map_err(|_| REFUSED)?;
        if inner.metrics.get(id as usize).is_none() {
            return Err(HostError::Status(1));
        }
        let change = match inner.changes.get(&id) {
            Some(Change::Add(pending)) => Change::Add(pending.saturating_add(delta)),
            _ => Change::Add(delta),
        };
        inner.changes.insert(id, change);
        Ok(())
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), HostError> {
        let mut inner = self.inner.lock().map_err(|_| REFUSED)?;
        if inner.metrics.get(id as usize).is_none() {
            return Err(HostError::Status(1));
        }
        inner.changes.insert(id, Change::Set(value));
        Ok(())
    }

    /// Declares every family the core emits (Envoy takes definitions only while a
    /// configuration loads: config_new, on the main thread). A family Envoy refuses is
    /// logged and its changes dropped.
    pub fn declare(&self, config: ConfigHandle) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        for (kind, family, labels) in agent_budget_core::metrics::families() {
            let kind = match kind {
                MetricKind::Counter => Family::Counter,
                MetricKind::Gauge => Family::Gauge,
            };
            let defined = config.define(kind, family, labels);
            if defined.is_none() {
                log::warn!("metric {family} unavailable: Envoy refused it");
            }
            let labels = labels.iter().map(|label| label.to_string()).collect();
            inner
                .families
                .insert((kind, family.to_string(), labels), defined);
        }
    }

    /// Hands every change since the last flush to Envoy (main thread only). A change of a
    /// family [`Registry::declare`] did not declare (or Envoy refused) is dropped.
    pub fn flush(&self, config: ConfigHandle) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let changes: Vec<(u32, Change)> = inner.changes.drain().collect();
        for (id, change) in changes {
            let Some(metric) = inner.metrics.get(id as usize).cloned() else {
                continue;
            };
            let key = (
                metric.kind,
                metric.family.clone(),
                metric.label_names.clone(),
            );
            let family = *inner.families.entry(key).or_insert_with(|| {
                let labels: Vec<&str> = metric.label_names.iter().map(String::as_str).collect();
                let defined = config.define(metric.kind, &metric.family, &labels);
                if defined.is_none() {
                    log::warn!("metric {} unavailable: Envoy refused it", metric.family);
                }
                defined
            });
            let Some(family) = family else {
                continue;
            };
            let values: Vec<&str> = metric.label_values.iter().map(String::as_str).collect();
            match change {
                Change::Add(delta) => config.increment_counter(family, &values, delta),
                Change::Set(value) => config.set_gauge(family, &values, value),
            };
        }
    }

    /// The changes waiting for the next flush, by core name (for tests).
    #[cfg(test)]
    fn pending(&self) -> Vec<(String, Change)> {
        let inner = self.inner.lock().unwrap();
        let mut names: HashMap<u32, String> = HashMap::new();
        for ((_, name), id) in &inner.ids {
            names.insert(*id, name.clone());
        }
        let mut out: Vec<(String, Change)> = inner
            .changes
            .iter()
            .map(|(id, change)| (names[id].clone(), *change))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests;
