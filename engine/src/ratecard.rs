//! The versioned rate card: what every token, GPU-hour and GB-month costs, and since when.
//!
//! A card is a list of complete versions, each in force from its `effective_from` instant until
//! the next one's. Pricing at instant `t` uses the version in force at `t`, so a price change
//! applies from a date forward and history keeps its rate. Every event records the version id it
//! was priced with. A model without a price is refused, never metered as free.
//!
//! ```toml
//! currency = "USD"
//! default_max_output_tokens = 16384
//!
//! [[version]]
//! id = "2026-01"
//! effective_from = 2026-01-01T00:00:00Z
//!
//! [[version.model]]
//! name = "openai/gpt-4o"
//! input_per_mtok = "2.50"
//! cached_input_per_mtok = "1.25"
//! output_per_mtok = "10.00"
//!
//! [[version.resource]]
//! unit = "gpu_hour"
//! partition = "a100"
//! price_per_unit = "2.10"
//!
//! [[version.adjustment]]
//! team = "research"
//! percent = "-15"
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{config_error, parse_toml, read_config_file};
use crate::error::{Error, Result};
use crate::ids::ModelRef;
use crate::limits::RATE_CARD_VERSIONS_MAX;
use crate::money::{Adjustment, MILLION, Micros, Nanos, PricePerMTok, PricePerUnit, ceil_div};
use crate::time::UnixMs;
use crate::tokens::TokenUsage;

/// A metered resource unit other than tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceUnit {
    /// One GPU for one hour.
    GpuHour,
    /// One CPU core for one hour.
    CoreHour,
    /// One whole node for one hour.
    NodeHour,
    /// One gigabyte stored for one month.
    GbMonth,
}

impl ResourceUnit {
    /// The unit's name in config, events and Parquet.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceUnit::GpuHour => "gpu_hour",
            ResourceUnit::CoreHour => "core_hour",
            ResourceUnit::NodeHour => "node_hour",
            ResourceUnit::GbMonth => "gb_month",
        }
    }
}

/// Prices of one model, per million tokens of each kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelPrice {
    /// The model priced, as `provider/model`: the key the version looks it up by.
    pub model: ModelRef,
    /// Uncached prompt tokens.
    pub input_per_mtok: PricePerMTok,
    /// Prompt tokens read from cache (the input price when the card names none).
    pub cached_input_per_mtok: PricePerMTok,
    /// Prompt tokens written to cache (the input price when the card names none).
    pub cache_write_per_mtok: PricePerMTok,
    /// Completion tokens other than reasoning.
    pub output_per_mtok: PricePerMTok,
    /// Reasoning tokens (the output price when the card names none).
    pub reasoning_per_mtok: PricePerMTok,
    /// Most completion tokens the model can return; bounds reservations when a request sets none.
    pub max_output_tokens: u64,
}

/// List and billed cost of one metered thing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// At list price.
    pub list: Nanos,
    /// After the team's or project's markup or discount: what budgets are charged.
    pub billed: Nanos,
}

impl Cost {
    /// No cost at either price: a refusal's.
    pub const ZERO: Cost = Cost {
        list: Nanos::ZERO,
        billed: Nanos::ZERO,
    };

    /// The cost of `(tokens, price per million)` terms: summed exactly, adjusted, rounded once.
    pub(crate) fn of_terms(terms: &[(u64, u64)], adjustment: Adjustment) -> Cost {
        let sum = terms.iter().try_fold(0u128, |acc, &(tokens, price)| {
            acc.checked_add(u128::from(tokens).checked_mul(u128::from(price))?)
        });
        Cost::from_exact_micro_nanos(sum, adjustment)
    }

    /// Rounds an exact sum in nanos times [`MILLION`] to whole nanos, once, upward.
    fn from_exact_micro_nanos(sum: Option<u128>, adjustment: Adjustment) -> Cost {
        let Some(sum) = sum else {
            return Cost {
                list: Nanos::MAX,
                billed: Nanos::MAX,
            };
        };
        let clamp = |v: u128| Nanos(u64::try_from(v).unwrap_or(u64::MAX));
        let list = clamp(ceil_div(sum, MILLION));
        let billed = match sum.checked_mul(adjustment.numerator()) {
            Some(scaled) => clamp(ceil_div(scaled, MILLION * MILLION)),
            None => Nanos::MAX,
        };
        Cost { list, billed }
    }
}

impl ModelPrice {
    /// The cost of `usage`, rounded once (see [`crate::money`]). A sum too large for `u64`
    /// nanos saturates at [`Nanos::MAX`], which no budget admits.
    #[must_use]
    pub fn cost(&self, usage: &TokenUsage, adjustment: Adjustment) -> Cost {
        let terms = [
            (usage.uncached_input(), self.input_per_mtok.0),
            (usage.cached.0, self.cached_input_per_mtok.0),
            (usage.cache_write.0, self.cache_write_per_mtok.0),
            (usage.visible_output(), self.output_per_mtok.0),
            (usage.reasoning.0, self.reasoning_per_mtok.0),
        ];
        Cost::of_terms(&terms, adjustment)
    }

    /// The highest price any prompt token can carry (uncached or cache write).
    #[must_use]
    pub fn input_bound_per_mtok(&self) -> u64 {
        self.input_per_mtok
            .0
            .max(self.cache_write_per_mtok.0)
            .max(self.cached_input_per_mtok.0)
    }

    /// The highest price any completion token can carry (visible or reasoning).
    #[must_use]
    pub fn output_bound_per_mtok(&self) -> u64 {
        self.output_per_mtok.0.max(self.reasoning_per_mtok.0)
    }
}

/// Where a resource was used: cluster, partition (a Slurm partition, a storage tier) and
/// instance type (a node or machine type). Each is optional; prices match on what is given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Site {
    /// Cluster (a Slurm cluster, a Kubernetes cluster, a storage system).
    pub cluster: Option<Arc<str>>,
    /// Partition, queue or storage tier.
    pub partition: Option<Arc<str>>,
    /// Node or machine type (`p5.48xlarge`, `gpu-h100-8x`).
    pub instance_type: Option<Arc<str>>,
}

/// The price of one resource unit, optionally only on one cluster, partition or instance type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourcePrice {
    /// The unit priced; a price fits only usage in this unit.
    pub unit: ResourceUnit,
    /// Only on this cluster, or any.
    pub cluster: Option<Arc<str>>,
    /// Only on this partition, or any.
    pub partition: Option<Arc<str>>,
    /// Only on this instance type, or any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<Arc<str>>,
    /// Price of one whole unit.
    pub price_per_unit: PricePerUnit,
}

impl ResourcePrice {
    /// The cost of `quantity` millionths of a unit, rounded once.
    #[must_use]
    pub fn cost(&self, quantity: Micros, adjustment: Adjustment) -> Cost {
        let sum = u128::from(quantity.0).checked_mul(u128::from(self.price_per_unit.0));
        Cost::from_exact_micro_nanos(sum, adjustment)
    }
}

/// One complete version of the card.
#[derive(Clone, Debug, Serialize)]
pub struct RateVersion {
    /// The version's id, recorded on every event priced with it.
    pub id: Arc<str>,
    /// When it comes into force (inclusive).
    pub effective_from: UnixMs,
    models: HashMap<Arc<str>, ModelPrice>,
    resources: Vec<ResourcePrice>,
    team_adjustments: Adjustments,
    project_adjustments: Adjustments,
}

impl RateVersion {
    /// The price of a model by its full `provider/model` name.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelPrice> {
        self.models.get(name)
    }

    /// All priced models, in name order.
    pub fn models(&self) -> impl Iterator<Item = &ModelPrice> {
        let mut all: Vec<&ModelPrice> = self.models.values().collect();
        all.sort_by(|a, b| a.model.cmp(&b.model));
        all.into_iter()
    }

    /// The most specific price of `unit` at `site`. A price fits when every place it names
    /// (cluster, partition, instance type) is the site's; among those that fit, naming the
    /// cluster counts most, then the partition, then the instance type, so a cluster's price
    /// beats any price without a cluster. Two prices can never tie: the card refuses duplicates.
    #[must_use]
    pub fn resource(&self, unit: ResourceUnit, site: &Site) -> Option<&ResourcePrice> {
        let matches = |wanted: &Option<Arc<str>>, have: &Option<Arc<str>>| {
            wanted.as_deref().is_none_or(|w| Some(w) == have.as_deref())
        };
        let fits = |p: &&ResourcePrice| {
            p.unit == unit
                && matches(&p.cluster, &site.cluster)
                && matches(&p.partition, &site.partition)
                && matches(&p.instance_type, &site.instance_type)
        };
        let specificity = |p: &&ResourcePrice| {
            (u8::from(p.cluster.is_some()) << 2)
                | (u8::from(p.partition.is_some()) << 1)
                | u8::from(p.instance_type.is_some())
        };
        self.resources.iter().filter(fits).max_by_key(specificity)
    }

    /// The markup or discount for a request of `team`'s `project`: the project's if it has one,
    /// else the team's, else none.
    #[must_use]
    pub fn adjustment(&self, team: &str, project: &str) -> Adjustment {
        self.project_adjustments
            .get(project)
            .or_else(|| self.team_adjustments.get(team))
            .copied()
            .unwrap_or(Adjustment::NONE)
    }

    /// Number of priced models.
    #[must_use]
    pub fn model_count(&self) -> usize {
        self.models.len()
    }

    /// Number of resource prices.
    #[must_use]
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
}

/// The whole card: versions in `effective_from` order.
#[derive(Clone, Debug, Serialize)]
pub struct RateCard {
    /// ISO 4217 code of every amount on the card.
    pub currency: Arc<str>,
    /// Completion-token bound for reservations when neither request nor model entry names one.
    pub default_max_output_tokens: u64,
    versions: Vec<RateVersion>,
}

impl RateCard {
    /// Loads and validates a card from a TOML file.
    pub fn load(path: &Path) -> Result<RateCard> {
        let text = read_config_file(path)?;
        RateCard::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates a card; `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<RateCard> {
        let raw: RawCard = parse_toml(text, origin)?;
        raw.validate(text, origin)
    }

    /// The version in force at `t`: the last whose `effective_from` is at or before `t`.
    #[must_use]
    pub fn at(&self, t: UnixMs) -> Option<&RateVersion> {
        let after = self.versions.partition_point(|v| v.effective_from <= t);
        after.checked_sub(1).and_then(|i| self.versions.get(i))
    }

    /// All versions, oldest first.
    #[must_use]
    pub fn versions(&self) -> &[RateVersion] {
        &self.versions
    }

    /// A version by id.
    #[must_use]
    pub fn version(&self, id: &str) -> Option<&RateVersion> {
        self.versions.iter().find(|v| &*v.id == id)
    }

    /// Prices a token call at `t`: the version used and the cost, or why it cannot be priced.
    pub fn price_tokens(
        &self,
        model: &ModelRef,
        usage: &TokenUsage,
        team: &str,
        project: &str,
        t: UnixMs,
    ) -> Result<(&RateVersion, Cost)> {
        let version = self.at(t).ok_or_else(|| not_priced(model, t))?;
        let price = version
            .model(model.as_str())
            .ok_or_else(|| not_priced(model, t))?;
        Ok((
            version,
            price.cost(usage, version.adjustment(team, project)),
        ))
    }
}

impl RateCard {
    /// Prices `quantity` of `unit` used at `site` by `team`'s `project`, with the version in
    /// force at `t`: the version used and the cost, or why it cannot be priced.
    pub fn price_resource(
        &self,
        unit: ResourceUnit,
        quantity: Micros,
        site: &Site,
        team: &str,
        project: &str,
        t: UnixMs,
    ) -> Result<(&RateVersion, Cost)> {
        let not_priced = || Error::ResourceNotPriced {
            unit: unit.as_str(),
            cluster: site.cluster.clone(),
            partition: site.partition.clone(),
            instance_type: site.instance_type.clone(),
            at: t,
        };
        let version = self.at(t).ok_or_else(not_priced)?;
        let price = version.resource(unit, site).ok_or_else(not_priced)?;
        Ok((
            version,
            price.cost(quantity, version.adjustment(team, project)),
        ))
    }
}

fn not_priced(model: &ModelRef, at: UnixMs) -> Error {
    Error::ModelNotPriced {
        model: model.as_arc().clone(),
        at,
    }
}

// ---- The file format, parsed then validated with spans for every semantic error. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    #[serde(default = "usd")]
    currency: Spanned<String>,
    default_max_output_tokens: u64,
    #[serde(default)]
    version: Vec<Spanned<RawVersion>>,
}

fn usd() -> Spanned<String> {
    Spanned::new(0..0, "USD".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    id: Spanned<String>,
    effective_from: Spanned<toml::value::Datetime>,
    #[serde(default)]
    model: Vec<Spanned<RawModel>>,
    #[serde(default)]
    resource: Vec<RawResource>,
    #[serde(default)]
    adjustment: Vec<Spanned<RawAdjustment>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: ModelRef,
    input_per_mtok: PricePerMTok,
    cached_input_per_mtok: Option<PricePerMTok>,
    cache_write_per_mtok: Option<PricePerMTok>,
    output_per_mtok: PricePerMTok,
    reasoning_per_mtok: Option<PricePerMTok>,
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    unit: ResourceUnit,
    cluster: Option<String>,
    partition: Option<String>,
    instance_type: Option<String>,
    price_per_unit: PricePerUnit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdjustment {
    team: Option<String>,
    project: Option<String>,
    percent: Adjustment,
}

/// The card's text and its name, for errors that say where.
#[derive(Clone, Copy)]
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    fn error(self, field: String, span: std::ops::Range<usize>, reason: String) -> Error {
        config_error(self.text, self.origin, &field, Some(span), reason)
    }
}

impl RawCard {
    fn validate(self, text: &str, origin: &str) -> Result<RateCard> {
        let source = Source { text, origin };
        let currency = validate_currency(&self.currency, source)?;
        if self.version.len() > RATE_CARD_VERSIONS_MAX {
            return Err(source.error(
                "version".into(),
                0..0,
                format!("more than {RATE_CARD_VERSIONS_MAX} versions"),
            ));
        }
        let mut versions: Vec<RateVersion> = Vec::with_capacity(self.version.len());
        let mut spans = Vec::with_capacity(self.version.len());
        for (vi, raw) in self.version.into_iter().enumerate() {
            let span = raw.span();
            let version = raw.into_inner().validate(
                vi,
                &span,
                &versions,
                self.default_max_output_tokens,
                source,
            )?;
            versions.push(version);
            spans.push(span);
        }
        check_order(&versions, &spans, source)?;
        Ok(RateCard {
            currency,
            default_max_output_tokens: self.default_max_output_tokens,
            versions,
        })
    }
}

/// An ISO 4217 code: three capital letters.
fn validate_currency(currency: &Spanned<String>, source: Source<'_>) -> Result<Arc<str>> {
    let code = currency.get_ref();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(source.error(
            "currency".into(),
            currency.span(),
            format!("`{code}` is not an ISO 4217 code like \"USD\""),
        ));
    }
    Ok(Arc::from(code.as_str()))
}

/// Versions listed oldest first, no two in force from the same instant.
fn check_order(
    versions: &[RateVersion],
    spans: &[std::ops::Range<usize>],
    source: Source<'_>,
) -> Result<()> {
    for (i, pair) in versions.windows(2).enumerate() {
        if let [earlier, later] = pair
            && later.effective_from <= earlier.effective_from
        {
            return Err(source.error(
                format!("version[{}].effective_from", i + 1),
                spans.get(i + 1).cloned().unwrap_or(0..0),
                format!(
                    "versions must be listed oldest first with distinct instants: {} is not after {}",
                    later.effective_from, earlier.effective_from
                ),
            ));
        }
    }
    Ok(())
}

impl RawVersion {
    /// Version `vi` (spanning `span`), given the versions before it.
    fn validate(
        self,
        vi: usize,
        span: &std::ops::Range<usize>,
        earlier: &[RateVersion],
        default_max_output_tokens: u64,
        source: Source<'_>,
    ) -> Result<RateVersion> {
        let id_span = self.id.span();
        let id = self.id.into_inner();
        if id.trim().is_empty() {
            return Err(source.error(
                format!("version[{vi}].id"),
                id_span,
                "must not be empty".into(),
            ));
        }
        if earlier.iter().any(|v| *v.id == *id) {
            return Err(source.error(
                format!("version[{vi}].id"),
                id_span,
                format!("version id `{id}` is used twice"),
            ));
        }
        let effective_from =
            crate::time::utc_instant(self.effective_from.get_ref()).map_err(|reason| {
                source.error(
                    format!("version[{vi}].effective_from"),
                    self.effective_from.span(),
                    reason,
                )
            })?;
        let models = validate_models(vi, self.model, default_max_output_tokens, source)?;
        let resources = validate_resources(vi, span, self.resource, source)?;
        let (team_adjustments, project_adjustments) =
            validate_adjustments(vi, self.adjustment, source)?;
        Ok(RateVersion {
            id: Arc::from(id),
            effective_from,
            models,
            resources,
            team_adjustments,
            project_adjustments,
        })
    }
}

/// A version's model prices by name, with unpriced kinds of token at their base price; a
/// model priced twice is refused.
fn validate_models(
    vi: usize,
    raw: Vec<Spanned<RawModel>>,
    default_max_output_tokens: u64,
    source: Source<'_>,
) -> Result<HashMap<Arc<str>, ModelPrice>> {
    let mut models = HashMap::with_capacity(raw.len());
    for (mi, m) in raw.into_iter().enumerate() {
        let m_span = m.span();
        let m = m.into_inner();
        let input = m.input_per_mtok;
        let output = m.output_per_mtok;
        let price = ModelPrice {
            input_per_mtok: input,
            cached_input_per_mtok: m.cached_input_per_mtok.unwrap_or(input),
            cache_write_per_mtok: m.cache_write_per_mtok.unwrap_or(input),
            output_per_mtok: output,
            reasoning_per_mtok: m.reasoning_per_mtok.unwrap_or(output),
            max_output_tokens: m.max_output_tokens.unwrap_or(default_max_output_tokens),
            model: m.name,
        };
        let name = price.model.as_arc().clone();
        if models.insert(name.clone(), price).is_some() {
            return Err(source.error(
                format!("version[{vi}].model[{mi}].name"),
                m_span,
                format!("model `{name}` is priced twice in this version"),
            ));
        }
    }
    Ok(models)
}

/// A version's resource prices; two for the same unit and place are refused (the error points
/// at the version, `span`: resource tables carry no span of their own).
fn validate_resources(
    vi: usize,
    span: &std::ops::Range<usize>,
    raw: Vec<RawResource>,
    source: Source<'_>,
) -> Result<Vec<ResourcePrice>> {
    let mut resources: Vec<ResourcePrice> = Vec::with_capacity(raw.len());
    for (ri, r) in raw.into_iter().enumerate() {
        let price = ResourcePrice {
            unit: r.unit,
            cluster: r.cluster.map(Arc::from),
            partition: r.partition.map(Arc::from),
            instance_type: r.instance_type.map(Arc::from),
            price_per_unit: r.price_per_unit,
        };
        if resources.iter().any(|p| {
            p.unit == price.unit
                && p.cluster == price.cluster
                && p.partition == price.partition
                && p.instance_type == price.instance_type
        }) {
            return Err(source.error(
                format!("version[{vi}].resource[{ri}]"),
                span.clone(),
                format!(
                    "`{}` for cluster {:?}, partition {:?} and instance type {:?} is priced twice",
                    price.unit.as_str(),
                    price.cluster,
                    price.partition,
                    price.instance_type
                ),
            ));
        }
        resources.push(price);
    }
    Ok(resources)
}

/// Markups and discounts by team or project name.
type Adjustments = HashMap<Arc<str>, Adjustment>;

/// A version's adjustments by team and by project; each names exactly one, once.
fn validate_adjustments(
    vi: usize,
    raw: Vec<Spanned<RawAdjustment>>,
    source: Source<'_>,
) -> Result<(Adjustments, Adjustments)> {
    let mut team_adjustments = HashMap::new();
    let mut project_adjustments = HashMap::new();
    for (ai, a) in raw.into_iter().enumerate() {
        let a_span = a.span();
        let a = a.into_inner();
        let field = format!("version[{vi}].adjustment[{ai}]");
        let (map, name) = match (a.team, a.project) {
            (Some(team), None) => (&mut team_adjustments, team),
            (None, Some(project)) => (&mut project_adjustments, project),
            _ => {
                return Err(source.error(
                    field,
                    a_span,
                    "name exactly one of `team` or `project`".into(),
                ));
            }
        };
        if map.insert(Arc::from(name.as_str()), a.percent).is_some() {
            return Err(source.error(field, a_span, format!("`{name}` is adjusted twice")));
        }
    }
    Ok((team_adjustments, project_adjustments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Nanos;
    use proptest::prelude::*;

    const CARD: &str = r#"
currency = "USD"
default_max_output_tokens = 4096

[[version]]
id = "v1"
effective_from = 2026-01-01T00:00:00Z

[[version.model]]
name = "openai/gpt-4o"
input_per_mtok = "2.50"
cached_input_per_mtok = "1.25"
output_per_mtok = "10.00"
max_output_tokens = 16384

[[version.model]]
name = "anthropic/claude-sonnet-4-5"
input_per_mtok = "3"
cached_input_per_mtok = "0.30"
cache_write_per_mtok = "3.75"
output_per_mtok = 15

[[version.resource]]
unit = "gpu_hour"
price_per_unit = "2.00"

[[version.resource]]
unit = "gpu_hour"
partition = "h100"
price_per_unit = "4.50"

[[version.resource]]
unit = "gpu_hour"
cluster = "hpc2"
price_per_unit = "3.00"

[[version.resource]]
unit = "gpu_hour"
cluster = "hpc2"
instance_type = "dgx"
price_per_unit = "3.50"

[[version.adjustment]]
team = "research"
percent = "-20"

[[version.adjustment]]
project = "chatbot"
percent = "+10"

[[version]]
id = "v2"
effective_from = 2026-06-01T02:00:00+02:00

[[version.model]]
name = "openai/gpt-4o"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
"#;

    fn card() -> RateCard {
        RateCard::from_toml(CARD, "rates.toml").unwrap()
    }

    fn at(text: &str) -> UnixMs {
        crate::time::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn versions_apply_from_their_instant_forward() {
        let card = card();
        assert!(card.at(at("2025-12-31T23:59:59.999Z")).is_none());
        assert_eq!(&*card.at(at("2026-01-01T00:00:00Z")).unwrap().id, "v1");
        // +02:00 means 2026-06-01T00:00:00Z.
        assert_eq!(&*card.at(at("2026-05-31T23:59:59.999Z")).unwrap().id, "v1");
        assert_eq!(&*card.at(at("2026-06-01T00:00:00Z")).unwrap().id, "v2");
        assert_eq!(&*card.at(at("2099-01-01T00:00:00Z")).unwrap().id, "v2");
    }

    #[test]
    fn token_costs_are_exact_and_rounded_once() {
        let card = card();
        let gpt = ModelRef::parse("openai/gpt-4o").unwrap();
        let t = at("2026-02-01T00:00:00Z");
        // 1000 in (200 cached) and 500 out: 800*2.50 + 200*1.25 + 500*10.00 per million.
        let usage = TokenUsage::new(1000, 200, 0, 500, 0);
        let (version, cost) = card.price_tokens(&gpt, &usage, "eng", "p", t).unwrap();
        assert_eq!(&*version.id, "v1");
        assert_eq!(cost.list, Nanos(7_250_000)); // $0.00725
        assert_eq!(cost.billed, cost.list);
        // Team discount of 20 %, project markup of 10 % wins over it.
        assert_eq!(
            card.price_tokens(&gpt, &usage, "research", "p", t)
                .unwrap()
                .1
                .billed,
            Nanos(5_800_000)
        );
        assert_eq!(
            card.price_tokens(&gpt, &usage, "research", "chatbot", t)
                .unwrap()
                .1
                .billed,
            Nanos(7_975_000)
        );
        // One token at $2.50/M is 2,500 nanos; at $0.0375/M it is 37.5, rounded up to 38, once.
        let one = TokenUsage::new(1, 0, 0, 0, 0);
        assert_eq!(
            card.price_tokens(&gpt, &one, "eng", "p", t).unwrap().1.list,
            Nanos(2_500)
        );
        let cheap = ModelPrice {
            input_per_mtok: PricePerMTok(37_500_000),
            ..card.at(t).unwrap().model("openai/gpt-4o").unwrap().clone()
        };
        assert_eq!(cheap.cost(&one, Adjustment::NONE).list, Nanos(38));
        let three = TokenUsage::new(3, 0, 0, 0, 0);
        assert_eq!(cheap.cost(&three, Adjustment::NONE).list, Nanos(113)); // 112.5, not 3 * 38
        // Anthropic: cache writes at their own price, reasoning at output price by default.
        let claude = ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap();
        let usage = TokenUsage::new(10_000, 4_000, 2_000, 1_000, 400);
        // 4000*3 + 4000*0.30 + 2000*3.75 + 1000*15 = 12000+1200+7500+15000 = 35700 per M.
        assert_eq!(
            card.price_tokens(&claude, &usage, "eng", "p", t)
                .unwrap()
                .1
                .list,
            Nanos(35_700_000)
        );
        // A price change applies forward only.
        let later = at("2026-07-01T00:00:00Z");
        let usage = TokenUsage::new(1_000_000, 0, 0, 0, 0);
        assert_eq!(
            card.price_tokens(&gpt, &usage, "eng", "p", later)
                .unwrap()
                .1
                .list,
            Nanos(2_000_000_000)
        );
        assert_eq!(
            card.price_tokens(&gpt, &usage, "eng", "p", t)
                .unwrap()
                .1
                .list,
            Nanos(2_500_000_000)
        );
        // Dropped from v2, so refused, never free.
        assert!(matches!(
            card.price_tokens(&claude, &usage, "eng", "p", later),
            Err(Error::ModelNotPriced { .. })
        ));
    }

    #[test]
    fn huge_usage_saturates_instead_of_wrapping() {
        let card = card();
        let gpt = ModelRef::parse("openai/gpt-4o").unwrap();
        let usage = TokenUsage::new(u64::MAX, 0, 0, u64::MAX, 0);
        let (_, cost) = card
            .price_tokens(&gpt, &usage, "eng", "p", at("2026-02-01T00:00:00Z"))
            .unwrap();
        assert_eq!(cost.list, Nanos::MAX);
    }

    #[test]
    fn resources_use_the_most_specific_price() {
        let card = card();
        let v1 = card.at(at("2026-02-01T00:00:00Z")).unwrap();
        let site = |cluster: Option<&str>, partition: Option<&str>, instance: Option<&str>| Site {
            cluster: cluster.map(Arc::from),
            partition: partition.map(Arc::from),
            instance_type: instance.map(Arc::from),
        };
        let price = |s: &Site| {
            v1.resource(ResourceUnit::GpuHour, s)
                .map(|p| p.price_per_unit.0)
        };
        let h100 = v1
            .resource(
                ResourceUnit::GpuHour,
                &site(Some("hpc"), Some("h100"), None),
            )
            .unwrap();
        assert_eq!(
            h100.cost(Micros(1_500_000), Adjustment::NONE).list,
            Nanos(6_750_000_000)
        );
        assert_eq!(price(&site(None, Some("a100"), None)), Some(2_000_000_000));
        // The cluster's own price beats a partition's; the instance type refines a cluster.
        assert_eq!(
            price(&site(Some("hpc2"), Some("h100"), None)),
            Some(3_000_000_000)
        );
        assert_eq!(
            price(&site(Some("hpc2"), Some("h100"), Some("dgx"))),
            Some(3_500_000_000)
        );
        assert_eq!(price(&site(None, None, Some("dgx"))), Some(2_000_000_000));
        assert!(
            v1.resource(ResourceUnit::GbMonth, &Site::default())
                .is_none()
        );
        // Priced through the card: the version in force, the team's discount, refusal when
        // nothing fits.
        let (version, cost) = card
            .price_resource(
                ResourceUnit::GpuHour,
                Micros(2_000_000),
                &site(None, Some("h100"), None),
                "research",
                "p",
                at("2026-02-01T00:00:00Z"),
            )
            .unwrap();
        assert_eq!(&*version.id, "v1");
        assert_eq!(
            (cost.list, cost.billed),
            (Nanos(9_000_000_000), Nanos(7_200_000_000))
        );
        assert!(matches!(
            card.price_resource(
                ResourceUnit::GbMonth,
                Micros(1),
                &Site::default(),
                "t",
                "p",
                at("2026-02-01T00:00:00Z")
            ),
            Err(Error::ResourceNotPriced {
                unit: "gb_month",
                ..
            })
        ));
    }

    fn error_of(text: &str) -> (usize, String, String) {
        match RateCard::from_toml(text, "rates.toml") {
            Err(Error::Config {
                origin,
                line,
                field,
                reason,
                ..
            }) => {
                assert_eq!(origin, "rates.toml");
                (line, field, reason)
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_files_name_file_line_and_field() {
        let head = "default_max_output_tokens = 100\n[[version]]\nid = \"v1\"\neffective_from = 2026-01-01T00:00:00Z\n[[version.model]]\nname = \"openai/gpt-4o\"\n";
        let (line, field, reason) = error_of(&format!(
            "{head}input_per_mtok = 2.5\noutput_per_mtok = \"1\"\n"
        ));
        assert_eq!(
            (line, field.as_str()),
            (7, "version[0].model[0].input_per_mtok")
        );
        assert!(reason.contains("float"), "{reason}");

        let (line, field, _) = error_of(&format!(
            "{head}input_per_mtok = \"2.x\"\noutput_per_mtok = \"1\"\n"
        ));
        assert_eq!(
            (line, field.as_str()),
            (7, "version[0].model[0].input_per_mtok")
        );

        let (_, field, reason) = error_of(&format!("{head}input_per_mtok = \"2\"\n"));
        assert_eq!(field, "version[0].model[0]");
        assert!(reason.contains("output_per_mtok"), "{reason}");

        let (line, field, reason) = error_of(&format!(
            "{head}input_per_mtok = \"2\"\noutput_per_mtok = \"1\"\ninptu = \"3\"\n"
        ));
        assert_eq!((line, field.as_str()), (9, "version[0].model[0].inptu"));
        assert!(reason.contains("inptu"), "{reason}");

        let (line, field, _) = error_of(
            "default_max_output_tokens = 1\n[[version]]\nid = \"v\"\neffective_from = 2026-01-01T00:00:00\n",
        );
        assert_eq!((line, field.as_str()), (4, "version[0].effective_from"));

        let (line, field, reason) = error_of(
            "default_max_output_tokens = 1\n[[version]]\nid = \"a\"\neffective_from = 2026-02-01T00:00:00Z\n[[version]]\nid = \"b\"\neffective_from = 2026-01-01T00:00:00Z\n",
        );
        assert_eq!((line, field.as_str()), (5, "version[1].effective_from"));
        assert!(reason.contains("oldest first"), "{reason}");

        let (_, field, _) = error_of(&format!(
            "{head}input_per_mtok = \"2\"\noutput_per_mtok = \"1\"\n[[version.model]]\nname = \"openai/gpt-4o\"\ninput_per_mtok = \"2\"\noutput_per_mtok = \"1\"\n"
        ));
        assert_eq!(field, "version[0].model[1].name");

        let (line, _, _) = error_of("default_max_output_tokens = 1\n[[version]\n");
        assert_eq!(line, 2);

        let (_, field, _) = error_of("currency = \"usd\"\ndefault_max_output_tokens = 1\n");
        assert_eq!(field, "currency");

        let (_, field, _) = error_of(&format!(
            "{head}input_per_mtok = \"2\"\noutput_per_mtok = \"1\"\n[[version.adjustment]]\npercent = \"5\"\n"
        ));
        assert_eq!(field, "version[0].adjustment[0]");
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = RateCard::load(Path::new("/nonexistent/rates.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rates.toml"), "{err}");
    }

    proptest! {
        /// Model-based: the binary search picks what a linear scan of the versions picks.
        #[test]
        fn version_choice_matches_a_linear_scan(
            mut starts in proptest::collection::btree_set(-1_000_000i64..1_000_000, 1..20),
            probes in proptest::collection::vec(-1_100_000i64..1_100_000, 1..50),
        ) {
            let starts: Vec<i64> = std::mem::take(&mut starts).into_iter().collect();
            let mut text = String::from("default_max_output_tokens = 1\n");
            for (i, s) in starts.iter().enumerate() {
                let t = UnixMs(s * 60_000).to_civil();
                text += &format!(
                    "[[version]]\nid = \"v{i}\"\neffective_from = {:04}-{:02}-{:02}T{:02}:{:02}:00Z\n",
                    t.year, t.month, t.day, t.hour, t.minute
                );
            }
            let card = RateCard::from_toml(&text, "p.toml").unwrap();
            for p in probes {
                let t = UnixMs(p * 60_000);
                let expect = starts.iter().rposition(|s| s * 60_000 <= t.0).map(|i| format!("v{i}"));
                prop_assert_eq!(card.at(t).map(|v| v.id.to_string()), expect);
            }
        }

        /// Cost is monotone in the prompt and completion totals: more tokens never cost less.
        #[test]
        fn cost_is_monotone(a in 0u64..1<<40, b in 0u64..1<<40, extra in 0u64..1<<20, output in any::<bool>()) {
            let which = if output { 3 } else { 0 };
            let card = card();
            let claude = card.at(UnixMs(1_770_000_000_000)).unwrap().model("anthropic/claude-sonnet-4-5").unwrap();
            let mut counts = [a, a / 3, a / 4, b, b / 2];
            let base = TokenUsage::new(counts[0], counts[1], counts[2], counts[3], counts[4]);
            counts[which] += extra;
            let more = TokenUsage::new(counts[0], counts[1], counts[2], counts[3], counts[4]);
            prop_assert!(claude.cost(&more, Adjustment::NONE).list >= claude.cost(&base, Adjustment::NONE).list);
        }
    }
}
