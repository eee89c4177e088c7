//! Parameter counts equal RecTools' formulas (docs/rectools.md §6), N counting PAD (and MASK).

use candle_core::Device;

use crate::util::{registry, spec};

fn count(json: &str, n_real_items: usize) -> (usize, usize) {
    let r = registry();
    let s = spec(json);
    let schema = recblocks::assembly::schema_for(&s, &r, n_real_items).unwrap();
    let model = recblocks::assemble(&s, &schema, &r, &Device::Cpu).unwrap();
    (model.n_params(), schema.n_items)
}

#[test]
fn sasrec_ids_only_matches_the_formula() {
    for (d, l, blocks, items) in [(16, 10, 1, 50), (32, 20, 2, 300), (64, 50, 3, 1000)] {
        let json = format!(
            r#"{{"cls": "SASRecModel", "n_factors": {d}, "n_heads": 2, "n_blocks": {blocks},
                "session_max_len": {l}}}"#
        );
        let (n, rows) = count(&json, items);
        assert_eq!(rows, items + 1, "PAD is added");
        assert_eq!(
            n,
            rows * d + l * d + blocks * (6 * d * d + 10 * d) + 2 * d,
            "{json}"
        );
    }
}

#[test]
fn bert4rec_ids_only_matches_the_formula() {
    for (d, l, blocks, items, m) in [
        (16, 10, 1, 50, 4),
        (32, 20, 2, 300, 4),
        (64, 50, 2, 1000, 2),
    ] {
        let json = format!(
            r#"{{"cls": "BERT4RecModel", "n_factors": {d}, "n_heads": 2, "n_blocks": {blocks},
                "session_max_len": {l}, "transformer_layers_kwargs": {{"ff_factors_multiplier": {m}}}}}"#
        );
        let (n, rows) = count(&json, items);
        assert_eq!(rows, items + 2, "PAD and MASK are added");
        assert_eq!(
            n,
            rows * d + l * d + blocks * ((4 + 2 * m) * d * d + (9 + m) * d),
            "{json}"
        );
    }
}

#[test]
fn rectools_default_bert4rec_size_matches_the_published_count() {
    // docs/rectools.md §5/§6: d = 256, L = 100 → 256·N + 1 605 120.
    let (n, rows) = count(r#"{"cls": "BERT4RecModel"}"#, 15_251);
    assert_eq!(n, 256 * rows + 1_605_120);
}
