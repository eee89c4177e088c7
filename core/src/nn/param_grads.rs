//! Parameter gradients that autograd nodes write themselves, outside candle's graph.
//!
//! candle's backward pass gives every input of every node a zeroed buffer and adds the node's
//! gradient into it (`GradStore::or_insert`, then `add`). For a parameter that is a buffer, a
//! memset and an add per use, and for a node whose parameters are many (a fused block has 16)
//! they must first be concatenated into one input so that candle routes one gradient back into
//! each. On a GPU every one of those is a launch, or a node of a captured step.
//!
//! A node that holds its parameters can instead enter the graph with its activation input alone
//! and hand each parameter's gradient to the [`Collector`] of the running [`ParamGradScope`]; the
//! scope's [`backward`](ParamGradScope::backward) runs candle's backward pass and then puts those
//! gradients into its `GradStore`, adding where a parameter got more than one (ALBERT's shared
//! blocks) in the order the nodes' backward passes ran, which is the order candle adds in. The
//! optimizer sees the same gradients as with candle's routing, with the same bits.
//!
//! Nothing changes unless a trainer opens a scope: a node built outside one (tests, the
//! conformance suite, a plugin's own backward pass) takes its parameters as graph inputs as
//! before. Only leaf variables are written this way ([`writer`]); a parameter computed from other
//! tensors needs candle to carry its gradient on, so a node holding one keeps candle's routing.
//! `RECBLOCKS_PARAM_GRADS=graph` keeps candle's routing everywhere (a baseline to time against).

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use candle_core::{backprop::GradStore, Error, Result, Tensor, TensorId};

thread_local! {
    /// The collector of the scope open on this thread, if any.
    static ACTIVE: RefCell<Option<Arc<Collector>>> = const { RefCell::new(None) };
}

/// Parameter gradients written by nodes during one backward pass, in the order they came.
#[derive(Default)]
pub struct Collector {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// (parameter, its gradient so far), in first-write order.
    grads: Vec<(Tensor, Tensor)>,
    at: HashMap<TensorId, usize>,
}

impl Collector {
    /// Adds `grad` to `param`'s gradient: stored as it is the first time, summed after. A
    /// parameter that autograd does not track gets nothing, as with candle's own routing.
    pub fn add(&self, param: &Tensor, grad: Tensor) -> Result<()> {
        if !param.track_op() {
            return Ok(());
        }
        if grad.dims() != param.dims() {
            return Err(Error::Msg(format!(
                "parameter gradient of shape {:?} for a parameter of shape {:?}",
                grad.dims(),
                param.dims()
            )));
        }
        let mut e = self
            .entries
            .lock()
            .map_err(|_| Error::Msg("parameter gradients: poisoned state".into()))?;
        match e.at.get(&param.id()).copied() {
            Some(i) => {
                let sum = (&e.grads[i].1 + &grad)?;
                e.grads[i].1 = sum;
            }
            None => {
                let i = e.grads.len();
                e.at.insert(param.id(), i);
                e.grads.push((param.clone(), grad));
            }
        }
        Ok(())
    }

    fn take(&self) -> Result<Vec<(Tensor, Tensor)>> {
        let mut e = self
            .entries
            .lock()
            .map_err(|_| Error::Msg("parameter gradients: poisoned state".into()))?;
        e.at.clear();
        Ok(std::mem::take(&mut e.grads))
    }
}

/// While it lives, nodes built on this thread write their parameters' gradients to it instead of
/// taking the parameters as graph inputs; [`backward`](Self::backward) ends it. Scopes nest: the
/// inner one hides the outer until it ends.
#[must_use = "a scope collects only while it lives; end it with `backward`"]
pub struct ParamGradScope {
    collector: Arc<Collector>,
    outer: Option<Arc<Collector>>,
}

impl ParamGradScope {
    /// Opens a scope on this thread.
    pub fn enter() -> Self {
        let collector = Arc::new(Collector::default());
        let outer = ACTIVE.with(|a| a.borrow_mut().replace(collector.clone()));
        ParamGradScope { collector, outer }
    }

    /// candle's backward pass of `loss`, with the gradients the scope's nodes wrote added in:
    /// every parameter's gradient, as `loss.backward()` gives it without a scope.
    pub fn backward(self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        for (param, grad) in self.collector.take()? {
            let grad = match grads.remove(&param) {
                Some(routed) => (routed + grad)?,
                None => grad,
            };
            grads.insert(&param, grad);
        }
        Ok(grads)
    }
}

impl Drop for ParamGradScope {
    fn drop(&mut self) {
        let outer = self.outer.take();
        ACTIVE.with(|a| *a.borrow_mut() = outer);
    }
}

/// The collector a node holding `params` writes their gradients to: the open scope's, when every
/// tracked parameter is a leaf variable and the node's input `x` is tracked (an untracked input
/// would leave the node out of the graph, and its parameters without gradients). `None`: take
/// the parameters as graph inputs.
pub fn writer(x: &Tensor, params: &[&Tensor]) -> Option<Arc<Collector>> {
    static ROUTED_BY_GRAPH: OnceLock<bool> = OnceLock::new();
    let by_graph = *ROUTED_BY_GRAPH
        .get_or_init(|| std::env::var("RECBLOCKS_PARAM_GRADS").is_ok_and(|v| v == "graph"));
    if by_graph || !x.track_op() || params.iter().any(|p| p.track_op() && !p.is_variable()) {
        return None;
    }
    ACTIVE.with(|a| a.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gradients_written_to_a_scope_join_candles_and_sum_per_parameter() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.0], &dev)?;
        let x = Var::new(&[3f32, 4.0], &dev)?;
        let scope = ParamGradScope::enter();
        let c = writer(x.as_tensor(), &[w.as_tensor()]).ok_or(Error::Msg("no writer".into()))?;
        // Two nodes' writes for w, and w also used in the graph: 10 + 100 + x.
        c.add(w.as_tensor(), Tensor::new(&[10f32, 20.0], &dev)?)?;
        c.add(w.as_tensor(), Tensor::new(&[100f32, 200.0], &dev)?)?;
        let loss = (w.as_tensor() * x.as_tensor())?.sum_all()?;
        let grads = scope.backward(&loss)?;
        let gw = grads
            .get(w.as_tensor())
            .ok_or(Error::Msg("no w grad".into()))?;
        assert_eq!(gw.to_vec1::<f32>()?, [113.0, 224.0]);
        let gx = grads
            .get(x.as_tensor())
            .ok_or(Error::Msg("no x grad".into()))?;
        assert_eq!(gx.to_vec1::<f32>()?, [1.0, 2.0]);
        // The scope ended: nothing collects any more.
        assert!(writer(x.as_tensor(), &[w.as_tensor()]).is_none());
        Ok(())
    }

    #[test]
    fn only_leaf_variables_under_an_open_scope_with_a_tracked_input_are_written() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1f32, 2.0], &dev)?;
        let x = Var::new(&[3f32, 4.0], &dev)?;
        let plain = Tensor::new(&[5f32, 6.0], &dev)?;
        assert!(
            writer(x.as_tensor(), &[w.as_tensor()]).is_none(),
            "no scope"
        );
        let _scope = ParamGradScope::enter();
        assert!(writer(x.as_tensor(), &[w.as_tensor(), &plain]).is_some());
        let computed = (w.as_tensor() * 2.0)?;
        assert!(
            writer(x.as_tensor(), &[&computed]).is_none(),
            "a computed parameter"
        );
        assert!(
            writer(&plain, &[w.as_tensor()]).is_none(),
            "an untracked input"
        );
        // An untracked parameter gets nothing; a wrong shape is an error naming both shapes.
        let c = writer(x.as_tensor(), &[w.as_tensor()]).ok_or(Error::Msg("no writer".into()))?;
        c.add(&plain, plain.clone())?;
        assert!(c.take()?.is_empty());
        let e = c
            .add(w.as_tensor(), Tensor::new(&[1f32, 2.0, 3.0], &dev)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[3]") && e.contains("[2]"), "{e}");
        Ok(())
    }

    #[test]
    fn an_inner_scope_hides_the_outer_until_it_ends() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[1f32], &dev)?;
        let outer = ParamGradScope::enter();
        let a = writer(x.as_tensor(), &[]).ok_or(Error::Msg("no outer".into()))?;
        {
            let inner = ParamGradScope::enter();
            let b = writer(x.as_tensor(), &[]).ok_or(Error::Msg("no inner".into()))?;
            assert!(!Arc::ptr_eq(&a, &b));
            drop(inner);
        }
        let again = writer(x.as_tensor(), &[]).ok_or(Error::Msg("outer lost".into()))?;
        assert!(Arc::ptr_eq(&a, &again));
        drop(outer);
        Ok(())
    }
}
