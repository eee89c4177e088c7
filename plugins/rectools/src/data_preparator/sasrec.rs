//! `SASRecDataPreparator`: ports the collate functions of RecTools' `SASRecDataPreparator`
//! (`rectools/models/nn/transformers/sasrec.py`): next-item targets, PAD only.

use super::*;

/// The canonical name.
pub(crate) const SASREC: &str = "SASRecDataPreparator";
const SASREC_EXTRA_TOKENS: [&str; 1] = ["PAD"];

/// SASRec's data preparator: PAD only, next-item targets, sessions of L + 1 items in training.
#[derive(Debug, Clone)]
pub struct SASRecDataPreparator {
    session_max_len: usize,
    shuffle_train: bool,
}

impl SASRecDataPreparator {
    /// A preparator for sessions of at most `session_max_len` inputs.
    pub fn new(session_max_len: usize, shuffle_train: bool) -> Self {
        SASRecDataPreparator {
            session_max_len,
            shuffle_train,
        }
    }

    /// Builds from the spec (`session_max_len`) and `data_preparator_kwargs`.
    pub fn from_spec(spec: &ModelSpec, kwargs: &Value) -> Result<Self> {
        let kw = DataPreparatorKwargs::decode(SASREC, kwargs)?;
        check_max_len(SASREC, spec.session_max_len)?;
        Ok(Self::new(spec.session_max_len, kw.shuffle_train))
    }

    /// Maximum session length L.
    pub fn session_max_len(&self) -> usize {
        self.session_max_len
    }

    fn context<'a>(
        &self,
        n_items: usize,
        sampler: Option<&'a dyn NegativeSampler>,
        rng: &'a SharedRng,
        device: &'a Device,
    ) -> CollateContext<'a> {
        CollateContext {
            component: SASREC,
            n_items,
            n_extra: SASREC_EXTRA_TOKENS.len(),
            sampler,
            rng,
            device,
        }
    }
}

impl DataPreparator for SASRecDataPreparator {
    fn item_extra_tokens(&self) -> Vec<String> {
        SASREC_EXTRA_TOKENS.iter().map(|s| s.to_string()).collect()
    }

    fn train_session_max_len_addition(&self) -> usize {
        1
    }

    fn shuffle_train(&self) -> bool {
        self.shuffle_train
    }

    /// `x[-(n-1):] = s[:-1]`, `y[-(n-1):] = s[1:]`, `yw[-(n-1):] = w[1:]` over the last L + 1
    /// items `s` of each session.
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let l = self.session_max_len;
        let b = sessions.len();
        let mut x = vec![PAD_ID; b * l];
        let mut y = vec![PAD_ID; b * l];
        let mut yw = vec![0f32; b * l];
        for (i, s) in sessions.iter().enumerate() {
            check_session(SASREC, i, s, n_items)?;
            let items = last(s.items, l + 1);
            let weights = last(s.weights, l + 1);
            if items.len() < 2 {
                continue;
            }
            let m = items.len() - 1;
            put_right(&mut x, i, l, &items[..m]);
            put_right(&mut y, i, l, &items[1..]);
            put_right(&mut yw, i, l, &weights[1..]);
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

    /// `x[-len(inp):] = inp[-L:]`; `y`, `yw` `[B, 1]`; negatives `[B, 1, K]`.
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let ctx = self.context(n_items, sampler, rng, device);
        collate_val_common(&ctx, self.session_max_len, false, sessions)
    }

    /// `x[-len(s):] = s[-L:]`.
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor> {
        let l = self.session_max_len;
        let mut x = vec![PAD_ID; sessions.len() * l];
        for (i, s) in sessions.iter().enumerate() {
            put_right(&mut x, i, l, last(s, l));
        }
        Ok(Tensor::from_vec(x, (sessions.len(), l), device)?)
    }
}

fn build_sasrec(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>> {
    Ok(Box::new(SASRecDataPreparator::from_spec(spec, kwargs)?))
}

recblocks_core::register! {
    DataPreparatorRegistration {
        name: SASREC,
        aliases: ["rectools.models.nn.transformers.sasrec.SASRecDataPreparator"],
        summary: "SASRec batches: left-padded sessions, next-item targets (inputs s[:-1], targets s[1:])",
        kwargs: DataPreparatorKwargs,
        build: build_sasrec,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::{super::test_support::*, *};

    // RecTools tests/models/nn/transformers/test_sasrec.py `TestSASRecDataPreparator`
    // (docs/rectools.md §2.6), L = 3. Interactions (user, item, weight, date): (10,13,1,11-30), (10,11,1,11-29),
    // (10,12,1,11-29), (30,11,1,11-27), (30,12,2,11-26), (30,15,1,11-25), (40,11,1,11-25),
    // (40,17,1,11-26), (50,16,1,11-25), (10,14,1,11-28), (10,16,1,11-27), (20,13,9,11-28).
    // Users 50 and 20 have one interaction (< train_min_user_interactions = 2) and are dropped;
    // each user keeps its last L + 1 = 4 rows (user 10 loses item 16). Stable time order gives the
    // item map PAD=0, 15=1, 11=2, 12=3, 17=4, 14=5, 13=6, and the sessions
    // user 10: [14, 11, 12, 13] = [5, 2, 3, 6], weights [1, 1, 1, 1];
    // user 30: [15, 12, 11] = [1, 3, 2], weights [1, 2, 1];
    // user 40: [11, 17] = [2, 4], weights [1, 1].
    // RecTools' expected batch lists the users in the order 10, 30, 40.
    #[test]
    fn sasrec_train_matches_rectools_test_vector() {
        let p = sasrec(3);
        let (s10, w10) = ([5u32, 2, 3, 6], [1f32, 1., 1., 1.]);
        let (s30, w30) = ([1u32, 3, 2], [1f32, 2., 1.]);
        let (s40, w40) = ([2u32, 4], [1f32, 1.]);
        let sessions = [
            SessionRef {
                items: &s10,
                weights: &w10,
            },
            SessionRef {
                items: &s30,
                weights: &w30,
            },
            SessionRef {
                items: &s40,
                weights: &w40,
            },
        ];
        let rng = SharedRng::new(0);
        let b = p
            .collate_train(&sessions, 7, None, &rng, &Device::Cpu)
            .expect("collate");
        assert_eq!(
            u32s(&b.x),
            vec![vec![5, 2, 3], vec![0, 1, 3], vec![0, 0, 2]]
        );
        assert_eq!(
            u32s(&b.y),
            vec![vec![2, 3, 6], vec![0, 3, 2], vec![0, 0, 4]]
        );
        assert_eq!(
            f32s(&b.yw),
            vec![vec![1., 1., 1.], vec![0., 2., 1.], vec![0., 0., 1.]]
        );
        assert!(b.negatives.is_none());
        assert_eq!(p.item_extra_tokens(), vec!["PAD".to_string()]);
        assert_eq!(p.train_session_max_len_addition(), 1);
        assert!(p.shuffle_train());
    }

    // Same section, with val users [10, 30]: the item map becomes PAD, 15, 11, 12, 17, 16, 14;
    // user 30's validation session is its train items [15, 12] = [1, 3] at weight 0 followed by its
    // held-out item 11 = 2 at weight 1 (user 10's target, item 13, is unknown and dropped).
    #[test]
    fn sasrec_val_matches_rectools_test_vector() {
        let p = sasrec(3);
        let (s30, w30) = ([1u32, 3, 2], [0f32, 0., 1.]);
        let sessions = [SessionRef {
            items: &s30,
            weights: &w30,
        }];
        let sampler = CountingSampler {
            k: 2,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_val(
                &sessions,
                7,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![0, 1, 3]]);
        assert_eq!(u32s(&b.y), vec![vec![2]]);
        assert_eq!(f32s(&b.yw), vec![vec![1.]]);
        let negs = b.negatives.expect("negatives");
        assert_eq!(negs.dims(), &[1, 1, 2]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(1, 1, 1, 7)]);
    }

    #[test]
    fn sasrec_train_keeps_last_l_plus_one_items_and_samples_negatives() {
        let p = sasrec(3);
        // 6 items: the last L + 1 = 4 are kept: [3, 4, 5, 6].
        let s = [1u32, 2, 3, 4, 5, 6];
        let w = [1f32, 2., 3., 4., 5., 6.];
        let single = [4u32];
        let single_w = [1f32];
        let sessions = [
            SessionRef {
                items: &s,
                weights: &w,
            },
            SessionRef {
                items: &single,
                weights: &single_w,
            },
        ];
        let sampler = CountingSampler {
            k: 3,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_train(
                &sessions,
                8,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![3, 4, 5], vec![0, 0, 0]]);
        assert_eq!(u32s(&b.y), vec![vec![4, 5, 6], vec![0, 0, 0]]);
        assert_eq!(f32s(&b.yw), vec![vec![4., 5., 6.], vec![0., 0., 0.]]);
        let negs = b.negatives.expect("negatives");
        assert_eq!(negs.dims(), &[2, 3, 3]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(2, 3, 1, 8)]);
        assert!(negs
            .flatten_all()
            .and_then(|t| t.to_vec1::<u32>())
            .expect("vec")
            .iter()
            .all(|&v| (1..8).contains(&v)));
    }

    #[test]
    fn sasrec_val_and_recommend_truncate_to_l() {
        let p = sasrec(3);
        // Inputs are the weight-0 items; the target is the first non-zero-weight item.
        let s = [1u32, 2, 3, 4, 5, 6];
        let w = [0f32, 0., 0., 0., 2.5, 1.];
        let b = p
            .collate_val(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![2, 3, 4]]);
        assert_eq!(u32s(&b.y), vec![vec![5]]);
        assert_eq!(f32s(&b.yw), vec![vec![2.5]]);
        assert!(b.negatives.is_none());

        let long = [1u32, 2, 3, 4, 5];
        let short = [6u32];
        let x = p
            .collate_recommend(&[&long, &short, &[]], &Device::Cpu)
            .expect("recommend");
        assert_eq!(u32s(&x), vec![vec![3, 4, 5], vec![0, 0, 6], vec![0, 0, 0]]);
    }

    #[test]
    fn val_without_target_and_bad_ids_are_errors() {
        let p = sasrec(3);
        let s = [1u32, 2];
        let w = [0f32, 0.];
        let err = p
            .collate_val(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("no target");
        assert!(err.to_string().contains("no target"), "{err}");
        let s = [1u32, 9];
        let w = [1f32, 1.];
        let err = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("bad id");
        assert!(err.to_string().contains("item id 9"), "{err}");
        let w = [1f32];
        let err = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                10,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("length mismatch");
        assert!(err.to_string().contains("2 items but 1 weights"), "{err}");
    }
}
