//! The references in `docs/` are checked against the code: every config key
//! the file format accepts is in `docs/configuration.md` (and nothing else
//! is), every metric the gateway registers is in `docs/metrics.md` (and
//! nothing else is), and nothing in the repository points outside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

use std::collections::BTreeSet;
use std::path::Path;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A deserializer that answers every request with a made-up value and
/// records the key path of every struct field it is asked for: walking the
/// file model this way lists every key the config format accepts, straight
/// from the serde structs.
struct Probe<'a> {
    path: String,
    keys: &'a mut BTreeSet<String>,
}

impl<'a> Probe<'a> {
    fn at(&mut self, path: String) -> Probe<'_> {
        Probe {
            path,
            keys: self.keys,
        }
    }
}

struct Fields<'a, 'b> {
    probe: &'b mut Probe<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = de::value::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.fields.next() {
            None => Ok(None),
            Some(f) => {
                self.current = Some(f);
                seed.deserialize((*f).into_deserializer()).map(Some)
            }
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let f = self.current.take().unwrap_or("?");
        let path = if self.probe.path.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.probe.path)
        };
        self.probe.keys.insert(path.clone());
        seed.deserialize(&mut self.probe.at(path))
    }
}

/// A map with one made-up key (`<name>`), for `BTreeMap<String, T>`.
struct OneEntry<'a, 'b> {
    probe: &'b mut Probe<'a>,
    done: bool,
    value_next: bool,
}

impl<'de> MapAccess<'de> for OneEntry<'_, '_> {
    type Error = de::value::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        self.value_next = true;
        seed.deserialize("<name>".into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let path = format!("{}.<name>", self.probe.path);
        seed.deserialize(&mut self.probe.at(path))
    }
}

/// A sequence with one element, for `Vec<T>` (arrays of tables get `[]`).
struct OneElement<'a, 'b> {
    probe: &'b mut Probe<'a>,
    done: bool,
}

impl<'de> SeqAccess<'de> for OneElement<'_, '_> {
    type Error = de::value::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let path = format!("{}[]", self.probe.path);
        seed.deserialize(&mut self.probe.at(path)).map(Some)
    }
}

impl<'de> Deserializer<'de> for &mut Probe<'_> {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_str("1")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_bool(true)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_i64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_u64(1)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_f64(1.0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_str("1")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_str("1")
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_seq(OneElement {
            probe: self,
            done: false,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_map(OneEntry {
            probe: self,
            done: false,
            value_next: false,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_map(Fields {
            probe: self,
            fields: fields.iter(),
            current: None,
        })
    }
    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// Every key path the config file accepts: `server.listen`,
/// `upstreams[].name`, `clients.limits.<name>.rpm`, …
fn config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut probe = Probe {
        path: String::new(),
        keys: &mut keys,
    };
    let _: floodgate::config::schema::RawConfig =
        serde::Deserialize::deserialize(&mut probe).expect("probe the file model");
    keys
}

/// The key paths a reference document names: backticked `a.b.c` words
/// (a table heading `[x]` or `[[x]]` names `x`).
fn documented(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| {
            s.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .collect()
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let keys = config_keys();
    assert!(
        keys.contains("server.listen") && keys.contains("upstreams[].name"),
        "{keys:?}"
    );
    let doc = read("docs/configuration.md");
    let named = documented(&doc);
    // An upstream's own window takes the keys of `[backpressure]`.
    let is_named = |k: &str| {
        named.contains(k)
            || k.strip_prefix("upstreams[].")
                .is_some_and(|b| b.starts_with("backpressure.") && named.contains(b))
    };
    let missing: Vec<_> = keys.iter().filter(|k| !is_named(k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md (write each as `path`):\n  {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // The reverse: a documented key path that the format does not accept.
    let stale: Vec<_> = named
        .iter()
        .filter(|n| {
            let first = n.split(['.', '[']).next().unwrap_or("");
            let top = [
                "server",
                "upstreams",
                "routes",
                "clients",
                "forward_proxy",
                "backpressure",
                "fleet",
            ];
            top.contains(&first)
                && n.contains('.')
                && !n.contains(' ')
                && !n.contains('=')
                && !keys.contains(*n)
        })
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md names keys the format does not have:\n  {}",
        stale
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn every_metric_is_in_the_metrics_reference() {
    let text = read("src/metrics.rs");
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let registered: BTreeSet<String> = code
        .split('"')
        .filter(|s| {
            s.starts_with("floodgate_") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_string)
        .collect();
    assert!(registered.len() > 10, "{registered:?}");
    let doc = read("docs/metrics.md");
    let named = documented(&doc);
    let missing: Vec<_> = registered
        .iter()
        .filter(|m| {
            !named
                .iter()
                .any(|n| n == *m || n.starts_with(&format!("{m}{{")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/metrics.md: {missing:?}"
    );
    let stale: Vec<_> = named
        .iter()
        .map(|n| n.split('{').next().unwrap_or(""))
        .filter(|n| n.starts_with("floodgate_") && !registered.contains(*n))
        .filter(|n| !["_bucket", "_sum", "_count"].iter().any(|s| n.ends_with(s)))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md names metrics that do not exist: {stale:?}"
    );
}

#[test]
fn the_repository_explains_itself() {
    for f in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/configuration.md",
        "docs/admin-api.md",
        "docs/metrics.md",
    ] {
        let text = read(f);
        assert!(
            !text.contains("../shared")
                && !text.contains("shared folder")
                && !text.contains("DESIGN.md"),
            "{f} points outside the repository"
        );
    }
    // Every module the code map names exists.
    let arch = read("ARCHITECTURE.md");
    for word in documented(&arch) {
        if let Some(p) = word.strip_prefix("src/") {
            assert!(
                root().join("src").join(p).exists(),
                "ARCHITECTURE.md names src/{p}, which does not exist"
            );
        }
    }
}

#[test]
#[ignore]
fn print_config_keys() {
    for k in config_keys() {
        println!("{k}");
    }
}
