//! Training steps queued one ahead of their loss reads: the host reads step `k`'s loss after it
//! has queued step `k + 1`, so on a GPU the device works on step `k + 1` while the host waits for
//! step `k` and then goes on queueing (an uncaptured step, `fit` without `--cuda-graph`).
//!
//! Before, the host read each step's loss right after queueing it, which waits until the GPU has
//! run the whole step; the host then queued the next step's first kernels while the GPU sat idle,
//! and the GPU's time and the host's time of a step added up. Now they overlap: a step costs about
//! the larger of the two.
//!
//! What stays as it was:
//! - **A non-finite loss stops the run with the parameters as they were.** Each update is guarded
//!   by its step's loss plus the loss before it, not yet read ([`StepQueue::guard`]): a non-finite
//!   loss makes its own update and the next one change nothing (`Adam::step_guarded`), and the
//!   host stops at the read of it, naming its batch, before a third step is queued.
//! - **The figures.** Each batch's loss is the value it was, reported in order, one step later;
//!   the epoch's last step is read at its end ([`StepQueue::finish`]), before validation.
//!
//! On a CUDA device the losses are copied into page-locked memory as each step is queued
//! (`recblocks_core::nn::cuda::loss_reads`); on other devices the host reads a loss when its turn
//! comes, which there costs nothing more, and every device runs the same bookkeeping.
//! `RECBLOCKS_LOSS_READS=plain` makes a CUDA device read that way too (a plain read then waits
//! for the step queued after it as well): a fallback, should the page-locked copies fail.

use candle_core::{Device, Tensor};

use crate::Result;

/// Where losses are read from.
enum Reader {
    /// Read when taken (`to_vec1`).
    Host,
    /// Copied into page-locked memory when queued, taken when the copy is done.
    #[cfg(feature = "cuda")]
    Cuda(recblocks_core::nn::cuda::loss_reads::LossReads),
}

/// A queued step whose loss is not read yet.
struct Pending {
    /// The step's loss, one f32 value on the device.
    read: Tensor,
    #[cfg(feature = "cuda")]
    queued: Option<recblocks_core::nn::cuda::loss_reads::QueuedLoss>,
    /// The step's batch: its index in the epoch (from 0) and its number of sessions.
    batch: usize,
    sessions: usize,
    /// What the fused blocks noted about non-finite values during the step's forward pass.
    note: Option<String>,
}

/// A step whose loss has been read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadStep {
    /// Its batch's index in the epoch (from 0).
    pub batch: usize,
    /// Its batch's sessions.
    pub sessions: usize,
    /// Its loss.
    pub loss: f32,
    /// What the fused blocks noted about non-finite values during its forward pass (where a
    /// block first produced them), for the error of a non-finite loss.
    pub note: Option<String>,
}

/// The steps of one epoch whose losses are read one step late (see the module's comment).
pub(crate) struct StepQueue {
    device: Device,
    /// Made at the first step (an epoch of captured steps never queues one).
    reader: Option<Reader>,
    pending: Option<Pending>,
}

impl StepQueue {
    /// A queue for steps on `device`; use it from the thread that trains.
    pub fn new(device: &Device) -> Self {
        StepQueue {
            device: device.clone(),
            reader: None,
            pending: None,
        }
    }

    /// Where losses are read from, made at the first use.
    fn reader(&mut self) -> Result<&mut Reader> {
        if self.reader.is_none() {
            self.reader = Some(match &self.device {
                #[cfg(feature = "cuda")]
                Device::Cuda(dev) if !plain_reads() => {
                    Reader::Cuda(recblocks_core::nn::cuda::loss_reads::LossReads::new(dev)?)
                }
                _ => Reader::Host,
            });
        }
        self.reader
            .as_mut()
            .ok_or_else(|| crate::HostError::Other("no loss reader".into()))
    }

    /// The guard of the update of a step whose loss is `read`: non-finite when that loss or the
    /// unread loss of the step before it is. It is `read + 0 · previous`: 0 times a finite value
    /// is 0, and times NaN or an infinity NaN (a plain sum of two finite losses could overflow).
    pub fn guard(&self, read: &Tensor) -> Result<Tensor> {
        Ok(match &self.pending {
            Some(p) => (read + p.read.affine(0.0, 0.0)?)?,
            None => read.clone(),
        })
    }

    /// Adds the step just queued (its loss `read`, one f32 value with no autograd history, for
    /// the epoch's batch `batch` of `sessions` sessions, with `note` from its forward pass), then
    /// reads the step before it; returns that step, if any.
    pub fn push(
        &mut self,
        read: Tensor,
        batch: usize,
        sessions: usize,
        note: Option<String>,
    ) -> Result<Option<ReadStep>> {
        let reader = self.reader()?;
        #[cfg(not(feature = "cuda"))]
        let Reader::Host = reader;
        let pending = Pending {
            #[cfg(feature = "cuda")]
            queued: match reader {
                Reader::Cuda(reads) => Some(reads.queue(&read)?),
                Reader::Host => None,
            },
            read,
            batch,
            sessions,
            note,
        };
        match self.pending.replace(pending) {
            Some(previous) => self.take(previous).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the last step queued, if its loss is not read yet (the epoch's end).
    pub fn finish(&mut self) -> Result<Option<ReadStep>> {
        match self.pending.take() {
            Some(p) => self.take(p).map(Some),
            None => Ok(None),
        }
    }

    fn take(&self, p: Pending) -> Result<ReadStep> {
        let loss = match &self.reader {
            #[cfg(feature = "cuda")]
            Some(Reader::Cuda(reads)) => match p.queued {
                Some(q) => reads.take(q)?,
                None => first(&p.read)?,
            },
            _ => first(&p.read)?,
        };
        Ok(ReadStep {
            batch: p.batch,
            sessions: p.sessions,
            loss,
            note: p.note,
        })
    }
}

/// Whether `RECBLOCKS_LOSS_READS=plain` asks for plain reads on every device (read once).
#[cfg(feature = "cuda")]
pub(crate) fn plain_reads() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| std::env::var("RECBLOCKS_LOSS_READS").is_ok_and(|v| v == "plain"))
}

/// The one value of `t`, read on the host (NaN for none).
fn first(t: &Tensor) -> Result<f32> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .first()
        .copied()
        .unwrap_or(f32::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(v: f32) -> Result<Tensor> {
        Ok(Tensor::from_vec(vec![v], 1, &Device::Cpu)?)
    }

    #[test]
    fn each_loss_comes_back_one_step_late_and_in_order() -> Result<()> {
        let mut q = StepQueue::new(&Device::Cpu);
        assert_eq!(q.push(loss(1.5)?, 0, 128, Some("block 1".into()))?, None);
        let read = q.push(loss(2.5)?, 1, 100, None)?;
        assert_eq!(
            read,
            Some(ReadStep {
                batch: 0,
                sessions: 128,
                loss: 1.5,
                note: Some("block 1".into()),
            })
        );
        let last = q.finish()?;
        assert_eq!(
            last,
            Some(ReadStep {
                batch: 1,
                sessions: 100,
                loss: 2.5,
                note: None,
            })
        );
        assert_eq!(q.finish()?, None);
        Ok(())
    }

    #[test]
    fn a_guard_is_not_finite_when_its_loss_or_the_unread_one_before_is() -> Result<()> {
        let mut q = StepQueue::new(&Device::Cpu);
        let value = |t: Tensor| first(&t);
        assert_eq!(value(q.guard(&loss(2.0)?)?)?, 2.0);
        assert_eq!(q.push(loss(f32::NAN)?, 0, 4, None)?, None);
        // The next step's guard carries the unread NaN; its own loss is finite.
        assert!(value(q.guard(&loss(2.0)?)?)?.is_nan());
        let read = q.push(loss(2.0)?, 1, 4, None)?;
        assert!(read.is_some_and(|r| r.batch == 0 && r.loss.is_nan()));
        // A finite loss before: the guard is the step's own loss.
        assert_eq!(value(q.guard(&loss(1.0)?)?)?, 1.0);
        let inf = q.push(loss(f32::INFINITY)?, 2, 4, None)?;
        assert!(inf.is_some_and(|r| r.loss == 2.0));
        assert!(!value(q.guard(&loss(1.0)?)?)?.is_finite());
        // Two large finite losses, whose sum would overflow f32: the guard stays finite.
        q.finish()?;
        q.push(loss(3e38)?, 3, 4, None)?;
        assert_eq!(value(q.guard(&loss(3e38)?)?)?, 3e38);
        Ok(())
    }
}
