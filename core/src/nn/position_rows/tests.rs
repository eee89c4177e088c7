//! Position rows against hand-computed values and against the composed lookup and broadcast add.

use candle_core::{DType, Device, Tensor, Var};

use super::{add_position_rows, add_position_rows_op, PositionRows};
use crate::{nn::gather_rows, Result};

/// `out`'s values, and the gradients of `Σ out·w` with respect to `vars` (flattened).
fn value_and_gradients(out: &Tensor, w: &Tensor, vars: &[&Var]) -> Result<Vec<Vec<f32>>> {
    let grads = out.mul(w)?.sum_all()?.backward()?;
    let mut got = vec![out.flatten_all()?.to_vec1::<f32>()?];
    for v in vars {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| crate::CoreError::Other("no gradient".into()))?;
        got.push(g.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(got)
}

#[test]
fn the_rows_counted_from_the_end_by_hand() -> Result<()> {
    let dev = Device::Cpu;
    // Two sessions of three positions, d = 1; a table of four rows.
    let x = Var::from_tensor(&Tensor::new(
        &[[[1f32], [2.], [3.]], [[10.], [20.], [30.]]],
        &dev,
    )?)?;
    let t = Var::from_tensor(&Tensor::new(&[[100f32], [200.], [300.], [400.]], &dev)?)?;
    let rows = PositionRows::from_end(3, &dev)?;
    assert_eq!(rows.ids().to_vec1::<u32>()?, [2, 1, 0]);
    let out = add_position_rows_op(x.as_tensor(), t.as_tensor(), &rows)?;
    // Position 0 reads row 2, position 2 (the last item) row 0.
    assert_eq!(
        out.flatten_all()?.to_vec1::<f32>()?,
        [301., 202., 103., 310., 220., 130.]
    );
    // Weights 1..6: x gets them as they are; row 2 gets 1 + 4, row 1 2 + 5, row 0 3 + 6, row 3 none.
    let w = Tensor::new(&[[[1f32], [2.], [3.]], [[4.], [5.], [6.]]], &dev)?;
    let got = value_and_gradients(&out, &w, &[&x, &t])?;
    assert_eq!(got[1], [1., 2., 3., 4., 5., 6.]);
    assert_eq!(got[2], [9., 7., 5., 0.]);
    Ok(())
}

/// The node equals candle's lookup and broadcast add, values and both gradients bit for bit, in
/// one graph node over its two inputs.
#[test]
fn the_node_equals_the_composed_lookup_and_add() -> Result<()> {
    let dev = Device::Cpu;
    let (b, l, d, n) = (5, 7, 6, 9);
    let values = |len: usize, salt: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i + salt) * 7919 % 997) as f32 / 997.0 - 0.5) * 3.0)
            .collect()
    };
    let w = Tensor::from_vec(values(b * l * d, 3), (b, l, d), &dev)?;
    for rows in [
        PositionRows::from_end(l, &dev)?,
        PositionRows::new(&[8, 0, 3, 1, 7, 2, 5], &dev)?,
    ] {
        let run = |node: bool| -> Result<(Vec<Vec<f32>>, usize)> {
            let x = Var::from_vec(values(b * l * d, 1), (b, l, d), &dev)?;
            let t = Var::from_vec(values(n * d, 2), (n, d), &dev)?;
            let out = match node {
                true => add_position_rows_op(x.as_tensor(), t.as_tensor(), &rows)?,
                false => x
                    .as_tensor()
                    .broadcast_add(&gather_rows(t.as_tensor(), rows.ids())?)?,
            };
            let nodes = out.sorted_nodes().len();
            Ok((value_and_gradients(&out, &w, &[&x, &t])?, nodes))
        };
        let ((got, nodes), (want, _)) = (run(true)?, run(false)?);
        assert_eq!(got, want);
        assert_eq!(nodes, 3, "the node, the sessions and the table");
        // On the CPU outside `RECBLOCKS_BLOCKS=nodes` the public function is the composition.
        let x = Tensor::from_vec(values(b * l * d, 1), (b, l, d), &dev)?;
        let t = Tensor::from_vec(values(n * d, 2), (n, d), &dev)?;
        assert_eq!(
            add_position_rows(&x, &t, &rows)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            got[0]
        );
    }
    Ok(())
}

#[test]
fn rows_read_twice_or_past_the_table_are_refused() -> Result<()> {
    let dev = Device::Cpu;
    let err = PositionRows::new(&[0, 2, 2], &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("position 2 reads row 2"), "{err}");
    let x = Tensor::zeros((2, 3, 4), DType::F32, &dev)?;
    let msg = |table: &Tensor, rows: &PositionRows| {
        add_position_rows(&x, table, rows)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let table = Tensor::zeros((3, 4), DType::F32, &dev)?;
    let m = msg(&table, &PositionRows::new(&[0, 1, 3], &dev)?);
    assert!(m.contains("up to row 3") && m.contains("3 rows"), "{m}");
    let m = msg(&table, &PositionRows::from_end(2, &dev)?);
    assert!(
        m.contains("2 position rows") && m.contains("[2, 3, 4]"),
        "{m}"
    );
    let narrow = Tensor::zeros((3, 5), DType::F32, &dev)?;
    let m = msg(&narrow, &PositionRows::from_end(3, &dev)?);
    assert!(m.contains("[3, 5]"), "{m}");
    Ok(())
}
