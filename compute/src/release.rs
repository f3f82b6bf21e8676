//! Output disclosure control: what of a job's results may leave the enclave. Pure.
//!
//! A job's results are typed: counts, metrics per stratum (the whole cohort, each
//! vendor, each site), calibration bins, per-patient values and trained weights. Before
//! anything is released, [`check`] applies, in order:
//!
//! 1. **Only what was approved.** Each output kind must be listed in the approval;
//!    per-patient values also need the approval to name their purpose and recipient.
//!    Anything else is blocked, naming the rule.
//! 2. **Minimum cohort.** A job over fewer than 10 patients releases nothing.
//! 3. **Threshold per stratum.** A stratum's counts and every metric derived from them
//!    are released only when it has at least 10 patients, and at least 10 in each class
//!    a metric rests on (positives for sensitivity, negatives for specificity, both for
//!    AUC and calibration). A zero count is disclosive like any other small count. A
//!    calibration bin under 10 cases is suppressed on its own.
//! 4. **Secondary suppression.** When exactly one stratum of a breakdown (one vendor,
//!    one site) is suppressed, the next smallest is suppressed too, so the total minus
//!    the others cannot reveal it.
//! 5. **Rounding.** Counts to the nearest 5 (OpenSAFELY); every other number to three
//!    significant digits.
//! 6. **Trained weights** leave only when their parameter count is at most a third of
//!    the training patients (DataSHIELD's `nfilter.glm`), the residual degrees of
//!    freedom are at least 10, and the ethics board approved this release; otherwise
//!    the model stays in the registry, usable only inside the enclave.
//! 7. **Size.** The released document must fit the size cap.
//!
//! Every suppression is reported with the rule that caused it, so the researcher knows
//! why, and the gateway audits it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The output kinds an approval can list.
pub const KINDS: &[&str] = &[
    "counts",
    "auc",
    "sensitivity",
    "specificity",
    "calibration",
    "dice",
    "hausdorff",
    "per_patient",
    "weights",
];

/// The rules, with ProstateNET's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Fewest patients in a job, a stratum, or a class a metric rests on (10).
    pub threshold: u64,
    /// Counts are rounded to multiples of this (5).
    pub round_to: u64,
    /// Significant digits of every other number (3).
    pub digits: u32,
    /// Largest released document, bytes (64 KiB).
    pub max_bytes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            threshold: 10,
            round_to: 5,
            digits: 3,
            max_bytes: 64 * 1024,
        }
    }
}

/// What the approval lets out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approved {
    /// Output kinds (from [`KINDS`]).
    pub outputs: Vec<String>,
    /// For `per_patient`: the purpose and recipient the approval names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_patient_recipient: Option<String>,
    /// For `weights`: whether the ethics board approved releasing this job's weights.
    #[serde(default)]
    pub weights_release_approved: bool,
}

/// One stratum's raw results, as the enclave computed them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stratum {
    /// Patients.
    pub patients: u64,
    /// Positives (classifiers).
    pub positives: u64,
    /// Negatives (classifiers).
    pub negatives: u64,
    /// Metrics by name (auc, sensitivity, specificity, ece, dice, hausdorff, hd95...).
    pub metrics: BTreeMap<String, f64>,
    /// Calibration bins: (from, to, n, predicted, observed).
    pub calibration: Vec<(f64, f64, u64, f64, f64)>,
}

/// Trained weights and what they were trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Parameter values.
    pub values: Vec<f64>,
    /// Training patients.
    pub training_patients: u64,
}

/// A job's raw results, before disclosure control.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Raw {
    /// Patients in the job's cohort.
    pub cohort_patients: u64,
    /// Breakdowns: `"all"` (one stratum `"all"`), `"vendor"`, `"site"`, each stratum by
    /// name.
    pub strata: BTreeMap<String, BTreeMap<String, Stratum>>,
    /// Per-patient scores, keyed by an opaque case number.
    pub per_patient: Vec<(u32, f64)>,
    /// Trained weights, if the job trained any.
    pub weights: Option<Weights>,
}

/// One thing held back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// What (for example `site/SITE_B` or `weights`).
    pub what: String,
    /// The rule that held it back.
    pub rule: String,
}

/// What leaves: the document and what was held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    /// The released outputs.
    pub outputs: Value,
    /// What was held back, with the rule.
    pub blocked: Vec<Blocked>,
}

/// Rounds to `digits` significant digits.
pub fn significant(v: f64, digits: u32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let magnitude = v.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits as i32 - 1 - magnitude);
    (v * scale).round() / scale
}

fn round_count(n: u64, to: u64) -> u64 {
    if to <= 1 {
        n
    } else {
        (n + to / 2) / to * to
    }
}

/// Which classes each metric rests on: (positives, negatives).
fn classes(metric: &str) -> (bool, bool) {
    match metric {
        "auc" | "ece" => (true, true),
        "sensitivity" => (true, false),
        "specificity" => (false, true),
        _ => (false, false),
    }
}

/// The output kind a metric belongs to.
fn kind_of(metric: &str) -> &str {
    match metric {
        "ece" => "calibration",
        "hd95" => "hausdorff",
        m => m,
    }
}

/// Applies the rules to a job's raw results.
pub fn check(raw: &Raw, approved: &Approved, rules: &Rules) -> Released {
    let mut blocked = Vec::new();
    let mut block = |what: &str, rule: &str| {
        blocked.push(Blocked {
            what: what.to_string(),
            rule: rule.to_string(),
        })
    };
    let allowed = |k: &str| approved.outputs.iter().any(|o| o == k);
    let mut out = Map::new();

    if raw.cohort_patients < rules.threshold {
        block(
            "everything",
            &format!(
                "the job's cohort has fewer than {} patients: nothing is released",
                rules.threshold
            ),
        );
        return Released {
            outputs: Value::Object(out),
            blocked,
        };
    }

    // Secondary suppression: per breakdown, the strata that fail the threshold, and one
    // more when only one fails.
    let mut strata_out = Map::new();
    for (breakdown, strata) in &raw.strata {
        let mut hidden: Vec<&str> = strata
            .iter()
            .filter(|(_, s)| s.patients < rules.threshold)
            .map(|(n, _)| n.as_str())
            .collect();
        for name in &hidden {
            block(
                &format!("{breakdown}/{name}"),
                &format!("fewer than {} patients in this stratum", rules.threshold),
            );
        }
        if hidden.len() == 1 && strata.len() > 1 {
            if let Some((next, _)) = strata
                .iter()
                .filter(|(n, _)| n.as_str() != hidden[0])
                .min_by_key(|(n, s)| (s.patients, n.as_str()))
            {
                block(
                    &format!("{breakdown}/{next}"),
                    "secondary suppression: the smallest other stratum is held back so the total cannot reveal a suppressed one",
                );
                hidden.push(next.as_str());
            }
        }
        let mut shown = Map::new();
        for (name, s) in strata {
            if hidden.contains(&name.as_str()) {
                continue;
            }
            let mut o = Map::new();
            if allowed("counts") {
                o.insert(
                    "patients".into(),
                    json!(round_count(s.patients, rules.round_to)),
                );
                if s.positives + s.negatives > 0 {
                    for (k, n) in [("positives", s.positives), ("negatives", s.negatives)] {
                        if n < rules.threshold {
                            block(
                                &format!("{breakdown}/{name}/{k}"),
                                &format!("fewer than {} in the class", rules.threshold),
                            );
                        } else {
                            o.insert(k.into(), json!(round_count(n, rules.round_to)));
                        }
                    }
                }
            }
            for (metric, v) in &s.metrics {
                let kind = kind_of(metric);
                if !allowed(kind) {
                    continue;
                }
                let (needs_pos, needs_neg) = classes(metric);
                if (needs_pos && s.positives < rules.threshold)
                    || (needs_neg && s.negatives < rules.threshold)
                {
                    block(
                        &format!("{breakdown}/{name}/{metric}"),
                        &format!(
                            "fewer than {} positives or negatives, which this metric rests on",
                            rules.threshold
                        ),
                    );
                    continue;
                }
                if v.is_finite() {
                    o.insert(metric.clone(), json!(significant(*v, rules.digits)));
                }
            }
            if allowed("calibration") && !s.calibration.is_empty() {
                let bins: Vec<Value> = s
                    .calibration
                    .iter()
                    .map(|&(from, to, n, p, obs)| {
                        if n < rules.threshold {
                            json!({"from": from, "to": to, "n": "suppressed"})
                        } else {
                            json!({
                                "from": from,
                                "to": to,
                                "n": round_count(n, rules.round_to),
                                "predicted": significant(p, rules.digits),
                                "observed": significant(obs, rules.digits),
                            })
                        }
                    })
                    .collect();
                o.insert("calibration".into(), Value::Array(bins));
            }
            shown.insert(name.clone(), Value::Object(o));
        }
        strata_out.insert(breakdown.clone(), Value::Object(shown));
    }
    out.insert("strata".into(), Value::Object(strata_out));

    if !raw.per_patient.is_empty() {
        match (&approved.per_patient_recipient, allowed("per_patient")) {
            (Some(recipient), true) => {
                out.insert(
                    "per_patient".into(),
                    json!({
                        "recipient": recipient,
                        "scores": raw.per_patient.iter()
                            .map(|(k, v)| json!([k, significant(*v, rules.digits)]))
                            .collect::<Vec<_>>(),
                    }),
                );
            }
            _ => block(
                "per_patient",
                "per-patient values leave only when the approval lists them with their purpose and recipient",
            ),
        }
    }

    if let Some(w) = &raw.weights {
        let params = w.values.len() as u64;
        let rule = if !allowed("weights") {
            Some("the approval does not list trained weights among its outputs".to_string())
        } else if params * 3 > w.training_patients {
            Some(format!(
                "{params} parameters need at least {} training patients (a third: DataSHIELD nfilter.glm)",
                params * 3
            ))
        } else if w.training_patients.saturating_sub(params) < rules.threshold {
            Some(format!(
                "residual degrees of freedom under {}",
                rules.threshold
            ))
        } else if !approved.weights_release_approved {
            Some(
                "releasing trained weights needs the ethics board's approval of this release"
                    .into(),
            )
        } else {
            None
        };
        match rule {
            Some(rule) => block(
                "weights",
                &format!("{rule}; the model stays in the registry, usable inside the enclave"),
            ),
            None => {
                out.insert(
                    "weights".into(),
                    json!(w
                        .values
                        .iter()
                        .map(|v| significant(*v, rules.digits))
                        .collect::<Vec<_>>()),
                );
            }
        }
    }

    let mut outputs = Value::Object(out);
    let size = serde_json::to_vec(&outputs)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > rules.max_bytes {
        block(
            "everything",
            &format!(
                "the outputs are {size} bytes, over the cap of {} bytes",
                rules.max_bytes
            ),
        );
        outputs = json!({});
    }
    Released { outputs, blocked }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stratum(patients: u64, positives: u64, auc: f64) -> Stratum {
        Stratum {
            patients,
            positives,
            negatives: patients - positives,
            metrics: [
                ("auc".to_string(), auc),
                ("sensitivity".to_string(), 0.87654),
            ]
            .into_iter()
            .collect(),
            calibration: vec![(0.0, 0.1, 30, 0.04321, 0.0333), (0.9, 1.0, 4, 0.95, 1.0)],
        }
    }

    fn raw() -> Raw {
        let mut strata = BTreeMap::new();
        strata.insert(
            "all".to_string(),
            [("all".to_string(), stratum(63, 24, 0.912345))]
                .into_iter()
                .collect(),
        );
        strata.insert(
            "site".to_string(),
            [
                ("SITE_A".to_string(), stratum(30, 12, 0.9)),
                ("SITE_B".to_string(), stratum(25, 11, 0.95)),
                ("SITE_C".to_string(), stratum(8, 1, 1.0)),
            ]
            .into_iter()
            .collect(),
        );
        Raw {
            cohort_patients: 63,
            strata,
            per_patient: vec![(1, 0.5)],
            weights: Some(Weights {
                values: vec![0.1; 5],
                training_patients: 40,
            }),
        }
    }

    fn approved(outputs: &[&str]) -> Approved {
        Approved {
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn rules_of(r: &Released) -> Vec<(&str, &str)> {
        r.blocked
            .iter()
            .map(|b| (b.what.as_str(), b.rule.as_str()))
            .collect()
    }

    #[test]
    fn counts_round_metrics_keep_three_digits_and_small_strata_are_suppressed_twice() {
        let r = check(
            &raw(),
            &approved(&["counts", "auc", "calibration"]),
            &Rules::default(),
        );
        let all = &r.outputs["strata"]["all"]["all"];
        assert_eq!(all["patients"], 65);
        assert_eq!(all["positives"], 25);
        assert_eq!(all["auc"], 0.912);
        // Not approved: not shown, not reported either.
        assert!(all.get("sensitivity").is_none());
        // The bin of 4 is suppressed on its own; the other rounds.
        assert_eq!(all["calibration"][0]["n"], 30);
        assert_eq!(all["calibration"][0]["predicted"], 0.0432);
        assert_eq!(all["calibration"][1]["n"], "suppressed");
        // SITE_C (8 patients) is suppressed, and SITE_B with it (secondary).
        let sites = r.outputs["strata"]["site"].as_object().unwrap();
        assert_eq!(sites.keys().collect::<Vec<_>>(), vec!["SITE_A"]);
        let blocked = rules_of(&r);
        assert!(blocked
            .iter()
            .any(|(w, rule)| *w == "site/SITE_C" && rule.contains("fewer than 10")));
        assert!(blocked
            .iter()
            .any(|(w, rule)| *w == "site/SITE_B" && rule.contains("secondary")));
        // Per-patient values and weights were not approved: blocked with the rule.
        assert!(blocked
            .iter()
            .any(|(w, rule)| *w == "per_patient" && rule.contains("recipient")));
        assert!(blocked
            .iter()
            .any(|(w, rule)| *w == "weights" && rule.contains("does not list")));
        assert!(r.outputs.get("weights").is_none());
    }

    #[test]
    fn a_metric_resting_on_a_small_class_is_held_back() {
        let mut raw = raw();
        raw.strata
            .get_mut("all")
            .unwrap()
            .insert("all".into(), stratum(40, 6, 0.8));
        let r = check(
            &raw,
            &approved(&["counts", "auc", "sensitivity"]),
            &Rules::default(),
        );
        let all = &r.outputs["strata"]["all"]["all"];
        assert_eq!(all["patients"], 40);
        assert!(all.get("positives").is_none());
        assert!(all.get("auc").is_none());
        assert!(all.get("sensitivity").is_none());
        assert!(rules_of(&r).iter().any(|(w, _)| *w == "all/all/auc"));
    }

    #[test]
    fn a_small_cohort_releases_nothing() {
        let mut raw = raw();
        raw.cohort_patients = 9;
        let r = check(&raw, &approved(KINDS), &Rules::default());
        assert_eq!(r.outputs, json!({}));
        assert_eq!(r.blocked[0].what, "everything");
    }

    #[test]
    fn weights_leave_only_small_enough_and_with_the_board_s_approval() {
        let mut a = approved(&["weights"]);
        let r = check(&raw(), &a, &Rules::default());
        assert!(rules_of(&r)
            .iter()
            .any(|(w, rule)| *w == "weights" && rule.contains("board")));
        a.weights_release_approved = true;
        let r = check(&raw(), &a, &Rules::default());
        assert_eq!(r.outputs["weights"].as_array().unwrap().len(), 5);
        let mut big = raw();
        big.weights = Some(Weights {
            values: vec![0.0; 20],
            training_patients: 40,
        });
        let r = check(&big, &a, &Rules::default());
        assert!(rules_of(&r)
            .iter()
            .any(|(_, rule)| rule.contains("nfilter.glm")));
        let mut few = raw();
        few.weights = Some(Weights {
            values: vec![0.0; 4],
            training_patients: 13,
        });
        let r = check(&few, &a, &Rules::default());
        assert!(rules_of(&r)
            .iter()
            .any(|(_, rule)| rule.contains("degrees of freedom")));
    }

    #[test]
    fn per_patient_values_need_a_named_recipient_and_oversized_outputs_go_nowhere() {
        let mut a = approved(&["per_patient"]);
        a.per_patient_recipient = Some("trial 42 data manager, recalibration".into());
        let r = check(&raw(), &a, &Rules::default());
        assert_eq!(r.outputs["per_patient"]["scores"][0][1], 0.5);
        let small = Rules {
            max_bytes: 10,
            ..Rules::default()
        };
        let r = check(&raw(), &a, &small);
        assert_eq!(r.outputs, json!({}));
        assert!(rules_of(&r)
            .iter()
            .any(|(_, rule)| rule.contains("over the cap")));
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(0.912345, 3), 0.912);
        assert_eq!(significant(12345.0, 3), 12300.0);
        assert_eq!(significant(-0.000123456, 3), -0.000123);
        assert_eq!(significant(0.0, 3), 0.0);
    }
}
