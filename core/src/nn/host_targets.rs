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

use std::{cell::RefCell, rc::Rc};

use candle_core::{DType, Result, Tensor};

thread_local! {
    static GIVEN: RefCell<Option<Rc<[u32]>>> = const { RefCell::new(None) };
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
}
