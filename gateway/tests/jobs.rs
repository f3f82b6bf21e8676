//! A researcher's approved service request runs in the compute enclave: the classifier
//! hbs ships is evaluated on a synthetic cohort whose right answer is known (the lesion
//! shows as much as the ISUP grade says, and the model finds it), and only what passes
//! disclosure control comes back, signed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn hbs(args: &[&str], data: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("HBS_DATABASE_URL")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_approved_classifier_runs_sandboxed_and_only_checked_outputs_come_back() {
    let d = tempfile::tempdir().unwrap();
    let (data, corpus) = (d.path().join("data"), d.path().join("corpus"));
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args([
            "synth",
            "--sites",
            "1",
            "--slices",
            "9",
            "--patients",
            "80",
            "--out",
        ])
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let clinical = corpus.join("SITE_A/clinical.csv");
    hbs(&["init"], &data);
    let (corpus_s, clinical_s) = (corpus.to_str().unwrap(), clinical.to_str().unwrap());
    hbs(
        &[
            "ingest",
            "--site",
            "SITE_A",
            "--in",
            corpus_s,
            "--clinical",
            clinical_s,
        ],
        &data,
    );
    // The known answer: clinically significant cancer is ISUP grade 2 or more.
    let csv = std::fs::read_to_string(&clinical).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "isup_grade").unwrap();
    let grades: Vec<u32> = lines
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    assert_eq!(grades.len(), 80);
    let positives = grades.iter().filter(|g| **g >= 2).count();
    assert!(positives >= 10 && 80 - positives >= 10, "{positives}");

    // First a gateway that only queues (no workers): the job waits, and survives a
    // restart.
    let s = start_env(&data, &[], &[("HBS_JOB_WORKERS", "0")]);
    let dev = data.join("dev-certs");
    let (researcher, board1) = (dev.join("researcher"), dev.join("ethics-board"));
    let board2 = d.path().join("board2");
    issue(&data, "ethics-board", "member2", None, &board2);

    // The registry lists the shipped models by hash.
    let models = ok_json(&hbs_as(&s, &researcher, &["models", "--json"]));
    let model_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../compute/models/cspca-dwi-classifier.onnx");
    let sha = sha256_file(&model_file);
    assert!(
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["sha256"] == sha.as_str() && m["card"]["task"] == "classifier"),
        "{models}"
    );

    let request = service_request(
        &s,
        d.path(),
        &researcher,
        &model_file,
        "counts,auc,sensitivity,specificity,calibration",
        &[],
    );

    // Not approved yet: no job.
    let o = hbs_as(&s, &researcher, &["job", "submit", "--request", &request]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"));
    approve(&s, &[&board1, &board2], &request);

    let v = ok_json(&hbs_as(
        &s,
        &researcher,
        &["job", "submit", "--request", &request, "--json"],
    ));
    let job = v["job"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let shown = ok_json(&hbs_as(&s, &researcher, &["job", "show", &job, "--json"]));
    assert_eq!(shown["status"], "queued", "{shown}");
    drop(s);
    let s = start(&data);
    let shown = finished(&s, &researcher, &job);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    let doc = &shown["result"]["document"];
    assert_eq!(doc["model"]["sha256"], sha.as_str());
    assert_eq!(doc["cohort_snapshot"].as_str().unwrap().len(), 64);
    assert!(shown["result"]["signature"].as_str().unwrap().len() > 40);
    let all = &doc["outputs"]["strata"]["all"]["all"];
    // The model finds every visible lesion: a perfect separation, as the grades say.
    assert_eq!(all["auc"], 1.0, "{doc}");
    assert_eq!(all["sensitivity"], 1.0, "{doc}");
    assert_eq!(all["specificity"], 1.0, "{doc}");
    assert_eq!(all["patients"], 80);
    let round5 = |n: usize| (n + 2) / 5 * 5;
    assert_eq!(all["positives"], round5(positives) as u64, "{doc}");
    // Per vendor, about 13 patients each: too few positives or negatives somewhere,
    // so those metrics are held back with the rule, and audited.
    let blocked = doc["blocked"].as_array().unwrap();
    assert!(
        blocked
            .iter()
            .any(|b| b["what"].as_str().unwrap().starts_with("vendor/")
                && b["rule"].as_str().unwrap().contains("fewer than 10")),
        "{doc}"
    );
    // No per-patient value anywhere.
    assert!(doc["outputs"].get("per_patient").is_none());

    // Another researcher does not see the job; the auditor does.
    let eve = d.path().join("eve");
    issue(&data, "researcher", "eve", None, &eve);
    let o = hbs_as(&s, &eve, &["job", "show", &job]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"));
    let v = ok_json(&hbs_as(
        &s,
        &dev.join("auditor"),
        &["job", "show", &job, "--json"],
    ));
    assert_eq!(v["status"], "succeeded");

    // A researcher brings a model of their own; this one allocates without bound. Its
    // job fails with the reason, contained, and the gateway keeps serving.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (hostile, hostile_card) = (
        fixtures.join("hostile-alloc.onnx"),
        fixtures.join("hostile-alloc.json"),
    );
    let v = ok_json(&hbs_as(
        &s,
        &researcher,
        &[
            "models",
            "--add",
            hostile.to_str().unwrap(),
            "--card",
            hostile_card.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(v["sha256"], sha256_file(&hostile).as_str());
    let request = approved_service_request(
        &s,
        d.path(),
        &[&researcher, &board1, &board2],
        &hostile,
        "counts,auc",
    );
    let v = ok_json(&hbs_as(
        &s,
        &researcher,
        &["job", "submit", "--request", &request, "--json"],
    ));
    let shown = finished(&s, &researcher, v["job"].as_str().unwrap());
    assert_eq!(shown["status"], "failed", "{shown}");
    let reason = shown["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory")
            || reason.contains("signal")
            || reason.contains("model failed")
            || reason.contains("crashed"),
        "{reason}"
    );
    assert_eq!(curl(&s, "/healthz", Some(&researcher)).0, Some(200));

    // The segmenters, 2D and 3D, against the reference segmentations: the mean Dice
    // the enclave releases is the one onnxruntime gives on the original files.
    for (name, kind) in [("lesion-unet-2d", "2d"), ("lesion-unet-3d", "3d")] {
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../compute/models/{name}.onnx"));
        let request = approved_service_request(
            &s,
            d.path(),
            &[&researcher, &board1, &board2],
            &model,
            "counts,dice,hausdorff",
        );
        let v = ok_json(&hbs_as(
            &s,
            &researcher,
            &["job", "submit", "--request", &request, "--json"],
        ));
        let shown = finished(&s, &researcher, v["job"].as_str().unwrap());
        assert_eq!(shown["status"], "succeeded", "{shown}");
        let all = &shown["result"]["document"]["outputs"]["strata"]["all"]["all"];
        let Some(py) = python() else { continue };
        let o = Command::new(py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/seg_reference.py"))
            .arg(&corpus)
            .arg(&model)
            .arg(kind)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reference: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(reference["n"].as_u64().unwrap() >= 10, "{reference}");
        assert_eq!(
            all["patients"],
            round5(reference["n"].as_u64().unwrap() as usize) as u64
        );
        let (ours, theirs) = (
            all["dice"].as_f64().unwrap(),
            reference["dice"].as_f64().unwrap(),
        );
        assert!(
            (ours - theirs).abs() < 0.005,
            "enclave {ours}, onnxruntime {theirs}"
        );
        assert!(all["hausdorff"].as_f64().unwrap() >= all["hd95"].as_f64().unwrap());
    }
    // The gateway kept serving throughout.
    assert_eq!(curl(&s, "/healthz", Some(&researcher)).0, Some(200));

    // Transfer learning: with every patient prospective (a cut-off in the past), a head
    // is trained on the Siemens patients of the fine-tuning split and judged, beside
    // the base model, on the external-validation split.
    drop(s);
    let cfg = d.path().join("hbs.toml");
    std::fs::write(&cfg, "[catalogue]\ncutoff = \"2000-01-01\"\n").unwrap();
    let s = start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let request = service_request(
        &s,
        d.path(),
        &researcher,
        &model_file,
        "counts,auc,sensitivity,specificity,weights",
        &["--action", "fine-tuning"],
    );
    approve(&s, &[&board1, &board2], &request);
    let params = d.path().join("params.json");
    std::fs::write(&params, r#"{"vendor": "siemens"}"#).unwrap();
    let v = ok_json(&hbs_as(
        &s,
        &researcher,
        &[
            "job",
            "submit",
            "--request",
            &request,
            "--params",
            params.to_str().unwrap(),
            "--json",
        ],
    ));
    let shown = finished(&s, &researcher, v["job"].as_str().unwrap());
    assert_eq!(shown["status"], "succeeded", "{shown}");
    let doc = &shown["result"]["document"];
    let strata = &doc["outputs"]["strata"];
    // The validation split only (about a fifth of 80), for the new head and the base.
    let validated = strata["all"]["all"]["patients"].as_u64().unwrap();
    assert!(
        (10..=30).contains(&validated) && validated.is_multiple_of(5),
        "{doc}"
    );
    assert_eq!(strata["base/all"]["all"]["patients"], validated);
    // The weights stay in the enclave until the board releases them.
    assert!(
        doc["blocked"].as_array().unwrap().iter().any(|b| b["what"] == "weights"
            && b["rule"].as_str().unwrap().contains("ethics board")),
        "{doc}"
    );
    assert!(doc["outputs"].get("weights").is_none());
    // The board releases them: not the researcher, not one member alone.
    let job = shown["job"].as_str().unwrap().to_string();
    let o = hbs_as(&s, &researcher, &["job", "release", &job]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"));
    let v = ok_json(&hbs_as(&s, &board1, &["job", "release", &job, "--json"]));
    assert_eq!(
        (v["approvals"].as_u64(), v["released"].as_bool()),
        (Some(1), Some(false))
    );
    let o = hbs_as(&s, &board1, &["job", "release", &job]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("already approved"));
    let v = ok_json(&hbs_as(&s, &board2, &["job", "release", &job, "--json"]));
    assert_eq!(v["released"], true, "{v}");
    let shown = ok_json(&hbs_as(&s, &researcher, &["job", "show", &job, "--json"]));
    // Intercept and one weight per feature (4), three significant digits.
    assert_eq!(
        shown["result"]["document"]["outputs"]["weights"]
            .as_array()
            .unwrap()
            .len(),
        5,
        "{shown}"
    );
    assert!(!shown["result"]["document"]["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["what"] == "weights"));
    // The registry has the new model, its lineage, and its evaluation.
    let models = ok_json(&hbs_as(&s, &researcher, &["models", "--json"]));
    let tuned = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cspca-dwi-classifier+head")
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(tuned["lineage"]["base"], sha.as_str());
    assert_eq!(tuned["lineage"]["on"], "siemens");
    assert_eq!(tuned["lineage"]["split"], "fine-tuning");
    assert_eq!(tuned["evaluations"].as_array().unwrap().len(), 1);
    let base = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["sha256"] == sha.as_str())
        .unwrap();
    assert_eq!(base["evaluations"].as_array().unwrap().len(), 2, "{base}");
}

/// Submits `researcher`'s service request for `model` over the whole catalogue, with
/// `outputs` and any `extra` flags; returns its ID.
fn service_request(
    s: &Server,
    dir: &Path,
    researcher: &Path,
    model: &Path,
    outputs: &str,
    extra: &[&str],
) -> String {
    let cohort = dir.join("cohort.json");
    std::fs::write(&cohort, "{}").unwrap();
    let mut args = vec![
        "request",
        "submit",
        "--kind",
        "service",
        "--cohort",
        cohort.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--purpose",
        "csPCa-model-validation",
        "--days",
        "30",
        "--outputs",
        outputs,
    ];
    args.extend_from_slice(extra);
    let o = hbs_as(s, researcher, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Both board members approve request `id`.
fn approve(s: &Server, boards: &[&Path], id: &str) {
    for b in boards {
        ok_json(&hbs_as(s, b, &["review", "approve", id, "--json"]));
    }
}

/// A service request (see [`service_request`]) approved by the two board members.
fn approved_service_request(
    s: &Server,
    dir: &Path,
    who: &[&Path; 3],
    model: &Path,
    outputs: &str,
) -> String {
    let request = service_request(s, dir, who[0], model, outputs, &[]);
    approve(s, &who[1..], &request);
    request
}

/// Polls a job until it is neither queued nor running.
fn finished(s: &Server, who: &Path, job: &str) -> serde_json::Value {
    let mut shown = serde_json::Value::Null;
    for _ in 0..900 {
        shown = ok_json(&hbs_as(s, who, &["job", "show", job, "--json"]));
        if !matches!(shown["status"].as_str(), Some("queued" | "running")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    shown
}

fn sha256_file(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(o.stdout).unwrap()[..64].to_string()
}
