//! The `degrade` budget action: once a budget is used up, calls go on for the rest of the
//! period, but on a cheaper model. This module is the pure part of it:
//!
//! - [`ModelMap`]: which model a requested model is degraded to, from configuration;
//! - [`rewrite_body`]: the request body of an API that names the model in its JSON
//!   ([`ModelIn::Body`]), with `model` replaced;
//! - [`rewrite_path`]: the request path of an API that names the model in the path
//!   ([`ModelIn::Path`], Gemini), with the model segment replaced.
//!
//! # Patterns
//!
//! A mapping is an ordered list of `(pattern, target)` pairs. A pattern is an exact model
//! name, or contains `*` wildcards, each matching any run of characters, empty included
//! (`claude-sonnet-*`, `gpt-4o*`, `*-preview-*`, `*` alone as a catch-all). Any number of
//! `*` is allowed; consecutive ones act as one. No other character is special.
//!
//! Matching is ASCII case-insensitive and is tried on the model as sent and on its
//! [`normalize`]d form (routing prefixes such as `openai/` and `models/` and date or
//! `-latest` suffixes removed), so `claude-sonnet-4-5-20250929` matches both an exact
//! `claude-sonnet-4-5` and `claude-sonnet-*`. Precedence: an exact pattern equal to the model
//! as sent, else an exact pattern equal to the normalized model, else the first wildcard
//! pattern, in configuration order, that matches either form. The first matching rule
//! decides: when its target is the requested model already (compared as sent, or both
//! normalized), the call is not rewritten and no later rule is tried. A degraded model is
//! not mapped again (`a → b` and `b → c` degrade `a` to `b`, never to `c`).
//!
//! Matching a pattern with `k` literal pieces against a name of `n` bytes is `O(n + k)`
//! substring searches (leftmost placement of each piece is optimal for `*`-only globs); it
//! never backtracks and never panics.
//!
//! # What cannot be degraded
//!
//! Azure OpenAI deployments (`/openai/deployments/{name}/...`): the deployment fixes the
//! model and Azure ignores a body `model`. [`rewrite_body`] would still rewrite such a body's
//! `model` field if it had one, to no effect, so callers must check the call's
//! [`Detected::model_in`](crate::providers::Detected::model_in) first and treat
//! [`ModelIn::Deployment`] calls as not degradable.

use crate::pricing::normalize;
use crate::providers::{Api, ModelIn};
use serde_json::Value;
use std::ops::Range;

/// Requested model → cheaper model, from configuration. See the module documentation for
/// the pattern syntax and precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMap {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: Pattern,
    /// As configured: what is sent upstream.
    target: String,
    target_lower: String,
    target_normalized: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Lower-cased model name.
    Exact(String),
    /// Lower-cased literal pieces around the `*`s: `claude-*-4-*` is head `claude-`,
    /// middle `["-4-"]`, tail `""`. Middle pieces are never empty.
    Wildcard {
        head: String,
        middle: Vec<String>,
        tail: String,
    },
}

impl Pattern {
    fn parse(pattern: &str) -> Pattern {
        let lower = pattern.to_ascii_lowercase();
        if !lower.contains('*') {
            return Pattern::Exact(lower);
        }
        let mut pieces = lower.split('*');
        let head = pieces.next().unwrap_or_default().to_string();
        let mut rest: Vec<&str> = pieces.collect();
        // Whatever follows the last `*`: empty when the pattern ends with one.
        let tail = rest.pop().unwrap_or_default().to_string();
        // Empty pieces come from runs of `*`, which act as one.
        let middle = rest
            .into_iter()
            .filter(|piece| !piece.is_empty())
            .map(str::to_string)
            .collect();
        Pattern::Wildcard { head, middle, tail }
    }

    fn is_catch_all(&self) -> bool {
        matches!(self, Pattern::Wildcard { head, middle, tail }
            if head.is_empty() && middle.is_empty() && tail.is_empty())
    }

    /// Whether a wildcard pattern matches `name` (already lower-cased). Exact patterns never
    /// match here: they are looked up first, by equality.
    fn wildcard_matches(&self, name: &str) -> bool {
        let Pattern::Wildcard { head, middle, tail } = self else {
            return false;
        };
        let Some(rest) = name.strip_prefix(head.as_str()) else {
            return false;
        };
        // Anchoring the tail before placing the middle pieces keeps them from overlapping it.
        let Some(mut rest) = rest.strip_suffix(tail.as_str()) else {
            return false;
        };
        for piece in middle {
            match rest.split_once(piece.as_str()) {
                Some((_, after)) => rest = after,
                None => return false,
            }
        }
        true
    }

    /// The canonical text of the pattern (lower-cased, runs of `*` collapsed), for
    /// detecting duplicates.
    fn canonical(&self) -> String {
        match self {
            Pattern::Exact(name) => name.clone(),
            Pattern::Wildcard { head, middle, tail } => {
                let mut text = head.clone();
                for piece in middle {
                    text.push('*');
                    text.push_str(piece);
                }
                text.push('*');
                text.push_str(tail);
                text
            }
        }
    }
}

fn has_blank_or_control(text: &str) -> bool {
    text.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl ModelMap {
    /// Builds the map from configured `(pattern, target)` pairs, in precedence order.
    ///
    /// Rejected, with a message meant as the reason of a configuration error: an empty list;
    /// an empty pattern or target; whitespace or control characters in either; a `*` in a
    /// target (it must be one concrete model); the same pattern twice (compared
    /// case-insensitively, runs of `*` collapsed); a wildcard pattern after the catch-all
    /// `*`, which could never match. Exact patterns after `*` are fine: exact ones win.
    pub fn new(pairs: Vec<(String, String)>) -> Result<ModelMap, String> {
        if pairs.is_empty() {
            return Err("give at least one model mapping (pattern → cheaper model)".to_string());
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(pairs.len());
        let mut catch_all = false;
        for (index, (pattern, target)) in pairs.into_iter().enumerate() {
            let entry = index + 1;
            if pattern.is_empty() {
                return Err(format!("mapping {entry}: the model pattern is empty"));
            }
            if has_blank_or_control(&pattern) {
                return Err(format!(
                    "mapping {entry}: model pattern {pattern:?} contains whitespace or control characters"
                ));
            }
            if target.is_empty() {
                return Err(format!(
                    "mapping {entry}: model pattern {pattern:?} has an empty target model"
                ));
            }
            if has_blank_or_control(&target) {
                return Err(format!(
                    "mapping {entry}: target model {target:?} contains whitespace or control characters"
                ));
            }
            if target.contains('*') {
                return Err(format!(
                    "mapping {entry}: target model {target:?} must be one model name, without `*`"
                ));
            }
            let parsed = Pattern::parse(&pattern);
            let canonical = parsed.canonical();
            if let Some(first) = rules
                .iter()
                .position(|rule| rule.pattern.canonical() == canonical)
            {
                return Err(format!(
                    "mapping {entry}: model pattern {pattern:?} is already mapping {}",
                    first + 1
                ));
            }
            if catch_all && matches!(parsed, Pattern::Wildcard { .. }) {
                return Err(format!(
                    "mapping {entry}: model pattern {pattern:?} comes after the catch-all `*` and can never match; list it before"
                ));
            }
            catch_all |= parsed.is_catch_all();
            rules.push(Rule {
                pattern: parsed,
                target_lower: target.to_ascii_lowercase(),
                target_normalized: normalize(&target),
                target,
            });
        }
        Ok(ModelMap { rules })
    }

    /// The model to send instead of `model`, or None when no pattern matches, when the
    /// matching rule's target is `model` already, or when `model` is blank.
    pub fn target(&self, model: &str) -> Option<&str> {
        if model.trim().is_empty() {
            return None;
        }
        let sent = model.to_ascii_lowercase();
        let normalized = normalize(model);
        let exact = |name: &str| {
            self.rules
                .iter()
                .find(|rule| matches!(&rule.pattern, Pattern::Exact(exact) if exact == name))
        };
        let rule = exact(&sent).or_else(|| exact(&normalized)).or_else(|| {
            self.rules.iter().find(|rule| {
                rule.pattern.wildcard_matches(&sent) || rule.pattern.wildcard_matches(&normalized)
            })
        })?;
        if sent == rule.target_lower || normalized == rule.target_normalized {
            return None;
        }
        Some(&rule.target)
    }
}

/// The outcome of [`rewrite_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Send the body as it is.
    Unchanged,
    /// Send `body` instead: the original with `model` changed from `from` (as the client
    /// sent it) to `to` (as configured).
    Body {
        from: String,
        to: String,
        body: Vec<u8>,
    },
}

/// Rewrites the top-level `model` of a request body to its degraded target.
///
/// For APIs whose model is in the body; one whose model is in the path (see [`rewrite_path`])
/// always gets [`Rewrite::Unchanged`] here. The body must be a JSON object whose `model`
/// is a string; anything else (not JSON, not UTF-8, truncated, not an object, no `model`,
/// a non-string `model`, nesting deeper than serde_json's limit of 128) is left
/// [`Rewrite::Unchanged`] for the provider to judge, as is a model the map does not degrade.
/// A caller that must not let an unreadable body through at the limit tells the two apart
/// with [`Api::prepare_request`] (no model read).
///
/// Only the bytes of the `model` value change: every other byte of the body (key order,
/// whitespace, number spellings, escapes, nested `model` keys) is kept as sent. If `model`
/// appears more than once at the top level, every occurrence gets the target, so no parser
/// upstream (first or last key wins) sees the original model.
///
/// Azure OpenAI deployments ignore a body `model`: check for [`ModelIn::Deployment`] first.
pub fn rewrite_body(api: Api, body: &[u8], map: &ModelMap) -> Rewrite {
    if api.model_in() != ModelIn::Body {
        return Rewrite::Unchanged;
    }
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return Rewrite::Unchanged;
    };
    let Some(Value::String(from)) = request.get("model") else {
        return Rewrite::Unchanged;
    };
    let Some(to) = map.target(from) else {
        return Rewrite::Unchanged;
    };
    let (from, to) = (from.clone(), to.to_string());
    let spliced = members(body, "model").and_then(|found| splice(body, &found.values, &to));
    let body = match spliced {
        Some(body) => body,
        // Unreachable for JSON serde_json accepted, but never leave the model unchanged:
        // re-serialize (key order kept, formatting normalized).
        None => {
            if let Some(model) = request.get_mut("model") {
                *model = Value::String(to.clone());
            }
            match serde_json::to_vec(&request) {
                Ok(body) => body,
                Err(_) => return Rewrite::Unchanged,
            }
        }
    };
    Rewrite::Body { from, to, body }
}

/// `body` with each span replaced by `to` as a JSON string.
fn splice(body: &[u8], spans: &[Range<usize>], to: &str) -> Option<Vec<u8>> {
    if spans.is_empty() {
        return None;
    }
    let literal = serde_json::to_vec(to).ok()?;
    let mut out = Vec::with_capacity(body.len().saturating_add(literal.len()));
    let mut copied = 0;
    for span in spans {
        out.extend_from_slice(body.get(copied..span.start)?);
        out.extend_from_slice(&literal);
        copied = span.end;
    }
    out.extend_from_slice(body.get(copied..)?);
    Some(out)
}

/// Where a top-level key's values are in a JSON object, and where the object closes.
pub(crate) struct Members {
    /// The byte range of the value of each occurrence of the key, in order.
    pub(crate) values: Vec<Range<usize>>,
    /// The offset of the object's closing `}`.
    pub(crate) close: usize,
}

/// The values of every top-level `key` (escaped spellings included) of the JSON object in
/// `body`, which serde_json has already accepted: lets a caller change those bytes and keep
/// every other byte as sent. None if the scan meets anything it does not expect, rather than
/// guessing.
pub(crate) fn members(body: &[u8], key: &str) -> Option<Members> {
    let quoted = format!("\"{key}\"");
    let mut values = Vec::new();
    let mut at = skip_whitespace(body, 0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_whitespace(body, at + 1);
    if body.get(at) == Some(&b'}') {
        return Some(Members { values, close: at });
    }
    loop {
        let key_end = string_end(body, at)?;
        let name = body.get(at..key_end)?;
        let matches = name == quoted.as_bytes()
            || (name.contains(&b'\\')
                && serde_json::from_slice::<String>(name).ok().as_deref() == Some(key));
        at = skip_whitespace(body, key_end);
        if body.get(at) != Some(&b':') {
            return None;
        }
        let value_start = skip_whitespace(body, at + 1);
        let value_end = value_end(body, value_start)?;
        if matches {
            values.push(value_start..value_end);
        }
        at = skip_whitespace(body, value_end);
        match body.get(at) {
            Some(b',') => at = skip_whitespace(body, at + 1),
            Some(b'}') => return Some(Members { values, close: at }),
            _ => return None,
        }
    }
}

fn skip_whitespace(body: &[u8], from: usize) -> usize {
    let skipped = body
        .get(from..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    from + skipped
}

/// The index just past the JSON string that opens at `start`.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    if body.get(start) != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    for (offset, byte) in body.get(start + 1..)?.iter().enumerate() {
        match (escaped, byte) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(start + 1 + offset + 1),
            _ => {}
        }
    }
    None
}

/// The index just past the JSON value that starts at `start`.
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match body.get(start)? {
        b'"' => string_end(body, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut in_string = false;
            let mut escaped = false;
            for (offset, byte) in body.get(start..)?.iter().enumerate() {
                if in_string {
                    match (escaped, byte) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(start + offset + 1);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        // Numbers, true, false, null: up to the next delimiter.
        _ => {
            let length = body
                .get(start..)?
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .count();
            (length > 0).then_some(start + length)
        }
    }
}

/// Rewrites the model a request path names ([`ModelIn::Path`]: Gemini's
/// `/v1beta/models/{model}:generateContent`, say) to its degraded target. Returns
/// `(from, to, new_path)`: only the model segment, as [`Api::path_model_span`] finds it,
/// changes; the rest of the path, the query string and any fragment are kept byte for byte.
///
/// None when the API names no replaceable model in this path, when the map does not degrade
/// the model, or when the target is not a plain path segment (ASCII letters, digits, `-`,
/// `.`, `_`, `~`).
pub fn rewrite_path(api: Api, path: &str, map: &ModelMap) -> Option<(String, String, String)> {
    let span = api.path_model_span(path)?;
    let from = path.get(span.clone())?;
    let to = map.target(from)?;
    if !is_path_segment(to) {
        return None;
    }
    let new_path = format!("{}{}{}", path.get(..span.start)?, to, path.get(span.end..)?);
    Some((from.to_string(), to.to_string(), new_path))
}

fn is_path_segment(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests;
