//! Exact quantities from text: integers multiplied out, and decimal or JSON number text (with
//! an exponent, as Go writes floats) read digit by digit, never through a float.

use tollgate_engine::Micros;

/// Most significant digits read from a number's text: beyond a float's 17, below `u128`'s 38.
const DIGITS_MAX: usize = 36;

/// `numerator / denominator` rounded to the nearest integer, halves up; `None` on overflow or
/// a zero denominator.
#[must_use]
pub fn round_half_up(numerator: u128, denominator: u128) -> Option<u128> {
    if denominator == 0 {
        return None;
    }
    let quotient = numerator / denominator;
    let remainder = numerator % denominator;
    // remainder * 2 >= denominator, without overflowing.
    if remainder >= denominator - remainder {
        quotient.checked_add(1)
    } else {
        Some(quotient)
    }
}

/// Micro-units of `count × seconds` unit-seconds in hours: exact, rounded once.
pub fn micro_hours(count: u64, seconds: u64) -> Result<Micros, String> {
    let product = u128::from(count) * u128::from(seconds) * 1_000_000;
    round_half_up(product, 3_600)
        .and_then(|m| u64::try_from(m).ok())
        .map(Micros)
        .ok_or_else(|| format!("{count} × {seconds} s is too large"))
}

/// Reads JSON number text (`12`, `0.25`, `1.5e-07`, `-0`) and returns its value divided by
/// `divisor`, in micro-units, rounded once. Negative values are refused (`-0` is zero).
pub fn micros_of(text: &str, divisor: u128) -> Result<Micros, String> {
    let bad = || format!("`{text}` is not a number");
    let text = text.trim();
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => {
            let (m, e) = body.split_at(at);
            let e = e.get(1..).unwrap_or_default();
            let e: i32 = e.parse().map_err(|_| bad())?;
            (m, e)
        }
        None => (body, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let digits: String = whole.chars().chain(frac.chars()).collect();
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(Micros(0));
    }
    if negative {
        return Err(format!("`{text}` is negative"));
    }
    if digits.len() > DIGITS_MAX {
        return Err(format!("`{text}` has more than {DIGITS_MAX} digits"));
    }
    let value: u128 = digits.parse().map_err(|_| bad())?;
    // value × 10^(exponent - frac digits) × 10^6 / divisor.
    let frac_len = i32::try_from(frac.len()).map_err(|_| bad())?;
    let scale = exponent
        .checked_sub(frac_len)
        .and_then(|s| s.checked_add(6))
        .ok_or_else(bad)?;
    let too_large = || format!("`{text}` is too large");
    let micros = if scale >= 0 {
        let factor = 10u128.checked_pow(u32::try_from(scale).map_err(|_| too_large())?);
        let numerator = factor
            .and_then(|f| value.checked_mul(f))
            .ok_or_else(too_large)?;
        round_half_up(numerator, divisor).ok_or_else(too_large)?
    } else {
        // Far below a micro-unit: zero (the value has at most 36 digits).
        let Some(factor) = 10u128.checked_pow(scale.unsigned_abs()) else {
            return Ok(Micros(0));
        };
        match factor.checked_mul(divisor) {
            Some(denominator) => round_half_up(value, denominator).ok_or_else(too_large)?,
            None => 0,
        }
    };
    u64::try_from(micros).map(Micros).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_are_read_exactly_and_rounded_once() {
        let check = |text: &str, divisor: u128, expect: Result<u64, ()>| {
            assert_eq!(
                micros_of(text, divisor).map(|m| m.0).map_err(|_| ()),
                expect,
                "{text} / {divisor}"
            );
        };
        check("12", 1, Ok(12_000_000));
        check("0.25", 1, Ok(250_000));
        check("1.5e-07", 1, Ok(0));
        check("5e-07", 1, Ok(1)); // half a micro rounds up
        check("4.9e-07", 1, Ok(0));
        check("2.5E+3", 1, Ok(2_500_000_000));
        check("0.30000000000000004", 1, Ok(300_000));
        check("-0", 1, Ok(0));
        check("-0.0", 1, Ok(0));
        check("-1", 1, Err(()));
        check("1e400", 1, Err(()));
        check("1e-400", 1, Ok(0));
        check("", 1, Err(()));
        check(".5", 1, Err(()));
        check("5.", 1, Err(()));
        check("0x10", 1, Err(()));
        check("NaN", 1, Err(()));
        // 730 GB-months of bytes: 1e9 × 730 byte-hours is one GB-month.
        check("730000000000", 730_000_000_000, Ok(1_000_000));
        check("365000000000", 730_000_000_000, Ok(500_000));
        assert_eq!(micro_hours(2, 3_600), Ok(Micros(2_000_000)));
        assert_eq!(micro_hours(1, 1), Ok(Micros(278))); // 277.78 rounds to 278
        assert_eq!(micro_hours(1, 0), Ok(Micros(0)));
        assert_eq!(micro_hours(8, 5_400), Ok(Micros(12_000_000)));
        assert_eq!(round_half_up(1, 2), Some(1));
        assert_eq!(round_half_up(1, 3), Some(0));
        assert_eq!(round_half_up(u128::MAX, 1), Some(u128::MAX));
        assert_eq!(round_half_up(1, 0), None);
    }

    proptest! {
        #[test]
        fn any_text_is_a_number_or_an_error(text in "[-+0-9.eE]{0,40}", divisor in 1u128..u128::MAX) {
            let _ = micros_of(&text, divisor);
        }

        #[test]
        fn integers_read_as_themselves(n in 0u64..18_000_000_000_000) {
            prop_assert_eq!(micros_of(&n.to_string(), 1_000_000), Ok(Micros(n)));
        }
    }
}
