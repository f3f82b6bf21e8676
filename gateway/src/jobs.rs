//! Jobs: an approved service request's model run over its cohort in the compute
//! enclave, and the model registry.
//!
//! A researcher submits a job for a service request they hold (`POST /jobs`); it is
//! queued in the database (`jobs`), so a restart loses none. Runners (one per core by
//! default) claim queued jobs; for each they check the grant is in force and the model
//! is the one the approval names (by SHA-256), build the cases (decrypted in memory,
//! resampled as the model card says), and hand them to a sandboxed worker through a
//! pipe ([`compute::sandbox`]). What comes back is turned into metrics per stratum
//! (whole cohort, vendor, site) and passes disclosure control
//! ([`compute::release`]) before anything is kept as the job's released outputs,
//! signed by the gateway and recorded in the audit log. A job whose worker died, or
//! that was running when the gateway stopped, is marked failed with the reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use catalogue::classify::Sequence;
use certs::{Principal, Role};
use compute::card::{Card, Task};
use compute::protocol::{Action, Case, Job, JobSpec, Results};
use serde_json::{json, Value};
use sqlx::Row;

use crate::routes::AppState;

/// The models hbs ships (built by `tools/models/make_models.py`).
pub(crate) const SHIPPED: &[(&[u8], &[u8])] = &[
    (
        include_bytes!("../../compute/models/cspca-dwi-classifier.onnx"),
        include_bytes!("../../compute/models/cspca-dwi-classifier.json"),
    ),
    (
        include_bytes!("../../compute/models/lesion-unet-2d.onnx"),
        include_bytes!("../../compute/models/lesion-unet-2d.json"),
    ),
    (
        include_bytes!("../../compute/models/lesion-unet-3d.onnx"),
        include_bytes!("../../compute/models/lesion-unet-3d.json"),
    ),
];

/// The job queue and the model registry.
pub struct Jobs {
    pool: sqlx::AnyPool,
    models: PathBuf,
    launcher: compute::sandbox::Launcher,
    wake: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    let mut b = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    format!("job-{}", hex::encode(b))
}

impl Jobs {
    /// Opens the queue and the registry in the policy database; registers the shipped
    /// models; marks jobs left running by a previous process as failed.
    pub async fn open(pool: sqlx::AnyPool, data_dir: &std::path::Path) -> Result<Arc<Jobs>> {
        for ddl in [
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, request TEXT NOT NULL,
                requester TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
                params TEXT NOT NULL, result TEXT NOT NULL, created BIGINT NOT NULL,
                updated BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS job_weights (job TEXT PRIMARY KEY, head TEXT NOT NULL,
                training BIGINT NOT NULL, approvals TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS models (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL,
                version TEXT NOT NULL, scenario TEXT NOT NULL, card TEXT NOT NULL,
                lineage TEXT NOT NULL, evaluations TEXT NOT NULL, created BIGINT NOT NULL)",
        ] {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .context("jobs tables")?;
        }
        let models = data_dir.join("models");
        std::fs::create_dir_all(&models)?;
        let launcher = crate::enclave::launcher(compute::sandbox::Limits::default())?;
        let jobs = Arc::new(Jobs {
            pool,
            models,
            launcher,
            wake: tokio::sync::Notify::new(),
        });
        for (onnx, card) in SHIPPED {
            jobs.register(
                onnx,
                card,
                json!({"base": null, "origin": "shipped with hbs"}),
            )
            .await?;
        }
        sqlx::query(
            "UPDATE jobs SET status = 'failed', reason = $1, updated = $2 WHERE status = 'running'",
        )
        .bind("the gateway stopped while the job was running; its worker ended with it")
        .bind(now_ms())
        .execute(&jobs.pool)
        .await?;
        Ok(jobs)
    }

    /// Adds a model (ONNX and card) to the registry, keyed by its SHA-256.
    pub async fn register(&self, onnx: &[u8], card: &[u8], lineage: Value) -> Result<String> {
        let parsed = Card::parse(card).map_err(anyhow::Error::msg)?;
        let sha = crate::dicomweb::sha256_hex(onnx);
        // Content-addressed: a file already there under its hash is this model (the
        // shipped ones are registered at every start).
        let file = self.models.join(format!("{sha}.onnx"));
        if !file.is_file() {
            vault::store::atomic_write(&file, onnx)?;
        }
        sqlx::query(
            "INSERT INTO models (sha256, name, version, scenario, card, lineage, evaluations, created)
             VALUES ($1, $2, $3, $4, $5, $6, '[]', $7) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&sha)
        .bind(&parsed.name)
        .bind(&parsed.version)
        .bind(&parsed.scenario)
        .bind(serde_json::to_string(&parsed)?)
        .bind(lineage.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(sha)
    }

    /// Registers a fine-tuned head (kept in the data folder, usable in the enclave).
    async fn register_head(
        &self,
        sha: &str,
        base: &Card,
        head: &[u8],
        lineage: Value,
        evaluation: &Value,
    ) -> Result<()> {
        vault::store::atomic_write(&self.models.join(format!("{sha}.head.json")), head)?;
        let mut card = base.clone();
        card.name = format!("{}+head", base.name);
        sqlx::query(
            "INSERT INTO models (sha256, name, version, scenario, card, lineage, evaluations, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha)
        .bind(&card.name)
        .bind(&card.version)
        .bind(&card.scenario)
        .bind(serde_json::to_string(&card)?)
        .bind(lineage.to_string())
        .bind(json!([evaluation]).to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a released evaluation to a model's record.
    async fn add_evaluation(&self, sha: &str, evaluation: Value) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query("SELECT evaluations FROM models WHERE sha256 = $1")
            .bind(sha)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(());
        };
        let mut list: Vec<Value> =
            serde_json::from_str(&row.get::<String, _>(0)).unwrap_or_default();
        list.push(evaluation);
        sqlx::query("UPDATE models SET evaluations = $1 WHERE sha256 = $2")
            .bind(serde_json::to_string(&list)?)
            .bind(sha)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The registry.
    pub async fn models(&self) -> Result<Vec<Value>> {
        let rows = sqlx::query(
            "SELECT sha256, name, version, scenario, card, lineage, evaluations FROM models ORDER BY name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let parse = |i: usize| {
                    serde_json::from_str::<Value>(&r.get::<String, _>(i)).unwrap_or(Value::Null)
                };
                json!({
                    "sha256": r.get::<String, _>(0),
                    "name": r.get::<String, _>(1),
                    "version": r.get::<String, _>(2),
                    "scenario": r.get::<String, _>(3),
                    "card": parse(4),
                    "lineage": parse(5),
                    "evaluations": parse(6),
                })
            })
            .collect())
    }

    async fn set(&self, id: &str, status: &str, reason: &str, result: &Value) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET status = $1, reason = $2, result = $3, updated = $4 WHERE id = $5",
        )
        .bind(status)
        .bind(reason)
        .bind(result.to_string())
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims the oldest queued job.
    async fn claim(&self) -> Result<Option<(String, String, Value)>> {
        loop {
            let Some(r) = sqlx::query(
                "SELECT id, request, params FROM jobs WHERE status = 'queued' ORDER BY created, id LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?
            else {
                return Ok(None);
            };
            let id: String = r.get(0);
            let taken = sqlx::query(
                "UPDATE jobs SET status = 'running', updated = $1 WHERE id = $2 AND status = 'queued'",
            )
            .bind(now_ms())
            .bind(&id)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if taken == 1 {
                let params = serde_json::from_str(&r.get::<String, _>(2)).unwrap_or(json!({}));
                return Ok(Some((id, r.get(1), params)));
            }
        }
    }
}

/// Starts `n` runners.
pub fn start_runners(st: AppState, n: usize) {
    for _ in 0..n {
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                match st.jobs.claim().await {
                    Ok(Some((id, request, params))) => {
                        let (status, reason, result) = match run(&st, &id, &request, &params).await
                        {
                            Ok((status, result)) => (status, String::new(), result),
                            Err(reason) => ("failed", reason, json!({})),
                        };
                        let outcome = if reason.is_empty() {
                            status.to_string()
                        } else {
                            format!("{status}: {reason}")
                        };
                        let ev = crate::record::event(
                            &system_actor(),
                            &id,
                            "job.finished",
                            &format!("job/{id}"),
                            "allow",
                            "the job's service request is approved and in force",
                            &outcome,
                        );
                        let _ = st.audit.append(ev).await;
                        if let Err(e) = st.jobs.set(&id, status, &reason, &result).await {
                            tracing::error!(error = %e, "a job's state could not be saved");
                        }
                    }
                    Ok(None) => {
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(2),
                            st.jobs.wake.notified(),
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the job queue cannot be read");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }
}

fn system_actor() -> audit::Actor {
    audit::Actor {
        role: "compute".into(),
        site: None,
        name: "enclave".into(),
        serial: "local".into(),
    }
}

/// Resamples a slice to `rows` x `cols` (area average when shrinking, nearest
/// otherwise) and scales it.
fn resample(s: &vault::image::Slice, rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for y in 0..rows {
        let (y0, y1) = (
            y * s.rows / rows,
            ((y + 1) * s.rows / rows).max(y * s.rows / rows + 1),
        );
        for x in 0..cols {
            let (x0, x1) = (
                x * s.cols / cols,
                ((x + 1) * s.cols / cols).max(x * s.cols / cols + 1),
            );
            let mut sum = 0.0;
            for yy in y0..y1.min(s.rows) {
                for xx in x0..x1.min(s.cols) {
                    sum += s.values[yy * s.cols + xx];
                }
            }
            let n = ((y1.min(s.rows) - y0) * (x1.min(s.cols) - x0)).max(1) as f32;
            out.push(sum / n * scale);
        }
    }
    out
}

/// One patient's case, with what the metrics need beside it.
struct Prepared {
    case: Case,
    label: Option<bool>,
    vendor: String,
    site: String,
    instances: Vec<String>,
    /// Segmenters: the reference lesion mask on the input series' grid.
    reference: Option<compute::metrics::Mask>,
    /// The patient's split (prospective patients).
    split: Option<catalogue::split::Split>,
}

/// Runs one job; (status, the released document) or the reason it failed.
async fn run(
    st: &AppState,
    id: &str,
    request: &str,
    params: &Value,
) -> Result<(&'static str, Value), String> {
    let unavailable = |what: &str| format!("{what} could not be read");
    let req = st
        .policy
        .store()
        .get(request)
        .await
        .map_err(|_| unavailable("the service request"))?
        .ok_or("the service request no longer exists")?;
    if !req.grant.as_ref().is_some_and(|g| g.in_force) {
        return Ok((
            "blocked",
            json!({"blocked": [{"what": "everything", "rule": "the service request's grant is not in force (expired, revoked or not approved)"}]}),
        ));
    }
    let model = req
        .submission
        .model
        .clone()
        .ok_or("the request names no model")?;
    let onnx = std::fs::read(st.jobs.models.join(format!("{}.onnx", model.sha256)))
        .map_err(|_| "the model the approval names is not in the registry")?;
    if crate::dicomweb::sha256_hex(&onnx) != model.sha256 {
        return Err("the registry's file does not have the SHA-256 the approval names".into());
    }
    let card: Card = {
        let row = sqlx::query("SELECT card FROM models WHERE sha256 = $1")
            .bind(&model.sha256)
            .fetch_optional(&st.jobs.pool)
            .await
            .map_err(|_| unavailable("the registry"))?
            .ok_or("the model is not in the registry")?;
        serde_json::from_str(&row.get::<String, _>(0)).map_err(|_| "the model card is damaged")?
    };
    let mut cases = prepare(st, &req, &card).await?;
    let rules = compute::release::Rules::default();
    let action = req.submission.action.as_deref().unwrap_or("evaluation");
    // Fine-tuning: the head learns on the fine-tuning split of one vendor (or site),
    // and is judged, beside the base model, on the external-validation split only.
    let mut training = 0u64;
    if action == "fine-tuning" {
        if card.task != Task::Classifier {
            return Err(
                "fine-tuning trains a head on a classifier's features; this model is a segmenter"
                    .into(),
            );
        }
        let on = |p: &Prepared| match (
            params.get("vendor").and_then(Value::as_str),
            params.get("site").and_then(Value::as_str),
        ) {
            (Some(v), _) => p.vendor == v,
            (None, Some(s)) => p.site == s,
            (None, None) => true,
        };
        cases.retain(|p| p.split.is_some());
        for p in &mut cases {
            if p.split == Some(catalogue::split::Split::FineTuning) && on(p) {
                p.case.label = p.label;
                training += u64::from(p.label.is_some());
            }
        }
        if training < rules.threshold {
            return Ok((
                "blocked",
                json!({"blocked": [{"what": "everything", "rule": format!("fewer than {} labelled patients of the fine-tuning split to train on (prospective patients only)", rules.threshold)}]}),
            ));
        }
    }
    if (cases.len() as u64) < rules.threshold {
        return Ok((
            "blocked",
            json!({"blocked": [{"what": "everything", "rule": format!("the job's cohort has fewer than {} patients with the model's input: nothing runs", rules.threshold)}]}),
        ));
    }
    let threshold = params
        .get("threshold")
        .and_then(Value::as_f64)
        .unwrap_or(0.5);
    let job = Job {
        spec: JobSpec {
            action: if action == "fine-tuning" {
                Action::FineTune
            } else {
                Action::Infer
            },
            card: card.clone(),
            model_sha256: model.sha256.clone(),
            threads: 1,
        },
        model: onnx,
        cases: cases.iter().map(|p| p.case.clone()).collect(),
    };
    let frame = compute::protocol::encode(&job);
    drop(job);
    let launcher = st.jobs.launcher.clone();
    let out = tempfile::tempdir().map_err(|_| "no scratch folder for the worker")?;
    let dir = out.path().to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || launcher.run(&[], frame, &dir))
        .await
        .map_err(|_| "the worker's launcher failed")?;
    let bytes = outcome.result.map_err(|f| f.to_string())?;
    let results: Results = serde_json::from_slice(&bytes)
        .map_err(|_| "the worker's output was malformed".to_string())?;
    if results.cases.len() != cases.len() {
        return Err("the worker's output was malformed".into());
    }
    // Metrics per stratum: classifiers on the cases with a label, segmenters on the
    // cases with a reference segmentation.
    let mut scored: BTreeMap<String, BTreeMap<String, Vec<(f64, bool)>>> = BTreeMap::new();
    let mut overlap: BTreeMap<String, BTreeMap<String, Vec<Overlap>>> = BTreeMap::new();
    let g = card.geometry().map_err(|e| e.to_string())?;
    for (p, r) in cases.iter().zip(&results.cases) {
        let strata = [
            ("all", "all"),
            ("vendor", p.vendor.as_str()),
            ("site", p.site.as_str()),
        ];
        let validation = p.split == Some(catalogue::split::Split::ExternalValidation);
        if let (Some(label), Some(score)) = (p.label, r.score) {
            if action != "fine-tuning" || validation {
                let base = if action == "fine-tuning" { "base/" } else { "" };
                for (b, name) in strata {
                    scored
                        .entry(format!("{base}{b}"))
                        .or_default()
                        .entry(name.into())
                        .or_default()
                        .push((f64::from(score), label));
                }
            }
            if let (Some(tuned), true) = (r.tuned, validation) {
                for (b, name) in strata {
                    scored
                        .entry(b.into())
                        .or_default()
                        .entry(name.into())
                        .or_default()
                        .push((f64::from(tuned), label));
                }
            }
        }
        if let (Some(reference), Some(bits)) = (&p.reference, &r.mask) {
            let [d, _, _] = reference.shape;
            let small = compute::protocol::unpack(bits, d * g.rows * g.cols)
                .ok_or("the worker's output was malformed")?;
            let predicted = upsample(&small, g.rows, g.cols, reference);
            let o = Overlap {
                dice: compute::metrics::dice(&predicted, reference),
                hausdorff: compute::metrics::hausdorff(&predicted, reference),
            };
            for (b, name) in strata {
                overlap
                    .entry(b.into())
                    .or_default()
                    .entry(name.into())
                    .or_default()
                    .push(o.clone());
            }
        }
    }
    let strata = match card.task {
        Task::Classifier => scored
            .into_iter()
            .map(|(b, m)| {
                (
                    b,
                    m.into_iter()
                        .map(|(n, v)| (n, stratum(&v, threshold)))
                        .collect(),
                )
            })
            .collect(),
        Task::Segmenter => overlap
            .into_iter()
            .map(|(b, m)| {
                (
                    b,
                    m.into_iter()
                        .map(|(n, v)| (n, overlap_stratum(&v)))
                        .collect(),
                )
            })
            .collect(),
    };
    let raw = compute::release::Raw {
        cohort_patients: cases.len() as u64,
        strata,
        per_patient: if action == "inference" {
            results
                .cases
                .iter()
                .filter_map(|r| Some((r.id, f64::from(r.score?))))
                .collect()
        } else {
            Vec::new()
        },
        weights: results.head.as_ref().map(|h| compute::release::Weights {
            values: h.parameters(),
            training_patients: training,
        }),
    };
    let approved = compute::release::Approved {
        outputs: req.submission.outputs.clone(),
        per_patient_recipient: req.submission.recipient.clone(),
        weights_release_approved: false,
    };
    let released = compute::release::check(&raw, &approved, &rules);
    let mut instances: Vec<&String> = cases.iter().flat_map(|c| &c.instances).collect();
    instances.sort();
    let snapshot = crate::dicomweb::sha256_hex(
        instances
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    );
    let doc = json!({
        "job": id,
        "request": request,
        "model": {"name": card.name, "version": card.version, "sha256": model.sha256},
        "cohort_snapshot": snapshot,
        "code_version": concat!("hbs ", env!("CARGO_PKG_VERSION")),
        "params": {"threshold": threshold},
        "outputs": released.outputs,
        "blocked": released.blocked,
    });
    let body = serde_json::to_vec(&doc).map_err(|_| "the result could not be written")?;
    let sig = crate::dicomweb::sign_bytes(&st.receipt_key, &body)
        .map_err(|_| "the result could not be signed")?;
    use base64::Engine as _;
    let result = json!({
        "document": doc,
        "signature": base64::engine::general_purpose::STANDARD.encode(sig),
        "signed": "ECDSA over SHA-256 of the document's compact JSON, by the gateway's TLS key",
    });
    // The registry keeps what was learnt and how the model fared.
    if let Some(head) = &results.head {
        let text = serde_json::to_vec(head).map_err(|_| "the head could not be written")?;
        let sha = crate::dicomweb::sha256_hex(&text);
        let target = params
            .get("vendor")
            .or(params.get("site"))
            .cloned()
            .unwrap_or(json!("all"));
        let lineage = json!({
            "base": model.sha256, "fine_tuned_from": model.sha256, "request": request, "job": id,
            "cohort": req.submission.cohort, "split": "fine-tuning", "on": target,
            "training_patients": (training + 2) / 5 * 5,
            "release": "weights stay in the enclave unless disclosure control and the board release them",
        });
        st.jobs
            .register_head(&sha, &card, &text, lineage, &released.outputs)
            .await
            .map_err(|_| "the fine-tuned model could not be registered")?;
        // Held back until the board releases them (POST /jobs/{id}/release).
        sqlx::query("INSERT INTO job_weights (job, head, training, approvals) VALUES ($1, $2, $3, '[]') ON CONFLICT (job) DO NOTHING")
            .bind(id)
            .bind(String::from_utf8_lossy(&text).into_owned())
            .bind(training as i64)
            .execute(&st.jobs.pool)
            .await
            .map_err(|_| "the fine-tuned model could not be registered")?;
    }
    st.jobs
        .add_evaluation(&model.sha256, json!({"job": id, "action": action, "cohort_snapshot": snapshot, "outputs": released.outputs}))
        .await
        .map_err(|_| "the registry could not be updated")?;
    let status = if released.outputs.as_object().is_some_and(|o| o.is_empty()) {
        "blocked"
    } else {
        "succeeded"
    };
    for b in &released.blocked {
        let ev = crate::record::event(
            &system_actor(),
            id,
            "job.output.blocked",
            &format!("job/{id}/{}", b.what),
            "deny",
            &b.rule,
            "held back by disclosure control",
        );
        if st.audit.append(ev).await.is_err() {
            return Err(
                "the audit log cannot record the job's blocked outputs; nothing is released".into(),
            );
        }
    }
    Ok((status, result))
}

/// A segmenter's overlap with the reference on one case.
#[derive(Clone)]
struct Overlap {
    dice: Option<f64>,
    hausdorff: Option<(f64, f64)>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = v.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

/// Mean Dice, mean Hausdorff and mean HD95 (mm) over the cases where each is defined.
fn overlap_stratum(v: &[Overlap]) -> compute::release::Stratum {
    let mut m = BTreeMap::new();
    for (k, val) in [
        ("dice", mean(v.iter().filter_map(|o| o.dice))),
        (
            "hausdorff",
            mean(v.iter().filter_map(|o| o.hausdorff.map(|h| h.0))),
        ),
        (
            "hd95",
            mean(v.iter().filter_map(|o| o.hausdorff.map(|h| h.1))),
        ),
    ] {
        if let Some(val) = val {
            m.insert(k.to_string(), val);
        }
    }
    compute::release::Stratum {
        patients: v.len() as u64,
        metrics: m,
        ..Default::default()
    }
}

/// A model-resolution mask (slices x rows x cols) on the reference's grid (nearest).
fn upsample(
    small: &[bool],
    rows: usize,
    cols: usize,
    reference: &compute::metrics::Mask,
) -> compute::metrics::Mask {
    let [d, h, w] = reference.shape;
    let mut on = Vec::with_capacity(d * h * w);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                on.push(small[(z * rows + y * rows / h) * cols + x * cols / w]);
            }
        }
    }
    compute::metrics::Mask {
        shape: reference.shape,
        spacing: reference.spacing,
        on,
    }
}

fn stratum(v: &[(f64, bool)], threshold: f64) -> compute::release::Stratum {
    use compute::metrics;
    let scores: Vec<f64> = v.iter().map(|x| x.0).collect();
    let labels: Vec<bool> = v.iter().map(|x| x.1).collect();
    let positives = labels.iter().filter(|l| **l).count() as u64;
    let c = metrics::Confusion::at(&scores, &labels, threshold);
    let mut m = BTreeMap::new();
    for (k, val) in [
        ("auc", metrics::auc(&scores, &labels)),
        ("sensitivity", c.sensitivity()),
        ("specificity", c.specificity()),
    ] {
        if let Some(val) = val {
            m.insert(k.to_string(), val);
        }
    }
    let calibration = match metrics::calibration(&scores, &labels, 10) {
        Some((bins, ece)) => {
            m.insert("ece".into(), ece);
            bins.iter()
                .map(|b| (b.from, b.to, b.n, b.predicted, b.observed))
                .collect()
        }
        None => Vec::new(),
    };
    compute::release::Stratum {
        patients: v.len() as u64,
        positives,
        negatives: v.len() as u64 - positives,
        metrics: m,
        calibration,
    }
}

/// The cases of a request's cohort: each patient's baseline study, the series of the
/// model's input sequence, decrypted, decoded, resampled; labels from the clinical
/// record (ISUP grade 2 or more), kept out of the worker.
async fn prepare(
    st: &AppState,
    req: &policy::store::RequestView,
    card: &Card,
) -> Result<Vec<Prepared>, String> {
    let input = card.input().map_err(|e| e.to_string())?;
    let g = card.geometry().map_err(|e| e.to_string())?;
    let want = match input.sequence.as_str() {
        "T2W" => Sequence::T2W,
        "DWI" => Sequence::DWI,
        _ => Sequence::ADC,
    };
    let catalog = st.vault.catalog();
    let cohort = req.submission.cohort.clone().unwrap_or_default();
    let f = crate::catalogue::filter(&cohort).map_err(|e| e.to_string())?;
    let patients = st
        .catalogue
        .patients(catalog)
        .await
        .map_err(|_| "the catalogue could not be read")?;
    let series = catalog
        .series()
        .await
        .map_err(|_| "the catalogue could not be read")?;
    let mut by_study: BTreeMap<&str, Vec<&vault::catalog::SeriesRow>> = BTreeMap::new();
    for s in &series {
        by_study.entry(s.study_uid.as_str()).or_default().push(s);
    }
    let mut out = Vec::new();
    for p in patients.iter().filter(|p| f.patient(p)) {
        let Some(study) = p
            .studies
            .iter()
            .filter(|s| f.study(s))
            .find(|s| s.baseline)
            .or_else(|| p.studies.iter().find(|s| f.study(s)))
        else {
            continue;
        };
        let Some(chosen) = by_study.get(study.uid.as_str()).and_then(|rows| {
            rows.iter()
                .find(|r| crate::catalogue::classify_row(r) == want)
        }) else {
            continue;
        };
        let seg_series = by_study.get(study.uid.as_str()).and_then(|rows| {
            rows.iter().find(|r| {
                crate::catalogue::classify_row(r) == Sequence::SEG
                    && r.acquisition.segments.iter().any(|s| s == "lesion")
            })
        });
        // A segmenter is evaluated where a reference segmentation exists.
        if card.task == Task::Segmenter && seg_series.is_none() {
            continue;
        }
        let rows = catalog
            .instances(Some(&p.pseudonym))
            .await
            .map_err(|_| "the catalogue could not be read")?;
        let mut slices = Vec::new();
        let mut uids = Vec::new();
        for r in rows.iter().filter(|r| r.series_uid == chosen.series_uid) {
            let bytes = st
                .vault
                .read_instance(r)
                .await
                .map_err(|_| "an instance could not be decrypted")?;
            if let Ok(s) = vault::image::slice(&bytes) {
                uids.push(r.sop_uid.clone());
                slices.push(s);
            }
        }
        if want == Sequence::DWI && input.b_value.as_deref() == Some("highest") {
            let top = slices
                .iter()
                .filter_map(|s| s.b_value)
                .fold(f64::NEG_INFINITY, f64::max);
            slices.retain(|s| s.b_value == Some(top));
        }
        if slices.is_empty() {
            continue;
        }
        slices.sort_by(|a, b| a.position.total_cmp(&b.position));
        let reference = match seg_series {
            Some(seg) if card.task == Task::Segmenter => {
                let mut frames = Vec::new();
                for r in rows.iter().filter(|r| r.series_uid == seg.series_uid) {
                    let bytes = st
                        .vault
                        .read_instance(r)
                        .await
                        .map_err(|_| "an instance could not be decrypted")?;
                    if let Ok(s) = vault::image::segmentation(&bytes) {
                        frames.extend(s.frames.into_iter().filter(|f| f.segment == "lesion"));
                    }
                }
                let (h, w) = (slices[0].rows, slices[0].cols);
                let mut on = vec![false; slices.len() * h * w];
                for f in &frames {
                    if let Some(k) = slices.iter().position(|s| s.sop_uid == f.source_uid) {
                        if f.on.len() == h * w && slices[k].rows == h && slices[k].cols == w {
                            for (i, v) in f.on.iter().enumerate() {
                                on[k * h * w + i] |= *v;
                            }
                        }
                    }
                }
                let thickness = if slices.len() > 1 {
                    (slices[slices.len() - 1].position - slices[0].position).abs()
                        / (slices.len() - 1) as f64
                } else {
                    1.0
                };
                Some(compute::metrics::Mask {
                    shape: [slices.len(), h, w],
                    spacing: [thickness, slices[0].spacing[0], slices[0].spacing[1]],
                    on,
                })
            }
            _ => None,
        };
        let mut values = Vec::with_capacity(slices.len() * g.rows * g.cols);
        for s in &slices {
            values.extend(resample(s, g.rows, g.cols, input.scale));
        }
        let label = st
            .vault
            .read_clinical(&p.pseudonym)
            .await
            .ok()
            .and_then(|recs| {
                recs.iter().find_map(|r| {
                    r.fields
                        .get("isup_grade")
                        .and_then(|v| v.trim().parse::<u32>().ok())
                })
            })
            .map(|isup| isup >= 2);
        out.push(Prepared {
            case: Case {
                id: out.len() as u32,
                label: None,
                shape: vec![slices.len(), g.rows, g.cols],
                values,
            },
            label,
            vendor: study.vendor.as_str().to_string(),
            site: p.site.clone(),
            instances: uids,
            reference,
            split: p.split,
        });
    }
    Ok(out)
}

fn answer(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// Records a refused job submission (the reason as the rule), then answers it.
async fn refuse(
    st: &AppState,
    p: &Principal,
    rid: &crate::record::RequestId,
    status: StatusCode,
    reason: &str,
) -> Response {
    refuse_step(st, p, rid, "job.submit", status, reason).await
}

async fn refuse_step(
    st: &AppState,
    p: &Principal,
    rid: &crate::record::RequestId,
    action: &str,
    status: StatusCode,
    reason: &str,
) -> Response {
    let ev = crate::record::event(
        &crate::record::actor(p),
        &rid.0,
        action,
        "jobs",
        "deny",
        reason,
        "refused, nothing queued",
    );
    if st.audit.append(ev).await.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this request; nothing was done",
        );
    }
    answer(status, reason)
}

/// `POST /jobs` {"request": ID, "params": {...}}: queues a job for the caller's approved
/// service request. Every outcome is recorded (`job.submit`).
pub async fn submit(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<crate::record::RequestId>,
    body: axum::body::Bytes,
) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            &st,
            &p,
            &rid,
            bad,
            "the body must be {\"request\": ID, \"params\": {...}}",
        )
        .await;
    };
    let Some(request) = v.get("request").and_then(Value::as_str) else {
        return refuse(
            &st,
            &p,
            &rid,
            bad,
            "request (the service request's ID) is required",
        )
        .await;
    };
    let params = v.get("params").cloned().unwrap_or(json!({}));
    if !params.is_object() || params.to_string().len() > 4096 {
        return refuse(
            &st,
            &p,
            &rid,
            bad,
            "params must be a JSON object under 4 KiB",
        )
        .await;
    }
    if params
        .get("threshold")
        .is_some_and(|t| !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)))
    {
        return refuse(
            &st,
            &p,
            &rid,
            bad,
            "params.threshold must be a number from 0 to 1",
        )
        .await;
    }
    let req = match st.policy.store().get(request).await {
        Ok(Some(r)) if r.requester == crate::governance::subject(&p) => r,
        Ok(_) => {
            return refuse(
                &st,
                &p,
                &rid,
                StatusCode::NOT_FOUND,
                "no such service request of yours",
            )
            .await
        }
        Err(_) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the requests cannot be read now",
            )
        }
    };
    if req.submission.kind != policy::workflow::Kind::Service {
        return refuse(&st, &p, &rid, bad, "jobs run for service requests only").await;
    }
    if !req.grant.as_ref().is_some_and(|g| g.in_force) {
        return refuse(
            &st,
            &p,
            &rid,
            StatusCode::FORBIDDEN,
            "the service request is not approved, or its grant is no longer in force",
        )
        .await;
    }
    let id = new_id();
    let t = now_ms();
    let r = sqlx::query(
        "INSERT INTO jobs (id, request, requester, status, reason, params, result, created, updated)
         VALUES ($1, $2, $3, 'queued', '', $4, '{}', $5, $5)",
    )
    .bind(&id)
    .bind(request)
    .bind(crate::governance::subject(&p))
    .bind(params.to_string())
    .bind(t)
    .execute(&st.jobs.pool)
    .await;
    if r.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job queue cannot be written now",
        );
    }
    let ev = crate::record::event(
        &crate::record::actor(&p),
        &rid.0,
        "job.submit",
        &format!("job/{id}"),
        "allow",
        "the caller's service request is approved and in force",
        "queued",
    );
    if st.audit.append(ev).await.is_err() {
        // Not recorded: not queued either.
        let _ = sqlx::query("DELETE FROM jobs WHERE id = $1 AND status = 'queued'")
            .bind(&id)
            .execute(&st.jobs.pool)
            .await;
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record the job; nothing was queued",
        );
    }
    st.jobs.wake.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(json!({"job": id, "status": "queued"})),
    )
        .into_response()
}

/// `POST /jobs/{id}/release` (ethics board): approves releasing a fine-tuning job's
/// trained weights. At the quorum (2 distinct members) the weights pass disclosure
/// control again, now with the board's approval (they still leave only if small
/// enough: a third of the training patients, 10 residual degrees of freedom), and the
/// job's signed result is written anew with them.
pub async fn release(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<crate::record::RequestId>,
    Path(id): Path<String>,
) -> Response {
    let who = crate::governance::subject(&p);
    let row = sqlx::query("SELECT head, training, approvals FROM job_weights WHERE job = $1")
        .bind(&id)
        .fetch_optional(&st.jobs.pool)
        .await;
    let Ok(row) = row else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job queue cannot be read now",
        );
    };
    let Some(row) = row else {
        return refuse_step(
            &st,
            &p,
            &rid,
            "job.release",
            StatusCode::NOT_FOUND,
            "no trained weights are held back for this job",
        )
        .await;
    };
    let mut approvals: Vec<String> =
        serde_json::from_str(&row.get::<String, _>(2)).unwrap_or_default();
    if approvals.contains(&who) {
        return refuse_step(
            &st,
            &p,
            &rid,
            "job.release",
            StatusCode::CONFLICT,
            "this board member has already approved this release",
        )
        .await;
    }
    let job = sqlx::query("SELECT request, result, requester FROM jobs WHERE id = $1")
        .bind(&id)
        .fetch_optional(&st.jobs.pool)
        .await;
    let Ok(Some(job)) = job else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job queue cannot be read now",
        );
    };
    if job.get::<String, _>(2) == who {
        return refuse_step(
            &st,
            &p,
            &rid,
            "job.release",
            StatusCode::CONFLICT,
            "a board member cannot release weights of their own job",
        )
        .await;
    }
    approvals.push(who);
    let need = policy::store::DEFAULT_QUORUM as usize;
    let mut released = false;
    let mut result: Value = serde_json::from_str(&job.get::<String, _>(1)).unwrap_or(json!({}));
    if approvals.len() >= need {
        let head: Option<compute::head::Head> = serde_json::from_str(&row.get::<String, _>(0)).ok();
        let req = st
            .policy
            .store()
            .get(&job.get::<String, _>(0))
            .await
            .ok()
            .flatten();
        if let (Some(head), Some(req)) = (head, req) {
            let raw = compute::release::Raw {
                cohort_patients: row.get::<i64, _>(1) as u64,
                weights: Some(compute::release::Weights {
                    values: head.parameters(),
                    training_patients: row.get::<i64, _>(1) as u64,
                }),
                ..Default::default()
            };
            let approved = compute::release::Approved {
                outputs: req.submission.outputs.clone(),
                per_patient_recipient: None,
                weights_release_approved: true,
            };
            let r = compute::release::check(&raw, &approved, &compute::release::Rules::default());
            let doc = &mut result["document"];
            if let Some(w) = r.outputs.get("weights") {
                doc["outputs"]["weights"] = w.clone();
                if let Some(b) = doc["blocked"].as_array_mut() {
                    b.retain(|e| e["what"] != "weights");
                }
                released = true;
            } else if let Some(b) = doc["blocked"].as_array_mut() {
                b.retain(|e| e["what"] != "weights");
                b.extend(
                    r.blocked
                        .iter()
                        .filter_map(|x| serde_json::to_value(x).ok()),
                );
            }
            let body = serde_json::to_vec(&result["document"]).unwrap_or_default();
            match crate::dicomweb::sign_bytes(&st.receipt_key, &body) {
                Ok(sig) => {
                    use base64::Engine as _;
                    result["signature"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(sig));
                }
                Err(_) => {
                    return answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the result could not be signed",
                    )
                }
            }
        }
    }
    let outcome = if released {
        "quorum reached: the weights are released"
    } else if approvals.len() >= need {
        "quorum reached: the weights stay held back by disclosure control"
    } else {
        "approval counted"
    };
    let ev = crate::record::event(
        &crate::record::actor(&p),
        &rid.0,
        "job.release",
        &format!("job/{id}/weights"),
        "allow",
        "an ethics board member approves releasing trained weights",
        outcome,
    );
    if st.audit.append(ev).await.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this request; nothing was done",
        );
    }
    let mut tx = match st.jobs.pool.begin().await {
        Ok(t) => t,
        Err(_) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the job queue cannot be written now",
            )
        }
    };
    let ok = sqlx::query("UPDATE job_weights SET approvals = $1 WHERE job = $2")
        .bind(json!(approvals).to_string())
        .bind(&id)
        .execute(&mut *tx)
        .await
        .is_ok()
        && sqlx::query("UPDATE jobs SET result = $1, updated = $2 WHERE id = $3")
            .bind(result.to_string())
            .bind(now_ms())
            .bind(&id)
            .execute(&mut *tx)
            .await
            .is_ok();
    if !ok || tx.commit().await.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job queue cannot be written now",
        );
    }
    Json(json!({"job": id, "approvals": approvals.len(), "needed": need, "released": released}))
        .into_response()
}

/// `hbs job release`.
pub async fn release_cmd(c: &crate::client::ClientArgs, id: &str) -> Result<()> {
    let a = crate::govern_cli::post(
        c,
        &format!("/jobs/{}/release", crate::client::query_escape(id)),
        &json!({}),
    )
    .await?;
    let Some(v) = crate::search::json_answer(c, &a)? else {
        return Ok(());
    };
    println!(
        "{} of {} approvals; released: {}",
        v["approvals"], v["needed"], v["released"]
    );
    Ok(())
}

/// `GET /jobs/{id}`: its status, the reason, and the released (signed) outputs; its
/// requester, auditors and operators only.
pub async fn show(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let row =
        sqlx::query("SELECT requester, status, reason, result, request FROM jobs WHERE id = $1")
            .bind(&id)
            .fetch_optional(&st.jobs.pool)
            .await;
    match row {
        Ok(Some(r))
            if p.role != Role::Researcher
                || r.get::<String, _>(0) == crate::governance::subject(&p) =>
        {
            let result: Value = serde_json::from_str(&r.get::<String, _>(3)).unwrap_or(json!({}));
            Json(json!({
                "job": id,
                "request": r.get::<String, _>(4),
                "status": r.get::<String, _>(1),
                "reason": r.get::<String, _>(2),
                "result": result,
            }))
            .into_response()
        }
        Ok(_) => answer(StatusCode::NOT_FOUND, "no such job of yours"),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job queue cannot be read now",
        ),
    }
}

/// Largest model accepted by `POST /models`.
const MAX_MODEL: usize = 64 << 20;

/// `POST /models` {"card": {...}, "onnx": base64}: a researcher brings a model to the
/// registry. Only its card is read here: the ONNX file is parsed only inside a sandboxed
/// worker, by a job whose approval names its SHA-256.
pub async fn register(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<crate::record::RequestId>,
    body: axum::body::Bytes,
) -> Response {
    let step = "model.register";
    let bad = StatusCode::BAD_REQUEST;
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return refuse_step(
            &st,
            &p,
            &rid,
            step,
            bad,
            "the body must be {\"card\": {...}, \"onnx\": base64}",
        )
        .await;
    };
    use base64::Engine as _;
    let Some(onnx) = v["onnx"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    else {
        return refuse_step(
            &st,
            &p,
            &rid,
            step,
            bad,
            "onnx must be the model file in base64",
        )
        .await;
    };
    if onnx.is_empty() || onnx.len() > MAX_MODEL {
        return refuse_step(
            &st,
            &p,
            &rid,
            step,
            bad,
            "the model must be 1 byte to 64 MiB",
        )
        .await;
    }
    let card = serde_json::to_vec(&v["card"]).unwrap_or_default();
    if let Err(e) = Card::parse(&card) {
        return refuse_step(&st, &p, &rid, step, bad, &e).await;
    }
    let lineage = json!({"base": null, "origin": format!("registered by {}", crate::governance::subject(&p))});
    let sha = crate::dicomweb::sha256_hex(&onnx);
    let ev = crate::record::event(
        &crate::record::actor(&p),
        &rid.0,
        step,
        &format!("model/{sha}"),
        "allow",
        "researchers bring models to the registry; they run only under an approval naming their hash",
        "registered",
    );
    if st.audit.append(ev).await.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this request; nothing was done",
        );
    }
    match st.jobs.register(&onnx, &card, lineage).await {
        Ok(sha) => (StatusCode::CREATED, Json(json!({"sha256": sha}))).into_response(),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the registry cannot be written now",
        ),
    }
}

/// `hbs models --add FILE --card CARD`.
pub async fn register_cmd(
    c: &crate::client::ClientArgs,
    onnx: &std::path::Path,
    card: &std::path::Path,
) -> Result<()> {
    use base64::Engine as _;
    let bytes = std::fs::read(onnx).with_context(|| format!("cannot read {}", onnx.display()))?;
    let card: Value = serde_json::from_slice(&std::fs::read(card)?)
        .with_context(|| format!("{} is not JSON", card.display()))?;
    let a = crate::govern_cli::post(
        c,
        "/models",
        &json!({"card": card, "onnx": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    )
    .await?;
    if a.status != 201 {
        return Err(crate::search::refused(&a));
    }
    let v: Value = serde_json::from_slice(&a.body)?;
    if c.json {
        println!("{v}");
    } else {
        println!("{}", v["sha256"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// `GET /models`: the registry.
pub async fn models(State(st): State<AppState>) -> Response {
    match st.jobs.models().await {
        Ok(m) => Json(json!({"models": m})).into_response(),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the registry cannot be read now",
        ),
    }
}

/// `hbs job submit`: prints the job ID (or the answer, with `--json`).
pub async fn submit_cmd(
    c: &crate::client::ClientArgs,
    request: &str,
    params: Option<&std::path::Path>,
) -> Result<()> {
    let params: Value = match params {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?,
        None => json!({}),
    };
    let a =
        crate::govern_cli::post(c, "/jobs", &json!({"request": request, "params": params})).await?;
    if a.status != 202 {
        return Err(crate::search::refused(&a));
    }
    let v: Value = serde_json::from_slice(&a.body)?;
    if c.json {
        println!("{v}");
    } else {
        println!("{}", v["job"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// `hbs job show`.
pub async fn show_cmd(c: &crate::client::ClientArgs, id: &str) -> Result<()> {
    let a = c
        .get(&format!("/jobs/{}", crate::client::query_escape(id)))
        .await?;
    let Some(v) = crate::search::json_answer(c, &a)? else {
        return Ok(());
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `hbs models`.
pub async fn models_cmd(c: &crate::client::ClientArgs) -> Result<()> {
    let a = c.get("/models").await?;
    let Some(v) = crate::search::json_answer(c, &a)? else {
        return Ok(());
    };
    for m in v["models"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<8} {}  {}",
            m["name"].as_str().unwrap_or("?"),
            m["version"].as_str().unwrap_or("?"),
            m["sha256"].as_str().unwrap_or("?"),
            m["scenario"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
