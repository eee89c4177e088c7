//! The epoch loop (RecTools' Lightning `fit` with `TransformerLightningModule.training_step`):
//! shuffled batches from the data preparator, the objective's loss, backward, an Adam step;
//! validation and early stopping after each epoch. Progress (loss and sequences/s per batch, the
//! per-epoch log) goes to an [`EpochObserver`]; the library draws nothing itself.
//!
//! Reproducibility: initialisation, dropout (model stream) and shuffling, masking and negatives
//! (data stream) all draw from seeded streams whose states are saved with the model, so
//! `--resume` continues exactly where a run stopped.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use candle_core::{Device, Tensor};
use rand::Rng;
use recblocks_core::{
    components::{
        trainer::TrainerSettings, DataPreparator, NegativeSampler, Objective, SessionRef,
    },
    nn::host_targets::HostTargets,
    SharedRng,
};
use serde::{Deserialize, Serialize};

use crate::{
    assembly::AssembledModel,
    error::HostError,
    train::{
        adam::Adam,
        captured_step::CapturedSteps,
        observer::{BatchProgress, EpochInfo, EpochObserver},
        prepare::PreparedData,
        queued_steps::{ReadStep, StepQueue},
        rng_state::RngState,
        validation::{validate, ValInputs, ValResult},
    },
    Result,
};

/// Options of a fit that are not part of the spec.
#[derive(Clone, Default)]
pub struct FitOptions {
    /// Overrides the number of epochs (the total, counting epochs already done on resume).
    pub epochs: Option<usize>,
    /// Overrides the seed (recorded in the saved spec).
    pub seed: Option<u64>,
    /// Where a new model is built and trained (a resumed model stays where it was loaded).
    pub device: crate::device::DeviceSpec,
    /// Told about every epoch and batch, and given the run's messages; `None` (the default):
    /// nobody is, and the fit is silent.
    pub observer: Option<Arc<dyn EpochObserver>>,
    /// Record one training step as a CUDA graph and replay it for every full batch
    /// ([`crate::train::captured_step`]); on the CPU the same bookkeeping runs uncaptured.
    pub cuda_graph: bool,
}

impl FitOptions {
    /// The observer that hears about this fit, if any.
    pub(crate) fn active_observer(&self) -> Option<&dyn EpochObserver> {
        self.observer.as_deref()
    }
}

impl std::fmt::Debug for FitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitOptions")
            .field("epochs", &self.epochs)
            .field("seed", &self.seed)
            .field("device", &self.device)
            .field("cuda_graph", &self.cuda_graph)
            .field(
                "observer",
                &self.observer.as_ref().map(|_| "dyn EpochObserver"),
            )
            .finish()
    }
}

/// One epoch's figures, as written to `train_log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (weighted by batch size).
    pub train_loss: f64,
    /// Validation loss, when validation is configured.
    pub val_loss: Option<f64>,
    /// Validation Recall@k.
    pub val_recall: Option<f64>,
    /// Validation NDCG@k.
    pub val_ndcg: Option<f64>,
    /// Wall-clock seconds of the training part of the epoch.
    pub seconds: f64,
    /// Training sequences per second.
    pub sequences_per_second: f64,
    /// The median wall-clock milliseconds of the epoch's training steps, each timed from its
    /// batch in hand until the step is queued and the loss before it is read back (steps, and
    /// replays of a captured step, are queued one ahead of their loss reads, `queued_steps`; a
    /// warm-up step reads its own). On a GPU that read waits for the device, so in a run of
    /// steps this is a step's own time, without the epoch's start, the wait for collated batches
    /// or validation: the figure to set against a PyTorch step timed in a loop. `None` in a state
    /// saved before it was recorded.
    #[serde(default)]
    pub step_ms_median: Option<f64>,
}

/// The middle value of `values` (the upper one of an even count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied()
}

/// Early-stopping bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStoppingState {
    /// Best monitored value so far.
    pub best_value: f64,
    /// Epoch that reached it.
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub bad_epochs: usize,
}

/// What `--resume` needs besides weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub adam_step: u64,
    /// The model's stream (dropout).
    pub model_rng: RngState,
    /// The data stream (shuffling, masking, negatives).
    pub data_rng: RngState,
    /// Early-stopping state, when configured.
    pub early_stopping: Option<EarlyStoppingState>,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// Optimizer steps taken as replays of a captured step (`FitOptions::cuda_graph`: on a CUDA
    /// device each replayed the CUDA graph); 0 when none were (not asked for, or the capture
    /// failed and training went on uncaptured).
    #[serde(default)]
    pub captured_steps: u64,
}

/// Everything one training run uses.
pub struct TrainRun<'a> {
    /// The model being trained.
    pub model: &'a AssembledModel,
    /// Prepared sessions.
    pub data: &'a PreparedData,
    /// Batches.
    pub preparator: &'a dyn DataPreparator,
    /// Loss.
    pub objective: &'a dyn Objective,
    /// Negatives, when the loss needs them.
    pub sampler: Option<&'a dyn NegativeSampler>,
    /// Epochs, seed, early stopping, val k.
    pub settings: &'a TrainerSettings,
    /// The optimizer.
    pub adam: &'a mut Adam,
    /// The data stream.
    pub data_rng: &'a SharedRng,
    /// Per-epoch log (appended to).
    pub log: &'a mut Vec<EpochLog>,
    /// Early-stopping state and epoch count (updated).
    pub state: &'a mut TrainingState,
    /// Best weights seen, for early stopping (updated).
    pub best_weights: &'a mut Option<BTreeMap<String, Tensor>>,
    /// Told about progress.
    pub observer: &'a dyn EpochObserver,
    /// Capture one step and replay it ([`FitOptions::cuda_graph`]).
    pub cuda_graph: bool,
}

impl TrainRun<'_> {
    /// Trains until `state.epochs_done == settings.epochs` or early stopping.
    ///
    /// On the CPU the run goes to a thread pool of its own
    /// ([`training_pool`](crate::threads::training_pool)), so that its parallel calls split their
    /// work where they are made instead of waking another thread and sleeping.
    pub fn run(&mut self) -> Result<()> {
        match crate::threads::training_pool(&self.model.device) {
            Some(pool) => pool.install(|| self.run_epochs()),
            None => self.run_epochs(),
        }
    }

    /// [`run`](Self::run)'s loop over the epochs, on the thread it was called on.
    fn run_epochs(&mut self) -> Result<()> {
        let n_sessions = self.data.sessions.len();
        if n_sessions == 0 {
            return Err(HostError::TrainingData("no training session".into()));
        }
        let batch_size = self.model.spec.batch_size;
        let n_batches = n_sessions.div_ceil(batch_size);
        let mut captured = self.cuda_graph.then(CapturedSteps::new);
        while self.state.epochs_done < self.settings.epochs && !self.state.stopped_early {
            let info = EpochInfo {
                epoch: self.state.epochs_done + 1,
                epochs: self.settings.epochs,
                n_batches,
                val_k: self.settings.val_k,
            };
            let epoch = info.epoch;
            self.observer.epoch_started(&info);
            let started = Instant::now();
            let (loss_sum, seen, step_ms) =
                match self.train_epoch(&info, started, captured.as_mut()) {
                    Ok(sums) => sums,
                    Err(e) => {
                        self.observer.epoch_failed(&info, &e);
                        return Err(e);
                    }
                };
            let seconds = started.elapsed().as_secs_f64();
            self.observer.epoch_trained(&info);
            let val = self.validate_epoch()?;
            let entry = EpochLog {
                epoch,
                train_loss: loss_sum / seen.max(1) as f64,
                val_loss: val.map(|v| v.loss),
                val_recall: val.map(|v| v.recall),
                val_ndcg: val.map(|v| v.ndcg),
                seconds,
                sequences_per_second: seen as f64 / seconds.max(1e-9),
                step_ms_median: median(&step_ms),
            };
            self.observer.epoch_done(&info, &entry);
            self.log.push(entry);
            self.state.epochs_done = epoch;
            self.state.adam_step = self.adam.step_count();
            if let Some(c) = &mut captured {
                self.state.captured_steps += c.take_replays();
            }
            if let Some(v) = val {
                self.early_stopping(epoch, v)?;
            }
        }
        if self.state.stopped_early {
            self.restore_best()?;
        }
        Ok(())
    }

    /// One epoch's training batches; returns the batch-size-weighted loss sum, the number of
    /// sequences seen, and each step's wall-clock milliseconds (see [`EpochLog::step_ms_median`]).
    ///
    /// Uncaptured steps are queued one ahead of their loss reads
    /// ([`queued_steps`](super::queued_steps)): a batch's loss is reported after the next batch's
    /// step is queued, and the last one at the epoch's end.
    ///
    /// Batches are collated on a second thread, at most two ahead of the step that trains on
    /// them, in the epoch's order: the data stream (shuffling, masking, negatives) is drawn from
    /// by that thread alone during the epoch, in the same order as one thread would, so a seed
    /// gives the same batches.
    ///
    /// With `captured`, batches are collated on the CPU and copied into the captured step's
    /// buffers.
    fn train_epoch(
        &mut self,
        info: &EpochInfo,
        started: Instant,
        mut captured: Option<&mut CapturedSteps>,
    ) -> Result<(f64, usize, Vec<f64>)> {
        let order = self.epoch_order(self.data.sessions.len());
        let batch_size = self.model.spec.batch_size;
        let (sessions, preparator, sampler, data_rng) = (
            &self.data.sessions,
            self.preparator,
            self.sampler,
            self.data_rng,
        );
        let n_items = self.model.schema.n_items;
        let device = match captured {
            Some(_) => candle_core::Device::Cpu,
            None => self.model.device.clone(),
        };
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for chunk in order.chunks(batch_size) {
                    let refs: Vec<SessionRef<'_>> = chunk
                        .iter()
                        .map(|&i| SessionRef {
                            items: &sessions[i].items,
                            weights: &sessions[i].weights,
                        })
                        .collect();
                    // The positions with a target, found here on the CPU and handed to the
                    // objective with the batch (`host_targets`): it then reads nothing on the
                    // device, where a read would wait for the step still running.
                    let positions = |batch: &recblocks_core::batch::Batch| {
                        recblocks_core::nn::host_targets::positions_with_a_target(&batch.y)
                            .map_err(HostError::from)
                    };
                    // On a CUDA device the batch is collated on the CPU, its ids checked there
                    // (the backbone cannot read them on the device without stopping the host),
                    // then copied up. This thread's copies go to its own stream (candle uses the
                    // per-thread default stream): they must be done before the training thread,
                    // on another stream, reads the batch.
                    let batch = if device.is_cuda() {
                        preparator
                            .collate_train(&refs, n_items, sampler, data_rng, &Device::Cpu)
                            .map_err(HostError::from)
                            .and_then(|batch| {
                                super::captured_step::check_ids(&batch, n_items)?;
                                let targets = positions(&batch)?;
                                let batch = super::captured_step::to_device(&batch, &device)?;
                                device.synchronize()?;
                                Ok((batch, targets))
                            })
                    } else {
                        preparator
                            .collate_train(&refs, n_items, sampler, data_rng, &device)
                            .map_err(HostError::from)
                            .and_then(|batch| {
                                let targets = positions(&batch)?;
                                Ok((batch, targets))
                            })
                    }
                    .map(|(batch, targets)| (chunk.len(), batch, targets));
                    let failed = batch.is_err();
                    // A closed channel: the training side stopped (an error); so do we.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            let (mut loss_sum, mut seen) = (0.0f64, 0usize);
            let mut step_ms = Vec::new();
            let mut queue = StepQueue::new(&self.model.device);
            let mut report = |run: &Self, step: ReadStep| {
                loss_sum += step.loss as f64 * step.sessions as f64;
                seen += step.sessions;
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                run.observer.batch_done(
                    info,
                    &BatchProgress {
                        batch: step.batch + 1,
                        mean_loss: loss_sum / seen as f64,
                        sequences_per_second: seen as f64 / secs,
                    },
                );
            };
            for (b, collated) in rx.iter().enumerate() {
                let (len, batch, targets) = collated?;
                let step_started = Instant::now();
                // Captured steps check their losses as they read them.
                let read = match captured.as_deref_mut() {
                    Some(c) => c.step(self, &batch, &targets, info, b, len)?,
                    None => self
                        .queue_step(&batch, targets, &mut queue, info, b, len)?
                        .into_iter()
                        .collect(),
                };
                step_ms.push(step_started.elapsed().as_secs_f64() * 1e3);
                for step in read {
                    report(self, step);
                }
            }
            if let Some(c) = captured {
                if let Some(step) = c.finish(self, info)? {
                    report(self, step);
                }
            }
            if let Some(step) = queue.finish()? {
                self.check_read_loss(&step, info)?;
                report(self, step);
            }
            Ok((loss_sum, seen, step_ms))
        })
    }

    /// Queues one optimisation step on `batch` (the `b`-th of the epoch, from 0, of `sessions`
    /// sessions, whose positions with a target are `targets`), then reads the loss of the step
    /// queued before it and returns that step ([`queued_steps`](super::queued_steps)). Fails on
    /// a non-finite loss, naming its batch.
    fn queue_step(
        &mut self,
        batch: &recblocks_core::batch::Batch,
        targets: Vec<u32>,
        queue: &mut StepQueue,
        info: &EpochInfo,
        b: usize,
        sessions: usize,
    ) -> Result<Option<ReadStep>> {
        // Nodes that hold parameters write their gradients to the scope (nn::param_grads).
        let scope = recblocks_core::nn::ParamGradScope::enter();
        let loss = {
            let _targets = HostTargets::enter(targets.into());
            self.objective
                .train_loss(self.model.backbone.as_ref(), batch)?
        };
        // What the fused blocks noted during this forward pass, kept with the step: its loss is
        // checked after the next step's forward pass.
        let note = recblocks_core::nn::fused::take_non_finite_origin();
        // The backward pass starts from the scalar loss itself (a reshape of it would be one more
        // node, a zero-filled buffer and an add on a GPU). The guard and the read take a copy
        // without autograd history: it stays alive until the next step's read, and a tracked
        // one would keep this step's whole graph (the loss's saved gradients, the sessions) alive
        // with it.
        let read = loss
            .detach()
            .to_dtype(candle_core::DType::F32)?
            .reshape(1)?;
        let grads = scope.backward(&loss)?;
        let guard = queue.guard(&read)?;
        self.adam.step_guarded(&grads, &guard)?;
        let previous = queue.push(read, b, sessions, note)?;
        if let Some(step) = &previous {
            self.check_read_loss(step, info)?;
        }
        Ok(previous)
    }

    /// One optimisation step on `batch` (the `b`-th of the epoch, from 0); returns its loss.
    /// The captured step's ordinary steps (warm-ups, other shapes) take it: it reads the loss
    /// before it returns.
    pub(crate) fn train_step(
        &mut self,
        batch: &recblocks_core::batch::Batch,
        info: &EpochInfo,
        b: usize,
    ) -> Result<f32> {
        // Nodes that hold parameters write their gradients to the scope (nn::param_grads).
        let scope = recblocks_core::nn::ParamGradScope::enter();
        let loss = self
            .objective
            .train_loss(self.model.backbone.as_ref(), batch)?;
        if self.model.device.is_cuda() && self.adam.all_on_cuda() {
            // On a GPU the loss is read after the whole step is queued: reading it first would
            // leave the GPU idle while the host queues the backward pass. The update reads the
            // loss on the device and changes nothing unless it is finite, so a non-finite loss
            // still stops the run with the parameters as they were.
            // The backward pass starts from the scalar loss itself (a reshape of it would be one
            // more node, a zero-filled buffer and an add); the update and the read take the
            // reshaped copy.
            let read = loss.to_dtype(candle_core::DType::F32)?.reshape(1)?;
            let grads = scope.backward(&loss)?;
            self.adam.step_guarded(&grads, &read)?;
            let value = read.to_vec1::<f32>()?.first().copied().unwrap_or(f32::NAN);
            self.check_loss(value, info, b)?;
            return Ok(value);
        }
        let value = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        self.check_loss(value, info, b)?;
        let grads = scope.backward(&loss)?;
        self.adam.step(&grads)?;
        Ok(value)
    }

    /// Fails on a non-finite loss of a queued step, with what its forward pass noted.
    fn check_read_loss(&self, step: &ReadStep, info: &EpochInfo) -> Result<()> {
        if step.loss.is_finite() {
            return Ok(());
        }
        Err(HostError::NonFiniteLoss {
            epoch: info.epoch,
            batch: step.batch + 1,
            value: step.loss,
            origin: step
                .note
                .as_ref()
                .map(|o| format!("; first: {o}"))
                .unwrap_or_default(),
        })
    }

    /// Fails on a non-finite loss, naming where a fused block first saw non-finite values.
    /// The note is taken either way: it only matters for the step that failed.
    pub(crate) fn check_loss(&self, value: f32, info: &EpochInfo, b: usize) -> Result<()> {
        let step = ReadStep {
            batch: b,
            sessions: 0,
            loss: value,
            note: recblocks_core::nn::fused::take_non_finite_origin(),
        };
        self.check_read_loss(&step, info)
    }

    fn epoch_order(&self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if self.preparator.shuffle_train() {
            let mut rng = self.data_rng.lock();
            for i in (1..n).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
        }
        order
    }

    fn validate_epoch(&self) -> Result<Option<ValResult>> {
        if self.data.val_sessions.is_empty() {
            return Ok(None);
        }
        let inputs = ValInputs {
            sessions: &self.data.val_sessions,
            preparator: self.preparator,
            objective: self.objective,
            sampler: self.sampler,
            n_extra_tokens: self.data.n_extra_tokens,
            batch_size: self.model.spec.batch_size,
            k: self.settings.val_k,
        };
        Ok(Some(validate(self.model, &inputs, self.data_rng)?))
    }

    fn early_stopping(&mut self, epoch: usize, v: ValResult) -> Result<()> {
        let Some(es) = &self.settings.early_stopping else {
            return Ok(());
        };
        let (value, higher_is_better) = if es.monitor == "val_loss" {
            (v.loss, false)
        } else if es.monitor.starts_with("recall@") {
            (v.recall, true)
        } else if es.monitor.starts_with("ndcg@") {
            (v.ndcg, true)
        } else {
            return Err(HostError::Other(format!(
                "early stopping monitor `{}` is not one of val_loss, recall@k, ndcg@k",
                es.monitor
            )));
        };
        let improved = match &self.state.early_stopping {
            None => true,
            Some(s) if higher_is_better => value > s.best_value + es.min_delta,
            Some(s) => value < s.best_value - es.min_delta,
        };
        if improved {
            self.state.early_stopping = Some(EarlyStoppingState {
                best_value: value,
                best_epoch: epoch,
                bad_epochs: 0,
            });
            *self.best_weights = Some(snapshot(self.model)?);
        } else if let Some(s) = &mut self.state.early_stopping {
            s.bad_epochs += 1;
            if s.bad_epochs >= es.patience {
                self.state.stopped_early = true;
                self.observer.message(&format!(
                    "early stopping after epoch {epoch}: {} did not improve for {} epochs; \
                     restoring the weights of epoch {} ({} = {:.5})",
                    es.monitor, s.bad_epochs, s.best_epoch, es.monitor, s.best_value
                ));
            }
        }
        Ok(())
    }

    fn restore_best(&mut self) -> Result<()> {
        if let Some(best) = self.best_weights.as_ref() {
            let data = self
                .model
                .varmap
                .data()
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (name, var) in data.iter() {
                if let Some(t) = best.get(name) {
                    var.set(t)?;
                }
            }
        }
        Ok(())
    }
}

/// A copy of every parameter's current value.
pub fn snapshot(model: &AssembledModel) -> Result<BTreeMap<String, Tensor>> {
    let data = model
        .varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut out = BTreeMap::new();
    for (name, var) in data.iter() {
        out.insert(name.clone(), var.as_tensor().copy()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 4.0]), Some(4.0));
        assert_eq!(median(&[2.0, 8.0, 1.0, 9.0]), Some(8.0));
    }

    /// A training state saved before steps were timed loads, without a step time.
    #[test]
    fn an_epoch_log_without_a_step_time_loads() -> serde_json::Result<()> {
        let old = r#"{"epoch": 1, "train_loss": 7.1, "val_loss": null, "val_recall": null,
            "val_ndcg": null, "seconds": 0.5, "sequences_per_second": 1886.0}"#;
        let e: EpochLog = serde_json::from_str(old)?;
        assert_eq!((e.epoch, e.step_ms_median), (1, None));
        Ok(())
    }
}
