//! Money and prices as integers: nano-units of the rate card's currency, never a float.
//!
//! One nano-unit is 10^-9 of the currency (a nano-dollar for USD), fine enough that the cheapest
//! token price in the field ($0.01 per million tokens = 10 nanos a token) is a whole number.
//! **Rounding happens once**: a cost is summed exactly in `u128` from token counts and per-million
//! prices, the markup or discount is applied to that exact sum, and only then is it rounded *up*
//! to a whole nano-unit ([`ceil_div`]). Nothing else in tollgate rounds money.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Nano-units (10^-9) of one unit of the rate card's currency.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub u64);

/// Number of nano-units in one whole unit of currency.
pub const NANOS_PER_UNIT: u64 = 1_000_000_000;

impl Nanos {
    /// Nothing owed: the cost of a refusal.
    pub const ZERO: Nanos = Nanos(0);
    /// The largest amount, used where a sum cannot be represented (it refuses any budget).
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// Parses an exact decimal amount of whole currency units (`"12.50"`) into nanos.
    pub fn from_decimal(text: &str) -> Result<Nanos, DecimalError> {
        let value = parse_decimal(text, 9)?;
        u64::try_from(value)
            .map(Nanos)
            .map_err(|_| DecimalError::TooLarge)
    }

    /// Sum that saturates at [`Nanos::MAX`] instead of wrapping.
    #[must_use]
    pub fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Nanos {
    /// Whole units and nine decimals, trailing zeros trimmed to two: `12.50`, `0.000001875`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANOS_PER_UNIT;
        let frac = self.0 % NANOS_PER_UNIT;
        let digits = format!("{frac:09}");
        let trimmed = digits.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &digits[..2]
        } else {
            trimmed
        };
        write!(f, "{whole}.{shown}")
    }
}

/// A price per million tokens, in nanos: `$3.00 / MTok` is `3_000_000_000`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PricePerMTok(pub u64);

/// A price per unit of a metered resource (one GPU-hour, one GB-month), in nanos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PricePerUnit(pub u64);

macro_rules! decimal_price {
    ($ty:ident) => {
        impl FromStr for $ty {
            type Err = DecimalError;
            fn from_str(text: &str) -> Result<Self, DecimalError> {
                Nanos::from_decimal(text).map(|n| $ty(n.0))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                de.deserialize_any(DecimalVisitor).map(|n| $ty(n.0))
            }
        }
    };
}
decimal_price!(PricePerMTok);
decimal_price!(PricePerUnit);

/// A markup (positive) or discount (negative) on list price, in parts per million:
/// `"+12.5"` percent is `125_000`, `"-20"` percent is `-200_000`. Never below -100 %.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Adjustment {
    /// Parts per million of list price added (negative: taken off).
    pub ppm: i64,
}

/// Largest markup accepted, in percent: ten thousand percent (a factor of 101).
pub const MARKUP_PERCENT_MAX: i64 = 10_000;
const MARKUP_PPM_MAX: i128 = MARKUP_PERCENT_MAX as i128 * 10_000;

/// One million, the denominator of [`Adjustment::ppm`] and of per-million-token prices.
pub const MILLION: u128 = 1_000_000;

impl Adjustment {
    /// No markup, no discount.
    pub const NONE: Adjustment = Adjustment { ppm: 0 };

    /// Parses a signed percentage with up to four decimals (`"10"`, `"-12.5"`).
    pub fn from_percent(text: &str) -> Result<Adjustment, DecimalError> {
        let (negative, digits) = match text.trim().strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.trim().strip_prefix('+').unwrap_or(text.trim())),
        };
        // Percent with four decimals is exactly parts per million.
        let ppm = parse_decimal(digits, 4)?;
        let ppm = i64::try_from(ppm).map_err(|_| DecimalError::TooLarge)?;
        let ppm = if negative { -ppm } else { ppm };
        if ppm < -(MILLION as i64) {
            return Err(DecimalError::DiscountOverHundredPercent);
        }
        if i128::from(ppm) > MARKUP_PPM_MAX {
            return Err(DecimalError::MarkupTooLarge);
        }
        Ok(Adjustment { ppm })
    }

    /// The factor's numerator over [`MILLION`]. Parsing keeps `ppm` within
    /// [-100 %, +[`MARKUP_PERCENT_MAX`] %]; a hand-built value outside is clamped to that range.
    #[must_use]
    pub fn numerator(self) -> u128 {
        let ppm = i128::from(self.ppm).clamp(-(MILLION as i128), MARKUP_PPM_MAX);
        u128::try_from(MILLION as i128 + ppm).unwrap_or(0)
    }
}

impl fmt::Display for Adjustment {
    /// Signed percent with four decimals, as config writes it: `+12.5000`, `-20.0000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.ppm < 0 { '-' } else { '+' };
        let abs = self.ppm.unsigned_abs();
        write!(f, "{sign}{}.{:04}", abs / 10_000, abs % 10_000)
    }
}

impl Serialize for Adjustment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Adjustment {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        Adjustment::from_percent(&text).map_err(serde::de::Error::custom)
    }
}

/// Division rounding up: the one rounding rule of tollgate's money.
#[must_use]
pub fn ceil_div(numerator: u128, denominator: u128) -> u128 {
    if denominator == 0 {
        return u128::MAX;
    }
    numerator.div_ceil(denominator)
}

/// Why a decimal amount was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Nothing to parse: the text is empty or only whitespace.
    #[error("empty amount")]
    Empty,
    /// A character that is not a digit or the one decimal point.
    #[error("`{0}` is not a plain decimal amount (digits with an optional `.`, like \"2.50\")")]
    NotDecimal(String),
    /// More decimal places than the unit can hold.
    #[error("more than {max} decimal places")]
    TooPrecise {
        /// The most decimal places allowed.
        max: u32,
    },
    /// Larger than the counters can hold.
    #[error("amount too large")]
    TooLarge,
    /// A float literal, which cannot hold money exactly.
    #[error(
        "write amounts as strings (\"2.50\") or integers: a float literal cannot hold money exactly"
    )]
    Float,
    /// A markup beyond [`MARKUP_PERCENT_MAX`].
    #[error("a markup cannot exceed {MARKUP_PERCENT_MAX} percent")]
    MarkupTooLarge,
    /// A discount of more than one hundred percent.
    #[error("a discount cannot exceed 100 percent")]
    DiscountOverHundredPercent,
}

/// Parses unsigned `digits[.digits]` into an integer scaled by `10^scale`, exactly.
pub fn parse_decimal(text: &str, scale: u32) -> Result<u128, DecimalError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if (whole.is_empty() && frac.is_empty()) || !plain(whole) || !plain(frac) {
        return Err(DecimalError::NotDecimal(text.to_owned()));
    }
    let frac_digits: Vec<u8> = frac.bytes().filter(|&b| b != b'_').collect();
    if frac_digits.len() > scale as usize {
        // Trailing zeros beyond the scale are harmless ("1.5000000000").
        if frac_digits[scale as usize..].iter().any(|&b| b != b'0') {
            return Err(DecimalError::TooPrecise { max: scale });
        }
    }
    let mut value: u128 = 0;
    for b in whole.bytes().filter(|&b| b != b'_') {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b - b'0')))
            .ok_or(DecimalError::TooLarge)?;
    }
    for i in 0..scale as usize {
        let digit = frac_digits.get(i).map_or(0, |&b| b - b'0');
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(digit)))
            .ok_or(DecimalError::TooLarge)?;
    }
    Ok(value)
}

/// Serde visitor accepting a decimal string or an integer, refusing floats by name.
/// Reads an amount of money written as a decimal string (`"12.50"`) or a whole number, for
/// `#[serde(deserialize_with)]` on config fields; floats are refused.
pub fn deserialize_amount<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Nanos, D::Error> {
    de.deserialize_any(DecimalVisitor)
}

struct DecimalVisitor;

impl serde::de::Visitor<'_> for DecimalVisitor {
    type Value = Nanos;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal amount as a string (\"2.50\") or an integer")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Nanos, E> {
        Nanos::from_decimal(v).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Nanos, E> {
        v.checked_mul(NANOS_PER_UNIT)
            .map(Nanos)
            .ok_or_else(|| E::custom(DecimalError::TooLarge))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Nanos, E> {
        let v = u64::try_from(v).map_err(|_| E::custom("amount cannot be negative"))?;
        self.visit_u64(v)
    }

    fn visit_f64<E: serde::de::Error>(self, _v: f64) -> Result<Nanos, E> {
        Err(E::custom(DecimalError::Float))
    }
}

/// A quantity of a metered resource in millionths of its unit (1.5 GPU-hours is `1_500_000`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub u64);

impl Micros {
    /// Parses an exact decimal quantity with up to six decimals.
    pub fn from_decimal(text: &str) -> Result<Micros, DecimalError> {
        let value = parse_decimal(text, 6)?;
        u64::try_from(value)
            .map(Micros)
            .map_err(|_| DecimalError::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        let check = |text: &str, scale: u32, expect: Result<u128, DecimalError>| {
            assert_eq!(
                parse_decimal(text, scale),
                expect,
                "{text:?} at scale {scale}"
            );
        };
        check("3", 9, Ok(3_000_000_000));
        check("3.00", 9, Ok(3_000_000_000));
        check("0.0375", 9, Ok(37_500_000));
        check(".5", 9, Ok(500_000_000));
        check("7.", 9, Ok(7_000_000_000));
        check("1_000.000_000_001", 9, Ok(1_000_000_000_001));
        check("0.0000000001", 9, Err(DecimalError::TooPrecise { max: 9 }));
        check("1.5000000000000", 9, Ok(1_500_000_000));
        check("", 9, Err(DecimalError::Empty));
        check(".", 9, Err(DecimalError::NotDecimal(".".into())));
        check("-1", 9, Err(DecimalError::NotDecimal("-1".into())));
        check("1e3", 9, Err(DecimalError::NotDecimal("1e3".into())));
        check("1.2.3", 9, Err(DecimalError::NotDecimal("1.2.3".into())));
        check("٣", 9, Err(DecimalError::NotDecimal("٣".into())));
        check(
            "340282366920938463463374607431768211456",
            0,
            Err(DecimalError::TooLarge),
        );
    }

    #[test]
    fn nanos_display_round_trips() {
        for (nanos, text) in [
            (0, "0.00"),
            (1, "0.000000001"),
            (1_875, "0.000001875"),
            (12_500_000_000, "12.50"),
            (3_000_000_000, "3.00"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(Nanos(nanos).to_string(), text);
            assert_eq!(Nanos::from_decimal(text), Ok(Nanos(nanos)));
        }
    }

    #[test]
    fn adjustments_parse_as_ppm() {
        assert_eq!(Adjustment::from_percent("10").map(|a| a.ppm), Ok(100_000));
        assert_eq!(
            Adjustment::from_percent("+12.5").map(|a| a.ppm),
            Ok(125_000)
        );
        assert_eq!(Adjustment::from_percent("-20").map(|a| a.ppm), Ok(-200_000));
        assert_eq!(
            Adjustment::from_percent("-100").map(|a| a.numerator()),
            Ok(0)
        );
        assert_eq!(
            Adjustment::from_percent("-100.5"),
            Err(DecimalError::DiscountOverHundredPercent)
        );
        assert_eq!(
            Adjustment::from_percent("1.00001"),
            Err(DecimalError::TooPrecise { max: 4 })
        );
        assert_eq!(
            Adjustment::from_percent("922337203685477.5807"),
            Err(DecimalError::MarkupTooLarge)
        );
        assert_eq!(
            Adjustment::from_percent("10000").map(|a| a.numerator()),
            Ok(101_000_000)
        );
        // A hand-built value out of range is clamped, never wrapped into a free request.
        assert_eq!(Adjustment { ppm: i64::MAX }.numerator(), 101_000_000);
        assert_eq!(Adjustment { ppm: i64::MIN }.numerator(), 0);
        // Serialized as config writes it, and read back the same.
        for text in ["+12.5", "-20", "0", "+0.0001"] {
            let a = Adjustment::from_percent(text).unwrap();
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(
                serde_json::from_str::<Adjustment>(&json).unwrap(),
                a,
                "{json}"
            );
        }
        assert_eq!(
            Adjustment::from_percent("-12.5").unwrap().to_string(),
            "-12.5000"
        );
    }

    #[test]
    fn rounding_is_up_and_exact_on_whole_values() {
        assert_eq!(ceil_div(10, 5), 2);
        assert_eq!(ceil_div(11, 5), 3);
        assert_eq!(ceil_div(0, 5), 0);
        assert_eq!(ceil_div(1, 0), u128::MAX);
    }
}
