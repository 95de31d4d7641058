//! OpenCost's allocation API (`GET /allocation/compute` or `/allocation`) as JSON, into
//! core-hours, GPU-hours and GB-months.
//!
//! Fetch it with a fixed window and a step, aggregated by whatever names the allocation:
//!
//! ```text
//! curl -G http://opencost:9003/allocation/compute -d window=2026-11-23T00:00:00Z,2026-11-24T00:00:00Z \
//!   -d step=1d -d aggregate=namespace > opencost.json
//! ```
//!
//! The answer is `{"code": 200, "data": [{"<name>": {allocation}, ...}, ...]}`, one map per
//! step. Each allocation gives up to three records: `cpuCoreHours` as core-hours, `gpuHours`
//! as GPU-hours and `pvByteHours` as GB-months (10^9 bytes for 730 hours). RAM has no tollgate
//! unit and is left to OpenCost. The tollgate allocation is, by `--allocation-from`, the
//! namespace (`properties.namespace`, the default), a label (`label:<name>`, as OpenCost writes
//! label names) or the aggregate's own name, then renamed by `--map`. OpenCost's own entries
//! (`__idle__`, `__unallocated__`, `__unmounted__`) belong to no team and are skipped and
//! counted. The records span the allocation's `window` and their ids are
//! `opencost:<cluster>:<name>:<window start>:<window end>:<unit>`, so importing the same window
//! again changes nothing.
//!
//! OpenCost writes floating-point numbers; their text is read digit by digit and rounded once
//! to the nearest micro-unit. Errors name the line the allocation starts on.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tollgate_engine::ledger::{RecordId, UsageRecord, parse_name};
use tollgate_engine::time::parse_rfc3339;
use tollgate_engine::{Micros, ResourceUnit, Site};

use super::number::micros_of;
use super::{Import, ImportError, Mapping};

/// Bytes in a GB (decimal, as clouds bill storage) times hours in a month (8760 / 12).
pub const BYTE_HOURS_PER_GB_MONTH: u128 = 1_000_000_000 * 730;

/// What names the tollgate allocation of an OpenCost allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllocationFrom {
    /// `properties.namespace`.
    #[default]
    Namespace,
    /// `properties.labels.<label>`.
    Label(String),
    /// The aggregate's name (what `aggregate=` grouped by).
    Name,
}

impl AllocationFrom {
    /// Parses `namespace`, `name` or `label:<name>`.
    pub fn parse(text: &str) -> Result<AllocationFrom, String> {
        match text {
            "namespace" => Ok(AllocationFrom::Namespace),
            "name" => Ok(AllocationFrom::Name),
            _ => match text.strip_prefix("label:") {
                Some(label) if !label.is_empty() => Ok(AllocationFrom::Label(label.to_owned())),
                _ => Err(format!(
                    "`{text}`: choose namespace, name or label:<label name>"
                )),
            },
        }
    }
}

/// How to read a file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// What names the allocation.
    pub allocation_from: AllocationFrom,
    /// Renames to allocations.
    pub map: Mapping,
    /// The cluster when an allocation's properties do not name one.
    pub cluster: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(borrow, default)]
    data: Option<Vec<Option<BTreeMap<String, &'a RawValue>>>>,
}

#[derive(Deserialize)]
struct Allocation<'a> {
    name: String,
    #[serde(default)]
    properties: Option<Properties>,
    window: Window,
    #[serde(borrow, rename = "cpuCoreHours", default)]
    cpu_core_hours: Option<&'a RawValue>,
    #[serde(borrow, rename = "gpuHours", default)]
    gpu_hours: Option<&'a RawValue>,
    #[serde(borrow, rename = "pvByteHours", default)]
    pv_byte_hours: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Window {
    start: String,
    end: String,
}

/// The 1-based line of `part`, a slice of `text`.
fn line_of(text: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
    let before = text.get(..offset.min(text.len())).unwrap_or_default();
    before.bytes().filter(|&b| b == b'\n').count() + 1
}

/// Reads an allocation API answer.
pub fn parse(text: &str, options: &Options) -> Result<Import, ImportError> {
    let mut import = Import::default();
    let mut errors = ImportError::default();
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(e) => {
            errors.push(
                e.line().max(1),
                format!("not an OpenCost allocation answer: {e}"),
            );
            return Err(errors);
        }
    };
    if let Some(code) = envelope.code
        && code != 200
    {
        errors.push(
            1,
            format!(
                "OpenCost answered code {code}: {}",
                envelope.message.as_deref().unwrap_or("(no message)")
            ),
        );
        return Err(errors);
    }
    let Some(sets) = envelope.data else {
        errors.push(1, "no `data`: expected {\"code\": 200, \"data\": [...]}");
        return Err(errors);
    };
    let mut first_line_of: BTreeMap<String, usize> = BTreeMap::new();
    for (key, raw) in sets.into_iter().flatten().flatten() {
        let line = line_of(text, raw.get());
        if key.starts_with("__") && key.ends_with("__") {
            import.skip("OpenCost's own entries (__idle__, __unallocated__, __unmounted__)");
            continue;
        }
        match allocation(raw, options) {
            Ok(records) if records.is_empty() => import.skip("allocations that used nothing"),
            Ok(records) => {
                let mut duplicate = None;
                for record in &records {
                    if let Some(first) = first_line_of.insert(record.id.as_str().to_owned(), line) {
                        duplicate = Some((record.id.as_str().to_owned(), first));
                    }
                }
                match duplicate {
                    Some((id, first)) => errors.push(
                        line,
                        format!("`{key}`: record {id} appears twice (also on line {first})"),
                    ),
                    None => import
                        .records
                        .extend(records.into_iter().map(|r| (line, r))),
                }
            }
            Err(reason) => errors.push(line, format!("`{key}`: {reason}")),
        }
    }
    errors.into_result(import)
}

/// The records of one OpenCost allocation: one per unit it used more than nothing of.
fn allocation(raw: &RawValue, options: &Options) -> Result<Vec<UsageRecord>, String> {
    let a: Allocation<'_> = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let quantities = quantities(&a)?;
    if quantities.is_empty() {
        return Ok(Vec::new());
    }
    let properties = a.properties.unwrap_or(Properties {
        cluster: None,
        namespace: None,
        labels: None,
    });
    let source = allocation_source(&a.name, &properties, &options.allocation_from)?;
    let allocation =
        parse_name("allocation", options.map.allocation(&source)).map_err(|e| e.to_string())?;
    let cluster = properties
        .cluster
        .or_else(|| options.cluster.clone())
        .ok_or("no properties.cluster: pass --cluster")?;
    let cluster = parse_name("cluster", &cluster).map_err(|e| e.to_string())?;
    let start = parse_rfc3339(&a.window.start).map_err(|e| format!("window.start: {e}"))?;
    let end = parse_rfc3339(&a.window.end).map_err(|e| format!("window.end: {e}"))?;
    if end < start {
        return Err(format!("window.end {end} is before window.start {start}"));
    }
    let mut records = Vec::with_capacity(quantities.len());
    for (unit, quantity) in quantities {
        let id = format!(
            "opencost:{cluster}:{}:{}:{}:{}",
            a.name,
            tollgate_engine::time::format_rfc3339_s(start),
            tollgate_engine::time::format_rfc3339_s(end),
            unit.as_str()
        );
        records.push(UsageRecord {
            id: RecordId::parse(&id).map_err(|e| format!("record id: {e}"))?,
            allocation: Arc::clone(&allocation),
            unit,
            quantity,
            start,
            end,
            site: Site {
                cluster: Some(Arc::clone(&cluster)),
                partition: None,
                instance_type: None,
            },
            user: None,
            reservation: None,
        });
    }
    Ok(records)
}

/// Core-hours, GPU-hours and GB-months of an allocation, only those above nothing; a value
/// OpenCost wrote as null (it could not compute it) counts as nothing.
fn quantities(a: &Allocation<'_>) -> Result<Vec<(ResourceUnit, Micros)>, String> {
    let mut quantities = Vec::new();
    for (unit, field, raw, divisor) in [
        (ResourceUnit::CoreHour, "cpuCoreHours", a.cpu_core_hours, 1),
        (ResourceUnit::GpuHour, "gpuHours", a.gpu_hours, 1),
        (
            ResourceUnit::GbMonth,
            "pvByteHours",
            a.pv_byte_hours,
            BYTE_HOURS_PER_GB_MONTH,
        ),
    ] {
        // OpenCost writes null for a value it could not compute (NaN): nothing to bill.
        let Some(raw) = raw.filter(|r| r.get() != "null") else {
            continue;
        };
        let quantity = micros_of(raw.get(), divisor).map_err(|e| format!("{field}: {e}"))?;
        if quantity.0 > 0 {
            quantities.push((unit, quantity));
        }
    }
    Ok(quantities)
}

/// The name `--allocation-from` picks for an allocation, before `--map` renames it.
fn allocation_source(
    name: &str,
    properties: &Properties,
    from: &AllocationFrom,
) -> Result<String, String> {
    match from {
        AllocationFrom::Namespace => properties.namespace.clone().ok_or_else(|| {
            "no properties.namespace (aggregate by namespace, or choose --allocation-from)"
                .to_owned()
        }),
        AllocationFrom::Name => Ok(name.to_owned()),
        AllocationFrom::Label(label) => properties
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .cloned()
            .ok_or_else(|| format!("no label `{label}` in properties.labels")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An `/allocation/compute?window=...&step=1d&aggregate=namespace` answer with OpenCost's
    /// fields in OpenCost's order: two days, a GPU namespace with a volume, a CPU-only
    /// namespace, the cluster's idle entry, a namespace that used nothing, a NaN written as
    /// null and a float written with an exponent.
    const OPENCOST: &str = r#"{
  "code": 200,
  "data": [
    {
      "__idle__": {
        "name": "__idle__",
        "properties": {"cluster": "cluster-one"},
        "window": {"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
        "start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z", "minutes": 1440,
        "cpuCores": 5.5, "cpuCoreHours": 132, "cpuCost": 3.1, "gpuCount": 0, "gpuHours": 0,
        "ramByteHours": 2.4e+12, "totalCost": 4.2
      },
      "ml-serving": {
        "name": "ml-serving",
        "properties": {"cluster": "cluster-one", "namespace": "ml-serving",
                       "labels": {"team": "ml", "app_kubernetes_io_name": "vllm"}},
        "window": {"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
        "start": "2026-11-22T00:00:00Z",
        "end": "2026-11-23T00:00:00Z",
        "minutes": 1440,
        "cpuCores": 4.000000000000001,
        "cpuCoreRequestAverage": 4,
        "cpuCoreUsageAverage": 2.317,
        "cpuCoreHours": 96.00000000000003,
        "cpuCost": 2.274,
        "cpuCostAdjustment": 0,
        "cpuEfficiency": 0.579,
        "gpuCount": 2,
        "gpuHours": 48,
        "gpuCost": 70.8,
        "gpuCostAdjustment": 0,
        "networkTransferBytes": 0,
        "networkReceiveBytes": 0,
        "networkCost": 0,
        "networkCostAdjustment": 0,
        "loadBalancerCost": 0,
        "loadBalancerCostAdjustment": 0,
        "pvBytes": 107374182400,
        "pvByteHours": 2576980377600,
        "pvCost": 0.39,
        "pvs": null,
        "pvCostAdjustment": 0,
        "ramBytes": 34359738368,
        "ramByteRequestAverage": 34359738368,
        "ramByteUsageAverage": 20615843020.8,
        "ramByteHours": 824633720832,
        "ramCost": 0.96,
        "ramCostAdjustment": 0,
        "ramEfficiency": 0.6,
        "sharedCost": 0,
        "externalCost": 0,
        "totalCost": 74.424,
        "totalEfficiency": 0.59,
        "rawAllocationOnly": null
      },
      "batch": {
        "name": "batch",
        "properties": {"cluster": "cluster-one", "namespace": "batch"},
        "window": {"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
        "cpuCoreHours": 1.2345675e+01, "gpuHours": 0, "pvByteHours": null, "totalCost": 0.3
      },
      "quiet": {
        "name": "quiet",
        "properties": {"cluster": "cluster-one", "namespace": "quiet"},
        "window": {"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
        "cpuCoreHours": 0, "gpuHours": 0, "pvByteHours": 0, "totalCost": 0
      }
    },
    {
      "ml-serving": {
        "name": "ml-serving",
        "properties": {"cluster": "cluster-one", "namespace": "ml-serving"},
        "window": {"start": "2026-11-23T00:00:00Z", "end": "2026-11-24T00:00:00Z"},
        "cpuCoreHours": 48, "gpuHours": 24.5, "pvByteHours": 0, "totalCost": 36.1
      }
    }
  ]
}"#;

    fn ids(import: &Import) -> Vec<(usize, String, u64)> {
        import
            .records
            .iter()
            .map(|(line, r)| (*line, r.id.as_str().to_owned(), r.quantity.0))
            .collect()
    }

    #[test]
    fn an_allocation_answer_becomes_core_gpu_and_storage_records() {
        let import = parse(OPENCOST, &Options::default()).unwrap();
        let w1 = "2026-11-22T00:00:00Z:2026-11-23T00:00:00Z";
        let w2 = "2026-11-23T00:00:00Z:2026-11-24T00:00:00Z";
        assert_eq!(
            ids(&import),
            vec![
                (
                    56,
                    format!("opencost:cluster-one:batch:{w1}:core_hour"),
                    12_345_675
                ),
                (
                    13,
                    format!("opencost:cluster-one:ml-serving:{w1}:core_hour"),
                    96_000_000
                ),
                (
                    13,
                    format!("opencost:cluster-one:ml-serving:{w1}:gpu_hour"),
                    48_000_000
                ),
                // 100 GiB for 24 h: 2576980377600 / (1e9 × 730) GB-months.
                (
                    13,
                    format!("opencost:cluster-one:ml-serving:{w1}:gb_month"),
                    3_530_110
                ),
                (
                    70,
                    format!("opencost:cluster-one:ml-serving:{w2}:core_hour"),
                    48_000_000
                ),
                (
                    70,
                    format!("opencost:cluster-one:ml-serving:{w2}:gpu_hour"),
                    24_500_000
                ),
            ]
        );
        let record = &import.records[1].1;
        assert_eq!(&*record.allocation, "ml-serving");
        assert_eq!(record.site.cluster.as_deref(), Some("cluster-one"));
        assert_eq!(record.start.to_string(), "2026-11-22T00:00:00.000Z");
        let skipped: Vec<(&str, u64)> = import.skipped.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            skipped,
            vec![
                (
                    "OpenCost's own entries (__idle__, __unallocated__, __unmounted__)",
                    1
                ),
                ("allocations that used nothing", 1),
            ]
        );
    }

    #[test]
    fn the_allocation_can_come_from_a_label_or_the_name_and_be_renamed() {
        let by_label = Options {
            allocation_from: AllocationFrom::parse("label:team").unwrap(),
            ..Options::default()
        };
        // Only the first day's ml-serving carries the label: the others that used something are
        // errors, by line (the namespace that used nothing is skipped before it is named).
        let errors = parse(OPENCOST, &by_label).unwrap_err();
        let lines: Vec<usize> = errors.lines.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![56, 70]);
        assert!(errors.lines[0].reason.contains("no label `team`"));
        let by_name = Options {
            allocation_from: AllocationFrom::Name,
            map: Mapping::parse(&["ml-serving=chatbot-prod"]).unwrap(),
            cluster: None,
        };
        let import = parse(OPENCOST, &by_name).unwrap();
        assert_eq!(&*import.records[1].1.allocation, "chatbot-prod");
        assert_eq!(&*import.records[0].1.allocation, "batch");
        assert!(AllocationFrom::parse("label:").is_err());
        assert!(AllocationFrom::parse("pod").is_err());
    }

    #[test]
    fn bad_answers_and_values_name_their_lines() {
        let check = |text: &str, line: usize, needle: &str| {
            let errors = parse(text, &Options::default()).unwrap_err();
            let all = errors.to_string();
            assert_eq!(errors.lines[0].line, line, "{all}");
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        };
        check(
            r#"{"code": 500, "message": "Prometheus is down"}"#,
            1,
            "Prometheus is down",
        );
        check(
            "{\n\"code\": 200,\n\"data\": [\n{\"a\": }]}",
            4,
            "not an OpenCost",
        );
        check(r#"{"code": 200}"#, 1, "no `data`");
        let bad_value = "{\"code\":200,\"data\":[{\n\"a\": {\"name\":\"a\",\"properties\":{\"cluster\":\"c\",\"namespace\":\"a\"},\"window\":{\"start\":\"2026-11-22T00:00:00Z\",\"end\":\"2026-11-23T00:00:00Z\"},\"cpuCoreHours\":-3}}]}";
        check(bad_value, 2, "cpuCoreHours: `-3` is negative");
        let no_window = "{\"code\":200,\"data\":[{\"a\":\n\n{\"name\":\"a\"}}]}";
        check(no_window, 3, "missing field `window`");
        let no_cluster = "{\"code\":200,\"data\":[{\"a\": {\"name\":\"a\",\"properties\":{\"namespace\":\"a\"},\"window\":{\"start\":\"2026-11-22T00:00:00Z\",\"end\":\"2026-11-23T00:00:00Z\"},\"cpuCoreHours\":3}}]}";
        check(no_cluster, 1, "--cluster");
        let with_cluster = Options {
            cluster: Some("k8s-1".into()),
            ..Options::default()
        };
        assert_eq!(
            parse(no_cluster, &with_cluster).unwrap().records[0]
                .1
                .site
                .cluster
                .as_deref(),
            Some("k8s-1")
        );
        // An empty answer (no steps, or a null set) imports nothing, without error.
        assert!(
            parse(r#"{"code":200,"data":[null]}"#, &Options::default())
                .unwrap()
                .records
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panicking(text in "(?s).{0,300}") {
            let _ = parse(&text, &Options::default());
            let wrapped = format!("{{\"code\":200,\"data\":[{{\"x\":{text}}}]}}");
            let _ = parse(&wrapped, &Options::default());
        }

        #[test]
        fn any_number_text_parses_or_is_refused(number in "[-+0-9.eE]{1,30}") {
            let text = format!("{{\"code\":200,\"data\":[{{\"a\":{{\"name\":\"a\",\"properties\":{{\"cluster\":\"c\",\"namespace\":\"a\"}},\"window\":{{\"start\":\"2026-11-22T00:00:00Z\",\"end\":\"2026-11-23T00:00:00Z\"}},\"gpuHours\":{number}}}}}]}}");
            let _ = parse(&text, &Options::default());
        }
    }
}
