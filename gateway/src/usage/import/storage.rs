//! Storage as a CSV of GB-months by project and month.
//!
//! ```text
//! month,project,gb_months,cluster,tier
//! 2026-10,chatbot,1250.5,lustre1,scratch
//! 2026-10,"vision, team b",80,lustre1,project
//! ```
//!
//! The header names the columns, in any order: `month` (`YYYY-MM`, UTC) and `gb_months` (an
//! exact decimal, at most six places) are required, with `allocation` or `project` (or both);
//! `cluster` and `tier` (priced as the partition) are optional. Fields may be quoted as in
//! RFC 4180, without line breaks inside. The allocation is the `allocation` column, else
//! `--map project=allocation`, else the project's own name. A record spans its month and its id
//! is `storage:<cluster>:<project or allocation>:<tier>:<month>` (`-` for what is absent), so
//! importing the same month again changes nothing. Rows of zero GB-months give no record.

use std::collections::HashMap;

use tollgate_engine::ledger::{RecordId, UsageRecord, parse_name};
use tollgate_engine::time::CivilTime;
use tollgate_engine::{Micros, ResourceUnit, Site, UnixMs};

use super::{Import, ImportError, Mapping, numbered_lines};

const KNOWN: [&str; 6] = [
    "month",
    "project",
    "allocation",
    "gb_months",
    "cluster",
    "tier",
];

/// Splits one CSV line into fields (RFC 4180 quoting, no line breaks inside a field).
pub fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ('"', false) => return Err("a quote inside an unquoted field".into()),
            (',', false) => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (c, _) if !quoted && was_quoted => {
                return Err(format!("`{c}` after a closing quote"));
            }
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed (line breaks inside fields are not read)".into());
    }
    fields.push(field);
    Ok(fields)
}

/// `YYYY-MM` into the first instants of that month and of the next.
fn month_span(text: &str) -> Result<(UnixMs, UnixMs), String> {
    let bad = || format!("month `{text}` is not like 2026-10");
    let (year, month) = text.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || month.len() != 2 {
        return Err(bad());
    }
    let year: i64 = year.parse().map_err(|_| bad())?;
    let month: u8 = month.parse().map_err(|_| bad())?;
    let first = |year: i64, month: u8| {
        UnixMs::from_civil(CivilTime {
            year,
            month,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millisecond: 0,
        })
    };
    let start = first(year, month).ok_or_else(bad)?;
    let end = if month == 12 {
        first(year + 1, 1)
    } else {
        first(year, month + 1)
    }
    .ok_or_else(bad)?;
    Ok((start, end))
}

/// Reads a storage CSV; `map` renames projects to allocations.
pub fn parse(text: &str, map: &Mapping) -> Result<Import, ImportError> {
    let mut import = Import::default();
    let mut errors = ImportError::default();
    let mut lines = numbered_lines(text).filter(|(_, l)| !l.trim().is_empty());
    let header = match Header::parse(lines.next()) {
        Ok(header) => header,
        Err((line, reason)) => {
            errors.push(line, reason);
            return Err(errors);
        }
    };
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (number, line) in lines {
        let fields = match split_csv(line) {
            Ok(fields) if fields.len() == header.width => fields,
            Ok(fields) => {
                errors.push(
                    number,
                    format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        header.width
                    ),
                );
                continue;
            }
            Err(reason) => {
                errors.push(number, reason);
                continue;
            }
        };
        let field = |i: Option<usize>| {
            i.and_then(|i| fields.get(i))
                .map(|f| f.trim())
                .filter(|f| !f.is_empty())
        };
        match row(&field, &header, map) {
            Ok(None) => import.skip("rows of zero GB-months"),
            Ok(Some(record)) => {
                if let Some(first) = first_line_of.insert(record.id.as_str().to_owned(), number) {
                    errors.push(
                        number,
                        format!(
                            "{} appears twice (also on line {first})",
                            record.id.as_str()
                        ),
                    );
                    continue;
                }
                import.records.push((number, record));
            }
            Err(reason) => errors.push(number, reason),
        }
    }
    errors.into_result(import)
}

/// Where each column is, found once from the header line.
struct Header {
    /// Fields on every line.
    width: usize,
    /// The `month` column.
    month: usize,
    /// The `gb_months` column.
    gb_months: usize,
    /// The `project` column; it or `allocation` is there.
    project: Option<usize>,
    /// The `allocation` column; it or `project` is there.
    allocation: Option<usize>,
    /// The optional `cluster` column.
    cluster: Option<usize>,
    /// The optional `tier` column, priced as the partition.
    tier: Option<usize>,
}

impl Header {
    /// Reads the first non-blank line, or says on which line (and why) the file cannot be read.
    fn parse(first: Option<(usize, &str)>) -> Result<Header, (usize, String)> {
        let Some((header_line, header)) = first else {
            return Err((
                1,
                "empty file: expected a header like month,project,gb_months".into(),
            ));
        };
        let columns: Vec<String> = split_csv(header)
            .map_err(|reason| (header_line, reason))?
            .into_iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let unknown: Vec<&str> = columns
            .iter()
            .map(String::as_str)
            .filter(|c| !KNOWN.contains(c))
            .collect();
        let position = |name: &str| columns.iter().position(|c| c == name);
        let (month, gb_months) = (position("month"), position("gb_months"));
        let (project, allocation) = (position("project"), position("allocation"));
        let (Some(month), Some(gb_months), true, true) = (
            month,
            gb_months,
            project.is_some() || allocation.is_some(),
            unknown.is_empty(),
        ) else {
            return Err((
                header_line,
                format!(
                    "the header needs month, gb_months and project or allocation (cluster and \
                     tier are optional){}",
                    if unknown.is_empty() {
                        String::new()
                    } else {
                        format!("; unknown column(s): {}", unknown.join(", "))
                    }
                ),
            ));
        };
        Ok(Header {
            width: columns.len(),
            month,
            gb_months,
            project,
            allocation,
            cluster: position("cluster"),
            tier: position("tier"),
        })
    }
}

/// One row's record, `None` for zero GB-months; `field` gives a column's non-empty text.
fn row<'a>(
    field: &impl Fn(Option<usize>) -> Option<&'a str>,
    header: &Header,
    map: &Mapping,
) -> Result<Option<UsageRecord>, String> {
    let (start, end) = month_span(field(Some(header.month)).unwrap_or_default())?;
    let quantity_text = field(Some(header.gb_months)).ok_or("gb_months is empty")?;
    if quantity_text.starts_with('-') {
        return Err(format!("gb_months `{quantity_text}` is negative"));
    }
    let quantity = Micros::from_decimal(quantity_text)
        .map_err(|e| format!("gb_months `{quantity_text}`: {e}"))?;
    if quantity.0 == 0 {
        return Ok(None);
    }
    let project = field(header.project);
    let (owner, allocation) = match (project, field(header.allocation)) {
        (_, Some(a)) => (project.unwrap_or(a), a),
        (Some(p), None) => (p, map.allocation(p)),
        (None, None) => return Err("neither project nor allocation is given".into()),
    };
    let allocation = parse_name("allocation", allocation).map_err(|e| e.to_string())?;
    let name = |label: &str, value: Option<&str>| {
        value
            .map(|v| parse_name(label, v).map_err(|e| e.to_string()))
            .transpose()
    };
    let cluster = name("cluster", field(header.cluster))?;
    let tier = name("tier", field(header.tier))?;
    let c = start.to_civil();
    let id = format!(
        "storage:{}:{owner}:{}:{:04}-{:02}",
        cluster.as_deref().unwrap_or("-"),
        tier.as_deref().unwrap_or("-"),
        c.year,
        c.month
    );
    Ok(Some(UsageRecord {
        // The id holds the owner's name, which may have spaces: they become `_`.
        id: RecordId::parse(&id.replace(|c: char| !c.is_ascii_graphic(), "_"))?,
        allocation,
        unit: ResourceUnit::GbMonth,
        quantity,
        start,
        end,
        site: Site {
            cluster,
            partition: tier,
            instance_type: None,
        },
        user: None,
        reservation: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rows_become_month_long_gb_month_records() {
        let text = "month,project,gb_months,cluster,tier\r\n\
                    2026-10,chatbot,1250.5,lustre1,scratch\r\n\
                    2026-10,\"vision, team b\",80,lustre1,project\r\n\
                    \r\n\
                    2026-12,chatbot,0.000001,lustre1,scratch\r\n\
                    2026-11,idle,0,lustre1,scratch\r\n";
        let import = parse(text, &Mapping::parse(&["vision, team b=vision"]).unwrap()).unwrap();
        let got: Vec<(usize, &str, &str, u64)> = import
            .records
            .iter()
            .map(|(line, r)| (*line, r.id.as_str(), &*r.allocation, r.quantity.0))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    2,
                    "storage:lustre1:chatbot:scratch:2026-10",
                    "chatbot",
                    1_250_500_000
                ),
                (
                    3,
                    "storage:lustre1:vision,_team_b:project:2026-10",
                    "vision",
                    80_000_000
                ),
                (5, "storage:lustre1:chatbot:scratch:2026-12", "chatbot", 1),
            ]
        );
        let december = &import.records[2].1;
        assert_eq!(december.start.to_string(), "2026-12-01T00:00:00.000Z");
        assert_eq!(december.end.to_string(), "2027-01-01T00:00:00.000Z");
        assert_eq!(december.site.partition.as_deref(), Some("scratch"));
        assert_eq!(import.skipped.get("rows of zero GB-months"), Some(&1));
        // An allocation column wins over the project's name.
        let text = "allocation,month,gb_months\nchatbot-prod,2026-10,3\n";
        let import = parse(text, &Mapping::default()).unwrap();
        assert_eq!(
            import.records[0].1.id.as_str(),
            "storage:-:chatbot-prod:-:2026-10"
        );
        assert_eq!(&*import.records[0].1.allocation, "chatbot-prod");
    }

    #[test]
    fn bad_rows_are_all_reported_with_their_numbers() {
        let text = "month,project,gb_months\n\
                    2026-10,a,1\n\
                    2026-13,a,1\n\
                    2026-10,a,-4\n\
                    2026-10,a,1.0000001\n\
                    2026-10,a,lots\n\
                    2026-10,a\n\
                    2026-10,\"a,1\n\
                    2026-10,a,2\n\
                    2026-10,,2\n";
        let errors = parse(text, &Mapping::default()).unwrap_err();
        let got: Vec<usize> = errors.lines.iter().map(|e| e.line).collect();
        assert_eq!(got, vec![3, 4, 5, 6, 7, 8, 9, 10]);
        let all = errors.to_string();
        for needle in [
            "line 3: month `2026-13`",
            "line 4: gb_months `-4` is negative",
            "line 5: gb_months `1.0000001`: more than 6 decimal places",
            "line 6: gb_months `lots`",
            "line 7: 2 fields where the header has 3",
            "line 8: a quoted field is not closed",
            "line 9: storage:-:a:-:2026-10 appears twice (also on line 2)",
            "line 10: neither project nor allocation",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        for header in ["", "month,gb_months\n", "month,project,gb_months,color\n"] {
            let errors = parse(header, &Mapping::default()).unwrap_err();
            assert_eq!(errors.lines[0].line, 1, "{header:?}");
        }
    }

    #[test]
    fn csv_quoting_follows_rfc_4180() {
        assert_eq!(
            split_csv("a,\"b,c\",\"d\"\"e\",").unwrap(),
            vec!["a", "b,c", "d\"e", ""]
        );
        assert!(split_csv("a\"b").is_err());
        assert!(split_csv("\"a\"b").is_err());
        assert!(split_csv("\"a").is_err());
    }

    proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panicking(text in "(?s).{0,300}") {
            let _ = parse(&text, &Mapping::default());
            let _ = parse(&format!("month,project,gb_months,cluster,tier\n{text}"), &Mapping::default());
        }
    }
}
