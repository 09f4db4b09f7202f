//! Config diagnostics: every error carries the key path it is about and, when
//! the source is known, the line that key sits on.
//!
//! Errors are collected, never returned one at a time: a user fixing a file
//! sees all of its problems in one run (`floodgate --check`).

use std::fmt;

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `upstreams[1].max_connections`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// Appends the segments of a path reported by `serde_path_to_error`.
    pub fn join_serde(&self, p: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut v = self.0.clone();
        for s in p.iter() {
            match s {
                Segment::Seq { index } => v.push(Seg::Index(*index)),
                Segment::Map { key } => v.push(Seg::Key(key.clone())),
                Segment::Enum { variant } => v.push(Seg::Key(variant.clone())),
                Segment::Unknown => {}
            }
        }
        KeyPath(v)
    }

    /// Appends the segments of a path reported by `serde_ignored`.
    pub fn join_ignored(&self, p: &serde_ignored::Path<'_>) -> Self {
        fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
            use serde_ignored::Path;
            match p {
                Path::Root => {}
                Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Seg::Index(*index));
                }
                Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Seg::Key(key.clone()));
                }
                Path::Some { parent }
                | Path::NewtypeStruct { parent }
                | Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut v = self.0.clone();
        walk(p, &mut v);
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: KeyPath,
    /// 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} (line {l}): {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one config file, in file order.
#[derive(Clone, Debug, Default)]
pub struct ConfigErrors {
    /// The file the errors are about, when read from a file.
    pub file: Option<String>,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        let file = self.file.as_deref().unwrap_or("config");
        writeln!(f, "{file}: {n} error{}", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while a file is decoded and validated, resolving each
/// key path to its line through the parsed document's spans.
pub struct Diagnostics<'a> {
    src: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(src: &'a str) -> Self {
        Diagnostics {
            src,
            doc: toml_edit::Document::parse(src).ok(),
            errors: Vec::new(),
        }
    }

    /// Records an error at `path`.
    pub fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        let line = self.line_of(path);
        self.errors.push(ConfigError {
            path: path.clone(),
            line,
            message: message.into(),
        });
    }

    /// Records an error at a byte offset (a syntax error, say).
    pub fn error_at_offset(&mut self, path: &KeyPath, offset: usize, message: impl Into<String>) {
        let line = Some(line_of_offset(self.src, offset));
        self.errors.push(ConfigError {
            path: path.clone(),
            line,
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The collected errors, sorted by line.
    pub fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        ConfigErrors {
            file: None,
            errors: self.errors,
        }
    }

    /// The 1-based line of the deepest part of `path` present in the file.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let span = span_of(doc.as_item(), &path.0)?;
        Some(line_of_offset(self.src, span))
    }
}

fn line_of_offset(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Walks `segs` down from `item`, returning the start offset of the deepest
/// node reached that has a span.
fn span_of(item: &toml_edit::Item, segs: &[Seg]) -> Option<usize> {
    use toml_edit::{Item, Value};
    let here = item.span().map(|s| s.start);
    let Some((first, rest)) = segs.split_first() else {
        return here;
    };
    let deeper = match (item, first) {
        (Item::Table(t), Seg::Key(k)) => t.get_key_value(k).and_then(|(key, v)| {
            if rest.is_empty() {
                key.span()
                    .map(|s| s.start)
                    .or_else(|| v.span().map(|s| s.start))
            } else {
                span_of(v, rest).or_else(|| key.span().map(|s| s.start))
            }
        }),
        (Item::ArrayOfTables(a), Seg::Index(i)) => a.get(*i).and_then(|t| {
            let start = t.span().map(|s| s.start);
            if rest.is_empty() {
                start
            } else {
                span_of(&Item::Table(t.clone()), rest).or(start)
            }
        }),
        (Item::Value(Value::InlineTable(t)), Seg::Key(k)) => {
            t.get_key_value(k).and_then(|(key, v)| {
                if rest.is_empty() {
                    key.span()
                        .map(|s| s.start)
                        .or_else(|| v.span().map(|s| s.start))
                } else {
                    span_of(v, rest).or_else(|| key.span().map(|s| s.start))
                }
            })
        }
        (Item::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).and_then(|v| {
            let start = v.span().map(|s| s.start);
            if rest.is_empty() {
                start
            } else {
                span_of(&Item::Value(v.clone()), rest).or(start)
            }
        }),
        _ => None,
    };
    deeper.or(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_display() {
        let p = KeyPath::root()
            .key("upstreams")
            .index(1)
            .key("max_connections");
        assert_eq!(p.to_string(), "upstreams[1].max_connections");
        let p = KeyPath::root().key("clients").key("limits").key("a b");
        assert_eq!(p.to_string(), "clients.limits.\"a b\"");
    }

    #[test]
    fn lines_resolve_through_tables_and_arrays() {
        let src = "[server]\nlisten = [\"a\",\n  \"b\"]\n\n[[upstreams]]\nname = \"x\"\n\n[[upstreams]]\nname = \"y\"\nbackends = []\n";
        let d = Diagnostics::new(src);
        let p = KeyPath::root().key("server").key("listen").index(1);
        assert_eq!(d.line_of(&p), Some(3));
        let p = KeyPath::root().key("upstreams").index(1).key("backends");
        assert_eq!(d.line_of(&p), Some(10));
        // A missing key resolves to the nearest present ancestor.
        let p = KeyPath::root().key("upstreams").index(0).key("backends");
        assert_eq!(d.line_of(&p), Some(5));
    }
}
