//! How many CPU threads training, evaluation and ranking use (`--threads N`).
//!
//! Three pools do the work: rayon's global pool (the matmuls through `gemm`, the fused loss,
//! norm and softmax kernels, and ranking), a rayon pool of the same size that a training run on
//! the CPU makes for itself and runs on ([`training_pool`]), and candle's own spinning barrier
//! pool for its element-wise ops. rayon's and candle's pools size themselves from environment
//! variables the first time they are used, so this must run before any tensor is created.
//!
//! candle's barrier pool spins while it waits for its workers, and pins them to cores; when the
//! machine is busy with anything else a descheduled worker stalls every element-wise op (measured:
//! a training step twice as slow on a loaded 2-core machine). Since the heavy ops are fused
//! kernels on rayon, recblocks runs candle's element-wise ops on the calling thread unless
//! `CANDLE_NUM_THREADS` says otherwise.

/// The thread settings applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// rayon's global pool (matmuls, fused kernels, ranking).
    pub rayon: usize,
    /// candle's element-wise pool.
    pub candle: usize,
    /// The count asked for, when it was above [`max_threads`] and was cut to it.
    pub capped_from: Option<usize>,
}

/// The most threads a pool gets: four per available core (more only adds switching; a huge count
/// spawned threads until the machine gave out).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the pools' sizes: `threads` for rayon (default: `RAYON_NUM_THREADS`, else every core),
/// and `CANDLE_NUM_THREADS` (default 1) for candle's element-wise ops. Call once, first thing.
pub fn configure(threads: Option<usize>) -> crate::Result<Threads> {
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    if threads == Some(0) {
        return Err(crate::HostError::Other(
            "--threads must be at least 1".to_string(),
        ));
    }
    let asked = threads
        .or_else(|| from_env("RAYON_NUM_THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let max = max_threads();
    let rayon = asked.min(max);
    let capped_from = (asked > max).then_some(asked);
    let candle = from_env("CANDLE_NUM_THREADS").unwrap_or(1).min(max);
    // Single-threaded at this point (called before any pool exists), so setting the variables
    // that candle and gemm read later is sound.
    std::env::set_var("RAYON_NUM_THREADS", rayon.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", candle.to_string());
    // Fails only if the global pool already exists; it then keeps its size.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon)
        .build_global();
    Ok(Threads {
        rayon,
        candle,
        capped_from,
    })
}

/// A pool of its own for one training run on the CPU, of as many threads as rayon's global pool,
/// on whose first thread the run's loop then goes (`TrainRun::run`). `None` on other devices,
/// where the caller is already a rayon thread, or where the threads could not be started (the
/// run then stays on the caller's thread, as before).
///
/// A training step makes a few hundred parallel calls (products, fused kernels, Adam). Made from
/// a thread outside rayon, each one hands its work to the pool and puts the caller to sleep until
/// it is done: two thread switches a call, a large share of a step when the model is small. Made
/// from a thread of the pool, a call splits its work there and the caller works on its share.
/// The pool is the run's own, not the global one: a thread of the global pool that waits for its
/// share could take up a whole other training started beside it (the library API and the tests
/// run several at once), and that training's per-thread state (its gradient scope, its target
/// positions) would then sit on top of this one's.
///
/// Its threads get the main thread's usual stack (8 MiB): the backward pass walks the autograd
/// graph recursively, and rayon's default of 2 MiB is less than the caller had before.
pub fn training_pool(device: &candle_core::Device) -> Option<rayon::ThreadPool> {
    if !device.is_cpu() || rayon::current_thread_index().is_some() {
        return None;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(8 << 20)
        .thread_name(|i| format!("recblocks-train-{i}"))
        .build()
        .map_err(|e| tracing::debug!("training stays on the caller's thread: {e}"))
        .ok()
}
