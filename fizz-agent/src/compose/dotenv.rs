//! Env files: the project's `.env` and a service's `env_file:`, as `KEY=VALUE` lines.
//!
//! Blank lines and `#` comments are skipped; `export ` before a key is allowed; unquoted values
//! lose a trailing ` # comment` and surrounding spaces; `'single'` quotes keep text as it is
//! (but `\'`);
//! `"double"` quotes understand `\n`, `\t`, `\r`, `\"`, `\\` and may span lines. Unquoted and
//! double-quoted values are interpolated, seeing earlier keys of the same file first, then
//! `lookup`. A bare `KEY` takes its value from `lookup` and is left out when that has none.

use super::error::ErrorKind;
use super::interpolate::interpolate;

/// One parsed variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvVar {
    pub key: String,
    pub value: String,
}

/// A problem at a line of an env file.
#[derive(Debug)]
pub(crate) struct EnvFileError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// Parses env file `text`. Variables not set anywhere are reported in `unset`.
pub(crate) fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<(usize, String)>,
) -> Result<Vec<EnvVar>, EnvFileError> {
    let mut vars: Vec<EnvVar> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let raw = lines[i];
        i += 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let err = |reason| EnvFileError {
            line: line_no,
            kind: ErrorKind::EnvFileLine {
                text: raw.to_string(),
                reason,
            },
        };
        let (key, rest) = match line.split_once('=') {
            Some((k, v)) => (k.trim_end(), Some(v.trim_start())),
            None => (line, None),
        };
        if key.is_empty()
            || key
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'')
        {
            return Err(err("expected KEY=VALUE"));
        }
        let find = |name: &str| -> Option<String> {
            vars.iter()
                .rev()
                .find(|v| v.key == name)
                .map(|v| v.value.clone())
                .or_else(|| lookup(name))
        };
        let value = match rest {
            None => match lookup(key) {
                Some(v) => v,
                None => continue,
            },
            Some(rest) if rest.starts_with('\'') => {
                let (body, consumed) = quoted(&rest[1..], '\'', &lines[i..])
                    .ok_or_else(|| err("unterminated single quote"))?;
                i += consumed;
                body.replace("\\'", "'")
            }
            Some(rest) if rest.starts_with('"') => {
                let (body, consumed) = quoted(&rest[1..], '"', &lines[i..])
                    .ok_or_else(|| err("unterminated double quote"))?;
                i += consumed;
                let body = unescape(&body);
                let done = interpolate(&body, &find).map_err(|e| EnvFileError {
                    line: line_no,
                    kind: e.into_kind(&body),
                })?;
                unset.extend(done.unset.into_iter().map(|v| (line_no, v)));
                done.value
            }
            Some(rest) => {
                let body = match rest.find(" #") {
                    Some(at) => rest[..at].trim_end(),
                    None => rest,
                };
                let done = interpolate(body, &find).map_err(|e| EnvFileError {
                    line: line_no,
                    kind: e.into_kind(body),
                })?;
                unset.extend(done.unset.into_iter().map(|v| (line_no, v)));
                done.value
            }
        };
        vars.push(EnvVar {
            key: key.to_string(),
            value,
        });
    }
    Ok(vars)
}

/// The text of a quoted value that starts at `first` (just after the opening quote) and may go
/// on over `more` lines; returns it and how many of `more` it used.
fn quoted(first: &str, quote: char, more: &[&str]) -> Option<(String, usize)> {
    let mut body = String::new();
    let mut line = first;
    let mut used = 0;
    loop {
        if let Some(end) = closing_quote(line, quote) {
            body.push_str(&line[..end]);
            return Some((body, used));
        }
        body.push_str(line);
        body.push('\n');
        line = more.get(used)?;
        used += 1;
    }
}

/// The index of the closing `quote` in `s` (a backslash escapes the quote).
fn closing_quote(s: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(c @ ('"' | '\\')) => out.push(c),
            // `\$` stays escaped for interpolation to see as a literal dollar.
            Some('$') => out.push_str("$$"),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<(String, String)> {
        let mut unset = Vec::new();
        let vars = parse(
            text,
            &|k| (k == "HOME").then(|| "/home/u".to_string()),
            &mut unset,
        )
        .unwrap();
        vars.into_iter().map(|v| (v.key, v.value)).collect()
    }

    #[test]
    fn forms() {
        let text = "\
# comment
A=1
export B = two words  # trailing comment
C='single $HOME # kept \\'q\\''
D=\"double\\tand $HOME\"
E=
F=${A}-$B
G=\"multi
line\"
HOME
NOT_SET_ANYWHERE
H=a#b
";
        let got = parse_ok(text);
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "single $HOME # kept 'q'"),
            ("D", "double\tand /home/u"),
            ("E", ""),
            ("F", "1-two words"),
            ("G", "multi\nline"),
            ("HOME", "/home/u"),
            ("H", "a#b"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn errors_name_the_line() {
        let mut unset = Vec::new();
        let err = parse("A=1\nB='open\n", &|_| None, &mut unset).unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse("A=1\n\nnot a var\n", &|_| None, &mut unset).unwrap_err();
        assert_eq!(err.line, 3);
    }
}
