//! `recblocks import-rectools` on real RecTools Lightning checkpoints written by
//! `host/tests/parity/generate.py`: the imported model directory must recommend exactly what RecTools
//! recommends after `load_from_checkpoint` (same users, items and ranks; scores to RecTools'
//! 5-decimal rounding), and broken or unsupported checkpoints must fail with a clear error.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use recblocks::rectools_import::{from_parts, import_checkpoint, read_checkpoint};

use crate::{
    parity::fixtures_dir,
    util::{recblocks, registry},
};

/// (user, item, rank) rows and scores of a recommendations CSV.
fn read_recos(text: &str) -> Vec<(String, String, usize, f64)> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[0].to_string(),
                rec[1].to_string(),
                rec[3].parse().unwrap(),
                rec[2].parse().unwrap(),
            )
        })
        .collect()
}

fn import_and_recommend(fixture: &str) {
    let dir = fixtures_dir().join(fixture);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let ckpt = dir.join("checkpoint.ckpt");
    let (ok, _, err) = recblocks(&[
        "import-rectools",
        ckpt.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "import-rectools failed: {err}");
    assert!(
        err.contains("get_trainer_func `__main__.trainer`"),
        "the generator's Python trainer function is ignored with a warning: {err}"
    );
    let history = fixtures_dir().join("interactions.csv");
    let (ok, out, err) = recblocks(&[
        "recommend",
        model.to_str().unwrap(),
        "--data",
        history.to_str().unwrap(),
        "-k",
        "10",
    ]);
    assert!(ok, "recommend failed: {err}");
    let got = read_recos(&out);
    let want = read_recos(&std::fs::read_to_string(dir.join("checkpoint_recos.csv")).unwrap());
    assert_eq!(got.len(), want.len(), "{fixture}: number of rows");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.0, &g.1, g.2),
            (&w.0, &w.1, w.2),
            "{fixture}: recommendation differs"
        );
        assert!(
            (g.3 - w.3).abs() <= 1e-5,
            "{fixture}: user {} item {} score {} vs RecTools {}",
            g.0,
            g.1,
            g.3,
            w.3
        );
    }
    let users: std::collections::BTreeSet<&String> = want.iter().map(|w| &w.0).collect();
    assert_eq!(users.len(), 14, "every user of the fixture is compared");
}

#[test]
fn full_checkpoint_with_item_features_serves_rectools_recommendations() {
    import_and_recommend("sasrec_cat_features");
}

#[test]
fn weights_only_bert4rec_checkpoint_serves_rectools_recommendations() {
    import_and_recommend("bert4rec_default");
}

#[test]
fn checkpoint_parts_are_read() {
    let ckpt =
        read_checkpoint(&fixtures_dir().join("sasrec_cat_features/checkpoint.ckpt")).unwrap();
    assert_eq!(ckpt.model_config["cls"], "SASRecModel");
    assert_eq!(ckpt.item_external_ids.len(), 21);
    assert_eq!(ckpt.item_external_ids[0], "PAD");
    assert!(ckpt
        .state_dict
        .iter()
        .any(|(n, _)| n == "torch_model.item_model.item_net_blocks.1.emb_bag_inputs"));
}

fn import_err(path: &Path) -> String {
    match import_checkpoint(path, &registry()) {
        Ok(_) => panic!("{} imported", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_checkpoints_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.ckpt");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    let e = import_err(&garbage);
    assert!(
        e.contains("garbage.ckpt") && e.contains("not a PyTorch checkpoint"),
        "{e}"
    );

    let bytes = std::fs::read(fixtures_dir().join("sasrec_cat_features/checkpoint.ckpt")).unwrap();
    let truncated = tmp.path().join("truncated.ckpt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = import_err(&truncated);
    assert!(e.contains("truncated.ckpt"), "{e}");

    let missing = tmp.path().join("missing.ckpt");
    let e = import_err(&missing);
    assert!(e.contains("cannot open"), "{e}");

    // The CLI reports it and exits non-zero.
    let (ok, _, err) = recblocks(&[
        "import-rectools",
        garbage.to_str().unwrap(),
        "--out",
        tmp.path().join("m").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    assert!(!tmp.path().join("m").exists());
}

/// A zip holding `archive/data.pkl` = `pickle`, as torch.save lays a checkpoint out.
fn checkpoint_with_pickle(path: &Path, pickle: &[u8]) {
    use std::io::Write;
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    zip.finish().unwrap();
}

#[test]
fn hostile_pickles_are_refused_before_they_are_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    // A global outside the allow-list, under a key recblocks never reads.
    let mut global = vec![0x80, 2, b'}', b'X', 5, 0, 0, 0];
    global.extend(b"extra");
    global.extend(b"cbuiltins\nexec\n");
    global.extend([b's', b'.']);
    let path = tmp.path().join("global.ckpt");
    checkpoint_with_pickle(&path, &global);
    let e = import_err(&path);
    assert!(e.contains("`builtins.exec`"), "{e}");

    // Shared references doubling 40 times: a few hundred bytes that would expand to 2^40.
    let mut bomb = vec![0x80, 2, b']', b'q', 0];
    for level in 1..=40u8 {
        bomb.extend([
            b']',
            b'h',
            level - 1,
            b'a',
            b'h',
            level - 1,
            b'a',
            b'q',
            level,
        ]);
    }
    bomb.push(b'.');
    let path = tmp.path().join("bomb.ckpt");
    checkpoint_with_pickle(&path, &bomb);
    let e = import_err(&path);
    assert!(e.contains("would expand to more than"), "{e}");

    // Protocol 4 (torch.save(..., pickle_protocol=4)): a clear word, not an unknown op-code.
    let path = tmp.path().join("proto4.ckpt");
    checkpoint_with_pickle(&path, &[0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0, b'N', b'.']);
    let e = import_err(&path);
    assert!(e.contains("pickle protocol 4 is not supported"), "{e}");
}

fn parts() -> recblocks::rectools_import::RecToolsCheckpoint {
    read_checkpoint(&fixtures_dir().join("sasrec_cat_features/checkpoint.ckpt")).unwrap()
}

fn parts_err(p: recblocks::rectools_import::RecToolsCheckpoint) -> String {
    match from_parts("test.ckpt", p, &registry()) {
        Ok(_) => panic!("imported"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_component_is_named() {
    let mut p = parts();
    p.model_config["transformer_layers_type"] = "my_project.layers.MyLayers".into();
    let e = parts_err(p);
    assert!(e.contains("my_project.layers.MyLayers"), "{e}");
    assert!(e.contains("test.ckpt"), "{e}");
}

#[test]
fn state_dict_that_does_not_fit_the_config_is_named() {
    let mut p = parts();
    p.state_dict.push((
        "torch_model.transformer_layers.extra_gate.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    ));
    let e = parts_err(p);
    assert!(
        e.contains("torch_model.transformer_layers.extra_gate.weight"),
        "{e}"
    );

    let mut p = parts();
    p.state_dict
        .retain(|(n, _)| !n.ends_with("transformer_blocks.1.multi_head_attn.in_proj_weight"));
    let e = parts_err(p);
    assert!(
        e.contains(
            "torch_model.transformer_layers.transformer_blocks.1.multi_head_attn.in_proj_weight"
        ),
        "{e}"
    );

    let mut p = parts();
    for (n, t) in p.state_dict.iter_mut() {
        if n.ends_with("pos_emb.weight") {
            *t = Tensor::zeros((3, 16), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = parts_err(p);
    assert!(e.contains("pos_emb.weight") && e.contains("[3, 16]"), "{e}");
}

#[test]
fn python_only_settings_are_ignored_with_warnings() {
    let mut p = parts();
    p.model_config["dataloader_num_workers"] = 4.into();
    p.model_config["recommend_torch_device"] = "cuda:0".into();
    let imported = from_parts("test.ckpt", p, &registry()).unwrap();
    let w = imported.warnings.join("\n");
    assert!(w.contains("dataloader_num_workers"), "{w}");
    assert!(w.contains("cuda:0"), "{w}");
    assert!(w.contains("__main__.trainer"), "{w}");
}
