//! The admin API's request bodies, parsed: every check that needs only the bytes and the
//! clock, done before the directory is touched, so a bad body changes nothing and is answered
//! 400 naming its field. Pure, so they are fuzzed.

use serde::Deserialize;
use tollgate_engine::operator::{OperatorSpec, Role};
use tollgate_engine::{BudgetSpec, KeyLimits, KeySpec, Nanos, Period, Tight, UnixMs};

use crate::config::allow_list;
use crate::control::journal::Record;
use crate::http::error::Failure;

/// A soft limit's share of the hard one when a request names none, in percent.
const SOFT_LIMIT_PERCENT_DEFAULT: u8 = 80;

/// `POST /admin/v1/keys`, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    allocation: String,
    user: String,
    agent: Option<String>,
    /// `30d`, `12h`, `90m`.
    expires_in: Option<String>,
    /// RFC 3339.
    expires_at: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    requests_per_minute: Option<std::num::NonZeroU32>,
    tokens_per_minute: Option<std::num::NonZeroU32>,
    /// `["metering"]`: may also record and authorize resource usage.
    #[serde(default)]
    scopes: Vec<String>,
    /// `clamp`, `wait` or `refuse`: the key's own policy over its allocation's.
    tight: Option<Tight>,
}

/// A key request that passed every check of its own: the allocation it names (looked up by
/// the caller) and the key to make.
#[derive(Debug)]
pub struct KeyRequest {
    /// The allocation's name, as sent.
    pub allocation: String,
    /// The key, made at `now`.
    pub spec: KeySpec,
}

impl KeyRequest {
    /// Parses and checks a key request made at `now`.
    pub fn parse(body: &[u8], now: UnixMs) -> Result<KeyRequest, Failure> {
        let request: CreateKey = serde_json::from_slice(body)
            .map_err(|e| Failure::BadRequest(format!("key request: {e}")))?;
        if request.user.trim().is_empty() {
            return Err(Failure::BadRequest("`user` must not be empty".into()));
        }
        let expires_at = match (&request.expires_in, &request.expires_at) {
            (Some(_), Some(_)) => {
                return Err(Failure::BadRequest(
                    "give `expires_in` or `expires_at`, not both".into(),
                ));
            }
            (Some(text), None) => {
                let ms = parse_duration_ms(text).map_err(Failure::BadRequest)?;
                Some(now.plus_ms(ms))
            }
            (None, Some(text)) => Some(
                tollgate_engine::time::parse_rfc3339(text)
                    .map_err(|e| Failure::BadRequest(format!("`expires_at`: {e}")))?,
            ),
            (None, None) => None,
        };
        let spec = KeySpec {
            user: request.user,
            agent: request.agent,
            expires_at,
            models: allow_list(&request.models).map_err(|e| Failure::BadRequest(e.to_string()))?,
            limits: KeyLimits {
                requests_per_minute: request.requests_per_minute,
                tokens_per_minute: request.tokens_per_minute,
            },
            scopes: tollgate_engine::Scopes::parse(&request.scopes)
                .map_err(|e| Failure::BadRequest(format!("`scopes`: {e}")))?,
            created_at: now,
            revoked: false,
            tight: request.tight,
        };
        Ok(KeyRequest {
            allocation: request.allocation,
            spec,
        })
    }
}

/// `POST /admin/v1/allocations`, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAllocation {
    name: String,
    project: String,
    #[serde(default)]
    cost_center: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    budget: Option<BudgetRequest>,
    #[serde(default)]
    tight: Tight,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetRequest {
    #[serde(default, deserialize_with = "some_amount")]
    limit: Option<Nanos>,
    #[serde(default)]
    period: Option<Period>,
    #[serde(default)]
    soft_limit_percent: Option<u8>,
}

fn some_amount<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Nanos>, D::Error> {
    tollgate_engine::money::deserialize_amount(de).map(Some)
}

/// An allocation request that passed every check of its own (the directory still checks its
/// project and that the name is new, when its record is applied).
#[derive(Debug)]
pub struct AllocationRequest {
    /// The new allocation's name, a valid name.
    pub name: String,
    /// Its project's name, as sent.
    pub project: String,
    /// The journal record that makes it.
    pub record: Record,
}

/// Parses and checks an allocation request.
pub fn allocation_request(body: &[u8]) -> Result<AllocationRequest, Failure> {
    let request: CreateAllocation = serde_json::from_slice(body)
        .map_err(|e| Failure::BadRequest(format!("allocation request: {e}")))?;
    if !crate::config::is_name(&request.name) {
        return Err(Failure::BadRequest(format!(
            "`{}` is not a valid allocation name",
            request.name
        )));
    }
    let budget = request.budget.unwrap_or(BudgetRequest {
        limit: None,
        period: None,
        soft_limit_percent: None,
    });
    let soft = budget
        .soft_limit_percent
        .unwrap_or(SOFT_LIMIT_PERCENT_DEFAULT);
    if soft == 0 || soft > 100 {
        return Err(Failure::BadRequest(
            "`soft_limit_percent` must be between 1 and 100".into(),
        ));
    }
    if budget.period == Some(Period::Minute) {
        return Err(Failure::BadRequest(
            "a budget's `period` must be day, week, month or total".into(),
        ));
    }
    let record = Record::CreateAllocation {
        name: request.name.clone(),
        project: request.project.clone(),
        cost_center: request.cost_center,
        models: request.models,
        budget: BudgetSpec {
            limit: budget.limit,
            period: budget.period.unwrap_or(Period::Month),
            soft_limit_percent: soft,
        },
        tight: request.tight,
    };
    Ok(AllocationRequest {
        name: request.name,
        project: request.project,
        record,
    })
}

/// Parses `PUT /admin/v1/budgets/{level}/{name}`'s `{"limit": "50.00"}` (a limit) or
/// `{"limit": null}` (none).
pub fn limit_request(body: &[u8]) -> Result<Option<Nanos>, Failure> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetLimit {
        #[serde(deserialize_with = "some_amount")]
        limit: Option<Nanos>,
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields))
            if fields.get("limit") == Some(&serde_json::Value::Null) && fields.len() == 1 =>
        {
            Ok(None)
        }
        _ => serde_json::from_slice::<SetLimit>(body)
            .map(|request| request.limit)
            .map_err(|e| Failure::BadRequest(format!("budget request: {e}"))),
    }
}

/// Parses `POST /admin/v1/operators`'s `{"name", "role", "team"?}`: a name of 1 to 128
/// characters, a role, and a team exactly when the role is `team-admin`.
pub fn operator_request(body: &[u8], now: UnixMs) -> Result<OperatorSpec, Failure> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Create {
        name: String,
        role: String,
        team: Option<String>,
    }
    let create: Create = serde_json::from_slice(body)
        .map_err(|e| Failure::BadRequest(format!("operators body: {e}")))?;
    let role = Role::parse(&create.role).map_err(|e| Failure::BadRequest(e.to_string()))?;
    if create.name.is_empty() || create.name.chars().count() > 128 {
        return Err(Failure::BadRequest("`name`: 1 to 128 characters".into()));
    }
    if (role == Role::TeamAdmin) != create.team.is_some() {
        return Err(Failure::BadRequest(
            "`team`: a team-admin names its team, and only a team-admin does".into(),
        ));
    }
    Ok(OperatorSpec {
        name: create.name,
        role,
        team: create.team,
        created_at: now,
    })
}

/// Parses `30d`, `12h`, `90m`, `45s` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30d, 12h or 90m"))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(format!("`{text}` is not a duration like 30d, 12h or 90m")),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms > 0 && *ms <= 100 * 365 * 86_400_000)
        .ok_or_else(|| format!("`{text}` must be between 1 s and 100 years"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_duration_ms("90m"), Ok(90 * 60_000));
        assert!(parse_duration_ms("0d").is_err());
        assert!(parse_duration_ms("d").is_err());
        assert!(parse_duration_ms("3w").is_err());
        assert!(parse_duration_ms("99999999999999d").is_err());
    }

    #[test]
    fn bodies_are_checked_before_anything_is_looked_up() {
        let now = UnixMs(1_000);
        let key = KeyRequest::parse(br#"{"allocation":"a","user":"u","expires_in":"1h"}"#, now);
        assert!(key.is_ok_and(
            |k| k.allocation == "a" && k.spec.expires_at == Some(now.plus_ms(3_600_000))
        ));
        let both = br#"{"allocation":"a","user":"u","expires_in":"1h","expires_at":"2030-01-01T00:00:00Z"}"#;
        assert!(KeyRequest::parse(both, now).is_err());
        assert!(KeyRequest::parse(br#"{"allocation":"a","user":" "}"#, now).is_err());
        assert!(allocation_request(br#"{"name":"a b","project":"p"}"#).is_err());
        let soft = br#"{"name":"a","project":"p","budget":{"soft_limit_percent":0}}"#;
        assert!(allocation_request(soft).is_err());
        let made = allocation_request(br#"{"name":"a","project":"p"}"#);
        assert!(made.is_ok_and(|a| matches!(a.record, Record::CreateAllocation { .. })));
        assert_eq!(limit_request(br#"{"limit":null}"#).ok(), Some(None));
        assert_eq!(
            limit_request(br#"{"limit":"1.5"}"#).ok(),
            Some(Some(Nanos(1_500_000_000)))
        );
        assert!(limit_request(br#"{"limit":"1.5","x":1}"#).is_err());
    }

    #[test]
    fn operator_requests_take_a_role_and_its_team_and_refuse_the_rest_by_name() {
        let now = UnixMs(5);
        let parse = |body: &str| operator_request(body.as_bytes(), now);
        let ok = parse(r#"{"name":"ada","role":"team-admin","team":"research"}"#).unwrap();
        assert_eq!(
            (ok.role, ok.team.as_deref()),
            (Role::TeamAdmin, Some("research"))
        );
        assert_eq!(
            parse(r#"{"name":"f","role":"viewer"}"#).unwrap().created_at,
            now
        );
        for (body, said) in [
            (r#"{"name":"ada","role":"root"}"#.to_owned(), "role"),
            (r#"{"name":"ada","role":"team-admin"}"#.to_owned(), "`team`"),
            (
                r#"{"name":"ada","role":"viewer","team":"x"}"#.to_owned(),
                "`team`",
            ),
            (r#"{"name":"","role":"viewer"}"#.to_owned(), "`name`"),
            (
                format!(r#"{{"name":"{}","role":"admin"}}"#, "a".repeat(129)),
                "`name`",
            ),
            (
                r#"{"name":"ada","role":"admin","secret":"x"}"#.to_owned(),
                "unknown field",
            ),
            ("{\"name\": ".to_owned(), "operators body"),
            ("\u{ff}".to_owned(), "operators body"),
        ] {
            let refused = operator_request(body.as_bytes(), now)
                .unwrap_err()
                .to_string();
            assert!(refused.contains(said), "{body}: {refused}");
        }
    }
}
