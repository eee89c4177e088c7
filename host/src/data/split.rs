//! Train/test splits of an interaction log: leave-last-out per user, and a global time cut.
//!
//! Both parts keep the source's id tables (see [`Interactions::select`]), so user and item
//! indices mean the same in train and test. Rows keep their source order.

use std::collections::HashSet;

use super::error::DataError;
use super::interactions::Interactions;

/// A train part and a test part of one log, with what the split dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The rows to train on.
    pub train: Interactions,
    /// The rows to evaluate on.
    pub test: Interactions,
    /// Counts of what was decided.
    pub report: SplitReport,
}

/// What a split decided, for reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitReport {
    /// The datetime cut (time split only): test candidates have `datetime >= cut`.
    pub cut: Option<i64>,
    /// Rows picked for test before any filtering.
    pub test_candidates: usize,
    /// Test candidates dropped because their user has no train row.
    pub dropped_cold_users: usize,
    /// Test candidates dropped because their item has no train row (user known).
    pub dropped_cold_items: usize,
    /// Test candidates dropped because their (user, item) pair is already in train.
    pub dropped_already_seen: usize,
}

/// Where a time split cuts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeCut {
    /// At this datetime (unix seconds): rows at or after it are test candidates.
    Date(i64),
    /// At the datetime quantile that puts about this fraction of rows (strictly between 0 and
    /// 1) at or after the cut.
    Fraction(f64),
}

/// Holds out each user's last interaction.
///
/// The last interaction is the one with the greatest datetime; among rows sharing it, the
/// **later row in the log wins**. The other rows are train. A user whose only row is held out
/// has nothing to train on, so that test row is dropped (counted in
/// [`SplitReport::dropped_cold_users`]). No other filtering: a test item may be cold or already
/// seen by its user.
pub fn leave_last_out(interactions: &Interactions) -> Split {
    let n_users = interactions
        .users
        .iter()
        .map(|&u| u as usize + 1)
        .max()
        .unwrap_or(0);
    let mut last: Vec<Option<usize>> = vec![None; n_users];
    for (row, (&user, &datetime)) in interactions
        .users
        .iter()
        .zip(&interactions.datetimes)
        .enumerate()
    {
        let slot = &mut last[user as usize];
        if slot.is_none_or(|prev| datetime >= interactions.datetimes[prev]) {
            *slot = Some(row);
        }
    }
    let mut is_test = vec![false; interactions.len()];
    for &row in last.iter().flatten() {
        is_test[row] = true;
    }
    let train = interactions.filter(|row| !is_test[row]);
    let mut has_train = vec![false; n_users];
    for &user in &train.users {
        has_train[user as usize] = true;
    }
    let test_candidates = last.iter().flatten().count();
    let test =
        interactions.filter(|row| is_test[row] && has_train[interactions.users[row] as usize]);
    let report = SplitReport {
        cut: None,
        test_candidates,
        dropped_cold_users: test_candidates - test.len(),
        ..SplitReport::default()
    };
    Split {
        train,
        test,
        report,
    }
}

/// Splits at one datetime for all users (RecTools' time-range split with its default filters).
///
/// Train is the rows with `datetime < cut`. Test is the rows with `datetime >= cut`, less those
/// whose user has no train row, then those whose item has no train row, then those whose
/// (user, item) pair already occurs in train (RecTools' `filter_already_seen=True`); each drop
/// is counted in the report, in that order of precedence.
///
/// For [`TimeCut::Fraction`] `f`, the cut is the datetime of the `round(f × n)`-th latest row
/// (ties at the cut all go to the test side); when that rounds to no row, the cut lies after
/// every row. Fails when the fraction is not strictly between 0 and 1.
pub fn time_split(interactions: &Interactions, cut: TimeCut) -> Result<Split, DataError> {
    let cut = match cut {
        TimeCut::Date(datetime) => datetime,
        TimeCut::Fraction(fraction) => quantile_cut(&interactions.datetimes, fraction)?,
    };
    let train = interactions.filter(|row| interactions.datetimes[row] < cut);
    let users: HashSet<u32> = train.users.iter().copied().collect();
    let items: HashSet<u32> = train.items.iter().copied().collect();
    let pairs: HashSet<(u32, u32)> = train
        .users
        .iter()
        .copied()
        .zip(train.items.iter().copied())
        .collect();

    let mut report = SplitReport {
        cut: Some(cut),
        ..SplitReport::default()
    };
    let test = interactions.filter(|row| {
        if interactions.datetimes[row] < cut {
            return false;
        }
        report.test_candidates += 1;
        let (user, item) = (interactions.users[row], interactions.items[row]);
        if !users.contains(&user) {
            report.dropped_cold_users += 1;
        } else if !items.contains(&item) {
            report.dropped_cold_items += 1;
        } else if pairs.contains(&(user, item)) {
            report.dropped_already_seen += 1;
        } else {
            return true;
        }
        false
    });
    Ok(Split {
        train,
        test,
        report,
    })
}

fn quantile_cut(datetimes: &[i64], fraction: f64) -> Result<i64, DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::InvalidArgument {
            name: "test fraction",
            message: format!("must be strictly between 0 and 1, got {fraction}"),
        });
    }
    let mut sorted = datetimes.to_vec();
    sorted.sort_unstable();
    let n_test = (fraction * sorted.len() as f64).round() as usize;
    Ok(match n_test {
        0 => sorted.last().map_or(i64::MAX, |&t| t.saturating_add(1)),
        n => sorted[sorted.len() - n.min(sorted.len())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), DataError>;

    /// `(user, item, datetime)` rows with weight 1.
    fn log(rows: &[(&str, &str, i64)]) -> Result<Interactions, DataError> {
        Interactions::from_rows(rows.iter().map(|&(u, i, t)| (u, i, 1.0, t)))
    }

    fn rows(part: &Interactions) -> Vec<(String, String, i64)> {
        (0..part.len())
            .map(|r| {
                (
                    part.user_id(r).unwrap_or_default().to_string(),
                    part.item_id(r).unwrap_or_default().to_string(),
                    part.datetimes[r],
                )
            })
            .collect()
    }

    fn owned(rows: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
        rows.iter()
            .map(|&(u, i, t)| (u.to_string(), i.to_string(), t))
            .collect()
    }

    #[test]
    fn leave_last_out_holds_out_each_users_latest_row() -> TestResult {
        let source = log(&[
            ("a", "x", 3),
            ("a", "y", 1),
            ("b", "x", 5),
            ("a", "z", 2),
            ("b", "y", 4),
            ("c", "z", 9), // c has one row only: nothing left to train on
        ])?;
        let split = leave_last_out(&source);
        assert_eq!(
            rows(&split.train),
            owned(&[("a", "y", 1), ("a", "z", 2), ("b", "y", 4)])
        );
        assert_eq!(rows(&split.test), owned(&[("a", "x", 3), ("b", "x", 5)]));
        assert_eq!(
            split.report,
            SplitReport {
                cut: None,
                test_candidates: 3,
                dropped_cold_users: 1,
                dropped_cold_items: 0,
                dropped_already_seen: 0,
            }
        );
        // Both parts share the source's id tables.
        assert_eq!(split.test.user_ids, source.user_ids);
        assert_eq!(split.train.item_ids, source.item_ids);
        Ok(())
    }

    #[test]
    fn leave_last_out_ties_go_to_the_later_row() -> TestResult {
        let split = leave_last_out(&log(&[("a", "x", 7), ("a", "y", 7), ("a", "z", 6)])?);
        assert_eq!(rows(&split.test), owned(&[("a", "y", 7)]));
        assert_eq!(rows(&split.train), owned(&[("a", "x", 7), ("a", "z", 6)]));
        Ok(())
    }

    #[test]
    fn leave_last_out_of_nothing_is_nothing() -> TestResult {
        let split = leave_last_out(&log(&[])?);
        assert!(split.train.is_empty() && split.test.is_empty());
        Ok(())
    }

    #[test]
    fn time_split_at_a_date_filters_cold_and_seen() -> TestResult {
        let source = log(&[
            ("a", "x", 1),
            ("a", "y", 2),
            ("b", "x", 3),
            ("a", "x", 10), // seen: a had x in train
            ("a", "z", 11), // cold item: z only after the cut
            ("c", "x", 12), // cold user
            ("b", "y", 13), // kept
            ("a", "y", 5),  // before the cut: train, although late in the file
        ])?;
        let split = time_split(&source, TimeCut::Date(10))?;
        assert_eq!(
            rows(&split.train),
            owned(&[("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("a", "y", 5)])
        );
        assert_eq!(rows(&split.test), owned(&[("b", "y", 13)]));
        assert_eq!(
            split.report,
            SplitReport {
                cut: Some(10),
                test_candidates: 4,
                dropped_cold_users: 1,
                dropped_cold_items: 1,
                dropped_already_seen: 1,
            }
        );
        Ok(())
    }

    #[test]
    fn time_split_by_fraction_cuts_at_the_quantile() -> TestResult {
        let source = log(&[
            ("a", "x", 1),
            ("b", "y", 2),
            ("a", "y", 3),
            ("b", "x", 4),
            ("a", "x", 4),
        ])?;
        // 0.4 × 5 = 2 rows on the test side: the cut is the second-latest datetime, 4; both
        // rows at 4 are candidates, and a-x is already seen.
        let split = time_split(&source, TimeCut::Fraction(0.4))?;
        assert_eq!(split.report.cut, Some(4));
        assert_eq!(split.report.test_candidates, 2);
        assert_eq!(split.report.dropped_already_seen, 1);
        assert_eq!(rows(&split.test), owned(&[("b", "x", 4)]));
        assert_eq!(split.train.len(), 3);

        // Ties pull more rows across: 0.2 × 5 = 1 row, but two rows share datetime 4.
        let split = time_split(&source, TimeCut::Fraction(0.2))?;
        assert_eq!(split.report.cut, Some(4));
        assert_eq!(split.report.test_candidates, 2);

        // A fraction too small for one row puts the cut after every row.
        let split = time_split(&source, TimeCut::Fraction(0.05))?;
        assert_eq!(split.report.cut, Some(5));
        assert_eq!(split.train.len(), 5);
        assert!(split.test.is_empty());
        Ok(())
    }

    #[test]
    fn time_split_rejects_fractions_outside_zero_one() -> TestResult {
        let source = log(&[("a", "x", 1)])?;
        for fraction in [0.0, 1.0, -0.5, 2.0, f64::NAN] {
            let result = time_split(&source, TimeCut::Fraction(fraction));
            assert!(
                matches!(result, Err(DataError::InvalidArgument { .. })),
                "{fraction}: {result:?}"
            );
        }
        Ok(())
    }
}
