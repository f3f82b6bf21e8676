//! The trainable head of transfer learning: a logistic regression on a frozen
//! backbone's features. Pure.
//!
//! ProstateNET fine-tunes vendor- or site-specific models by training a small head on
//! the features the frozen base model computes. The head here is L2-regularised
//! logistic regression fitted by Newton's method (iteratively reweighted least
//! squares), which for the few features of a backbone converges in a handful of steps
//! and gives the same answer every run.

use serde::{Deserialize, Serialize};

/// A fitted head: intercept then one weight per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Intercept.
    pub intercept: f64,
    /// Weights.
    pub weights: Vec<f64>,
}

impl Head {
    /// The probability for one feature vector.
    pub fn predict(&self, x: &[f32]) -> f64 {
        let z = self.intercept
            + self
                .weights
                .iter()
                .zip(x)
                .map(|(w, v)| w * f64::from(*v))
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    /// Parameters (intercept and weights), as disclosure control counts them.
    pub fn parameters(&self) -> Vec<f64> {
        std::iter::once(self.intercept)
            .chain(self.weights.iter().copied())
            .collect()
    }
}

/// Fits a head to `x` (one feature vector per case) and `y`, with ridge penalty
/// `lambda` on the weights (not the intercept). `None` without both classes or with
/// ragged features.
pub fn fit(x: &[Vec<f32>], y: &[bool], lambda: f64) -> Option<Head> {
    let n = x.len();
    let k = x.first()?.len();
    if n != y.len() || x.iter().any(|r| r.len() != k) || !y.contains(&true) || !y.contains(&false) {
        return None;
    }
    let p = k + 1;
    let row = |i: usize| -> Vec<f64> {
        std::iter::once(1.0)
            .chain(x[i].iter().map(|v| f64::from(*v)))
            .collect()
    };
    let mut beta = vec![0.0; p];
    for _ in 0..50 {
        // Gradient and Hessian of the penalised negative log-likelihood.
        let mut g = vec![0.0; p];
        let mut h = vec![vec![0.0; p]; p];
        for (i, yi) in y.iter().enumerate() {
            let r = row(i);
            let z: f64 = r.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let mu = 1.0 / (1.0 + (-z).exp());
            let w = (mu * (1.0 - mu)).max(1e-9);
            let e = mu - f64::from(u8::from(*yi));
            for a in 0..p {
                g[a] += e * r[a];
                for b in 0..p {
                    h[a][b] += w * r[a] * r[b];
                }
            }
        }
        for a in 1..p {
            g[a] += lambda * beta[a];
            h[a][a] += lambda;
        }
        let step = solve(h, g)?;
        let mut biggest: f64 = 0.0;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b -= s;
            biggest = biggest.max(s.abs());
        }
        if biggest < 1e-10 {
            break;
        }
    }
    beta.iter().all(|b| b.is_finite()).then(|| Head {
        intercept: beta[0],
        weights: beta[1..].to_vec(),
    })
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let pivot = (c..n).max_by(|i, j| a[*i][c].abs().total_cmp(&a[*j][c].abs()))?;
        if a[pivot][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, pivot);
        b.swap(c, pivot);
        let (top, rest) = a.split_at_mut(c + 1);
        let pivot_row = &top[c];
        for (k, row) in rest.iter_mut().enumerate() {
            let f = row[c] / pivot_row[c];
            for (x, p) in row[c..].iter_mut().zip(&pivot_row[c..]) {
                *x -= f * p;
            }
            b[c + 1 + k] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_learns_a_separating_feature_and_ignores_noise() {
        // Feature 0 decides; feature 1 is the same for both classes.
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                vec![
                    if i % 2 == 0 { 0.8 } else { 0.1 } + (i % 5) as f32 * 0.01,
                    0.5,
                ]
            })
            .collect();
        let y: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
        let h = fit(&x, &y, 1e-2).unwrap();
        assert!(h.weights[0] > 1.0, "{h:?}");
        assert!(h.predict(&[0.8, 0.5]) > 0.9);
        assert!(h.predict(&[0.1, 0.5]) < 0.1);
        assert_eq!(h.parameters().len(), 3);
        // Same data, same head.
        assert_eq!(fit(&x, &y, 1e-2).unwrap(), h);
        // One class only, or ragged rows: no head.
        assert!(fit(&x, &[true; 40], 1e-2).is_none());
        assert!(fit(&[vec![1.0], vec![1.0, 2.0]], &[true, false], 1e-2).is_none());
    }

    #[test]
    fn an_overlapping_problem_gives_the_textbook_answer() {
        // y = 1 for x in {2, 3, 4} (and one at x=1), 0 for {0, 1, 2}: a finite MLE.
        let xs = [0.0f32, 1.0, 2.0, 1.0, 2.0, 3.0, 4.0];
        let ys = [false, false, false, true, true, true, true];
        let x: Vec<Vec<f32>> = xs.iter().map(|v| vec![*v]).collect();
        let h = fit(&x, &ys, 0.0).unwrap();
        // At the MLE the gradient is zero: sum(y - p) = 0 and sum((y - p) x) = 0.
        let (mut g0, mut g1) = (0.0, 0.0);
        for (v, y) in xs.iter().zip(ys) {
            let e = f64::from(u8::from(y)) - h.predict(&[*v]);
            g0 += e;
            g1 += e * f64::from(*v);
        }
        assert!(g0.abs() < 1e-8 && g1.abs() < 1e-8, "{g0} {g1}");
    }
}
