//! Printing a [`Project`] as YAML for `fizz config`, in the style of `docker compose config`:
//! block style, sequences indented under their key, keys sorted (the top level in the order
//! name, services, networks, volumes, secrets, configs), every string that a YAML 1.1 or 1.2
//! reader could take for something else (`yes`, `1.5`, `null`, ...) quoted, and `$` written
//! `$$` so that the output is itself a Compose file.

use std::fmt::Write as _;

use serde_json::Value;

use super::model::Project;

const TOP_ORDER: [&str; 6] = [
    "name", "services", "networks", "volumes", "secrets", "configs",
];

/// The project as YAML.
pub(crate) fn to_yaml(project: &Project) -> String {
    let value = match serde_json::to_value(project) {
        Ok(v) => v,
        Err(e) => return format!("# cannot print the project: {e}\n"),
    };
    let mut out = String::new();
    if let Value::Object(top) = &value {
        let mut keys: Vec<&String> = top.keys().collect();
        keys.sort_by_key(|k| {
            (
                TOP_ORDER
                    .iter()
                    .position(|t| t == k)
                    .unwrap_or(TOP_ORDER.len()),
                k.as_str(),
            )
        });
        for k in keys {
            entry(&mut out, k, &top[k], 0);
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn is_empty_collection(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Writes `key: value` at `indent` (the padding of the line is the caller's).
fn entry(out: &mut String, key: &str, v: &Value, indent: usize) {
    if out.ends_with('\n') || out.is_empty() {
        pad(out, indent);
    }
    out.push_str(&scalar_str(key));
    out.push(':');
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, indent + 2, false);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, a, indent + 2);
        }
        other => {
            out.push(' ');
            inline(out, other);
            out.push('\n');
        }
    }
}

/// Writes the entries of `m` at `indent`; with `first_inline`, the first one continues the
/// current line (after `- `).
fn mapping(
    out: &mut String,
    m: &serde_json::Map<String, Value>,
    indent: usize,
    first_inline: bool,
) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for (i, k) in keys.into_iter().enumerate() {
        if !(first_inline && i == 0) {
            pad(out, indent);
        }
        entry(out, k, &m[k], indent);
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => mapping(out, m, indent + 2, true),
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                sequence(out, a, indent + 2);
            }
            other => {
                inline(out, other);
                out.push('\n');
            }
        }
    }
}

/// A scalar or an empty collection on the current line.
fn inline(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        // Values are interpolated when a Compose file is read: doubling `$` keeps the output a
        // Compose file that reads back to the same project.
        Value::String(s) => out.push_str(&scalar_str(&s.replace('$', "$$"))),
        v if is_empty_collection(v) => out.push_str(if v.is_object() { "{}" } else { "[]" }),
        _ => {}
    }
}

/// Whether a plain scalar `s` could be read as something other than this string.
fn ambiguous(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "~"
            | "null"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".inf"
            | "-.inf"
            | "+.inf"
            | ".nan"
    ) {
        return true;
    }
    // Anything number-like, in either YAML version (1_000, 0x1f, 0o17, 1e3, 1:30, 10.0.0.1).
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let starts_numeric = body.starts_with(|c: char| c.is_ascii_digit())
        || (body.starts_with('.') && body[1..].starts_with(|c: char| c.is_ascii_digit()));
    starts_numeric
        && (body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '_' | ':' | '.' | 'e' | 'E' | '+' | '-'))
            || lower.starts_with("0x")
            || lower.starts_with("0o")
            || lower.starts_with("0b"))
}

/// Whether `s` can be written plain.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if "-?:,[]{}#&*!|>'\"%@`".contains(first)
        && !(matches!(first, '-' | '?' | ':') && s.len() > 1 && !s[1..].starts_with(' '))
    {
        return false;
    }
    !(ambiguous(s)
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.chars().any(|c| c.is_control()))
}

/// `s` as a YAML scalar: plain when safe, else double-quoted.
fn scalar_str(s: &str) -> String {
    if plain_ok(s) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_could_be_misread() {
        for s in [
            "yes", "No", "on", "null", "~", "", "1.5", "8080", "0x1F", "1:30", "10.0.0.1", "-1",
            ".5", "1e3",
        ] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
        }
        for s in [
            "nginx:1.25",
            "1m30s",
            "-U",
            "/bin/sh",
            "a b",
            "CMD-SHELL",
            "::1",
            "node.role != manager",
            "2m0s",
        ] {
            assert!(plain_ok(s), "{s:?} can be plain");
        }
        for s in [
            "a: b",
            "x #y",
            " lead",
            "trail ",
            "key:",
            "- x",
            "*star",
            "'q",
            "\"q",
            "multi\nline",
            "@at",
            "%p",
        ] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
        }
        assert_eq!(scalar_str("say \"hi\"\n"), r#""say \"hi\"\n""#);
    }

    #[test]
    fn output_reads_back_as_the_same_value() {
        let text = "services:\n  a:\n    image: x\n    environment: {A: 'yes', B: '1.5', C: \"multi\\nline\"}\n    command: ['-c', 'a: b']\n";
        let opts = super::super::LoadOptions {
            files: vec!["/p/compose.yml".into()],
            ..Default::default()
        };
        let read = |p: &std::path::Path| -> std::io::Result<String> {
            if p.ends_with("compose.yml") {
                Ok(text.to_string())
            } else {
                Err(std::io::ErrorKind::NotFound.into())
            }
        };
        let project = super::super::load_with(&opts, &read).unwrap().project;
        let printed = to_yaml(&project);
        let back: serde_yaml::Value = serde_yaml::from_str(&printed).unwrap();
        let env = &back["services"]["a"]["environment"];
        assert_eq!(env["A"], serde_yaml::Value::String("yes".into()));
        assert_eq!(env["B"], serde_yaml::Value::String("1.5".into()));
        assert_eq!(env["C"], serde_yaml::Value::String("multi\nline".into()));
        assert_eq!(
            back["services"]["a"]["command"][1],
            serde_yaml::Value::String("a: b".into())
        );
        assert!(printed.starts_with("name: p\nservices:\n"), "{printed}");
    }
}
