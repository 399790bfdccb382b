//! Kubernetes resource quantities (`500m`, `16Gi`, `1e3`, `2`) as numbers.
//!
//! The grammar is the API server's: a signed decimal number followed by a
//! binary suffix (`Ki` .. `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M`,
//! `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). Anything else is
//! refused rather than guessed.

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The number part is missing or malformed.
    #[error("quantity {0:?} has no valid number")]
    Number(String),
    /// The suffix is not one Kubernetes defines.
    #[error("quantity {0:?} has an unknown suffix")]
    Suffix(String),
    /// Negative or not finite.
    #[error("quantity {0:?} is negative or not finite")]
    Range(String),
}

/// Parses a quantity into its value in base units (cores, bytes, devices).
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return Err(QuantityError::Number(text.to_string()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| QuantityError::Number(text.to_string()))?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..]
                .parse()
                .map_err(|_| QuantityError::Suffix(text.to_string()))?;
            10f64.powi(e)
        }
        _ => return Err(QuantityError::Suffix(text.to_string())),
    };
    let v = value * scale;
    if !v.is_finite() || v < 0.0 {
        return Err(QuantityError::Range(text.to_string()));
    }
    Ok(v)
}

/// A quantity in whole bytes (rounded up, as the API server rounds).
pub fn bytes(text: &str) -> Result<i64, QuantityError> {
    let v = parse(text)?.ceil();
    if v > i64::MAX as f64 {
        return Err(QuantityError::Range(text.to_string()));
    }
    Ok(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix_family() {
        assert_eq!(parse("500m").unwrap(), 0.5);
        assert_eq!(parse("2").unwrap(), 2.0);
        assert_eq!(parse("1.5").unwrap(), 1.5);
        assert_eq!(parse("250000000n").unwrap(), 0.25);
        assert_eq!(bytes("16Gi").unwrap(), 16 * 1024 * 1024 * 1024);
        assert_eq!(bytes("1k").unwrap(), 1000);
        assert_eq!(bytes("129M").unwrap(), 129_000_000);
        assert_eq!(bytes("1e3").unwrap(), 1000);
        assert_eq!(bytes("12E-1").unwrap(), 2);
        assert_eq!(bytes("3Ki").unwrap(), 3072);
    }

    #[test]
    fn refuses_what_kubernetes_would_not_write() {
        assert!(matches!(parse(""), Err(QuantityError::Number(_))));
        assert!(matches!(parse("Gi"), Err(QuantityError::Number(_))));
        assert!(matches!(parse("12Qi"), Err(QuantityError::Suffix(_))));
        assert!(matches!(parse("1eX"), Err(QuantityError::Suffix(_))));
        assert!(matches!(parse("-1"), Err(QuantityError::Range(_))));
        assert!(matches!(parse("1.2.3"), Err(QuantityError::Number(_))));
    }
}
