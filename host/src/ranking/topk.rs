//! Top-k selection of one score row: partial selection with a running threshold, ties broken
//! by the smaller column.

use std::cmp::Ordering;

use super::Scored;

/// Orders by score descending, then object column ascending (scores are never NaN here).
pub(super) fn by_score_then_id(a: &Scored, b: &Scored) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// Partial top-k selection of one score row: the best `k` `(column, score)` pairs, by score
/// descending then column ascending (`k >= 1`).
///
/// Streams the row into a buffer of `max(2k, 64)` candidates; whenever it fills,
/// `select_nth_unstable_by` keeps the best k and their worst score becomes a strict
/// threshold (a later column with an equal score loses the tie-break on id). Only the final
/// k are sorted. O(n) time, O(k) memory; −inf and NaN never pass `s > threshold`.
pub(super) fn top_k_columns(row: &[f32], k: usize) -> Vec<Scored> {
    let cap = (2 * k).max(64);
    let mut buf: Vec<Scored> = Vec::with_capacity(cap.min(row.len()));
    let mut threshold = f32::NEG_INFINITY;
    for (c, &s) in row.iter().enumerate() {
        if s > threshold {
            buf.push((c as u32, s));
            if buf.len() >= cap {
                buf.select_nth_unstable_by(k - 1, by_score_then_id);
                buf.truncate(k);
                threshold = buf.last().map_or(threshold, |e| e.1);
            }
        }
    }
    if buf.len() > k {
        buf.select_nth_unstable_by(k - 1, by_score_then_id);
        buf.truncate(k);
    }
    buf.sort_unstable_by(by_score_then_id);
    buf
}
