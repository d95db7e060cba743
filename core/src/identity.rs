//! Who a call is charged to: the agent header, mapped onto a configured budget.
//!
//! This module reads the configuration and never the reverse: the agent id rule and the
//! `default` budget's name live in [`crate::config`], which validates the configured agents
//! with them, and this module applies the same rule to each call's header.

use crate::config::{is_valid_agent_id, ApiKeys, Config, Unidentified, DEFAULT_BUDGET};
use sha2::{Digest, Sha256};
use std::fmt;

/// The request's credential headers, read only when `identity.source` is `api_key`.
/// Debug hides the values: they are provider keys.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `authorization` (OpenAI style `Bearer <key>`).
    pub authorization: Option<String>,
    /// `x-api-key` (Anthropic).
    pub x_api_key: Option<String>,
    /// `x-goog-api-key` (Gemini).
    pub x_goog_api_key: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.is_some())
            .field("x_api_key", &self.x_api_key.is_some())
            .field("x_goog_api_key", &self.x_goog_api_key.is_some())
            .finish()
    }
}

/// The claims of the call's verified JWT (`identity.source: jwt`), as `jwt_authn` put them
/// in its dynamic metadata; unset when no verified token carried the claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    pub agent: Option<String>,
    pub task: Option<String>,
    pub user: Option<String>,
}

/// The call's API key: the bearer token, else `x-api-key`, else `x-goog-api-key`.
pub fn api_key(credentials: &Credentials) -> Option<&str> {
    let bearer = credentials.authorization.as_deref().and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    [
        bearer,
        credentials.x_api_key.as_deref().map(str::trim),
        credentials.x_goog_api_key.as_deref().map(str::trim),
    ]
    .into_iter()
    .flatten()
    .find(|key| !key.is_empty())
}

/// The agent whose key the call carries, if the key is a configured one.
pub fn api_key_agent<'a>(keys: &'a ApiKeys, credentials: &Credentials) -> Option<&'a str> {
    let key = api_key(credentials)?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    keys.agent(&digest)
}

/// Task and user ids are attribution metadata only: bounded and printable, or dropped.
pub fn sanitize_attribute(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    // The usual id is already clean: copied as it is.
    if value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(value.to_string());
    }
    let cleaned: String = value
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    Some(cleaned)
}

/// Who the call is attributed to and which budget pays for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What the agent header said (the attribution id in logs), `-` if absent.
    pub agent: String,
    /// The configured budget charged: the agent itself or `default`.
    pub budget: String,
    pub task: Option<String>,
    pub user: Option<String>,
}

/// Why a call could not be attributed to a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unattributed {
    Missing,
    Invalid,
    Unknown(String),
}

impl Unattributed {
    pub fn reason(&self) -> &'static str {
        match self {
            Unattributed::Missing => "missing",
            Unattributed::Invalid => "invalid",
            Unattributed::Unknown(_) => "unknown",
        }
    }
}

pub fn identify(
    config: &Config,
    agent: Option<&str>,
    task: Option<&str>,
    user: Option<&str>,
) -> Result<Identity, Unattributed> {
    let task = sanitize_attribute(task);
    let user = sanitize_attribute(user);
    let charge_default = |agent: String| Identity {
        agent,
        budget: DEFAULT_BUDGET.to_string(),
        task: task.clone(),
        user: user.clone(),
    };
    let agent = agent.map(str::trim).filter(|a| !a.is_empty());
    match agent {
        None => match config.missing_agent {
            Unidentified::Reject => Err(Unattributed::Missing),
            Unidentified::Default => Ok(charge_default("-".to_string())),
        },
        Some(id) if !is_valid_agent_id(id) => match config.unknown_agent {
            Unidentified::Reject => Err(Unattributed::Invalid),
            Unidentified::Default => Ok(charge_default(
                sanitize_attribute(Some(id)).unwrap_or_default(),
            )),
        },
        Some(id) if config.agents.contains_key(id) => Ok(Identity {
            agent: id.to_string(),
            budget: id.to_string(),
            task,
            user,
        }),
        Some(id) => match config.unknown_agent {
            Unidentified::Reject => Err(Unattributed::Unknown(id.to_string())),
            Unidentified::Default => Ok(charge_default(id.to_string())),
        },
    }
}

#[cfg(test)]
mod tests;
