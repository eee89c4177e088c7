//! Training steps recorded once and replayed (`FitOptions::cuda_graph`, `fit --cuda-graph`), as
//! `torch.cuda.graph` does for a PyTorch step: on a CUDA device the whole step (forward, backward,
//! Adam) is captured as one CUDA graph, and every batch of that shape replays it. Between
//! replays the host only copies the batch, the step's dropout keys and Adam's coefficients into
//! buffers that stay where they are, and reads a loss back. The rules a captured step follows
//! are those of [`recblocks_core::nn::capture`].
//!
//! As with uncaptured steps (`queued_steps`), a replay's loss is read after the next replay of
//! its shape is queued: it is copied into page-locked memory as the replay is queued, so the host
//! writes the next batch and queues the next replay while the GPU runs this one. The next batch's
//! writes are ordered on the stream after this replay, which has read its batch by then. The
//! update of a replay is guarded by its loss and the loss of the replay before it (kept in the
//! loss buffer, not yet read on the host): a non-finite loss blocks its own update and the next
//! one, and the host stops at its read. Any other step (a warm-up, a capture, another shape's
//! step, the epoch's end) reads the unread loss first.
//!
//! Each batch shape goes through the phases on its own, up to [`SHAPES`] shapes: the full
//! batches, and an epoch's last, shorter batch (the same size every epoch, so its own capture
//! replays from the third epoch on; left uncaptured it would be the one launch-bound step of
//! every epoch). Phases: [`WARMUP_STEPS`] ordinary steps under static shapes (they fill candle's
//! cache of the constant uploads its ops make, load every kernel, and note which stream each
//! dropout draws from), one capture, then replays. A batch of yet another shape takes an
//! ordinary step. Every step trains on its batch exactly once, and a replay draws the keys an
//! ordinary step would draw, in the same order, so training follows the same course as without
//! capture (to float rounding: a step with static shapes may score positions without a target
//! too, with weight 0). If a capture fails, that shape's batches go on with ordinary steps and the
//! observer is told why.
//!
//! The positions with a target go in buffers of a fixed length too ([`FixedTargets`]), so that
//! the step scores those alone, as an uncaptured step does, rather than every position of the
//! batch: their capacity is the first batch's count with a quarter more room, rounded up to 64
//! (`target_capacity`), and a batch with more takes an ordinary step. Where that capacity would
//! be the whole batch (long sessions with a target at almost every position, as SASRec's on
//! ML-100k), the step scores every position and there are no such buffers.
//!
//! On the CPU nothing is captured: the same phases run, and each "replay" runs the step directly
//! with its keys drawn ahead as a replay's are. That is how the bookkeeping is tested without a
//! GPU.

use candle_core::{DType, Device, Tensor};
use recblocks_core::{
    batch::Batch,
    nn::{
        capture::{draw_keys, KeyTape, StaticShapes},
        host_targets::{FixedTargets, HostTargets},
    },
    SharedRng,
};

use crate::{error::HostError, train::observer::EpochInfo, Result};

use super::{fit::TrainRun, queued_steps::ReadStep};

/// Ordinary steps before the capture, per batch shape.
pub const WARMUP_STEPS: usize = 2;

/// Batch shapes that get a captured step: the first two seen (the full batches', and the
/// epoch's last, shorter batch's). Each holds its buffers and its graph's memory (about one
/// step's peak) while training runs.
pub const SHAPES: usize = 2;

/// Where the captured path of one batch shape stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This many warm-up steps done.
    Warmup(usize),
    /// The next batch of the shape is captured.
    Capture,
    /// Batches of the shape replay the capture.
    Replay,
    /// Captured steps were abandoned for the shape; its steps are ordinary.
    Off,
}

/// The buffers a captured step reads and writes, on the training device (the keys, coefficients
/// and loss only where a graph replays).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Buffers {
    /// The batch the step trains on (`x`, `y`, `yw`, negatives), refilled before each step.
    batch: Batch,
    /// The replayed step's dropout keys, u64 as (low, high) u32 pairs.
    keys: Tensor,
    /// Adam's step coefficients (8 f32).
    coefficients: Tensor,
    /// The step's loss, written by each replay (the guard of the next replay's update reads it
    /// first).
    loss: Tensor,
}

/// The captured path's state over one training run.
pub struct CapturedSteps {
    /// One per batch shape seen, at most [`SHAPES`].
    shapes: Vec<ShapeSteps>,
    /// The last replay, when its loss is not read yet.
    pending: Option<PendingReplay>,
    /// Page-locked slots for replays' losses (on a CUDA device, made at the first replay).
    #[cfg(feature = "cuda")]
    reads: Option<recblocks_core::nn::cuda::loss_reads::LossReads>,
}

/// A replay whose loss the host has not taken yet.
struct PendingReplay {
    /// Its batch shape (an index into [`CapturedSteps::shapes`]).
    shape: usize,
    /// Its batch: the index in the epoch (from 0) and the sessions.
    batch: usize,
    sessions: usize,
    loss: ReplayLoss,
}

/// A replay's loss: read already (and checked), or a copy on its way to the host.
enum ReplayLoss {
    Read(f32),
    #[cfg(feature = "cuda")]
    Queued(recblocks_core::nn::cuda::loss_reads::QueuedLoss),
}

/// What one step of a shape did.
enum Stepped {
    /// An ordinary step (a warm-up, or the shape's steps are uncaptured): its loss, read.
    Read(f32),
    /// A replay (after the capture, the first one): its loss.
    Replayed(ReplayLoss),
}

/// The captured path of the batches of one shape.
struct ShapeSteps {
    phase: Phase,
    /// Replays since [`CapturedSteps::take_replays`] was last called.
    replays: u64,
    buffers: Buffers,
    /// The buffers of the positions with a target ([`target_capacity`] slots), refilled before
    /// each step; `None`: the step scores every position.
    targets: Option<FixedTargets>,
    /// The stream of each dropout draw of a step, in order.
    streams: Vec<SharedRng>,
    #[cfg(feature = "cuda")]
    graph: Option<recblocks_core::nn::cuda::graph::StepGraph>,
}

impl Default for CapturedSteps {
    fn default() -> Self {
        Self::new()
    }
}

impl CapturedSteps {
    /// Nothing warmed up or captured yet.
    pub fn new() -> Self {
        CapturedSteps {
            shapes: Vec::new(),
            pending: None,
            #[cfg(feature = "cuda")]
            reads: None,
        }
    }

    /// The steps replayed since the last call (counted into `TrainingState::captured_steps`).
    pub fn take_replays(&mut self) -> u64 {
        self.shapes
            .iter_mut()
            .map(|s| std::mem::take(&mut s.replays))
            .sum()
    }

    /// One optimisation step on `batch` (the `b`-th of the epoch, from 0, of `sessions`
    /// sessions, whose positions with a target are `targets`), collated on the CPU; returns the
    /// steps whose losses became known, in order: the replay before it, this step, both or
    /// neither (a replay's loss is read after the next replay of its shape is queued, see the
    /// module's comment).
    pub(crate) fn step(
        &mut self,
        run: &mut TrainRun<'_>,
        batch: &Batch,
        targets: &[u32],
        info: &EpochInfo,
        b: usize,
        sessions: usize,
    ) -> Result<Vec<ReadStep>> {
        let device = run.model.device.clone();
        // Batches come collated on the CPU; on a GPU no step reads its ids there.
        check_ids(batch, run.model.schema.n_items)?;
        let known = self
            .shapes
            .iter()
            .position(|s| fits(&s.buffers.batch, batch));
        let slot = match known {
            Some(i) => Some(i),
            None if self.shapes.len() < SHAPES => {
                self.shapes.push(ShapeSteps::new(batch, targets, &device)?);
                Some(self.shapes.len() - 1)
            }
            None => None,
        };
        // A batch with more positions with a target than its shape's buffers hold takes an
        // ordinary step.
        let slot = slot.filter(|&i| self.shapes[i].holds(targets));
        let mut read = Vec::new();
        // Only a replay of the same shape may be queued behind an unread replay: its update's
        // guard reads that replay's loss from the shape's loss buffer.
        let replays_behind = |p: &PendingReplay| {
            slot == Some(p.shape) && self.shapes[p.shape].phase == Phase::Replay
        };
        if !self.pending.as_ref().is_some_and(replays_behind) {
            read.extend(self.finish(run, info)?);
        }
        let stepped = match slot {
            Some(i) => {
                #[cfg(feature = "cuda")]
                if self.reads.is_none() && self.shapes[i].phase != Phase::Off {
                    if let Device::Cuda(dev) = &device {
                        if !super::queued_steps::plain_reads() {
                            self.reads =
                                Some(recblocks_core::nn::cuda::loss_reads::LossReads::new(dev)?);
                        }
                    }
                }
                #[cfg(feature = "cuda")]
                let reads = self.reads.as_mut();
                #[cfg(not(feature = "cuda"))]
                let reads = None;
                self.shapes[i].step(run, batch, targets, info, b, reads)?
            }
            None => Stepped::Read(ordinary_step(
                run,
                &to_device(batch, &device)?,
                targets,
                info,
                b,
            )?),
        };
        match stepped {
            Stepped::Read(loss) => read.push(ReadStep {
                batch: b,
                sessions,
                loss,
                note: None,
            }),
            Stepped::Replayed(loss) => {
                let replay = PendingReplay {
                    shape: slot.unwrap_or_default(),
                    batch: b,
                    sessions,
                    loss,
                };
                if let Some(before) = self.pending.replace(replay) {
                    read.push(self.take(run, before, info)?);
                }
            }
        }
        Ok(read)
    }

    /// Reads the loss of the last replay, if it is not read yet (the epoch's end, or before a
    /// step that may not be queued behind it).
    pub(crate) fn finish(
        &mut self,
        run: &TrainRun<'_>,
        info: &EpochInfo,
    ) -> Result<Option<ReadStep>> {
        match self.pending.take() {
            Some(p) => self.take(run, p, info).map(Some),
            None => Ok(None),
        }
    }

    /// Waits for `p`'s loss (checked: a non-finite one fails, naming its batch).
    fn take(&self, run: &TrainRun<'_>, p: PendingReplay, info: &EpochInfo) -> Result<ReadStep> {
        #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
        let loss = match p.loss {
            ReplayLoss::Read(v) => v,
            #[cfg(feature = "cuda")]
            ReplayLoss::Queued(q) => {
                let reads = self.reads.as_ref().ok_or_else(|| {
                    HostError::Other("a replay's loss was queued with no slots to read".into())
                })?;
                let v = reads.take(q)?;
                run.check_loss(v, info, p.batch)?;
                v
            }
        };
        let _ = (run, info);
        Ok(ReadStep {
            batch: p.batch,
            sessions: p.sessions,
            loss,
            note: None,
        })
    }
}

impl ShapeSteps {
    /// Nothing warmed up for batches shaped like `batch` (whose positions with a target are
    /// `targets`); their buffers on `device`.
    fn new(batch: &Batch, targets: &[u32], device: &Device) -> Result<Self> {
        let positions = batch.y.elem_count();
        let targets = target_capacity(targets.len(), positions)
            .map(|capacity| FixedTargets::zeros(capacity, device))
            .transpose()?;
        Ok(ShapeSteps {
            phase: Phase::Warmup(0),
            replays: 0,
            buffers: Buffers::new(batch, device)?,
            targets,
            streams: Vec::new(),
            #[cfg(feature = "cuda")]
            graph: None,
        })
    }

    /// Whether the buffers of the positions with a target hold `targets` (always, where the
    /// step scores every position).
    fn holds(&self, targets: &[u32]) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|t| targets.len() <= t.capacity())
    }

    /// One step on `batch` (of this shape, its positions with a target `targets`, which the
    /// buffers hold): copied into the buffers, then a warm-up step, the capture and its first
    /// replay, a replay, or an ordinary step, as the phase says. A replay's loss goes into
    /// `reads` where given (read later), else it is read now.
    fn step(
        &mut self,
        run: &mut TrainRun<'_>,
        batch: &Batch,
        targets: &[u32],
        info: &EpochInfo,
        b: usize,
        reads: Option<&mut LossSlots>,
    ) -> Result<Stepped> {
        let fixed = self.buffers.batch.clone();
        upload(&fixed, batch)?;
        if let Some(buffers) = &self.targets {
            upload_targets(buffers, batch, targets)?;
        }
        Ok(match self.phase {
            Phase::Warmup(done) => Stepped::Read(self.warm_up(run, &fixed, info, b, done)?),
            Phase::Capture => match self.capture(run, &fixed) {
                Ok(()) => {
                    self.phase = Phase::Replay;
                    Stepped::Replayed(self.replay(run, &fixed, info, b, reads)?)
                }
                Err(e) => {
                    self.turn_off(
                        run,
                        &format!("the training step could not be captured: {e}"),
                    );
                    Stepped::Read(ordinary_step(run, &fixed, targets, info, b)?)
                }
            },
            Phase::Replay => Stepped::Replayed(self.replay(run, &fixed, info, b, reads)?),
            Phase::Off => Stepped::Read(ordinary_step(run, &fixed, targets, info, b)?),
        })
    }

    fn turn_off(&mut self, run: &TrainRun<'_>, why: &str) {
        self.phase = Phase::Off;
        #[cfg(feature = "cuda")]
        {
            self.graph = None;
        }
        let rows = self.buffers.batch.x.dims().first().copied().unwrap_or(0);
        run.observer.message(&format!(
            "{why}; batches of {rows} sequences go on with uncaptured steps"
        ));
    }

    /// An ordinary step under static shapes, noting the streams its dropouts draw from.
    fn warm_up(
        &mut self,
        run: &mut TrainRun<'_>,
        fixed: &Batch,
        info: &EpochInfo,
        b: usize,
        done: usize,
    ) -> Result<f32> {
        let (value, tape) = {
            let _static = StaticShapes::enter();
            #[cfg(feature = "cuda")]
            let _uploads = match &run.model.device {
                Device::Cuda(dev) => Some(
                    recblocks_core::nn::cuda::graph::ConstantUploads::enable(dev),
                ),
                _ => None,
            };
            let _targets = self.targets.as_ref().map(FixedTargets::enter);
            KeyTape::counting().run(|| run.train_step(fixed, info, b))
        };
        let value = value?;
        let streams = tape.streams();
        let same = streams.len() == self.streams.len()
            && streams
                .iter()
                .zip(&self.streams)
                .all(|(a, b)| a.same_stream(b));
        if done > 0 && !same {
            self.turn_off(
                run,
                &format!(
                    "warm-up steps drew {} and {} dropout masks, so no step can be replayed",
                    self.streams.len(),
                    streams.len()
                ),
            );
            return Ok(value);
        }
        self.streams = streams.to_vec();
        self.phase = if done + 1 >= WARMUP_STEPS {
            Phase::Capture
        } else {
            Phase::Warmup(done + 1)
        };
        Ok(value)
    }

    /// Records the step on `fixed` (a CUDA device); nothing runs until the first replay. On the
    /// CPU there is nothing to record.
    fn capture(&mut self, run: &mut TrainRun<'_>, fixed: &Batch) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = &run.model.device {
            use recblocks_core::nn::cuda::graph;
            let bufs = &self.buffers;
            let (keys, coefficients, loss_buf) = (&bufs.keys, &bufs.coefficients, &bufs.loss);
            let n_keys = self.streams.len();
            if n_keys > KEY_CAPACITY {
                return Err(HostError::Other(format!(
                    "the step draws {n_keys} dropout masks; a captured step holds at most \
                     {KEY_CAPACITY}"
                )));
            }
            let base = graph::address(keys)?;
            // The graph's temporaries come from the device's graph memory, not from the pool the
            // warm-up steps used, which keeps what it reserved (`nn::cuda::allocator`): give the
            // unused part back first, as the pool did at every synchronisation before.
            recblocks_core::nn::cuda::memory::give_back_unused(dev)?;
            // The update guard's ops (below) are the only ones the warm-up steps do not run:
            // run them once here, so that their kernels' modules are loaded before the capture
            // (loading a module while capturing needs a recent driver).
            (&loss_buf.affine(0.0, 0.0)? + loss_buf)?;
            let _uploads = graph::ConstantUploads::enable(dev);
            let _static = StaticShapes::enter();
            // Everything the body creates is dropped inside it, before the capture ends: the
            // graph then frees its own temporaries on every replay. Dropped without `end` (a
            // panic), the capture ends itself.
            let capture = graph::begin_capture(dev)?;
            // Each part names itself in an error: an op that cannot be captured fails where it
            // is called, with candle's or the driver's message.
            let part = |what: &str, e: &dyn std::fmt::Display| {
                HostError::Other(format!("in the step's {what}: {e}"))
            };
            let targets = self.targets.as_ref();
            let (body, tape) = KeyTape::slots(base, n_keys).run(|| -> Result<()> {
                let _targets = targets.map(FixedTargets::enter);
                let scope = recblocks_core::nn::ParamGradScope::enter();
                let loss = run
                    .objective
                    .train_loss(run.model.backbone.as_ref(), fixed)
                    .map_err(|e| part("forward pass and loss", &e))?;
                let value = loss.detach().to_dtype(DType::F32)?.reshape(1)?;
                // The guard: this loss plus 0 times the loss buffer, which still holds the last
                // replay's loss (0 before the first): non-finite when either is. The host reads
                // that loss only after this replay is queued.
                let guard =
                    (&value + loss_buf.affine(0.0, 0.0)?).map_err(|e| part("update guard", &e))?;
                loss_buf
                    .slice_set(&value, 0, 0)
                    .map_err(|e| part("loss copy", &e))?;
                let grads = scope
                    .backward(&loss)
                    .map_err(|e| part("backward pass", &e))?;
                // The update reads the guard first and leaves everything as it was when it is not
                // finite, as an uncaptured step's does; the host reports the loss when it reads it.
                run.adam
                    .step_reading_coefficients(&grads, coefficients, Some(&guard))
                    .map_err(|e| part("Adam update", &e))?;
                Ok(())
            });
            let recorded = capture.end();
            body?;
            tape.finish().map_err(HostError::Other)?;
            self.graph = Some(recorded?);
            return Ok(());
        }
        let _ = (run, fixed);
        Ok(())
    }

    /// One replay of the captured step on `fixed`: the next keys and coefficients written to
    /// their buffers, the graph queued, its loss copied into `reads` (or read back at once
    /// without). On the CPU: the step run directly with the keys drawn ahead, its loss read.
    fn replay(
        &mut self,
        run: &mut TrainRun<'_>,
        fixed: &Batch,
        info: &EpochInfo,
        b: usize,
        reads: Option<&mut LossSlots>,
    ) -> Result<ReplayLoss> {
        let keys = draw_keys(&self.streams);
        let coefficients = run.adam.advance();
        self.replays += 1;
        #[cfg(feature = "cuda")]
        if let (Some(graph), bufs) = (&self.graph, &self.buffers) {
            use super::write_in_place::{write, HostValues};
            if !keys.is_empty() {
                let pairs: Vec<u32> = keys
                    .iter()
                    .flat_map(|k| [*k as u32, (*k >> 32) as u32])
                    .collect();
                // The first keys of the buffer (it has room for more).
                write(
                    &bufs.keys.narrow(0, 0, pairs.len())?,
                    HostValues::U32(&pairs),
                )?;
            }
            write(&bufs.coefficients, HostValues::F32(&coefficients[..]))?;
            graph.replay()?;
            if let Some(reads) = reads {
                return Ok(ReplayLoss::Queued(reads.queue(&bufs.loss)?));
            }
            let value = bufs
                .loss
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(f32::NAN);
            run.check_loss(value, info, b)?;
            return Ok(ReplayLoss::Read(value));
        }
        let _ = (coefficients, reads);
        let (out, tape) = {
            let _static = StaticShapes::enter();
            let _targets = self.targets.as_ref().map(FixedTargets::enter);
            KeyTape::given(keys).run(|| -> Result<f32> {
                let scope = recblocks_core::nn::ParamGradScope::enter();
                let loss = run
                    .objective
                    .train_loss(run.model.backbone.as_ref(), fixed)?;
                let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                run.check_loss(value, info, b)?;
                let grads = scope.backward(&loss)?;
                run.adam.step_counted(&grads)?;
                Ok(value)
            })
        };
        let value = out?;
        tape.finish().map_err(HostError::Other)?;
        Ok(ReplayLoss::Read(value))
    }
}

impl Buffers {
    /// Buffers shaped like `batch`, on `device`.
    fn new(batch: &Batch, device: &Device) -> Result<Self> {
        let like = |t: &Tensor| Tensor::zeros(t.shape(), t.dtype(), device);
        Ok(Buffers {
            batch: Batch {
                x: like(&batch.x)?,
                y: like(&batch.y)?,
                yw: like(&batch.yw)?,
                negatives: batch.negatives.as_ref().map(like).transpose()?,
            },
            // Room for the keys of every dropout of a step: allocated before the count is known
            // (warm-up), so generous; the capture fails cleanly past it.
            keys: Tensor::zeros(2 * KEY_CAPACITY, DType::U32, device)?,
            coefficients: Tensor::zeros(8, DType::F32, device)?,
            loss: Tensor::zeros(1, DType::F32, device)?,
        })
    }
}

/// Dropout keys a captured step may use.
const KEY_CAPACITY: usize = 4096;

/// Where replays' losses are copied to be read later (page-locked slots on a CUDA device).
#[cfg(feature = "cuda")]
type LossSlots = recblocks_core::nn::cuda::loss_reads::LossReads;
/// Where replays' losses are copied to be read later (none without CUDA: read at once).
#[cfg(not(feature = "cuda"))]
type LossSlots = std::convert::Infallible;

/// Whether `batch` has the shapes (and dtypes) of the buffers.
fn fits(buffers: &Batch, batch: &Batch) -> bool {
    let same = |a: &Tensor, b: &Tensor| a.dims() == b.dims() && a.dtype() == b.dtype();
    same(&buffers.x, &batch.x)
        && same(&buffers.y, &batch.y)
        && same(&buffers.yw, &batch.yw)
        && match (&buffers.negatives, &batch.negatives) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        }
}

/// An ordinary step on `batch` (on the training device; its positions with a target are
/// `targets`, given to the objective as an uncaptured step gives them); returns its loss.
fn ordinary_step(
    run: &mut TrainRun<'_>,
    batch: &Batch,
    targets: &[u32],
    info: &EpochInfo,
    b: usize,
) -> Result<f32> {
    let _given = HostTargets::enter(targets.into());
    run.train_step(batch, info, b)
}

/// The slots of the buffers of the positions with a target for batches of `positions`
/// positions, the first of which has `count` with a target: a quarter more, rounded up to a
/// multiple of 64 (BERT4Rec's targets are drawn position by position, so a batch's count varies
/// by a few of its standard deviations at most, about √count). `None` where that is not fewer
/// than the batch's positions: the step then scores every position.
pub(crate) fn target_capacity(count: usize, positions: usize) -> Option<usize> {
    let capacity = (count + count.div_ceil(4)).div_ceil(64).max(1) * 64;
    (capacity < positions).then_some(capacity)
}

/// Writes the positions with a target of `batch` (`targets`, as many as the buffers hold at
/// most) and their targets and weights into `buffers`.
fn upload_targets(buffers: &FixedTargets, batch: &Batch, targets: &[u32]) -> Result<()> {
    use super::write_in_place::{write, HostValues};
    let values = FixedTargets::values(&batch.y, &batch.yw, targets, buffers.capacity())?
        .ok_or_else(|| {
            HostError::Other(format!(
                "{} positions with a target for buffers of {}",
                targets.len(),
                buffers.capacity()
            ))
        })?;
    write(&buffers.positions, HostValues::U32(&values.positions))?;
    write(&buffers.y, HostValues::U32(&values.y))?;
    write(&buffers.w, HostValues::F32(&values.w))?;
    Ok(())
}

/// Copies `batch` into the buffers (same shapes, see [`fits`]).
fn upload(buffers: &Batch, batch: &Batch) -> Result<()> {
    let copy = |dst: &Tensor, src: &Tensor| -> Result<()> {
        Ok(super::write_in_place::write_tensor(dst, src)?)
    };
    copy(&buffers.x, &batch.x)?;
    copy(&buffers.y, &batch.y)?;
    copy(&buffers.yw, &batch.yw)?;
    if let (Some(dst), Some(src)) = (&buffers.negatives, &batch.negatives) {
        copy(dst, src)?;
    }
    Ok(())
}

/// `batch` copied to `device`.
pub(crate) fn to_device(batch: &Batch, device: &Device) -> Result<Batch> {
    Ok(Batch {
        x: batch.x.to_device(device)?,
        y: batch.y.to_device(device)?,
        yw: batch.yw.to_device(device)?,
        negatives: batch
            .negatives
            .as_ref()
            .map(|t| t.to_device(device))
            .transpose()?,
    })
}

/// The check the backbone makes on a CPU step (a captured one, or one on a GPU, does not read ids
/// on the device): every input id of `batch` (on the CPU) has a row in the item embeddings.
pub(crate) fn check_ids(batch: &Batch, n_items: usize) -> Result<()> {
    let ids = batch.x.flatten_all()?.to_vec1::<u32>()?;
    match ids.iter().find(|&&id| id as usize >= n_items) {
        Some(bad) => Err(HostError::TrainingData(format!(
            "input item id {bad} is out of range (the catalog has {n_items} rows)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(b: usize, l: usize, negatives: bool) -> candle_core::Result<Batch> {
        let ids: Vec<u32> = (0..b * l).map(|i| (i % 7) as u32).collect();
        Ok(Batch {
            x: Tensor::from_vec(ids.clone(), (b, l), &Device::Cpu)?,
            y: Tensor::from_vec(ids, (b, l), &Device::Cpu)?,
            yw: Tensor::ones((b, l), DType::F32, &Device::Cpu)?,
            negatives: negatives
                .then(|| Tensor::zeros((b, l, 3), DType::U32, &Device::Cpu))
                .transpose()?,
        })
    }

    #[test]
    fn batches_of_other_shapes_do_not_fit_and_uploads_copy_values() -> Result<()> {
        let a = batch(4, 5, false)?;
        let bufs = Buffers::new(&a, &Device::Cpu)?;
        assert!(fits(&bufs.batch, &a));
        assert!(!fits(&bufs.batch, &batch(3, 5, false)?));
        assert!(!fits(&bufs.batch, &batch(4, 5, true)?));
        upload(&bufs.batch, &a)?;
        assert_eq!(
            bufs.batch.x.to_vec2::<u32>()?,
            a.x.to_vec2::<u32>()?,
            "the buffer holds the batch"
        );
        // The copy writes in place: a handle taken before sees the new values (a replay reads
        // the same address).
        let before = bufs.batch.x.clone();
        let next = Batch {
            x: (a.x.to_dtype(DType::F32)? + 1.0)?.to_dtype(DType::U32)?,
            ..a.clone()
        };
        upload(&bufs.batch, &next)?;
        assert_eq!(before.to_vec2::<u32>()?, next.x.to_vec2::<u32>()?);
        Ok(())
    }

    #[test]
    fn target_buffers_have_a_quarter_more_room_and_only_where_shorter_than_the_batch() {
        // BERT4Rec on ML-100k: about 15% of 128 × 50 positions.
        assert_eq!(target_capacity(900, 6400), Some(1152));
        assert_eq!(target_capacity(99, 160), Some(128));
        assert_eq!(target_capacity(0, 640), Some(64));
        // SASRec on long sessions: a target at almost every position.
        assert_eq!(target_capacity(6272, 6400), None);
        assert_eq!(target_capacity(52, 64), None);
    }

    #[test]
    fn target_buffers_take_the_batch_values_and_refuse_more_than_they_hold() -> Result<()> {
        let a = batch(2, 5, false)?;
        let buffers = FixedTargets::zeros(4, &Device::Cpu)?;
        upload_targets(&buffers, &a, &[1, 4, 9])?;
        assert_eq!(buffers.positions.to_vec1::<u32>()?, vec![1, 4, 9, 0]);
        // y of batch() is i % 7 at position i.
        assert_eq!(buffers.y.to_vec1::<u32>()?, vec![1, 4, 2, 0]);
        assert_eq!(buffers.w.to_vec1::<f32>()?, vec![1.0, 1.0, 1.0, 0.0]);
        let err = upload_targets(&buffers, &a, &[1, 2, 3, 4, 5]).err();
        assert!(
            err.as_ref().is_some_and(|e| e
                .to_string()
                .contains("5 positions with a target for buffers of 4")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn ids_outside_the_catalog_are_refused_on_the_host() -> Result<()> {
        let a = batch(2, 5, false)?;
        assert!(check_ids(&a, 7).is_ok());
        let err = check_ids(&a, 6).map(|_| ()).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("input item id 6") && e.contains("6 rows")),
            "{err:?}"
        );
        Ok(())
    }
}
