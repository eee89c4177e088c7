//! `BERT4RecDataPreparator`: ports the collate functions of RecTools' `BERT4RecDataPreparator`
//! (`rectools/models/nn/transformers/bert4rec.py`): masked-item targets (80/10/10 within
//! `mask_prob`), PAD and MASK, MASK appended at validation and recommendation.

use super::*;

/// The canonical name.
pub(crate) const BERT4REC: &str = "BERT4RecDataPreparator";
const BERT4REC_EXTRA_TOKENS: [&str; 2] = ["PAD", "MASK"];

/// BERT4Rec's data preparator: PAD and MASK, masked-item targets.
#[derive(Debug, Clone)]
pub struct BERT4RecDataPreparator {
    session_max_len: usize,
    shuffle_train: bool,
    mask_prob: f64,
}

impl BERT4RecDataPreparator {
    /// A preparator for sessions of at most `session_max_len` items, masking each training position
    /// with probability `mask_prob`.
    pub fn new(session_max_len: usize, mask_prob: f64, shuffle_train: bool) -> Self {
        BERT4RecDataPreparator {
            session_max_len,
            shuffle_train,
            mask_prob,
        }
    }

    /// Builds from the spec (`session_max_len`, `mask_prob`, default 0.15) and
    /// `data_preparator_kwargs`.
    pub fn from_spec(spec: &ModelSpec, kwargs: &Value) -> Result<Self> {
        let kw = DataPreparatorKwargs::decode(BERT4REC, kwargs)?;
        check_max_len(BERT4REC, spec.session_max_len)?;
        let mask_prob = spec.mask_prob.unwrap_or(DEFAULT_MASK_PROB);
        if !(0.0..=1.0).contains(&mask_prob) {
            return Err(CoreError::invalid(
                ComponentKind::DataPreparator,
                BERT4REC,
                format!("mask_prob must be in [0, 1], found {mask_prob}"),
            ));
        }
        Ok(Self::new(spec.session_max_len, mask_prob, kw.shuffle_train))
    }

    /// Maximum session length L.
    pub fn session_max_len(&self) -> usize {
        self.session_max_len
    }

    /// The masking probability.
    pub fn mask_prob(&self) -> f64 {
        self.mask_prob
    }

    fn context<'a>(
        &self,
        n_items: usize,
        sampler: Option<&'a dyn NegativeSampler>,
        rng: &'a SharedRng,
        device: &'a Device,
    ) -> CollateContext<'a> {
        CollateContext {
            component: BERT4REC,
            n_items,
            n_extra: BERT4REC_EXTRA_TOKENS.len(),
            sampler,
            rng,
            device,
        }
    }

    /// Masks one session (RecTools `_mask_session`): returns the model input and the targets.
    ///
    /// For each position a draw `p ~ U[0, 1)`: if `p < mask_prob`, `p /= mask_prob` and the input
    /// becomes MASK (`p < 0.8`), a uniformly random real item in `[2, n_items)` (`p < 0.9`), or
    /// stays unchanged; the target is the original item. Otherwise the target is 0 (ignored).
    pub fn mask_session<R: Rng + ?Sized>(
        &self,
        items: &[u32],
        n_items: usize,
        rng: &mut R,
    ) -> (Vec<u32>, Vec<u32>) {
        let lowest = BERT4REC_EXTRA_TOKENS.len() as u32;
        let highest = n_items as u32;
        let mut masked = Vec::with_capacity(items.len());
        let mut target = Vec::with_capacity(items.len());
        for &item in items {
            let mut p: f64 = rng.random();
            if p < self.mask_prob {
                p /= self.mask_prob;
                let input = if p < 0.8 {
                    MASK_ID
                } else if p < 0.9 && lowest < highest {
                    rng.random_range(lowest..highest)
                } else {
                    item
                };
                masked.push(input);
                target.push(item);
            } else {
                masked.push(item);
                target.push(PAD_ID);
            }
        }
        (masked, target)
    }
}

impl DataPreparator for BERT4RecDataPreparator {
    fn item_extra_tokens(&self) -> Vec<String> {
        BERT4REC_EXTRA_TOKENS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn train_session_max_len_addition(&self) -> usize {
        0
    }

    fn shuffle_train(&self) -> bool {
        self.shuffle_train
    }

    /// Masks the last L items `s` of each session: `x[-n:] = masked`, `y[-n:] = target`,
    /// `yw[-n:] = w`.
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let n_extra = BERT4REC_EXTRA_TOKENS.len();
        if n_items <= n_extra {
            return Err(CoreError::invalid(
                ComponentKind::DataPreparator,
                BERT4REC,
                format!(
                    "the catalog has {n_items} ids of which {n_extra} are extra tokens (PAD, \
                     MASK): there is no real item to train on"
                ),
            ));
        }
        let l = self.session_max_len;
        let b = sessions.len();
        let mut x = vec![PAD_ID; b * l];
        let mut y = vec![PAD_ID; b * l];
        let mut yw = vec![0f32; b * l];
        {
            let mut g = rng.lock();
            for (i, s) in sessions.iter().enumerate() {
                check_session(BERT4REC, i, s, n_items)?;
                let items = last(s.items, l);
                let weights = last(s.weights, l);
                let (masked, target) = self.mask_session(items, n_items, &mut *g);
                put_right(&mut x, i, l, &masked);
                put_right(&mut y, i, l, &target);
                put_right(&mut yw, i, l, weights);
            }
        }
        let (x, y, yw) = tensors(x, y, yw, b, l, l, device)?;
        let negatives = self
            .context(n_items, sampler, rng, device)
            .draw_negatives(b, l)?;
        Ok(Batch {
            x,
            y,
            yw,
            negatives,
        })
    }

    /// `x[-(len(inp)+1):] = (inp + [MASK])[-L:]`; `y`, `yw` `[B, 1]`; negatives `[B, 1, K]`.
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let ctx = self.context(n_items, sampler, rng, device);
        collate_val_common(&ctx, self.session_max_len, true, sessions)
    }

    /// `x = (s + [MASK])[-L:]`, left-padded: at most L − 1 real items and the MASK.
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor> {
        let l = self.session_max_len;
        let mut x = vec![PAD_ID; sessions.len() * l];
        let mut buf = Vec::with_capacity(l);
        for (i, s) in sessions.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(last(s, l.saturating_sub(1)));
            buf.push(MASK_ID);
            put_right(&mut x, i, l, last(&buf, l));
        }
        Ok(Tensor::from_vec(x, (sessions.len(), l), device)?)
    }
}

fn build_bert4rec(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>> {
    Ok(Box::new(BERT4RecDataPreparator::from_spec(spec, kwargs)?))
}

recblocks_core::register! {
    DataPreparatorRegistration {
        name: BERT4REC,
        aliases: ["rectools.models.nn.transformers.bert4rec.BERT4RecDataPreparator"],
        summary: "BERT4Rec batches: left-padded sessions with masked-item targets (80/10/10 within mask_prob), MASK appended at inference",
        kwargs: DataPreparatorKwargs,
        build: build_bert4rec,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::{super::test_support::*, *};

    #[test]
    fn bert4rec_masking_statistics() {
        let mask_prob = 0.5;
        let p = bert(50, mask_prob);
        let n_items = 1002; // 1000 real items: a random item rarely equals the original.
        let rng = SharedRng::new(7);
        let sessions: Vec<(Vec<u32>, Vec<f32>)> = (0..400)
            .map(|u| {
                let n = 10 + u % 41;
                let items = (0..n)
                    .map(|j| 2 + ((u * 31 + j * 7) % 1000) as u32)
                    .collect();
                (items, vec![1.5f32; n])
            })
            .collect();
        let refs: Vec<SessionRef<'_>> = sessions
            .iter()
            .map(|(i, w)| SessionRef {
                items: i,
                weights: w,
            })
            .collect();
        let b = p
            .collate_train(&refs, n_items, None, &rng, &Device::Cpu)
            .expect("collate");
        let (x, y, yw) = (u32s(&b.x), u32s(&b.y), f32s(&b.yw));
        let (mut total, mut masked, mut to_mask, mut to_random, mut unchanged) = (0, 0, 0, 0, 0);
        for (i, (items, _)) in sessions.iter().enumerate() {
            let pad = 50 - items.len();
            for j in 0..pad {
                assert_eq!((x[i][j], y[i][j], yw[i][j]), (0, 0, 0.0));
            }
            for (j, &orig) in items.iter().enumerate() {
                let (xi, yi) = (x[i][pad + j], y[i][pad + j]);
                assert_eq!(yw[i][pad + j], 1.5);
                total += 1;
                if yi == 0 {
                    // Not masked: input unchanged, target ignored.
                    assert_eq!(xi, orig);
                    continue;
                }
                assert_eq!(yi, orig);
                masked += 1;
                if xi == MASK_ID {
                    to_mask += 1;
                } else if xi == orig {
                    unchanged += 1;
                } else {
                    assert!((2..n_items as u32).contains(&xi), "random item {xi}");
                    to_random += 1;
                }
            }
        }
        let frac = masked as f64 / total as f64;
        assert!((frac - mask_prob).abs() < 0.02, "masked fraction {frac}");
        let m = masked as f64;
        let (fm, fr, fu) = (
            to_mask as f64 / m,
            to_random as f64 / m,
            unchanged as f64 / m,
        );
        assert!((fm - 0.8).abs() < 0.02, "MASK fraction {fm}");
        assert!((fr - 0.1).abs() < 0.015, "random fraction {fr}");
        assert!((fu - 0.1).abs() < 0.015, "unchanged fraction {fu}");

        // Same seed, same batch.
        let again = p
            .collate_train(&refs, n_items, None, &SharedRng::new(7), &Device::Cpu)
            .expect("collate");
        assert_eq!(u32s(&again.x), x);
        assert_eq!(u32s(&again.y), y);
    }

    #[test]
    fn bert4rec_random_items_are_never_extra_tokens() {
        // mask_prob 1: every position is masked; with one real item (id 2) every random
        // replacement must be 2, never PAD or MASK sampled as an item.
        let p = bert(20, 1.0);
        let items = vec![2u32; 20];
        let w = vec![1f32; 20];
        let refs = vec![
            SessionRef {
                items: &items,
                weights: &w
            };
            200
        ];
        let b = p
            .collate_train(&refs, 3, None, &SharedRng::new(3), &Device::Cpu)
            .expect("collate");
        let x = u32s(&b.x);
        assert!(x.iter().flatten().all(|&v| v == MASK_ID || v == 2));
        assert!(x.iter().flatten().any(|&v| v == 2));
        assert!(u32s(&b.y).iter().flatten().all(|&v| v == 2));
        // Check the random branch directly with several real items.
        let g = SharedRng::new(5);
        let p = bert(5, 1.0);
        let items = vec![7u32; 5000];
        let (masked, target) = p.mask_session(&items, 6 + 2, &mut *g.lock());
        let random: Vec<u32> = masked
            .iter()
            .copied()
            .filter(|&v| v != MASK_ID && v != 7)
            .collect();
        assert!(!random.is_empty());
        assert!(random.iter().all(|&v| (2..8).contains(&v)), "{random:?}");
        assert!(target.iter().all(|&t| t == 7));
    }

    #[test]
    fn bert4rec_train_keeps_last_l_and_draws_negatives() {
        let p = bert(3, 0.0);
        let s = [2u32, 3, 4, 5, 6];
        let w = [1f32, 2., 3., 4., 5.];
        let sampler = CountingSampler {
            k: 2,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        // mask_prob 0: nothing masked, every target ignored.
        assert_eq!(u32s(&b.x), vec![vec![4, 5, 6]]);
        assert_eq!(u32s(&b.y), vec![vec![0, 0, 0]]);
        assert_eq!(f32s(&b.yw), vec![vec![3., 4., 5.]]);
        assert_eq!(b.negatives.expect("negatives").dims(), &[1, 3, 2]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(1, 3, 2, 7)]);
    }

    #[test]
    fn bert4rec_val_and_recommend_append_mask() {
        let p = bert(4, 0.15);
        let (s1, w1) = ([2u32, 3, 4], [0f32, 0., 1.]);
        let (s2, w2) = ([2u32, 3, 4, 5, 6, 7], [0f32, 0., 0., 0., 0., 3.]);
        let (s3, w3) = ([5u32], [2f32]);
        let b = p
            .collate_val(
                &[
                    SessionRef {
                        items: &s1,
                        weights: &w1,
                    },
                    SessionRef {
                        items: &s2,
                        weights: &w2,
                    },
                    SessionRef {
                        items: &s3,
                        weights: &w3,
                    },
                ],
                8,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(
            u32s(&b.x),
            vec![vec![0, 2, 3, 1], vec![4, 5, 6, 1], vec![0, 0, 0, 1]]
        );
        assert_eq!(u32s(&b.y), vec![vec![4], vec![7], vec![5]]);
        assert_eq!(f32s(&b.yw), vec![vec![1.], vec![3.], vec![2.]]);

        let x = p
            .collate_recommend(&[&[2, 3], &[2, 3, 4, 5, 6], &[]], &Device::Cpu)
            .expect("recommend");
        assert_eq!(
            u32s(&x),
            vec![vec![0, 2, 3, 1], vec![4, 5, 6, 1], vec![0, 0, 0, 1]]
        );
    }
}
