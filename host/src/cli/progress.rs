//! The CLI's training observer: an indicatif progress bar per epoch on a terminal (loss and
//! sequences/s as it goes), one line per epoch on stderr, and the run's messages through the log
//! (what `recblocks fit` and `evaluate` print while training, unless `--quiet`).

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex, MutexGuard},
};

use indicatif::{ProgressBar, ProgressStyle};
use recblocks::{
    error::HostError,
    train::{BatchProgress, EpochInfo, EpochLog, EpochObserver},
};

/// Draws training progress on stderr.
#[derive(Debug, Default)]
pub struct TerminalProgress {
    /// The bar of the epoch in progress (hidden when stderr is not a terminal).
    bar: Mutex<Option<ProgressBar>>,
}

impl TerminalProgress {
    /// The observer of a fit: this one, or none when `quiet`.
    pub fn for_fit(quiet: bool) -> Option<Arc<dyn EpochObserver>> {
        if quiet {
            None
        } else {
            Some(Arc::new(TerminalProgress::default()))
        }
    }

    fn bar(&self) -> MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EpochObserver for TerminalProgress {
    fn epoch_started(&self, epoch: &EpochInfo) {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(epoch.n_batches as u64);
            let style = ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches  {msg}  ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{}/{}", epoch.epoch, epoch.epochs));
            bar
        } else {
            ProgressBar::hidden()
        };
        *self.bar() = Some(bar);
    }

    fn batch_done(&self, _epoch: &EpochInfo, p: &BatchProgress) {
        if let Some(bar) = self.bar().as_ref() {
            bar.set_message(format!(
                "loss {:.4}  {:.0} seq/s",
                p.mean_loss, p.sequences_per_second
            ));
            bar.inc(1);
        }
    }

    fn epoch_trained(&self, _epoch: &EpochInfo) {
        if let Some(bar) = self.bar().take() {
            bar.finish_and_clear();
        }
    }

    fn epoch_failed(&self, _epoch: &EpochInfo, error: &HostError) {
        // A non-finite loss leaves the bar where it stopped; any other error drops it (indicatif
        // then draws it finished).
        if let Some(bar) = self.bar().take() {
            if matches!(error, HostError::NonFiniteLoss { .. }) {
                bar.abandon();
            }
        }
    }

    fn epoch_done(&self, epoch: &EpochInfo, e: &EpochLog) {
        let mut line = format!(
            "epoch {}/{}: train_loss {:.5}, {:.1} s, {:.0} seq/s",
            e.epoch, epoch.epochs, e.train_loss, e.seconds, e.sequences_per_second
        );
        if let (Some(l), Some(r), Some(n)) = (e.val_loss, e.val_recall, e.val_ndcg) {
            let k = epoch.val_k;
            line.push_str(&format!(
                ", val_loss {l:.5}, val recall@{k} {r:.4}, val ndcg@{k} {n:.4}"
            ));
        }
        eprintln!("{line}");
    }

    fn message(&self, text: &str) {
        tracing::info!("{text}");
    }
}
