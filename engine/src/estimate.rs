//! An upper bound on a request's cost, known before it is sent: what a reservation holds.
//!
//! Exact token counts are too slow for the request path, so the bound uses bytes: byte-level
//! BPE emits at most one token per byte, so a body of `n` bytes carries at most `n` prompt tokens
//! of text. Chat templates and tool prompts add tokens the body does not show, and images cost
//! tokens their URL bytes do not bound; the gateway passes those as `extra_input_tokens`.
//! Completion tokens are bounded by the request's `max_tokens` (or `max_completion_tokens`),
//! capped by the model's `max_output_tokens` from the rate card, which is used alone when the
//! request names none.
//!
//! **Invariant:** when a call's actual usage is within the bound, its actual cost is within
//! the estimate, because every prompt token is priced at the highest prompt price and every
//! completion token at the highest completion price, and cost is monotone in tokens.

use crate::money::{Adjustment, Nanos};
use crate::ratecard::{Cost, ModelPrice};
use crate::tokens::Tokens;

/// What the gateway knows of a request before sending it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestShape {
    /// Bytes of the request body.
    pub body_bytes: u64,
    /// Prompt tokens the body does not show (template, tool prompt, image allowance).
    pub extra_input_tokens: u64,
    /// The request's own cap on completion tokens, if it set one.
    pub max_output_tokens: Option<u64>,
}

/// The bound and the token counts behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Most prompt tokens the request can consume.
    pub input_tokens_max: Tokens,
    /// Most completion tokens it can produce.
    pub output_tokens_max: Tokens,
    /// Most it can cost, after adjustment: the amount to reserve.
    pub cost_max: Nanos,
}

/// The upper bound on the cost of a request of `shape` to a model priced `price`.
#[must_use]
pub fn estimate(price: &ModelPrice, adjustment: Adjustment, shape: RequestShape) -> Estimate {
    let input = shape.body_bytes.saturating_add(shape.extra_input_tokens);
    let output = shape
        .max_output_tokens
        .map_or(price.max_output_tokens, |asked| {
            asked.min(price.max_output_tokens)
        });
    // Priced as if every prompt token carried the dearest prompt price and every completion
    // token the dearest completion price.
    let terms = [
        (input, price.input_bound_per_mtok()),
        (output, price.output_bound_per_mtok()),
    ];
    Estimate {
        input_tokens_max: Tokens(input),
        output_tokens_max: Tokens(output),
        cost_max: Cost::of_terms(&terms, adjustment).billed,
    }
}

/// The most completion tokens a request of `shape` can be allowed so that its bound stays
/// within `budget` (at most what `shape` asks, or the model's cap): what its `max_tokens` is
/// lowered to when only part of its bound can be held. Zero when even the prompt does not fit.
#[must_use]
pub fn output_tokens_within(
    price: &ModelPrice,
    adjustment: Adjustment,
    shape: RequestShape,
    budget: Nanos,
) -> u64 {
    let full = estimate(price, adjustment, shape);
    if full.cost_max <= budget {
        return full.output_tokens_max.0;
    }
    let with = |tokens: u64| {
        let capped = RequestShape {
            max_output_tokens: Some(tokens),
            ..shape
        };
        estimate(price, adjustment, capped).cost_max
    };
    // The bound grows with the tokens allowed: the largest count within the budget, by halves.
    let (mut fits, mut over) = (0u64, full.output_tokens_max.0);
    if with(0) > budget {
        return 0;
    }
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if with(mid) <= budget {
            fits = mid;
        } else {
            over = mid;
        }
    }
    fits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ModelRef;
    use crate::money::PricePerMTok;
    use crate::tokens::TokenUsage;
    use proptest::prelude::*;

    fn claude() -> ModelPrice {
        ModelPrice {
            model: ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap(),
            input_per_mtok: PricePerMTok(3_000_000_000),
            cached_input_per_mtok: PricePerMTok(300_000_000),
            cache_write_per_mtok: PricePerMTok(3_750_000_000),
            output_per_mtok: PricePerMTok(15_000_000_000),
            reasoning_per_mtok: PricePerMTok(15_000_000_000),
            max_output_tokens: 64_000,
        }
    }

    #[test]
    fn bounds_follow_the_request() {
        let p = claude();
        let shape = RequestShape {
            body_bytes: 400_000,
            extra_input_tokens: 500,
            max_output_tokens: Some(1_000),
        };
        let e = estimate(&p, Adjustment::NONE, shape);
        assert_eq!(
            (e.input_tokens_max, e.output_tokens_max),
            (Tokens(400_500), Tokens(1_000))
        );
        // 400500 * 3.75 + 1000 * 15 per million = 1,501,875 + 15,000 micro-dollars.
        assert_eq!(e.cost_max, Nanos(1_516_875_000));
        let uncapped = estimate(
            &p,
            Adjustment::NONE,
            RequestShape {
                max_output_tokens: None,
                ..shape
            },
        );
        assert_eq!(uncapped.output_tokens_max, Tokens(64_000));
        let over = estimate(
            &p,
            Adjustment::NONE,
            RequestShape {
                max_output_tokens: Some(1 << 40),
                ..shape
            },
        );
        assert_eq!(over.output_tokens_max, Tokens(64_000));
    }

    #[test]
    fn the_output_allowed_is_the_most_whose_bound_fits() {
        let p = claude();
        let shape = RequestShape {
            body_bytes: 1_000,
            extra_input_tokens: 0,
            max_output_tokens: Some(10_000),
        };
        let full = estimate(&p, Adjustment::NONE, shape);
        assert_eq!(
            output_tokens_within(&p, Adjustment::NONE, shape, full.cost_max),
            10_000
        );
        // The prompt bound is 1,000 tokens at 3.75 = 3,750,000 nanos; each output token 15,000.
        let budget = Nanos(3_750_000 + 15_000 * 321 + 14_999);
        assert_eq!(
            output_tokens_within(&p, Adjustment::NONE, shape, budget),
            321
        );
        assert_eq!(
            output_tokens_within(&p, Adjustment::NONE, shape, Nanos(3_749_999)),
            0
        );
    }

    proptest! {
        /// The output allowed within any budget has a bound within it, and one token more
        /// would not (unless the request's own cap was reached).
        #[test]
        fn the_output_allowed_is_tight(body in 0u64..100_000, asked in 0u64..100_000, budget in 0u64..10_000_000_000) {
            let p = claude();
            let shape = RequestShape { body_bytes: body, extra_input_tokens: 0, max_output_tokens: Some(asked) };
            let k = output_tokens_within(&p, Adjustment::NONE, shape, Nanos(budget));
            let at = |t: u64| estimate(&p, Adjustment::NONE, RequestShape { max_output_tokens: Some(t), ..shape }).cost_max;
            if at(0) <= Nanos(budget) {
                prop_assert!(at(k) <= Nanos(budget));
                let cap = estimate(&p, Adjustment::NONE, shape).output_tokens_max.0;
                prop_assert!(k == cap || at(k + 1) > Nanos(budget));
            } else {
                prop_assert_eq!(k, 0);
            }
        }

        /// Whatever split of cached, cache-written and reasoning tokens the provider reports,
        /// usage within the bound costs no more than the estimate.
        #[test]
        fn usage_within_the_bound_costs_no_more(
            body in 0u64..2_000_000, extra in 0u64..5_000, asked in proptest::option::of(0u64..100_000),
            in_frac in 0u64..=100, cached_frac in 0u64..=100, write_frac in 0u64..=100,
            out_frac in 0u64..=100, reasoning_frac in 0u64..=100, markup in -100i64..200,
        ) {
            let p = claude();
            let adj = Adjustment { ppm: markup * 10_000 };
            let e = estimate(&p, adj, RequestShape { body_bytes: body, extra_input_tokens: extra, max_output_tokens: asked });
            let input = e.input_tokens_max.0 * in_frac / 100;
            let cached = input * cached_frac / 100;
            let write = (input - cached) * write_frac / 100;
            let output = e.output_tokens_max.0 * out_frac / 100;
            let reasoning = output * reasoning_frac / 100;
            let actual = p.cost(&TokenUsage::new(input, cached, write, output, reasoning), adj);
            prop_assert!(actual.billed <= e.cost_max, "{actual:?} > {e:?}");
        }
    }
}
