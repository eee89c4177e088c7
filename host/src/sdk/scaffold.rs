//! `recblocks plugin new NAME [--path DIR]`: a standalone plugin crate, its own Cargo workspace
//! with no path into any recblocks checkout, that builds with `recblocks plugin build` and passes
//! the conformance suite as generated.

use std::path::{Path, PathBuf};

use super::{toolchain_version, SdkError};

/// The files of a new plugin: path relative to its directory, and the template.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("template/lib.rs.in")),
    ("spec.json", include_str!("template/spec.json.in")),
    ("README.md", include_str!("template/README.md.in")),
    (
        "rust-toolchain.toml",
        include_str!("template/rust-toolchain.toml.in"),
    ),
    (".gitignore", include_str!("template/gitignore.in")),
];

/// What `plugin new` made.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// Its crate name.
    pub crate_name: String,
    /// The component's name.
    pub component: String,
    /// The files written, relative to `dir`.
    pub files: Vec<&'static str>,
}

/// Checks a plugin (crate) name: lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter, and not a name the plugin's own library could clash with.
pub fn check_name(name: &str) -> Result<(), SdkError> {
    let bad = |why: &str| {
        Err(SdkError::BadName {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    match name.chars().next() {
        None => return bad("it is empty"),
        Some(c) if !c.is_ascii_lowercase() => return bad("it does not start with a letter"),
        Some(_) => {}
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return bad(&format!("`{c}` is not allowed"));
    }
    if name.replace('-', "_") == "recblocks_core" || name == "recblocks" {
        return bad("it is the name of a recblocks crate");
    }
    Ok(())
}

/// `my-layers` → `MyLayersTransformerLayers`.
pub fn component_name(crate_name: &str) -> String {
    let mut out: String = crate_name
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    out.push_str("TransformerLayers");
    out
}

fn fill(template: &str, crate_name: &str, component: &str) -> String {
    template
        .replace("{{crate}}", crate_name)
        .replace("{{lib}}", &crate_name.replace('-', "_"))
        .replace("{{component}}", component)
        .replace("{{toolchain}}", toolchain_version())
}

/// The nearest directory above `dir` whose `Cargo.toml` declares a `[workspace]`, if any.
fn enclosing_workspace(dir: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(dir).ok()?;
    absolute
        .ancestors()
        .skip(1)
        .find(|a| {
            std::fs::read_to_string(a.join("Cargo.toml"))
                .is_ok_and(|m| m.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// Writes a new plugin crate named `name` into `dir` (which must not exist or be empty, nor lie
/// inside another Cargo workspace: a glob member such as recblocks' `plugins/*` would take it in,
/// and two workspace roots in one workspace stop cargo).
pub fn new_plugin(name: &str, dir: &Path) -> Result<NewPlugin, SdkError> {
    check_name(name)?;
    if let Some(workspace) = enclosing_workspace(dir) {
        return Err(SdkError::InsideWorkspace {
            dir: dir.to_path_buf(),
            workspace,
        });
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| SdkError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(SdkError::NotEmpty(dir.to_path_buf()));
        }
    }
    let component = component_name(name);
    for (file, template) in FILES {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SdkError::io(parent, e))?;
        }
        std::fs::write(&path, fill(template, name, &component))
            .map_err(|e| SdkError::io(&path, e))?;
    }
    Ok(NewPlugin {
        dir: dir.to_path_buf(),
        crate_name: name.to_string(),
        component,
        files: FILES.iter().map(|(f, _)| *f).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_turned_into_component_names() {
        assert!(check_name("my-layers").is_ok());
        assert!(check_name("gated_mlp2").is_ok());
        for bad in ["", "9lives", "My-Layers", "a/b", "a b", "recblocks-core"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(component_name("my-layers"), "MyLayersTransformerLayers");
        assert_eq!(component_name("gated_mlp2"), "GatedMlp2TransformerLayers");
    }

    #[test]
    fn a_new_plugin_has_no_path_into_a_checkout_and_refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-layers");
        let made = new_plugin("my-layers", &dir).unwrap();
        assert_eq!(made.component, "MyLayersTransformerLayers");
        for file in &made.files {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(!text.contains("{{"), "{file} keeps a placeholder");
            assert!(!text.contains("path ="), "{file} has a path dependency");
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-layers\"") && manifest.contains("[workspace]"));
        let err = new_plugin("my-layers", &dir).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn a_new_plugin_is_not_made_inside_another_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"plugins/*\"]\n",
        )
        .unwrap();
        let err = new_plugin("my-layers", &tmp.path().join("plugins/my-layers"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("inside the Cargo workspace"), "{err}");
    }
}
