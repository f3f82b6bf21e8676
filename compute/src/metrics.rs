//! The metrics a job can ask for, computed from scores, labels and masks: pure.
//!
//! Classifiers: the area under the ROC curve (the Mann-Whitney statistic, ties counted
//! half), sensitivity and specificity at a threshold, and calibration (observed rate
//! against mean predicted probability in ten equal-width bins, with the expected
//! calibration error). Segmenters: Dice and the Hausdorff distance, in millimetres,
//! between a predicted mask and the reference segmentation.
//!
//! Each function returns `None` where the metric is undefined (no positives, empty
//! masks), never a made-up number.

use serde::{Deserialize, Serialize};

/// Area under the ROC curve of `scores` against `labels` (true: positive): the
/// probability that a random positive scores above a random negative, ties half.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    if pairs.iter().any(|(s, _)| !s.is_finite()) {
        return None;
    }
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of positive ranks (1-based, ties get the mean rank).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (pos, neg) = (pos as f64, neg as f64);
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Counts at a threshold (a score at or above it is called positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// True negatives.
    pub tn: u64,
    /// False negatives.
    pub fn_: u64,
}

impl Confusion {
    /// The confusion counts at `threshold`.
    pub fn at(scores: &[f64], labels: &[bool], threshold: f64) -> Confusion {
        let mut c = Confusion {
            tp: 0,
            fp: 0,
            tn: 0,
            fn_: 0,
        };
        for (&s, &y) in scores.iter().zip(labels) {
            match (s >= threshold, y) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// TP / (TP + FN), undefined without positives.
    pub fn sensitivity(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// TN / (TN + FP), undefined without negatives.
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fp)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// One calibration bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Lower edge of the predicted probability.
    pub from: f64,
    /// Upper edge.
    pub to: f64,
    /// Cases whose score falls in the bin.
    pub n: u64,
    /// Mean predicted probability in the bin.
    pub predicted: f64,
    /// Observed rate of positives in the bin.
    pub observed: f64,
}

/// Calibration in `bins` equal-width bins of predicted probability, and the expected
/// calibration error (the case-weighted mean of |observed - predicted|). Scores must be
/// probabilities (0 to 1); empty bins are left out.
pub fn calibration(scores: &[f64], labels: &[bool], bins: usize) -> Option<(Vec<Bin>, f64)> {
    if scores.is_empty() || bins == 0 || scores.iter().any(|s| !(0.0..=1.0).contains(s)) {
        return None;
    }
    let mut acc = vec![(0u64, 0.0f64, 0u64); bins];
    for (&s, &y) in scores.iter().zip(labels) {
        let k = ((s * bins as f64) as usize).min(bins - 1);
        acc[k].0 += 1;
        acc[k].1 += s;
        acc[k].2 += u64::from(y);
    }
    let total = scores.len() as f64;
    let mut ece = 0.0;
    let out = acc
        .iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(k, &(n, sum, pos))| {
            let predicted = sum / n as f64;
            let observed = pos as f64 / n as f64;
            ece += n as f64 / total * (observed - predicted).abs();
            Bin {
                from: k as f64 / bins as f64,
                to: (k + 1) as f64 / bins as f64,
                n,
                predicted,
                observed,
            }
        })
        .collect();
    Some((out, ece))
}

/// A binary mask on a regular grid, with the grid's spacing in millimetres (slice,
/// row, column).
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Slices, rows, columns.
    pub shape: [usize; 3],
    /// Spacing between slices, rows and columns, mm.
    pub spacing: [f64; 3],
    /// Voxels, slice-major, then row, then column.
    pub on: Vec<bool>,
}

impl Mask {
    fn voxels(&self) -> usize {
        self.on.iter().filter(|&&b| b).count()
    }

    /// Coordinates (mm) of the voxels on the mask's surface: on, with a 6-neighbour
    /// off or outside the grid (within a slice only, when there is one slice).
    fn surface(&self) -> Vec<[f64; 3]> {
        let [d, h, w] = self.shape;
        let at = |z: usize, y: usize, x: usize| self.on[(z * h + y) * w + x];
        let mut out = Vec::new();
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    if !at(z, y, x) {
                        continue;
                    }
                    let edge = x == 0
                        || y == 0
                        || x + 1 == w
                        || y + 1 == h
                        || !at(z, y, x - 1)
                        || !at(z, y, x + 1)
                        || !at(z, y - 1, x)
                        || !at(z, y + 1, x)
                        || (d > 1
                            && (z == 0 || z + 1 == d || !at(z - 1, y, x) || !at(z + 1, y, x)));
                    if edge {
                        out.push([
                            z as f64 * self.spacing[0],
                            y as f64 * self.spacing[1],
                            x as f64 * self.spacing[2],
                        ]);
                    }
                }
            }
        }
        out
    }
}

/// Dice coefficient 2|A∩B| / (|A| + |B|); undefined when both masks are empty or the
/// grids differ.
pub fn dice(a: &Mask, b: &Mask) -> Option<f64> {
    if a.shape != b.shape || a.on.len() != b.on.len() {
        return None;
    }
    let both = a.on.iter().zip(&b.on).filter(|(x, y)| **x && **y).count();
    let sum = a.voxels() + b.voxels();
    (sum > 0).then(|| 2.0 * both as f64 / sum as f64)
}

/// The Hausdorff distance (mm) between the surfaces of two masks on the same grid, and
/// its 95th percentile (HD95, less sensitive to a stray voxel); undefined when either
/// mask is empty.
pub fn hausdorff(a: &Mask, b: &Mask) -> Option<(f64, f64)> {
    if a.shape != b.shape {
        return None;
    }
    let (sa, sb) = (a.surface(), b.surface());
    if sa.is_empty() || sb.is_empty() {
        return None;
    }
    let nearest = |p: &[f64; 3], set: &[[f64; 3]]| {
        set.iter()
            .map(|q| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2))
            .fold(f64::INFINITY, f64::min)
            .sqrt()
    };
    let mut d: Vec<f64> = sa.iter().map(|p| nearest(p, &sb)).collect();
    d.extend(sb.iter().map(|p| nearest(p, &sa)));
    d.sort_by(f64::total_cmp);
    let max = *d.last()?;
    let k = ((d.len() as f64 * 0.95).ceil() as usize).clamp(1, d.len()) - 1;
    Some((max, d[k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties_half() {
        // Positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered.
        let s = [0.9, 0.4, 0.5, 0.1];
        let y = [true, true, false, false];
        assert_eq!(auc(&s, &y), Some(0.75));
        assert_eq!(auc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.9], &[true, false]), Some(0.0));
        assert_eq!(auc(&[0.1, 0.9], &[true, true]), None);
        assert_eq!(auc(&[f64::NAN, 0.9], &[true, false]), None);
    }

    #[test]
    fn sensitivity_and_specificity_at_a_threshold() {
        let s = [0.9, 0.6, 0.2, 0.7, 0.1];
        let y = [true, true, true, false, false];
        let c = Confusion::at(&s, &y, 0.5);
        assert_eq!((c.tp, c.fn_, c.tn, c.fp), (2, 1, 1, 1));
        assert_eq!(c.sensitivity(), Some(2.0 / 3.0));
        assert_eq!(c.specificity(), Some(0.5));
        assert_eq!(Confusion::at(&[], &[], 0.5).sensitivity(), None);
    }

    #[test]
    fn a_calibrated_model_has_no_calibration_error() {
        // Bin 0.2-0.3: two cases at 0.25, one positive of four would be 0.25...
        let s = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let y = [true, false, false, false, true, true, true, false];
        let (bins, ece) = calibration(&s, &y, 10).unwrap();
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].n, bins[0].observed), (4, 0.25));
        assert!(ece.abs() < 1e-12);
        let (_, ece) = calibration(&[0.9, 0.9], &[false, false], 10).unwrap();
        assert!((ece - 0.9).abs() < 1e-12);
        assert!(calibration(&[1.5], &[true], 10).is_none());
    }

    fn square(n: usize, from: usize, to: usize) -> Mask {
        let mut on = vec![false; n * n];
        for y in from..to {
            for x in from..to {
                on[y * n + x] = true;
            }
        }
        Mask {
            shape: [1, n, n],
            spacing: [3.0, 0.5, 0.5],
            on,
        }
    }

    #[test]
    fn dice_and_hausdorff_of_shifted_squares() {
        let a = square(20, 5, 10);
        let b = square(20, 6, 11);
        // 25 voxels each, 16 shared.
        assert_eq!(dice(&a, &b), Some(32.0 / 50.0));
        assert_eq!(dice(&a, &a), Some(1.0));
        // Corner (5,5) of a is sqrt(2) pixels from b's nearest surface voxel (6,6).
        let (hd, hd95) = hausdorff(&a, &b).unwrap();
        assert!((hd - 2f64.sqrt() * 0.5).abs() < 1e-9, "{hd}");
        assert!(hd95 <= hd);
        let empty = square(20, 0, 0);
        assert_eq!(hausdorff(&a, &empty), None);
        assert_eq!(dice(&empty, &empty), None);
        assert_eq!(dice(&a, &empty), Some(0.0));
    }
}
