//! QIDO-RS (PS3.18 §10.6): search over the pseudonymized catalogue, answered in DICOM
//! JSON (PS3.18 Annex F).
//!
//! Routes: `GET /dicomweb/studies`, `/dicomweb/series`, `/dicomweb/instances`,
//! `/dicomweb/studies/{study}/series`, `/dicomweb/studies/{study}/instances` and
//! `/dicomweb/studies/{study}/series/{series}/instances`. Every UID, date and patient ID
//! searched and returned is a pseudonymized one; nothing of a source file is reachable.
//!
//! Who sees what: a data provider sees its own site's contributions only (the site comes
//! from its certificate); operators and auditors see every site; a researcher sees the
//! studies of the cohort of a data grant it holds, named in the `hbs-grant` header, with
//! the grant's purpose in `hbs-purpose` (the policy decides each search, and the decision
//! and its rule are recorded as `data.search`).
//!
//! Matching keys, by keyword or by tag (`PatientID` or `00100020`): `StudyInstanceUID`,
//! `SeriesInstanceUID`, `SOPInstanceUID`, `SOPClassUID` (single values or comma-separated
//! UID lists), `PatientID` (the pseudonym), `StudyDate` (`YYYYMMDD`, or a range
//! `A-B`, `-B`, `A-`), `Modality` (series and instance levels), `ModalitiesInStudy`,
//! `Manufacturer`; and `limit`, `offset`, `includefield` (every attribute the catalogue
//! holds is always returned, which the standard allows) and `fuzzymatching` (ignored: no
//! person-name matching exists here). Any other key is refused with 400 naming it. At most
//! [`MAX_RESULTS`] results per request; when more match, the `Warning` header says so and
//! `offset` pages on.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use certs::{Principal, Role};
use serde_json::{json, Map, Value};
use vault::catalog::Search;

use crate::record::RequestId;
use crate::routes::AppState;

/// Most results in one answer.
pub const MAX_RESULTS: i64 = 1000;

/// The level searched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Study,
    Series,
    Instance,
}

/// A refused search: 400 with the reason (which names a key, never a value).
#[derive(Debug)]
pub struct BadQuery(pub String);

fn is_uid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !v.starts_with('.')
        && !v.ends_with('.')
}

fn uid_list(key: &str, v: &str) -> Result<Vec<String>, BadQuery> {
    let list: Vec<String> = v.split(',').map(|u| u.trim().to_string()).collect();
    if list.iter().all(|u| is_uid(u)) {
        Ok(list)
    } else {
        Err(BadQuery(format!(
            "{key} must be a UID or a comma-separated list of UIDs"
        )))
    }
}

fn is_date(v: &str) -> bool {
    v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit())
}

fn date_range(v: &str) -> Result<(Option<String>, Option<String>), BadQuery> {
    let bad = || {
        BadQuery(
            "StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-"
                .into(),
        )
    };
    let (a, b) = match v.split_once('-') {
        None => (v, v),
        Some((a, b)) => (a, b),
    };
    let side = |s: &str| -> Result<Option<String>, BadQuery> {
        if s.is_empty() {
            Ok(None)
        } else if is_date(s) {
            Ok(Some(s.to_string()))
        } else {
            Err(bad())
        }
    };
    let r = (side(a)?, side(b)?);
    if r.0.is_none() && r.1.is_none() {
        return Err(bad());
    }
    Ok(r)
}

fn code_string(key: &str, v: &str) -> Result<String, BadQuery> {
    if !v.is_empty() && v.len() <= 64 && !v.contains(['*', '?', '\\']) {
        Ok(v.to_string())
    } else {
        Err(BadQuery(format!(
            "{key} must be a single value (wildcards are not supported)"
        )))
    }
}

/// Turns the query parameters of a request at `level` into a catalogue search. Pure.
fn parse(level: Level, params: &[(String, String)]) -> Result<Search, BadQuery> {
    let mut s = Search {
        limit: MAX_RESULTS,
        ..Default::default()
    };
    for (k, v) in params {
        let v = v.as_str();
        match k.as_str() {
            "StudyInstanceUID" | "0020000D" => s.study_uids = uid_list("StudyInstanceUID", v)?,
            "SeriesInstanceUID" | "0020000E" => s.series_uids = uid_list("SeriesInstanceUID", v)?,
            "SOPInstanceUID" | "00080018" => s.sop_uids = uid_list("SOPInstanceUID", v)?,
            "SOPClassUID" | "00080016" => s.sop_classes = uid_list("SOPClassUID", v)?,
            "PatientID" | "00100020" => s.pseudonym = Some(code_string("PatientID", v)?),
            "StudyDate" | "00080020" => (s.date_from, s.date_to) = date_range(v)?,
            "Modality" | "00080060" => {
                if level == Level::Study {
                    return Err(BadQuery(
                        "Modality is a series attribute; search studies by ModalitiesInStudy"
                            .into(),
                    ));
                }
                s.modality = Some(code_string("Modality", v)?)
            }
            "ModalitiesInStudy" | "00080061" => {
                s.modality_in_study = Some(code_string("ModalitiesInStudy", v)?)
            }
            "Manufacturer" | "00080070" => s.manufacturer = Some(code_string("Manufacturer", v)?),
            "limit" => {
                s.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| BadQuery("limit must be a positive integer".into()))?
                    .min(MAX_RESULTS)
            }
            "offset" => {
                s.offset = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| BadQuery("offset must be a non-negative integer".into()))?
            }
            "includefield" | "fuzzymatching" => {}
            other => {
                let shown: String = other
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(64)
                    .collect();
                return Err(BadQuery(format!(
                    "{shown} is not a search key this gateway supports (see the QIDO-RS documentation of hbs)"
                )));
            }
        }
    }
    Ok(s)
}

fn one(vr: &str, value: Value) -> Value {
    json!({"vr": vr, "Value": [value]})
}

fn text(vr: &str, v: &str) -> Value {
    if v.is_empty() {
        json!({ "vr": vr })
    } else {
        one(vr, json!(v))
    }
}

fn patient(m: &mut Map<String, Value>, pseudonym: &str) {
    m.insert(
        "00100010".into(),
        one("PN", json!({"Alphabetic": pseudonym})),
    );
    m.insert("00100020".into(), text("LO", pseudonym));
}

fn study_json(s: &vault::catalog::StudyMatch) -> Value {
    let mut m = Map::new();
    m.insert("00080020".into(), text("DA", &s.study_date));
    m.insert(
        "00080061".into(),
        json!({"vr": "CS", "Value": s.modalities}),
    );
    patient(&mut m, &s.pseudonym);
    m.insert("0020000D".into(), text("UI", &s.study_uid));
    m.insert("00201206".into(), one("IS", json!(s.series)));
    m.insert("00201208".into(), one("IS", json!(s.instances)));
    Value::Object(m)
}

fn series_json(s: &vault::catalog::SeriesMatch) -> Value {
    let mut m = Map::new();
    m.insert("00080020".into(), text("DA", &s.study_date));
    m.insert("00080060".into(), text("CS", &s.modality));
    m.insert("00080070".into(), text("LO", &s.manufacturer));
    m.insert("0008103E".into(), text("LO", &s.series_description));
    patient(&mut m, &s.pseudonym);
    m.insert("0020000D".into(), text("UI", &s.study_uid));
    m.insert("0020000E".into(), text("UI", &s.series_uid));
    m.insert("00201209".into(), one("IS", json!(s.instances)));
    Value::Object(m)
}

fn instance_json(r: &vault::catalog::InstanceRow) -> Value {
    let mut m = Map::new();
    m.insert("00080016".into(), text("UI", &r.sop_class));
    m.insert("00080018".into(), text("UI", &r.sop_uid));
    m.insert("00080020".into(), text("DA", &r.study_date));
    m.insert("00080060".into(), text("CS", &r.modality));
    m.insert("00080070".into(), text("LO", &r.manufacturer));
    m.insert("00083002".into(), text("UI", &r.transfer_syntax));
    patient(&mut m, &r.pseudonym);
    m.insert("0020000D".into(), text("UI", &r.study_uid));
    m.insert("0020000E".into(), text("UI", &r.series_uid));
    Value::Object(m)
}

fn error(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

/// Who asks, with the request's ID and headers (a researcher's grant and purpose).
struct Caller {
    p: Principal,
    rid: RequestId,
    headers: HeaderMap,
}

/// The header naming the data grant a researcher searches under.
pub const GRANT_HEADER: &str = "hbs-grant";

/// The studies a researcher may see: those of the cohort of the data grant named in the
/// `hbs-grant` header, if the policy allows searching under it now, for the purpose in
/// `hbs-purpose`. The decision and its rule are recorded; a refusal answers 403.
async fn granted_studies(st: &AppState, c: &Caller) -> Result<Vec<String>, Response> {
    let header = |name: &str| {
        c.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let grant = header(GRANT_HEADER);
    if grant.is_empty()
        || grant.len() > 64
        || !grant
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    {
        return Err(error(
            StatusCode::FORBIDDEN,
            "researchers search under a data grant: send its ID in the hbs-grant header and its purpose in hbs-purpose",
        ));
    }
    // The search names no attribute; the answer is confined to the grant's cohort.
    let query = crate::governance::grant_query(
        &c.p,
        &grant,
        policy::model::resource_scope(&[]),
        "search",
        &c.headers,
    );
    let d = st.policy.decide(&query).await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the policy cannot decide now; nothing was searched",
        )
    })?;
    let ev = crate::record::event(
        &crate::record::actor(&c.p),
        &c.rid.0,
        "data.search",
        &format!("grant:{grant}"),
        if d.allow { "allow" } else { "deny" },
        &d.rule,
        if d.allow {
            "searched within the grant's cohort"
        } else {
            "refused, nothing searched"
        },
    );
    if st.audit.append(ev).await.is_err() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this search; nothing was searched",
        ));
    }
    if !d.allow {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the grant does not allow this search now (check its ID, its purpose and its end)",
        ));
    }
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalogue cannot be read now",
        )
    };
    let cohort = st
        .policy
        .store()
        .get(&grant)
        .await
        .map_err(|_| unavailable())?
        .and_then(|r| r.submission.cohort)
        .unwrap_or_default();
    let f = crate::catalogue::filter(&cohort).map_err(|_| unavailable())?;
    let patients = st
        .catalogue
        .patients(st.vault.catalog())
        .await
        .map_err(|_| unavailable())?;
    Ok(patients
        .iter()
        .filter(|p| f.patient(p))
        .flat_map(|p| {
            p.studies
                .iter()
                .filter(|s| f.study(s))
                .map(|s| s.uid.clone())
        })
        .collect())
}

async fn search(
    state: AppState,
    caller: Caller,
    level: Level,
    params: Vec<(String, String)>,
    study: Option<String>,
    series: Option<String>,
) -> Response {
    let mut s = match parse(level, &params) {
        Ok(s) => s,
        Err(BadQuery(reason)) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    for (key, path_uid, list) in [
        ("study", study, &mut s.study_uids),
        ("series", series, &mut s.series_uids),
    ] {
        if let Some(uid) = path_uid {
            if !is_uid(&uid) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the {key} in the path is not a UID"),
                );
            }
            // The path and a matching key must both hold.
            if !list.is_empty() && !list.contains(&uid) {
                return json_answer(Vec::new(), false);
            }
            *list = vec![uid];
        }
    }
    let p = caller.p.clone();
    // Scope by who asks: a data provider sees its own site only; a researcher the
    // studies of a data grant's cohort.
    match p.role {
        Role::Researcher => {
            let allowed = match granted_studies(&state, &caller).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            if s.study_uids.is_empty() {
                s.study_uids = allowed;
            } else {
                s.study_uids.retain(|u| allowed.contains(u));
            }
            // No study in scope: nothing (an empty list would mean every study).
            if s.study_uids.is_empty() {
                return json_answer(Vec::new(), false);
            }
        }
        Role::Operator | Role::Auditor => {}
        Role::DataProvider => match p.site {
            Some(site) => s.site = Some(site),
            None => {
                return error(
                    StatusCode::FORBIDDEN,
                    "a data-provider certificate must name its site",
                )
            }
        },
        // The route table admits no other role; refuse rather than widen if it ever did.
        _ => return error(StatusCode::FORBIDDEN, "this role may not search"),
    }
    // One more than asked, to know whether the answer is truncated.
    let wanted = s.limit;
    s.limit = wanted + 1;
    let catalog = state.vault.catalog();
    let result = match level {
        Level::Study => catalog
            .search_studies(&s)
            .await
            .map(|v| v.iter().map(study_json).collect::<Vec<_>>()),
        Level::Series => catalog
            .search_series(&s)
            .await
            .map(|v| v.iter().map(series_json).collect()),
        Level::Instance => catalog
            .search_instances(&s)
            .await
            .map(|v| v.iter().map(instance_json).collect()),
    };
    match result {
        Ok(mut items) => {
            let more = items.len() as i64 > wanted;
            items.truncate(wanted as usize);
            json_answer(items, more)
        }
        Err(e) => {
            tracing::error!(error = %e, "QIDO-RS search failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalogue could not be searched",
            )
        }
    }
}

fn json_answer(items: Vec<Value>, more: bool) -> Response {
    let body = serde_json::to_vec(&items).unwrap_or_else(|_| b"[]".to_vec());
    let mut resp = (
        StatusCode::OK,
        [("content-type", "application/dicom+json")],
        body,
    )
        .into_response();
    if more {
        resp.headers_mut().insert(
            "warning",
            axum::http::HeaderValue::from_static(
                "299 hbs \"The number of results exceeded the maximum supported by the server. Additional results can be requested.\"",
            ),
        );
    }
    resp
}

type Params = Query<Vec<(String, String)>>;

/// `GET /dicomweb/studies`.
pub async fn studies(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    search(st, Caller { p, rid, headers }, Level::Study, q, None, None).await
}

/// `GET /dicomweb/series`.
pub async fn series(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    search(st, Caller { p, rid, headers }, Level::Series, q, None, None).await
}

/// `GET /dicomweb/instances`.
pub async fn instances(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    search(
        st,
        Caller { p, rid, headers },
        Level::Instance,
        q,
        None,
        None,
    )
    .await
}

/// `GET /dicomweb/studies/{study}/series`.
pub async fn study_series(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(q): Params,
) -> Response {
    search(
        st,
        Caller { p, rid, headers },
        Level::Series,
        q,
        Some(study),
        None,
    )
    .await
}

/// `GET /dicomweb/studies/{study}/instances`.
pub async fn study_instances(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(q): Params,
) -> Response {
    search(
        st,
        Caller { p, rid, headers },
        Level::Instance,
        q,
        Some(study),
        None,
    )
    .await
}

/// `GET /dicomweb/studies/{study}/series/{series}/instances`.
pub async fn series_instances(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    search(
        st,
        Caller { p, rid, headers },
        Level::Instance,
        q,
        Some(study),
        Some(series),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keywords_and_tags_both_match() {
        let a = parse(
            Level::Series,
            &q(&[("PatientID", "PN-1"), ("Modality", "MR")]),
        )
        .unwrap();
        let b = parse(
            Level::Series,
            &q(&[("00100020", "PN-1"), ("00080060", "MR")]),
        )
        .unwrap();
        assert_eq!(a.pseudonym.as_deref(), Some("PN-1"));
        assert_eq!(b.pseudonym, a.pseudonym);
        assert_eq!(b.modality, a.modality);
    }

    #[test]
    fn date_ranges() {
        let r = |v: &str| parse(Level::Study, &q(&[("StudyDate", v)]));
        let s = r("20200101-20201231").unwrap();
        assert_eq!(
            (s.date_from.as_deref(), s.date_to.as_deref()),
            (Some("20200101"), Some("20201231"))
        );
        let s = r("-20201231").unwrap();
        assert_eq!(
            (s.date_from, s.date_to.as_deref()),
            (None, Some("20201231"))
        );
        let s = r("20200101").unwrap();
        assert_eq!(s.date_from, s.date_to);
        for bad in ["2020", "-", "2020-01-01", "abcdefgh"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_name_the_key_not_the_value() {
        let e = parse(Level::Study, &q(&[("PatientName", "DOE^JOHN")])).unwrap_err();
        assert!(e.0.contains("PatientName"), "{}", e.0);
        assert!(!e.0.contains("DOE"), "{}", e.0);
        let e = parse(Level::Study, &q(&[("StudyInstanceUID", "1.2.x")])).unwrap_err();
        assert!(!e.0.contains("1.2.x"));
        assert!(parse(Level::Study, &q(&[("Modality", "MR")])).is_err());
        assert!(parse(Level::Study, &q(&[("PatientID", "PN*")])).is_err());
        assert!(parse(Level::Study, &q(&[("limit", "0")])).is_err());
    }

    #[test]
    fn limit_is_capped_and_uid_lists_split() {
        let s = parse(
            Level::Instance,
            &q(&[("limit", "999999"), ("SOPInstanceUID", "1.2.3,2.25.4")]),
        )
        .unwrap();
        assert_eq!(s.limit, MAX_RESULTS);
        assert_eq!(s.sop_uids, vec!["1.2.3", "2.25.4"]);
    }
}
