//! The ledger's request bodies, parsed: a `POST /v1/usage` batch into typed records and an
//! authorize request into what it asks, every check that needs only the bytes done before the
//! directory, the rate card or the ledger is touched. Pure, so they are fuzzed.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use tollgate_engine::ledger::{UsageRecord, deserialize_quantity, parse_name};
use tollgate_engine::{Micros, ResourceUnit, Site};

use crate::http::error::Failure;

/// Longest hold a caller may ask for with `ttl_ms`: a month-long job and its queue.
pub const RESERVATION_TTL_MS_MAX: u64 = 31 * 86_400_000;

/// `POST /v1/usage`, as sent: the records stay JSON until each is parsed, so a bad one is
/// named by its index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    records: Vec<Value>,
    #[serde(default)]
    dry_run: bool,
}

/// A batch whose every record parsed, each id named once.
#[derive(Debug)]
pub struct BatchRequest {
    /// The records, in the order sent (an answer's outcomes follow it).
    pub records: Vec<UsageRecord>,
    /// Check and price everything, book nothing.
    pub dry_run: bool,
}

/// A record refused, named by its index in the batch and its field.
pub(crate) fn bad(index: usize, field: &str, reason: impl Into<String>) -> Failure {
    Failure::BadRecord {
        index,
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl BatchRequest {
    /// Parses a batch of at most `records_max` records; the first bad record is named by its
    /// index and field.
    pub fn parse(body: &[u8], records_max: usize) -> Result<BatchRequest, Failure> {
        let batch: Batch = serde_json::from_slice(body)
            .map_err(|e| Failure::BadRequest(format!("usage batch: {e}")))?;
        if batch.records.len() > records_max {
            return Err(Failure::BadRequest(format!(
                "a batch holds at most {records_max} records; this one has {}",
                batch.records.len()
            )));
        }
        let mut first_index = HashMap::with_capacity(batch.records.len());
        let mut records = Vec::with_capacity(batch.records.len());
        for (i, value) in batch.records.iter().enumerate() {
            let record =
                UsageRecord::from_json(value).map_err(|e| bad(i, &e.field, e.reason.clone()))?;
            if let Some(first) = first_index.insert(record.id.key(), i) {
                let reason = format!(
                    "`{}` is also the id of records[{first}]; a batch names each record once",
                    record.id.as_str()
                );
                return Err(bad(i, "id", reason));
            }
            records.push(record);
        }
        Ok(BatchRequest {
            records,
            dry_run: batch.dry_run,
        })
    }
}

/// `POST /v1/usage/authorize`, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authorize {
    allocation: String,
    unit: ResourceUnit,
    #[serde(deserialize_with = "deserialize_quantity")]
    quantity: Micros,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default)]
    instance_type: Option<String>,
    #[serde(default)]
    reserve: bool,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// An authorize request that passed every check of its own.
#[derive(Debug)]
pub struct AuthorizeRequest {
    /// The allocation's name, as sent (the caller looks it up).
    pub allocation: String,
    /// What is to be used.
    pub unit: ResourceUnit,
    /// How much of it.
    pub quantity: Micros,
    /// Where it runs, each name checked like a record's.
    pub site: Site,
    /// Hold the amount until usage naming the reservation settles it, or it expires.
    pub reserve: bool,
    /// How long the hold lasts, 1 ms to [`RESERVATION_TTL_MS_MAX`]; the configured default
    /// (`ledger.reservation_ttl_ms`) when absent.
    pub ttl_ms: Option<i64>,
}

impl AuthorizeRequest {
    /// Parses and checks an authorize request.
    pub fn parse(body: &[u8]) -> Result<AuthorizeRequest, Failure> {
        let request: Authorize = serde_json::from_slice(body)
            .map_err(|e| Failure::BadRequest(format!("authorize request: {e}")))?;
        let name = |field: &str, value: Option<String>| {
            value
                .map(|v| parse_name(field, &v))
                .transpose()
                .map_err(|e| Failure::BadRequest(e.to_string()))
        };
        let ttl_ms = match request.ttl_ms {
            None => None,
            Some(ms) if (1..=RESERVATION_TTL_MS_MAX).contains(&ms) => {
                Some(i64::try_from(ms).unwrap_or(i64::MAX))
            }
            Some(_) => {
                return Err(Failure::BadRequest(format!(
                    "`ttl_ms` must be between 1 and {RESERVATION_TTL_MS_MAX}"
                )));
            }
        };
        Ok(AuthorizeRequest {
            site: Site {
                cluster: name("cluster", request.cluster)?,
                partition: name("partition", request.partition)?,
                instance_type: name("instance_type", request.instance_type)?,
            },
            allocation: request.allocation,
            unit: request.unit,
            quantity: request.quantity,
            reserve: request.reserve,
            ttl_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","allocation":"a","unit":"gpu_hour","quantity":"1.5",
                "start":"2026-01-01T00:00:00Z","end":"2026-01-01T01:00:00Z"}}"#
        )
    }

    #[test]
    fn a_batch_names_its_first_bad_record_by_index_and_field() {
        let two = format!(r#"{{"records":[{},{}]}}"#, record("job-1"), record("job-2"));
        let parsed = BatchRequest::parse(two.as_bytes(), 10);
        assert!(parsed.is_ok_and(|b| b.records.len() == 2 && !b.dry_run));
        let twice = format!(r#"{{"records":[{},{}]}}"#, record("job-1"), record("job-1"));
        let refused = BatchRequest::parse(twice.as_bytes(), 10);
        assert!(
            matches!(&refused, Err(Failure::BadRecord { index: 1, field, .. }) if field == "id"),
            "{refused:?}"
        );
        assert!(BatchRequest::parse(two.as_bytes(), 1).is_err());
        assert!(BatchRequest::parse(br#"{"records":[{}]}"#, 10).is_err());
    }

    #[test]
    fn an_authorize_request_checks_its_names_and_hold() {
        let ok =
            br#"{"allocation":"a","unit":"gpu_hour","quantity":"2","cluster":"c1","ttl_ms":5}"#;
        let parsed = AuthorizeRequest::parse(ok);
        assert!(parsed.is_ok_and(|r| r.ttl_ms == Some(5) && r.site.cluster.is_some()));
        let long = br#"{"allocation":"a","unit":"gpu_hour","quantity":"2","ttl_ms":99999999999}"#;
        assert!(AuthorizeRequest::parse(long).is_err());
        let bad_name =
            br#"{"allocation":"a","unit":"gpu_hour","quantity":"2","cluster":"a\u0007b"}"#;
        assert!(AuthorizeRequest::parse(bad_name).is_err());
    }
}
