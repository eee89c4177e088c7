//! RecTools state_dict names → recblocks parameter names.
//!
//! recblocks' names are RecTools' Lightning state_dict names without the `torch_model.` prefix,
//! except where a component declares otherwise next to its code: torch's `nn.MultiheadAttention`
//! packs the query, key and value projections ([`MultiHeadAttention::TORCH_PACKED`]: rows `0..d`
//! query, `d..2d` key, `2d..3d` value), and `CatFeaturesItemNet` holds its catalog in buffers
//! ([`CatFeaturesItemNet::RECTOOLS_BUFFERS`]). This module applies those declarations.
//!
//! | RecTools (`torch_model.` + …) | recblocks |
//! |---|---|
//! | `….multi_head_attn.in_proj_weight` | `….multi_head_attn.{q,k,v}_proj.weight` (row thirds) |
//! | `….multi_head_attn.in_proj_bias` | `….multi_head_attn.{q,k,v}_proj.bias` (thirds) |
//! | `item_model.item_net_blocks.{i}.{offsets,emb_bag_inputs,input_lengths}` | not parameters: the categorical features' CSR, kept in `dataset_schema.json` ([`CatBuffers`]) |
//! | anything else | the same name |

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use recblocks_core::nn::MultiHeadAttention;
use recblocks_rectools::item_net::CatFeaturesItemNet;

/// The prefix of the backbone's parameters in a Lightning state_dict.
pub const TORCH_MODEL_PREFIX: &str = "torch_model.";

/// `CatFeaturesItemNet`'s buffers: item `i`'s (feature, value) columns are
/// `emb_bag_inputs[offsets[i] .. offsets[i] + input_lengths[i]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatBuffers {
    /// Start of each item's columns in `emb_bag_inputs`.
    pub offsets: Vec<i64>,
    /// Column ids of every item, concatenated.
    pub emb_bag_inputs: Vec<i64>,
    /// Number of columns of each item.
    pub input_lengths: Vec<i64>,
}

/// A state_dict mapped to recblocks names.
#[derive(Debug, Default)]
pub struct MappedWeights {
    /// recblocks parameter name → value.
    pub params: BTreeMap<String, Tensor>,
    /// recblocks name → the RecTools name it came from (for error messages).
    pub sources: BTreeMap<String, String>,
    /// The categorical item features' buffers, when the item net has a `CatFeaturesItemNet`.
    pub cat: Option<CatBuffers>,
}

const PACKED: recblocks_core::nn::attention::TorchPackedProjections =
    MultiHeadAttention::TORCH_PACKED;
const CAT_BUFFERS: [&str; 3] = CatFeaturesItemNet::RECTOOLS_BUFFERS;

fn i64s(name: &str, t: &Tensor) -> Result<Vec<i64>, String> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::I64))
        .and_then(|t| t.to_vec1::<i64>())
        .map_err(|e| format!("buffer `{name}` is not an integer vector: {e}"))
}

/// Maps RecTools state_dict entries (with or without the `torch_model.` prefix) to recblocks
/// names, splitting the packed attention projections. Fails with the name and shape of an entry
/// that cannot be mapped.
pub fn map_state_dict(
    entries: impl IntoIterator<Item = (String, Tensor)>,
) -> Result<MappedWeights, String> {
    let mut out = MappedWeights::default();
    let mut cat = CatBuffers::default();
    let mut has_cat = false;
    for (source, tensor) in entries {
        let name = source
            .strip_prefix(TORCH_MODEL_PREFIX)
            .unwrap_or(&source)
            .to_string();
        let mut push = |n: String, t: Tensor| {
            out.sources.insert(n.clone(), source.clone());
            out.params.insert(n, t);
        };
        if let Some(stem) = name.strip_suffix(PACKED.weight) {
            let dims = tensor.dims().to_vec();
            if dims.len() != 2 || dims[0] != 3 * dims[1] {
                return Err(format!(
                    "`{source}` has shape {dims:?}, expected [3d, d] (packed query, key, value)"
                ));
            }
            let d = dims[1];
            for (i, p) in PACKED.parts.iter().enumerate() {
                let part = tensor.narrow(0, i * d, d).and_then(|t| t.contiguous());
                push(
                    format!("{stem}{p}.weight"),
                    part.map_err(|e| e.to_string())?,
                );
            }
        } else if let Some(stem) = name.strip_suffix(PACKED.bias) {
            let dims = tensor.dims().to_vec();
            if dims.len() != 1 || dims[0] % 3 != 0 {
                return Err(format!(
                    "`{source}` has shape {dims:?}, expected [3d] (packed query, key, value)"
                ));
            }
            let d = dims[0] / 3;
            for (i, p) in PACKED.parts.iter().enumerate() {
                let part = tensor.narrow(0, i * d, d).and_then(|t| t.contiguous());
                push(format!("{stem}{p}.bias"), part.map_err(|e| e.to_string())?);
            }
        } else if let Some(buffer) = name
            .starts_with("item_model.item_net_blocks.")
            .then(|| name.rsplit('.').next())
            .flatten()
            .filter(|b| CAT_BUFFERS.contains(b))
        {
            has_cat = true;
            let v = i64s(&source, &tensor)?;
            match CAT_BUFFERS.iter().position(|b| *b == buffer) {
                Some(0) => cat.offsets = v,
                Some(1) => cat.emb_bag_inputs = v,
                _ => cat.input_lengths = v,
            }
        } else {
            push(name, tensor);
        }
    }
    if has_cat {
        out.cat = Some(cat);
    }
    Ok(out)
}

impl CatBuffers {
    /// The CSR row pointer and column ids recblocks stores (`n_items + 1` offsets), checked
    /// against `n_items` and the number of columns.
    pub fn to_csr(&self, n_items: usize, n_columns: usize) -> Result<(Vec<u32>, Vec<u32>), String> {
        if self.offsets.len() != n_items || self.input_lengths.len() != n_items {
            return Err(format!(
                "CatFeaturesItemNet buffers `offsets` ({}) and `input_lengths` ({}) must have one \
                 entry per item ({n_items})",
                self.offsets.len(),
                self.input_lengths.len()
            ));
        }
        let mut offsets = vec![0u32];
        let mut values = Vec::new();
        for (i, (&start, &len)) in self.offsets.iter().zip(&self.input_lengths).enumerate() {
            let range = usize::try_from(start)
                .ok()
                .zip(usize::try_from(len).ok())
                .map(|(s, l)| s..s + l)
                .filter(|r| r.end <= self.emb_bag_inputs.len())
                .ok_or_else(|| {
                    format!(
                        "CatFeaturesItemNet buffers: item {i} has offset {start} and length \
                         {len}, outside emb_bag_inputs ({} entries)",
                        self.emb_bag_inputs.len()
                    )
                })?;
            for &c in &self.emb_bag_inputs[range] {
                let c = u32::try_from(c)
                    .ok()
                    .filter(|&c| (c as usize) < n_columns)
                    .ok_or_else(|| {
                        format!(
                            "CatFeaturesItemNet buffers: item {i} has feature column {c}, but \
                             there are {n_columns} categorical columns"
                        )
                    })?;
                values.push(c);
            }
            offsets.push(values.len() as u32);
        }
        Ok((offsets, values))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    #[test]
    fn packed_attention_is_split_in_row_thirds() {
        let w = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((6, 2))
            .unwrap();
        let b = Tensor::arange(0f32, 6., &Device::Cpu).unwrap();
        let m = map_state_dict([
            (
                "torch_model.l.multi_head_attn.in_proj_weight".to_string(),
                w,
            ),
            ("torch_model.l.multi_head_attn.in_proj_bias".to_string(), b),
        ])
        .unwrap();
        let k = m.params["l.multi_head_attn.k_proj.weight"]
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(k, vec![vec![4., 5.], vec![6., 7.]]);
        let vb = m.params["l.multi_head_attn.v_proj.bias"]
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(vb, vec![4., 5.]);
        assert_eq!(
            m.sources["l.multi_head_attn.q_proj.weight"],
            "torch_model.l.multi_head_attn.in_proj_weight"
        );
    }

    #[test]
    fn bad_packed_shape_is_named() {
        let w = Tensor::zeros((5, 2), DType::F32, &Device::Cpu).unwrap();
        let err = map_state_dict([("a.in_proj_weight".to_string(), w)]).unwrap_err();
        assert!(
            err.contains("a.in_proj_weight") && err.contains("[5, 2]"),
            "{err}"
        );
    }

    #[test]
    fn cat_buffers_become_csr() {
        let c = CatBuffers {
            offsets: vec![0, 0, 2],
            emb_bag_inputs: vec![1, 0, 2],
            input_lengths: vec![0, 2, 1],
        };
        assert_eq!(c.to_csr(3, 3).unwrap(), (vec![0, 0, 2, 3], vec![1, 0, 2]));
        assert!(c.to_csr(3, 2).unwrap_err().contains("column 2"));
        assert!(c.to_csr(4, 3).is_err());
    }
}
