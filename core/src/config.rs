//! Plugin configuration: parsed strictly, then validated into a checked [`Config`].
//!
//! Envoy hands the configuration over as the JSON string of a `StringValue`, or as the
//! binary protobuf of a `Struct` when it is written as a YAML map; both become the same
//! [`RawConfig`]. Every rejection names the field (`agents.research-bot.daily_usd`) so the
//! operator can fix it; `on_configure` then returns false and Envoy keeps the last good one.

use crate::degrade::ModelMap;
use crate::pbstruct;
use crate::period::TimeZone;
use crate::pricing::{usd_to_micro, Price, PriceTable};
use crate::providers::{azure_deployment, Api, Detected};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// A configuration rejection: which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field; empty for the document as a whole.
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid configuration: field `{}`: {}",
                self.field, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    agent_header: Option<String>,
    #[serde(default)]
    task_header: Option<String>,
    #[serde(default)]
    user_header: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    missing_agent: Option<Unidentified>,
    #[serde(default)]
    unknown_agent: Option<Unidentified>,
    #[serde(default)]
    ledger_unavailable: Option<LedgerUnavailable>,
    agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    pricing: BTreeMap<String, RawPrice>,
    #[serde(default)]
    fallback_price: Option<RawPrice>,
    #[serde(default)]
    max_response_body_bytes: Option<u32>,
    #[serde(default)]
    max_tracked_agents: Option<u32>,
    #[serde(default)]
    api_overrides: Vec<RawApiOverride>,
    #[serde(default)]
    azure_deployments: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "optional_amount")]
    soft_threshold: Option<f64>,
    #[serde(default)]
    reservations: Option<bool>,
    #[serde(default)]
    budget_headers: Option<BudgetHeaders>,
    #[serde(default)]
    default_max_output_tokens: Option<u32>,
    #[serde(default)]
    hold_request_headers: Option<bool>,
    #[serde(default)]
    alerts: Option<RawAlerts>,
    #[serde(default)]
    status_page: Option<RawStatusPage>,
    #[serde(default)]
    anomaly: Option<RawAnomaly>,
    #[serde(default)]
    identity: Option<RawIdentity>,
    #[serde(default)]
    fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    cluster: String,
    #[serde(default)]
    sync_millis: Option<u32>,
    #[serde(default)]
    timeout_millis: Option<u32>,
    #[serde(default)]
    gateway_id: Option<String>,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    unsynced: Option<Unsynced>,
}

/// What a call of a `stop` agent gets in fleet mode before this gateway has loaded the
/// fleet's spend from Redis (degrade and alert agents always go on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsynced {
    /// Refuse it with a retryable 503: no call is decided on a spend of zero.
    #[default]
    Refuse,
    /// Enforce on what this gateway has seen so far.
    Allow,
}

/// Fleet mode: spend shared with other gateways through Redis behind webdis (see `fleet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The Envoy cluster of webdis.
    pub cluster: String,
    /// How often spend is pushed and pulled; also the tick period.
    pub sync_millis: u32,
    pub timeout_millis: u32,
    /// Names this gateway's fields in Redis; the host fills it from the node id when unset.
    pub gateway_id: Option<String>,
    pub key_prefix: String,
    pub unsynced: Unsynced,
}

pub const DEFAULT_FLEET_SYNC_MILLIS: u32 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    source: Option<RawIdentitySource>,
    #[serde(default)]
    api_keys: BTreeMap<String, String>,
    #[serde(default)]
    jwt_payload: Option<String>,
    #[serde(default)]
    agent_claim: Option<String>,
    #[serde(default)]
    task_claim: Option<String>,
    #[serde(default)]
    user_claim: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawIdentitySource {
    Header,
    ApiKey,
    Jwt,
}

/// SHA-256 digests of provider API keys, each naming the agent the key belongs to.
/// Debug shows only the count, so a printed config never carries a digest.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(BTreeMap<[u8; 32], String>);

impl ApiKeys {
    pub fn agent(&self, digest: &[u8; 32]) -> Option<&str> {
        self.0.get(digest).map(String::as_str)
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Where a call's agent comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdentitySource {
    /// The agent header, as the client sent it (for trusted callers).
    #[default]
    Header,
    /// The provider API key the call carries; the agent header is ignored and removed.
    ApiKey(ApiKeys),
    /// Claims of a JWT that Envoy's `jwt_authn` filter verified, read from its dynamic
    /// metadata; the headers the claims replace are ignored and removed.
    Jwt(JwtClaims),
}

/// Where the verified JWT's claims are: `jwt_authn` writes the payload of a verified token to
/// its dynamic metadata under the provider's `payload_in_metadata` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    /// The `payload_in_metadata` name (default `jwt_payload`).
    pub payload: String,
    /// The claim naming the agent (default `sub`).
    pub agent: String,
    /// Claims naming the task and the user; unset, those come from their headers.
    pub task: Option<String>,
    pub user: Option<String>,
}

/// `jwt_authn`'s dynamic-metadata namespace.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Where a host that cannot read that metadata (the native module) has `jwt_authn` write
/// each claim instead (`claim_to_headers`): `x-agent-budget-claim-<claim>`. With
/// `source: jwt` such headers never reach the provider, whichever build runs.
pub const JWT_CLAIM_HEADER_PREFIX: &str = "x-agent-budget-claim-";
const DEFAULT_JWT_PAYLOAD: &str = "jwt_payload";
const DEFAULT_AGENT_CLAIM: &str = "sub";

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = char::from(*pair.first()?).to_digit(16)?;
        let low = char::from(*pair.get(1)?).to_digit(16)?;
        *out = u8::try_from(high * 16 + low).ok()?;
    }
    Some(digest)
}

fn identity_config(
    raw: RawIdentity,
    agents: &BTreeMap<String, AgentBudget>,
) -> Result<IdentitySource, ConfigError> {
    let source = raw.source.unwrap_or(RawIdentitySource::Header);
    if !matches!(source, RawIdentitySource::Jwt) {
        let jwt_fields = [
            ("identity.jwt_payload", &raw.jwt_payload),
            ("identity.agent_claim", &raw.agent_claim),
            ("identity.task_claim", &raw.task_claim),
            ("identity.user_claim", &raw.user_claim),
        ];
        if let Some((field, _)) = jwt_fields.iter().find(|(_, value)| value.is_some()) {
            return Err(ConfigError::new(*field, "only used with `source: jwt`"));
        }
    }
    match source {
        RawIdentitySource::Jwt => {
            if !raw.api_keys.is_empty() {
                return Err(ConfigError::new(
                    "identity.api_keys",
                    "only used with `source: api_key`",
                ));
            }
            let name = |field: &'static str, value: Option<String>| match value {
                Some(value) if value.trim().is_empty() => {
                    Err(ConfigError::new(field, "must not be empty"))
                }
                other => Ok(other),
            };
            Ok(IdentitySource::Jwt(JwtClaims {
                payload: name("identity.jwt_payload", raw.jwt_payload)?
                    .unwrap_or_else(|| DEFAULT_JWT_PAYLOAD.to_string()),
                agent: name("identity.agent_claim", raw.agent_claim)?
                    .unwrap_or_else(|| DEFAULT_AGENT_CLAIM.to_string()),
                task: name("identity.task_claim", raw.task_claim)?,
                user: name("identity.user_claim", raw.user_claim)?,
            }))
        }
        RawIdentitySource::Header => {
            if !raw.api_keys.is_empty() {
                return Err(ConfigError::new(
                    "identity.api_keys",
                    "only used with `source: api_key`",
                ));
            }
            Ok(IdentitySource::Header)
        }
        RawIdentitySource::ApiKey => {
            if raw.api_keys.is_empty() {
                return Err(ConfigError::new(
                    "identity.api_keys",
                    "`source: api_key` needs at least one key digest",
                ));
            }
            let mut keys = BTreeMap::new();
            for (index, (hex, agent)) in raw.api_keys.into_iter().enumerate() {
                // The digest is not echoed in the error: the entry's position names it.
                let Some(digest) = parse_digest(&hex) else {
                    return Err(ConfigError::new(
                        "identity.api_keys",
                        format!(
                            "key #{} is not a SHA-256 digest (64 hex characters)",
                            index + 1
                        ),
                    ));
                };
                if !agents.contains_key(&agent) {
                    return Err(ConfigError::new(
                        "identity.api_keys",
                        format!("agent `{agent}` is not in `agents`"),
                    ));
                }
                if keys.insert(digest, agent).is_some() {
                    return Err(ConfigError::new(
                        "identity.api_keys",
                        format!("key #{} repeats another key's digest", index + 1),
                    ));
                }
            }
            Ok(IdentitySource::ApiKey(ApiKeys(keys)))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusPage {
    #[serde(default)]
    bearer_token: Option<String>,
}

/// The status page's settings (used by the `agent_budget_status` plugin only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusPageConfig {
    /// When set, `/budgets` answers only requests with `authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    projection: Option<bool>,
    #[serde(default, deserialize_with = "optional_amount")]
    multiple: Option<f64>,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    current: Option<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    min_history: Option<String>,
}

/// Spend history, burn rates and the alerts drawn from them (see `history` and `anomaly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyConfig {
    /// Raise `anomaly` alerts (the history and burn rates are kept either way).
    pub enabled: bool,
    /// Raise `projection` alerts.
    pub projection: bool,
    /// The alert fires when the current burn reaches this many thousandths of the baseline.
    pub multiple_milli: u64,
    /// Seconds per history bucket; divides `current_secs` and `window_secs`.
    pub bucket_secs: i64,
    /// The burn rate is the spend over this many last seconds.
    pub current_secs: i64,
    /// The baseline covers this many seconds before the current window.
    pub window_secs: i64,
    /// No baseline until the history is this old.
    pub min_history_secs: i64,
}

impl Default for AnomalyConfig {
    fn default() -> AnomalyConfig {
        AnomalyConfig {
            enabled: true,
            projection: true,
            multiple_milli: 3_000,
            bucket_secs: 3_600,
            current_secs: 3_600,
            window_secs: 14 * 86_400,
            min_history_secs: 86_400,
        }
    }
}

/// Most buckets a history may need, to bound each agent's shared-data value.
pub const MAX_HISTORY_BUCKETS: i64 = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    cluster: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    format: Option<AlertFormat>,
    #[serde(default)]
    timeout_ms: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// Body shape of alert webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// Prometheus Alertmanager API v2 (`POST /api/v2/alerts`).
    Alertmanager,
    /// One plain JSON object per alert (chat webhooks: carries a `text` field).
    Json,
}

/// Where and how alerts are delivered: an Envoy cluster called with `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub format: AlertFormat,
    pub timeout_ms: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiOverride {
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    route_name: Option<String>,
    #[serde(default)]
    cluster_name: Option<String>,
    api: Api,
}

/// Calls matching any of the given conditions are metered as `api`, whatever their path:
/// for providers behind custom paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOverride {
    pub path_prefix: Option<String>,
    pub route_name: Option<String>,
    pub cluster_name: Option<String>,
    pub api: Api,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default, deserialize_with = "optional_amount")]
    daily_usd: Option<f64>,
    #[serde(default, deserialize_with = "optional_amount")]
    monthly_usd: Option<f64>,
    #[serde(default)]
    action: Option<LimitAction>,
    #[serde(default, deserialize_with = "optional_amount")]
    soft_threshold: Option<f64>,
    #[serde(default)]
    degrade_to: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "optional_amount")]
    degrade_usd: Option<f64>,
    #[serde(default, deserialize_with = "optional_amount")]
    task_daily_usd: Option<f64>,
    #[serde(default, deserialize_with = "optional_amount")]
    user_daily_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(deserialize_with = "amount")]
    input: f64,
    #[serde(deserialize_with = "amount")]
    output: f64,
    #[serde(default, deserialize_with = "optional_amount")]
    cached_input: Option<f64>,
    #[serde(default, deserialize_with = "optional_amount")]
    cache_write: Option<f64>,
    #[serde(default, deserialize_with = "optional_amount")]
    cache_write_1h: Option<f64>,
}

/// A number, or a string holding one: Envoy's YAML loader turns `daily_usd: 0.5` into the
/// string "0.5" inside the Struct it hands over, so both spellings must mean the same
/// (USD amounts and fractions alike).
fn amount<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct AmountVisitor;
    impl serde::de::Visitor<'_> for AmountVisitor {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<f64, E> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_any(AmountVisitor)
}

fn optional_amount<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    amount(deserializer).map(Some)
}

/// The budget that unidentified calls are charged to when the policy says `default`.
pub const DEFAULT_BUDGET: &str = "default";
const MAX_AGENT_ID_LEN: usize = 64;
/// The agent id rule as told to operators and clients.
pub const AGENT_ID_RULE: &str = "agent ids are 1-64 characters of A-Z, a-z, 0-9, `-` and `_`";

/// Agent ids become stat-name segments and ledger keys: keep them to a safe alphabet. The
/// rule is the configuration's (its `agents` keys must follow it); `identity` applies it to
/// each call's header.
pub fn is_valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What to do with a call whose agent is missing or not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unidentified {
    /// Refuse it with a 4xx in the provider's error shape.
    Reject,
    /// Charge it to the agent named `default`, which must then be configured.
    Default,
}

/// What a call of a `stop` agent gets when its budget cannot be read from shared data
/// (agents with `degrade` or `alert` always go on: their action lets calls through anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerUnavailable {
    /// Refuse it with a retryable 503: no spend the limit has not checked.
    #[default]
    Refuse,
    /// Forward it unchecked; its charge is still booked (retried on the tick if need be).
    Allow,
}

/// Which calls carry the `x-agent-budget-*` response headers (each header costs a host
/// call per call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetHeaders {
    /// Every call of a configured agent.
    #[default]
    All,
    /// Only calls the limit acted on: refused, degraded, or let through past the budget.
    OnLimit,
    /// None.
    None,
}

/// What happens once a period's budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitAction {
    /// Reject further calls with 429 until the period resets.
    Stop,
    /// Rewrite the requested model to the cheaper one in `degrade_to` for the rest of the
    /// period; stop once `degrade_usd` more has been spent, if given.
    Degrade,
    /// Let calls through, raise a P1 alert at the crossing, book the excess as overage.
    Alert,
}

impl LimitAction {
    pub fn name(self) -> &'static str {
        match self {
            LimitAction::Stop => "stop",
            LimitAction::Degrade => "degrade",
            LimitAction::Alert => "alert",
        }
    }
}

/// One agent's budgets in micro-USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBudget {
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
    pub action: LimitAction,
    /// Soft alert when spend reaches this share of a period's budget, in parts per million.
    pub soft_threshold_ppm: u64,
    /// `degrade` only: requested model → cheaper model.
    pub degrade_to: Option<ModelMap>,
    /// `degrade` only: spend allowed past the budget while degraded, before stopping.
    pub degrade_allowance: Option<u64>,
    /// Daily cap per task id / per user id of this agent's calls.
    pub task_daily: Option<u64>,
    pub user_daily: Option<u64>,
}

impl AgentBudget {
    pub fn limit(&self, kind: crate::period::PeriodKind) -> Option<u64> {
        match kind {
            crate::period::PeriodKind::Daily => self.daily,
            crate::period::PeriodKind::Monthly => self.monthly,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agent_header: String,
    pub task_header: String,
    pub user_header: String,
    pub time_zone: TimeZone,
    pub missing_agent: Unidentified,
    pub unknown_agent: Unidentified,
    pub ledger_unavailable: LedgerUnavailable,
    pub agents: BTreeMap<String, AgentBudget>,
    pub prices: PriceTable,
    /// Charged for a model the table does not know, so it is never free.
    pub fallback_price: Price,
    /// JSON response bodies beyond this are not metered (counted as unmetered `too_large`).
    pub max_response_body_bytes: u32,
    /// Agent budgets with series of their own in the metrics (the first ones by name); the
    /// rest report under `agent="other"`, which bounds the metrics' cardinality.
    pub max_tracked_agents: u32,
    /// Checked in order before path detection.
    pub api_overrides: Vec<ApiOverride>,
    /// Azure OpenAI deployment name → model, for pricing when a response names no model.
    pub azure_deployments: BTreeMap<String, String>,
    /// Reserve each call's worst-case cost before forwarding it (bounds overspend under
    /// concurrency to one call's worst case).
    pub reservations: bool,
    /// Output tokens assumed for a call whose request sets no maximum.
    pub default_max_output_tokens: u64,
    /// Which calls get the `x-agent-budget-*` response headers.
    pub budget_headers: BudgetHeaders,
    /// Hold a call's request headers until its body is read, so nothing reaches the
    /// provider before the call is decided and `content-length` stays exact. Needs the
    /// plugin's `allow_on_headers_stop_iteration: true` (Envoy 1.35+): without it Envoy
    /// withholds the body from a filter that holds the headers, and the call stalls.
    pub hold_request_headers: bool,
    pub alerts: Option<AlertsConfig>,
    pub status_page: StatusPageConfig,
    pub anomaly: AnomalyConfig,
    pub identity: IdentitySource,
    /// None: embedded mode, spend shared by this Envoy's workers only.
    pub fleet: Option<FleetConfig>,
}

pub const DEFAULT_SOFT_THRESHOLD: f64 = 0.8;
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: u32 = 8 * 1024 * 1024;
pub const DEFAULT_MAX_TRACKED_AGENTS: u32 = 500;
/// Deliberately expensive (an opus-class price): an unknown model must not drain budgets
/// slower than a known one.
pub const DEFAULT_FALLBACK_PRICE: Price = Price::new(15_000_000, 75_000_000, None);

impl Config {
    /// Parses plugin configuration bytes: JSON text, or a binary `google.protobuf.Struct`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw = parse_raw(bytes)?;
        Config::try_from(raw)
    }

    pub fn budget(&self, name: &str) -> Option<&AgentBudget> {
        self.agents.get(name)
    }

    /// Whether API detection needs the route and cluster names (extra host reads per call).
    pub fn overrides_need_route(&self) -> bool {
        self.api_overrides
            .iter()
            .any(|o| o.route_name.is_some() || o.cluster_name.is_some())
    }

    /// The API a call is metered as: the first matching override, else the path's. An Azure
    /// deployment in the path is kept either way: it fixes the model whatever the API.
    pub fn detect_api(
        &self,
        path: &str,
        route_name: Option<&str>,
        cluster_name: Option<&str>,
    ) -> Option<Detected> {
        let detected = Api::detect(path);
        let matches = |o: &&ApiOverride| {
            o.path_prefix
                .as_deref()
                .is_some_and(|p| path.starts_with(p))
                || o.route_name
                    .as_deref()
                    .is_some_and(|r| route_name == Some(r))
                || o.cluster_name
                    .as_deref()
                    .is_some_and(|c| cluster_name == Some(c))
        };
        match self.api_overrides.iter().find(matches) {
            Some(found) => Some(Detected {
                api: found.api,
                path_model: detected.as_ref().and_then(|d| d.path_model.clone()),
                azure_deployment: azure_deployment(path).map(str::to_string),
            }),
            None => detected,
        }
    }
}

fn parse_raw(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let text_start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    match text_start.and_then(|start| bytes.get(start)) {
        None => Err(ConfigError::new(
            "",
            "the plugin configuration is empty; at least `agents` is required",
        )),
        Some(b'{') => parse_json(bytes).or_else(|json_error| {
            // A Struct starts with tag 0x0a ("\n"); when its first entry is 123 bytes long the
            // next byte is "{", so those bytes look like JSON text. Read them as the Struct
            // Envoy sent when they decode as one; otherwise the JSON error is the one to show.
            if bytes.first() == Some(&STRUCT_FIELDS_TAG) && pbstruct::decode_struct(bytes).is_ok() {
                parse_struct(bytes)
            } else {
                Err(json_error)
            }
        }),
        Some(_) => parse_struct(bytes),
    }
}

/// Field 1 (`fields`), wire type 2: the first byte of every non-empty encoded Struct.
const STRUCT_FIELDS_TAG: u8 = 0x0a;

fn parse_json(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let reason = if inner.is_syntax() || inner.is_eof() {
            format!(
                "malformed JSON at line {} column {}: {inner}",
                inner.line(),
                inner.column()
            )
        } else {
            strip_position(&inner.to_string())
        };
        ConfigError::new(field, reason)
    })
}

fn parse_struct(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let value = pbstruct::decode_struct(bytes).map_err(|error| {
        ConfigError::new(
            "",
            format!("neither JSON (a StringValue) nor a google.protobuf.Struct: {error}"),
        )
    })?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ConfigError::new(field, error.inner().to_string())
    })
}

/// serde_json appends "at line L column C"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message.get(..at).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

/// A fraction in (0, 1) as parts per million, so spend comparisons stay in integers.
fn threshold_ppm(field: &str, fraction: f64) -> Result<u64, ConfigError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(ConfigError::new(
            field,
            format!("{fraction} is not a fraction between 0 and 1 (e.g. 0.8)"),
        ));
    }
    // In (0, 1) by the check above.
    Ok((fraction * 1e6).round() as u64)
}

fn fleet_config(raw: RawFleet) -> Result<FleetConfig, ConfigError> {
    if raw.cluster.trim().is_empty() {
        return Err(ConfigError::new(
            "fleet.cluster",
            "name the Envoy cluster of webdis",
        ));
    }
    let sync_millis = raw.sync_millis.unwrap_or(DEFAULT_FLEET_SYNC_MILLIS);
    if !(100..=DEFAULT_FLEET_SYNC_MILLIS).contains(&sync_millis) {
        return Err(ConfigError::new(
            "fleet.sync_millis",
            "must be between 100 and 1000: the fleet's overshoot grows with it",
        ));
    }
    let timeout_millis = raw.timeout_millis.unwrap_or(sync_millis);
    if !(1..=60_000).contains(&timeout_millis) {
        return Err(ConfigError::new(
            "fleet.timeout_millis",
            "must be between 1 and 60000",
        ));
    }
    // Both end up in Redis keys and fields: plain names keep them readable in redis-cli.
    let plain = |text: &str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if let Some(id) = &raw.gateway_id {
        if !plain(id) {
            return Err(ConfigError::new(
                "fleet.gateway_id",
                "use 1 to 128 letters, digits, `-`, `_`, `.` or `:`",
            ));
        }
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "agent_budget".to_string());
    if !plain(&key_prefix) {
        return Err(ConfigError::new(
            "fleet.key_prefix",
            "use 1 to 128 letters, digits, `-`, `_`, `.` or `:`",
        ));
    }
    Ok(FleetConfig {
        cluster: raw.cluster,
        sync_millis,
        timeout_millis,
        gateway_id: raw.gateway_id,
        key_prefix,
        unsynced: raw.unsynced.unwrap_or_default(),
    })
}

fn alerts_config(raw: RawAlerts) -> Result<AlertsConfig, ConfigError> {
    if raw.cluster.trim().is_empty() {
        return Err(ConfigError::new(
            "alerts.cluster",
            "name the Envoy cluster that receives alert webhooks",
        ));
    }
    let format = raw.format.unwrap_or(AlertFormat::Alertmanager);
    let path = raw.path.unwrap_or_else(|| match format {
        AlertFormat::Alertmanager => "/api/v2/alerts".to_string(),
        AlertFormat::Json => "/".to_string(),
    });
    if !path.starts_with('/') {
        return Err(ConfigError::new("alerts.path", "must start with `/`"));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(5_000);
    if timeout_ms == 0 {
        return Err(ConfigError::new("alerts.timeout_ms", "must be at least 1"));
    }
    let max_attempts = raw.max_attempts.unwrap_or(5);
    if !(1..=100).contains(&max_attempts) {
        return Err(ConfigError::new(
            "alerts.max_attempts",
            "must be between 1 and 100",
        ));
    }
    Ok(AlertsConfig {
        authority: raw.authority.unwrap_or_else(|| raw.cluster.clone()),
        cluster: raw.cluster,
        path,
        format,
        timeout_ms,
        max_attempts,
    })
}

/// A bearer token travels in a header: visible ASCII without spaces, and long enough not to
/// be guessed.
fn status_page_config(raw: RawStatusPage) -> Result<StatusPageConfig, ConfigError> {
    let Some(token) = raw.bearer_token else {
        return Ok(StatusPageConfig::default());
    };
    if token.len() < 16 || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "status_page.bearer_token",
            "must be 16 to 512 visible ASCII characters without spaces",
        ));
    }
    Ok(StatusPageConfig {
        bearer_token: Some(token),
    })
}

/// `90s`, `5m`, `1h`, `14d` to seconds (at least 1).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let trimmed = text.trim();
    let invalid = || format!("`{text}` is not a duration such as `90s`, `5m`, `1h` or `14d`");
    let split = trimmed.len().saturating_sub(1);
    let (digits, unit) = (trimmed.get(..split).unwrap_or(""), trimmed.get(split..));
    let unit_secs = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3_600,
        Some("d") => 86_400,
        _ => return Err(invalid()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let count: i64 = digits.parse().map_err(|_| invalid())?;
    match count.checked_mul(unit_secs) {
        // A year at most: history lives in memory.
        Some(secs) if (1..=366 * 86_400).contains(&secs) => Ok(secs),
        _ => Err(format!("`{text}` must be between 1s and 366d")),
    }
}

fn anomaly_config(raw: RawAnomaly) -> Result<AnomalyConfig, ConfigError> {
    let defaults = AnomalyConfig::default();
    let duration = |field: &str, text: Option<String>, default: i64| match text {
        None => Ok(default),
        Some(text) => parse_duration(&text)
            .map_err(|reason| ConfigError::new(format!("anomaly.{field}"), reason)),
    };
    let bucket_secs = duration("bucket", raw.bucket, defaults.bucket_secs)?;
    let current_secs = duration("current", raw.current, defaults.current_secs)?;
    let window_secs = duration("window", raw.window, defaults.window_secs)?;
    // The default asks for a day of history, or the whole window when it is shorter.
    let min_history_secs = duration(
        "min_history",
        raw.min_history,
        defaults.min_history_secs.min(window_secs),
    )?;
    for (field, secs) in [("current", current_secs), ("window", window_secs)] {
        if secs % bucket_secs != 0 {
            return Err(ConfigError::new(
                format!("anomaly.{field}"),
                "must be a whole number of `anomaly.bucket`s",
            ));
        }
    }
    if current_secs >= window_secs {
        return Err(ConfigError::new(
            "anomaly.current",
            "must be shorter than `anomaly.window`",
        ));
    }
    if (window_secs + current_secs) / bucket_secs > MAX_HISTORY_BUCKETS {
        return Err(ConfigError::new(
            "anomaly.bucket",
            format!("`window` and `current` span more than {MAX_HISTORY_BUCKETS} buckets; use a longer bucket"),
        ));
    }
    if min_history_secs > window_secs {
        return Err(ConfigError::new(
            "anomaly.min_history",
            "must not be longer than `anomaly.window`",
        ));
    }
    let multiple = raw.multiple.unwrap_or(3.0);
    if !(multiple > 1.0 && multiple <= 1_000.0) {
        return Err(ConfigError::new(
            "anomaly.multiple",
            format!("{multiple} is not a multiple of the baseline above 1 (e.g. 3)"),
        ));
    }
    Ok(AnomalyConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        projection: raw.projection.unwrap_or(defaults.projection),
        // In (1, 1000] by the check above.
        multiple_milli: (multiple * 1_000.0).round() as u64,
        bucket_secs,
        current_secs,
        window_secs,
        min_history_secs,
    })
}

fn header_name(field: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let name = value
        .unwrap_or_else(|| default.to_string())
        .to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) || name.starts_with(':') {
        return Err(ConfigError::new(
            field,
            format!("`{name}` is not a valid HTTP header name"),
        ));
    }
    Ok(name)
}

fn money(field: &str, usd: f64) -> Result<u64, ConfigError> {
    usd_to_micro(usd).ok_or_else(|| {
        ConfigError::new(
            field,
            format!("{usd} is not a USD amount between 0 and 10^12"),
        )
    })
}

fn price(field: &str, raw: &RawPrice) -> Result<Price, ConfigError> {
    let input = money(&format!("{field}.input"), raw.input)?;
    let output = money(&format!("{field}.output"), raw.output)?;
    let mut price = Price::new(input, output, None);
    if let Some(cached) = raw.cached_input {
        price.cache_read = money(&format!("{field}.cached_input"), cached)?;
    }
    if let Some(write) = raw.cache_write {
        price.cache_write_5m = money(&format!("{field}.cache_write"), write)?;
    }
    if let Some(write) = raw.cache_write_1h {
        price.cache_write_1h = money(&format!("{field}.cache_write_1h"), write)?;
    }
    Ok(price)
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let agent_header = header_name("agent_header", raw.agent_header, "x-agent-id")?;
        let task_header = header_name("task_header", raw.task_header, "x-task-id")?;
        let user_header = header_name("user_header", raw.user_header, "x-user-id")?;
        let time_zone = match raw.time_zone {
            None => TimeZone::UTC,
            Some(text) => {
                TimeZone::parse(&text).map_err(|reason| ConfigError::new("time_zone", reason))?
            }
        };

        let default_soft_threshold = raw.soft_threshold.unwrap_or(DEFAULT_SOFT_THRESHOLD);
        threshold_ppm("soft_threshold", default_soft_threshold)?;
        if raw.agents.is_empty() {
            return Err(ConfigError::new(
                "agents",
                "at least one agent budget is required",
            ));
        }
        let mut agents = BTreeMap::new();
        for (name, agent) in raw.agents {
            let field = format!("agents.{name}");
            if !is_valid_agent_id(&name) {
                return Err(ConfigError::new(field, AGENT_ID_RULE));
            }
            let daily = agent
                .daily_usd
                .map(|usd| money(&format!("{field}.daily_usd"), usd))
                .transpose()?;
            let monthly = agent
                .monthly_usd
                .map(|usd| money(&format!("{field}.monthly_usd"), usd))
                .transpose()?;
            if daily.is_none() && monthly.is_none() {
                return Err(ConfigError::new(
                    field,
                    "give `daily_usd`, `monthly_usd` or both",
                ));
            }
            let action = agent.action.unwrap_or(LimitAction::Stop);
            let soft_threshold = agent.soft_threshold.unwrap_or(default_soft_threshold);
            let soft_threshold_ppm =
                threshold_ppm(&format!("{field}.soft_threshold"), soft_threshold)?;
            let optional_money = |key: &str, usd: Option<f64>| {
                usd.map(|usd| money(&format!("{field}.{key}"), usd))
                    .transpose()
            };
            let degrade_allowance = optional_money("degrade_usd", agent.degrade_usd)?;
            let task_daily = optional_money("task_daily_usd", agent.task_daily_usd)?;
            let user_daily = optional_money("user_daily_usd", agent.user_daily_usd)?;
            // Struct maps reach the filter in no reliable order: most specific patterns first.
            let mut pairs: Vec<(String, String)> = agent.degrade_to.into_iter().collect();
            pairs.sort_by_key(|(pattern, _)| {
                std::cmp::Reverse(pattern.chars().filter(|c| *c != '*').count())
            });
            let degrade_to =
                if pairs.is_empty() {
                    None
                } else {
                    Some(ModelMap::new(pairs).map_err(|reason| {
                        ConfigError::new(format!("{field}.degrade_to"), reason)
                    })?)
                };
            match action {
                LimitAction::Degrade if degrade_to.is_none() => {
                    return Err(ConfigError::new(
                        format!("{field}.degrade_to"),
                        "`action: degrade` needs a model mapping, e.g. {\"claude-sonnet-*\": \"claude-haiku-4-5\"}",
                    ));
                }
                LimitAction::Stop | LimitAction::Alert
                    if degrade_to.is_some() || degrade_allowance.is_some() =>
                {
                    return Err(ConfigError::new(
                        format!("{field}.action"),
                        "`degrade_to` / `degrade_usd` are only used with `action: degrade`",
                    ));
                }
                _ => {}
            }
            agents.insert(
                name,
                AgentBudget {
                    daily,
                    monthly,
                    action,
                    soft_threshold_ppm,
                    degrade_to,
                    degrade_allowance,
                    task_daily,
                    user_daily,
                },
            );
        }

        let missing_agent = raw.missing_agent.unwrap_or(Unidentified::Reject);
        let unknown_agent = raw.unknown_agent.unwrap_or(Unidentified::Reject);
        for (field, policy) in [
            ("missing_agent", missing_agent),
            ("unknown_agent", unknown_agent),
        ] {
            if policy == Unidentified::Default && !agents.contains_key(DEFAULT_BUDGET) {
                return Err(ConfigError::new(
                    field,
                    format!("`default` charges the agent named `{DEFAULT_BUDGET}`, which is not in `agents`"),
                ));
            }
        }

        let mut prices = PriceTable::builtin();
        for (model, raw_price) in &raw.pricing {
            if model.trim().is_empty() {
                return Err(ConfigError::new("pricing", "model names must not be empty"));
            }
            prices.set(model, price(&format!("pricing.{model}"), raw_price)?);
        }
        let fallback_price = match &raw.fallback_price {
            Some(raw_price) => price("fallback_price", raw_price)?,
            None => DEFAULT_FALLBACK_PRICE,
        };
        let max_response_body_bytes = raw
            .max_response_body_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BODY_BYTES);
        if max_response_body_bytes < 1024 {
            return Err(ConfigError::new(
                "max_response_body_bytes",
                "must be at least 1024",
            ));
        }
        let max_tracked_agents = raw.max_tracked_agents.unwrap_or(DEFAULT_MAX_TRACKED_AGENTS);
        if max_tracked_agents == 0 {
            return Err(ConfigError::new("max_tracked_agents", "must be at least 1"));
        }

        let mut api_overrides = Vec::new();
        for (index, raw_override) in raw.api_overrides.into_iter().enumerate() {
            let RawApiOverride {
                path_prefix,
                route_name,
                cluster_name,
                api,
            } = raw_override;
            if path_prefix.is_none() && route_name.is_none() && cluster_name.is_none() {
                return Err(ConfigError::new(
                    format!("api_overrides[{index}]"),
                    "give at least one of `path_prefix`, `route_name`, `cluster_name`",
                ));
            }
            if path_prefix.as_deref().is_some_and(|p| !p.starts_with('/')) {
                return Err(ConfigError::new(
                    format!("api_overrides[{index}].path_prefix"),
                    "must start with `/`",
                ));
            }
            api_overrides.push(ApiOverride {
                path_prefix,
                route_name,
                cluster_name,
                api,
            });
        }

        let default_max_output_tokens = raw
            .default_max_output_tokens
            .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
        if default_max_output_tokens == 0 {
            return Err(ConfigError::new(
                "default_max_output_tokens",
                "must be at least 1",
            ));
        }
        let alerts = raw.alerts.map(alerts_config).transpose()?;
        let fleet = raw.fleet.map(fleet_config).transpose()?;
        let status_page = raw
            .status_page
            .map(status_page_config)
            .transpose()?
            .unwrap_or_default();
        let anomaly = match raw.anomaly {
            Some(raw_anomaly) => anomaly_config(raw_anomaly)?,
            None => AnomalyConfig::default(),
        };
        let identity = raw
            .identity
            .map(|raw_identity| identity_config(raw_identity, &agents))
            .transpose()?
            .unwrap_or_default();

        Ok(Config {
            agent_header,
            task_header,
            user_header,
            time_zone,
            missing_agent,
            unknown_agent,
            ledger_unavailable: raw.ledger_unavailable.unwrap_or_default(),
            agents,
            prices,
            fallback_price,
            max_response_body_bytes,
            max_tracked_agents,
            api_overrides,
            azure_deployments: raw.azure_deployments,
            reservations: raw.reservations.unwrap_or(true),
            hold_request_headers: raw.hold_request_headers.unwrap_or(false),
            budget_headers: raw.budget_headers.unwrap_or_default(),
            default_max_output_tokens: u64::from(default_max_output_tokens),
            alerts,
            status_page,
            anomaly,
            identity,
            fleet,
        })
    }
}

#[cfg(test)]
mod tests;
