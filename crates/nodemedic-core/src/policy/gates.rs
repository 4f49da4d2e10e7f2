//! The safety gates: min-healthy and concurrency limits, the circuit breaker, the retry budget and
//! maintenance windows.

use super::*;

/// An absolute count or a percentage of the selected nodes (`3` or `"51%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// Scales against `total`, rounding up as medik8s does (6 nodes at 51% → 4).
    pub fn scaled_up(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => n as usize,
            IntOrPercent::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
    /// Scales against `total`, rounding down (a cap should not let more through than the share).
    pub fn scaled_down(self, total: usize) -> usize {
        match self {
            IntOrPercent::Count(n) => n as usize,
            IntOrPercent::Percent(p) => total * p as usize / 100,
        }
    }
    /// `count` is strictly more than this share of `total` (exact: no rounding).
    pub fn exceeded_by(self, count: usize, total: usize) -> bool {
        match self {
            IntOrPercent::Count(n) => count > n as usize,
            IntOrPercent::Percent(p) => count * 100 > total * p as usize,
        }
    }
}

impl schemars::JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count (3) or a percentage of the selected nodes (\"51%\", at most 100%).",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^([0-9]|[1-9][0-9]|100)%$"}]
        })
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let bad = |what: &str| serde::de::Error::custom(format!("{what}: expected a count like 3 or a percentage like \"51%\""));
        match Raw::deserialize(d)? {
            Raw::Int(n) if n < 0 => Err(bad(&format!("{n} is negative"))),
            Raw::Int(n) => u32::try_from(n).map(IntOrPercent::Count).map_err(|_| bad(&format!("{n} is too large"))),
            Raw::Str(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    match p.trim().parse::<i64>() {
                        Ok(v) if v < 0 => Err(bad(&format!("`{s}` is negative"))),
                        Ok(v) => u32::try_from(v).map(IntOrPercent::Percent).map_err(|_| bad(&format!("`{s}` is too large"))),
                        Err(_) => Err(bad(&format!("`{s}` is not a percentage"))),
                    }
                } else {
                    match t.parse::<i64>() {
                        Ok(v) if v >= 0 => u32::try_from(v).map(IntOrPercent::Count).map_err(|_| bad(&format!("`{s}` is too large"))),
                        Ok(_) => Err(bad(&format!("`{s}` is negative"))),
                        Err(_) => Err(bad(&format!("`{s}` is neither"))),
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gates {
    /// Remediate only while at least this many selected nodes are healthy (medik8s `minHealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<IntOrPercent>,
    /// Remediate only while at most this many selected nodes are unhealthy (exclusive with `minHealthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unhealthy: Option<IntOrPercent>,
    /// Most nodes in a disruptive step at once, cluster-wide (count or share of selected nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<IntOrPercent>,
    /// Most nodes in a disruptive step at once within one node pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_per_pool: Option<IntOrPercent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// When set, disruptive steps start only inside one of these windows (UTC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

/// Halts new remediations when too many nodes turn unhealthy at once: a mass failure is more likely a
/// broken probe, network or control plane than many broken machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Trip when more than this many selected nodes turned unhealthy within `window`.
    pub max_unhealthy: IntOrPercent,
    pub window: Duration,
    /// Stay open at least this long.
    pub cooldown: Duration,
    /// Also stay open until a person resets it.
    #[serde(default)]
    pub manual_reset: bool,
}

/// The "lemon node" rule: a node remediated `maxRemediations` times within `window` goes straight to Manual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    pub max_remediations: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Days the window opens on; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` UTC.
    pub start: String,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Weekday {
    #[serde(alias = "Monday")]
    Mon,
    #[serde(alias = "Tuesday")]
    Tue,
    #[serde(alias = "Wednesday")]
    Wed,
    #[serde(alias = "Thursday")]
    Thu,
    #[serde(alias = "Friday")]
    Fri,
    #[serde(alias = "Saturday")]
    Sat,
    #[serde(alias = "Sunday")]
    Sun,
}

impl Weekday {
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl MaintenanceWindow {
    pub fn start_millis(&self) -> Option<i64> {
        let (h, m) = self.start.split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m) && self.start.len() == 5).then_some((h * 60 + m) * 60_000)
    }
}
