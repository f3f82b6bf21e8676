//! The vault service on real databases (SQLite and PostgreSQL) and a real file store:
//! ingest, export, duplicate uploads, crypto-shredding, KEK rotation, blob swapping,
//! clinical records.

mod common;

use std::borrow::Cow;

use dicom_core::{Tag, VR};
use vault::dicom::{self, text_element, Element, Encoding, Value};
use vault::pseudonym::{Pseudonym, SiteId};
use vault::vault::{Ingested, Vault, VaultConfig, VaultError};

/// A small identifiable MR instance written with the project's writer.
fn instance(patient_id: &str, name: &str, study: &str, sop: &str) -> Vec<u8> {
    let mut ds: Vec<Element<'static>> = vec![
        text_element(Tag(0x0008, 0x0016), VR::UI, "1.2.840.10008.5.1.4.1.1.4"),
        text_element(Tag(0x0008, 0x0018), VR::UI, sop),
        text_element(Tag(0x0008, 0x0020), VR::DA, "20210304"),
        text_element(Tag(0x0008, 0x0060), VR::CS, "MR"),
        text_element(Tag(0x0008, 0x0070), VR::LO, "SIEMENS"),
        text_element(Tag(0x0008, 0x0080), VR::LO, "St Elsewhere Hospital"),
        text_element(Tag(0x0008, 0x103E), VR::LO, "t2_tse_tra"),
        text_element(Tag(0x0010, 0x0010), VR::PN, name),
        text_element(Tag(0x0010, 0x0020), VR::LO, patient_id),
        text_element(Tag(0x0010, 0x0030), VR::DA, "19500615"),
        text_element(Tag(0x0020, 0x000D), VR::UI, study),
        text_element(Tag(0x0020, 0x000E), VR::UI, &format!("{study}.1")),
    ];
    let pixels: Vec<u8> = (0..64 * 64 * 2).map(|i| (i % 251) as u8).collect();
    ds.push(Element {
        tag: dicom::PIXEL_DATA,
        vr: VR::OW,
        value: Value::Bytes(Cow::Owned(pixels)),
    });
    dicom::write_file(
        &ds,
        dicom::ts::EXPLICIT_LE,
        "1.2.840.10008.5.1.4.1.1.4",
        sop,
        "1.2.3",
        Encoding::ExplicitLe,
        false,
    )
    .unwrap()
}

async fn vault_for(dir: &std::path::Path, db: Option<String>) -> (Vault, VaultConfig) {
    let cfg = VaultConfig {
        data_dir: dir.to_path_buf(),
        database_url: db,
        blob_store: None,
    };
    Vault::init(&cfg).await.unwrap();
    (Vault::open(&cfg).await.unwrap(), cfg)
}

fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    vault::tree::walk(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_export_withdraw_rotate_on_every_database() {
    let root = tempfile::tempdir().unwrap();
    let dbs = common::databases("ingest_export_withdraw_rotate", root.path()).await;
    for (i, db) in dbs.iter().cloned().enumerate() {
        let dir = root.path().join(format!("data{i}"));
        let engine = if db.is_some() { "postgres" } else { "sqlite" };
        let (v, _cfg) = vault_for(&dir, db).await;
        let site = SiteId::new("SITE_A").unwrap();

        // Two patients, two instances each.
        let mut stored = Vec::new();
        for (pid, name) in [("MRN-778899", "DOE^JOHN"), ("MRN-112233", "ROE^RICHARD")] {
            for n in 1..=2 {
                let study = format!("1.3.6.1.4.1.99999.{}", &pid[4..]);
                let bytes = instance(pid, name, &study, &format!("{study}.1.{n}"));
                match v.ingest(&site, bytes).await.unwrap() {
                    Ingested::Stored {
                        object_id,
                        pseudonym,
                        duplicate,
                        ..
                    } => {
                        assert!(!duplicate);
                        stored.push((object_id, pseudonym));
                    }
                    other => panic!("{engine}: not stored: {other:?}"),
                }
            }
        }
        // Uploading the same instance again changes nothing.
        let again = v
            .ingest(
                &site,
                instance(
                    "MRN-778899",
                    "DOE^JOHN",
                    "1.3.6.1.4.1.99999.778899",
                    "1.3.6.1.4.1.99999.778899.1.1",
                ),
            )
            .await
            .unwrap();
        assert!(
            matches!(
                again,
                Ingested::Stored {
                    duplicate: true,
                    ..
                }
            ),
            "{engine}"
        );
        assert_eq!(v.catalog().counts().await.unwrap(), (2, 4, 0), "{engine}");

        // Nothing identifying, and no plaintext DICOM, anywhere in the data folder.
        for f in all_files(&dir) {
            let b = std::fs::read(&f).unwrap();
            for leak in [
                &b"MRN-778899"[..],
                b"DOE^JOHN",
                b"ROE",
                b"Elsewhere",
                b"19500615",
                b"20210304",
                b"99999",
                b"DICM",
            ] {
                assert!(
                    !b.windows(leak.len()).any(|w| w == leak),
                    "{engine}: {} found in {}",
                    String::from_utf8_lossy(leak),
                    f.display()
                );
            }
        }

        // Export decrypts to valid de-identified DICOM.
        let out = root.path().join(format!("export{i}"));
        let (n, _) = v.export(None, &out).await.unwrap();
        assert_eq!(n, 4);
        for f in all_files(&out) {
            let b = std::fs::read(&f).unwrap();
            let inflated = dicom::inflate_if_needed(&b).unwrap();
            let obj = dicom::parse(&b, inflated.as_ref()).unwrap();
            let pn = dicom::text(&obj.dataset, Tag(0x0010, 0x0010)).unwrap();
            assert!(Pseudonym::parse(pn).is_some(), "{engine}: {pn}");
            assert!(!b.windows(6).any(|w| w == b"MRN-77"));
        }

        // Rotate the KEK: blobs untouched, still readable, old KEK gone.
        let blobs_before: Vec<Vec<u8>> = all_files(&dir.join("blobs"))
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        let new_version = v.rotate_kek().await.unwrap();
        assert_eq!(new_version, 2);
        assert!(!dir.join("keys/kek-v1.key").exists());
        assert!(dir.join("keys/kek-v2.key").exists());
        let blobs_after: Vec<Vec<u8>> = all_files(&dir.join("blobs"))
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        assert_eq!(
            blobs_before, blobs_after,
            "{engine}: rotation touched blobs"
        );
        // A fresh process (no cached keys) reads through the new KEK.
        v.close().await;
        let (v, cfg) = (Vault::open(&_cfg).await.unwrap(), _cfg);
        let out2 = root.path().join(format!("export{i}b"));
        assert_eq!(v.export(None, &out2).await.unwrap().0, 4);

        // Withdraw patient 1: key and rows gone, blobs still on disk and unreadable.
        let p1 = Pseudonym::parse(&stored[0].1).unwrap();
        let p1_blobs: Vec<_> = stored.iter().filter(|s| s.1 == stored[0].1).collect();
        assert_eq!(v.withdraw(&p1).await.unwrap(), 2);
        assert_eq!(v.catalog().counts().await.unwrap(), (1, 2, 0), "{engine}");
        assert!(v
            .catalog()
            .patient_key(p1.as_str())
            .await
            .unwrap()
            .is_none());
        v.close().await;
        let v = Vault::open(&cfg).await.unwrap();
        for (object_id, _) in &p1_blobs {
            let raw = std::fs::read(dir.join("blobs").join(object_id)).unwrap();
            assert!(raw.len() > 1000, "{engine}: the blob is still there");
            assert!(!raw.windows(4).any(|w| w == b"DICM"));
            // No key in the database can open it any more.
            for (p, rec) in v.catalog().all_keys().await.unwrap() {
                let _ = (p, rec); // only patient 2 remains; its key is for other blobs
            }
            let row = vault::catalog::InstanceRow {
                object_id: object_id.clone(),
                pseudonym: p1.to_string(),
                ..v.catalog().instances(None).await.unwrap()[0].clone()
            };
            assert!(matches!(
                v.read_instance(&row).await,
                Err(VaultError::UnknownPatient(_))
            ));
        }
        assert!(matches!(
            v.export(Some(&p1), &root.path().join("x")).await,
            Err(VaultError::UnknownPatient(_))
        ));
        // New uploads for the withdrawn patient are refused.
        let r = v
            .ingest(
                &site,
                instance(
                    "MRN-778899",
                    "DOE^JOHN",
                    "1.3.6.1.4.1.99999.5",
                    "1.3.6.1.4.1.99999.5.1",
                ),
            )
            .await;
        assert!(
            matches!(r, Err(VaultError::Withdrawn(_))),
            "{engine}: {r:?}"
        );
        // The withdrawn key is not left in the SQLite files either.
        if engine == "sqlite" {
            let p2 = v.catalog().all_keys().await.unwrap();
            assert_eq!(p2.len(), 1);
        }
        v.close().await;
    }
    for db in dbs.into_iter().flatten() {
        common::drop_pg(&db).await;
    }
}

/// A study's first instances arrive at once (a STOW-RS request's parts, several sites'
/// clients): every one of them is sealed with the one key the catalogue keeps for the
/// new patient, so all of them open again after a restart (no cached key of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patients_concurrent_first_uploads_share_one_key_on_every_database() {
    let root = tempfile::tempdir().unwrap();
    let dbs = common::databases("new_patient_concurrent", root.path()).await;
    for (i, db) in dbs.iter().cloned().enumerate() {
        let dir = root.path().join(format!("data{i}"));
        let engine = if db.is_some() { "postgres" } else { "sqlite" };
        let (v, cfg) = vault_for(&dir, db).await;
        let site = SiteId::new("SITE_A").unwrap();
        const N: usize = 24;
        let mut set = tokio::task::JoinSet::new();
        for n in 0..N {
            let (v, site) = (v.clone(), site.clone());
            set.spawn(async move {
                let study = "1.3.6.1.4.1.99999.4242";
                let bytes = instance("MRN-4242", "DOE^JANE", study, &format!("{study}.1.{n}"));
                v.ingest(&site, bytes).await
            });
        }
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(Ingested::Stored { duplicate, .. }) => assert!(!duplicate, "{engine}"),
                other => panic!("{engine}: not stored: {other:?}"),
            }
        }
        assert_eq!(
            v.catalog().counts().await.unwrap(),
            (1, N as i64, 0),
            "{engine}"
        );
        v.close().await;
        let v = Vault::open(&cfg).await.unwrap();
        let rows = v.catalog().instances(None).await.unwrap();
        assert_eq!(rows.len(), N, "{engine}");
        for row in &rows {
            let bytes = v.read_instance(row).await.unwrap_or_else(|e| {
                panic!("{engine}: an instance does not open with the patient's key: {e}")
            });
            assert!(bytes.windows(4).any(|w| w == b"DICM"), "{engine}");
        }
        v.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_or_replayed_blobs_do_not_decrypt() {
    let root = tempfile::tempdir().unwrap();
    let (v, _) = vault_for(root.path(), None).await;
    let site = SiteId::new("SITE_B").unwrap();
    let mut ids = Vec::new();
    for n in 1..=2 {
        if let Ingested::Stored { object_id, .. } = v
            .ingest(
                &site,
                instance("P1", "A^B", "1.2.3.4", &format!("1.2.3.4.{n}")),
            )
            .await
            .unwrap()
        {
            ids.push(object_id);
        }
    }
    let a = root.path().join("blobs").join(&ids[0]);
    let b = root.path().join("blobs").join(&ids[1]);
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &bb).unwrap();
    std::fs::write(&b, &ba).unwrap();
    let err = v.export(None, &root.path().join("out")).await.unwrap_err();
    assert!(err.to_string().contains("decryption failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinical_records_are_encrypted_and_exported_pseudonymized() {
    let root = tempfile::tempdir().unwrap();
    let dbs = common::databases("clinical_records", root.path()).await;
    for (i, db) in dbs.iter().cloned().enumerate() {
        let dir = root.path().join(format!("d{i}"));
        let (v, _) = vault_for(&dir, db).await;
        let site = SiteId::new("SITE_C").unwrap();
        let csv = "patient_id,patient_name,birth_date,psa,psa_date,isup_grade,pirads,biopsy_result,biopsy_date,treatment,smoking,comments\n\
                   MRN-555,SMITH^ANNA,1950-01-01,6.5,2022-05-05,3,5,ISUP3,2022-06-01,radical prostatectomy,never,spoke to Smith\n\
                   ,NOBODY,1950-01-01,6.5,2022-05-05,3,5,ISUP3,2022-06-01,radiotherapy,never,\n";
        let res = v
            .ingest_clinical(&site, csv.as_bytes(), &["smoking".into()])
            .await
            .unwrap();
        assert_eq!(res.records.len(), 1);
        assert_eq!(res.errors.len(), 1);
        assert!(res.errors[0].to_string().contains("patient_id"));
        let out = dir.join("export");
        assert_eq!(v.export(None, &out).await.unwrap(), (0, 1));
        let f = &all_files(&out)[0];
        let text = std::fs::read_to_string(f).unwrap();
        let p = v.pseudonymizer().pseudonym(&site, "MRN-555");
        assert!(text.contains(p.as_str()));
        assert!(text.contains("\"smoking\":\"never\""));
        for leak in ["MRN-555", "SMITH", "ANNA", "1950", "2022-05-05", "spoke"] {
            assert!(!text.contains(leak), "{leak} leaked into {text}");
        }
        for f in all_files(&dir.join("blobs")) {
            let b = std::fs::read(f).unwrap();
            assert!(
                !b.windows(5).any(|w| w == b"psa_d"),
                "clinical blob in clear"
            );
        }
        v.close().await;
    }
    for db in dbs.into_iter().flatten() {
        common::drop_pg(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_search_answers_alike_on_every_database() {
    use vault::catalog::Search;
    let root = tempfile::tempdir().unwrap();
    let dbs = common::databases("catalogue_search", root.path()).await;
    for (i, db) in dbs.iter().cloned().enumerate() {
        let engine = if db.is_some() { "postgres" } else { "sqlite" };
        let (v, _cfg) = vault_for(&root.path().join(format!("data{i}")), db.clone()).await;
        let site = SiteId::new("SITE_A").unwrap();
        // Patient A: one study of 2 instances; patient B: one study of 3.
        let mut pseudonyms = Vec::new();
        for (pid, name, n) in [("MRN-1", "DOE^JOHN", 2), ("MRN-2", "ROE^RICHARD", 3)] {
            let study = format!("1.3.6.1.4.1.99999.{}", &pid[4..]);
            for k in 1..=n {
                let r = v
                    .ingest(
                        &site,
                        instance(pid, name, &study, &format!("{study}.1.{k}")),
                    )
                    .await
                    .unwrap();
                if let Ingested::Stored { pseudonym, .. } = r {
                    if k == 1 {
                        pseudonyms.push(pseudonym);
                    }
                }
            }
        }
        let c = v.catalog();
        let all = Search {
            limit: 100,
            ..Default::default()
        };
        let studies = c.search_studies(&all).await.unwrap();
        let mut counts: Vec<i64> = studies.iter().map(|s| s.instances).collect();
        counts.sort();
        assert_eq!(counts, vec![2, 3], "{engine}");
        for s in &studies {
            assert_eq!(s.modalities, vec!["MR".to_string()], "{engine}");
            assert_eq!(s.series, 1, "{engine}");
        }
        let a = Search {
            pseudonym: Some(pseudonyms[0].clone()),
            ..all.clone()
        };
        let a_studies = c.search_studies(&a).await.unwrap();
        assert_eq!(a_studies.len(), 1, "{engine}");
        assert_eq!(a_studies[0].instances, 2, "{engine}");
        // Series and instances of that study; paging; site, modality and date filters.
        let in_study = Search {
            study_uids: vec![a_studies[0].study_uid.clone()],
            ..all.clone()
        };
        let series = c.search_series(&in_study).await.unwrap();
        assert_eq!(series.len(), 1, "{engine}");
        assert_eq!(series[0].instances, 2, "{engine}");
        assert_eq!(series[0].modality, "MR", "{engine}");
        let inst = c.search_instances(&in_study).await.unwrap();
        assert_eq!(inst.len(), 2, "{engine}");
        let page = Search {
            limit: 2,
            offset: 3,
            ..all.clone()
        };
        assert_eq!(
            c.search_instances(&page).await.unwrap().len(),
            2,
            "{engine}"
        );
        let other_site = Search {
            site: Some("SITE_B".into()),
            ..all.clone()
        };
        assert!(c.search_studies(&other_site).await.unwrap().is_empty());
        let seg = Search {
            modality_in_study: Some("SEG".into()),
            ..all.clone()
        };
        assert!(c.search_studies(&seg).await.unwrap().is_empty());
        let date = a_studies[0].study_date.clone();
        assert_ne!(date, "20210304", "{engine}: the study date is shifted");
        let on_date = Search {
            date_from: Some(date.clone()),
            date_to: Some(date),
            ..all.clone()
        };
        assert!(c
            .search_studies(&on_date)
            .await
            .unwrap()
            .iter()
            .any(|s| s.study_uid == a_studies[0].study_uid));
        v.close().await;
        if let Some(url) = db {
            common::drop_pg(&url).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_facts_are_kept_per_series_on_every_database() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus");
    let slices = 4;
    vault::synth::generate(
        &corpus,
        &vault::synth::SynthConfig {
            patients: 3,
            sites: 1,
            slices,
            rows: 16,
            cols: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let files: Vec<_> = all_files(&corpus)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert!(!files.is_empty());
    let dbs = common::databases("series_facts", root.path()).await;
    for (i, db) in dbs.iter().cloned().enumerate() {
        let engine = if db.is_some() { "postgres" } else { "sqlite" };
        let (v, _cfg) = vault_for(&root.path().join(format!("data{i}")), db).await;
        let site = SiteId::new("SITE_A").unwrap();
        // Concurrently, so group commits hold several instances of one series.
        let mut set = tokio::task::JoinSet::new();
        for f in &files {
            let (v, site, bytes) = (v.clone(), site.clone(), std::fs::read(f).unwrap());
            set.spawn(async move { v.ingest(&site, bytes).await.unwrap() });
        }
        let mut stored = 0;
        while let Some(r) = set.join_next().await {
            if let Ingested::Stored { .. } = r.unwrap() {
                stored += 1;
            }
        }
        // A repeated upload adds nothing to its series.
        v.ingest(&site, std::fs::read(&files[0]).unwrap())
            .await
            .unwrap();
        let series = v.catalog().series().await.unwrap();
        let total: i64 = series.iter().map(|s| s.instances).sum();
        assert_eq!(
            total, stored,
            "{engine}: every stored instance in one series, once"
        );
        let (mut t2, mut dwi, mut adc, mut dce, mut seg) = (0, 0, 0, 0, 0);
        for s in &series {
            let a = &s.acquisition;
            if s.modality == "SEG" {
                seg += 1;
                // The synthetic segmentations hold the gland and the index lesion, coded.
                assert_eq!(a.segments, vec!["gland", "lesion"], "{engine}");
                continue;
            }
            assert!(a.segments.is_empty());
            assert!(
                matches!(a.field_strength_t, Some(f) if f == 1.5 || f == 3.0),
                "{engine}: field strength {:?}",
                a.field_strength_t
            );
            assert!(!a.model.is_empty(), "{engine}: no model");
            if a.image_type.contains("ADC") {
                adc += 1;
            } else if a.scanning_sequence.contains("EP") {
                dwi += 1;
                // Four slices cycle through b = 0, 800, 1400: each once, sorted.
                assert_eq!(s.b_values, vec![0.0, 800.0, 1400.0], "{engine}");
                assert_eq!(s.instances, slices as i64);
            } else if s.temporal_positions > 1 {
                dce += 1;
                assert_eq!(s.temporal_positions, slices as u32, "{engine}");
                assert_eq!(s.instances, 2 * slices as i64);
                assert!(s.b_values.is_empty());
            } else {
                t2 += 1;
                assert!(a.scanning_sequence.contains("SE"), "{engine}");
                assert!(a.echo_time_ms.is_some_and(|te| te >= 60.0), "{engine}");
                assert!(s.b_values.is_empty());
            }
        }
        assert!(
            t2 > 0 && dwi > 0 && adc > 0 && dce > 0 && seg > 0,
            "{engine}: T2W {t2}, DWI {dwi}, ADC {adc}, DCE {dce}, SEG {seg}"
        );
        // A withdrawn patient's series go with the patient.
        let gone = series[0].pseudonym.clone();
        v.withdraw(&Pseudonym::parse(&gone).unwrap()).await.unwrap();
        let after = v.catalog().series().await.unwrap();
        assert!(after.iter().all(|s| s.pseudonym != gone), "{engine}");
        assert!(after.len() < series.len());
    }
}

/// One instance row of series `series` (its own SOP instance), for the catalogue alone.
fn series_row(series: usize) -> vault::catalog::InstanceRow {
    vault::catalog::InstanceRow {
        object_id: format!("PN-1/{series}"),
        pseudonym: "PN-1".into(),
        site: "SITE_A".into(),
        study_uid: "2.25.1".into(),
        series_uid: format!("2.25.2.{series}"),
        sop_uid: format!("2.25.3.{series}"),
        sop_class: "1.2.840.10008.5.1.4.1.1.4".into(),
        modality: "MR".into(),
        manufacturer: "SIEMENS".into(),
        series_description: "t2_tse_tra".into(),
        study_date: "20200101".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        size: 1,
        sha256: "00".into(),
        key_version: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_with_and_without_echo_times_share_group_commits_on_every_database() {
    // A group commit writes its series in one multi-row statement. A statement once run
    // with a series that has no echo time (a segmentation) must still take one that has
    // an echo time in the same place later: sqlx declares an absent f64 as float4, which
    // PostgreSQL keeps for a prepared statement.
    use vault::acquisition::Acquisition;
    use vault::catalog::{Catalog, PatientKey, WriteLock};
    let root = tempfile::tempdir().unwrap();
    for db in common::databases("series_echo", root.path()).await {
        let url = db
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", root.path().join("c.db").display()));
        let lock = WriteLock::default();
        let cat = Catalog::connect_with(&url, Some(lock.clone()))
            .await
            .unwrap();
        let key = PatientKey {
            wrapped: vec![1],
            kek_version: 1,
            key_version: 1,
        };
        cat.insert_patient_key("PN-1", "SITE_A", &key)
            .await
            .unwrap();
        let acq = |echo: Option<f64>| Acquisition {
            echo_time_ms: echo,
            field_strength_t: echo.map(|_| 3.0),
            ..Default::default()
        };
        // Two batches of two series after a lone one: holding the write lock while the
        // rows queue makes them commit together.
        for (first, second, echoes) in [(1, 2, [Some(90.0), None]), (4, 5, [Some(80.0), Some(2.5)])]
        {
            let held = lock.lock().await;
            let lone = {
                let cat = cat.clone();
                tokio::spawn(async move {
                    cat.insert_instance_with(&series_row(first * 10), None, None)
                        .await
                })
            };
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut both = Vec::new();
            for (s, echo) in [first, second].into_iter().zip(echoes) {
                let cat = cat.clone();
                both.push(tokio::spawn(async move {
                    cat.insert_instance_with(&series_row(s), Some(acq(echo)), None)
                        .await
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(held);
            assert!(lone.await.unwrap().unwrap());
            for t in both {
                assert!(t.await.unwrap().unwrap(), "{url}");
            }
        }
        let series = cat.series().await.unwrap();
        let echo = |uid: &str| {
            series
                .iter()
                .find(|s| s.series_uid == uid)
                .map(|s| s.acquisition.echo_time_ms)
        };
        assert_eq!(echo("2.25.2.2"), Some(None));
        assert_eq!(echo("2.25.2.5"), Some(Some(2.5)));
        drop(cat);
        if let Some(url) = db {
            common::drop_pg(&url).await;
        }
    }
}
