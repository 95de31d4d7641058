//! The Arrow (and so Parquet) schema of a usage event, derived in this one place.
//!
//! Each column is one field of the engine's `UsageEvent` JSON form, under the same name except
//! where a unit moves into the type: `ts_ms` becomes `ts` (a UTC timestamp), `cost_nanos` and
//! `list_cost_nanos` become `cost` and `list_cost` (exact `DECIMAL(38, 9)` amounts of the
//! currency), `quantity_micros` becomes `quantity` (`DECIMAL(38, 6)`). Counts are signed 64-bit
//! because Spark and pandas read unsigned Parquet integers poorly. A test keeps this table and
//! the JSON form in step, field for field and nullability for nullability.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use tollgate_engine::event::USAGE_EVENT_VERSION;

/// Schema metadata key holding the usage event schema version.
pub const SCHEMA_VERSION_KEY: &str = "tollgate.usage_event.version";

/// Decimal scale of `cost` and `list_cost`: nano-units.
pub const COST_SCALE: i8 = 9;

/// Decimal scale of `quantity`: millionths of a unit.
pub const QUANTITY_SCALE: i8 = 6;

/// How a column is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// Signed 64-bit integer.
    Int64,
    /// Signed 32-bit integer.
    Int32,
    /// Milliseconds since the epoch, UTC.
    TimestampMs,
    /// An exact decimal with the given scale, from an integer of that many decimal places.
    Decimal {
        /// Digits after the point.
        scale: i8,
    },
}

/// One column and the event field it comes from.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Column name in Arrow and Parquet.
    pub name: &'static str,
    /// The event's JSON field it is read from.
    pub json_field: &'static str,
    /// Its type in Arrow and Parquet.
    pub ty: ColumnType,
    /// Whether it may be null: exactly when the JSON field may be (a test keeps them equal).
    pub nullable: bool,
}

const fn col(
    name: &'static str,
    json_field: &'static str,
    ty: ColumnType,
    nullable: bool,
) -> Column {
    Column {
        name,
        json_field,
        ty,
        nullable,
    }
}

use ColumnType::{Decimal, Int32, Int64, Text, TimestampMs};

/// Every column, in file order.
pub const COLUMNS: &[Column] = &[
    col("event_id", "event_id", Text, false),
    col("ts", "ts_ms", TimestampMs, false),
    col("kind", "kind", Text, false),
    col("v", "v", Int32, false),
    col("request_id", "request_id", Text, false),
    col("attempt", "attempt", Int32, false),
    col("org", "org", Text, true),
    col("team", "team", Text, true),
    col("project", "project", Text, true),
    col("allocation", "allocation", Text, true),
    col("cost_center", "cost_center", Text, true),
    col("user", "user", Text, true),
    col("agent", "agent", Text, true),
    col("key_id", "key_id", Text, true),
    col("provider", "provider", Text, true),
    col("model", "model", Text, true),
    col("deployment", "deployment", Text, true),
    col("tokens_in", "tokens_in", Int64, false),
    col("tokens_out", "tokens_out", Int64, false),
    col("tokens_cached", "tokens_cached", Int64, false),
    col("tokens_cache_write", "tokens_cache_write", Int64, false),
    col("tokens_reasoning", "tokens_reasoning", Int64, false),
    col("usage_source", "usage_source", Text, false),
    col(
        "quantity",
        "quantity_micros",
        Decimal {
            scale: QUANTITY_SCALE,
        },
        true,
    ),
    col("unit", "unit", Text, true),
    col("cluster", "cluster", Text, true),
    col("partition", "partition", Text, true),
    col(
        "list_cost",
        "list_cost_nanos",
        Decimal { scale: COST_SCALE },
        false,
    ),
    col("cost", "cost_nanos", Decimal { scale: COST_SCALE }, false),
    col("currency", "currency", Text, false),
    col("rate_card_version", "rate_card_version", Text, true),
    col("ttft_ms", "ttft_ms", Int64, true),
    col("latency_ms", "latency_ms", Int64, true),
    col("status", "status", Text, false),
    col("http_status", "http_status", Int32, true),
    // Added within version 1, so last: files written before it lack the column, and readers
    // that mix old and new files unify by name (DuckDB's `union_by_name`).
    col("instance_type", "instance_type", Text, true),
    col("prompt_prefix", "prompt_prefix", Text, true),
];

/// Decimal precision of money and quantity columns: 38 digits, the most a 128-bit decimal holds.
pub const DECIMAL_PRECISION: u8 = 38;

impl ColumnType {
    /// The Arrow type.
    #[must_use]
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Text => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::TimestampMs => {
                DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC")))
            }
            ColumnType::Decimal { scale } => DataType::Decimal128(DECIMAL_PRECISION, scale),
        }
    }
}

/// The Arrow schema of usage events, with the event schema version in its metadata.
#[must_use]
pub fn usage_event_schema() -> Schema {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
        .collect();
    let metadata = HashMap::from([(
        SCHEMA_VERSION_KEY.to_owned(),
        USAGE_EVENT_VERSION.to_string(),
    )]);
    Schema::new_with_metadata(fields, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc as StdArc;
    use tollgate_engine::UsageEvent;

    fn json_object(event: &UsageEvent) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_slice(&event.to_json()).unwrap() {
            serde_json::Value::Object(map) => map,
            other => panic!("event JSON is not an object: {other}"),
        }
    }

    /// An event with every optional field empty.
    fn sparse() -> UsageEvent {
        UsageEvent {
            org: None,
            team: None,
            project: None,
            allocation: None,
            cost_center: None,
            user: None,
            agent: None,
            key_id: None,
            provider: None,
            model: None,
            deployment: None,
            quantity_micros: None,
            unit: None,
            cluster: None,
            partition: None,
            instance_type: None,
            prompt_prefix: None,
            rate_card_version: None,
            ttft_ms: None,
            latency_ms: None,
            http_status: None,
            ..UsageEvent::sample()
        }
    }

    #[test]
    fn every_json_field_has_exactly_one_column() {
        let json: BTreeSet<String> = json_object(&UsageEvent::sample()).keys().cloned().collect();
        let mapped: BTreeSet<String> = COLUMNS.iter().map(|c| c.json_field.to_owned()).collect();
        assert_eq!(
            json, mapped,
            "UsageEvent JSON fields and Parquet columns drifted apart"
        );
        let names: BTreeSet<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), COLUMNS.len(), "duplicate column name");
    }

    #[test]
    fn nullability_matches_the_json_form() {
        let sparse = json_object(&sparse());
        let full = json_object(&UsageEvent::sample());
        for c in COLUMNS {
            let can_be_null = sparse
                .get(c.json_field)
                .is_some_and(serde_json::Value::is_null);
            assert_eq!(c.nullable, can_be_null, "column {} nullability", c.name);
            assert!(
                !full[c.json_field].is_null(),
                "sample leaves {} empty",
                c.json_field
            );
        }
    }

    #[test]
    fn types_match_the_json_form() {
        let full = json_object(&UsageEvent::sample());
        for c in COLUMNS {
            let value = &full[c.json_field];
            let fits = match c.ty {
                ColumnType::Text => value.is_string(),
                ColumnType::Int64
                | ColumnType::Int32
                | ColumnType::TimestampMs
                | ColumnType::Decimal { .. } => value.is_u64() || value.is_i64(),
            };
            assert!(
                fits,
                "column {} is {:?} but JSON holds {value}",
                c.name, c.ty
            );
        }
        let schema = usage_event_schema();
        assert_eq!(schema.metadata()[SCHEMA_VERSION_KEY], "1");
        assert_eq!(
            schema.field_with_name("cost").unwrap().data_type(),
            &DataType::Decimal128(38, 9)
        );
        assert_eq!(
            schema.field_with_name("ts").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some(StdArc::from("UTC")))
        );
    }
}
