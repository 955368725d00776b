//! CPU, byte and duration values as users write them.
//!
//! Each kind is stored exactly as written (a newtype over the string) and
//! parsed by one function, so every front door reads a value the same way.
//! The accepted forms and the refusals follow DESIGN.md ("Quantities and
//! durations"). In the CRD schema each kind is a string with a `pattern`, so a
//! real Kubernetes API server rejects what it can before Shoal sees it.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Schema pattern for CPU quantities: `500m`, `0.5`, `2`.
pub const CPU_PATTERN: &str = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$";
/// Schema pattern for byte quantities: `128Mi`, `1G`, `300mb`, `100b`, `1048576`.
pub const BYTES_PATTERN: &str =
    r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E|[bB]|[kKmMgGtTpP][bB])?$";
/// Schema pattern for durations: `1m30s`, `200ms`, `1h`, `10s`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Why a quantity or duration was refused; the message is meant for the user
/// and is prefixed with the field path by validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(pub String);

fn err(msg: impl Into<String>) -> QuantityError {
    QuantityError(msg.into())
}

/// Splits `"12.5Mi"` into `("12", Some("5"), "Mi")`; `None` if the number part
/// is malformed.
fn split_number(s: &str) -> Option<(&str, Option<&str>, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    Some((int, frac, suffix))
}

/// `int.frac × mult` exactly, or `None` on overflow; the bool says whether the
/// result had a fractional part that was dropped.
fn scale(int: &str, frac: Option<&str>, mult: u128) -> Option<(u128, bool)> {
    let int: u128 = int.parse().ok()?;
    let mut total = int.checked_mul(mult)?;
    let mut inexact = false;
    if let Some(frac) = frac {
        if frac.len() > 30 {
            return None;
        }
        let denom = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let f: u128 = frac.parse().ok()?;
        let scaled = f.checked_mul(mult)?;
        inexact = scaled % denom != 0;
        total = total.checked_add(scaled / denom)?;
    }
    Some((total, inexact))
}

/// Parses a CPU quantity into millicores: `500m` → 500, `0.5` → 500, `2` → 2000.
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    const EX: &str = "(examples: 500m, 0.5, 2)";
    if s.starts_with('-') {
        return Err(err(format!(
            "{s:?} is negative: a cpu quantity must be 0 or more"
        )));
    }
    if s.contains(char::is_whitespace) {
        return Err(err(format!("{s:?} contains spaces {EX}")));
    }
    let Some((int, frac, suffix)) = split_number(s) else {
        return Err(err(format!("{s:?} is not a cpu quantity {EX}")));
    };
    let mult = match (suffix, frac) {
        ("m", None) => 1,
        ("m", Some(_)) => {
            return Err(err(format!(
                "{s:?} is a fraction of a millicore: the finest cpu unit is 1m"
            )));
        }
        ("", Some(f)) if f.len() > 3 => {
            return Err(err(format!(
                "{s:?} has more than 3 decimals: the finest cpu unit is 0.001 (1m)"
            )));
        }
        ("", _) => 1000,
        _ => return Err(err(format!("{s:?} is not a cpu quantity {EX}"))),
    };
    match scale(int, frac, mult) {
        Some((v, false)) => u64::try_from(v).map_err(|_| err(format!("{s:?} is too large"))),
        _ => Err(err(format!("{s:?} is too large"))),
    }
}

/// Parses a byte quantity into bytes. Binary (`Ki`..`Ei`), decimal (`M`..`E`)
/// and Compose/Docker forms (`b`, `kb`, `mb`, `gb`, `tb`, `pb`, 1024-based) are
/// accepted; a bare `m`, `k`, `K` or `g` is refused because Kubernetes and
/// Docker read it differently.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    const EX: &str = "(examples: 128Mi, 1G)";
    if s.starts_with('-') {
        return Err(err(format!(
            "{s:?} is negative: a byte quantity must be 0 or more"
        )));
    }
    if s.contains(char::is_whitespace) {
        return Err(err(format!("{s:?} contains spaces {EX}")));
    }
    let Some((int, frac, suffix)) = split_number(s) else {
        return Err(err(format!("{s:?} is not a byte quantity {EX}")));
    };
    let bin = |n: u32| 1024u128.pow(n);
    let dec = |n: u32| 1000u128.pow(n);
    let mult = match suffix {
        "" | "b" | "B" => 1,
        "Ki" => bin(1),
        "Mi" => bin(2),
        "Gi" => bin(3),
        "Ti" => bin(4),
        "Pi" => bin(5),
        "Ei" => bin(6),
        "M" => dec(2),
        "G" => dec(3),
        "T" => dec(4),
        "P" => dec(5),
        "E" => dec(6),
        "m" | "k" | "K" | "g" => {
            let (bin_suffix, docker_suffix) = match suffix {
                "m" => ("Mi", "mb"),
                "g" => ("Gi", "gb"),
                _ => ("Ki", "kb"),
            };
            let what = if suffix == "m" {
                "milli in Kubernetes but MiB in Docker"
            } else {
                "ambiguous between Kubernetes and Docker"
            };
            return Err(err(format!(
                "{s:?} is ambiguous: a bare {suffix:?} means {what}; write {n}{bin_suffix} (or {n}{docker_suffix})",
                n = &s[..s.len() - suffix.len()]
            )));
        }
        other => {
            let lower = other.to_ascii_lowercase();
            match lower.as_str() {
                "kb" => bin(1),
                "mb" => bin(2),
                "gb" => bin(3),
                "tb" => bin(4),
                "pb" => bin(5),
                _ => return Err(err(format!("{s:?} is not a byte quantity {EX}"))),
            }
        }
    };
    match scale(int, frac, mult) {
        Some((_, true)) => Err(err(format!(
            "{s:?} is a fraction of a byte: use a whole number of bytes or a larger unit"
        ))),
        Some((v, false)) => u64::try_from(v).map_err(|_| err(format!("{s:?} is too large"))),
        None => Err(err(format!("{s:?} is too large"))),
    }
}

/// Parses a duration such as `1m30s`, `200ms`, `1h` or `10s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, QuantityError> {
    const EX: &str = "(examples: 10s, 200ms, 1m30s)";
    if s.is_empty() {
        return Err(err(format!("empty duration {EX}")));
    }
    if s.starts_with('-') {
        return Err(err(format!(
            "{s:?} is negative: a duration must be 0 or more"
        )));
    }
    if s.contains(char::is_whitespace) {
        return Err(err(format!(
            "{s:?} contains spaces: write it without them {EX}"
        )));
    }
    let mut rest = s;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let Some((int, frac, after)) = split_number(rest) else {
            return Err(err(format!("{s:?} is not a duration {EX}")));
        };
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        let mult: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(err(format!(
                    "{s:?} has no unit: write {s}s for seconds {EX}"
                )));
            }
            other => {
                return Err(err(format!(
                    "{s:?} has an unknown unit {other:?} (units: ms, s, m, h)"
                )));
            }
        };
        let Some((v, _)) = scale(int, frac, mult) else {
            return Err(err(format!("{s:?} is too long")));
        };
        nanos = nanos
            .checked_add(v)
            .ok_or_else(|| err(format!("{s:?} is too long")))?;
        rest = &after[unit_len..];
    }
    let secs =
        u64::try_from(nanos / 1_000_000_000).map_err(|_| err(format!("{s:?} is too long")))?;
    // The remainder is below 10^9 and always fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(std::time::Duration::new(secs, sub))
}

macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $what:literal, $example:literal, $pattern:expr, $parse:path => $out:ty) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value as written; use `parse()` (or validation) to check it.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The value exactly as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The parsed value, or why it is refused.
            pub fn parse(&self) -> Result<$out, QuantityError> {
                $parse(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, concat!("a ", $what, " as a string, e.g. \"", $example, "\""))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name(v.to_owned()))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Err(E::custom(format_args!(
                            concat!("{} must be a quoted string: write \"{}\" (a ", $what, " is a string, e.g. \"", $example, "\")"),
                            v, v
                        )))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        Err(E::custom(format_args!(
                            concat!("{} must be a quoted string: write \"{}\" (a ", $what, " is a string, e.g. \"", $example, "\")"),
                            v, v
                        )))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        Err(E::custom(format_args!(
                            concat!("{} must be a quoted string: write \"{}\" (a ", $what, " is a string, e.g. \"", $example, "\")"),
                            v, v
                        )))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "pattern": $pattern })
            }
        }
    };
}

string_value!(
    /// A CPU quantity as written: `500m`, `0.5` or `2` (cores). In YAML quote
    /// decimals (`"0.5"`).
    CpuQuantity, "cpu quantity", "500m", CPU_PATTERN, parse_cpu => u64
);
string_value!(
    /// A byte quantity as written: `128Mi`, `1Gi`, `512Ki` (binary), `128M`,
    /// `1G` (decimal), `300mb`, `1gb`, `100b` (Compose/Docker, 1024-based).
    ByteQuantity, "byte quantity", "128Mi", BYTES_PATTERN, parse_bytes => u64
);
string_value!(
    /// A duration as written: `1m30s`, `200ms`, `1h`, `10s`.
    DurationValue, "duration", "10s", DURATION_PATTERN, parse_duration => std::time::Duration
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_accepts_the_design_forms() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.125"), Ok(1125));
        assert_eq!(parse_cpu("0"), Ok(0));
    }

    #[test]
    fn cpu_refusals_say_why() {
        assert!(parse_cpu("-1").unwrap_err().0.contains("negative"));
        assert!(
            parse_cpu("0.1234")
                .unwrap_err()
                .0
                .contains("more than 3 decimals")
        );
        assert!(
            parse_cpu("1.5m")
                .unwrap_err()
                .0
                .contains("fraction of a millicore")
        );
        assert!(parse_cpu("2 cores").unwrap_err().0.contains("spaces"));
        assert!(
            parse_cpu("two")
                .unwrap_err()
                .0
                .contains("not a cpu quantity")
        );
        assert!(
            parse_cpu("1k")
                .unwrap_err()
                .0
                .contains("not a cpu quantity")
        );
        assert!(
            parse_cpu("99999999999999999999999")
                .unwrap_err()
                .0
                .contains("too large")
        );
    }

    #[test]
    fn bytes_accepts_binary_decimal_and_docker_forms() {
        assert_eq!(parse_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(parse_bytes("128M"), Ok(128_000_000));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("300mb"), Ok(300 << 20));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert_eq!(parse_bytes("512kb"), Ok(512 << 10));
        assert_eq!(parse_bytes("100b"), Ok(100));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
    }

    #[test]
    fn bytes_refusals_say_why() {
        let e = parse_bytes("300m").unwrap_err().0;
        assert!(e.contains("ambiguous") && e.contains("300Mi"), "{e}");
        let e = parse_bytes("512k").unwrap_err().0;
        assert!(e.contains("512Ki"), "{e}");
        assert_eq!(
            parse_bytes("12XB").unwrap_err().0,
            "\"12XB\" is not a byte quantity (examples: 128Mi, 1G)"
        );
        assert!(
            parse_bytes("0.5")
                .unwrap_err()
                .0
                .contains("fraction of a byte")
        );
        assert!(
            parse_bytes("1.5b")
                .unwrap_err()
                .0
                .contains("fraction of a byte")
        );
        assert!(parse_bytes("-1Mi").unwrap_err().0.contains("negative"));
        assert!(
            parse_bytes("100000000Ei")
                .unwrap_err()
                .0
                .contains("too large")
        );
        assert!(parse_bytes("1 Gi").unwrap_err().0.contains("spaces"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").unwrap_err().0.contains("no unit"));
        assert!(parse_duration("10 s").unwrap_err().0.contains("spaces"));
        assert!(
            parse_duration("10d")
                .unwrap_err()
                .0
                .contains("unknown unit \"d\"")
        );
        assert!(parse_duration("-1s").unwrap_err().0.contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn numbers_must_be_quoted() {
        let q: CpuQuantity = serde_json::from_str("\"0.5\"").unwrap();
        assert_eq!(q.as_str(), "0.5");
        let e = serde_json::from_str::<CpuQuantity>("0.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a quoted string: write \"0.5\""), "{e}");
    }
}
