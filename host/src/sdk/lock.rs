//! The packages recblocks-core depends on, read from the checkout's `Cargo.lock`: which compiled
//! crates an installed SDK must hold for rustc to read core's metadata.

use std::collections::{BTreeMap, BTreeSet};

/// Every package reachable from `root` through `dependencies` in a `Cargo.lock` (any version of a
/// name counts: a superset is harmless, rustc picks crates by their hash), `root` included.
pub fn dependency_closure(lock: &str, root: &str) -> BTreeSet<String> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_deps = false;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
            in_deps = false;
        } else if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|s| s.strip_suffix('"'))
        {
            current = Some(name.to_string());
            deps.entry(name.to_string()).or_default();
        } else if line.starts_with("dependencies = [") {
            in_deps = !line.ends_with(']');
        } else if in_deps {
            if line == "]" {
                in_deps = false;
            } else if let (Some(package), Some(dep)) = (
                &current,
                line.trim_matches(|c| c == '"' || c == ',')
                    .split_whitespace()
                    .next(),
            ) {
                deps.entry(package.clone())
                    .or_default()
                    .insert(dep.to_string());
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(next) = deps.get(&name) {
            todo.extend(next.iter().filter(|n| !seen.contains(*n)).cloned());
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_follows_dependencies_of_every_version() {
        let lock = r#"
[[package]]
name = "a"
version = "1.0.0"
dependencies = [
 "b 1.0.0",
 "c",
]

[[package]]
name = "b"
version = "1.0.0"

[[package]]
name = "b"
version = "2.0.0"
dependencies = [
 "d",
]

[[package]]
name = "c"
version = "0.1.0"

[[package]]
name = "d"
version = "0.1.0"

[[package]]
name = "unrelated"
version = "0.1.0"
dependencies = [
 "a",
]
"#;
        let got: Vec<String> = dependency_closure(lock, "a").into_iter().collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
    }

    #[test]
    fn core_depends_on_candle_in_this_checkout() {
        let lock = include_str!("../../../Cargo.lock");
        let closure = dependency_closure(lock, "recblocks-core");
        for name in ["candle-core", "candle-nn", "serde", "serde_derive", "rand"] {
            assert!(closure.contains(name), "{name}");
        }
        assert!(!closure.contains("recblocks"));
        assert!(!closure.contains("parquet"));
    }
}
