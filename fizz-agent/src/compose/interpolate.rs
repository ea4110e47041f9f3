//! Variable interpolation: `${VAR}`, `$VAR`, the `:-`, `-`, `:?`, `?`, `:+`, `+` forms (nested
//! in defaults), and `$$` for a literal `$`; applied to every string value of a parsed file.
//!
//! The variables come from a lookup function; this module reads no environment itself.

use serde_yaml::Value;

use super::error::{ErrorKind, KeyPath, LoadError, Warning, WarningKind};

/// The result of interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// The string with every variable substituted.
    pub value: String,
    /// Variables that were used without a default and are not set (substituted by "").
    pub unset: Vec<String>,
}

/// Why a string cannot be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// A `?` form whose variable has no value.
    Missing {
        /// The variable.
        var: String,
        /// The message after `?` (itself interpolated).
        message: String,
    },
    /// A `$` that starts nothing valid.
    Syntax(&'static str),
}

impl InterpolateError {
    /// The load error for this problem in `value`.
    pub(crate) fn into_kind(self, value: &str) -> ErrorKind {
        match self {
            InterpolateError::Missing { var, message } => {
                ErrorKind::MissingVariable { var, message }
            }
            InterpolateError::Syntax(reason) => ErrorKind::Interpolation {
                value: value.to_string(),
                reason,
            },
        }
    }
}

fn is_name_start(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Substitutes the variables of `input`, looking each up with `lookup`.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolateError> {
    let mut out = Interpolated {
        value: String::with_capacity(input.len()),
        unset: Vec::new(),
    };
    expand(input, lookup, &mut out)?;
    Ok(out)
}

fn expand(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
) -> Result<(), InterpolateError> {
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.value.push_str(&input[literal_start..i]);
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.value.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end =
                    closing_brace(bytes, i + 2).ok_or(InterpolateError::Syntax("unclosed ${"))?;
                braced(&input[i + 2..end], lookup, out)?;
                i = end + 1;
            }
            Some(&c) if is_name_start(c) => {
                let mut j = i + 1;
                while j < bytes.len() && is_name_char(bytes[j]) {
                    j += 1;
                }
                let name = &input[i + 1..j];
                match lookup(name) {
                    Some(v) => out.value.push_str(&v),
                    None => out.unset.push(name.to_string()),
                }
                i = j;
            }
            _ => {
                return Err(InterpolateError::Syntax(
                    "a $ must start a variable name or ${",
                ))
            }
        }
        literal_start = i;
    }
    out.value.push_str(&input[literal_start..]);
    Ok(())
}

/// The index of the `}` that closes a `${` whose body starts at `from`, counting nested `${`.
fn closing_brace(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 1;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if matches!(bytes.get(i + 1), Some(b'$')) => i += 2,
            b'$' if matches!(bytes.get(i + 1), Some(b'{')) => {
                depth += 1;
                i += 2;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Expands the body of `${...}`.
fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
) -> Result<(), InterpolateError> {
    let bytes = body.as_bytes();
    if bytes.is_empty() || !is_name_start(bytes[0]) {
        return Err(InterpolateError::Syntax(
            "${ must be followed by a variable name",
        ));
    }
    let mut n = 1;
    while n < bytes.len() && is_name_char(bytes[n]) {
        n += 1;
    }
    let name = &body[..n];
    let rest = &body[n..];
    let value = lookup(name);
    let (colon, rest) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // With a colon, an empty value counts as unset.
    let present = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    let Some(op) = rest.chars().next() else {
        if colon {
            return Err(InterpolateError::Syntax("expected -, ? or + after :"));
        }
        match value {
            Some(v) => out.value.push_str(&v),
            None => out.unset.push(name.to_string()),
        }
        return Ok(());
    };
    let arg = &rest[1..];
    match op {
        '-' => match value.filter(|_| present) {
            Some(v) => out.value.push_str(&v),
            None => expand(arg, lookup, out)?,
        },
        '?' => match value.filter(|_| present) {
            Some(v) => out.value.push_str(&v),
            None => {
                let mut msg = Interpolated {
                    value: String::new(),
                    unset: Vec::new(),
                };
                expand(arg, lookup, &mut msg)?;
                return Err(InterpolateError::Missing {
                    var: name.to_string(),
                    message: msg.value,
                });
            }
        },
        '+' => {
            if present {
                expand(arg, lookup, out)?;
            }
        }
        _ => {
            return Err(InterpolateError::Syntax(
                "expected }, :-, -, :?, ?, :+ or + after the variable name",
            ))
        }
    }
    Ok(())
}

/// Interpolates every string value under `value` (keys are left alone, and so are `x-*`
/// extension keys, whose content reaches services through anchors). Unset variables become
/// warnings at their path.
pub(crate) fn interpolate_tree(
    value: &mut Value,
    path: &KeyPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<Warning>,
) -> Result<(), LoadError> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                let done = interpolate(s, lookup)
                    .map_err(|e| LoadError::new(path.clone(), e.into_kind(s)))?;
                for var in done.unset {
                    warnings.push(Warning::new(
                        path.clone(),
                        WarningKind::UnsetVariable { var },
                    ));
                }
                *s = done.value;
            }
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                interpolate_tree(item, &path.index(i), lookup, warnings)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => super::value::scalar_key(other),
                };
                if key.starts_with("x-") {
                    continue;
                }
                interpolate_tree(v, &path.key(&key), lookup, warnings)?;
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, path, lookup, warnings)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(input: &str) -> Result<Interpolated, InterpolateError> {
        let env: BTreeMap<&str, &str> =
            [("SET", "value"), ("EMPTY", ""), ("N", "3"), ("OTHER", "x")]
                .into_iter()
                .collect();
        interpolate(input, &|name| env.get(name).map(|v| v.to_string()))
    }

    fn ok(input: &str) -> String {
        let r = run(input).unwrap();
        assert!(
            r.unset.is_empty(),
            "{input}: unexpected unset {:?}",
            r.unset
        );
        r.value
    }

    #[test]
    fn plain_forms() {
        assert_eq!(ok("no variables"), "no variables");
        assert_eq!(ok("${SET}"), "value");
        assert_eq!(ok("$SET"), "value");
        assert_eq!(ok("a-$SET-b"), "a-value-b");
        assert_eq!(ok("$SET.x"), "value.x");
        assert_eq!(ok("${N}${N}"), "33");
        assert_eq!(ok("$$SET"), "$SET");
        assert_eq!(ok("$${SET}"), "${SET}");
        assert_eq!(ok("cost: $$5"), "cost: $5");
    }

    #[test]
    fn default_forms() {
        assert_eq!(ok("${UNSET:-def}"), "def");
        assert_eq!(ok("${EMPTY:-def}"), "def");
        assert_eq!(ok("${SET:-def}"), "value");
        assert_eq!(ok("${UNSET-def}"), "def");
        assert_eq!(ok("${EMPTY-def}"), "");
        assert_eq!(ok("${UNSET:-}"), "");
        assert_eq!(ok("${UNSET:-a b:c}"), "a b:c");
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(ok("${UNSET:-${SET}}"), "value");
        assert_eq!(ok("${UNSET:-${ALSO_UNSET:-deep}}"), "deep");
        assert_eq!(ok("${UNSET:-pre-${OTHER}-post}"), "pre-x-post");
        assert_eq!(ok("${SET:-${NOT_EVALUATED?boom}}"), "value");
        assert_eq!(ok("${UNSET:-$$}"), "$");
    }

    #[test]
    fn alternative_forms() {
        assert_eq!(ok("${SET:+alt}"), "alt");
        assert_eq!(ok("${EMPTY:+alt}"), "");
        assert_eq!(ok("${UNSET:+alt}"), "");
        assert_eq!(ok("${SET+alt}"), "alt");
        assert_eq!(ok("${EMPTY+alt}"), "alt");
        assert_eq!(ok("${UNSET+alt}"), "");
        assert_eq!(ok("${SET:+${OTHER}}"), "x");
    }

    #[test]
    fn required_forms() {
        assert_eq!(ok("${SET:?msg}"), "value");
        assert_eq!(ok("${EMPTY?msg}"), "");
        assert_eq!(
            run("${EMPTY:?must be set}"),
            Err(InterpolateError::Missing {
                var: "EMPTY".into(),
                message: "must be set".into()
            })
        );
        assert_eq!(
            run("${UNSET?}"),
            Err(InterpolateError::Missing {
                var: "UNSET".into(),
                message: String::new()
            })
        );
        assert_eq!(
            run("${UNSET:?need $OTHER}"),
            Err(InterpolateError::Missing {
                var: "UNSET".into(),
                message: "need x".into()
            })
        );
    }

    #[test]
    fn unset_without_default_is_empty_and_reported() {
        let r = run("a${UNSET}b$ALSO").unwrap();
        assert_eq!(r.value, "ab");
        assert_eq!(r.unset, vec!["UNSET".to_string(), "ALSO".to_string()]);
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "${", "${SET", "$", "a $ b", "${}", "${1A}", "${SET:}", "${SET!x}", "$1", "${SET:x}",
        ] {
            assert!(
                matches!(run(bad), Err(InterpolateError::Syntax(_))),
                "{bad:?} should be a syntax error"
            );
        }
    }

    #[test]
    fn tree_skips_keys_and_extensions_and_reports_paths() {
        let mut v: Value =
            serde_yaml::from_str("a: ${SET}\n$KEY: ['$N', '${U}']\nx-t: ${BAD\n").unwrap();
        let mut warnings = Vec::new();
        interpolate_tree(
            &mut v,
            &KeyPath::root(),
            &|n| (n == "SET" || n == "N").then(|| "1".to_string()),
            &mut warnings,
        )
        .unwrap();
        assert_eq!(v["a"], Value::String("1".into()));
        assert_eq!(v["$KEY"][0], Value::String("1".into()));
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "$KEY[1]: variable U is not set, substituting an empty string"
        );
    }
}
