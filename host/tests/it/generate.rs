//! `recblocks generate`: the written CSV reads back as exactly the synthetic log of the given
//! size and seed, is reproducible, and bad sizes exit non-zero with a message.

use std::{path::Path, process::Command};

use recblocks::data::{
    generate_synthetic, read_interactions, ColumnNames, Interactions, ReadOptions, SyntheticConfig,
};

/// Runs `recblocks generate FLAGS --out OUT` (flags split on whitespace): (success, stderr).
fn generate(flags: &str, out: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .arg("generate")
        .args(flags.split_whitespace())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn read(path: &Path) -> Interactions {
    let (log, skipped) =
        read_interactions(path, &ColumnNames::default(), &ReadOptions::default()).unwrap();
    assert_eq!(skipped, 0);
    log
}

#[test]
fn generate_writes_the_synthetic_log_of_the_given_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.csv");
    let flags = "--users 30 --items 25 --len 7 --seed 5";
    let (ok, stderr) = generate(flags, &path);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("210 interactions"), "{stderr}");
    let log = read(&path);
    assert_eq!(log.len(), 30 * 7);
    assert_eq!(log.n_users(), 30);
    let expected = generate_synthetic(&SyntheticConfig {
        n_users: 30,
        n_items: 25,
        min_len: 7,
        max_len: 7,
        seed: 5,
        ..SyntheticConfig::default()
    })
    .unwrap();
    assert_eq!(log, expected);

    // Same flags, same bytes; another seed, another log.
    let again = dir.path().join("again.csv");
    let (ok, stderr) = generate(&format!("{flags} --quiet"), &again);
    assert!(ok && stderr.is_empty(), "{stderr}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
    let (ok, _) = generate("--users 30 --items 25 --len 7 --seed 6 --quiet", &again);
    assert!(ok);
    assert_ne!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn generate_length_range_and_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("range.csv");
    let (ok, stderr) = generate("--users 40 --items 10 --len 2 --max-len 5 --quiet", &path);
    assert!(ok, "{stderr}");
    let n = read(&path).len();
    assert!((40 * 2..=40 * 5).contains(&n), "{n}");

    for bad in [
        "--users 0",
        "--items 3",
        "--len 5 --max-len 4",
        "--follow 1.5",
    ] {
        let (ok, stderr) = generate(bad, &path);
        assert!(!ok, "{bad} succeeded");
        assert!(
            stderr.contains("must") || stderr.contains("need"),
            "{bad}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{bad}: {stderr}");
    }
    // --max-len needs --len.
    let (ok, _) = generate("--max-len 4", &path);
    assert!(!ok);
}
