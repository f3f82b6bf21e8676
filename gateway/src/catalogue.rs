//! Cohort discovery: `POST /cohort/count` and `hbs cohort count`. The counting and its
//! disclosure control are the `catalogue` crate's; this wires it to the vault's series
//! summary, the configuration and HTTP.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use catalogue::classify::{Sequence, SeriesFacts};
use catalogue::count::{self, Answer, By, Filter, PatientSummary, Studies, Vendor};
use catalogue::disclosure::{CellKeys, Rules, Shown};
use catalogue::kpi::{self, Kpis};
use catalogue::split::{Origin, Split, SplitKey};
use catalogue::summary::{self, Project, SeriesInput};
use policy::model::Cohort;
use serde_json::{json, Value};

use crate::client::ClientArgs;
use crate::routes::AppState;

/// The catalogue's settings in the configuration file (`[catalogue]`).
#[derive(serde::Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// The cut-off (`YYYY-MM-DD`): patients first received before it are retrospective,
    /// the others prospective. Without one every patient is retrospective.
    pub cutoff: Option<String>,
    /// Each site's ISO 3166 country code (`SITE_A = "GR"`).
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
}

/// What the gateway keeps to answer counts: the patient summaries of the catalogue
/// version it last read, rebuilt when the version moves (an ingest or a withdrawal, by
/// this process or any other), so a count costs one version read and a walk over the
/// patients, not a read of every series.
pub struct Catalogue {
    project: Project,
    rules: Rules,
    split: SplitKey,
    cells: CellKeys,
    cache: tokio::sync::Mutex<Option<(i64, std::sync::Arc<Vec<PatientSummary>>)>>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
fn day(s: &str) -> Result<i64> {
    let d = time::Date::parse(
        s,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("catalogue cutoff {s:?} is not a YYYY-MM-DD date"))?;
    Ok(i64::from(
        d.to_julian_day()
            - time::Date::from_calendar_date(1970, time::Month::January, 1)?.to_julian_day(),
    ))
}

impl Catalogue {
    /// The catalogue over the vault's keys (the split and count keys are derived from the
    /// broker secret) and the configuration.
    pub fn new(keys: &vault::pseudonym::Pseudonymizer, cfg: &CatalogueConfig) -> Result<Self> {
        let cutoff = match &cfg.cutoff {
            Some(c) => day(c)?,
            None => i64::MAX,
        };
        for (site, country) in &cfg.countries {
            vault::pseudonym::SiteId::new(site)
                .map_err(|e| anyhow::anyhow!("catalogue countries: {e}"))?;
            anyhow::ensure!(
                country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase()),
                "catalogue countries: the country of {site} must be an ISO 3166 alpha-2 code such as GR"
            );
        }
        Ok(Catalogue {
            project: Project {
                cutoff,
                countries: cfg.countries.clone(),
            },
            rules: Rules::default(),
            split: SplitKey::new(&keys.derived_key("catalogue/split")),
            cells: CellKeys::new(&keys.derived_key("catalogue/cell-key")),
            cache: Default::default(),
        })
    }

    /// The patient summaries of the catalogue as it is now.
    pub async fn patients(
        &self,
        catalog: &vault::catalog::Catalog,
    ) -> Result<std::sync::Arc<Vec<PatientSummary>>> {
        let version = catalog.version().await?;
        // Held while rebuilding, so concurrent counts wait for one rebuild.
        let mut cache = self.cache.lock().await;
        if let Some((v, p)) = cache.as_ref() {
            if *v == version {
                return Ok(p.clone());
            }
        }
        let rows = catalog.series().await?;
        let clinical = catalog.with_clinical().await?;
        let inputs: Vec<SeriesInput> = rows.into_iter().map(series_input).collect();
        let p = std::sync::Arc::new(summary::summarise(
            &inputs,
            &clinical,
            &self.project,
            &self.split,
            &self.cells,
        ));
        *cache = Some((version, p.clone()));
        Ok(p)
    }

    /// Counts the cohort over what the catalogue holds now.
    pub async fn count(
        &self,
        catalog: &vault::catalog::Catalog,
        f: &Filter,
        by: &[By],
    ) -> Result<Answer> {
        let patients = self.patients(catalog).await?;
        Ok(count::count(&patients, f, by, &self.cells, &self.rules))
    }
}

fn values(s: &str) -> Vec<String> {
    s.split('\\')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The sequence type of a catalogue series row.
pub fn classify_row(r: &vault::catalog::SeriesRow) -> catalogue::classify::Sequence {
    catalogue::classify::classify(&series_input(r.clone()).facts).sequence
}

fn series_input(r: vault::catalog::SeriesRow) -> SeriesInput {
    let a = r.acquisition;
    SeriesInput {
        facts: SeriesFacts {
            modality: r.modality,
            sop_class: r.sop_class,
            manufacturer: r.manufacturer.clone(),
            image_type: values(&a.image_type),
            scanning_sequence: values(&a.scanning_sequence),
            echo_time_ms: a.echo_time_ms,
            b_values: r.b_values,
            temporal_positions: (r.temporal_positions > 0).then_some(r.temporal_positions),
            description: r.series_description,
        },
        pseudonym: r.pseudonym,
        site: r.site,
        study_uid: r.study_uid,
        study_date: r.study_date,
        manufacturer: r.manufacturer,
        instances: u64::try_from(r.instances).unwrap_or(0),
        field_strength_t: a.field_strength_t,
        model: a.model,
        segments: a.segments,
        first_received_ms: r.first_received.saturating_mul(1000),
    }
}

/// The catalogue's filter for a cohort definition (checked by `Cohort::check` first).
pub fn filter(c: &Cohort) -> Result<Filter, String> {
    c.check()?;
    let set = |l: &Option<Vec<String>>| l.as_ref().map(|v| v.iter().cloned().collect());
    let vendor = |v: &str| match v {
        "siemens" => Ok(Vendor::Siemens),
        "ge" => Ok(Vendor::Ge),
        "philips" => Ok(Vendor::Philips),
        _ => Err("cohort field vendors: must be one of siemens, ge, philips".to_string()),
    };
    let sequence = |s: &str| match s {
        "T2W" => Ok(Sequence::T2W),
        "DWI" => Ok(Sequence::DWI),
        "ADC" => Ok(Sequence::ADC),
        "DCE" => Ok(Sequence::DCE),
        "SEG" => Ok(Sequence::SEG),
        _ => Err("cohort field sequences: must be one of T2W, DWI, ADC, DCE, SEG".to_string()),
    };
    Ok(Filter {
        sites: set(&c.sites),
        countries: set(&c.countries),
        vendors: c
            .vendors
            .as_ref()
            .map(|v| v.iter().map(|x| vendor(x)).collect::<Result<_, _>>())
            .transpose()?,
        sequences: c
            .sequences
            .as_ref()
            .map(|v| v.iter().map(|x| sequence(x)).collect::<Result<_, _>>())
            .transpose()?,
        studies: match c.studies.as_deref() {
            Some("baseline") => Studies::Baseline,
            Some("follow-up") => Studies::FollowUp,
            _ => Studies::All,
        },
        origin: match c.origin.as_deref() {
            Some("retrospective") => Some(Origin::Retrospective),
            Some("prospective") => Some(Origin::Prospective),
            _ => None,
        },
        split: match c.split.as_deref() {
            Some("fine-tuning") => Some(Split::FineTuning),
            Some("external-validation") => Some(Split::ExternalValidation),
            _ => None,
        },
        annotated: c.annotated,
    })
}

/// The body of `POST /cohort/count`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CountBody {
    #[serde(default)]
    cohort: Option<Value>,
    #[serde(default)]
    by: Vec<String>,
}

fn bad(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

/// Parses a count request: the cohort (a cohort definition) and the breakdown.
fn parse(body: &[u8]) -> Result<(Filter, Vec<By>), String> {
    // No body: everything, no breakdown.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let b: CountBody =
        serde_json::from_slice(body).map_err(|e| policy::model::json_error("count request", &e))?;
    let cohort = match b.cohort {
        None => Cohort::default(),
        Some(v) => Cohort::parse(&v.to_string())?,
    };
    let mut by = Vec::new();
    for d in &b.by {
        let d = By::parse(d)?;
        if by.contains(&d) {
            return Err("a breakdown names each dimension once".into());
        }
        by.push(d);
    }
    Ok((filter(&cohort)?, by))
}

/// `POST /cohort/count`: the protected counts of a cohort, optionally broken down.
pub async fn count(State(st): State<AppState>, body: axum::body::Bytes) -> Response {
    let (f, by) = match parse(&body) {
        Ok(x) => x,
        Err(e) => return bad(&e),
    };
    match st.catalogue.count(st.vault.catalog(), &f, &by).await {
        Ok(a) => Json(answer_json(&a)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cohort count failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "the catalogue cannot be read now"})),
            )
                .into_response()
        }
    }
}

/// The answer as JSON (figures are numbers or `"suppressed"`), the rules with a note.
fn answer_json(a: &Answer) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    v["rules"]["note"] = json!("counts under the threshold are suppressed (zero included); the others are perturbed by a cell key (the same patients always give the same answer) and rounded; cells need not add up to the total");
    v
}

/// `hbs cohort count`.
pub async fn count_cmd(c: &ClientArgs, cohort: Option<&Path>, by: &[String]) -> Result<()> {
    let cohort: Value = match cohort {
        None => json!({}),
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the cohort file {}", f.display()))?;
            let parsed =
                Cohort::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            serde_json::to_value(parsed)?
        }
    };
    let body = json!({"cohort": cohort, "by": by});
    let a = crate::govern_cli::post(c, "/cohort/count", &body).await?;
    let Some(v) = crate::search::json_answer(c, &a)? else {
        return Ok(());
    };
    let cell = |x: &Value| match x {
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap_or("?").to_string(),
    };
    let t = &v["total"];
    println!(
        "cohort: {} patients, {} studies, {} series",
        cell(&t["patients"]),
        cell(&t["studies"]),
        cell(&t["series"])
    );
    for r in v["by"].as_array().into_iter().flatten() {
        let name: Vec<String> = r["cell"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or("?")))
            .collect();
        println!(
            "  {}: {} patients, {} studies, {} series",
            name.join(" "),
            cell(&r["patients"]),
            cell(&r["studies"]),
            cell(&r["series"])
        );
    }
    println!("{}", v["rules"]["note"].as_str().unwrap_or(""));
    Ok(())
}

impl Catalogue {
    /// The repository's indicators now, with the registry's models by clinical scenario.
    pub async fn kpis(
        &self,
        catalog: &vault::catalog::Catalog,
        jobs: &crate::jobs::Jobs,
    ) -> Result<Kpis> {
        let patients = self.patients(catalog).await?;
        let mut models = kpi::Models::new();
        for m in jobs.models().await? {
            if let Some(s) = m["scenario"].as_str() {
                *models.entry(s.to_string()).or_default() += 1;
            }
        }
        Ok(kpi::kpis(&patients, &models, &self.cells, &self.rules))
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "the catalogue cannot be read now"})),
    )
        .into_response()
}

/// `GET /kpi`: the indicators as JSON.
pub async fn kpi_json(State(st): State<AppState>) -> Response {
    match st.catalogue.kpis(st.vault.catalog(), &st.jobs).await {
        Ok(k) => Json(k).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "kpi failed");
            unavailable()
        }
    }
}

/// `GET /kpi/page`: the same as a page with charts (inline SVG and CSS, nothing fetched
/// from anywhere).
pub async fn kpi_page(State(st): State<AppState>) -> Response {
    match st.catalogue.kpis(st.vault.catalog(), &st.jobs).await {
        Ok(k) => (
            [
                ("content-type", "text/html; charset=utf-8"),
                (
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
            ],
            page(&k),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "kpi page failed");
            unavailable()
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A figure as text (the same text the JSON carries).
fn figure(v: &kpi::Value) -> (String, Option<f64>) {
    match v {
        kpi::Value::Count(Shown::Count(n)) | kpi::Value::Plain(n) => {
            (n.to_string(), Some(*n as f64))
        }
        kpi::Value::Count(Shown::Suppressed) => ("suppressed".into(), None),
        kpi::Value::Percent(Some(p)) => (format!("{p}"), Some(*p)),
        kpi::Value::Percent(None) => ("suppressed".into(), None),
    }
}

/// One horizontal bar, `frac` of the width (clamped), labelled.
fn bar(class: &str, frac: f64, label: &str) -> String {
    let w = (frac.clamp(0.0, 1.0) * 400.0).round();
    format!(
        r#"<svg class="chart" width="420" height="22" role="img" aria-label="{label}"><rect class="track" x="0" y="3" width="400" height="16"/><rect class="bar {class}" x="0" y="3" width="{w}" height="16"/></svg>"#,
        label = esc(label)
    )
}

/// The page: one row per indicator (figure, target, a bar of progress towards it), then
/// patients by vendor and by site.
fn page(k: &Kpis) -> String {
    let mut rows = String::new();
    for i in &k.indicators {
        let (text, value) = figure(&i.value);
        let chart = match (value, i.target) {
            (Some(v), Some(t)) if t > 0.0 => bar(
                "progress",
                v / t,
                &format!("{} towards {}", i.label, i.target_text),
            ),
            _ => String::new(),
        };
        rows.push_str(&format!(
            r#"<tr><th>{}</th><td class="figure" data-key="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(i.label),
            i.key,
            esc(&text),
            esc(i.target_text),
            chart
        ));
    }
    let breakdown = |title: &str, key: &str, cells: Vec<(String, Shown)>| {
        let max = cells
            .iter()
            .filter_map(|(_, s)| match s {
                Shown::Count(n) => Some(*n),
                Shown::Suppressed => None,
            })
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let mut out = format!("<h2>{}</h2><table>", esc(title));
        for (name, s) in cells {
            let (text, chart) = match s {
                Shown::Count(n) => (
                    n.to_string(),
                    bar(key, n as f64 / max, &format!("{name}: {n}")),
                ),
                Shown::Suppressed => ("suppressed".to_string(), String::new()),
            };
            out.push_str(&format!(
                r#"<tr><th>{}</th><td class="figure" data-key="{key}:{}">{}</td><td>{chart}</td></tr>"#,
                esc(&name),
                esc(&name),
                esc(&text)
            ));
        }
        out.push_str("</table>");
        out
    };
    let vendors = breakdown(
        "Patients by vendor",
        "vendor",
        k.vendors.iter().map(|(v, s)| (v.to_string(), *s)).collect(),
    );
    let sites = breakdown(
        "Patients by site",
        "site",
        k.sites.iter().map(|(v, s)| (v.clone(), *s)).collect(),
    );
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ProstateNET: key performance indicators</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ text-align: left; padding: 4px 12px; border-bottom: 1px solid #ddd; }}
td.figure {{ text-align: right; font-variant-numeric: tabular-nums; }}
rect.track {{ fill: #eee; }}
rect.bar {{ fill: #2b6cb0; }}
rect.bar.vendor {{ fill: #2f855a; }}
rect.bar.site {{ fill: #b7791f; }}
p.note {{ color: #555; max-width: 50em; }}
</style></head><body>
<h1>ProstateNET: key performance indicators</h1>
<p class="note">Counts of patients, images and studies pass the catalogue's disclosure rules: under {} they are suppressed, the others are perturbed by a cell key and rounded to {}. Bars show progress towards each target.</p>
<table><tr><th>Indicator</th><th>Now</th><th>Target</th><th>Progress</th></tr>{rows}</table>
{vendors}{sites}
</body></html>"#,
        k.rules.threshold, k.rules.round_to
    )
}

/// `hbs kpi`.
pub async fn kpi_cmd(c: &ClientArgs) -> Result<()> {
    let a = c.get("/kpi").await?;
    let Some(v) = crate::search::json_answer(c, &a)? else {
        return Ok(());
    };
    for i in v["indicators"].as_array().into_iter().flatten() {
        let value = match &i["value"] {
            Value::Null => "suppressed".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!(
            "{:<34} {:>12}   target: {}",
            i["label"].as_str().unwrap_or("?"),
            value,
            i["target_text"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
