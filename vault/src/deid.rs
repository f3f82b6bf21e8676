//! De-identification of one DICOM instance: PS3.15 Annex E, as ProstateNET needs it.
//!
//! [`deidentify`] takes the bytes of an identifiable Part 10 file and returns either the
//! bytes of a pseudonymized file plus the (pseudonymized) facts the catalogue needs, a
//! quarantine verdict (burned-in annotation), or an error that names what is wrong with
//! the file and never any value from it. It does no IO.
//!
//! What is applied (and declared in the output's De-identification Method Code Sequence):
//! - the Basic Application Level Confidentiality Profile (DCM 113100), every attribute of
//!   Table E.1-1 by its action code, combined codes resolved by the attribute's type in
//!   the IOD ([`crate::tables::iod_type`]);
//! - Retain Longitudinal Temporal Information with Modified Dates (113107): every DA and
//!   DT value, listed or not, moves by the patient's shift; times of day are kept;
//! - Retain Patient Characteristics (113108): sex, age, weight, size and the other
//!   attributes the option keeps; free-text characteristics (allergies, patient state,
//!   pre-medication, special needs) still go;
//! - Clean Descriptors (113105): Series Description, Protocol Name, Study Description and
//!   Contrast/Bolus Agent are kept with every identifying value of the same instance
//!   removed from them; comments and histories go;
//! - Retain Safe Private (113111): private elements on the list generated from TCIA's
//!   knowledge base (diffusion b-values and gradients of Siemens, GE and Philips among
//!   them) and their private creators; every other private element goes;
//! - device identity only as far as manufacturer, model, field strength and sequence
//!   parameters, which the basic profile keeps anyway; serial numbers and station names go.
//!   The full Retain Device Identity option is therefore *not* declared.
//!
//! Where Table E.1-1 does not list an attribute: UIDs are replaced, dates shifted, free
//! text (LT, ST, UT: an SR's Text Value, for example) replaced by a dummy value, overlay
//! and curve groups removed whole; everything else is kept.
//!
//! Every UI value other than well-known ones (anything under the DICOM root
//! `1.2.840.10008`, and class or coding-scheme UIDs) is replaced by a keyed `2.25.` UID,
//! at any depth, so a SEG's references to its source series keep pointing at the right
//! (pseudonymized) instances.

use std::borrow::Cow;

use dicom_core::{Tag, VR};

use crate::dicom::{self, text_element, DicomError, Element, Value};
use crate::pseudonym::{Pseudonym, Pseudonymizer, SiteId};
use crate::tables;

/// Why an instance was not de-identified. Never holds a value of the instance.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DeidError {
    /// The file could not be read as DICOM.
    #[error("unreadable DICOM: {0}")]
    Dicom(#[from] DicomError),
    /// No Patient ID, so no pseudonym can be derived.
    #[error(
        "Patient ID (0010,0020) is missing or empty: the instance cannot be given a pseudonym"
    )]
    NoPatientId,
    /// No SOP Class or SOP Instance UID.
    #[error("{0} is missing: not a storable instance")]
    Missing(&'static str),
}

/// Result of de-identifying one instance.
#[derive(Debug)]
pub enum Outcome {
    /// De-identified; ready to encrypt and store.
    Accepted(Box<Accepted>),
    /// Not stored: it may carry identifying text in its pixels.
    Quarantined {
        /// The reason, naming the attribute that decided.
        reason: String,
        /// The pseudonym of the patient (to report against, never the local ID).
        pseudonym: Pseudonym,
    },
}

/// A de-identified instance and the pseudonymized facts the catalogue keeps about it.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The de-identified Part 10 file.
    pub bytes: Vec<u8>,
    /// The patient's pseudonym.
    pub pseudonym: Pseudonym,
    /// New Study Instance UID.
    pub study_uid: String,
    /// New Series Instance UID.
    pub series_uid: String,
    /// New SOP Instance UID.
    pub sop_uid: String,
    /// SOP Class UID (well-known, unchanged).
    pub sop_class: String,
    /// Transfer syntax (unchanged).
    pub transfer_syntax: String,
    /// Modality, e.g. MR or SEG.
    pub modality: String,
    /// Cleaned Series Description.
    pub series_description: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Shifted study date (YYYYMMDD), empty if none.
    pub study_date: String,
    /// The instance had no Patient ID: its pseudonym stands for its study alone.
    pub pseudonym_from_study: bool,
    /// What it says of its acquisition (for the catalogue), read from the de-identified
    /// data set.
    pub acquisition: crate::acquisition::Acquisition,
}

/// De-identifies one instance with the broker's keys, for a site.
pub fn deidentify(bytes: &[u8], site: &SiteId, keys: &Pseudonymizer) -> Result<Outcome, DeidError> {
    let inflated = dicom::inflate_if_needed(bytes)?;
    let file = dicom::parse(bytes, inflated.as_ref())?;
    let ds = file.dataset;

    let patient_id = dicom::text(&ds, Tag(0x0010, 0x0020)).unwrap_or("");
    // Without a Patient ID the instance is still de-identified, as a patient of its own
    // study (keyed by the Study Instance UID): it cannot be linked to other studies or to
    // clinical records, and the report says so.
    let pseudonym_from_study = patient_id.is_empty();
    let pseudonym = if pseudonym_from_study {
        let study = dicom::text(&ds, Tag(0x0020, 0x000D)).unwrap_or("");
        if study.is_empty() {
            return Err(DeidError::NoPatientId);
        }
        keys.pseudonym(site, &format!("study:{study}"))
    } else {
        keys.pseudonym(site, patient_id)
    };
    let sop_class = dicom::text(&ds, Tag(0x0008, 0x0016))
        .filter(|s| !s.is_empty())
        .or(file.media_sop_class.as_deref())
        .ok_or(DeidError::Missing("SOP Class UID (0008,0016)"))?
        .to_string();
    if dicom::text(&ds, Tag(0x0008, 0x0018))
        .unwrap_or("")
        .is_empty()
    {
        return Err(DeidError::Missing("SOP Instance UID (0008,0018)"));
    }

    if let Some(reason) = burned_in(&ds, &sop_class) {
        return Ok(Outcome::Quarantined { reason, pseudonym });
    }

    let mut ctx = Ctx {
        keys,
        sop_class: &sop_class,
        shift: keys.date_shift_days(&pseudonym),
        scrub: Vec::new(),
    };
    collect_identifying(&ds, &sop_class, &mut ctx.scrub);
    if !patient_id.is_empty() {
        ctx.scrub.push(patient_id.as_bytes().to_ascii_uppercase());
    }
    ctx.scrub.sort_by_key(|t| std::cmp::Reverse(t.len()));
    ctx.scrub.dedup();

    let mut out = ctx.dataset(ds, 0);

    // Patient Name and Patient ID carry the pseudonym.
    dicom::put(
        &mut out,
        text_element(Tag(0x0010, 0x0010), VR::PN, pseudonym.as_str()),
    );
    dicom::put(
        &mut out,
        text_element(Tag(0x0010, 0x0020), VR::LO, pseudonym.as_str()),
    );
    declare(&mut out);

    let get = |t: u16, e: u16| dicom::text(&out, Tag(t, e)).unwrap_or("").to_string();
    let sop_uid = get(0x0008, 0x0018);
    let accepted = Accepted {
        acquisition: crate::acquisition::read(&out, file.encoding),
        study_uid: get(0x0020, 0x000D),
        series_uid: get(0x0020, 0x000E),
        modality: get(0x0008, 0x0060),
        series_description: get(0x0008, 0x103E),
        manufacturer: get(0x0008, 0x0070),
        study_date: get(0x0008, 0x0020),
        transfer_syntax: file.transfer_syntax.clone(),
        bytes: dicom::write_file(
            &out,
            &file.transfer_syntax,
            &sop_class,
            &sop_uid,
            IMPLEMENTATION_UID,
            file.encoding,
            file.deflated,
        )?,
        sop_uid,
        sop_class,
        pseudonym,
        pseudonym_from_study,
    };
    Ok(Outcome::Accepted(Box::new(accepted)))
}

/// hbs's Implementation Class UID, written in every file meta header it produces.
pub const IMPLEMENTATION_UID: &str = "2.25.229538016398231476905823445176216613313";

/// SOP classes whose instances usually carry text in the pixels when they do not say
/// otherwise: secondary capture, ultrasound, encapsulated documents, video.
fn usually_burned_in(sop_class: &str) -> bool {
    sop_class.starts_with("1.2.840.10008.5.1.4.1.1.7") // Secondary Capture family
        || sop_class.starts_with("1.2.840.10008.5.1.4.1.1.6.") // Ultrasound
        || sop_class.starts_with("1.2.840.10008.5.1.4.1.1.3.1") // US multi-frame
        || sop_class.starts_with("1.2.840.10008.5.1.4.1.1.104.") // Encapsulated documents
        || sop_class.starts_with("1.2.840.10008.5.1.4.1.1.77.1.1.1") // Video endoscopic
}

fn burned_in(ds: &[Element<'_>], sop_class: &str) -> Option<String> {
    let has_pixels = dicom::find(ds, dicom::PIXEL_DATA).is_some()
        || sop_class.starts_with("1.2.840.10008.5.1.4.1.1.104.");
    match dicom::text(ds, Tag(0x0028, 0x0301)) {
        Some(v) if v.eq_ignore_ascii_case("YES") => Some(
            "Burned In Annotation (0028,0301) is YES: pixels may show identifying text".into(),
        ),
        Some(v) if v.eq_ignore_ascii_case("NO") => None,
        _ if has_pixels && usually_burned_in(sop_class) => Some(format!(
            "no Burned In Annotation (0028,0301) and SOP class {sop_class} usually carries burned-in text"
        )),
        _ => None,
    }
}

/// Attributes whose class-like UIDs are never replaced even outside the DICOM root
/// (coding schemes such as SNOMED's 2.16.840.1.113883.6.96, mapping resources, ...).
const WELL_KNOWN_UID_TAGS: &[(u16, u16)] = &[
    (0x0002, 0x0002),
    (0x0002, 0x0010),
    (0x0002, 0x0012),
    (0x0004, 0x1510),
    (0x0004, 0x1512),
    (0x0008, 0x0016),
    (0x0008, 0x001A),
    (0x0008, 0x001B),
    (0x0008, 0x0062),
    (0x0008, 0x010C),
    (0x0008, 0x0117),
    (0x0008, 0x0118),
    (0x0008, 0x1150),
];

/// Whether a UID value is well known (a class, transfer syntax, coding scheme...) and so
/// identifies nothing.
pub fn well_known_uid(tag: Tag, uid: &str) -> bool {
    uid.starts_with("1.2.840.10008.") || WELL_KNOWN_UID_TAGS.contains(&(tag.group(), tag.element()))
}

/// Descriptors kept (cleaned) under the Clean Descriptors option: what tells T2W, DWI,
/// ADC and DCE apart, and the contrast agent of a DCE series.
const KEPT_DESCRIPTORS: &[(u16, u16)] = &[
    (0x0008, 0x103E), // Series Description
    (0x0018, 0x1030), // Protocol Name
    (0x0008, 0x1030), // Study Description
    (0x0018, 0x0010), // Contrast/Bolus Agent
];

/// The single action hbs applies to a listed attribute, options taken into account.
pub fn effective_action(tag: Tag, vr: VR, sop_class: &str) -> Option<&'static str> {
    let row = tables::profile_row(tag)?;
    if !row.rtn_long_modif_dates.is_empty() && matches!(vr, VR::DA | VR::DT | VR::TM) {
        return Some("C");
    }
    if row.rtn_pat_chars == "K" {
        return Some("K");
    }
    if !row.clean_desc.is_empty() && KEPT_DESCRIPTORS.contains(&(tag.group(), tag.element())) {
        return Some("C");
    }
    Some(tables::resolve_combined(
        row.basic,
        tables::iod_type(tag, sop_class),
    ))
}

struct Ctx<'k> {
    keys: &'k Pseudonymizer,
    sop_class: &'k str,
    shift: i64,
    /// Upper-cased identifying values of this instance, longest first.
    scrub: Vec<Vec<u8>>,
}

fn is_text(vr: VR) -> bool {
    matches!(
        vr,
        VR::PN | VR::LO | VR::SH | VR::LT | VR::ST | VR::UT | VR::UC | VR::AE | VR::DA | VR::DT
    )
}

/// Gathers the identifying values of an instance (any depth): what the profile removes or
/// replaces, split into components for names, so they can be scrubbed from descriptors.
fn collect_identifying(ds: &[Element<'_>], sop_class: &str, out: &mut Vec<Vec<u8>>) {
    for el in ds {
        match &el.value {
            Value::Seq(items) => {
                for it in items {
                    collect_identifying(it, sop_class, out);
                }
            }
            Value::Bytes(b) if is_text(el.vr) => {
                let action = effective_action(el.tag, el.vr, sop_class);
                let identifying = matches!(action, Some("X" | "Z" | "D" | "U"))
                    || (action == Some("C") && matches!(el.vr, VR::DA | VR::DT));
                if !identifying {
                    continue;
                }
                for v in b.split(|&c| c == b'\\') {
                    // Bytes, not text: values in ISO_IR 100 and other single-byte
                    // character sets are not UTF-8, and must be found all the same.
                    let v = dicom::trim_bytes(v);
                    push_token(out, v);
                    if el.vr == VR::PN {
                        for part in v.split(|c| matches!(c, b'^' | b'=' | b' ')) {
                            push_token(out, part);
                        }
                    }
                    if el.vr == VR::DA && v.len() == 8 {
                        // The same date written the ways people type it.
                        let t = dicom::trim_text(v);
                        if t.len() == 8 {
                            let (y, m, d) = (&t[0..4], &t[4..6], &t[6..8]);
                            for f in [
                                format!("{y}-{m}-{d}"),
                                format!("{d}.{m}.{y}"),
                                format!("{d}/{m}/{y}"),
                                format!("{m}/{d}/{y}"),
                            ] {
                                push_token(out, f.as_bytes());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn push_token(out: &mut Vec<Vec<u8>>, v: &[u8]) {
    let v = dicom::trim_bytes(v);
    if v.len() >= 2 {
        out.push(v.to_ascii_uppercase());
    }
}

impl Ctx<'_> {
    fn dataset<'a>(&self, ds: Vec<Element<'a>>, depth: usize) -> Vec<Element<'a>> {
        // Private creators of this level: block (group, xx) -> creator string.
        let creators: Vec<(u16, u8, String)> = ds
            .iter()
            .filter(|e| e.tag.group() % 2 == 1 && (0x10..=0xFF).contains(&e.tag.element()))
            .filter_map(|e| match &e.value {
                Value::Bytes(b) => Some((
                    e.tag.group(),
                    e.tag.element() as u8,
                    dicom::trim_text(b).to_string(),
                )),
                _ => None,
            })
            .collect();
        let creator_of = |g: u16, block: u8| {
            creators
                .iter()
                .find(|(cg, cb, _)| *cg == g && *cb == block)
                .map(|(_, _, c)| c.as_str())
        };
        let mut kept_blocks: Vec<(u16, u8)> = Vec::new();
        let mut out: Vec<Element<'a>> = Vec::with_capacity(ds.len());
        for el in ds {
            let (g, e) = (el.tag.group(), el.tag.element());
            if g % 2 == 1 {
                if e < 0x1000 {
                    continue; // creators are added back below for the blocks kept
                }
                let block = (e >> 8) as u8;
                let safe = creator_of(g, block)
                    .map(|c| tables::private_is_safe(g, c, (e & 0xFF) as u8))
                    .unwrap_or(false);
                if safe {
                    kept_blocks.push((g, block));
                    out.push(self.keep(el, depth));
                }
                continue;
            }
            if g == 0x0002 || g == 0xFFFC || e == 0x0000 {
                continue; // meta in the data set, trailing padding, group lengths
            }
            if g & 0xFF00 == 0x6000 || g & 0xFF00 == 0x5000 {
                // Overlays and curves: Table E.1-1 removes their data and comments; an
                // overlay plane without its data is invalid, and overlays can carry
                // burned-in text, so the whole repeating group goes.
                continue;
            }
            if let Some(el) = self.element(el, depth) {
                out.push(el);
            }
        }
        // Private creators of the kept blocks, in tag order.
        for (g, block, c) in &creators {
            if kept_blocks.contains(&(*g, *block)) {
                dicom::put(&mut out, text_element(Tag(*g, *block as u16), VR::LO, c));
            }
        }
        out
    }

    /// Keeps an element, still de-identifying what nests inside it.
    fn keep<'a>(&self, mut el: Element<'a>, depth: usize) -> Element<'a> {
        if let Value::Seq(items) = el.value {
            el.value = Value::Seq(
                items
                    .into_iter()
                    .map(|it| self.dataset(it, depth + 1))
                    .collect(),
            );
        }
        el
    }

    fn element<'a>(&self, mut el: Element<'a>, depth: usize) -> Option<Element<'a>> {
        let action = effective_action(el.tag, el.vr, self.sop_class);
        match action {
            None => Some(match el.vr {
                VR::UI => self.remap_uids(el),
                VR::DA | VR::DT => self.shift_dates(el),
                // Free text the table does not list (an SR content item's Text Value, for
                // example) cannot be vetted: it is replaced by a dummy value, which keeps
                // content items valid.
                VR::LT | VR::ST | VR::UT => self.dummy(el, depth),
                _ => self.keep(el, depth),
            }),
            Some("X") => None,
            Some("K") => Some(self.keep(el, depth)),
            Some("Z") => {
                el.value = match el.value {
                    Value::Seq(_) => Value::Seq(Vec::new()),
                    _ => Value::Bytes(Cow::Borrowed(&[])),
                };
                Some(el)
            }
            Some("D") => Some(self.dummy(el, depth)),
            Some("U") => Some(match el.value {
                Value::Seq(_) => self.keep(el, depth),
                _ => self.remap_uids(el),
            }),
            Some("C") => match el.vr {
                VR::DA | VR::DT => Some(self.shift_dates(el)),
                VR::TM => Some(el),
                _ => match el.value {
                    Value::Bytes(b) => {
                        el.value = Value::Bytes(Cow::Owned(self.scrubbed(&b, el.vr)));
                        Some(el)
                    }
                    _ => None,
                },
            },
            Some(_) => None,
        }
    }

    fn dummy<'a>(&self, mut el: Element<'a>, depth: usize) -> Element<'a> {
        let v: &[u8] = match el.vr {
            VR::SQ => return self.keep(el, depth),
            VR::UI => return self.remap_uids(el),
            VR::DA => return self.shift_dates(el),
            VR::DT => b"19000101000000",
            VR::TM => b"000000",
            VR::IS | VR::DS => b"0 ",
            VR::US | VR::SS => &[0, 0],
            VR::UL | VR::SL | VR::FL | VR::AT => &[0, 0, 0, 0],
            VR::FD | VR::SV | VR::UV => &[0; 8],
            VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => &[0, 0],
            _ => b"ANONYMIZED",
        };
        el.value = Value::Bytes(Cow::Owned(v.to_vec()));
        el
    }

    fn remap_uids<'a>(&self, mut el: Element<'a>) -> Element<'a> {
        if let Value::Bytes(b) = &el.value {
            let s = dicom::trim_text(b);
            if s.is_empty() {
                return el;
            }
            let mapped: Vec<String> = s
                .split('\\')
                .map(|u| {
                    let u = u.trim_matches(|c| c == ' ' || c == '\0');
                    if u.is_empty() || well_known_uid(el.tag, u) {
                        u.to_string()
                    } else {
                        self.keys.uid(u)
                    }
                })
                .collect();
            el.value = Value::Bytes(Cow::Owned(dicom::padded(
                VR::UI,
                mapped.join("\\").into_bytes(),
            )));
        }
        el
    }

    fn shift_dates<'a>(&self, mut el: Element<'a>) -> Element<'a> {
        if let Value::Bytes(b) = &el.value {
            let s = dicom::trim_text(b);
            let shifted: Vec<String> = s
                .split('\\')
                .map(|v| match el.vr {
                    VR::DA => v
                        .split('-')
                        .map(|d| shift_da(d, self.shift).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("-"),
                    _ => shift_dt(v, self.shift).unwrap_or_default(),
                })
                .collect();
            let joined = shifted.join("\\");
            let joined = if joined.chars().all(|c| c == '\\' || c == '-') {
                String::new()
            } else {
                joined
            };
            el.value = Value::Bytes(Cow::Owned(dicom::padded(el.vr, joined.into_bytes())));
        }
        el
    }

    fn scrubbed(&self, v: &[u8], vr: VR) -> Vec<u8> {
        let mut s = v.to_vec();
        for tok in &self.scrub {
            loop {
                let upper = s.to_ascii_uppercase();
                match find_sub(&upper, tok) {
                    Some(i) => {
                        s.drain(i..i + tok.len());
                    }
                    None => break,
                }
            }
        }
        // Collapse the gaps left where values were cut out.
        let mut t: Vec<u8> = Vec::with_capacity(s.len());
        for &c in dicom::trim_bytes(&s) {
            if !(c == b' ' && t.last() == Some(&b' ')) {
                t.push(c);
            }
        }
        dicom::padded(vr, t)
    }
}

fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Shifts a DA value (YYYYMMDD) by `days`; None when it is not a full date.
pub fn shift_da(v: &str, days: i64) -> Option<String> {
    let v = v.trim();
    if v.len() != 8 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let y: i32 = v[0..4].parse().ok()?;
    let m: u8 = v[4..6].parse().ok()?;
    let d: u8 = v[6..8].parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
    let s = date.checked_add(time::Duration::days(days))?;
    Some(format!(
        "{:04}{:02}{:02}",
        s.year(),
        u8::from(s.month()),
        s.day()
    ))
}

/// Shifts the date part of a DT value, keeping time and offset; None when it has no
/// full date.
pub fn shift_dt(v: &str, days: i64) -> Option<String> {
    let v = v.trim();
    if v.len() < 8 {
        return None;
    }
    let date = shift_da(v.get(0..8)?, days)?;
    Some(format!("{date}{}", &v[8..]))
}

fn code_item(value: &str, meaning: &str) -> Vec<Element<'static>> {
    vec![
        text_element(Tag(0x0008, 0x0100), VR::SH, value),
        text_element(Tag(0x0008, 0x0102), VR::SH, "DCM"),
        text_element(Tag(0x0008, 0x0104), VR::LO, meaning),
    ]
}

/// The CID 7050 codes hbs declares: the profile and each option applied.
pub const METHOD_CODES: &[(&str, &str)] = &[
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    ("113108", "Retain Patient Characteristics Option"),
    ("113111", "Retain Safe Private Option"),
];

fn declare(out: &mut Vec<Element<'_>>) {
    dicom::put(out, text_element(Tag(0x0012, 0x0062), VR::CS, "YES"));
    dicom::put(
        out,
        text_element(
            Tag(0x0012, 0x0063),
            VR::LO,
            "hbs vault: PS3.15 E.1-1 Basic Profile\\Modified Dates, Patient Characteristics\\Clean Descriptors, Safe Private (TCIA)\\Device: model and parameters only",
        ),
    );
    dicom::put(
        out,
        Element {
            tag: Tag(0x0012, 0x0064),
            vr: VR::SQ,
            value: Value::Seq(METHOD_CODES.iter().map(|(v, m)| code_item(v, m)).collect()),
        },
    );
    dicom::put(out, text_element(Tag(0x0028, 0x0303), VR::CS, "MODIFIED"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_by_whole_days_and_keep_time() {
        assert_eq!(shift_da("20200301", -1).as_deref(), Some("20200229"));
        assert_eq!(shift_da("2020", -1), None);
        assert_eq!(
            shift_dt("20200301120000.5+0100", -1).as_deref(),
            Some("20200229120000.5+0100")
        );
        assert_eq!(shift_da("20201332", -1), None);
    }

    #[test]
    fn options_change_the_action() {
        let mr = "1.2.840.10008.5.1.4.1.1.4";
        // Retain Patient Characteristics keeps sex, age, weight, size.
        assert_eq!(effective_action(Tag(0x0010, 0x0040), VR::CS, mr), Some("K"));
        assert_eq!(effective_action(Tag(0x0010, 0x1010), VR::AS, mr), Some("K"));
        assert_eq!(effective_action(Tag(0x0010, 0x1030), VR::DS, mr), Some("K"));
        assert_eq!(effective_action(Tag(0x0010, 0x1020), VR::DS, mr), Some("K"));
        // Allergies: free text, removed although the option lists it as C.
        assert_eq!(effective_action(Tag(0x0010, 0x2110), VR::LO, mr), Some("X"));
        // Dates are cleaned (shifted); birth date is emptied (Z, no option).
        assert_eq!(effective_action(Tag(0x0008, 0x0020), VR::DA, mr), Some("C"));
        assert_eq!(effective_action(Tag(0x0010, 0x0030), VR::DA, mr), Some("Z"));
        // Descriptors kept cleaned, comments removed.
        assert_eq!(effective_action(Tag(0x0008, 0x103E), VR::LO, mr), Some("C"));
        assert_eq!(effective_action(Tag(0x0018, 0x1030), VR::LO, mr), Some("C"));
        assert_eq!(effective_action(Tag(0x0020, 0x4000), VR::LT, mr), Some("X"));
        // Device: serial numbers and station names go; manufacturer is not listed.
        assert_eq!(effective_action(Tag(0x0018, 0x1000), VR::LO, mr), Some("X"));
        assert_eq!(effective_action(Tag(0x0008, 0x1010), VR::SH, mr), Some("X"));
        assert_eq!(effective_action(Tag(0x0008, 0x0070), VR::LO, mr), None);
        assert_eq!(effective_action(Tag(0x0008, 0x1090), VR::LO, mr), None);
        assert_eq!(effective_action(Tag(0x0018, 0x0087), VR::DS, mr), None);
    }

    #[test]
    fn descriptors_are_cleaned_in_single_byte_character_sets() {
        use std::borrow::Cow;
        let keys = Pseudonymizer::new(&[1u8; 32]).unwrap();
        let site = SiteId::new("S").unwrap();
        let ds = vec![
            text_element(Tag(0x0008, 0x0005), VR::CS, "ISO_IR 100"),
            text_element(Tag(0x0008, 0x0016), VR::UI, "1.2.840.10008.5.1.4.1.1.4"),
            text_element(Tag(0x0008, 0x0018), VR::UI, "1.2.3.4"),
            Element {
                tag: Tag(0x0008, 0x103E),
                vr: VR::LO,
                value: Value::Bytes(Cow::Owned(b"Ax T2 FRFSE FERREIRA M\xdcLLER".to_vec())),
            },
            Element {
                tag: Tag(0x0010, 0x0010),
                vr: VR::PN,
                value: Value::Bytes(Cow::Owned(b"FERREIRA^JO\xc3O".to_vec())),
            },
            text_element(Tag(0x0010, 0x0020), VR::LO, "ID9"),
        ];
        let f = dicom::write_file(
            &ds,
            dicom::ts::EXPLICIT_LE,
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.3.4",
            "1.2",
            dicom::Encoding::ExplicitLe,
            false,
        )
        .unwrap();
        let Outcome::Accepted(a) = deidentify(&f, &site, &keys).unwrap() else {
            panic!()
        };
        let out = dicom::parse(&a.bytes, None).unwrap();
        let Some(Element {
            value: Value::Bytes(d),
            ..
        }) = dicom::find(&out.dataset, Tag(0x0008, 0x103E))
        else {
            panic!()
        };
        // The surname goes; the rest (Latin-1 included) stays.
        assert_eq!(dicom::trim_bytes(d), b"Ax T2 FRFSE M\xdcLLER");
    }
}
