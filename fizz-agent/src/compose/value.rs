//! Reading `serde_yaml::Value`s with type checks that name the key path, and the scalar
//! formats Compose uses: durations (`1m30s`), byte sizes (`512m`), loose booleans and numbers.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::error::{ErrorKind, KeyPath, LoadError};

/// A short name of the type of `v`, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(t) => type_name(&t.value),
    }
}

/// `v` without YAML tags.
pub(crate) fn untag(v: &Value) -> &Value {
    let mut cur = v;
    while let Value::Tagged(t) = cur {
        cur = &t.value;
    }
    cur
}

/// A mapping key as a string (YAML allows numbers and booleans as keys).
pub(crate) fn scalar_key(k: &Value) -> String {
    match untag(k) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn type_error(path: &KeyPath, expected: &'static str, got: &Value) -> LoadError {
    LoadError::new(
        path.clone(),
        ErrorKind::Type {
            expected,
            got: type_name(got),
        },
    )
}

pub(crate) fn invalid(
    path: &KeyPath,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> LoadError {
    LoadError::new(
        path.clone(),
        ErrorKind::InvalidValue {
            value: value.into(),
            reason: reason.into(),
        },
    )
}

/// A mapping; `null` reads as an empty mapping.
pub(crate) fn map<'a>(
    v: &'a Value,
    path: &KeyPath,
) -> Result<std::borrow::Cow<'a, Mapping>, LoadError> {
    match untag(v) {
        Value::Mapping(m) => Ok(std::borrow::Cow::Borrowed(m)),
        Value::Null => Ok(std::borrow::Cow::Owned(Mapping::new())),
        other => Err(type_error(path, "a mapping", other)),
    }
}

/// A sequence; `null` reads as empty.
pub(crate) fn seq<'a>(v: &'a Value, path: &KeyPath) -> Result<&'a [Value], LoadError> {
    match untag(v) {
        Value::Sequence(s) => Ok(s),
        Value::Null => Ok(&[]),
        other => Err(type_error(path, "a sequence", other)),
    }
}

/// A scalar as a string: strings as they are, numbers and booleans written out.
pub(crate) fn string(v: &Value, path: &KeyPath) -> Result<String, LoadError> {
    match untag(v) {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(type_error(path, "a string", other)),
    }
}

/// An optional scalar string (`null` is none).
pub(crate) fn opt_string(v: Option<&Value>, path: &KeyPath) -> Result<Option<String>, LoadError> {
    match v.map(untag) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => string(v, path).map(Some),
    }
}

/// A list of strings; a single string reads as a list of one.
pub(crate) fn string_list(v: &Value, path: &KeyPath) -> Result<Vec<String>, LoadError> {
    match untag(v) {
        Value::Null => Ok(Vec::new()),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| string(item, &path.index(i)))
            .collect(),
        Value::String(_) | Value::Number(_) => Ok(vec![string(v, path)?]),
        other => Err(type_error(path, "a string or a sequence of strings", other)),
    }
}

/// A non-negative integer; numeric strings (e.g. from interpolation) are accepted.
pub(crate) fn uint(v: &Value, path: &KeyPath) -> Result<u64, LoadError> {
    match untag(v) {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| invalid(path, n.to_string(), "expected a non-negative integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid(path, s.as_str(), "expected a non-negative integer")),
        other => Err(type_error(path, "an integer", other)),
    }
}

/// An integer that may be negative.
pub(crate) fn int(v: &Value, path: &KeyPath) -> Result<i64, LoadError> {
    match untag(v) {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(path, n.to_string(), "expected an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid(path, s.as_str(), "expected an integer")),
        other => Err(type_error(path, "an integer", other)),
    }
}

/// An integer that fits in `T`.
pub(crate) fn uint_as<T: TryFrom<u64>>(
    v: &Value,
    path: &KeyPath,
    what: &str,
) -> Result<T, LoadError> {
    let n = uint(v, path)?;
    T::try_from(n).map_err(|_| invalid(path, n.to_string(), format!("out of range for {what}")))
}

/// A number (integer or not); numeric strings are accepted.
pub(crate) fn float(v: &Value, path: &KeyPath) -> Result<f64, LoadError> {
    match untag(v) {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| invalid(path, n.to_string(), "expected a number")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| invalid(path, s.as_str(), "expected a number")),
        other => Err(type_error(path, "a number", other)),
    }
}

/// A boolean; the strings `true/false`, `yes/no`, `on/off`, `y/n`, `1/0` are accepted too
/// (interpolation produces strings, and older Compose files use YAML 1.1 booleans).
pub(crate) fn boolean(v: &Value, path: &KeyPath) -> Result<bool, LoadError> {
    match untag(v) {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Ok(true),
            "false" | "no" | "n" | "off" | "0" | "" => Ok(false),
            _ => Err(invalid(path, s.as_str(), "expected a boolean")),
        },
        other => Err(type_error(path, "a boolean", other)),
    }
}

/// The string keys of a mapping, with their values.
pub(crate) fn entries(m: &Mapping) -> impl Iterator<Item = (String, &Value)> {
    m.iter().map(|(k, v)| (scalar_key(k), v))
}

/// Looks a key up in a mapping.
pub(crate) fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !matches!(untag(v), Value::Null))
}

/// Parses a Go-style duration: a sequence of numbers with units (`ns`, `us`, `µs`, `ms`, `s`,
/// `m`, `h`), e.g. `1m30s` or `1.5s`; `0` alone is zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty");
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err("expected numbers with units (e.g. 30s, 1m30s, 500ms)");
        }
        let num: f64 = rest[..num_len]
            .parse()
            .map_err(|_| "expected numbers with units (e.g. 30s, 1m30s, 500ms)")?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (e.g. 30s, 1m30s, 500ms)"),
            _ => return Err("unknown unit (use ns, us, ms, s, m or h)"),
        };
        rest = &rest[unit_len..];
        total += num * unit;
    }
    if !total.is_finite() || total > 1e12 {
        return Err("too large");
    }
    // Round to whole nanoseconds.
    Ok(Duration::from_nanos((total * 1e9).round() as u64))
}

/// A duration value.
pub(crate) fn duration(v: &Value, path: &KeyPath) -> Result<Duration, LoadError> {
    let s = match untag(v) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(type_error(path, "a duration string", other)),
    };
    parse_duration(&s).map_err(|reason| {
        LoadError::new(
            path.clone(),
            ErrorKind::InvalidDuration { value: s, reason },
        )
    })
}

/// Writes a duration the way Go does (`1m30s`, `1h0m0s`, `500ms`, `1.5s`), which is how
/// `docker compose config` prints them.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", trim_fraction(nanos, div));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let secs = nanos % 60_000_000_000;
    let secs = format!("{}s", trim_fraction(secs, 1_000_000_000));
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}")
    } else if minutes > 0 {
        format!("{minutes}m{secs}")
    } else {
        secs
    }
}

/// `n / div` in decimal, without trailing zeros in the fraction.
fn trim_fraction(n: u128, div: u128) -> String {
    let whole = n / div;
    let frac = n % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{frac:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Parses a byte size: a number with an optional unit `b`, `k`/`kb`, `m`/`mb`, `g`/`gb`,
/// `t`/`tb` (powers of 1024, case-insensitive).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num: f64 = t[..num_len].parse().ok()?;
    let mult: u64 = match t[num_len..].trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (bytes.is_finite() && bytes < 1.8e19).then_some(bytes as u64)
}

/// A byte size value (a number of bytes, or a string with a unit).
pub(crate) fn size(v: &Value, path: &KeyPath) -> Result<u64, LoadError> {
    let s = match untag(v) {
        Value::Number(n) if n.as_u64().is_some() => return Ok(n.as_u64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(type_error(path, "a size", other)),
    };
    parse_size(&s).ok_or_else(|| LoadError::new(path.clone(), ErrorKind::InvalidSize { value: s }))
}

/// Splits a command line the way a POSIX shell splits words: whitespace separates words,
/// single quotes keep everything, double quotes keep everything but `\"`, `\\`, `\$` and
/// `` \` ``, and a backslash outside quotes escapes the next character.
pub(crate) fn shell_split(s: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_like_go() {
        let cases = [
            ("10s", "10s"),
            ("1m30s", "1m30s"),
            ("90s", "1m30s"),
            ("1h", "1h0m0s"),
            ("1.5s", "1.5s"),
            ("500ms", "500ms"),
            ("1500ms", "1.5s"),
            ("2us", "2µs"),
            ("0", "0s"),
            ("1h2m3s4ms", "1h2m3.004s"),
        ];
        for (input, printed) in cases {
            let d = parse_duration(input).unwrap();
            assert_eq!(format_duration(d), printed, "{input}");
        }
        for bad in ["", "10", "1x", "s", "1.2.3s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("64b"), Some(64));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("12q"), None);
    }

    #[test]
    fn shell_words() {
        let split = |s| shell_split(s).unwrap();
        assert_eq!(split("echo hello world"), ["echo", "hello", "world"]);
        assert_eq!(
            split("  sh -c 'echo $HOME; ls'  "),
            ["sh", "-c", "echo $HOME; ls"]
        );
        assert_eq!(
            split(r#"echo "a \"b\" c" d\ e"#),
            ["echo", r#"a "b" c"#, "d e"]
        );
        assert_eq!(split(r#"a""b ''"#), ["ab", ""]);
        assert!(shell_split("echo 'oops").is_err());
        assert!(shell_split("echo \"oops").is_err());
    }
}
