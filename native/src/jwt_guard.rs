//! `identity.source: jwt` on the native build. The ABI reads only top-level metadata values,
//! and `jwt_authn` writes a verified token's payload as a nested Struct, so the claims come
//! through the request headers `jwt_authn`'s `claim_to_headers` writes instead:
//! `x-agent-budget-claim-<claim>`. A client can send such headers itself, so they are
//! trusted only on a stream the guard filter (`agent_budget_jwt_guard`, placed before
//! `jwt_authn`) has marked: the guard removes every claim header the client sent, and only
//! a filter can set the filter-state mark.

use crate::ffi::{Filter, Headers};
pub use agent_budget_core::config::JWT_CLAIM_HEADER_PREFIX as CLAIM_HEADER_PREFIX;

/// The filter name (`filter_name` in the `dynamic_modules` filter) of the guard.
pub const GUARD_FILTER: &str = "agent_budget_jwt_guard";
/// The guard's mark: filter state, which a client cannot set.
const GUARDED_KEY: &str = "agent_budget.jwt_guard";

/// The request header `jwt_authn` is configured to write `claim` to.
pub fn claim_header(claim: &str) -> String {
    format!("{CLAIM_HEADER_PREFIX}{}", claim.to_ascii_lowercase())
}

/// Whether `claim` can be part of a header name (letters, digits, `.`, `_`, `-`; jwt_authn
/// names nested claims with dots).
pub fn claim_fits_a_header(claim: &str) -> bool {
    !claim.is_empty()
        && claim
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The guard takes no configuration; anything else is a mistake worth refusing.
pub fn guard_config_is_empty(config: &[u8]) -> bool {
    let text = config.trim_ascii();
    text.is_empty() || text == b"{}"
}

/// Whether the guard ran on this stream (before `jwt_authn`, where it belongs).
pub fn guarded(filter: Filter) -> bool {
    filter.has_filter_state(GUARDED_KEY)
}

/// The guard's request-headers hook: what the client sent as claims is gone before
/// `jwt_authn` writes the verified ones, and the stream says so.
pub fn on_request_headers(filter: Filter) {
    remove_claim_headers(filter);
    // The mark is read-only once set: a second guard on the route leaves it be.
    if !guarded(filter) && !filter.set_filter_state(GUARDED_KEY, b"1") {
        log::error!(
            "{GUARD_FILTER}: cannot mark the stream; its claim headers will not be trusted"
        );
    }
}

/// Removes every claim header of the request.
fn remove_claim_headers(filter: Filter) {
    let mut names: Vec<String> = Vec::new();
    filter.visit_headers(Headers::Request, &mut |name, _| {
        if name.starts_with(CLAIM_HEADER_PREFIX) && !names.iter().any(|seen| seen == name) {
            names.push(name.to_string());
        }
    });
    for name in &names {
        filter.set_header(Headers::Request, name, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_map_to_lowercase_header_names() {
        assert_eq!(claim_header("sub"), "x-agent-budget-claim-sub");
        assert_eq!(claim_header("Agent.Id"), "x-agent-budget-claim-agent.id");
    }

    #[test]
    fn only_header_safe_claims_fit() {
        for (claim, fits) in [
            ("sub", true),
            ("agent_id", true),
            ("org.agent-name", true),
            ("", false),
            ("https://example.com/agent", false),
            ("agent id", false),
            ("agent:id", false),
        ] {
            assert_eq!(claim_fits_a_header(claim), fits, "{claim:?}");
        }
    }

    #[test]
    fn the_guard_takes_no_configuration() {
        for (config, empty) in [
            (&b""[..], true),
            (b"  \n", true),
            (b"{}", true),
            (b"{\"strip\": true}", false),
            (b"x", false),
        ] {
            assert_eq!(guard_config_is_empty(config), empty, "{config:?}");
        }
    }
}
