//! The Casbin model, the shape of a decision's request, and the pure logic around it:
//! cohort scopes and why a request was denied. No IO here.
//!
//! One model serves two kinds of rules:
//!
//! - **role rules**: `p, role:ROLE, *, METHOD /route, call, *, *`: which role may call
//!   which route (the gateway's default policy, changed only through an approved policy
//!   request);
//! - **grant rules**: `p, SUBJECT, grant:ID, SCOPE, ACTION, PURPOSE, UNTIL`: what one
//!   person may do under one approved request: the cohort `SCOPE`, the `ACTION`, for the
//!   `PURPOSE`, until the instant `UNTIL` (milliseconds since 1970, zero-padded to 16
//!   digits so that the matcher compares them as text).
//!
//! The role comes from the verified certificate (the PKI is the role store), so the model
//! needs no `g` section: `p.sub` matches either the subject itself or its role. Domains
//! are `*` (the platform) or `grant:ID`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The Casbin model (PERM). Default deny: only a matching `allow` rule allows.
pub const MODEL: &str = r#"[request_definition]
r = sub, role, dom, obj, act, purpose, now

[policy_definition]
p = sub, dom, obj, act, purpose, until

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = (p.sub == r.sub || p.sub == r.role) && (p.dom == "*" || p.dom == r.dom) && (p.act == "*" || p.act == r.act) && (p.purpose == "*" || p.purpose == r.purpose) && (p.until == "*" || r.now < p.until) && scopeMatch(r.obj, p.obj)
"#;

/// The name under which [`scope_match`] is registered in the matcher.
pub const SCOPE_FN: &str = "scopeMatch";

/// Width of the zero-padded millisecond times in rules and requests.
const TIME_WIDTH: usize = 16;

/// A time as the model compares it: milliseconds since 1970, zero-padded.
pub fn time_key(ms: u64) -> String {
    format!("{ms:0TIME_WIDTH$}")
}

/// Reads back a [`time_key`].
pub fn parse_time_key(s: &str) -> Option<u64> {
    if s.len() == TIME_WIDTH {
        s.parse().ok()
    } else {
        None
    }
}

/// What is asked: may `sub` (with `role`) do `act` on `obj` in `dom` for `purpose` at `now`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The caller's subject (its SPIFFE ID: stable across certificate renewals).
    pub sub: String,
    /// `role:ROLE`, from the verified certificate.
    pub role: String,
    /// `*` for platform routes, `grant:ID` for work under a grant.
    pub dom: String,
    /// `METHOD /route` for a route; a cohort scope (`cohort:...`) for data.
    pub obj: String,
    /// `call` for a route; `search`, `run`, ... under a grant.
    pub act: String,
    /// The purpose the caller declares (empty when none).
    pub purpose: String,
    /// Now, in milliseconds since 1970.
    pub now_ms: u64,
}

impl Query {
    /// A call of a platform route.
    pub fn route(sub: &str, role: &str, method: &str, route: &str, now_ms: u64) -> Self {
        Query {
            sub: sub.into(),
            role: format!("role:{role}"),
            dom: "*".into(),
            obj: format!("{method} {route}"),
            act: "call".into(),
            purpose: String::new(),
            now_ms,
        }
    }

    /// The request values in the order of the model's `r` line.
    pub fn values(&self) -> Vec<String> {
        vec![
            self.sub.clone(),
            self.role.clone(),
            self.dom.clone(),
            self.obj.clone(),
            self.act.clone(),
            self.purpose.clone(),
            time_key(self.now_ms),
        ]
    }
}

/// One `p` rule, field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// A subject or `role:ROLE`.
    pub sub: String,
    /// `*` or `grant:ID`.
    pub dom: String,
    /// `METHOD /route`, a scope (`cohort:...`) or `*`.
    pub obj: String,
    /// The action, or `*`.
    pub act: String,
    /// The purpose, or `*`.
    pub purpose: String,
    /// A [`time_key`], or `*` for no end.
    pub until: String,
}

impl Rule {
    /// The rule's values in the order of the model's `p` line.
    pub fn values(&self) -> Vec<String> {
        self.fields().to_vec()
    }

    /// The same, as the six columns of a stored rule.
    pub fn fields(&self) -> [String; 6] {
        [
            self.sub.clone(),
            self.dom.clone(),
            self.obj.clone(),
            self.act.clone(),
            self.purpose.clone(),
            self.until.clone(),
        ]
    }

    /// A rule from its values; `None` unless there are exactly six.
    pub fn from_values(v: &[String]) -> Option<Self> {
        match v {
            [sub, dom, obj, act, purpose, until] => Some(Rule {
                sub: sub.clone(),
                dom: dom.clone(),
                obj: obj.clone(),
                act: act.clone(),
                purpose: purpose.clone(),
                until: until.clone(),
            }),
            _ => None,
        }
    }

    /// The rule as Casbin's CSV policy line shows it (`p, sub, dom, ...`).
    pub fn line(&self) -> String {
        format!("p, {}", self.values().join(", "))
    }

    /// A role rule admitting `role` to `METHOD /route`.
    pub fn route(role: &str, method: &str, route: &str) -> Self {
        Rule {
            sub: format!("role:{role}"),
            dom: "*".into(),
            obj: format!("{method} {route}"),
            act: "call".into(),
            purpose: "*".into(),
            until: "*".into(),
        }
    }
}

/// A cohort definition (the governance issue's language): every field optional, absent
/// means any. Unknown fields are refused, so a misspelt restriction is never silently
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Site codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<Vec<String>>,
    /// ISO 3166 country codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
    /// `siemens`, `ge`, `philips`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendors: Option<Vec<String>>,
    /// Sequences present: `T2W`, `DWI`, `ADC`, `DCE` (and `SEG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<Vec<String>>,
    /// `baseline`, `follow-up` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studies: Option<String>,
    /// `retrospective` or `prospective`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `fine-tuning` or `external-validation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Only annotated (segmented) cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated: Option<bool>,
}

fn check_one_of(field: &str, v: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "cohort field {field}: must be one of {}",
            allowed.join(", ")
        ))
    }
}

fn check_label(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "cohort field {field}: each value must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'"
        ));
    }
    Ok(())
}

/// A JSON input's error as a message that names what is wrong and where, never what was
/// written: serde's own message quotes the input (a value, or an unknown key, could be
/// anything the sender put there), and these messages reach the audit log. An unknown
/// key is answered with the keys that are expected; a missing one by its name.
pub fn json_error(what: &str, e: &serde_json::Error) -> String {
    let m = e.to_string();
    let kind = if e.classify() != serde_json::error::Category::Data {
        "not JSON of the expected form".to_string()
    } else if m.starts_with("unknown field") {
        match m.split_once(", expected ") {
            Some((_, expected)) => format!(
                "an unknown field (expected {})",
                expected
                    .rsplit_once(" at line")
                    .map_or(expected, |(a, _)| a)
            ),
            None => "an unknown field".into(),
        }
    } else if m.starts_with("missing field") {
        format!("missing field {}", m.split('`').nth(1).unwrap_or("?"))
    } else {
        "a field has the wrong type or value".into()
    };
    format!("{what}: {kind} (line {}, column {})", e.line(), e.column())
}

impl Cohort {
    /// Parses and checks a cohort definition; the error names the field at fault.
    pub fn parse(json: &str) -> Result<Self, String> {
        let c: Cohort =
            serde_json::from_str(json).map_err(|e| json_error("cohort definition", &e))?;
        c.check()?;
        Ok(c)
    }

    /// Checks every value against its field's vocabulary.
    pub fn check(&self) -> Result<(), String> {
        for (field, list) in [
            ("sites", &self.sites),
            ("countries", &self.countries),
            ("vendors", &self.vendors),
            ("sequences", &self.sequences),
        ] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(format!(
                        "cohort field {field}: an empty list matches nothing; leave the field out to mean any"
                    ));
                }
                for v in list {
                    check_label(field, v)?;
                    match field {
                        "vendors" => check_one_of(field, v, &["siemens", "ge", "philips"])?,
                        "sequences" => {
                            check_one_of(field, v, &["T2W", "DWI", "ADC", "DCE", "SEG"])?
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(s) = &self.studies {
            check_one_of("studies", s, &["baseline", "follow-up", "all"])?;
        }
        if let Some(s) = &self.origin {
            check_one_of("origin", s, &["retrospective", "prospective"])?;
        }
        if let Some(s) = &self.split {
            check_one_of("split", s, &["fine-tuning", "external-validation"])?;
        }
        Ok(())
    }

    /// The cohort as a rule's scope: `cohort:` then `key=v1|v2` restrictions joined by
    /// `;`, in a fixed order. Fields left out (any) do not appear.
    pub fn scope(&self) -> String {
        let mut parts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, list) in [
            ("site", &self.sites),
            ("country", &self.countries),
            ("vendor", &self.vendors),
            ("sequence", &self.sequences),
        ] {
            if let Some(l) = list {
                let mut l = l.clone();
                l.sort();
                l.dedup();
                parts.insert(k, l);
            }
        }
        if let Some(s) = self.studies.as_ref().filter(|s| *s != "all") {
            parts.insert("studies", vec![s.clone()]);
        }
        if let Some(s) = &self.origin {
            parts.insert("origin", vec![s.clone()]);
        }
        if let Some(s) = &self.split {
            parts.insert("split", vec![s.clone()]);
        }
        if self.annotated == Some(true) {
            parts.insert("annotated", vec!["true".into()]);
        }
        let body: Vec<String> = parts
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.join("|")))
            .collect();
        format!("cohort:{}", body.join(";"))
    }
}

/// A resource's (or a query's) attributes as a request's object: `cohort:` then
/// `key=value` pairs joined by `;`. Only the attributes the caller narrows to appear.
pub fn resource_scope(attrs: &[(&str, &str)]) -> String {
    let body: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("cohort:{}", body.join(";"))
}

fn parse_scope(s: &str) -> Option<Vec<(&str, &str)>> {
    let body = s.strip_prefix("cohort:")?;
    if body.is_empty() {
        return Some(Vec::new());
    }
    body.split(';').map(|kv| kv.split_once('=')).collect()
}

/// Whether a request's object falls within a rule's object: equal, the rule's `*`, or
/// (for cohort scopes) every attribute the request names is one the rule allows. A
/// request naming a value outside the rule's list is out; one naming nothing the rule
/// restricts is within (the handler then confines its answer to the rule's scope).
pub fn scope_match(request_obj: &str, rule_obj: &str) -> bool {
    scope_mismatch(request_obj, rule_obj).is_none()
}

/// Why [`scope_match`] fails, naming the attribute: `None` when it matches.
pub fn scope_mismatch(request_obj: &str, rule_obj: &str) -> Option<String> {
    if rule_obj == "*" || request_obj == rule_obj {
        return None;
    }
    let (Some(req), Some(rule)) = (parse_scope(request_obj), parse_scope(rule_obj)) else {
        return Some("a different object".into());
    };
    for (k, v) in req {
        if let Some((_, allowed)) = rule.iter().find(|(rk, _)| *rk == k) {
            if !allowed.split('|').any(|a| a == v) {
                return Some(format!("{k} {v} is outside the granted cohort"));
            }
        }
    }
    None
}

/// Why no rule of `rules` allows `q`: the closest rule (the one of the caller in the
/// query's domain that fails on the fewest conditions) and what it fails on. Mirrors the
/// matcher of [`MODEL`]; a test checks the two agree.
pub fn why_denied(rules: &[Rule], q: &Query) -> String {
    let now = time_key(q.now_ms);
    let mut best: Option<(usize, &Rule, Vec<String>)> = None;
    for r in rules {
        if !(r.sub == q.sub || r.sub == q.role) || !(r.dom == "*" || r.dom == q.dom) {
            continue;
        }
        let mut fails = Vec::new();
        if !(r.act == "*" || r.act == q.act) {
            fails.push(format!("action {} is not granted (only {})", q.act, r.act));
        }
        if !(r.purpose == "*" || r.purpose == q.purpose) {
            fails.push(if q.purpose.is_empty() {
                "no purpose was declared".to_string()
            } else {
                "the declared purpose is not the granted one".to_string()
            });
        }
        if !(r.until == "*" || now < r.until) {
            fails.push(match parse_time_key(&r.until) {
                Some(ms) => format!("it ended at {ms} ms since 1970"),
                None => "it has ended".into(),
            });
        }
        if let Some(why) = scope_mismatch(&q.obj, &r.obj) {
            fails.push(why);
        }
        if fails.is_empty() {
            return "allowed".into();
        }
        if best.as_ref().is_none_or(|(n, _, _)| fails.len() < *n) {
            best = Some((fails.len(), r, fails));
        }
    }
    match best {
        Some((_, r, fails)) => format!(
            "default deny: the nearest rule [{}] does not apply: {}",
            r.line(),
            fails.join("; ")
        ),
        None if q.dom == "*" => format!("default deny: no rule admits {} to {}", q.role, q.obj),
        None => format!("default deny: {} holds no rule in {}", q.sub, q.dom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_narrow_and_widen_as_documented() {
        let c = Cohort::parse(r#"{"sites":["SITE_B","SITE_A"],"vendors":["ge"],"studies":"all"}"#)
            .unwrap();
        assert_eq!(c.scope(), "cohort:site=SITE_A|SITE_B;vendor=ge");
        let rule = c.scope();
        assert!(scope_match("cohort:", &rule));
        assert!(scope_match("cohort:site=SITE_A", &rule));
        assert!(scope_match("cohort:site=SITE_B;vendor=ge", &rule));
        assert!(!scope_match("cohort:site=SITE_C", &rule));
        assert!(!scope_match("cohort:site=SITE_A;vendor=siemens", &rule));
        // Attributes the rule does not restrict are free.
        assert!(scope_match("cohort:sequence=T2W", &rule));
        assert_eq!(
            scope_mismatch("cohort:site=SITE_C", &rule).unwrap(),
            "site SITE_C is outside the granted cohort"
        );
        assert!(scope_match("GET /x", "*"));
        assert!(!scope_match("GET /x", "GET /y"));
    }

    #[test]
    fn bad_cohorts_name_the_field() {
        for (json, needle) in [
            (
                r#"{"site":["A"]}"#,
                "an unknown field (expected one of `sites`",
            ),
            (r#"{"vendors":["canon"]}"#, "vendors"),
            (r#"{"studies":"some"}"#, "studies"),
            (r#"{"sites":[]}"#, "empty list"),
            (r#"{"sites":"A"}"#, "wrong type"),
            (r#"[1]"#, "wrong type"),
            // The unknown key itself is never echoed.
            (r#"{"Jane Doe":1}"#, "an unknown field"),
            (r#"{"sites":["A;B"]}"#, "sites"),
            ("nope", "not JSON of the expected form"),
        ] {
            let e = Cohort::parse(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
            assert!(!e.contains("Jane"), "{e}");
        }
        assert_eq!(Cohort::parse("{}").unwrap().scope(), "cohort:");
    }

    #[test]
    fn time_keys_order_as_numbers() {
        assert!(time_key(999) < time_key(1000));
        assert_eq!(
            parse_time_key(&time_key(1_790_000_000_000)),
            Some(1_790_000_000_000)
        );
        assert_eq!(parse_time_key("12"), None);
    }
}
