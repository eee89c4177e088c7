//! `AlbertLayers`: ALBERT's cross-layer parameter sharing for transformer layer stacks, with the
//! group semantics of HuggingFace's `AlbertTransformer`
//! ([`modeling_albert.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/albert/modeling_albert.py),
//! docs/rectools.md §8) around RecTools' blocks, as the customization guide's `AlbertLayers`
//! (docs/rectools.md §5) intends.
//!
//! `n_hidden_groups` (G) groups of `n_inner_groups` (I) distinct layers each, so `G × I`
//! layers' worth of parameters whatever `n_blocks` is. The stack runs `n_blocks` steps; step `s`
//! uses group `s · G / n_blocks` (contiguous steps share a group, HF's `group_idx`) and applies
//! that group's I layers in order: `n_blocks × I` layer applications ([`schedule`]). `n_blocks`
//! must be a positive multiple of G.
//!
//! The layers are RecTools' blocks, not HF's post-LN `AlbertLayer`, chosen by `layer_type`:
//! - `"PreLN"` (default): [`PreLNTransformerLayer`] with a feed-forward of width
//!   `ff_factors_multiplier · d`; no timeline masking and no final norm, as
//!   `PreLNTransformerLayers` (BERT4Rec relies on the key padding mask; on a model without it,
//!   such as SASRecModel's defaults, padded positions are attended to, as with RecTools' PreLN
//!   stack there).
//! - `"SASRec"`: [`SASRecTransformerLayer`] with its feed-forward of width d
//!   (`ff_factors_multiplier` is ignored, as RecTools' SASRec block has no multiplier); the
//!   timeline mask is applied before every layer application and after the last, then a final
//!   LayerNorm `last_layernorm` (eps 1e-8), as `SASRecTransformerLayers`.
//!
//! Parameter names follow HF: `albert_layer_groups.{g}.albert_layers.{i}.` then the block's own
//! names (`multi_head_attn.q_proj.weight`, ...). Sharing is reuse of one module, so a shared
//! weight's gradient is the sum over its applications.
//!
//! Fixes over the guide's code: it applies `transformer_blocks[step]` instead of the computed
//! layer index (half of the layers never run with its settings), ignores the timeline mask, and
//! divides `n_blocks / n_hidden_groups` as floats without checking divisibility.

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::Tensor,
    components::{last_position, AttentionMasks, TransformerLayers},
    kwargs::decode_kwargs,
    nn::{
        blocks::LAST_LAYER_NORM_EPS, masks::apply_timeline_mask, LayerNorm, PreLNTransformerLayer,
        SASRecTransformerLayer,
    },
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const NAME: &str = "AlbertLayers";

/// Kwargs of [`AlbertLayers`], with the defaults of the guide's `AlbertLayers.__init__` and HF's
/// `AlbertConfig` (one group of one layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlbertLayersKwargs {
    /// Number of layer groups G (HF `num_hidden_groups`); `n_blocks` must be a multiple of it.
    pub n_hidden_groups: usize,
    /// Layers per group I (HF `inner_group_num`), applied in order at every step of the group.
    pub n_inner_groups: usize,
    /// Feed-forward width as a multiple of `n_factors` (`"PreLN"` only).
    pub ff_factors_multiplier: usize,
    /// The wrapped block: `"PreLN"` or `"SASRec"`.
    pub layer_type: String,
}

impl Default for AlbertLayersKwargs {
    fn default() -> Self {
        AlbertLayersKwargs {
            n_hidden_groups: 1,
            n_inner_groups: 1,
            ff_factors_multiplier: 4,
            layer_type: AlbertLayerType::PreLN.name().to_string(),
        }
    }
}

/// The block an ALBERT layer wraps, with the padding handling of its RecTools stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlbertLayerType {
    /// RecTools' `PreLNTransformerLayer` (BERT4Rec's block).
    PreLN,
    /// RecTools' `SASRecTransformerLayer`, with timeline masking and a final LayerNorm.
    SASRec,
}

impl AlbertLayerType {
    /// Every accepted `layer_type` name.
    pub const NAMES: [&'static str; 2] = ["PreLN", "SASRec"];

    /// The `layer_type` name.
    pub fn name(self) -> &'static str {
        match self {
            AlbertLayerType::PreLN => "PreLN",
            AlbertLayerType::SASRec => "SASRec",
        }
    }

    /// Parses a `layer_type` name; the error lists the accepted ones.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "PreLN" => Ok(AlbertLayerType::PreLN),
            "SASRec" => Ok(AlbertLayerType::SASRec),
            other => Err(CoreError::invalid(
                ComponentKind::TransformerLayers,
                NAME,
                format!(
                    "unknown layer_type `{other}`; expected one of {}",
                    Self::NAMES.map(|n| format!("\"{n}\"")).join(", ")
                ),
            )),
        }
    }
}

/// One distinct ALBERT layer (HF `AlbertLayer`): the wrapped block.
#[derive(Debug, Clone)]
pub enum AlbertLayer {
    /// A pre-LN block.
    PreLN(PreLNTransformerLayer),
    /// A SASRec block.
    SASRec(SASRecTransformerLayer),
}

impl AlbertLayer {
    /// Applies the block to `x` `[B, L, d]` under the additive attention bias.
    pub fn forward_t(&self, x: &Tensor, attn_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        match self {
            AlbertLayer::PreLN(b) => b.forward_t(x, attn_bias, train),
            AlbertLayer::SASRec(b) => b.forward_t(x, attn_bias, train),
        }
    }

    /// The block's eval-mode output at the last position only, `[B, 1, d]`
    /// (see the wrapped blocks' `forward_last`).
    pub fn forward_last(&self, x: &Tensor, last_query_bias: Option<&Tensor>) -> Result<Tensor> {
        match self {
            AlbertLayer::PreLN(b) => b.forward_last(x, last_query_bias),
            AlbertLayer::SASRec(b) => b.forward_last(x, last_query_bias),
        }
    }
}

/// The layer applications of a stack, in order: `(group, inner)` for each of the `n_blocks`
/// steps, step `s` using group `s · n_hidden_groups / n_blocks` (integer division) and all of its
/// `n_inner_groups` layers. `n_blocks × n_inner_groups` entries.
///
/// E.g. `schedule(4, 2, 2)` = `[(0,0), (0,1), (0,0), (0,1), (1,0), (1,1), (1,0), (1,1)]`.
/// Meant for `n_blocks` a positive multiple of `n_hidden_groups` (what [`AlbertLayers::new`]
/// accepts); then every group gets `n_blocks / n_hidden_groups` consecutive steps.
pub fn schedule(
    n_blocks: usize,
    n_hidden_groups: usize,
    n_inner_groups: usize,
) -> Vec<(usize, usize)> {
    (0..n_blocks)
        .flat_map(|step| {
            let group = step * n_hidden_groups / n_blocks;
            (0..n_inner_groups).map(move |inner| (group, inner))
        })
        .collect()
}

/// ALBERT's shared layer stack: groups `albert_layer_groups.{g}` of layers
/// `albert_layers.{i}`, applied in [`schedule`] order (and `last_layernorm` for `"SASRec"`).
#[derive(Debug, Clone)]
pub struct AlbertLayers {
    albert_layer_groups: Vec<Vec<AlbertLayer>>,
    applications: Vec<(usize, usize)>,
    layer_type: AlbertLayerType,
    last_layernorm: Option<LayerNorm>,
}

impl AlbertLayers {
    /// Builds the `G × I` layers at width `ctx.n_factors` from the spec's `n_blocks`, `n_heads`
    /// and `dropout_rate`.
    pub fn new(ctx: &BuildContext<'_>, kwargs: &AlbertLayersKwargs) -> Result<Self> {
        let layer_type = AlbertLayerType::parse(&kwargs.layer_type)?;
        let bad = |m: String| CoreError::invalid(ComponentKind::TransformerLayers, NAME, m);
        let (n_blocks, d, n_heads) = (ctx.spec.n_blocks, ctx.n_factors, ctx.spec.n_heads);
        let (groups, inner) = (kwargs.n_hidden_groups, kwargs.n_inner_groups);
        if groups == 0 || inner == 0 {
            return Err(bad(format!(
                "n_hidden_groups ({groups}) and n_inner_groups ({inner}) must both be at least 1"
            )));
        }
        if n_blocks == 0 || !n_blocks.is_multiple_of(groups) {
            return Err(bad(format!(
                "n_blocks ({n_blocks}) must be a positive multiple of n_hidden_groups ({groups}): \
                 each group runs for n_blocks / n_hidden_groups consecutive steps"
            )));
        }
        if d == 0 || n_heads == 0 || !d.is_multiple_of(n_heads) {
            return Err(bad(format!(
                "the width {d} must be a positive multiple of n_heads = {n_heads}"
            )));
        }
        if layer_type == AlbertLayerType::PreLN && kwargs.ff_factors_multiplier == 0 {
            return Err(bad("ff_factors_multiplier must be at least 1".into()));
        }
        let p = ctx.spec.dropout_rate;
        let groups_vb = ctx.vb.pp("albert_layer_groups");
        let albert_layer_groups = (0..groups)
            .map(|g| {
                let layers_vb = groups_vb.pp(g).pp("albert_layers");
                (0..inner)
                    .map(|i| {
                        let vb = layers_vb.pp(i);
                        let rng = ctx.rng.clone();
                        Ok(match layer_type {
                            AlbertLayerType::PreLN => {
                                AlbertLayer::PreLN(PreLNTransformerLayer::new(
                                    d,
                                    n_heads,
                                    p,
                                    kwargs.ff_factors_multiplier,
                                    &vb,
                                    rng,
                                )?)
                            }
                            AlbertLayerType::SASRec => AlbertLayer::SASRec(
                                SASRecTransformerLayer::new(d, n_heads, p, &vb, rng)?,
                            ),
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let last_layernorm = match layer_type {
            AlbertLayerType::SASRec => Some(LayerNorm::new(
                d,
                LAST_LAYER_NORM_EPS,
                &ctx.vb.pp("last_layernorm"),
            )?),
            AlbertLayerType::PreLN => None,
        };
        Ok(AlbertLayers {
            albert_layer_groups,
            applications: schedule(n_blocks, groups, inner),
            layer_type,
            last_layernorm,
        })
    }

    /// The wrapped block type.
    pub fn layer_type(&self) -> AlbertLayerType {
        self.layer_type
    }

    /// The distinct layers, by group then inner index.
    pub fn layer_groups(&self) -> &[Vec<AlbertLayer>] {
        &self.albert_layer_groups
    }

    /// The `(group, inner)` layer applications of one forward pass, in order.
    pub fn applications(&self) -> &[(usize, usize)] {
        &self.applications
    }

    /// Inner layer `i` of group `g` (an error names a schedule entry with no layer).
    fn layer(&self, g: usize, i: usize) -> Result<&AlbertLayer> {
        self.albert_layer_groups
            .get(g)
            .and_then(|group| group.get(i))
            .ok_or_else(|| {
                CoreError::Other(format!("{NAME}: no layer ({g}, {i}) for the schedule"))
            })
    }

    /// [`TransformerLayers::forward_t`], calling `on_apply(group, inner)` just before each layer
    /// application (to observe the schedule the forward pass actually runs).
    pub fn forward_traced(
        &self,
        seqs: &Tensor,
        masks: &AttentionMasks,
        train: bool,
        on_apply: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let sasrec = self.layer_type == AlbertLayerType::SASRec;
        let tm = &masks.timeline_mask;
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for &(g, i) in &self.applications {
            let layer = self.layer(g, i)?;
            on_apply(g, i);
            x = match layer {
                // The SASRec stack masks each block's input; the fused block does it itself.
                AlbertLayer::SASRec(b) if sasrec => b.forward_masked_t(&x, tm, bias, train)?,
                _ => layer.forward_t(&x, bias, train)?,
            };
        }
        if let Some(norm) = &self.last_layernorm {
            x = norm.forward(&apply_timeline_mask(&x, tm)?)?;
        }
        Ok(x)
    }
}

impl TransformerLayers for AlbertLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        self.forward_traced(seqs, masks, train, &mut |_, _| {})
    }

    fn forward_last(&self, seqs: &Tensor, masks: &AttentionMasks) -> Result<Tensor> {
        let Some((&(lg, li), rest)) = self.applications.split_last() else {
            return last_position(&self.forward_t(seqs, masks, false)?);
        };
        let sasrec = self.layer_type == AlbertLayerType::SASRec;
        let tm = &masks.timeline_mask;
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for &(g, i) in rest {
            if sasrec {
                x = x.broadcast_mul(tm)?;
            }
            x = self.layer(g, i)?.forward_t(&x, bias, false)?;
        }
        if sasrec {
            x = x.broadcast_mul(tm)?;
        }
        let mut x = self
            .layer(lg, li)?
            .forward_last(&x, masks.last_query_bias()?.as_ref())?;
        if let Some(norm) = &self.last_layernorm {
            x = norm.forward(&x.broadcast_mul(&last_position(tm)?)?)?;
        }
        Ok(x)
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    let kw: AlbertLayersKwargs = decode_kwargs(ComponentKind::TransformerLayers, NAME, kwargs)?;
    Ok(Box::new(AlbertLayers::new(ctx, &kw)?))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: NAME,
        summary: "ALBERT cross-layer sharing: n_hidden_groups × n_inner_groups PreLN or SASRec layers reused over n_blocks steps",
        kwargs: AlbertLayersKwargs,
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;

    use super::*;
    use recblocks_core::serde_json::json;

    #[test]
    fn schedule_runs_contiguous_steps_per_group_and_every_inner_layer() {
        assert_eq!(
            schedule(4, 2, 2),
            [
                (0, 0),
                (0, 1),
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (1, 0),
                (1, 1)
            ]
        );
        // HF's example: 12 layers in 4 groups, layers 0–2 use group 0, 3–5 group 1, ...
        let groups: Vec<usize> = schedule(12, 4, 1).iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]);
        assert_eq!(schedule(4, 1, 1), [(0, 0); 4]);
        assert_eq!(schedule(2, 2, 2), [(0, 0), (0, 1), (1, 0), (1, 1)]);
    }

    #[test]
    fn kwargs_defaults_and_layer_type_names() -> Result<()> {
        assert_eq!(
            default_kwargs_json::<AlbertLayersKwargs>(),
            json!({"n_hidden_groups": 1, "n_inner_groups": 1, "ff_factors_multiplier": 4,
                   "layer_type": "PreLN"})
        );
        for t in [AlbertLayerType::PreLN, AlbertLayerType::SASRec] {
            assert_eq!(AlbertLayerType::parse(t.name())?, t);
        }
        let err = AlbertLayerType::parse("PostLN")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("PostLN") && err.contains("\"PreLN\", \"SASRec\""),
            "{err}"
        );
        Ok(())
    }
}
