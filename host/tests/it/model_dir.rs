//! Model directories: files recblocks did not write survive a re-fit, a directory that is not a
//! model is refused (unless --force, which keeps its files), a save killed at any step leaves the
//! old or the new model loadable and the next save cleans up, and concurrent saves to one path
//! take turns.

use std::{path::Path, process::Command};

use recblocks::{FitOptions, Model, TrainData};

use crate::util::{registry, small_data, tiny_sasrec};

fn fit_cli(spec: &Path, out: &Path, extra: &[&str], env: Option<(&str, &str)>) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recblocks"));
    command
        .args([
            "fit",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
        .args(extra);
    if let Some((k, v)) = env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spec_file(dir: &Path, epochs: usize) -> std::path::PathBuf {
    let path = dir.join(format!("spec{epochs}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "n_blocks": 1,
                "session_max_len": 5, "batch_size": 256, "epochs": {epochs}}}"#
        ),
    )
    .unwrap();
    path
}

fn epochs_of(model_dir: &Path) -> usize {
    Model::load(model_dir, &registry())
        .unwrap_or_else(|e| panic!("{} does not load: {e}", model_dir.display()))
        .training
        .epochs_done
}

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect()
}

#[test]
fn files_the_user_added_survive_a_re_fit() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    let (code, stderr) = fit_cli(&spec_file(dir.path(), 1), &m, &[], None);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(m.join("NOTES.md"), "my notes").unwrap();
    std::fs::create_dir(m.join("eval")).unwrap();
    std::fs::write(m.join("eval/recall.txt"), "0.08").unwrap();
    let (code, stderr) = fit_cli(&spec_file(dir.path(), 2), &m, &[], None);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(epochs_of(&m), 2);
    assert_eq!(
        std::fs::read_to_string(m.join("NOTES.md")).unwrap(),
        "my notes"
    );
    assert_eq!(
        std::fs::read_to_string(m.join("eval/recall.txt")).unwrap(),
        "0.08"
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[test]
fn a_directory_that_is_not_a_model_is_refused_unless_forced_and_its_files_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), 1);
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/main.py"), "print(1)").unwrap();
    // A model.json that is not recblocks' does not make it a model directory.
    std::fs::write(project.join("model.json"), r#"{"name": "my model"}"#).unwrap();
    let (code, stderr) = fit_cli(&spec, &project, &[], None);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("is not a recblocks model directory"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(project.join("model.json")).unwrap(),
        r#"{"name": "my model"}"#
    );
    std::fs::remove_file(project.join("model.json")).unwrap();
    let (code, stderr) = fit_cli(&spec, &project, &["--force"], None);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(epochs_of(&project), 1);
    assert_eq!(
        std::fs::read_to_string(project.join("src/main.py")).unwrap(),
        "print(1)"
    );
}

#[test]
fn a_save_killed_at_any_step_leaves_a_loadable_model_and_the_next_save_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let old = spec_file(dir.path(), 1);
    let new = spec_file(dir.path(), 2);
    for step in 1..=5 {
        let m = dir.path().join(format!("m{step}"));
        let (code, stderr) = fit_cli(&old, &m, &[], None);
        assert_eq!(code, 0, "{stderr}");
        std::fs::write(m.join("NOTES.md"), "keep me").unwrap();
        let step_text = step.to_string();
        let (code, _) = fit_cli(
            &new,
            &m,
            &[],
            Some(("RECBLOCKS_SAVE_FAILPOINT", step_text.as_str())),
        );
        assert_eq!(code, 86, "the save did not stop at step {step}");
        // The old model before the exchange, the new one after it: never neither, never torn.
        let epochs = epochs_of(&m);
        assert_eq!(epochs, if step == 5 { 2 } else { 1 }, "step {step}");
        // The next save finds the leftovers, puts the user's file back and cleans up.
        let (code, stderr) = fit_cli(&new, &m, &[], None);
        assert_eq!(code, 0, "step {step}: {stderr}");
        assert_eq!(epochs_of(&m), 2);
        assert_eq!(
            std::fs::read_to_string(m.join("NOTES.md")).unwrap(),
            "keep me",
            "step {step}"
        );
        assert!(
            leftovers(dir.path()).is_empty(),
            "step {step}: {:?}",
            leftovers(dir.path())
        );
    }
}

#[test]
fn concurrent_saves_to_one_path_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    let data = small_data();
    let models: Vec<Model> = [1usize, 2]
        .iter()
        .map(|&epochs| {
            Model::fit(
                tiny_sasrec(&format!(r#", "epochs": {epochs}"#)),
                TrainData {
                    interactions: &data,
                    item_features: None,
                },
                &registry(),
                &FitOptions::default(),
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for model in &models {
            let m = &m;
            s.spawn(move || {
                for _ in 0..5 {
                    model.save(m).unwrap();
                }
            });
        }
        // Readers meanwhile always find a whole model.
        for _ in 0..20 {
            if m.join("model.json").exists() {
                let epochs = epochs_of(&m);
                assert!(epochs == 1 || epochs == 2);
            }
        }
    });
    assert!([1, 2].contains(&epochs_of(&m)));
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[test]
fn odd_paths_and_symlinks_reach_the_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), 1);
    let real = dir.path().join("real");
    let (code, stderr) = fit_cli(&spec, &real, &[], None);
    assert_eq!(code, 0, "{stderr}");
    // `.` inside the model directory, and `m/..`-style paths, load.
    let dotted = real.join("sub/..");
    std::fs::create_dir(real.join("sub")).unwrap();
    assert_eq!(epochs_of(&dotted), 1);
    // A re-fit through a symlink replaces the directory it points to; the link stays a link.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let (code, stderr) = fit_cli(&spec_file(dir.path(), 2), &link, &[], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(epochs_of(&real), 2);
    assert!(real.join("sub").is_dir());
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[test]
fn force_never_overwrites_a_file_of_the_users_that_has_one_of_our_names() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("train_log.csv"), "mine").unwrap();
    let (code, stderr) = fit_cli(&spec_file(dir.path(), 1), &project, &["--force"], None);
    assert_ne!(code, 0);
    assert!(stderr.contains("`train_log.csv`"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(project.join("train_log.csv")).unwrap(),
        "mine"
    );
}
