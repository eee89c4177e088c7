//! Recommendations: u2i as RecTools' `recommend` (docs/rectools.md §2.9) and i2i as
//! `recommend_to_items`.
//!
//! u2i: a user's session is their history restricted to items the model knows, time-sorted; the
//! data preparator turns its last items into the model input; the score of an item is the
//! similarity between the encoding at the last position (session tower) and the item's embedding
//! (item tower). Viewed items are excluded by default; PAD/MASK are never recommended; users with
//! no known item are "unsupported". i2i: cosine between item embeddings, the item itself excluded.
//! Scoring runs in user batches with one matrix multiply each and partial top-k selection
//! ([`crate::ranking`]).

use std::collections::HashMap;

use candle_core::Tensor;
use recblocks_core::components::Distance;

use crate::{
    data::Interactions,
    error::HostError,
    model::Model,
    ranking::{Ranker, Scored},
    Result,
};

/// What to do with users the model cannot recommend for (no known item in their history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnsupported {
    /// Fail, naming how many and a few of them.
    #[default]
    Raise,
    /// Skip them with a warning.
    Warn,
    /// Skip them silently.
    Ignore,
}

/// One u2i recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// External user id.
    pub user_id: String,
    /// External item id.
    pub item_id: String,
    /// Similarity score.
    pub score: f32,
    /// 1-based rank.
    pub rank: usize,
}

/// One i2i recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarItem {
    /// External id of the item recommendations are for.
    pub target_item_id: String,
    /// External id of the recommended item.
    pub item_id: String,
    /// Cosine similarity.
    pub score: f32,
    /// 1-based rank.
    pub rank: usize,
}

/// u2i request.
#[derive(Debug, Clone, Default)]
pub struct RecommendRequest<'a> {
    /// Users to recommend for (external ids); all users of the history when `None`.
    pub users: Option<&'a [String]>,
    /// Recommendations per user.
    pub k: usize,
    /// Exclude items the user has interacted with.
    pub filter_viewed: bool,
    /// Only these items (external ids) may be recommended.
    pub items_to_recommend: Option<&'a [String]>,
    /// Policy for users without known items.
    pub on_unsupported: OnUnsupported,
}

/// u2i result.
#[derive(Debug, Clone, Default)]
pub struct RecommendOutput {
    /// Rows, grouped by user in request (or first-appearance) order, ranked.
    pub rows: Vec<Recommendation>,
    /// Users skipped as unsupported (with `warn`/`ignore`).
    pub unsupported: Vec<String>,
}

/// Users' sessions of known items, in time order.
struct Sessions {
    users: Vec<String>,
    sessions: Vec<Vec<u32>>,
    unsupported: Vec<String>,
}

impl Model {
    fn user_sessions(&self, history: &Interactions, users: Option<&[String]>) -> Sessions {
        let known = self.item_index();
        let mut rows: Vec<usize> = (0..history.len()).collect();
        rows.sort_by_key(|&r| history.datetimes[r]);
        let mut by_user: Vec<Vec<u32>> = vec![Vec::new(); history.n_users()];
        for r in rows {
            let item = &history.item_ids[history.items[r] as usize];
            if let Some(&id) = known.get(item.as_str()) {
                by_user[history.users[r] as usize].push(id);
            }
        }
        let order: Vec<String> = match users {
            Some(u) => u.to_vec(),
            None => history.user_ids.clone(),
        };
        let index: HashMap<&str, usize> = history
            .user_ids
            .iter()
            .enumerate()
            .map(|(i, u)| (u.as_str(), i))
            .collect();
        let mut out = Sessions {
            users: Vec::new(),
            sessions: Vec::new(),
            unsupported: Vec::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for u in order {
            if !seen.insert(u.clone()) {
                continue;
            }
            match index.get(u.as_str()).map(|&i| &by_user[i]) {
                Some(s) if !s.is_empty() => {
                    out.sessions.push(s.clone());
                    out.users.push(u);
                }
                _ => out.unsupported.push(u),
            }
        }
        out
    }

    /// Session encodings at the last position (after the session tower), `[n, d]` row-major.
    pub fn encode_sessions(&self, sessions: &[Vec<u32>]) -> Result<Vec<f32>> {
        let item_embs = self.net.backbone.item_embeddings(false)?;
        self.encode_sessions_with(sessions, &item_embs)
    }

    fn encode_sessions_with(&self, sessions: &[Vec<u32>], item_embs: &Tensor) -> Result<Vec<f32>> {
        let net = &self.net;
        let sim = net.backbone.similarity();
        let d = net.spec.n_factors;
        let mut out = Vec::with_capacity(sessions.len() * d);
        for chunk in sessions.chunks(net.spec.recommend_batch_size.max(1)) {
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let x = self.preparator.collate_recommend(&refs, &net.device)?;
            let last = net.backbone.encode_last(&x, item_embs)?.squeeze(1)?;
            let last = sim.session_tower(&last)?;
            out.extend(last.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Item embeddings as a flat `[n_items, d]` vector, after the item tower when `tower`.
    fn item_vectors(&self, embs: &Tensor, tower: bool) -> Result<Vec<f32>> {
        let embs = if tower {
            self.net.backbone.similarity().item_tower(embs)?
        } else {
            embs.clone()
        };
        Ok(embs.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The internal ids of the items that may be recommended: every real item, or those of a
    /// whitelist the model knows. An empty whitelist, or one with no known item, is an error: it
    /// could only give an empty answer.
    fn whitelist(&self, items: Option<&[String]>) -> Result<Vec<u32>> {
        let Some(ids) = items else {
            return Ok((self.n_extra_tokens as u32..self.item_ids.len() as u32).collect());
        };
        if ids.is_empty() {
            return Err(HostError::Other(
                "the item whitelist is empty: list at least one item id, or leave the whitelist \
                 out to recommend from every item"
                    .into(),
            ));
        }
        let known = self.item_index();
        let kept: Vec<u32> = ids
            .iter()
            .filter_map(|i| known.get(i.as_str()).copied())
            .filter(|&i| i as usize >= self.n_extra_tokens)
            .collect();
        if kept.is_empty() {
            let examples: Vec<String> = ids
                .iter()
                .take(3)
                .map(|i| crate::data::error::shown(i))
                .collect();
            return Err(HostError::Other(format!(
                "none of the {} whitelisted item ids is an item the model knows (e.g. {})",
                ids.len(),
                examples.join(", ")
            )));
        }
        Ok(kept)
    }

    /// Top-k items for users from their interaction history (u2i).
    pub fn recommend(
        &self,
        history: &Interactions,
        req: &RecommendRequest<'_>,
    ) -> Result<RecommendOutput> {
        check_k(req.k)?;
        let s = self.user_sessions(history, req.users);
        if !s.unsupported.is_empty() {
            let examples: Vec<&str> = s.unsupported.iter().take(5).map(String::as_str).collect();
            let msg = format!(
                "{} user(s) have no interaction with an item the model knows (e.g. {}); \
                 they are unsupported",
                s.unsupported.len(),
                examples.join(", ")
            );
            match req.on_unsupported {
                OnUnsupported::Raise => {
                    return Err(HostError::Other(format!(
                        "{msg}. Pass --on-unsupported warn or ignore to skip them."
                    )))
                }
                OnUnsupported::Warn => tracing::warn!("{msg}; skipping them"),
                OnUnsupported::Ignore => {}
            }
        }
        let d = self.net.spec.n_factors;
        // Item embeddings are computed once, for the sessions and for the scores.
        let item_embs = self.net.backbone.item_embeddings(false)?;
        let users = self.encode_sessions_with(&s.sessions, &item_embs)?;
        let objects = self.item_vectors(&item_embs, true)?;
        let distance: Distance = self.net.backbone.similarity().distance();
        let whitelist = self.whitelist(req.items_to_recommend)?;
        let ranker = Ranker::new(&objects, d, distance, Some(&whitelist), &self.net.device)
            .map_err(|e| HostError::Other(e.to_string()))?;
        let exclusions: Option<Vec<Vec<u32>>> = req.filter_viewed.then(|| s.sessions.clone());
        let ranked = ranker
            .rank(
                &users,
                req.k,
                exclusions
                    .as_ref()
                    .map(|e| e as &dyn crate::ranking::Exclusions),
                self.net.spec.recommend_batch_size.max(1),
            )
            .map_err(|e| HostError::Other(e.to_string()))?;
        let mut rows = Vec::new();
        for (user, list) in s.users.iter().zip(ranked) {
            rows.extend(self.rows_for(list).into_iter().map(|(item, score, rank)| {
                Recommendation {
                    user_id: user.clone(),
                    item_id: item,
                    score,
                    rank,
                }
            }));
        }
        Ok(RecommendOutput {
            rows,
            unsupported: s.unsupported,
        })
    }

    fn rows_for(&self, list: Vec<Scored>) -> Vec<(String, f32, usize)> {
        list.into_iter()
            .enumerate()
            .map(|(i, (id, score))| (self.item_ids[id as usize].clone(), score, i + 1))
            .collect()
    }

    /// Top-k most similar items (cosine over item embeddings), the item itself excluded (i2i).
    /// Unknown target items are skipped and returned in the second value.
    pub fn similar(
        &self,
        items: Option<&[String]>,
        k: usize,
        items_to_recommend: Option<&[String]>,
    ) -> Result<(Vec<SimilarItem>, Vec<String>)> {
        check_k(k)?;
        let known = self.item_index();
        let targets: Vec<String> = match items {
            Some(ids) => ids.to_vec(),
            None => self.item_ids[self.n_extra_tokens..].to_vec(),
        };
        let (mut ids, mut names, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for t in targets {
            match known.get(t.as_str()) {
                Some(&id) => {
                    ids.push(id);
                    names.push(t);
                }
                None => unknown.push(t),
            }
        }
        let d = self.net.spec.n_factors;
        let objects = self.item_vectors(&self.net.backbone.item_embeddings(false)?, false)?;
        let mut subjects = Vec::with_capacity(ids.len() * d);
        for &id in &ids {
            subjects.extend_from_slice(&objects[id as usize * d..(id as usize + 1) * d]);
        }
        let whitelist = self.whitelist(items_to_recommend)?;
        let ranker = Ranker::new(
            &objects,
            d,
            Distance::Cosine,
            Some(&whitelist),
            &self.net.device,
        )
        .map_err(|e| HostError::Other(e.to_string()))?;
        let itself: Vec<Vec<u32>> = ids.iter().map(|&i| vec![i]).collect();
        let ranked = ranker
            .rank(
                &subjects,
                k,
                Some(&itself),
                self.net.spec.recommend_batch_size.max(1),
            )
            .map_err(|e| HostError::Other(e.to_string()))?;
        let mut rows = Vec::new();
        for (target, list) in names.iter().zip(ranked) {
            rows.extend(
                self.rows_for(list)
                    .into_iter()
                    .map(|(item, score, rank)| SimilarItem {
                        target_item_id: target.clone(),
                        item_id: item,
                        score,
                        rank,
                    }),
            );
        }
        Ok((rows, unknown))
    }
}

/// `k` must be at least 1: `k = 0` could only give an empty answer.
fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(HostError::Other(
            "k (recommendations per user or item) must be at least 1, found 0".into(),
        ));
    }
    Ok(())
}
