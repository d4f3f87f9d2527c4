//! The YAML tree of one file: reading it, laying `IMENV_` variables over
//! it, checking it against the file's schema, and reading typed values out
//! of it.
//!
//! Variables are applied to the tree before it is checked, so a value from
//! the environment is held to exactly the same rules as one from the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::ConfigError;
use super::duration::parse_duration;
use super::schema::{self, Field, FileSchema, Kind};

/// Where the environment set a field: field path (`tls.enableTLS`) → the
/// variable's name.
pub(crate) type Sources = BTreeMap<String, String>;

/// Reads and parses `dir/<file>`. A missing or empty file is an error; a
/// file holding only comments is an empty section.
pub(crate) fn read(dir: &Path, file: &FileSchema) -> Result<Value, ConfigError> {
    let path = dir.join(file.name);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::file(file.name, format!("cannot read {}: {e}", path.display()))
    })?;
    let mut value: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| ConfigError::file(file.name, format!("not valid YAML: {e}")))?;
    value
        .apply_merge()
        .map_err(|e| ConfigError::file(file.name, format!("not valid YAML: {e}")))?;
    match value {
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        Value::Mapping(_) => Ok(value),
        _ => Err(ConfigError::file(
            file.name,
            "expected a section of fields at the top level",
        )),
    }
}

/// `IMENV_` + the file name without `.yml`, upper-cased, `-` and `.` turned
/// into `_`, + `_`: `openim-msgtransfer.yml` → `IMENV_OPENIM_MSGTRANSFER_`.
pub(crate) fn env_prefix(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".yml").unwrap_or(file_name);
    let mut out = String::from("IMENV_");
    for c in stem.chars() {
        out.push(match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        });
    }
    out.push('_');
    out
}

/// Every field that holds a value (not a section) under `fields`, as its
/// path from the top of the file.
pub(crate) fn leaves(fields: &'static [Field]) -> Vec<(Vec<&'static str>, Kind)> {
    fn walk(
        fields: &'static [Field],
        prefix: &mut Vec<&'static str>,
        out: &mut Vec<(Vec<&'static str>, Kind)>,
    ) {
        for field in fields {
            prefix.push(field.name);
            match field.kind {
                Kind::Section(inner) => walk(inner, prefix, out),
                kind => out.push((prefix.clone(), kind)),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// The variable that sets the field at `path` of the file with `prefix`.
pub(crate) fn env_name(prefix: &str, path: &[&str]) -> String {
    let mut out = prefix.to_owned();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            out.push('_');
        }
        out.push_str(&part.to_ascii_uppercase());
    }
    out
}

/// Lays the `IMENV_` variables of `file` over `tree`. A variable with the
/// file's prefix that names none of its fields is an error naming it.
pub(crate) fn apply_env(
    tree: &mut Value,
    file: &FileSchema,
    env: &BTreeMap<String, String>,
) -> Result<Sources, ConfigError> {
    let prefix = env_prefix(file.name);
    let leaves = leaves(file.fields);
    let mut sources = Sources::new();
    for (var, raw) in env.range(prefix.clone()..) {
        if !var.starts_with(&prefix) {
            break;
        }
        let Some((path, kind)) = leaves.iter().find(|(p, _)| env_name(&prefix, p) == *var) else {
            let names = leaves.iter().map(|(p, _)| env_name(&prefix, p));
            let hint = suggest(var, names)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(ConfigError::file(
                file.name,
                format!("environment variable {var} names no field of this file{hint}"),
            ));
        };
        let dotted = path.join(".");
        let value = env_value(raw, *kind).map_err(|message| ConfigError {
            file: file.name.to_owned(),
            field: Some(dotted.clone()),
            message: format!("{message} (from {var})"),
        })?;
        set(tree, path, value).map_err(|at| ConfigError {
            file: file.name.to_owned(),
            field: Some(at),
            message: format!("expected a section of fields, so {var} cannot set a field in it"),
        })?;
        sources.insert(dotted, var.clone());
    }
    Ok(sources)
}

/// The YAML value an environment variable stands for, given the kind of
/// the field it sets. Text fields take the text as it is; lists take
/// comma-separated items (or a YAML flow list, `[a, b]`); everything else
/// is read as a YAML scalar, so `true`, `8` and `x` get their types.
fn env_value(raw: &str, kind: Kind) -> Result<Value, String> {
    let item: fn(&str) -> Value = match kind {
        Kind::Str => return Ok(Value::String(raw.to_owned())),
        Kind::StrList => |s| Value::String(s.to_owned()),
        Kind::IntList | Kind::TypeList => scalar,
        Kind::Any => {
            return Ok(serde_yaml_ng::from_str(raw).unwrap_or_else(|_| scalar(raw)));
        }
        _ => return Ok(scalar(raw)),
    };
    let trimmed = raw.trim();
    if trimmed.starts_with('[') {
        return match serde_yaml_ng::from_str::<Value>(trimmed) {
            Ok(list @ Value::Sequence(_)) => Ok(list),
            _ => Err(format!("expected a list like [a, b] or a,b, got {raw:?}")),
        };
    }
    Ok(Value::Sequence(
        trimmed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(item)
            .collect(),
    ))
}

/// Reads `raw` as one YAML scalar; anything that is not a plain scalar
/// (a comment, a mapping, broken syntax) stays text.
fn scalar(raw: &str) -> Value {
    let t = raw.trim();
    match serde_yaml_ng::from_str::<Value>(t) {
        Ok(Value::Null) if matches!(t, "" | "~" | "null" | "Null" | "NULL") => Value::Null,
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// Sets `path` in `tree` to `value`, making the sections on the way. On a
/// value that is in the way (not a section), returns its path.
fn set(tree: &mut Value, path: &[&str], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (i, part) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            return Err(path[..i].join("."));
        };
        let key = Value::String((*part).to_owned());
        if i + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

/// Checks `tree` against the schema: no unknown field, every value of its
/// field's kind. `null` (a key with nothing after it) means "not set" and
/// is always accepted.
pub(crate) fn check(tree: &Value, file: &FileSchema, sources: &Sources) -> Result<(), ConfigError> {
    let checker = Checker {
        file: file.name,
        sources,
    };
    checker.section(tree, file.fields, "")
}

struct Checker<'a> {
    file: &'static str,
    sources: &'a Sources,
}

impl Checker<'_> {
    fn fail(&self, at: &str, message: String) -> ConfigError {
        // List items come from the variable of their list.
        let field = at.split('[').next().unwrap_or(at);
        let message = match self.sources.get(field) {
            Some(var) => format!("{message} (from {var})"),
            None => message,
        };
        ConfigError {
            file: self.file.to_owned(),
            field: (!at.is_empty()).then(|| at.to_owned()),
            message,
        }
    }

    fn section(&self, node: &Value, fields: &'static [Field], at: &str) -> Result<(), ConfigError> {
        let map = match node {
            Value::Null => return Ok(()),
            Value::Mapping(map) => map,
            other => {
                return Err(self.fail(
                    at,
                    format!("expected a section of fields, got {}", describe(other)),
                ));
            }
        };
        for (key, value) in map {
            let Value::String(name) = key else {
                return Err(self.fail(
                    at,
                    format!("field names must be text, got {}", describe(key)),
                ));
            };
            let Some(field) = schema::find(fields, name) else {
                let hint = suggest(name, fields.iter().map(|f| f.name.to_owned()))
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                return Err(self.fail(at, format!("unknown field {name:?}{hint}")));
            };
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            self.value(value, field.kind, &path)?;
        }
        Ok(())
    }

    fn value(&self, v: &Value, kind: Kind, at: &str) -> Result<(), ConfigError> {
        if let Value::Tagged(_) = v {
            return Err(self.fail(at, "YAML tags (!name) are not supported".into()));
        }
        if v.is_null() {
            return Ok(());
        }
        let wrong =
            |what: &str| Err(self.fail(at, format!("expected {what}, got {}", describe(v))));
        match kind {
            Kind::Section(fields) => self.section(v, fields, at),
            Kind::Any => Ok(()),
            Kind::Str => match v {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
                _ => wrong("text"),
            },
            Kind::Bool => match v {
                Value::Bool(_) => Ok(()),
                _ => wrong("true or false"),
            },
            Kind::Int => match v {
                Value::Number(n) if n.is_i64() => Ok(()),
                Value::Number(n) if n.is_u64() => {
                    Err(self.fail(at, format!("number too large: {n}")))
                }
                _ => wrong("a whole number"),
            },
            Kind::Float => match v {
                Value::Number(_) => Ok(()),
                _ => wrong("a number"),
            },
            Kind::Duration => match v {
                Value::String(s) => parse_duration(s).map(|_| ()).map_err(|e| self.fail(at, e)),
                _ => wrong("a duration like \"5s\" or \"200ms\""),
            },
            Kind::StrList | Kind::IntList | Kind::TypeList => {
                let Value::Sequence(items) = v else {
                    return wrong("a list");
                };
                let item_kind = match kind {
                    Kind::StrList => Kind::Str,
                    Kind::IntList => Kind::Int,
                    _ => Kind::Any,
                };
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{at}[{i}]");
                    if item.is_null() {
                        return Err(self.fail(&at, "empty list item".into()));
                    }
                    self.value(item, item_kind, &at)?;
                    if let Kind::TypeList = kind {
                        type_range(item).map_err(|e| self.fail(&at, e))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A content-type filter item: `1000` or `"200-500"` (both ends included).
fn type_range(v: &Value) -> Result<std::ops::RangeInclusive<i32>, String> {
    let num = |s: &str| s.trim().parse::<i32>().ok();
    let got = match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(|n| n..=n),
        Value::String(s) => match s.split_once('-') {
            Some((lo, hi)) => num(lo)
                .zip(num(hi))
                .filter(|(lo, hi)| lo <= hi)
                .map(|(lo, hi)| lo..=hi),
            None => num(s).map(|n| n..=n),
        },
        _ => None,
    };
    got.ok_or_else(|| {
        format!(
            "expected a content type or a range like \"200-500\", got {}",
            describe(v)
        )
    })
}

/// A short description of a value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a section".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// The candidate closest to `wrong` when it is close enough to be a typo.
pub(crate) fn suggest(wrong: &str, candidates: impl Iterator<Item = String>) -> Option<String> {
    let lower = wrong.to_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Typed, read-only access to one checked section. Absent and `null`
/// fields read as "not set".
pub(crate) struct View<'a> {
    file: &'static str,
    path: String,
    map: Option<&'a Mapping>,
    fields: &'static [Field],
    sources: &'a Sources,
}

impl<'a> View<'a> {
    /// The top of a checked file.
    pub(crate) fn root(tree: &'a Value, file: &FileSchema, sources: &'a Sources) -> Self {
        View {
            file: file.name,
            path: String::new(),
            map: tree.as_mapping(),
            fields: file.fields,
            sources,
        }
    }

    /// The path of `name` in this section (`sentinelMode.masterName`).
    pub(crate) fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// An error about the field `name` of this section.
    pub(crate) fn err(&self, name: &str, message: impl Into<String>) -> ConfigError {
        let field = self.path_of(name);
        let mut message = message.into();
        // List items come from the variable of their list.
        let base = field.split('[').next().unwrap_or(&field);
        if let Some(var) = self.sources.get(base) {
            message = format!("{message} (from {var})");
        }
        ConfigError {
            file: self.file.to_owned(),
            field: Some(field),
            message,
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        assert!(
            schema::find(self.fields, name).is_some(),
            "config schema of {} has no field {}",
            self.file,
            self.path_of(name)
        );
        self.map?.get(name).filter(|v| !v.is_null())
    }

    /// A nested section.
    pub(crate) fn section(&self, name: &str) -> View<'a> {
        let fields = match schema::find(self.fields, name).map(|f| f.kind) {
            Some(Kind::Section(fields)) => fields,
            _ => panic!(
                "config schema of {} has no section {}",
                self.file,
                self.path_of(name)
            ),
        };
        View {
            file: self.file,
            path: self.path_of(name),
            map: self.get(name).and_then(Value::as_mapping),
            fields,
            sources: self.sources,
        }
    }

    /// Text, or `None` when not set. Surrounding blanks are kept (they may
    /// belong to a password).
    pub(crate) fn opt_str(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Text, empty when not set.
    pub(crate) fn str(&self, name: &str) -> String {
        self.opt_str(name).unwrap_or_default()
    }

    /// A boolean, `None` when not set.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    /// A whole number, `None` when not set.
    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// A duration, `None` when not set.
    pub(crate) fn duration(&self, name: &str) -> Option<Duration> {
        self.get(name)
            .and_then(Value::as_str)
            .and_then(|s| parse_duration(s).ok())
    }

    /// A list of texts, empty when not set.
    pub(crate) fn str_list(&self, name: &str) -> Vec<String> {
        self.list(name)
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect()
    }

    /// A list of whole numbers, empty when not set.
    pub(crate) fn int_list(&self, name: &str) -> Vec<i64> {
        self.list(name).iter().filter_map(Value::as_i64).collect()
    }

    /// A list of content-type ranges, empty when not set.
    pub(crate) fn type_list(&self, name: &str) -> Vec<std::ops::RangeInclusive<i32>> {
        self.list(name)
            .iter()
            .filter_map(|v| type_range(v).ok())
            .collect()
    }

    fn list(&self, name: &str) -> &'a [Value] {
        self.get(name)
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_prefixes_follow_openims_viper_setup() {
        assert_eq!(
            env_prefix("openim-msgtransfer.yml"),
            "IMENV_OPENIM_MSGTRANSFER_"
        );
        assert_eq!(env_prefix("kafka.yml"), "IMENV_KAFKA_");
        assert_eq!(env_prefix("local-cache.yml"), "IMENV_LOCAL_CACHE_");
        assert_eq!(
            env_name("IMENV_KAFKA_", &["tls", "enableTLS"]),
            "IMENV_KAFKA_TLS_ENABLETLS"
        );
    }

    #[test]
    fn no_two_fields_share_a_variable() {
        for file in schema::FILES {
            let prefix = env_prefix(file.name);
            let mut seen = BTreeMap::new();
            for (path, _) in leaves(file.fields) {
                let name = env_name(&prefix, &path);
                if let Some(other) = seen.insert(name.clone(), path.join(".")) {
                    panic!(
                        "{}: {other} and {} both map to {name}",
                        file.name,
                        path.join(".")
                    );
                }
            }
        }
        // Nor do two files share a prefix that one could mistake for the other's.
        for a in schema::FILES {
            for b in schema::FILES {
                if a.name != b.name {
                    assert!(!env_prefix(a.name).starts_with(&env_prefix(b.name)));
                }
            }
        }
    }

    #[test]
    fn env_values_take_the_fields_kind() {
        assert_eq!(env_value("8", Kind::Int), Ok(Value::Number(8.into())));
        assert_eq!(env_value("true", Kind::Bool), Ok(Value::Bool(true)));
        assert_eq!(env_value("x", Kind::Bool), Ok(Value::String("x".into())));
        // Text stays text, even when it looks like something else.
        assert_eq!(
            env_value("0123", Kind::Str),
            Ok(Value::String("0123".into()))
        );
        assert_eq!(
            env_value("#secret", Kind::Str),
            Ok(Value::String("#secret".into()))
        );
        assert_eq!(env_value("#x", Kind::Int), Ok(Value::String("#x".into())));
        assert_eq!(
            env_value("a:1, b:2,", Kind::StrList),
            Ok(Value::Sequence(vec!["a:1".into(), "b:2".into()]))
        );
        assert_eq!(
            env_value("[1, 2]", Kind::IntList),
            Ok(Value::Sequence(vec![1.into(), 2.into()]))
        );
        assert_eq!(
            env_value("1, 2", Kind::IntList),
            Ok(Value::Sequence(vec![1.into(), 2.into()]))
        );
        assert_eq!(env_value("", Kind::StrList), Ok(Value::Sequence(vec![])));
        assert!(env_value("[1, 2", Kind::IntList).is_err());
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let names = || {
            ["uri", "address", "database", "enableTLS"]
                .map(String::from)
                .into_iter()
        };
        assert_eq!(suggest("uris", names()), Some("uri".into()));
        assert_eq!(suggest("adress", names()), Some("address".into()));
        assert_eq!(suggest("enableTls", names()), Some("enableTLS".into()));
        assert_eq!(suggest("replicas", names()), None);
    }

    #[test]
    fn type_ranges() {
        assert_eq!(type_range(&Value::Number(5.into())), Ok(5..=5));
        assert_eq!(type_range(&Value::String("200-500".into())), Ok(200..=500));
        assert_eq!(type_range(&Value::String(" 7 ".into())), Ok(7..=7));
        assert!(type_range(&Value::String("500-200".into())).is_err());
        assert!(type_range(&Value::String("x".into())).is_err());
    }
}
