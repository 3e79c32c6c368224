//! Where a setting is written in the file: byte spans of keys and values as the TOML parser
//! (`toml_edit`'s [`ImDocument`]) saw them.
//!
//! A problem found on the typed config names its setting by [`KeyPath`] (`serial[1].baud`);
//! [`Positions::span`] turns that into the span of the value, whatever TOML form wrote it:
//! `[store]` / `[ store ]` headers, dotted keys (`store.path = …`), quoted keys (`"path" = …`),
//! inline tables (`store = { path = … }`), the Nth `[[serial]]` or an array of inline tables.
//! A setting that is not written (a default) resolves to its nearest written ancestor.

use std::fmt;
use std::ops::Range;
use toml_edit::{ArrayOfTables, ImDocument, Item, TableLike, Value};

/// One step of a [`KeyPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A key in a table.
    Key(String),
    /// An element of an array (or array of tables), 0-based.
    Index(usize),
}

/// The path of a setting from the top of the file, e.g. `serial[1].baud`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Step>);

impl KeyPath {
    /// The path of a top-level key.
    pub fn of(key: &str) -> KeyPath {
        KeyPath(vec![Step::Key(key.into())])
    }

    /// This path extended by `key`.
    pub fn key(mut self, key: &str) -> KeyPath {
        self.0.push(Step::Key(key.into()));
        self
    }

    /// This path extended by array index `i`.
    pub fn index(mut self, i: usize) -> KeyPath {
        self.0.push(Step::Index(i));
        self
    }

    /// Parses the dotted form `ble.device[2].address` (keys without `.` or `[`, as the
    /// adapters' `problems()` name them).
    pub fn parse(s: &str) -> KeyPath {
        let mut path = KeyPath::default();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut pieces = part.split('[');
            if let Some(k) = pieces.next().filter(|k| !k.is_empty()) {
                path = path.key(k);
            }
            for idx in pieces {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    path = path.index(i);
                }
            }
        }
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Step::Key(k) if i == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed document, kept for looking up spans.
pub struct Positions {
    doc: Option<ImDocument<String>>,
}

enum Node<'a> {
    Table(&'a dyn TableLike),
    Tables(&'a ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

fn item_node(item: &Item) -> Node<'_> {
    match item {
        Item::Table(t) => Node::Table(t),
        Item::ArrayOfTables(a) => Node::Tables(a),
        Item::Value(v) => value_node(v),
        Item::None => Node::Leaf,
    }
}

fn value_node(v: &Value) -> Node<'_> {
    match v {
        Value::InlineTable(t) => Node::Table(t),
        Value::Array(a) => Node::Array(a),
        _ => Node::Leaf,
    }
}

impl Positions {
    /// Parses `text` (a file that failed to parse has no positions: every span is `None`).
    pub fn parse(text: &str) -> Positions {
        Positions {
            doc: ImDocument::parse(text.to_owned()).ok(),
        }
    }

    /// The span of the value at `path` (for a table: its header, else its key); when `path`
    /// is not in the file, the span of its nearest ancestor that is; `None` when not even the
    /// first step is (the caller then points at the start of the file).
    pub fn span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for step in &path.0 {
            let (span, next) = match (step, node) {
                (Step::Key(k), Node::Table(t)) => match t.get_key_value(k) {
                    Some((key, item)) => (item.span().or_else(|| key.span()), item_node(item)),
                    None => break,
                },
                (Step::Index(i), Node::Tables(a)) => match a.get(*i) {
                    Some(t) => (t.span(), Node::Table(t)),
                    None => break,
                },
                (Step::Index(i), Node::Array(a)) => match a.get(*i) {
                    Some(v) => (v.span(), value_node(v)),
                    None => break,
                },
                _ => break,
            };
            best = span.or(best);
            node = next;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text at the span of `path`, up to the end of its line.
    fn at(text: &str, path: &str) -> String {
        let s = Positions::parse(text)
            .span(&KeyPath::parse(path))
            .unwrap_or_else(|| panic!("{path}: no span"));
        text[s.start..].lines().next().unwrap().to_string()
    }

    #[test]
    fn key_paths_parse_and_print_in_the_dotted_form() {
        let p = KeyPath::parse("ble.device[2].address");
        assert_eq!(p, KeyPath::of("ble").key("device").index(2).key("address"));
        assert_eq!(p.to_string(), "ble.device[2].address");
    }

    #[test]
    fn every_toml_form_resolves_to_its_value() {
        // dotted keys at the top level
        assert_eq!(at("x = 1\nstore.path = \"a\"\n", "store.path"), "\"a\"");
        // a header with spaces, a quoted key
        assert_eq!(at("[ store ]\n\"path\" = \"b\"\n", "store.path"), "\"b\"");
        // an inline table
        assert_eq!(
            at(
                "store = { synchronous = \"full\", path = \"c\" }\n",
                "store.path"
            ),
            "\"c\" }"
        );
        // the second of an array of tables, and an array of inline tables
        let t = "[[serial]]\nbaud = 1\n[[serial]]\nname = \"n\"\nbaud = 2\n";
        assert_eq!(at(t, "serial[1].baud"), "2");
        assert_eq!(
            at("serial = [{ baud = 1 }, { baud = 3 }]\n", "serial[1].baud"),
            "3 }]"
        );
        // the same key name in two tables
        let t = "[store]\npath = \"s\"\n[uplink]\npath = \"u\"\n";
        assert_eq!(at(t, "uplink.path"), "\"u\"");
        assert_eq!(at(t, "store.path"), "\"s\"");
        // a sub-table under a dotted header
        let t = "[ble]\n[[ble.device]]\nname = \"a\"\n[[ble.device]]\naddress = \"x\"\n";
        assert_eq!(at(t, "ble.device[1].address"), "\"x\"");
    }

    #[test]
    fn an_unwritten_setting_resolves_to_its_nearest_ancestor() {
        let t = "version = 1\n[[serial]]\nname = \"a\"\n[[serial]]\nname = \"b\"\n";
        assert_eq!(at(t, "serial[1].baud"), "[[serial]]");
        assert_eq!(at("[store]\n", "store.path"), "[store]");
        assert_eq!(
            Positions::parse("version = 1\n").span(&KeyPath::of("store")),
            None
        );
    }
}
