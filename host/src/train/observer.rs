//! Training progress as events: the epoch loop ([`crate::train::fit`]) tells an
//! [`EpochObserver`] when an epoch starts, after each batch, when the epoch's training part ends
//! or fails, and when the epoch is logged, and hands it the run's messages (early stopping). The
//! library draws and prints nothing itself; the `recblocks` CLI's observer draws the progress bar
//! and the per-epoch lines (RecTools: Lightning's progress bar and logger).

use crate::{error::HostError, train::fit::EpochLog};

/// The epoch an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochInfo {
    /// 1-based epoch.
    pub epoch: usize,
    /// Epochs of the run in total (counting epochs done before a resume).
    pub epochs: usize,
    /// Training batches in the epoch.
    pub n_batches: usize,
    /// The k of the validation metrics (`val recall@k`, `val ndcg@k`).
    pub val_k: usize,
}

/// Training progress within an epoch, after a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchProgress {
    /// 1-based batch just done.
    pub batch: usize,
    /// Mean training loss of the epoch so far (weighted by batch size).
    pub mean_loss: f64,
    /// Training sequences per second of the epoch so far.
    pub sequences_per_second: f64,
}

/// Receives the events of a training run. Every method does nothing by default; methods take
/// `&self` so that one observer can be shared (`Arc`), and implementations keep their state
/// behind a lock.
pub trait EpochObserver: Send + Sync {
    /// An epoch begins (before its first batch).
    fn epoch_started(&self, _epoch: &EpochInfo) {}

    /// A training batch was done (its loss backpropagated and the optimizer stepped).
    fn batch_done(&self, _epoch: &EpochInfo, _progress: &BatchProgress) {}

    /// The training part of the epoch is over; validation (if any) follows.
    fn epoch_trained(&self, _epoch: &EpochInfo) {}

    /// Training failed during the epoch with `error` (a non-finite loss, or a failed batch);
    /// `fit` returns the error next.
    fn epoch_failed(&self, _epoch: &EpochInfo, _error: &HostError) {}

    /// The epoch is done and logged (with its validation figures, when validation is
    /// configured).
    fn epoch_done(&self, _epoch: &EpochInfo, _log: &EpochLog) {}

    /// A message about the run for the user (e.g. that early stopping ended it).
    fn message(&self, _text: &str) {}
}

/// An observer that ignores every event: what `fit` reports to when given none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl EpochObserver for NoopObserver {}
