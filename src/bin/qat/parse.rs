//! Value parsers for numeric flags: each refuses what the run could not use
//! at parse time, with the accepted range in the message (and in `--help`).

/// An integer of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number ({e})")),
    }
}

fn finite(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("not a number ({e})"))?;
    if !v.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    Ok(v)
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be greater than 0, got {v}"))
    }
}

/// A finite number >= 0.
pub fn non_negative(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be 0 or more, got {v}"))
    }
}

/// A number in [0, 1).
pub fn fraction(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must lie in [0, 1), got {v}"))
    }
}

/// A number in (0, 1].
pub fn weight(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("must lie in (0, 1], got {v}"))
    }
}

/// `KEY=VALUE` with a non-empty key.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").is_err() && at_least_one("-1").is_err());
        assert_eq!(positive("0.1"), Ok(0.1));
        for bad in ["0", "-1", "nan", "inf", "1e39", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.5").is_err() && non_negative("NaN").is_err());
        assert_eq!(fraction("0.9"), Ok(0.9));
        assert!(fraction("1").is_err() && fraction("-5").is_err());
        assert_eq!(weight("1"), Ok(1.0));
        assert!(weight("0").is_err() && weight("1.5").is_err());
    }

    #[test]
    fn key_value_needs_a_key_and_an_equals_sign() {
        assert_eq!(
            key_value("session.qdqisint8allowed=1").unwrap(),
            ("session.qdqisint8allowed".to_string(), "1".to_string())
        );
        assert_eq!(key_value("k=").unwrap(), ("k".to_string(), String::new()));
        assert!(key_value("novalue").is_err());
        assert!(key_value("=1").is_err());
    }
}
