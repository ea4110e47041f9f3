//! Finding the line of a key path in YAML source text.
//!
//! `serde_yaml::Value` keeps no positions, so errors found after parsing are placed by scanning
//! the text: indentation for block mappings and sequences, `key:` for keys, `- ` for items. It is
//! good enough for block-style YAML; inside flow collections (`{...}`, `[...]`) and for keys that
//! came from `<<` merges it stops at the deepest enclosing key it can see.

use super::error::{KeyPath, Location, Seg};

/// One significant line (not blank, not only a comment): its number, indentation and text
/// with any trailing comment removed.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

/// The significant lines of `text`.
fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let body = raw.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if raw.starts_with("---") || raw.starts_with("...") {
            continue;
        }
        out.push(Line {
            no: i + 1,
            indent: raw.len() - body.len(),
            text: strip_comment(body).trim_end(),
        });
    }
    out
}

/// `text` without a trailing ` # comment` (outside quotes).
fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &text[..i],
            _ => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    text
}

/// If `text` is `key: ...` for `key`, the rest after the colon.
fn match_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = if let Some(r) = text.strip_prefix('"') {
        r.strip_prefix(key)?.strip_prefix('"')?
    } else if let Some(r) = text.strip_prefix('\'') {
        r.strip_prefix(key)?.strip_prefix('\'')?
    } else {
        text.strip_prefix(key)?
    };
    let rest = rest.trim_start_matches(' ').strip_prefix(':')?;
    if rest.is_empty() || rest.starts_with(' ') {
        Some(rest.trim())
    } else {
        None
    }
}

/// Whether the value after `key:` is a block collection on the following lines (nothing, or
/// only an anchor or a tag, follows the colon). Block scalars (`|`, `>`) are not: their lines
/// are text, not keys.
fn continues_below(rest: &str) -> bool {
    rest.split_whitespace()
        .all(|w| w.starts_with('&') || w.starts_with('!'))
}

fn unquote(text: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            return inner;
        }
    }
    text
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// The lines of the block that belongs to the key or item at `region[at]`, whose entries sit at
/// `indent`: deeper lines, and a sequence written at the key's own indentation.
fn block_after<'a>(region: &[Line<'a>], at: usize, indent: usize) -> Vec<Line<'a>> {
    let rest = &region[at + 1..];
    // A sequence at the key's own indentation is the key's value only if it comes first.
    let same_level_items = rest
        .first()
        .is_some_and(|l| l.indent == indent && is_item(l.text));
    rest.iter()
        .take_while(|l| {
            l.indent > indent || (same_level_items && l.indent == indent && is_item(l.text))
        })
        .copied()
        .collect()
}

/// Walks `path` down from `region`. Returns how many segments were found and the line of the
/// deepest one (`found` and `line` describe what was found before this region).
fn walk(
    region: &[Line<'_>],
    path: &[Seg],
    found: usize,
    line: Option<usize>,
) -> (usize, Option<usize>) {
    let (Some(seg), Some(first)) = (path.first(), region.first()) else {
        return (found, line);
    };
    let indent = first.indent;
    match seg {
        Seg::Key(key) => {
            for (i, l) in region.iter().enumerate() {
                if l.indent != indent {
                    continue;
                }
                if let Some(rest) = match_key(l.text, key) {
                    let sub = if continues_below(rest) {
                        block_after(region, i, indent)
                    } else {
                        Vec::new()
                    };
                    return walk(&sub, &path[1..], found + 1, Some(l.no));
                }
                // A list of names (`- db`) or of `KEY=VALUE` strings stands for a mapping.
                let item = unquote(l.text[1..].trim());
                if is_item(l.text)
                    && (item == key || item.split_once('=').is_some_and(|(k, _)| k == key))
                {
                    return walk(&[], &path[1..], found + 1, Some(l.no));
                }
            }
            (found, line)
        }
        Seg::Index(n) => {
            let mut count = 0;
            for (i, l) in region.iter().enumerate() {
                if l.indent != indent || !is_item(l.text) {
                    continue;
                }
                if count == *n {
                    let content = l.text[1..].trim_start_matches(' ');
                    let mut sub = Vec::new();
                    if !content.is_empty() {
                        sub.push(Line {
                            no: l.no,
                            indent: indent + (l.text.len() - content.len()),
                            text: content,
                        });
                    }
                    sub.extend(
                        region[i + 1..]
                            .iter()
                            .take_while(|m| m.indent > indent)
                            .copied(),
                    );
                    return walk(&sub, &path[1..], found + 1, Some(l.no));
                }
                count += 1;
            }
            (found, line)
        }
    }
}

/// The line of `path` in `text`: `(segments found, line of the deepest one found)`.
pub(crate) fn line_of(text: &str, path: &KeyPath) -> (usize, Option<usize>) {
    walk(&lines(text), &path.0, 0, None)
}

/// A file read by the loader, kept to place errors and warnings.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The file's name as shown to the user.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Places `path` in the first of `sources` (searched last to first, as later files override
/// earlier ones) that has all of it, else in the one that has the deepest part of it.
pub(crate) fn locate(sources: &[&Source], path: &KeyPath) -> Location {
    let mut best: Option<(usize, &Source, Option<usize>)> = None;
    for src in sources.iter().rev() {
        let (found, line) = line_of(&src.text, path);
        if found == path.0.len() {
            return Location {
                file: Some(src.name.clone()),
                line,
            };
        }
        if best.as_ref().is_none_or(|(f, _, _)| found > *f) {
            best = Some((found, src, line));
        }
    }
    match best {
        Some((_, src, line)) => Location {
            file: Some(src.name.clone()),
            line,
        },
        None => Location::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> KeyPath {
        let mut p = KeyPath::root();
        for part in s.split('.') {
            match part.split_once('[') {
                Some((k, idx)) => {
                    p = p.key(k).index(idx.trim_end_matches(']').parse().unwrap());
                }
                None => p = p.key(part),
            }
        }
        p
    }

    const DOC: &str = "\
# a comment
version: '3'
services:
  web:   # the web service
    image: nginx
    ports:
    - \"80:80\"
    - target: 443
      published: 8443
    environment: {A: 1}
  'db':
    image: postgres
    volumes:
      - data:/var/lib
      -
        type: bind
        source: ./x
    command: |
      echo
      image: not a key
    depends_on:
      - 'db2'
      - cache
    environment:
      - 'A=1'
      - B=2
x-base: &base
  image: foo
";

    #[test]
    fn finds_keys_items_and_nested_items() {
        assert_eq!(line_of(DOC, &path("services.web.image")), (3, Some(5)));
        assert_eq!(line_of(DOC, &path("services.web.ports[0]")), (4, Some(7)));
        assert_eq!(
            line_of(DOC, &path("services.web.ports[1].published")),
            (5, Some(9))
        );
        assert_eq!(line_of(DOC, &path("services.db.image")), (3, Some(12)));
        assert_eq!(
            line_of(DOC, &path("services.db.volumes[1].source")),
            (5, Some(17))
        );
        assert_eq!(line_of(DOC, &path("x-base.image")), (2, Some(28)));
        assert_eq!(
            line_of(DOC, &path("services.db.environment.B")),
            (4, Some(26))
        );
        assert_eq!(
            line_of(DOC, &path("services.db.depends_on.cache")),
            (4, Some(23))
        );
        assert_eq!(
            line_of(DOC, &path("services.db.depends_on.db2")),
            (4, Some(22))
        );
    }

    #[test]
    fn stops_at_the_deepest_key_it_can_see() {
        // Inside a flow mapping.
        assert_eq!(
            line_of(DOC, &path("services.web.environment.A")),
            (3, Some(10))
        );
        // A key that is not there.
        assert_eq!(line_of(DOC, &path("services.web.foo")), (2, Some(4)));
        // A key-like line inside a block scalar belongs to the scalar, not the service.
        assert_eq!(
            line_of(DOC, &path("services.db.command.image")),
            (3, Some(18))
        );
        assert_eq!(line_of(DOC, &path("nothing")), (0, None));
    }

    #[test]
    fn locates_in_the_last_file_that_has_the_path() {
        let a = Source {
            name: "a.yml".into(),
            text: "services:\n  web:\n    image: x\n".into(),
        };
        let b = Source {
            name: "b.yml".into(),
            text: "services:\n\n  web:\n    ports: []\n".into(),
        };
        let at = locate(&[&a, &b], &path("services.web.image"));
        assert_eq!(
            at,
            Location {
                file: Some("a.yml".into()),
                line: Some(3)
            }
        );
        let at = locate(&[&a, &b], &path("services.web"));
        assert_eq!(
            at,
            Location {
                file: Some("b.yml".into()),
                line: Some(3)
            }
        );
        let at = locate(&[&a, &b], &path("services.web.user"));
        assert_eq!(
            at,
            Location {
                file: Some("b.yml".into()),
                line: Some(3)
            }
        );
    }
}
