//! Client commands that read from the gateway: `hbs whoami` and `hbs search` (QIDO-RS).
//! They print a table for a person, or with `--json` what the gateway answered.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::client::{query_escape, Answer, ClientArgs};

/// What `hbs search` asks for.
pub struct Query {
    /// studies, series or instances.
    pub level: String,
    /// Within this study.
    pub study: Option<String>,
    /// Within this series.
    pub series: Option<String>,
    /// Most results.
    pub limit: Option<u32>,
    /// Results to skip.
    pub offset: Option<u32>,
    /// KEY=VALUE matching keys.
    pub filters: Vec<String>,
    /// A researcher's data grant, and the purpose it was granted for.
    pub grant: Option<(String, String)>,
}

impl Query {
    /// The QIDO-RS path and query string. Pure.
    pub fn path(&self) -> Result<String> {
        let mut path = String::from("/dicomweb");
        if let Some(st) = &self.study {
            path.push_str(&format!("/studies/{}", query_escape(st)));
        }
        if let Some(se) = &self.series {
            path.push_str(&format!("/series/{}", query_escape(se)));
        }
        match (self.level.as_str(), &self.study, &self.series) {
            ("studies", Some(_), _) => bail!("--study narrows series or instances, not studies"),
            ("series", _, Some(_)) => bail!("--series narrows instances only"),
            _ => {}
        }
        path.push('/');
        path.push_str(&self.level);
        let mut params = Vec::new();
        for f in &self.filters {
            let Some((k, v)) = f.split_once('=') else {
                bail!("a filter is KEY=VALUE (for example PatientID=PN-...)");
            };
            params.push(format!("{}={}", query_escape(k), query_escape(v)));
        }
        if let Some(l) = self.limit {
            params.push(format!("limit={l}"));
        }
        if let Some(o) = self.offset {
            params.push(format!("offset={o}"));
        }
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        Ok(path)
    }
}

/// The gateway's refusal as an error: its status and the reason it gave.
pub fn refused(a: &Answer) -> anyhow::Error {
    let reason = serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&a.body).into_owned());
    anyhow::anyhow!("the gateway answered {}: {reason}", a.status)
}

/// The gateway's JSON answer, or its refusal as an error; printed as it came with
/// `--json` (then `None`: nothing left for the caller to print).
pub fn json_answer(c: &ClientArgs, a: &Answer) -> Result<Option<Value>> {
    if a.status != 200 {
        return Err(refused(a));
    }
    let v: Value = serde_json::from_slice(&a.body).context("the gateway's answer")?;
    if c.json {
        println!("{v}");
        return Ok(None);
    }
    Ok(Some(v))
}

/// `hbs whoami`.
pub async fn whoami(c: &ClientArgs) -> Result<()> {
    let a = c.get("/whoami").await?;
    if a.status != 200 {
        return Err(refused(&a));
    }
    let p: Value = serde_json::from_slice(&a.body).context("the gateway's answer")?;
    if c.json {
        println!("{p}");
    } else {
        println!(
            "{} {}{} (certificate serial {})",
            p["role"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?"),
            p["site"]
                .as_str()
                .map(|s| format!(" at {s}"))
                .unwrap_or_default(),
            p["serial"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn first(item: &Value, tag: &str) -> String {
    match &item[tag]["Value"] {
        Value::Array(v) => v
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("Alphabetic")
                    .and_then(|a| a.as_str())
                    .unwrap_or("")
                    .to_string(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// The columns printed for a person, per level: (heading, tag).
fn columns(level: &str) -> &'static [(&'static str, &'static str)] {
    match level {
        "studies" => &[
            ("STUDY", "0020000D"),
            ("PATIENT", "00100020"),
            ("DATE", "00080020"),
            ("MODALITIES", "00080061"),
            ("SERIES", "00201206"),
            ("INSTANCES", "00201208"),
        ],
        "series" => &[
            ("SERIES", "0020000E"),
            ("PATIENT", "00100020"),
            ("MODALITY", "00080060"),
            ("MANUFACTURER", "00080070"),
            ("DESCRIPTION", "0008103E"),
            ("INSTANCES", "00201209"),
        ],
        _ => &[
            ("SOP INSTANCE", "00080018"),
            ("SERIES", "0020000E"),
            ("PATIENT", "00100020"),
            ("MODALITY", "00080060"),
        ],
    }
}

/// `hbs search`.
pub async fn search(c: &ClientArgs, q: &Query) -> Result<()> {
    let headers: Vec<(&str, &str)> = match &q.grant {
        Some((g, p)) => vec![
            (crate::qido::GRANT_HEADER, g.as_str()),
            (crate::governance::PURPOSE_HEADER, p.as_str()),
        ],
        None => Vec::new(),
    };
    let a = c.get_with(&q.path()?, &headers).await?;
    if a.status != 200 {
        return Err(refused(&a));
    }
    let items: Vec<Value> = serde_json::from_slice(&a.body).context("the gateway's answer")?;
    let more = a.headers.contains_key("warning");
    if c.json {
        println!("{}", Value::Array(items));
        return Ok(());
    }
    let cols = columns(&q.level);
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| cols.iter().map(|(_, t)| first(i, t)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(k, (h, _))| {
            rows.iter()
                .map(|r| r[k].len())
                .max()
                .unwrap_or(0)
                .max(h.len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(cols.iter().map(|(h, _)| *h).collect()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    eprintln!(
        "{} {}{}",
        rows.len(),
        q.level,
        if more {
            " (more match: page on with --offset)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(level: &str, study: Option<&str>, series: Option<&str>, filters: &[&str]) -> Query {
        Query {
            level: level.into(),
            study: study.map(Into::into),
            series: series.map(Into::into),
            limit: Some(5),
            offset: None,
            filters: filters.iter().map(|s| s.to_string()).collect(),
            grant: None,
        }
    }

    #[test]
    fn paths_follow_qido_rs() {
        assert_eq!(
            q("studies", None, None, &["PatientID=PN-1 2"])
                .path()
                .unwrap(),
            "/dicomweb/studies?PatientID=PN-1%202&limit=5"
        );
        assert_eq!(
            q("instances", Some("2.25.1"), Some("2.25.2"), &[])
                .path()
                .unwrap(),
            "/dicomweb/studies/2.25.1/series/2.25.2/instances?limit=5"
        );
        assert!(q("studies", Some("2.25.1"), None, &[]).path().is_err());
        assert!(q("series", None, None, &["nokey"]).path().is_err());
    }
}
