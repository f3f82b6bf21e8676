//! The sequence type of an mpMRI series, from its DICOM attributes.
//!
//! The series description is free text that each site and scanner writes its own way
//! (`t2_tse_tra`, `Ax T2 FRFSE`, `T2W_TSE_ax`, `ep2d_diff_b50_800_1400`, `dADC`, `Ax LAVA`),
//! so it is the last resort. The attributes decide first, in this order (PI-RADS v2.1
//! protocol; DOMAIN.md):
//!
//! 1. SEG: the Segmentation Storage SOP class (1.2.840.10008.5.1.4.1.1.66.4) or modality
//!    `SEG`;
//! 2. ADC: Image Type (0008,0008) naming `ADC` (Siemens writes `DIFFUSION\ADC`; GE and
//!    Philips `ADC` among the values), since an ADC map is derived from the diffusion
//!    series and may carry its b-values;
//! 3. DWI: a b-value above 0, from Diffusion b-value (0018,9087) or the vendor's private
//!    element (the vault reads both at ingest: `vault::acquisition`), or Image Type
//!    `DIFFUSION` on an echo-planar
//!    (ScanningSequence `EP`) acquisition;
//! 4. DCE: more than one temporal position (Temporal Position Identifier (0020,0100) /
//!    Number of Temporal Positions (0020,0105));
//! 5. T2W: a spin-echo acquisition (ScanningSequence `SE`, not `EP`) with a long echo
//!    time (60 ms or more; prostate T2W runs at about 80-120 ms);
//! 6. otherwise the description, by keywords; otherwise `Other`.
//!
//! Every answer says which rule decided it ([`Classified::by`]), so a surprising class
//! can be traced to its attribute.

use serde::{Deserialize, Serialize};

/// DICOM Segmentation Storage.
pub const SEG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// A series type of the prostate mpMRI protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Sequence {
    /// T2-weighted turbo spin echo.
    T2W,
    /// Diffusion-weighted echo-planar imaging.
    DWI,
    /// Apparent diffusion coefficient map.
    ADC,
    /// Dynamic contrast-enhanced T1.
    DCE,
    /// DICOM Segmentation (gland, index lesion).
    SEG,
    /// Anything else (localizers, T1 pre-contrast, ...).
    Other,
}

impl Sequence {
    /// The name used in cohort definitions (`"sequences": ["T2W", ...]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Sequence::T2W => "T2W",
            Sequence::DWI => "DWI",
            Sequence::ADC => "ADC",
            Sequence::DCE => "DCE",
            Sequence::SEG => "SEG",
            Sequence::Other => "other",
        }
    }
}

/// The attributes of a series that classification reads (pseudonymized metadata: no
/// identifying value is among them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesFacts {
    /// Modality (0008,0060).
    pub modality: String,
    /// SOP Class UID (0008,0016).
    pub sop_class: String,
    /// Manufacturer (0008,0070).
    pub manufacturer: String,
    /// Image Type (0008,0008), its values.
    pub image_type: Vec<String>,
    /// Scanning Sequence (0018,0020), its values (`SE`, `EP`, `GR`, `IR`, ...).
    pub scanning_sequence: Vec<String>,
    /// Echo Time (0018,0081), ms.
    pub echo_time_ms: Option<f64>,
    /// The b-values found in the series (standard or private tags), s/mm².
    pub b_values: Vec<f64>,
    /// The number of temporal positions (the larger of Number of Temporal Positions and
    /// the highest Temporal Position Identifier).
    pub temporal_positions: Option<u32>,
    /// Series Description (0008,103E).
    pub description: String,
}

/// A classification and the rule that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    /// The type.
    pub sequence: Sequence,
    /// Which rule decided (`SOP class`, `Image Type ADC`, `b-values`, ..., `description`).
    pub by: &'static str,
    /// The b-values (DWI and ADC), sorted, distinct.
    pub b_values: Vec<f64>,
}

fn has(values: &[String], want: &str) -> bool {
    values.iter().any(|v| v.trim().eq_ignore_ascii_case(want))
}

/// Classifies a series.
pub fn classify(f: &SeriesFacts) -> Classified {
    let mut b: Vec<f64> = f
        .b_values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    b.sort_by(|x, y| x.total_cmp(y));
    b.dedup();
    let out = |sequence, by| Classified {
        sequence,
        by,
        b_values: if matches!(sequence, Sequence::DWI | Sequence::ADC) {
            b.clone()
        } else {
            Vec::new()
        },
    };
    if f.sop_class == SEG_SOP_CLASS || f.modality.eq_ignore_ascii_case("SEG") {
        return out(Sequence::SEG, "SOP class");
    }
    if has(&f.image_type, "ADC") {
        return out(Sequence::ADC, "Image Type ADC");
    }
    let echo_planar = has(&f.scanning_sequence, "EP");
    if b.iter().any(|v| *v > 0.0) {
        return out(Sequence::DWI, "b-values");
    }
    if echo_planar && has(&f.image_type, "DIFFUSION") {
        return out(Sequence::DWI, "Image Type DIFFUSION, echo-planar");
    }
    if f.temporal_positions.is_some_and(|n| n > 1) {
        return out(Sequence::DCE, "temporal positions");
    }
    if has(&f.scanning_sequence, "SE") && !echo_planar && f.echo_time_ms.is_some_and(|t| t >= 60.0)
    {
        return out(Sequence::T2W, "spin echo, long echo time");
    }
    match from_description(&f.description) {
        Some(s) => out(s, "description"),
        None => out(Sequence::Other, "no rule"),
    }
}

/// The type a series description suggests, by the keywords sites use.
pub fn from_description(d: &str) -> Option<Sequence> {
    let d = d.to_ascii_lowercase();
    let words: Vec<&str> = d
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let word = |w: &str| words.contains(&w);
    let prefix = |p: &str| words.iter().any(|w| w.starts_with(p));
    if word("seg") || prefix("segment") || word("mask") || word("roi") {
        Some(Sequence::SEG)
    } else if prefix("adc") || word("dadc") || d.contains("apparent diff") {
        Some(Sequence::ADC)
    } else if prefix("diff") || prefix("dwi") || word("ep2d") || word("trace") || word("b1400") {
        Some(Sequence::DWI)
    } else if word("dce")
        || prefix("dyn")
        || word("lava")
        || word("perfusion")
        || word("thrive")
        || (word("vibe") && prefix("dyn"))
    {
        Some(Sequence::DCE)
    } else if word("t2") || word("t2w") || prefix("t2_") || word("frfse") || d.contains("t2w") {
        Some(Sequence::T2W)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(desc: &str) -> SeriesFacts {
        SeriesFacts {
            modality: "MR".into(),
            sop_class: "1.2.840.10008.5.1.4.1.1.4".into(),
            description: desc.into(),
            ..Default::default()
        }
    }

    #[test]
    fn attributes_decide_before_the_description() {
        // A T2W spin echo whose description says nothing useful.
        let t2 = SeriesFacts {
            scanning_sequence: vec!["SE".into()],
            echo_time_ms: Some(104.0),
            ..facts("series 3")
        };
        assert_eq!(classify(&t2).sequence, Sequence::T2W);
        assert_eq!(classify(&t2).by, "spin echo, long echo time");
        // A short-TE spin echo (a T1) is not T2W, even if its description claims so.
        let t1 = SeriesFacts {
            echo_time_ms: Some(12.0),
            ..t2.clone()
        };
        assert_eq!(
            classify(&SeriesFacts {
                description: "t1_tse".into(),
                ..t1
            })
            .sequence,
            Sequence::Other
        );
        // Diffusion with b-values from a private tag, described misleadingly.
        let dwi = SeriesFacts {
            scanning_sequence: vec!["EP".into()],
            b_values: vec![800.0, 50.0, 1400.0, 50.0],
            ..facts("t2_tse_tra")
        };
        let c = classify(&dwi);
        assert_eq!((c.sequence, c.by), (Sequence::DWI, "b-values"));
        assert_eq!(c.b_values, vec![50.0, 800.0, 1400.0]);
        // The ADC map derived from it carries the b-values too, and Image Type says ADC.
        let adc = SeriesFacts {
            image_type: vec![
                "DERIVED".into(),
                "PRIMARY".into(),
                "DIFFUSION".into(),
                "ADC".into(),
            ],
            ..dwi.clone()
        };
        assert_eq!(classify(&adc).sequence, Sequence::ADC);
        // DCE: many temporal positions.
        let dce = SeriesFacts {
            scanning_sequence: vec!["GR".into()],
            temporal_positions: Some(40),
            ..facts("")
        };
        assert_eq!(classify(&dce).sequence, Sequence::DCE);
        // SEG by SOP class, whatever else it says.
        let seg = SeriesFacts {
            sop_class: SEG_SOP_CLASS.into(),
            ..dce.clone()
        };
        assert_eq!(classify(&seg).sequence, Sequence::SEG);
        // A b=0-only echo-planar series marked DIFFUSION is still DWI.
        let b0 = SeriesFacts {
            scanning_sequence: vec!["EP".into()],
            image_type: vec![
                "ORIGINAL".into(),
                "PRIMARY".into(),
                "DIFFUSION".into(),
                "NONE".into(),
            ],
            b_values: vec![0.0],
            ..facts("")
        };
        assert_eq!(classify(&b0).sequence, Sequence::DWI);
    }

    #[test]
    fn descriptions_of_the_three_vendors_are_recognised_as_a_last_resort() {
        for (d, want) in [
            ("t2_tse_tra", Sequence::T2W),
            ("Ax T2 FRFSE", Sequence::T2W),
            ("T2W_TSE_ax", Sequence::T2W),
            ("ep2d_diff_b50_800_1400", Sequence::DWI),
            ("DWI_b1400", Sequence::DWI),
            ("dADC", Sequence::ADC),
            ("ep2d_diff_b50_800_ADC", Sequence::ADC),
            ("ADC (10^-6 mm2/s)", Sequence::ADC),
            ("t1_vibe_dyn", Sequence::DCE),
            ("Ax LAVA", Sequence::DCE),
            ("DCE_THRIVE", Sequence::DCE),
            ("Segmentation gland", Sequence::SEG),
            ("localizer", Sequence::Other),
        ] {
            let c = classify(&facts(d));
            assert_eq!(c.sequence, want, "{d}");
            assert_eq!(
                c.by,
                if want == Sequence::Other {
                    "no rule"
                } else {
                    "description"
                }
            );
        }
    }
}
