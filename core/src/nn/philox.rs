//! Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3" (SC 2011; the Random123 library,
//! <https://github.com/DEShawResearch/random123>), and the dropout masks drawn from it.
//!
//! A mask is a pure function of (key, element index), so any thread count, any device and the
//! forward and backward passes compute the same mask with no state between them. The CUDA kernel
//! `rb_dropout` (`nn/cuda/kernels.cu`) computes exactly [`fill_mask`]'s function, so a seed gives
//! the same masks, and so the same training, on the CPU and on a GPU.
//!
//! Philox block `b` is the generator at counter `(b low 32 bits, b high 32 bits, 0, 0)` under key
//! `(key low 32 bits, key high 32 bits)`; its four 32-bit words give eight 16-bit draws, draw `d`
//! being half `d % 2` (low half first) of word `d / 2`. Elements come in groups of 128, laid out
//! so that a vector unit fills 16 consecutive elements from 16 blocks at once: element
//! `i = 128·g + 16·d + j` takes draw `d` of block `16·g + j`. It is kept where its draw is below
//! the keep threshold `round((1 − p)·2¹⁶)`.

use rayon::prelude::*;

/// The round multipliers and the key schedule's increments (the Weyl sequence).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: the four output words for `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Elements per parallel task of a mask (a multiple of a group, 128).
const TASK: usize = 1 << 15;

/// The keep threshold over 16-bit draws: round((1 − p)·65,536), at most 65,536.
pub fn keep_threshold(p: f64) -> u32 {
    ((1.0 - p.clamp(0.0, 1.0)) * 65536.0).round() as u32
}

/// Philox blocks computed side by side (independent lanes the compiler vectorises).
const LANES: usize = 16;

/// Philox4x32-10 of the `LANES` counters `(first + lane, 0, 0)` under `key`, as four arrays of
/// words (word `w` of lane `j` is `out[w][j]`).
#[inline(always)]
fn philox_lanes(key: [u32; 2], first: u64) -> [[u32; LANES]; 4] {
    let mut c0 = [0u32; LANES];
    let mut c1 = [0u32; LANES];
    let mut c2 = [0u32; LANES];
    let mut c3 = [0u32; LANES];
    for j in 0..LANES {
        let block = first + j as u64;
        c0[j] = block as u32;
        c1[j] = (block >> 32) as u32;
    }
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        for j in 0..LANES {
            let p0 = u64::from(M0) * u64::from(c0[j]);
            let p1 = u64::from(M1) * u64::from(c2[j]);
            let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
            let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
            let (n0, n2) = (hi1 ^ c1[j] ^ k[0], hi0 ^ c3[j] ^ k[1]);
            c0[j] = n0;
            c1[j] = lo1;
            c2[j] = n2;
            c3[j] = lo0;
        }
    }
    [c0, c1, c2, c3]
}

/// Mask elements per group: `LANES` Philox blocks of 8 draws.
const GROUP: usize = 8 * LANES;

/// The mask elements of group `group` into `out` (`GROUP` elements, or fewer for the last piece
/// of a mask): element `16·d + j` is draw `d` of block `16·group + j`.
#[inline(always)]
fn mask_group(key: [u32; 2], group: u64, out: &mut [f32], threshold: u32, scale: f32) {
    let words = philox_lanes(key, group * LANES as u64);
    for (d, row) in out.chunks_mut(LANES).enumerate() {
        let (w, shift) = (&words[d / 2], 16 * (d % 2));
        for (o, &word) in row.iter_mut().zip(w) {
            let draw = (word >> shift) & 0xffff;
            *o = if draw < threshold { scale } else { 0.0 };
        }
    }
}

/// The dropout mask under `key` with keep threshold `threshold` into `mask`: `scale` where
/// element `i`'s draw is below the threshold, else 0 (every element is written). Compiled for
/// the CPU's best SIMD level (pulp's run-time dispatch).
pub fn fill_mask(key: u64, mask: &mut [f32], threshold: u32, scale: f32) {
    let key = [key as u32, (key >> 32) as u32];
    mask.par_chunks_mut(TASK)
        .enumerate()
        .for_each(|(task, out)| {
            pulp::Arch::new().dispatch(
                #[inline(always)]
                || {
                    let first_group = (task * TASK / GROUP) as u64;
                    for (j, piece) in out.chunks_mut(GROUP).enumerate() {
                        mask_group(key, first_group + j as u64, piece, threshold, scale);
                    }
                },
            )
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for philox4x32 with 10 rounds (`examples/kat_vectors`).
    #[test]
    fn philox_matches_random123_known_answers() {
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
            ),
            (
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0],
                [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
            ),
        ];
        for (ctr, key, want) in cases {
            assert_eq!(
                philox4x32_10(ctr, key),
                want,
                "counter {ctr:08x?} key {key:08x?}"
            );
        }
    }

    #[test]
    fn mask_elements_follow_the_documented_layout() {
        let key = 0x0123_4567_89ab_cdef_u64;
        let n = 3 * TASK + 13; // several tasks and a ragged last block
        let threshold = keep_threshold(0.3);
        let mut mask = vec![f32::NAN; n];
        fill_mask(key, &mut mask, threshold, 2.0);
        for i in (0..n).step_by(997).chain([n - 1, TASK - 1, TASK, 7, 8]) {
            let (g, d, j) = (i / 128, (i % 128) / 16, i % 16);
            let w = philox4x32_10([(16 * g + j) as u32, 0, 0, 0], [0x89ab_cdef, 0x0123_4567]);
            let draw = (w[d / 2] >> (16 * (d % 2))) & 0xffff;
            let want = if draw < threshold { 2.0 } else { 0.0 };
            assert_eq!(mask[i], want, "element {i}");
        }
        let kept = mask.iter().filter(|&&v| v == 2.0).count() as f64 / n as f64;
        assert!((kept - 0.7).abs() < 0.01, "kept fraction {kept}");
        assert!(mask.iter().all(|&v| v == 0.0 || v == 2.0));
    }

    #[test]
    fn masks_do_not_depend_on_the_thread_count() {
        let mut a = vec![0f32; 2 * TASK + 5];
        let mut b = a.clone();
        fill_mask(7, &mut a, keep_threshold(0.2), 1.25);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        if let Ok(pool) = pool {
            pool.install(|| fill_mask(7, &mut b, keep_threshold(0.2), 1.25));
            assert_eq!(a, b);
        }
    }
}
