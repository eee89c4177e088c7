//! Validation mask functions: ports RecTools' `leave_one_out_mask`
//! (`rectools/models/nn/transformers/utils.py`; docs/rectools.md §2.6, §2.10).
//!
//! Each selected user's last interaction becomes a validation interaction. "Last" follows
//! RecTools exactly: rows are ranked per user by datetime, ascending, with pandas'
//! `method="first"` (ties take increasing ranks in row order), and the row whose rank equals the
//! user's row count is marked. So among the rows at a user's latest datetime, the one that comes
//! **last in row order** is marked.
//!
//! `val_users` picks the users: `null` — every user; an integer N — N distinct users drawn without
//! replacement from the users in order of first appearance (RecTools uses `np.random.choice`; here
//! the draw uses the model's [`SharedRng`], so the users differ from RecTools' for the same seed);
//! a list of external ids — those users (ids compared as strings; ids not in the data are
//! ignored, as pandas' `isin` does).

use rand::seq::index;
use recblocks_core::{
    components::InteractionsView, context::SharedRng, error::CoreError, kind::ComponentKind,
    kwargs::decode_kwargs, serde_json::Value, Result,
};
use serde::{Deserialize, Serialize};

const NAME: &str = "leave_one_out_mask";

/// Kwargs of [`leave_one_out_mask`] (`get_val_mask_func_kwargs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaveOneOutKwargs {
    /// `null` (all users), an integer count of users to sample, or a list of external user ids
    /// (strings or numbers).
    pub val_users: Value,
}

/// Which users `val_users` selects.
#[derive(Debug, Clone, PartialEq)]
pub enum ValUsers {
    /// Every user.
    All,
    /// This many distinct users, sampled.
    Sample(usize),
    /// These external ids (as strings).
    Ids(Vec<String>),
}

impl ValUsers {
    /// Parses `val_users`.
    pub fn parse(v: &Value) -> Result<ValUsers> {
        let bad = |m: String| CoreError::BadKwargs {
            kind: ComponentKind::ValMask,
            component: NAME.into(),
            message: m,
        };
        match v {
            Value::Null => Ok(ValUsers::All),
            Value::Number(n) => match n.as_u64() {
                Some(k) => Ok(ValUsers::Sample(k as usize)),
                None => Err(bad(format!(
                    "`val_users` as a number must be a non-negative integer count of users, \
                     found {n}"
                ))),
            },
            Value::Array(ids) => ids
                .iter()
                .map(|id| {
                    id_string(id).ok_or_else(|| {
                        bad(format!(
                            "`val_users` ids must be strings or numbers, found {id}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(ValUsers::Ids),
            other => Err(bad(format!(
                "`val_users` must be null (all users), an integer count of users, or a list of \
                 external user ids; found {other}"
            ))),
        }
    }
}

/// An external id as a string: strings as they are, integers in decimal, floats with an integral
/// value as integers (`10.0` → `"10"`), other floats as JSON writes them.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => {
            if n.is_u64() || n.is_i64() {
                Some(n.to_string())
            } else {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    Some(format!("{}", f as i64))
                } else {
                    Some(n.to_string())
                }
            }
        }
        _ => None,
    }
}

/// The row of each user's last interaction (RecTools' tie rule: the last row among the rows at
/// the user's latest datetime), indexed by dense user.
fn last_rows(view: &InteractionsView<'_>) -> Vec<Option<usize>> {
    let mut best: Vec<Option<usize>> = vec![None; view.user_external_ids.len()];
    for (row, (&u, &t)) in view.users.iter().zip(view.datetimes).enumerate() {
        let slot = &mut best[u as usize];
        match *slot {
            Some(b) if view.datetimes[b] > t => {}
            _ => *slot = Some(row),
        }
    }
    best
}

/// RecTools' `leave_one_out_mask`: one flag per row, `true` for each selected user's last
/// interaction (see the module docs for the tie rule and `val_users`).
pub fn leave_one_out_mask(
    view: &InteractionsView<'_>,
    kwargs: &Value,
    rng: &SharedRng,
) -> Result<Vec<bool>> {
    let kw: LeaveOneOutKwargs = decode_kwargs(ComponentKind::ValMask, NAME, kwargs)?;
    let val_users = ValUsers::parse(&kw.val_users)?;
    let invalid = |m: String| CoreError::invalid(ComponentKind::ValMask, NAME, m);
    if view.users.len() != view.datetimes.len() {
        return Err(invalid(format!(
            "{} user entries but {} datetimes",
            view.users.len(),
            view.datetimes.len()
        )));
    }
    let n_users = view.user_external_ids.len();
    if let Some(&u) = view.users.iter().find(|&&u| u as usize >= n_users) {
        return Err(invalid(format!(
            "user index {u} out of range: there are {n_users} user ids"
        )));
    }

    // Which dense users are selected.
    let selected: Vec<bool> = match val_users {
        ValUsers::All => vec![true; n_users],
        ValUsers::Sample(k) => {
            // Users in order of first appearance, as pandas' `unique`.
            let mut seen = vec![false; n_users];
            let mut order = Vec::new();
            for &u in view.users {
                if !seen[u as usize] {
                    seen[u as usize] = true;
                    order.push(u as usize);
                }
            }
            if k > order.len() {
                return Err(CoreError::BadKwargs {
                    kind: ComponentKind::ValMask,
                    component: NAME.into(),
                    message: format!(
                        "`val_users` = {k} is more than the {} users in the interactions \
                         (users are sampled without replacement)",
                        order.len()
                    ),
                });
            }
            let mut sel = vec![false; n_users];
            let picks = index::sample(&mut *rng.lock(), order.len(), k);
            for i in picks.iter() {
                sel[order[i]] = true;
            }
            sel
        }
        ValUsers::Ids(ids) => {
            let wanted: std::collections::HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
            view.user_external_ids
                .iter()
                .map(|id| wanted.contains(id.as_str()))
                .collect()
        }
    };

    let mut mask = vec![false; view.users.len()];
    for (u, row) in last_rows(view).into_iter().enumerate() {
        if let (true, Some(row)) = (selected[u], row) {
            mask[row] = true;
        }
    }
    Ok(mask)
}

recblocks_core::register! {
    ValMaskRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.utils.leave_one_out_mask"],
        summary: "Leave-one-out validation: each selected user's last interaction (val_users: null = all, N = sample N users, or a list of ids)",
        kwargs: LeaveOneOutKwargs,
        build: leave_one_out_mask,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;
    use recblocks_core::serde_json::json;

    use super::*;

    /// RecTools' §2.6 test interactions as (user, item, day of November), in row order.
    const ROWS: [(u32, u32, u32); 12] = [
        (10, 13, 30),
        (10, 11, 29),
        (10, 12, 29),
        (30, 11, 27),
        (30, 12, 26),
        (30, 15, 25),
        (40, 11, 25),
        (40, 17, 26),
        (50, 16, 25),
        (10, 14, 28),
        (10, 16, 27),
        (20, 13, 28),
    ];

    struct Data {
        users: Vec<u32>,
        ids: Vec<String>,
        dts: Vec<i64>,
    }

    impl Data {
        fn new(rows: &[(u32, i64)]) -> Data {
            let mut ids: Vec<String> = Vec::new();
            let mut users = Vec::new();
            for (ext, _) in rows {
                let s = ext.to_string();
                let idx = match ids.iter().position(|x| *x == s) {
                    Some(i) => i,
                    None => {
                        ids.push(s);
                        ids.len() - 1
                    }
                };
                users.push(idx as u32);
            }
            Data {
                users,
                ids,
                dts: rows.iter().map(|r| r.1 * 86_400).collect(),
            }
        }
        fn view(&self) -> InteractionsView<'_> {
            InteractionsView {
                users: &self.users,
                user_external_ids: &self.ids,
                datetimes: &self.dts,
            }
        }
    }

    fn rectools_data() -> Data {
        let rows: Vec<(u32, i64)> = ROWS.iter().map(|&(u, _, d)| (u, d as i64)).collect();
        Data::new(&rows)
    }

    fn marked(mask: &[bool]) -> Vec<usize> {
        mask.iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn rectools_test_vector_val_users_10_and_30() {
        // §2.6: val users [10, 30] hold out (10, 13, 11-30) and (30, 11, 11-27).
        let d = rectools_data();
        let rng = SharedRng::new(0);
        let m =
            leave_one_out_mask(&d.view(), &json!({"val_users": [10, "30"]}), &rng).expect("mask");
        assert_eq!(marked(&m), vec![0, 3]);
        // Numbers written as floats compare as integers; unknown ids are ignored.
        let m =
            leave_one_out_mask(&d.view(), &json!({"val_users": [10.0, 99]}), &rng).expect("mask");
        assert_eq!(marked(&m), vec![0]);
    }

    #[test]
    fn all_users_by_default() {
        let d = rectools_data();
        let rng = SharedRng::new(0);
        let m = leave_one_out_mask(&d.view(), &Value::Null, &rng).expect("mask");
        // 10 → row 0, 30 → row 3, 40 → row 7, 50 → row 8, 20 → row 11.
        assert_eq!(marked(&m), vec![0, 3, 7, 8, 11]);
        let m2 = leave_one_out_mask(&d.view(), &json!({"val_users": null}), &rng).expect("mask");
        assert_eq!(m, m2);
    }

    #[test]
    fn ties_mark_the_last_row_among_the_latest_datetime() {
        // User 1: rows 0 and 2 share the latest datetime → row 2 (method="first" ranks row 2
        // last). User 2: the latest datetime comes first in row order → row 1.
        let d = Data::new(&[(1, 5), (2, 9), (1, 5), (1, 3), (2, 4), (2, 4)]);
        let m = leave_one_out_mask(&d.view(), &Value::Null, &SharedRng::new(0)).expect("mask");
        assert_eq!(marked(&m), vec![1, 2]);
    }

    #[test]
    fn integer_samples_distinct_users_reproducibly() {
        let d = rectools_data();
        let m = leave_one_out_mask(&d.view(), &json!({"val_users": 3}), &SharedRng::new(11))
            .expect("mask");
        assert_eq!(marked(&m).len(), 3);
        let again = leave_one_out_mask(&d.view(), &json!({"val_users": 3}), &SharedRng::new(11))
            .expect("mask");
        assert_eq!(m, again);
        // Every user is reachable over seeds; 0 selects none; all 5 selects everyone.
        let mut hit = [false; 12];
        for seed in 0..50 {
            let m = leave_one_out_mask(&d.view(), &json!({"val_users": 1}), &SharedRng::new(seed))
                .expect("mask");
            assert_eq!(marked(&m).len(), 1);
            hit[marked(&m)[0]] = true;
        }
        assert_eq!(
            hit.iter()
                .enumerate()
                .filter(|(_, &h)| h)
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![0, 3, 7, 8, 11]
        );
        let none = leave_one_out_mask(&d.view(), &json!({"val_users": 0}), &SharedRng::new(0))
            .expect("mask");
        assert!(marked(&none).is_empty());
        let all = leave_one_out_mask(&d.view(), &json!({"val_users": 5}), &SharedRng::new(0))
            .expect("mask");
        assert_eq!(marked(&all), vec![0, 3, 7, 8, 11]);
    }

    #[test]
    fn bad_kwargs_are_errors() {
        let d = rectools_data();
        let rng = SharedRng::new(0);
        for (kw, needle) in [
            (json!({"val_users": 6}), "more than the 5 users"),
            (json!({"val_users": -1}), "non-negative integer"),
            (json!({"val_users": 1.5}), "non-negative integer"),
            (json!({"val_users": "10"}), "must be null"),
            (json!({"val_users": [true]}), "strings or numbers"),
            (json!({"n_users": 3}), "n_users"),
        ] {
            let err = leave_one_out_mask(&d.view(), &kw, &rng).expect_err("bad kwargs");
            assert!(err.to_string().contains(needle), "{kw}: {err}");
        }
        assert_eq!(
            default_kwargs_json::<LeaveOneOutKwargs>(),
            json!({"val_users": null})
        );
    }

    #[test]
    fn registered_under_name_and_dotted_path() {
        let reg = recblocks_core::Registry::from_inventory().expect("registry");
        let r = reg
            .val_mask("rectools.models.nn.transformers.utils.leave_one_out_mask")
            .expect("alias");
        assert_eq!(r.info.name, NAME);
    }
}
