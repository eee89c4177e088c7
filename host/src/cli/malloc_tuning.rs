//! Keeps freed memory in the process instead of handing it back to the kernel after every tensor.
//!
//! glibc's `malloc` serves a block of 128 KiB or more (a threshold it raises adaptively up to
//! 32 MiB) with a fresh `mmap` and unmaps it on `free`. A training step allocates and frees
//! hundreds of tensors of that size (candle gives every op and every backward node a new buffer),
//! so the kernel faults in and zeroes fresh pages all the time: 450,000–1,000,000 page faults in
//! three ML-100k SASRec epochs. With the mmap and trim thresholds raised, freed blocks stay in
//! malloc's heap and are reused: about 90,000 faults and 10–20% less time per epoch, for a few
//! percent more peak memory (BENCHMARKS.md).
//!
//! glibc reads these settings (`GLIBC_TUNABLES`) only when a process starts, and setting them from
//! inside needs `mallopt`, an `unsafe` call. So the binary re-executes itself once, at start-up,
//! with `GLIBC_TUNABLES` extended; a `GLIBC_TUNABLES` that already sets the mmap threshold is
//! respected as it is, and `RECBLOCKS_MALLOC_TUNING=0` turns this off. Other C libraries ignore
//! the variable; the re-execution happens only on glibc targets.

/// The environment variable that turns the re-execution off when set to `0`.
pub const OPT_OUT_ENV: &str = "RECBLOCKS_MALLOC_TUNING";

/// The malloc settings added: no `mmap` below 1 GiB, no trimming below 4 GiB.
const TUNABLES: &str =
    "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296";

/// The `GLIBC_TUNABLES` value to run with, given the current one; `None` when it already sets the
/// mmap threshold (the user's choice, or this process was re-executed already).
pub fn tunables_value(current: Option<&str>) -> Option<String> {
    match current {
        Some(value) if value.contains("glibc.malloc.mmap_threshold") => None,
        Some(value) if !value.trim().is_empty() => Some(format!("{value}:{TUNABLES}")),
        _ => Some(TUNABLES.to_string()),
    }
}

/// Re-executes this binary with the malloc settings when they are missing. Returns only when it
/// does not (already tuned, turned off, another C library, or the exec failed: then the run goes
/// on untuned).
pub fn reexec_with_malloc_tuning() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        if std::env::var_os(OPT_OUT_ENV).is_some_and(|v| v == "0") {
            return;
        }
        let current = std::env::var("GLIBC_TUNABLES").ok();
        let Some(value) = tunables_value(current.as_deref()) else {
            return;
        };
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` returns only on failure; the run then goes on in this process, untuned.
        let _ = command.args(args).env("GLIBC_TUNABLES", value).exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_settings_once_and_keeps_the_users() {
        assert_eq!(tunables_value(None).as_deref(), Some(TUNABLES));
        assert_eq!(tunables_value(Some("")).as_deref(), Some(TUNABLES));
        assert_eq!(
            tunables_value(Some("glibc.malloc.tcache_count=0")),
            Some(format!("glibc.malloc.tcache_count=0:{TUNABLES}"))
        );
        // Already re-executed (or the user chose a threshold): nothing to do.
        assert_eq!(tunables_value(Some(TUNABLES)), None);
        assert_eq!(
            tunables_value(Some("glibc.malloc.mmap_threshold=65536")),
            None
        );
    }
}
