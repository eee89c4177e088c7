//! The positions of a training batch that have a target, handed by the trainer to the objective
//! on the host.
//!
//! RecTools' losses count only the positions with a target (`y != 0`; padding and, for BERT4Rec,
//! the unmasked positions count for nothing), so an objective may score those positions alone.
//! To find them it reads the batch's targets. On a GPU that read waits until the device has done
//! everything queued before it, and a trainer that queues a step while the previous one still
//! runs (`recblocks fit` does) would wait for the whole previous step.
//!
//! The trainer collates each batch on the CPU, so it knows the positions before the batch goes to
//! the device ([`positions_with_a_target`]). It hands them over for the length of the objective's
//! call ([`HostTargets::enter`]), and the objective takes them from [`given`] instead of reading
//! the device. Outside such a call [`given`] is `None`, and an objective reads the targets itself.
//!
//! A step recorded once and replayed ([`crate::nn::capture`]) cannot take a list whose length
//! changes from batch to batch. Its positions with a target come in buffers of a fixed length
//! instead ([`FixedTargets`], [`fixed`]): the positions in order, then unused slots with no target
//! and weight 0, which add nothing to any loss. The trainer fills them before each step, so the
//! step scores those positions alone rather than every position of the batch (BERT4Rec's targets
//! are about 15% of its positions; padding has none).

use std::{cell::RefCell, rc::Rc};

use candle_core::{DType, Result, Tensor};

thread_local! {
    static GIVEN: RefCell<Option<Rc<[u32]>>> = const { RefCell::new(None) };
    static FIXED: RefCell<Option<FixedTargets>> = const { RefCell::new(None) };
}

/// The flat positions (`b · L + l` of a `[B, L]` batch, in order) where `y` is not 0: the
/// positions with a target. Reads `y`, so call it where `y` is on the CPU.
pub fn positions_with_a_target(y: &Tensor) -> Result<Vec<u32>> {
    Ok(y.to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != 0)
        .map(|(i, _)| i as u32)
        .collect())
}

/// The positions with a target of the batch the current call trains on, when the trainer gave
/// them ([`HostTargets::enter`]); `None` otherwise.
pub fn given() -> Option<Rc<[u32]>> {
    GIVEN.with(|g| g.borrow().clone())
}

/// Holds the current batch's positions with a target until dropped (see the module's comment).
#[must_use = "the positions are given only while the guard lives"]
pub struct HostTargets {
    previous: Option<Rc<[u32]>>,
}

impl HostTargets {
    /// Gives `positions` ([`positions_with_a_target`] of the batch's `y`) to calls on this thread
    /// until the guard is dropped.
    pub fn enter(positions: Rc<[u32]>) -> Self {
        let previous = GIVEN.with(|g| g.borrow_mut().replace(positions));
        HostTargets { previous }
    }
}

impl Drop for HostTargets {
    fn drop(&mut self) {
        let previous = self.previous.take();
        GIVEN.with(|g| *g.borrow_mut() = previous);
    }
}

/// The positions with a target of a step with static shapes, in buffers of one length, the
/// capacity (see the module's comment). Slot `i < n` holds the `i`-th position with a target of
/// the batch (flat, `b · L + l`, in order), its target and its weight; the slots past `n` hold
/// position 0, target 0 and weight 0: no target.
#[derive(Debug, Clone)]
pub struct FixedTargets {
    /// The positions, `[capacity]` u32.
    pub positions: Tensor,
    /// Their targets, `[capacity]` u32.
    pub y: Tensor,
    /// Their weights, `[capacity]` f32.
    pub w: Tensor,
}

/// What the host writes into a [`FixedTargets`]' buffers for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedTargetValues {
    /// [`FixedTargets::positions`]' values.
    pub positions: Vec<u32>,
    /// [`FixedTargets::y`]'s values.
    pub y: Vec<u32>,
    /// [`FixedTargets::w`]'s values.
    pub w: Vec<f32>,
}

impl FixedTargets {
    /// Buffers of `capacity` slots on `device`, every slot without a target.
    pub fn zeros(capacity: usize, device: &candle_core::Device) -> Result<Self> {
        Ok(FixedTargets {
            positions: Tensor::zeros(capacity, DType::U32, device)?,
            y: Tensor::zeros(capacity, DType::U32, device)?,
            w: Tensor::zeros(capacity, DType::F32, device)?,
        })
    }

    /// The slots of the buffers.
    pub fn capacity(&self) -> usize {
        self.positions.elem_count()
    }

    /// The values for a batch whose targets are `y` and weights `yw` (`[B, L]`, on the CPU) and
    /// whose positions with a target are `positions` ([`positions_with_a_target`] of `y`); `None`
    /// when there are more of them than `capacity`.
    pub fn values(
        y: &Tensor,
        yw: &Tensor,
        positions: &[u32],
        capacity: usize,
    ) -> Result<Option<FixedTargetValues>> {
        if positions.len() > capacity {
            return Ok(None);
        }
        let y = y.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let yw = yw.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let at = |p: u32| -> Result<usize> {
            let p = p as usize;
            if p >= y.len() || p >= yw.len() {
                return Err(candle_core::Error::Msg(format!(
                    "target position {p} of a batch of {} positions",
                    y.len()
                )));
            }
            Ok(p)
        };
        let mut v = FixedTargetValues {
            positions: vec![0; capacity],
            y: vec![0; capacity],
            w: vec![0.0; capacity],
        };
        for (i, &p) in positions.iter().enumerate() {
            let q = at(p)?;
            v.positions[i] = p;
            v.y[i] = y[q];
            v.w[i] = yw[q];
        }
        Ok(Some(v))
    }

    /// Gives these buffers to calls on this thread until the guard is dropped: an objective
    /// under static shapes takes them from [`fixed`].
    pub fn enter(&self) -> FixedTargetsGuard {
        let previous = FIXED.with(|f| f.borrow_mut().replace(self.clone()));
        FixedTargetsGuard { previous }
    }
}

/// The buffers of the positions with a target of the step the current call trains on, when the
/// trainer gave them ([`FixedTargets::enter`]); `None` otherwise.
pub fn fixed() -> Option<FixedTargets> {
    FIXED.with(|f| f.borrow().clone())
}

/// Holds a step's [`FixedTargets`] until dropped.
#[must_use = "the buffers are given only while the guard lives"]
pub struct FixedTargetsGuard {
    previous: Option<FixedTargets>,
}

impl Drop for FixedTargetsGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        FIXED.with(|f| *f.borrow_mut() = previous);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn positions_are_the_flat_indices_of_nonzero_targets() -> Result<()> {
        let y = Tensor::from_vec(vec![0u32, 3, 0, 7, 1, 0], (2, 3), &Device::Cpu)?;
        assert_eq!(positions_with_a_target(&y)?, vec![1, 3, 4]);
        let none = Tensor::zeros((2, 2), DType::U32, &Device::Cpu)?;
        assert!(positions_with_a_target(&none)?.is_empty());
        Ok(())
    }

    #[test]
    fn given_only_while_the_guard_lives_and_nested_guards_restore() {
        assert!(given().is_none());
        {
            let _outer = HostTargets::enter(Rc::from(vec![1u32, 2]));
            assert_eq!(given().as_deref(), Some(&[1u32, 2][..]));
            {
                let _inner = HostTargets::enter(Rc::from(vec![5u32]));
                assert_eq!(given().as_deref(), Some(&[5u32][..]));
            }
            assert_eq!(given().as_deref(), Some(&[1u32, 2][..]));
        }
        assert!(given().is_none());
    }

    #[test]
    fn fixed_values_pad_with_slots_without_a_target() -> Result<()> {
        let y = Tensor::from_vec(vec![0u32, 3, 0, 7, 1, 0], (2, 3), &Device::Cpu)?;
        let yw = Tensor::from_vec(vec![9f32, 0.5, 9.0, 2.0, 1.0, 9.0], (2, 3), &Device::Cpu)?;
        let positions = positions_with_a_target(&y)?;
        let v = FixedTargets::values(&y, &yw, &positions, 5)?;
        assert_eq!(
            v,
            Some(FixedTargetValues {
                positions: vec![1, 3, 4, 0, 0],
                y: vec![3, 7, 1, 0, 0],
                w: vec![0.5, 2.0, 1.0, 0.0, 0.0],
            })
        );
        // Exactly full, and one too many.
        assert_eq!(
            FixedTargets::values(&y, &yw, &positions, 3)?.map(|v| v.y),
            Some(vec![3, 7, 1])
        );
        assert_eq!(FixedTargets::values(&y, &yw, &positions, 2)?, None);
        // A position past the batch is refused, not read.
        assert!(FixedTargets::values(&y, &yw, &[6], 2).is_err());
        Ok(())
    }

    #[test]
    fn fixed_targets_only_while_the_guard_lives_and_nested_guards_restore() -> Result<()> {
        assert!(fixed().is_none());
        let outer = FixedTargets::zeros(4, &Device::Cpu)?;
        let inner = FixedTargets::zeros(2, &Device::Cpu)?;
        {
            let _outer = outer.enter();
            assert_eq!(fixed().map(|f| f.capacity()), Some(4));
            {
                let _inner = inner.enter();
                assert_eq!(fixed().map(|f| f.capacity()), Some(2));
            }
            assert_eq!(fixed().map(|f| f.capacity()), Some(4));
        }
        assert!(fixed().is_none());
        Ok(())
    }
}
