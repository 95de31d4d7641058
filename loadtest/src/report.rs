//! A run's report: JSON for machines, Markdown for people, and an SVG chart of latency
//! percentiles and throughput over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::books::Books;
use crate::fleet::{Agent, Attempt, Record, status_name};

/// Latency quantiles in milliseconds (microsecond resolution).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Quantiles {
    /// Answers measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Quantiles {
    /// From a histogram of microseconds.
    #[must_use]
    pub fn of(histogram: &Histogram<u64>) -> Quantiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Quantiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One second of the timeline.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tick {
    /// Seconds since the recorded window began.
    pub second: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Other outcomes.
    pub failed: u64,
    /// Median latency of the 2xx answers.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// The figures of one run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// `gateway`, `direct` or `proxy`.
    pub target: String,
    /// Agents (connections).
    pub agents: u32,
    /// Seconds recorded.
    pub elapsed_s: f64,
    /// 2xx answers.
    pub ok: u64,
    /// 2xx answers per second.
    pub ok_per_s: f64,
    /// Latency of 2xx answers.
    pub latency: Quantiles,
    /// Time to first byte of streamed 2xx answers.
    pub ttft: Quantiles,
    /// Outcomes by status (`no-answer` when none came).
    pub statuses: BTreeMap<String, u64>,
    /// Calls by API.
    pub apis: BTreeMap<String, u64>,
    /// Retries made.
    pub retries: u64,
    /// Answers cut short.
    pub broken: u64,
    /// Open loop: due calls not sent.
    pub not_sent: u64,
    /// Per second.
    pub timeline: Vec<Tick>,
}

impl Figures {
    /// From a run's record.
    #[must_use]
    pub fn of(target: &str, agents: u32, record: &Record) -> Figures {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Figures {
            target: target.to_owned(),
            agents,
            elapsed_s: record.elapsed.as_secs_f64(),
            ok: record.ok,
            ok_per_s: (record.rate() * 10.0).round() / 10.0,
            latency: Quantiles::of(&record.latency_us),
            ttft: Quantiles::of(&record.ttft_us),
            statuses: record
                .statuses
                .iter()
                .map(|(s, n)| (status_name(*s), *n))
                .collect(),
            apis: record
                .apis
                .iter()
                .map(|(a, n)| ((*a).to_owned(), *n))
                .collect(),
            retries: record.retries,
            broken: record.broken,
            not_sent: record.not_sent,
            timeline: record
                .seconds
                .iter()
                .enumerate()
                .map(|(i, s)| Tick {
                    second: i as u64,
                    ok: s.ok,
                    failed: s.failed,
                    p50_ms: ms(s.latency_us.value_at_quantile(0.50)),
                    p99_ms: ms(s.latency_us.value_at_quantile(0.99)),
                })
                .collect(),
        }
    }
}

/// Latency the gateway adds over the provider called direct, from runs made one after the other.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Added {
    /// Median added.
    pub p50_ms: f64,
    /// 99th percentile added.
    pub p99_ms: f64,
}

/// What the gateway's spend guards did to the fleet: whether the looping agents were caught,
/// how soon, and whether anyone else was refused.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardFigures {
    /// Agents that looped.
    pub looping_agents: u32,
    /// Looping agents a guard refused at least once.
    pub caught: u32,
    /// Per looping agent, the attempt (1-based, retries counted) a guard first refused;
    /// `None` for one never caught.
    pub caught_at_attempt: Vec<Option<u32>>,
    /// Attempts of looping agents a guard refused.
    pub refused_looping: u64,
    /// Attempts of looping agents answered 2xx.
    pub ok_looping: u64,
    /// Attempts of every other agent a guard refused: false positives, zero when all is well.
    pub refused_others: u64,
    /// Attempts of every other agent answered 2xx.
    pub ok_others: u64,
}

impl GuardFigures {
    /// From the gateway run's attempts (each naming its agent) and the plan's agents.
    #[must_use]
    pub fn of(attempts: &[Attempt], agents: &[Agent]) -> GuardFigures {
        let looping = |index: u32| {
            agents
                .get(usize::try_from(index).unwrap_or(usize::MAX))
                .is_some_and(|a| a.looping)
        };
        let loopers: Vec<u32> = (0..u32::try_from(agents.len()).unwrap_or(u32::MAX))
            .filter(|&i| looping(i))
            .collect();
        let mut figures = GuardFigures {
            looping_agents: u32::try_from(loopers.len()).unwrap_or(u32::MAX),
            caught_at_attempt: vec![None; loopers.len()],
            ..GuardFigures::default()
        };
        let mut made: BTreeMap<u32, u32> = BTreeMap::new();
        for attempt in attempts {
            let ok = (200..300).contains(&attempt.status) && !attempt.broken;
            if !looping(attempt.agent) {
                figures.refused_others += u64::from(attempt.guarded);
                figures.ok_others += u64::from(ok);
                continue;
            }
            figures.refused_looping += u64::from(attempt.guarded);
            figures.ok_looping += u64::from(ok);
            let count = made.entry(attempt.agent).or_insert(0);
            *count += 1;
            if let Some(slot) = loopers
                .iter()
                .position(|&l| l == attempt.agent)
                .and_then(|p| figures.caught_at_attempt.get_mut(p))
                && attempt.guarded
                && slot.is_none()
            {
                *slot = Some(*count);
            }
        }
        figures.caught =
            u32::try_from(figures.caught_at_attempt.iter().flatten().count()).unwrap_or(u32::MAX);
        figures
    }
}

/// A whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// `closed` or `open N/s`.
    pub load: String,
    /// The run's tag (its allocations are `<name>-<tag>`).
    pub tag: String,
    /// Every run, in order.
    pub runs: Vec<Figures>,
    /// The gateway's added latency over direct, when both were run (agent scenarios).
    pub added: Option<Added>,
    /// The books, when the gateway's files were checked.
    pub books: Option<Books>,
    /// What the spend guards did, for a fleet with looping agents or any call a guard refused.
    pub guards: Option<GuardFigures>,
}

impl Report {
    /// Writes `report.json`, `report.md` and `latency.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("latency.svg"), self.svg())?;
        Ok(())
    }

    /// The report for people.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Load test: {}\n", self.scenario);
        if !self.description.is_empty() {
            let _ = writeln!(out, "{}\n", self.description);
        }
        let _ = writeln!(out, "Load: {}. Run tag: `{}`.\n", self.load, self.tag);
        self.runs_table(&mut out);
        self.outcomes(&mut out);
        if let Some(added) = self.added {
            let _ = writeln!(
                out,
                "\nThe gateway added {:.3} ms at the median and {:.3} ms at p99 over the provider called direct.",
                added.p50_ms, added.p99_ms
            );
        }
        if let Some(guards) = &self.guards {
            guards_section(guards, &mut out);
        }
        match &self.books {
            Some(books) => books_section(books, &mut out),
            None => {
                let _ = writeln!(
                    out,
                    "\nBooks not checked (no gateway data directory given)."
                );
            }
        }
        out
    }

    /// A table row per run: throughput, latency and TTFT quantiles, retries and losses.
    fn runs_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "| target | agents | ok | ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | TTFT p50 ms | TTFT p99 ms | retries | broken | not sent |"
        );
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                run.target,
                run.agents,
                run.ok,
                run.ok_per_s,
                run.latency.p50_ms,
                run.latency.p90_ms,
                run.latency.p99_ms,
                run.latency.p999_ms,
                run.latency.max_ms,
                run.ttft.p50_ms,
                run.ttft.p99_ms,
                run.retries,
                run.broken,
                run.not_sent,
            );
        }
    }

    /// Each run's outcomes by status.
    fn outcomes(&self, out: &mut String) {
        let _ = writeln!(out, "\n## Outcomes by status\n");
        for run in &self.runs {
            let mix: Vec<String> = run
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            let _ = writeln!(
                out,
                "- {} ({} agents): {}",
                run.target,
                run.agents,
                mix.join(", ")
            );
        }
    }

    /// Latency percentiles (p50, p99) and throughput per second of every run, one panel each.
    #[must_use]
    pub fn svg(&self) -> String {
        let runs: Vec<&Figures> = self
            .runs
            .iter()
            .filter(|r| !r.timeline.is_empty())
            .collect();
        let height = 40.0 + runs.len().max(1) as f64 * (2.0 * PANEL + 40.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="24" font-size="16">{}: latency and throughput per second</text>"#,
            escape(&self.scenario)
        );
        let mut top = 40.0;
        for run in runs {
            for panel in Panel::both(run) {
                panel.write(run, top, &mut out);
                top += PANEL;
            }
            top += 40.0;
        }
        out.push_str("</svg>\n");
        out
    }
}

/// The books: the three views of the run's spend, the refusals, and whether they balance.
fn guards_section(guards: &GuardFigures, out: &mut String) {
    let _ = writeln!(out, "\n## Spend guards\n");
    let at: Vec<String> = guards
        .caught_at_attempt
        .iter()
        .map(|a| a.map_or_else(|| "never".to_owned(), |n| format!("attempt {n}")))
        .collect();
    let _ = writeln!(
        out,
        "- looping agents: {}, caught: {} (first refused at: {})",
        guards.looping_agents,
        guards.caught,
        if at.is_empty() {
            "-".to_owned()
        } else {
            at.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "- their attempts: {} refused by a guard, {} answered 2xx",
        guards.refused_looping, guards.ok_looping
    );
    let _ = writeln!(
        out,
        "- every other agent: {} refused by a guard, {} answered 2xx",
        guards.refused_others, guards.ok_others
    );
}

fn books_section(books: &Books, out: &mut String) {
    let _ = writeln!(out, "\n## Books\n");
    let _ = writeln!(
        out,
        "- calls made: {} ({} answered, {} without an answer)",
        books.attempts, books.answered, books.unanswered
    );
    let _ = writeln!(
        out,
        "- events in Parquet: {}, total {} nano-units",
        books.parquet_events, books.parquet_cost_nanos
    );
    let _ = writeln!(
        out,
        "- budget table: {} nano-units",
        books.gateway_spent_nanos
    );
    let _ = writeln!(
        out,
        "- priced by the harness: {} calls, {} nano-units (their events: {})",
        books.priced, books.harness_cost_nanos, books.parquet_cost_of_priced_nanos
    );
    for (allocation, refused) in &books.refused_by_allocation {
        let _ = writeln!(
            out,
            "- {allocation} ran out of budget: {refused} calls refused with 402 `budget_exceeded`"
        );
    }
    if books.balanced() {
        let _ = writeln!(out, "\n**Balanced**: nothing lost, nothing doubled.");
    } else {
        let _ = writeln!(out, "\n**Not balanced:**\n");
        for problem in &books.problems {
            let _ = writeln!(out, "- {problem}");
        }
    }
}

/// The chart's width, in SVG units.
const WIDTH: f64 = 900.0;
/// One panel's height.
const PANEL: f64 = 220.0;
/// Room left of the plot for the scale.
const LEFT: f64 = 70.0;
/// Room right of the plot.
const RIGHT: f64 = 20.0;

/// One panel of the chart: a title, the top of its scale, and its named, coloured series (a
/// value per second).
struct Panel {
    title: String,
    max: f64,
    series: [(&'static str, &'static str, Vec<f64>); 2],
}

impl Panel {
    /// A run's two panels: latency (p50, p99) and answers per second (2xx, other).
    fn both(run: &Figures) -> [Panel; 2] {
        let latency_max = run
            .timeline
            .iter()
            .map(|t| t.p99_ms)
            .fold(0.0_f64, f64::max)
            .max(0.001);
        let rate_max = run
            .timeline
            .iter()
            .map(|t| (t.ok + t.failed) as f64)
            .fold(0.0_f64, f64::max)
            .max(1.0);
        let series = |get: fn(&Tick) -> f64| run.timeline.iter().map(get).collect::<Vec<_>>();
        [
            Panel {
                title: format!("{} ({} agents): latency, ms", run.target, run.agents),
                max: latency_max,
                series: [
                    ("p50", "#1f77b4", series(|t| t.p50_ms)),
                    ("p99", "#d62728", series(|t| t.p99_ms)),
                ],
            },
            Panel {
                title: format!("{}: answers per second", run.target),
                max: rate_max,
                series: [
                    ("2xx", "#2ca02c", series(|t| t.ok as f64)),
                    ("other", "#ff7f0e", series(|t| t.failed as f64)),
                ],
            },
        ]
    }

    /// Writes the panel at `top`: its title, axes, scale, and a line per series.
    fn write(&self, run: &Figures, top: f64, out: &mut String) {
        let seconds = run.timeline.len().max(2) as f64 - 1.0;
        let x = |second: u64| LEFT + (WIDTH - LEFT - RIGHT) * second as f64 / seconds.max(1.0);
        let bottom = top + PANEL - 30.0;
        let y = |v: f64| bottom - (PANEL - 50.0) * (v / self.max);
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}">{}</text>"#,
            top + 12.0,
            escape(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#444"/><line x1="{LEFT}" y1="{}" x2="{LEFT}" y2="{bottom}" stroke="#444"/>"##,
            WIDTH - RIGHT,
            top + 20.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
            LEFT - 6.0,
            y(self.max) + 4.0,
            short(self.max),
            LEFT - 6.0,
            bottom + 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} s</text>"#,
            WIDTH - RIGHT,
            bottom + 16.0,
            run.timeline.len()
        );
        for (index, (name, colour, values)) in self.series.iter().enumerate() {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(s, v)| format!("{:.1},{:.1}", x(s as u64), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.join(" ")
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
                WIDTH - RIGHT - 60.0 + index as f64 * 30.0,
                top + 12.0
            );
        }
    }
}

fn short(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn attempt(agent: u32, status: u16, guarded: bool) -> Attempt {
        Attempt {
            allocation: 0,
            agent,
            guarded,
            request_id: None,
            status,
            broken: false,
            usage: None,
            cost_nanos: None,
        }
    }

    #[test]
    fn guard_figures_tell_the_loopers_from_the_rest() {
        let agent = |looping| Agent {
            allocation: 0,
            key: Arc::from("k"),
            looping,
        };
        let agents = [agent(true), agent(false), agent(true)];
        let attempts = [
            attempt(0, 200, false),
            attempt(1, 200, false),
            attempt(0, 200, false),
            attempt(0, 429, true),
            attempt(1, 429, false),
            attempt(0, 429, true),
            attempt(2, 200, false),
        ];
        let figures = GuardFigures::of(&attempts, &agents);
        assert_eq!(figures.looping_agents, 2);
        assert_eq!(figures.caught, 1);
        assert_eq!(figures.caught_at_attempt, vec![Some(3), None]);
        assert_eq!((figures.refused_looping, figures.ok_looping), (2, 3));
        assert_eq!((figures.refused_others, figures.ok_others), (0, 1));
        let mut out = String::new();
        guards_section(&figures, &mut out);
        assert!(
            out.contains("caught: 1 (first refused at: attempt 3, never)"),
            "{out}"
        );
    }
}
