//! Who a call is charged to: the agent header, mapped onto a configured budget.
//!
//! This module reads the configuration and never the reverse: the agent id rule and the
//! `default` budget's name live in [`crate::config`], which validates the configured agents
//! with them, and this module applies the same rule to each call's header.

use crate::config::{is_valid_agent_id, Config, Unidentified, DEFAULT_BUDGET};

/// Task and user ids are attribution metadata only: bounded and printable, or dropped.
pub fn sanitize_attribute(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
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
