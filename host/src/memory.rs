//! A memory estimate made before a model is built, so that a spec or a model directory with
//! absurd sizes (`n_factors` 1e9, `session_max_len` 1e8, `n_blocks` 1e7, from a spec, an edited
//! `model.json` or an imported checkpoint's config) is refused with the setting to blame instead
//! of aborting on a failed allocation or running until killed.
//!
//! The estimate is a lower bound, so it never refuses a run that would fit: it counts only what
//! every transformer recommender computes, whatever its components (shared layers, factorised
//! embeddings and plugins included): the item embeddings scored against (`n_items ×
//! n_factors`), and for one batch the attention scores (`batch_size × n_heads ×
//! session_max_len²`) and hidden states (`batch_size × session_max_len × n_factors`), kept for
//! every block in training (the backward pass needs them) and for one block in inference.
//! Parameters are not counted: layer sharing and factorised embeddings make them smaller than the
//! shapes suggest. It is compared with the memory the system reports
//! available (`MemAvailable` in `/proc/meminfo`), or with a limit set by `--max-memory`.

use std::sync::OnceLock;

use recblocks_core::ModelSpec;

use crate::error::HostError;

/// The limit set with [`set_limit`] (the CLI's `--max-memory`).
static LIMIT: OnceLock<u64> = OnceLock::new();

/// Sets the most memory a model may be estimated to need, in bytes (first call wins).
pub fn set_limit(bytes: u64) {
    let _ = LIMIT.set(bytes);
}

/// The bytes a model may be estimated to need: the [`set_limit`] value, else the memory the
/// system reports available, else no limit.
pub fn limit() -> Option<u64> {
    LIMIT.get().copied().or_else(available_memory)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// What a model needs at least, by part, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// `(part, the settings that size it, bytes)`, largest first.
    pub parts: Vec<(&'static str, &'static str, u64)>,
}

impl Estimate {
    /// The total in bytes.
    pub fn total(&self) -> u64 {
        self.parts.iter().fold(0u64, |t, p| t.saturating_add(p.2))
    }
}

/// The lower-bound estimate for `spec` over `n_items` item ids, for training or for inference.
pub fn estimate(spec: &ModelSpec, n_items: usize, training: bool) -> Estimate {
    let f = |x: usize| x as u64;
    let mul = |xs: &[u64]| xs.iter().fold(1u64, |a, &b| a.saturating_mul(b));
    const F32: u64 = 4;
    let d = f(spec.n_factors);
    let mut parts = vec![(
        "item embeddings",
        "n_items × n_factors",
        mul(&[f(n_items), d, F32]),
    )];
    // An item net constructor that embeds items at a width of its own (the ALBERT plugin's
    // factorised embeddings) has an `n_items × emb_factors` table before its projection.
    if let Some(e) = spec
        .item_net_constructor_kwargs
        .as_ref()
        .and_then(|k| k.get("emb_factors"))
        .and_then(serde_json::Value::as_u64)
    {
        parts.push((
            "factorised item embeddings",
            "n_items × item_net_constructor_kwargs.emb_factors",
            mul(&[f(n_items), e, F32]),
        ));
    }
    let l = f(spec.session_max_len);
    let batch = f(if training {
        spec.batch_size
    } else {
        spec.recommend_batch_size
    });
    // Inference keeps one block's activations; training keeps every block's for the backward.
    let blocks = if training { f(spec.n_blocks) } else { 1 };
    parts.push((
        "attention scores of one batch",
        "n_blocks × batch_size × n_heads × session_max_len²",
        mul(&[blocks, batch, f(spec.n_heads), l, l, F32]),
    ));
    parts.push((
        "hidden states of one batch",
        "n_blocks × batch_size × session_max_len × n_factors",
        mul(&[blocks, batch, l, d, F32]),
    ));
    parts.sort_by_key(|p| std::cmp::Reverse(p.2));
    Estimate { parts }
}

/// Fails when the estimate exceeds [`limit`], naming the largest part and what sizes it.
pub fn check(spec: &ModelSpec, n_items: usize, training: bool) -> Result<(), HostError> {
    let Some(limit) = limit() else {
        return Ok(());
    };
    let estimate = estimate(spec, n_items, training);
    let total = estimate.total();
    if total <= limit {
        return Ok(());
    }
    let (part, settings, bytes) = estimate.parts[0];
    Err(HostError::Other(format!(
        "the model needs at least {} ({}), more than the {} available: the largest part is the \
         {part}, {} ({settings} with n_items = {n_items}, n_factors = {}, n_blocks = {}, n_heads \
         = {}, session_max_len = {}, batch_size = {}); reduce those settings, or raise the limit \
         with --max-memory",
        gib(total),
        if training { "training" } else { "inference" },
        gib(limit),
        gib(bytes),
        spec.n_factors,
        spec.n_blocks,
        spec.n_heads,
        spec.session_max_len,
        if training {
            spec.batch_size
        } else {
            spec.recommend_batch_size
        },
    )))
}

/// Bytes as GiB with two decimals (the estimate saturates at 2⁶⁴ bytes).
fn gib(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "over 16 EiB".into();
    }
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024, optional `iB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 8G, 512M, 1000000)"))?;
    let scale = match unit.trim().to_ascii_uppercase().trim_end_matches("IB") {
        "" | "B" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit (use K, M, G or T)")),
    };
    Ok((value * scale as f64) as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(overrides: &str) -> ModelSpec {
        let mut m: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!(recblocks_rectools::presets::sasrec_defaults()),
        )
        .unwrap();
        let o: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(overrides).unwrap();
        m.extend(o);
        serde_json::from_value(serde_json::Value::Object(m)).unwrap()
    }

    #[test]
    fn the_estimate_counts_the_parts_by_hand() {
        let s = spec(
            r#"{"n_factors": 64, "n_blocks": 2, "n_heads": 2, "session_max_len": 50,
                "batch_size": 128}"#,
        );
        let e = estimate(&s, 1000, true);
        let by_name = |n: &str| e.parts.iter().find(|p| p.0 == n).unwrap().2;
        assert_eq!(by_name("item embeddings"), 1000 * 64 * 4);
        assert_eq!(
            by_name("attention scores of one batch"),
            2 * 128 * 2 * 50 * 50 * 4
        );
        assert_eq!(by_name("hidden states of one batch"), 2 * 128 * 50 * 64 * 4);
        let inference = estimate(&s, 1000, false);
        assert!(inference.total() <= e.total());
    }

    #[test]
    fn absurd_sizes_are_refused_naming_the_part() {
        set_limit(8 << 30);
        let s = spec(r#"{"n_factors": 1000000000, "n_heads": 1}"#);
        let err = check(&s, 1000, true).unwrap_err().to_string();
        assert!(
            err.contains("the largest part is the hidden states"),
            "{err}"
        );
        assert!(err.contains("n_factors = 1000000000"), "{err}");
        let s = spec(r#"{"session_max_len": 100000000}"#);
        let err = check(&s, 1000, true).unwrap_err().to_string();
        assert!(err.contains("attention scores"), "{err}");
        let s = spec(r#"{"n_blocks": 10000000, "n_factors": 64, "n_heads": 2}"#);
        let err = check(&s, 1000, true).unwrap_err().to_string();
        assert!(err.contains("n_blocks = 10000000"), "{err}");
        assert!(check(&spec("{}"), 1000, true).is_ok());
    }

    #[test]
    fn a_factorised_item_embedding_table_is_counted() {
        // Found by the `spec` fuzz target: ALBERT's emb_factors 1.6e17 made building the model
        // panic with a capacity overflow.
        set_limit(8 << 30);
        let albert = |e: &str| {
            spec(&format!(
                r#"{{"item_net_constructor_type": "AlbertSumConstructor",
                    "item_net_constructor_kwargs": {{"emb_factors": {e}}}}}"#
            ))
        };
        let by_name = |s: &ModelSpec, n: &str| {
            estimate(s, 1000, false)
                .parts
                .iter()
                .find(|p| p.0 == n)
                .map(|p| p.2)
        };
        assert_eq!(
            by_name(&albert("16"), "factorised item embeddings"),
            Some(1000 * 16 * 4)
        );
        assert_eq!(by_name(&spec("{}"), "factorised item embeddings"), None);
        assert!(check(&albert("16"), 1000, true).is_ok());
        let err = check(&albert("155555555555555555"), 1000, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "the largest part is the factorised item embeddings, over 16 EiB (n_items × \
                 item_net_constructor_kwargs.emb_factors with n_items = 1000"
            ),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }
}
