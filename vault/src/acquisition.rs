//! The acquisition facts of an instance that tell what kind of series it belongs to, read
//! from its de-identified data set for the catalogue: Image Type, Scanning Sequence, Echo
//! Time, the diffusion b-value, the temporal position of dynamic series, field strength
//! and scanner model. None of them identifies anyone (PS3.15 Annex E keeps them all), and
//! they are read after de-identification, so only what is stored is read.
//!
//! The b-value comes from Diffusion b-value (0018,9087) when present, else from the
//! vendor's private element, found by its private creator rather than a fixed tag
//! (DOMAIN.md): Siemens `SIEMENS MR HEADER` element 0x0C (B_value, IS); GE
//! `GEMS_PARM_01` element 0x39 (slop_int_6, whose first value is the b-value, sometimes
//! plus 1,000,000,000); Philips `Philips Imaging DD 001` element 0x03 (b-factor, FL).
//! Those private elements are on TCIA's safe list, so de-identification keeps them.
//! Enhanced (multi-frame) MR keeps these per frame in functional groups, which this does
//! not read yet.

use dicom_core::{Tag, VR};
use serde::{Deserialize, Serialize};

use crate::dicom::{self, Element, Encoding, Value};

/// What the catalogue learns about an instance's acquisition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Acquisition {
    /// Image Type (0008,0008), values joined by `\`.
    pub image_type: String,
    /// Scanning Sequence (0018,0020), values joined by `\`.
    pub scanning_sequence: String,
    /// Echo Time (0018,0081), ms.
    pub echo_time_ms: Option<f64>,
    /// The diffusion b-value, s/mm² (standard or vendor private element).
    pub b_value: Option<f64>,
    /// Temporal Position Identifier (0020,0100).
    pub temporal_position: Option<u32>,
    /// Number of Temporal Positions (0020,0105).
    pub temporal_positions: Option<u32>,
    /// Magnetic Field Strength (0018,0087), tesla.
    pub field_strength_t: Option<f64>,
    /// Manufacturer's Model Name (0008,1090).
    pub model: String,
    /// What a Segmentation segments, from its segments' coded property types and
    /// categories (never their free-text labels): `gland` (SCT 41216001 Prostate),
    /// `lesion` (SCT 49755003 Morphologically Altered Structure, 108369006 Neoplasm,
    /// 52988006 Lesion); empty for images.
    pub segments: Vec<String>,
}

/// The code values of the items of a code sequence.
fn codes<'e>(item: &'e [Element<'_>], seq: Tag) -> Vec<&'e str> {
    match dicom::find(item, seq).map(|e| &e.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|i| dicom::text(i, Tag(0x0008, 0x0100)))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the Segment Sequence (0062,0002) of a Segmentation segments.
pub(crate) fn segments(ds: &[Element<'_>]) -> Vec<String> {
    let Some(Value::Seq(items)) = dicom::find(ds, Tag(0x0062, 0x0002)).map(|e| &e.value) else {
        return Vec::new();
    };
    let mut out = std::collections::BTreeSet::new();
    for item in items {
        let mut c = codes(item, Tag(0x0062, 0x000F));
        c.extend(codes(item, Tag(0x0062, 0x0003)));
        if c.contains(&"41216001") {
            out.insert("gland");
        }
        if c.iter()
            .any(|v| matches!(*v, "49755003" | "108369006" | "52988006"))
        {
            out.insert("lesion");
        }
    }
    out.into_iter().map(String::from).collect()
}

/// The first value of a numeric element, whatever its encoding: text (DS, IS), binary
/// (FD, FL, US, UL, SS, SL) or unknown (UN: 8 bytes read as FD, 4 as FL).
pub(crate) fn number(el: &Element<'_>, big: bool) -> Option<f64> {
    let Value::Bytes(b) = &el.value else {
        return None;
    };
    let arr = |n: usize| -> Option<Vec<u8>> {
        let mut v = b.get(..n)?.to_vec();
        if big {
            v.reverse();
        }
        Some(v)
    };
    let v = match el.vr {
        VR::DS | VR::IS => dicom::trim_text(b)
            .split('\\')
            .next()?
            .trim()
            .parse::<f64>()
            .ok()?,
        VR::FD => f64::from_le_bytes(arr(8)?.try_into().ok()?),
        VR::FL => f64::from(f32::from_le_bytes(arr(4)?.try_into().ok()?)),
        VR::US => f64::from(u16::from_le_bytes(arr(2)?.try_into().ok()?)),
        VR::SS => f64::from(i16::from_le_bytes(arr(2)?.try_into().ok()?)),
        VR::UL => f64::from(u32::from_le_bytes(arr(4)?.try_into().ok()?)),
        VR::SL => f64::from(i32::from_le_bytes(arr(4)?.try_into().ok()?)),
        VR::UN if b.len() == 8 => f64::from_le_bytes(arr(8)?.try_into().ok()?),
        VR::UN if b.len() == 4 => f64::from(f32::from_le_bytes(arr(4)?.try_into().ok()?)),
        _ => return None,
    };
    v.is_finite().then_some(v)
}

/// The element `element` of the private block that `creator` owns in `group`.
fn private<'e, 'a>(
    ds: &'e [Element<'a>],
    group: u16,
    creator: &str,
    element: u8,
) -> Option<&'e Element<'a>> {
    let block = (0x10..=0xFFu16)
        .find(|b| dicom::text(ds, Tag(group, *b)).is_some_and(|c| c.trim() == creator))?;
    dicom::find(ds, Tag(group, (block << 8) | u16::from(element)))
}

/// A b-value from a vendor's private element, given its creator, its element number in
/// the block and its first value; `None` for any other element or a value that is not a
/// b-value.
pub fn vendor_b_value(creator: &str, element: u8, first_value: f64) -> Option<f64> {
    let b = match (creator.trim(), element) {
        ("SIEMENS MR HEADER", 0x0C) | ("Philips Imaging DD 001", 0x03) => first_value,
        ("GEMS_PARM_01", 0x39) if first_value >= 1e9 => first_value - 1e9,
        ("GEMS_PARM_01", 0x39) => first_value,
        _ => return None,
    };
    (b.is_finite() && (0.0..=10_000.0).contains(&b)).then_some(b)
}

/// The vendors' private b-value elements: (group, creator, element).
const PRIVATE_B_VALUES: [(u16, &str, u8); 3] = [
    (0x0019, "SIEMENS MR HEADER", 0x0C),
    (0x0043, "GEMS_PARM_01", 0x39),
    (0x2001, "Philips Imaging DD 001", 0x03),
];

/// Reads the acquisition facts of a (de-identified) data set.
pub fn read(ds: &[Element<'_>], encoding: Encoding) -> Acquisition {
    let big = encoding == Encoding::ExplicitBe;
    let num = |t: u16, e: u16| dicom::find(ds, Tag(t, e)).and_then(|el| number(el, big));
    let text = |t: u16, e: u16| dicom::text(ds, Tag(t, e)).unwrap_or("").to_string();
    let whole = |v: Option<f64>| {
        v.filter(|v| *v >= 0.0 && *v <= f64::from(u32::MAX))
            .map(|v| v as u32)
    };
    let b_value = num(0x0018, 0x9087)
        .filter(|b| (0.0..=10_000.0).contains(b))
        .or_else(|| {
            PRIVATE_B_VALUES.iter().find_map(|(g, creator, e)| {
                let v = number(private(ds, *g, creator, *e)?, big)?;
                vendor_b_value(creator, *e, v)
            })
        });
    Acquisition {
        image_type: text(0x0008, 0x0008),
        scanning_sequence: text(0x0018, 0x0020),
        echo_time_ms: num(0x0018, 0x0081),
        b_value,
        temporal_position: whole(num(0x0020, 0x0100)),
        temporal_positions: whole(num(0x0020, 0x0105)),
        field_strength_t: num(0x0018, 0x0087),
        model: text(0x0008, 0x1090),
        segments: segments(ds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn el(g: u16, e: u16, vr: VR, bytes: Vec<u8>) -> Element<'static> {
        Element {
            tag: Tag(g, e),
            vr,
            value: Value::Bytes(Cow::Owned(bytes)),
        }
    }

    fn txt(g: u16, e: u16, vr: VR, s: &str) -> Element<'static> {
        dicom::text_element(Tag(g, e), vr, s)
    }

    #[test]
    fn the_standard_b_value_wins_and_each_vendor_s_private_one_is_read_by_creator() {
        let mut ds = vec![
            txt(0x0008, 0x0008, VR::CS, "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE"),
            txt(0x0018, 0x0020, VR::CS, "EP"),
            txt(0x0018, 0x0081, VR::DS, "63.5"),
            txt(0x0018, 0x0087, VR::DS, "3"),
            el(0x0018, 0x9087, VR::FD, 800f64.to_le_bytes().to_vec()),
        ];
        let a = read(&ds, Encoding::ExplicitLe);
        assert_eq!(a.b_value, Some(800.0));
        assert_eq!(a.echo_time_ms, Some(63.5));
        assert_eq!(a.field_strength_t, Some(3.0));
        assert_eq!(a.scanning_sequence, "EP");
        assert!(a.image_type.contains("DIFFUSION"));
        ds.pop();
        // Siemens: the creator in block 0x11 this time, not the usual 0x10.
        let mut siemens = ds.clone();
        siemens.push(txt(0x0019, 0x0011, VR::LO, "SIEMENS MR HEADER"));
        siemens.push(txt(0x0019, 0x110C, VR::IS, "1400"));
        // A decoy: element 0x0C of another creator's block.
        siemens.push(txt(0x0019, 0x0010, VR::LO, "OTHER VENDOR"));
        siemens.push(txt(0x0019, 0x100C, VR::IS, "5"));
        siemens.sort_by_key(|e| e.tag);
        assert_eq!(read(&siemens, Encoding::ExplicitLe).b_value, Some(1400.0));
        // GE: slop_int_6 with the 10^9 offset.
        let mut ge = ds.clone();
        ge.push(txt(0x0043, 0x0010, VR::LO, "GEMS_PARM_01"));
        ge.push(txt(0x0043, 0x1039, VR::IS, "1000000800\\8\\0\\0"));
        assert_eq!(read(&ge, Encoding::ExplicitLe).b_value, Some(800.0));
        // Philips: a binary float, also when the file carries it as UN.
        for vr in [VR::FL, VR::UN] {
            let mut ph = ds.clone();
            ph.push(txt(0x2001, 0x0010, VR::LO, "Philips Imaging DD 001"));
            ph.push(el(0x2001, 0x1003, vr, 1000f32.to_le_bytes().to_vec()));
            assert_eq!(
                read(&ph, Encoding::ExplicitLe).b_value,
                Some(1000.0),
                "{vr:?}"
            );
        }
        // Nothing there: no b-value.
        assert_eq!(read(&ds, Encoding::ExplicitLe).b_value, None);
    }

    #[test]
    fn a_segmentation_says_what_it_segments_by_code() {
        let code = |v: &str| {
            vec![
                txt(0x0008, 0x0100, VR::SH, v),
                txt(0x0008, 0x0102, VR::SH, "SCT"),
            ]
        };
        let seg = |cat: &str, typ: &str| {
            vec![
                el_seq(0x0062, 0x0003, vec![code(cat)]),
                txt(0x0062, 0x0005, VR::LO, "whatever the site wrote"),
                el_seq(0x0062, 0x000F, vec![code(typ)]),
            ]
        };
        let ds = vec![el_seq(
            0x0062,
            0x0002,
            vec![seg("91723000", "41216001"), seg("49755003", "108369006")],
        )];
        assert_eq!(
            read(&ds, Encoding::ExplicitLe).segments,
            vec!["gland", "lesion"]
        );
        let gland_only = vec![el_seq(0x0062, 0x0002, vec![seg("91723000", "41216001")])];
        assert_eq!(
            read(&gland_only, Encoding::ExplicitLe).segments,
            vec!["gland"]
        );
        assert!(read(&[], Encoding::ExplicitLe).segments.is_empty());
    }

    fn el_seq(g: u16, e: u16, items: Vec<Vec<Element<'static>>>) -> Element<'static> {
        Element {
            tag: Tag(g, e),
            vr: VR::SQ,
            value: Value::Seq(items),
        }
    }

    #[test]
    fn dynamic_series_and_odd_values() {
        let ds = vec![
            txt(0x0020, 0x0100, VR::IS, "12"),
            txt(0x0020, 0x0105, VR::IS, "40"),
            txt(0x0018, 0x0081, VR::DS, "not a number"),
            el(0x0018, 0x9087, VR::FD, f64::NAN.to_le_bytes().to_vec()),
        ];
        let a = read(&ds, Encoding::ExplicitLe);
        assert_eq!(
            (a.temporal_position, a.temporal_positions),
            (Some(12), Some(40))
        );
        assert_eq!(a.echo_time_ms, None);
        assert_eq!(a.b_value, None);
        assert_eq!(vendor_b_value("GEMS_ACQU_01", 0x39, 800.0), None);
        assert_eq!(vendor_b_value("SIEMENS MR HEADER", 0x0C, -1.0), None);
    }
}
