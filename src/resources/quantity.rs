//! Kubernetes resource quantities (`20Gi`, `1.5T`, `500M`, `1e9`) as byte
//! counts, for comparing volume sizes.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a Kubernetes quantity such as 10Gi, 500Mi or 1T")]
pub struct QuantityError(String);

/// The value of `text` in its base unit, rounded up to a whole number.
pub fn to_units(text: &str) -> Result<u128, QuantityError> {
    let err = || QuantityError(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(err());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits: String = format!("{int_part}{frac_part}");
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err())?
    };
    // value = mantissa * 10^-frac_len * multiplier
    let frac_len = frac_part.len() as u32;
    let (mul_num, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| err())?;
            (1, exp)
        }
        _ => return Err(err()),
    };
    let exp = exp10 - frac_len as i32;
    let scaled = mantissa.checked_mul(mul_num).ok_or_else(err)?;
    if exp >= 0 {
        let factor = 10u128.checked_pow(exp as u32).ok_or_else(err)?;
        scaled.checked_mul(factor).ok_or_else(err)
    } else {
        let divisor = 10u128.checked_pow((-exp) as u32).ok_or_else(err)?;
        Ok(scaled.div_ceil(divisor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(to_units("1Gi").unwrap(), 1 << 30);
        assert_eq!(to_units("1536Mi").unwrap(), 1536 << 20);
        assert_eq!(to_units("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(to_units("2G").unwrap(), 2_000_000_000);
        assert_eq!(to_units("100").unwrap(), 100);
        assert_eq!(to_units("1e3").unwrap(), 1000);
        assert_eq!(to_units("+5k").unwrap(), 5000);
        assert_eq!(to_units("1500m").unwrap(), 2);
    }

    #[test]
    fn equal_sizes_written_differently_compare_equal() {
        assert_eq!(to_units("1Gi").unwrap(), to_units("1024Mi").unwrap());
        assert!(to_units("1G").unwrap() < to_units("1Gi").unwrap());
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "Gi", "1GB", "-1Gi", "1..2", "one", "1 Gi", "."] {
            assert!(to_units(bad).is_err(), "{bad}");
        }
    }
}
