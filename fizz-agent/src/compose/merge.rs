//! Merging Compose documents in long form, by the specification's rules: mappings merge key by
//! key; sequences append (without repeating an equal entry); `command`, `entrypoint` and
//! `healthcheck.test` are replaced; `ports`, `volumes`, `secrets` and `configs` merge entries
//! that share their unique key; `!reset` removes a value and `!override` replaces it whole.
//!
//! Used both for several `-f` files and for `extends`.

use serde_yaml::{Mapping, Value};

use super::value::{scalar_key, untag};

fn is_reset(v: &Value) -> bool {
    matches!(v, Value::Tagged(t) if t.tag == "reset")
}

/// `v` with `!reset` entries removed and every tag dropped.
pub(crate) fn clean(v: &Value) -> Value {
    match v {
        Value::Tagged(t) => clean(&t.value),
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .filter(|(_, v)| !is_reset(v))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Sequence(items) => Value::Sequence(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

/// How a sequence at some path merges.
enum SeqRule {
    Replace,
    Append,
    ByKey(fn(&Value) -> String),
}

fn field(v: &Value, key: &str) -> String {
    match untag(v) {
        Value::Mapping(m) => m.get(key).map(scalar_key).unwrap_or_default(),
        other => scalar_key(other),
    }
}

fn port_key(v: &Value) -> String {
    let protocol = match field(v, "protocol") {
        p if p.is_empty() => "tcp".to_string(),
        p => p,
    };
    format!(
        "{}|{}|{}|{}",
        field(v, "host_ip"),
        field(v, "target"),
        field(v, "published"),
        protocol
    )
}

fn target_key(v: &Value) -> String {
    field(v, "target")
}

fn file_ref_key(v: &Value) -> String {
    match field(v, "target") {
        t if t.is_empty() => field(v, "source"),
        t => t,
    }
}

fn seq_rule(path: &[String]) -> SeqRule {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["services", _, "command" | "entrypoint"] => SeqRule::Replace,
        ["services", _, "healthcheck", "test"] => SeqRule::Replace,
        ["services", _, "ports"] => SeqRule::ByKey(port_key),
        ["services", _, "volumes"] => SeqRule::ByKey(target_key),
        ["services", _, "secrets" | "configs"] => SeqRule::ByKey(file_ref_key),
        _ => SeqRule::Append,
    }
}

/// Merges `over` onto `base` (which has no tags) at `path`.
fn merge_at(path: &mut Vec<String>, base: Value, over: &Value) -> Value {
    if let Value::Tagged(t) = over {
        if t.tag == "override" {
            return clean(&t.value);
        }
        if t.tag == "reset" {
            return Value::Null;
        }
    }
    match (base, untag(over)) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                if is_reset(v) {
                    b.shift_remove(k);
                    continue;
                }
                match b.get_mut(k) {
                    Some(existing) => {
                        path.push(scalar_key(k));
                        let e = std::mem::take(existing);
                        *existing = merge_at(path, e, v);
                        path.pop();
                    }
                    None => {
                        b.insert(k.clone(), clean(v));
                    }
                }
            }
            Value::Mapping(b)
        }
        (Value::Sequence(mut b), Value::Sequence(o)) => {
            match seq_rule(path) {
                SeqRule::Replace => return Value::Sequence(o.iter().map(clean).collect()),
                SeqRule::Append => {
                    for item in o {
                        let item = clean(item);
                        if !b.contains(&item) {
                            b.push(item);
                        }
                    }
                }
                SeqRule::ByKey(key) => {
                    for item in o {
                        let k = key(item);
                        match b.iter().position(|existing| key(existing) == k) {
                            Some(i) => {
                                let existing = std::mem::take(&mut b[i]);
                                b[i] = merge_at(path, existing, item);
                            }
                            None => b.push(clean(item)),
                        }
                    }
                }
            }
            Value::Sequence(b)
        }
        (_, _) => clean(over),
    }
}

/// Merges document `over` onto `base`.
pub(crate) fn merge_documents(base: Mapping, over: &Mapping) -> Mapping {
    match merge_at(
        &mut Vec::new(),
        Value::Mapping(base),
        &Value::Mapping(over.clone()),
    ) {
        Value::Mapping(m) => m,
        _ => Mapping::new(),
    }
}

/// The service `local` extending `base` (both in long form): `base`'s `depends_on` and
/// `volumes_from` are not inherited, and the result has no `extends`.
pub(crate) fn extend_service(base: &Value, local: &Value) -> Value {
    let mut base = clean(base);
    if let Value::Mapping(m) = &mut base {
        m.shift_remove("depends_on");
        m.shift_remove("volumes_from");
        m.shift_remove("extends");
    }
    let mut path = vec!["services".to_string(), String::new()];
    let mut merged = merge_at(&mut path, base, local);
    if let Value::Mapping(m) = &mut merged {
        m.shift_remove("extends");
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Mapping {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn mappings_merge_sequences_append_commands_replace() {
        let base = yaml("services: {web: {image: a, dns: [1.1.1.1], command: [x, y], environment: {A: '1', B: '2'}}}");
        let over = yaml("services: {web: {image: b, dns: [8.8.8.8, 1.1.1.1], command: [z], environment: {B: '3'}}}");
        let got = merge_documents(base, &over);
        let want = yaml(
            "services: {web: {image: b, dns: [1.1.1.1, 8.8.8.8], command: [z], environment: {A: '1', B: '3'}}}",
        );
        assert_eq!(got, want);
    }

    #[test]
    fn unique_resources_merge_by_key() {
        let base = yaml(
            "services: {web: {ports: [{target: 80, published: 8080, protocol: tcp}], volumes: [{type: volume, source: a, target: /d}]}}",
        );
        let over = yaml(
            "services: {web: {ports: [{target: 80, published: '8080', mode: host}, {target: 81}], volumes: [{type: volume, source: b, target: /d}]}}",
        );
        let got = merge_documents(base, &over);
        let want = yaml(
            "services: {web: {ports: [{target: 80, published: '8080', protocol: tcp, mode: host}, {target: 81}], volumes: [{type: volume, source: b, target: /d}]}}",
        );
        assert_eq!(got, want);
    }

    #[test]
    fn reset_and_override_tags() {
        let base = yaml("services: {web: {ports: [{target: 80}], dns: [a], labels: {x: '1'}}}");
        let over =
            yaml("services: {web: {ports: !reset [], dns: !override [b], labels: {y: '2'}}}");
        let got = merge_documents(base, &over);
        assert_eq!(
            got,
            yaml("services: {web: {dns: [b], labels: {x: '1', y: '2'}}}")
        );
    }

    #[test]
    fn extends_drops_dependencies_of_the_base() {
        let base: Value =
            serde_yaml::from_str("{image: a, depends_on: {db: {}}, environment: {A: '1'}}")
                .unwrap();
        let local: Value =
            serde_yaml::from_str("{extends: {service: base}, environment: {B: '2'}}").unwrap();
        let got = extend_service(&base, &local);
        let want: Value =
            serde_yaml::from_str("{image: a, environment: {A: '1', B: '2'}}").unwrap();
        assert_eq!(got, want);
    }
}
