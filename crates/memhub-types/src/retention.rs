//! Retention policies: how long memories of a kind are kept after their `created_at`.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Keep memories of `kind` (optionally only of one tenant or source system) for
/// `ttl` after their `created_at`. Older ones are invisible at once and purged by
/// the background job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub kind: String,
    /// Seconds, or a duration such as `"90s"`, `"12h"`, `"30d"`, `"2w"`.
    #[serde(deserialize_with = "ttl_seconds")]
    #[schema(value_type = String, example = "30d")]
    pub ttl_seconds: u64,
    /// Only this tenant (a config-file policy without one applies to all tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this source system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
}

impl RetentionPolicy {
    /// Whether a memory with these fields falls under the policy.
    pub fn covers(&self, tenant: &str, system_id: &str, kind: &str) -> bool {
        self.kind == kind
            && self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.system_id.as_deref().is_none_or(|s| s == system_id)
    }

    /// The oldest `created_at` still kept at `now` (both in microseconds).
    pub fn cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.ttl_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000))
    }
}

fn ttl_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    let seconds = match Raw::deserialize(d)? {
        Raw::Seconds(n) => n as f64,
        Raw::Text(t) => crate::time::parse_duration_seconds(&t).ok_or_else(|| {
            D::Error::custom(format!("invalid duration {t:?}: use seconds or a number with s, m, h, d or w"))
        })?,
    };
    if seconds.is_finite() && seconds >= 1.0 {
        Ok(seconds as u64)
    } else {
        Err(D::Error::custom("ttl must be at least one second"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_reads_durations_and_refuses_nonsense() {
        let p: RetentionPolicy = serde_json::from_str(r#"{"kind":"chat","ttl_seconds":"30d"}"#).unwrap();
        assert_eq!(p.ttl_seconds, 30 * 86_400);
        assert_eq!(p.cutoff(100 * 1_000_000 * 86_400), 70 * 1_000_000 * 86_400);
        assert!(p.covers("any", "any", "chat") && !p.covers("any", "any", "insight"));
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"kind":"chat","ttl_seconds":"soon"}"#).is_err());
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"kind":"chat","ttl_seconds":0}"#).is_err());
        let p: RetentionPolicy =
            serde_json::from_str(r#"{"kind":"chat","ttl_seconds":60,"system_id":"slack"}"#).unwrap();
        assert!(p.covers("t", "slack", "chat") && !p.covers("t", "github", "chat"));
    }
}
