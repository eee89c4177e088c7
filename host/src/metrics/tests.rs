//! End-to-end tests of [`super::compute`] on a small catalog computed by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// Catalog of 6 items; train popularity 0 -> 4, 1 -> 2, 2 -> 2, 3 -> 1, items 4 and 5 cold.
/// Test: user 1 {0, 3}, user 2 {2, 5}, user 3 {1, 4} (no recommendations).
/// Reco: user 1 [3, 1, 0], user 2 [5, 2] (fewer than k = 3), user 4 [0, 1, 2] (not in test).
fn example() -> (Recommendations, TestSet, [u32; 6]) {
    let reco = Recommendations::from_ranked_lists([
        (1, vec![3, 1, 0]),
        (2, vec![5, 2]),
        (4, vec![0, 1, 2]),
    ])
    .unwrap();
    let test = TestSet::from_pairs([(1, 0), (1, 3), (2, 2), (2, 5), (3, 1), (3, 4), (2, 5)]);
    (reco, test, [4, 2, 2, 1, 0, 0])
}

#[test]
fn hand_computed_report() {
    let (reco, test, pop) = example();
    let specs = parse_metrics(
        "recall@3,precision@3,hitrate@3,mrr@3,map@3,ndcg@3,ndcg_rectools@3,\
         coverage@3,coverage@1,avg_rec_pop@3,serendipity@3,recall@1",
    )
    .unwrap();
    let report = compute(&specs, &reco, &test, &pop, 6).unwrap();
    let per = |key: &str| report.per_user[key].values.clone();
    let mean = |key: &str| report.means[key];

    // Hits: user 1 at ranks 1 and 3 (of 2 test items), user 2 at ranks 1 and 2 (of 2),
    // user 3 none. Test users 1, 2, 3 form the population; user 4 is ignored.
    assert_eq!(report.per_user["recall@3"].users, [1, 2, 3]);
    assert_eq!(per("recall@3"), [1.0, 1.0, 0.0]);
    assert!(close(mean("recall@3"), 2.0 / 3.0));
    assert_eq!(per("recall@1"), [0.5, 0.5, 0.0]);
    assert_eq!(per("precision@3"), [2.0 / 3.0, 2.0 / 3.0, 0.0]);
    assert!(close(mean("precision@3"), 4.0 / 9.0));
    assert_eq!(per("hitrate@3"), [1.0, 1.0, 0.0]);
    assert_eq!(per("mrr@3"), [1.0, 1.0, 0.0]);
    // MAP: user 1 (1/1 + 2/3) / 2 = 5/6, user 2 (1/1 + 2/2) / 2 = 1; mean 11/18.
    assert!(close(per("map@3")[0], 5.0 / 6.0));
    assert!(close(mean("map@3"), 11.0 / 18.0));

    // NDCG: l2 = 1/log2(3); user 1 DCG = 1 + 1/2, user 2 DCG = 1 + l2.
    let l2 = 1.0 / 3f64.log2();
    let idcg3 = 1.0 + l2 + 0.5;
    let rt = per("ndcg_rectools@3");
    assert!(close(rt[0], 1.5 / idcg3) && close(rt[1], (1.0 + l2) / idcg3) && rt[2] == 0.0);
    // Standard: both users have 2 test items, so the ideal is 1 + l2.
    let st = per("ndcg@3");
    assert!(close(st[0], 1.5 / (1.0 + l2)) && close(st[1], 1.0) && st[2] == 0.0);
    assert!(close(mean("ndcg@3"), (1.5 / (1.0 + l2) + 1.0) / 3.0));

    // Coverage over all users (user 4 included): top 3 {0, 1, 2, 3, 5}, top 1 {0, 3, 5}.
    assert!(close(mean("coverage@3"), 5.0 / 6.0));
    assert_eq!(mean("coverage@1"), 0.5);
    assert!(!report.per_user.contains_key("coverage@3"));

    // AvgRecPopularity over recommended users 1, 2, 4: (1+2+4)/3, (0+2)/2, (4+2+2)/3; mean 2.
    assert_eq!(report.per_user["avg_rec_pop@3"].users, [1, 2, 4]);
    assert!(close(mean("avg_rec_pop@3"), 2.0));

    // Serendipity, n = 6, dense popularity ranks: item 0 -> 1, items 1/2 -> 2, item 3 -> 3.
    // user 1: rank 1 item 3 relevant: (7-1)/6 - (7-3)/6 = 1/3; rank 3 item 0 relevant:
    //   max((7-3)/6 - (7-1)/6, 0) = 0; mean over 3 = 1/9.
    // user 2: rank 1 cold item 5 relevant: 1 - 0 = 1; rank 2 item 2: 5/6 - 5/6 = 0; mean 1/2.
    // user 4: nothing relevant -> 0.
    let s = &report.per_user["serendipity@3"];
    assert_eq!(s.users, [1, 2, 4]);
    assert!(close(s.values[0], 1.0 / 9.0) && close(s.values[1], 0.5) && s.values[2] == 0.0);
    assert!(close(mean("serendipity@3"), 11.0 / 54.0));
}

#[test]
fn empty_inputs_and_catalog_errors() {
    let (reco, test, pop) = example();
    let specs = parse_metrics("serendipity@5").unwrap();
    assert!(matches!(
        compute(&specs, &reco, &test, &pop, 0),
        Err(MetricsError::EmptyCatalog(_))
    ));
    let specs = parse_metrics("recall@5,ndcg@5").unwrap();
    let report = compute(&specs, &reco, &TestSet::default(), &pop, 0).unwrap();
    assert!(report.means["recall@5"].is_nan());
    assert!(report.per_user["ndcg@5"].users.is_empty());
    // Recommendations absent: every test user scores 0.
    let report = compute(&specs, &Recommendations::default(), &test, &pop, 6).unwrap();
    assert_eq!(report.per_user["recall@5"].values, [0.0, 0.0, 0.0]);
}
