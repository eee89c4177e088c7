//! Recommendations: viewed items filtered, whitelists honoured, PAD/MASK never recommended,
//! unsupported users handled per policy, external ids round-trip, i2i never returns the item.

use recblocks::{
    data::Interactions,
    recommend::{OnUnsupported, RecommendRequest},
    FitOptions, Model, TrainData,
};

use crate::util::{registry, spec};

/// Ids with commas and quotes, to check they survive CSV round trips.
fn tricky_log() -> Interactions {
    let users = ["u,1", "u\"2", "u 3", "u4", "u5", "u6"];
    let items = ["a,b", "c\"d", "e", "f", "g", "h", "i", "j"];
    let mut rows = Vec::new();
    for (ui, u) in users.iter().enumerate() {
        for step in 0..6 {
            let item = items[(ui + step * 3) % items.len()];
            rows.push((
                u.to_string(),
                item.to_string(),
                1.0f32,
                (ui * 100 + step) as i64,
            ));
        }
    }
    Interactions::from_rows(rows).unwrap()
}

fn model(cls: &str) -> (Model, Interactions) {
    let log = tricky_log();
    let s = spec(&format!(
        r#"{{"cls": "{cls}", "n_factors": 8, "n_heads": 2, "n_blocks": 1, "session_max_len": 5,
            "epochs": 1, "batch_size": 4}}"#
    ));
    let m = Model::fit(
        s,
        TrainData {
            interactions: &log,
            item_features: None,
        },
        &registry(),
        &FitOptions {
            ..FitOptions::default()
        },
    )
    .unwrap();
    (m, log)
}

fn req<'a>(k: usize, filter_viewed: bool) -> RecommendRequest<'a> {
    RecommendRequest {
        users: None,
        k,
        filter_viewed,
        items_to_recommend: None,
        on_unsupported: OnUnsupported::Raise,
    }
}

#[test]
fn viewed_items_are_filtered_and_extra_tokens_never_recommended() {
    for cls in ["SASRecModel", "BERT4RecModel"] {
        let (m, log) = model(cls);
        let out = m.recommend(&log, &req(100, true)).unwrap();
        for r in &out.rows {
            assert!(r.item_id != "PAD" && r.item_id != "MASK", "{cls}: {r:?}");
            let viewed = (0..log.len()).any(|i| {
                log.user_ids[log.users[i] as usize] == r.user_id
                    && log.item_ids[log.items[i] as usize] == r.item_id
            });
            assert!(!viewed, "{cls}: viewed item recommended: {r:?}");
        }
        // Unfiltered: every user gets the whole catalog (8 items), ranked 1..=8, scores sorted.
        let all = m.recommend(&log, &req(100, false)).unwrap();
        assert_eq!(all.rows.len(), 6 * 8, "{cls}");
        for user_rows in all.rows.chunks(8) {
            assert!(user_rows.windows(2).all(|w| w[0].score >= w[1].score));
            assert_eq!(
                user_rows.iter().map(|r| r.rank).collect::<Vec<_>>(),
                (1..=8).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn the_whitelist_limits_what_is_recommended() {
    let (m, log) = model("SASRecModel");
    let whitelist = vec![
        "e".to_string(),
        "a,b".to_string(),
        "not-an-item".to_string(),
    ];
    let out = m
        .recommend(
            &log,
            &RecommendRequest {
                items_to_recommend: Some(&whitelist),
                ..req(10, false)
            },
        )
        .unwrap();
    assert!(!out.rows.is_empty());
    assert!(out
        .rows
        .iter()
        .all(|r| r.item_id == "e" || r.item_id == "a,b"));
}

#[test]
fn unsupported_users_follow_the_policy() {
    let (m, log) = model("SASRecModel");
    let users = vec!["u4".to_string(), "nobody".to_string()];
    let ask = |policy| {
        m.recommend(
            &log,
            &RecommendRequest {
                users: Some(&users),
                on_unsupported: policy,
                ..req(3, true)
            },
        )
    };
    let e = ask(OnUnsupported::Raise)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("1 user(s) have no interaction with an item the model knows (e.g. nobody)"),
        "{e}"
    );
    for policy in [OnUnsupported::Warn, OnUnsupported::Ignore] {
        let out = ask(policy).unwrap();
        assert_eq!(out.unsupported, vec!["nobody".to_string()]);
        assert!(out.rows.iter().all(|r| r.user_id == "u4"));
        // u4 saw 6 of the 8 items: only 2 remain, fewer than k = 3.
        assert_eq!(out.rows.len(), 2);
    }
}

#[test]
fn similar_items_never_include_the_item_itself() {
    let (m, _) = model("BERT4RecModel");
    let (rows, unknown) = m.similar(None, 3, None).unwrap();
    assert!(unknown.is_empty());
    assert_eq!(rows.len(), 8 * 3);
    assert!(rows.iter().all(|r| r.target_item_id != r.item_id));
    assert!(rows
        .iter()
        .all(|r| r.item_id != "PAD" && r.item_id != "MASK"));
    let (_, unknown) = m.similar(Some(&["zzz".to_string()]), 3, None).unwrap();
    assert_eq!(unknown, vec!["zzz".to_string()]);
}

#[test]
fn external_ids_with_commas_and_quotes_round_trip_through_csv() {
    let (m, log) = model("SASRecModel");
    let out = m.recommend(&log, &req(2, true)).unwrap();
    let table = recblocks::output::RecoTable::from_u2i(&out.rows);
    let mut buf = Vec::new();
    table.write_csv(&mut buf).unwrap();
    let mut reader = csv::Reader::from_reader(buf.as_slice());
    let back: Vec<(String, String)> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].to_string())
        })
        .collect();
    let want: Vec<(String, String)> = out
        .rows
        .iter()
        .map(|r| (r.user_id.clone(), r.item_id.clone()))
        .collect();
    assert_eq!(back, want);
    assert!(back.iter().any(|(u, _)| u == "u,1") && back.iter().any(|(u, _)| u == "u\"2"));
}
