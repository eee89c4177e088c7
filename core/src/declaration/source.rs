//! The source of this crate, hashed into the build fingerprint: a plugin compiled against other
//! core source is refused even when every symbol name is unchanged. The list is checked against
//! the `src` and `build` directories by a test, so a new file cannot be left out.

/// Every source file of this crate (path relative to the crate, bytes), plus the manifest and the
/// build script with its module (`build/`).
pub(crate) const SOURCES: &[(&str, &[u8])] = &[
    (
        "src/batch.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/batch.rs")),
    ),
    (
        "src/components/backbone.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/backbone.rs"
        )),
    ),
    (
        "src/components/data_preparator.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/data_preparator.rs"
        )),
    ),
    (
        "src/components/item_net.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/item_net.rs"
        )),
    ),
    (
        "src/components/mod.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/mod.rs"
        )),
    ),
    (
        "src/components/model_preset.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/model_preset.rs"
        )),
    ),
    (
        "src/components/negative_sampler.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/negative_sampler.rs"
        )),
    ),
    (
        "src/components/objective.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/objective.rs"
        )),
    ),
    (
        "src/components/pos_encoding.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/pos_encoding.rs"
        )),
    ),
    (
        "src/components/similarity.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/similarity.rs"
        )),
    ),
    (
        "src/components/trainer.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/trainer.rs"
        )),
    ),
    (
        "src/components/transformer_layers.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/transformer_layers.rs"
        )),
    ),
    (
        "src/components/val_mask.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/components/val_mask.rs"
        )),
    ),
    (
        "src/context.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/context.rs")),
    ),
    (
        "src/declaration/build_info.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/build_info.rs"
        )),
    ),
    (
        "src/declaration/export.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/export.rs"
        )),
    ),
    (
        "src/declaration/header.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/header.rs"
        )),
    ),
    (
        "src/declaration/identity.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/identity.rs"
        )),
    ),
    (
        "src/declaration/mod.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/mod.rs"
        )),
    ),
    (
        "src/declaration/source.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/declaration/source.rs"
        )),
    ),
    (
        "src/error.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/error.rs")),
    ),
    (
        "src/kind.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/kind.rs")),
    ),
    (
        "src/kwargs.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/kwargs.rs")),
    ),
    (
        "src/lib.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")),
    ),
    (
        "src/nn/activation_dropout.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/activation_dropout.rs"
        )),
    ),
    (
        "src/nn/attention.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/attention.rs")),
    ),
    (
        "src/nn/attention_core.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/attention_core.rs"
        )),
    ),
    (
        "src/nn/attention_weights.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/attention_weights.rs"
        )),
    ),
    (
        "src/nn/block_node/mod.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/block_node/mod.rs"
        )),
    ),
    (
        "src/nn/block_node/preln.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/block_node/preln.rs"
        )),
    ),
    (
        "src/nn/block_node/sasrec.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/block_node/sasrec.rs"
        )),
    ),
    (
        "src/nn/block_node/tests.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/block_node/tests.rs"
        )),
    ),
    (
        "src/nn/blocks/ligr.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/blocks/ligr.rs"
        )),
    ),
    (
        "src/nn/blocks/mod.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/blocks/mod.rs")),
    ),
    (
        "src/nn/blocks/preln.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/blocks/preln.rs"
        )),
    ),
    (
        "src/nn/blocks/sasrec.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/blocks/sasrec.rs"
        )),
    ),
    (
        "src/nn/capture.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/capture.rs")),
    ),
    (
        "src/nn/catalog_softmax.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/catalog_softmax.rs"
        )),
    ),
    (
        "src/nn/catalog_softmax/tests.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/catalog_softmax/tests.rs"
        )),
    ),
    (
        "src/nn/column_sum.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/column_sum.rs")),
    ),
    (
        "src/nn/cpu_slice.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cpu_slice.rs")),
    ),
    (
        "src/nn/cross_entropy.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cross_entropy.rs"
        )),
    ),
    (
        "src/nn/cuda/allocator.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cuda/allocator.rs"
        )),
    ),
    (
        "src/nn/cuda/graph.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cuda/graph.rs")),
    ),
    (
        "src/nn/cuda/kernels.cu",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cuda/kernels.cu"
        )),
    ),
    (
        "src/nn/cuda/launch.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cuda/launch.rs"
        )),
    ),
    (
        "src/nn/cuda/loss_reads.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cuda/loss_reads.rs"
        )),
    ),
    (
        "src/nn/cuda/memory.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/cuda/memory.rs"
        )),
    ),
    (
        "src/nn/cuda/mod.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cuda/mod.rs")),
    ),
    (
        "src/nn/cuda/rows.cu",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cuda/rows.cu")),
    ),
    (
        "src/nn/cuda/rows.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cuda/rows.rs")),
    ),
    (
        "src/nn/cuda/tests.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/cuda/tests.rs")),
    ),
    (
        "src/nn/dropout.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/dropout.rs")),
    ),
    (
        "src/nn/fast_exp.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/fast_exp.rs")),
    ),
    (
        "src/nn/feed_forward.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/feed_forward.rs"
        )),
    ),
    (
        "src/nn/fused/attention.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/attention.rs"
        )),
    ),
    (
        "src/nn/fused/kernels.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/kernels.rs"
        )),
    ),
    (
        "src/nn/fused/ligr.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/fused/ligr.rs")),
    ),
    (
        "src/nn/fused/mod.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/fused/mod.rs")),
    ),
    (
        "src/nn/fused/node.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/fused/node.rs")),
    ),
    (
        "src/nn/fused/parts.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/parts.rs"
        )),
    ),
    (
        "src/nn/fused/preln.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/preln.rs"
        )),
    ),
    (
        "src/nn/fused/products.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/products.rs"
        )),
    ),
    (
        "src/nn/fused/sasrec.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/sasrec.rs"
        )),
    ),
    (
        "src/nn/fused/self_attention.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/self_attention.rs"
        )),
    ),
    (
        "src/nn/fused/tests.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/fused/tests.rs"
        )),
    ),
    (
        "src/nn/gather_dot.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/gather_dot.rs")),
    ),
    (
        "src/nn/gather_rows.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/gather_rows.rs"
        )),
    ),
    (
        "src/nn/host_targets.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/host_targets.rs"
        )),
    ),
    (
        "src/nn/init.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/init.rs")),
    ),
    (
        "src/nn/layer_norm.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/layer_norm.rs")),
    ),
    (
        "src/nn/linear.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/linear.rs")),
    ),
    (
        "src/nn/linear_node.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/linear_node.rs"
        )),
    ),
    (
        "src/nn/masks.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/masks.rs")),
    ),
    (
        "src/nn/mod.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/mod.rs")),
    ),
    (
        "src/nn/padding_row.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/padding_row.rs"
        )),
    ),
    (
        "src/nn/param_grads.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/param_grads.rs"
        )),
    ),
    (
        "src/nn/param_node.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/param_node.rs")),
    ),
    (
        "src/nn/philox.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/philox.rs")),
    ),
    (
        "src/nn/position_rows.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/position_rows.rs"
        )),
    ),
    (
        "src/nn/position_rows/tests.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/position_rows/tests.rs"
        )),
    ),
    (
        "src/nn/precomputed.rs",
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/nn/precomputed.rs"
        )),
    ),
    (
        "src/nn/softmax.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/softmax.rs")),
    ),
    (
        "src/nn/workspace.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/nn/workspace.rs")),
    ),
    (
        "src/register.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/register.rs")),
    ),
    (
        "src/registry.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/registry.rs")),
    ),
    (
        "src/resolve.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/resolve.rs")),
    ),
    (
        "src/schema.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/schema.rs")),
    ),
    (
        "src/spec.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/spec.rs")),
    ),
    (
        "src/strict_json.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/strict_json.rs")),
    ),
    (
        "Cargo.toml",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
    ),
    (
        "build.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/build.rs")),
    ),
    (
        "build/launchers.rs",
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/build/launchers.rs")),
    ),
];

/// FNV-1a (64 bits) over every path and file of [`SOURCES`].
pub(crate) const fn source_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut f = 0;
    while f < SOURCES.len() {
        let (path, bytes) = SOURCES[f];
        h = fnv(h, path.as_bytes());
        h = fnv(h, bytes);
        f += 1;
    }
    h
}

const fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    // Separator, so ("ab", "c") and ("a", "bc") differ.
    h ^= 0xff;
    h.wrapping_mul(0x0100_0000_01b3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust and CUDA sources under `dir`.
    fn rs_files(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rs_files(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "cu") {
                let rel = path.strip_prefix(root).map(|p| p.display().to_string());
                out.push(rel.unwrap_or_default());
            }
        }
    }

    #[test]
    fn every_source_file_is_hashed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        rs_files(&root.join("src"), root, &mut found);
        rs_files(&root.join("build"), root, &mut found);
        found.sort();
        let mut listed: Vec<String> = SOURCES
            .iter()
            .map(|(p, _)| p.to_string())
            .filter(|p| p.starts_with("src/") || p.starts_with("build/"))
            .collect();
        listed.sort();
        assert_eq!(found, listed, "update core/src/declaration/source.rs");
    }
}
