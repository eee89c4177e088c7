//! What each fuzz target does with its bytes: the project's public entry points for user input
//! (spec parser, CSV and Parquet readers, model directory loader, checkpoint pickle reader).
//!
//! The fuzz targets in `fuzz_targets/` call these functions; `host/tests/fuzz_regressions.rs`
//! includes this file and replays the committed seeds and every crash found through the same
//! functions, on the stable toolchain. A function returns normally for any input: errors are the
//! expected outcome of bad input, and any panic, abort or hang is a bug. Each returns whether the
//! input was accepted (so that a test can check that the valid seeds get past the parser).

use std::cell::RefCell;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use recblocks::data::{
    read_interactions_csv_from, read_interactions_parquet, read_item_features_from, ColumnNames,
    FeatureColumnNames, ReadOptions,
};
use recblocks::Model;
use recblocks_core::{Registry, SpecInput};

/// The RecTools checkpoint whose tensor files the `pickle` target puts beside its `data.pkl`.
pub const PICKLE_BASE_CHECKPOINT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../host/tests/parity/fixtures/sasrec_cat_features/checkpoint.ckpt"
);

/// The RecTools checkpoint imported once to make the model directory the `model_load` target
/// corrupts.
pub const MODEL_BASE_CHECKPOINT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../host/tests/parity/fixtures/bert4rec_default/checkpoint.ckpt"
);

/// The files of a model directory the `model_load` target replaces, by the input's first byte.
pub const MODEL_FILES: [&str; 3] = ["model.json", "dataset_schema.json", "weights.safetensors"];

thread_local! {
    static REGISTRY: Registry = recblocks::builtin_registry().expect("the built-in registry");
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// This thread's scratch directory (created on first use; see [`remove_scratch`]).
fn scratch() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                let dir = std::env::temp_dir().join(format!(
                    "recblocks-fuzz-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&dir).expect("a scratch directory");
                dir
            })
            .clone()
    })
}

/// Removes this thread's scratch directory.
pub fn remove_scratch() {
    if let Some(dir) = SCRATCH.with(|s| s.borrow_mut().take()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("a scratch file");
}

/// The memory a model may be estimated to need in the `spec`, `model_load` and `pickle` targets
/// (as `--max-memory 512M`), so that a size the estimate allows stays under libFuzzer's 2 GB.
pub const MEMORY_LIMIT: u64 = 512 << 20;

/// `spec`: the text as a spec file, parsed, resolved against the built-in registry, then checked
/// as `recblocks validate --n-items 100 --max-memory 512M` checks it: memory estimate, the model
/// assembled on the CPU, the objective, its negative sampler and the trainer settings.
pub fn spec(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(spec) = SpecInput::from_json_str(text) else {
        return false;
    };
    recblocks::memory::set_limit(MEMORY_LIMIT);
    REGISTRY.with(|registry| {
        let Ok(spec) = spec.resolve(registry) else {
            return false;
        };
        let Ok(schema) = recblocks::assembly::schema_for(&spec, registry, 100) else {
            return false;
        };
        if recblocks::memory::check(&spec, schema.n_items, true).is_err() {
            return false;
        }
        let device = recblocks_core::candle::Device::Cpu;
        if recblocks::assembly::assemble(&spec, &schema, registry, &device).is_err() {
            return false;
        }
        let Ok(objective) = recblocks::assembly::build_objective(&spec, &schema, registry) else {
            return false;
        };
        if objective.requires_negatives()
            && recblocks::assembly::build_negative_sampler(&spec, registry).is_err()
        {
            return false;
        }
        recblocks::assembly::build_trainer_settings(&spec, registry).is_ok()
    })
}

/// `csv`: the bytes as an interactions CSV, read failing on the first bad row and skipping bad
/// rows.
pub fn csv(data: &[u8]) -> bool {
    let mut accepted = false;
    for skip_bad_rows in [false, true] {
        accepted |= read_interactions_csv_from(
            Cursor::new(data),
            Path::new("fuzz.csv"),
            &ColumnNames::default(),
            &ReadOptions { skip_bad_rows },
        )
        .is_ok();
    }
    accepted
}

/// `item_features`: the bytes as an item features CSV, read both ways; what is read is turned
/// into the categorical feature schema of a model knowing its items and one more.
pub fn item_features(data: &[u8]) -> bool {
    let mut accepted = false;
    for skip_bad_rows in [false, true] {
        let read = read_item_features_from(
            Cursor::new(data),
            Path::new("fuzz.csv"),
            &FeatureColumnNames::default(),
            &ReadOptions { skip_bad_rows },
        );
        if let Ok((features, _)) = read {
            let mut ids = vec!["PAD".to_string()];
            ids.extend(features.rows.iter().map(|r| r.item_id.clone()));
            ids.push("unknown".to_string());
            let _ = features.to_cat_feature_schema(&ids, 1);
            accepted = true;
        }
    }
    accepted
}

/// `parquet`: the bytes as an interactions Parquet file, read both ways.
pub fn parquet(data: &[u8]) -> bool {
    let path = scratch().join("fuzz.parquet");
    write(&path, data);
    let mut accepted = false;
    for skip_bad_rows in [false, true] {
        accepted |= read_interactions_parquet(
            &path,
            &ColumnNames::default(),
            &ReadOptions { skip_bad_rows },
        )
        .is_ok();
    }
    accepted
}

/// The files of a small valid model directory (imported from [`MODEL_BASE_CHECKPOINT`] once).
pub fn base_model_files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch().join("base-model");
        let imported = REGISTRY.with(|registry| {
            recblocks::rectools_import::import_checkpoint(
                Path::new(MODEL_BASE_CHECKPOINT),
                registry,
            )
        });
        let imported = imported.expect("the base checkpoint imports");
        imported.model.save(&dir).expect("the base model saves");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("the base model directory")
            .map(|entry| {
                let entry = entry.expect("a directory entry");
                let name = entry.file_name().to_string_lossy().into_owned();
                let bytes = std::fs::read(entry.path()).expect("a base model file");
                (name, bytes)
            })
            .filter(|(name, _)| !name.starts_with('.'))
            .collect();
        files.sort();
        let _ = std::fs::remove_dir_all(&dir);
        files
    })
}

/// `model_load`: a valid model directory with one file replaced by the bytes after the first,
/// which picks it from [`MODEL_FILES`]; loaded as `recommend` loads it. Replaced weights get their
/// CRC-32 in `model.json`, so the loader reads them instead of stopping at the checksum.
pub fn model_load(data: &[u8]) -> bool {
    let Some((&which, content)) = data.split_first() else {
        return false;
    };
    recblocks::memory::set_limit(MEMORY_LIMIT);
    let target = MODEL_FILES[usize::from(which) % MODEL_FILES.len()];
    let dir = scratch().join("model");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a model directory");
    for (name, bytes) in base_model_files() {
        if name == target {
            write(&dir.join(name), content);
        } else if name == "model.json" && target == "weights.safetensors" {
            let mut json: serde_json::Value =
                serde_json::from_slice(bytes).expect("the base model.json");
            json["weights_crc32"] = crc32fast::hash(content).into();
            write(&dir.join(name), json.to_string().as_bytes());
        } else {
            write(&dir.join(name), bytes);
        }
    }
    REGISTRY.with(|registry| Model::load(&dir, registry).is_ok())
}

/// The entries of [`PICKLE_BASE_CHECKPOINT`] other than its `data.pkl` (the tensor storages).
fn pickle_base_entries() -> &'static [(String, Vec<u8>)] {
    static ENTRIES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let file = std::fs::File::open(PICKLE_BASE_CHECKPOINT).expect("the base checkpoint");
        let mut zip = zip::ZipArchive::new(file).expect("the base checkpoint is a zip");
        let mut entries = Vec::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).expect("a zip entry");
            let name = entry.name().expect("a zip entry name").into_owned();
            if name.ends_with("data.pkl") {
                continue;
            }
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).expect("a zip entry's bytes");
            entries.push((name, bytes));
        }
        entries
    })
}

/// `pickle`: the bytes as a checkpoint's `data.pkl`, first through the pickle guard alone, then
/// stored as torch.save lays a checkpoint out (beside the tensor storages of
/// [`PICKLE_BASE_CHECKPOINT`]) and imported as `import-rectools` imports it.
pub fn pickle(data: &[u8]) -> bool {
    pickle_import(data).is_ok()
}

/// The `pickle` target's import, with its error message.
pub fn pickle_import(data: &[u8]) -> Result<(), String> {
    recblocks::memory::set_limit(MEMORY_LIMIT);
    let _ = recblocks::rectools_import::pickle_guard::check_pickle(data);
    let path = scratch().join("fuzz.ckpt");
    let file = std::fs::File::create(&path).expect("a scratch checkpoint");
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options)
        .expect("a zip entry");
    zip.write_all(data).expect("a zip entry's bytes");
    for (name, bytes) in pickle_base_entries() {
        zip.start_file(name.as_str(), options).expect("a zip entry");
        zip.write_all(bytes).expect("a zip entry's bytes");
    }
    zip.finish().expect("a zip file");
    REGISTRY.with(|registry| {
        recblocks::rectools_import::import_checkpoint(&path, registry)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}
