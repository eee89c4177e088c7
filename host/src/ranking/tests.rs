//! Tests of the ranker: ties, cosine, exclusions (nested and CSR), whitelists, non-finite
//! scores, errors, and a randomized comparison with a full sort.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    ranker::normalise_rows, topk::by_score_then_id, topk_scores, CsrExclusions, Distance,
    Exclusions, RankError, RankRequest, Scored,
};

fn req<'a>(subjects: &'a [f32], objects: &'a [f32], dim: usize, k: usize) -> RankRequest<'a> {
    RankRequest {
        subjects,
        objects,
        dim,
        k,
        exclusions: None,
        whitelist: None,
        distance: Distance::Dot,
        batch_size: 2,
    }
}

// Objects (d = 2): o0 = (1, 0), o1 = (0, 1), o2 = (1, 1), o3 = (2, 0), o4 = (0, 0).
const OBJ: [f32; 10] = [1., 0., 0., 1., 1., 1., 2., 0., 0., 0.];

#[test]
fn dot_ties_broken_by_smaller_id() {
    // s = (1, 1): scores 1, 1, 2, 2, 0 -> (2, 2), (3, 2), (0, 1), (1, 1), (4, 0).
    let s = [1., 1.];
    let got = topk_scores(&req(&s, &OBJ, 2, 4)).unwrap();
    assert_eq!(got, vec![vec![(2, 2.), (3, 2.), (0, 1.), (1, 1.)]]);
}

#[test]
fn cosine_normalises_and_zero_vectors_score_zero() {
    // s = (3, 0) -> (1, 0); o2 -> (0.7071, 0.7071); o4 stays (0, 0) -> score 0, not NaN.
    let s = [3., 0., 0., 0.];
    let mut r = req(&s, &OBJ, 2, 10);
    r.distance = Distance::Cosine;
    let got = topk_scores(&r).unwrap();
    let ids: Vec<u32> = got[0].iter().map(|e| e.0).collect();
    assert_eq!(ids, vec![0, 3, 2, 1, 4]);
    let want = [1.0, 1.0, std::f32::consts::FRAC_1_SQRT_2, 0.0, 0.0];
    for (e, w) in got[0].iter().zip(want) {
        assert!((e.1 - w).abs() < 1e-6, "{got:?}");
    }
    // The zero subject scores 0 against everything: all five, ids ascending.
    assert_eq!(got[1], (0..5).map(|i| (i, 0.0)).collect::<Vec<_>>());
}

#[test]
fn filter_whitelist_and_k_larger_than_catalog() {
    let s = [1., 1., 1., 0., 0., 1.];
    let ex = vec![vec![2, 99], vec![], vec![1, 3]];
    let mut r = req(&s, &OBJ, 2, 10);
    r.exclusions = Some(&ex);
    r.whitelist = Some(&[3, 1, 2, 3]);
    let got = topk_scores(&r).unwrap();
    assert_eq!(got[0], vec![(3, 2.), (1, 1.)]);
    assert_eq!(got[1], vec![(3, 2.), (2, 1.), (1, 0.)]);
    assert_eq!(got[2], vec![(2, 1.)]);

    let indptr = [0, 1, 1, 3];
    let indices = [2, 1, 3];
    let csr = CsrExclusions::new(&indptr, &indices).unwrap();
    r.exclusions = Some(&csr);
    r.whitelist = None;
    r.k = 2;
    let got = topk_scores(&r).unwrap();
    assert_eq!(got[0], vec![(3, 2.), (0, 1.)]);
    assert_eq!(got[1], vec![(3, 2.), (0, 1.)]);
    assert_eq!(got[2], vec![(2, 1.), (0, 0.)]);
}

#[test]
fn non_finite_scores_are_dropped_and_errors_reported() {
    let obj = [1., f32::NAN, f32::NEG_INFINITY, 2.];
    let got = topk_scores(&req(&[1.], &obj, 1, 5)).unwrap();
    assert_eq!(got, vec![vec![(3, 2.), (0, 1.)]]);
    assert!(topk_scores(&req(&[1., 2., 3.], &OBJ, 2, 1)).is_err());
    let mut r = req(&[1., 2.], &OBJ, 2, 1);
    r.whitelist = Some(&[5]);
    assert!(matches!(
        topk_scores(&r),
        Err(RankError::WhitelistOutOfRange { .. })
    ));
    r.whitelist = None;
    let ex = vec![vec![], vec![]];
    r.exclusions = Some(&ex);
    assert!(matches!(
        topk_scores(&r),
        Err(RankError::ExclusionRows { .. })
    ));
    assert!(CsrExclusions::new(&[0, 2], &[1]).is_err());
    r.exclusions = None;
    r.k = 0;
    assert_eq!(topk_scores(&r).unwrap(), vec![Vec::<Scored>::new()]);
}

/// Full sort of every candidate: the reference the batched ranker must match.
fn naive(r: &RankRequest<'_>) -> Vec<Vec<Scored>> {
    let d = r.dim;
    let prep = |x: &[f32]| match r.distance {
        Distance::Dot => x.to_vec(),
        Distance::Cosine => normalise_rows(x, d),
    };
    let (s, o) = (prep(r.subjects), prep(r.objects));
    (0..s.len() / d)
        .map(|u| {
            let ex = r
                .exclusions
                .map(|e| e.excluded(u).to_vec())
                .unwrap_or_default();
            let mut all: Vec<Scored> = (0..o.len() / d)
                .filter(|&i| !ex.contains(&(i as u32)))
                .filter(|&i| r.whitelist.is_none_or(|w| w.contains(&(i as u32))))
                .map(|i| {
                    let dot = (0..d).map(|j| s[u * d + j] * o[i * d + j]).sum::<f32>();
                    (i as u32, dot)
                })
                .collect();
            all.sort_by(by_score_then_id);
            all.truncate(r.k);
            all
        })
        .collect()
}

#[test]
fn randomized_against_naive_full_sort() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (n_s, n_o, d) = (203, 157, 8);
    // Small integers keep dot products exact in f32 and create many ties.
    let s: Vec<f32> = (0..n_s * d)
        .map(|_| rng.random_range(-2..=2) as f32)
        .collect();
    let o: Vec<f32> = (0..n_o * d)
        .map(|_| rng.random_range(-2..=2) as f32)
        .collect();
    let ex: Vec<Vec<u32>> = (0..n_s)
        .map(|_| {
            (0..rng.random_range(0..40))
                .map(|_| rng.random_range(0..n_o as u32))
                .collect()
        })
        .collect();
    let wl: Vec<u32> = (0..n_o as u32).filter(|_| rng.random_bool(0.7)).collect();
    for (k, with_ex, with_wl) in [(10, true, false), (1, false, true), (200, true, true)] {
        let mut r = req(&s, &o, d, k);
        r.batch_size = 16;
        r.exclusions = with_ex.then_some(&ex as &dyn Exclusions);
        r.whitelist = with_wl.then_some(wl.as_slice());
        assert_eq!(topk_scores(&r).unwrap(), naive(&r), "k={k}");
    }
    // Cosine on continuous values: same ids, scores within float tolerance.
    let s: Vec<f32> = (0..n_s * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let o: Vec<f32> = (0..n_o * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut r = req(&s, &o, d, 20);
    r.distance = Distance::Cosine;
    r.batch_size = 50;
    r.exclusions = Some(&ex);
    let (got, want) = (topk_scores(&r).unwrap(), naive(&r));
    for (g, w) in got.iter().zip(&want) {
        let gi: Vec<u32> = g.iter().map(|e| e.0).collect();
        let wi: Vec<u32> = w.iter().map(|e| e.0).collect();
        assert_eq!(gi, wi);
        for (a, b) in g.iter().zip(w) {
            assert!((a.1 - b.1).abs() < 1e-5);
        }
    }
}
