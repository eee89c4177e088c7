//! Requests that could only give an empty answer are refused with a message (k = 0, an empty
//! whitelist, a whitelist of unknown items), and a reader that stops early (`| head`) ends the
//! command quietly with success.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn recblocks(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A small SASRec model fitted on the built-in dataset, in `dir/m`.
fn tiny_model(dir: &Path) -> PathBuf {
    let spec = dir.join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "n_blocks": 1,
            "session_max_len": 5, "batch_size": 256, "epochs": 1}"#,
    )
    .unwrap();
    let model = dir.join("m");
    let (ok, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    model
}

#[test]
fn k_zero_and_empty_or_unknown_whitelists_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    for command in ["recommend", "similar"] {
        let (ok, stderr) = recblocks(&[command, m, "-k", "0"]);
        assert!(!ok, "{command} -k 0 succeeded");
        assert!(stderr.contains("must be at least 1, found 0"), "{stderr}");
    }
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "item_id\n").unwrap();
    let (ok, stderr) = recblocks(&["recommend", m, "--items", empty.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("the item whitelist is empty"), "{stderr}");
    let unknown = dir.path().join("unknown.txt");
    let long = "x".repeat(500);
    std::fs::write(&unknown, format!("nope\n{long}\n")).unwrap();
    let (ok, stderr) = recblocks(&["recommend", m, "--items", unknown.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("none of the 2 whitelisted item ids is an item the model knows"),
        "{stderr}"
    );
    // A long id is cut in the message, with its length.
    assert!(stderr.contains("(500 characters)"), "{stderr}");
    assert!(!stderr.contains(&long), "{stderr}");
}

#[test]
fn a_reader_that_stops_early_ends_recommend_quietly_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // 1,000 users x 100 items is about 2 MB of CSV: far more than a pipe holds.
    let mut child = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(["recommend", model.to_str().unwrap(), "-k", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert_eq!(first.trim_end(), "user_id,item_id,score,rank");
    // The reader is dropped here, closing the pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn validate_refuses_what_fit_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        (r#""loss": "hinge""#, "hinge"),
        (
            r#""loss": "gBCE", "n_negatives": 4, "gbce_t": -0.5"#,
            "gbce_t must be in [0, 1]",
        ),
        (
            r#""get_trainer_func_kwargs": {"val_k": 0}"#,
            "`val_k` must be at least 1",
        ),
    ] {
        let spec = dir.path().join("s.json");
        std::fs::write(
            &spec,
            format!(r#"{{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, {extra}}}"#),
        )
        .unwrap();
        let (ok, stderr) = recblocks(&["validate", spec.to_str().unwrap(), "--n-items", "50"]);
        assert!(!ok, "validate accepted {extra}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

#[test]
fn outputs_go_to_stdout_devices_and_files_but_never_replace_a_directory_or_device() {
    let dir = tempfile::tempdir().unwrap();
    let small = ["--users", "5", "--items", "10", "--len", "4", "--quiet"];
    // `-` is standard output.
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(["generate", "--out", "-"])
        .args(small)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("user_id,item_id,weight,datetime\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1 + 5 * 4);
    // A directory is refused and left alone.
    let mut args = vec!["generate", "--out", dir.path().to_str().unwrap()];
    args.extend(small);
    let (ok, stderr) = recblocks(&args);
    assert!(!ok);
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert!(dir.path().is_dir());
    // A device is written to, not replaced by a regular file.
    let mut args = vec!["generate", "--out", "/dev/null"];
    args.extend(small);
    let (ok, stderr) = recblocks(&args);
    assert!(ok, "{stderr}");
    assert!(std::fs::metadata("/dev/null").is_ok_and(|m| !m.is_file()));
    // A FIFO is written to in place.
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read_to_string(fifo).unwrap()
        });
        let mut args = vec!["generate", "--out", fifo.to_str().unwrap()];
        args.extend(small);
        let (ok, stderr) = recblocks(&args);
        assert!(ok, "{stderr}");
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count(), 1 + 5 * 4);
        assert!(std::fs::metadata(&fifo).is_ok_and(|m| !m.is_file()));
    }
}

#[test]
fn an_absurd_thread_count_is_capped_with_a_warning() {
    let (ok, stderr) = recblocks(&["--threads", "100000", "components", "--kind", "backbone"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: 100000 threads asked for; using"),
        "{stderr}"
    );
}

#[test]
fn a_device_or_a_file_without_line_breaks_is_refused_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = recblocks(&[
        "evaluate",
        "../examples/specs/sasrec.json",
        "--data",
        "/dev/zero",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("/dev/zero: is a character device"),
        "{stderr}"
    );
    // Each cause is printed once.
    assert_eq!(
        stderr.matches("is a character device").count(),
        1,
        "{stderr}"
    );
    let long = dir.path().join("long.csv");
    let mut text = String::from("user_id,item_id,datetime\nu,i,1\n");
    text.push_str(&"x".repeat(2 << 20));
    std::fs::write(&long, text).unwrap();
    let (ok, stderr) = recblocks(&[
        "evaluate",
        "../examples/specs/sasrec.json",
        "--data",
        long.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("line 3 is longer than 1048576 bytes"),
        "{stderr}"
    );
}

#[test]
fn zero_epochs_are_refused_instead_of_saving_an_untrained_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "epochs": 0}"#,
    )
    .unwrap();
    let out = dir.path().join("m");
    let (ok, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!ok);
    assert!(stderr.contains("epochs is 0"), "{stderr}");
    assert!(!out.exists(), "a model directory was written");
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 1000000000, "n_heads": 1}"#,
    )
    .unwrap();
    let (ok, stderr) = recblocks(&["validate", spec.to_str().unwrap(), "--n-items", "100"]);
    assert!(!ok);
    assert!(stderr.contains("the model needs at least"), "{stderr}");
    assert!(stderr.contains("n_factors = 1000000000"), "{stderr}");
    // --max-memory lowers the limit: a small spec that fits in memory is refused under 1 KiB.
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1}"#,
    )
    .unwrap();
    let (ok, stderr) = recblocks(&[
        "--max-memory",
        "1K",
        "validate",
        spec.to_str().unwrap(),
        "--n-items",
        "100",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("more than the 0.00 GiB available"),
        "{stderr}"
    );
    let (ok, stderr) = recblocks(&["validate", spec.to_str().unwrap(), "--n-items", "100"]);
    assert!(ok, "{stderr}");
}

#[test]
fn a_time_split_without_training_data_says_so() {
    let (ok, stderr) = recblocks(&[
        "evaluate",
        "../examples/specs/sasrec.json",
        "--split",
        "time:0",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("the split left no interaction to train on"),
        "{stderr}"
    );
}

#[test]
fn a_huge_bad_value_is_cut_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    let huge = "9".repeat(300_000) + "x";
    std::fs::write(
        &log,
        format!("user_id,item_id,weight,datetime\nu,i,{huge},1\n"),
    )
    .unwrap();
    let (ok, stderr) = recblocks(&[
        "evaluate",
        "../examples/specs/sasrec.json",
        "--data",
        log.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("(300001 characters)"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
    assert!(stderr.len() < 1_000, "{} bytes of message", stderr.len());
}

#[test]
fn all_zero_weights_are_refused_as_nothing_to_train_on_not_blamed_on_the_lr() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    let mut text = String::from("user_id,item_id,weight,datetime\n");
    for user in 0..20 {
        for (t, item) in ["a", "b", "c", "d"].iter().enumerate() {
            text.push_str(&format!("u{user},{item},0,{t}\n"));
        }
    }
    std::fs::write(&log, text).unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "n_blocks": 1,
            "session_max_len": 5, "epochs": 1}"#,
    )
    .unwrap();
    let out = dir.path().join("m");
    let (ok, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("every training interaction has weight 0 (20 sessions), so there is nothing to train on"),
        "{stderr}"
    );
    assert!(!stderr.contains("lr"), "{stderr}");
    assert!(!out.exists(), "nothing is saved");
}

#[test]
fn a_failed_weights_write_names_the_file_once_and_keeps_the_old_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let before = std::fs::read(model.join("weights.safetensors")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args([
            "fit",
            dir.path().join("s.json").to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--quiet",
        ])
        .env("RECBLOCKS_WRITE_FAILPOINT", "weights.safetensors")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/weights.safetensors: No space left on device"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(model.join("weights.safetensors")).unwrap(),
        before,
        "the old model is kept"
    );
    let (ok, stderr) = recblocks(&[
        "similar",
        model.to_str().unwrap(),
        "-k",
        "2",
        "--out",
        "/dev/null",
    ]);
    assert!(ok, "the old model still loads: {stderr}");
}

#[test]
fn a_cuda_graph_without_a_cuda_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "epochs": 1}"#,
    )
    .unwrap();
    let out = dir.path().join("m");
    for command in ["fit", "evaluate"] {
        let (ok, stderr) = recblocks(&[
            command,
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--cuda-graph",
            "--quiet",
        ]);
        assert!(!ok, "{command}");
        assert!(
            stderr.contains("--cuda-graph records CUDA graphs: it needs --device cuda"),
            "{command}: {stderr}"
        );
        assert!(!out.exists(), "{command}: a model directory was written");
    }
}
