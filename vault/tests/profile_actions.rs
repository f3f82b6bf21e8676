//! Every attribute of PS3.15 Table E.1-1, in one instance, through the de-identifier:
//! each must come out as its action code (after options and type resolution) says.

use std::borrow::Cow;

use dicom_core::{Tag, VR};
use vault::deid::{self, effective_action, shift_da, Outcome};
use vault::dicom::{self, text_element, Element, Encoding, Value};
use vault::pseudonym::{Pseudonymizer, SiteId};
use vault::tables::profile::PROFILE;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";

fn concrete(row: &vault::tables::ProfileRow) -> Tag {
    // Repeating groups: use the first group of the range (overlays 6000, curves 5000).
    Tag(
        row.group,
        if row.element_mask == 0 {
            0x0010
        } else {
            row.element
        },
    )
}

fn value_for(vr: VR, i: usize) -> Value<'static> {
    let text = |s: String| Value::Bytes(Cow::Owned(dicom::padded(vr, s.into_bytes())));
    match vr {
        VR::PN => text(format!("SURNAME{i}^GIVEN{i}")),
        VR::DA => text("20200102".into()),
        VR::TM => text("101112".into()),
        VR::DT => text("20200102101112".into()),
        VR::UI => text(format!("1.3.6.1.4.1.5555.{i}")),
        VR::IS => text("12".into()),
        VR::DS => text("1.5".into()),
        VR::AS => text("067Y".into()),
        VR::CS => text(format!("VALUE{i}")),
        VR::AE => text(format!("AET{i}")),
        VR::US | VR::SS => Value::Bytes(Cow::Owned(vec![7, 0])),
        VR::UL | VR::SL | VR::FL | VR::AT => Value::Bytes(Cow::Owned(vec![7, 0, 0, 0])),
        VR::FD | VR::SV | VR::UV => Value::Bytes(Cow::Owned(vec![7, 0, 0, 0, 0, 0, 0, 0])),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => {
            Value::Bytes(Cow::Owned(vec![1, 2, 3, 4]))
        }
        VR::SQ => Value::Seq(vec![vec![text_element(
            Tag(0x0008, 0x0100),
            VR::SH,
            &format!("CODE{i}"),
        )]]),
        _ => text(format!("IDENTIFYING TEXT {i} SURNAME0")),
    }
}

fn bytes_of(v: &Value<'_>) -> Vec<u8> {
    match v {
        Value::Bytes(b) => b.to_vec(),
        _ => Vec::new(),
    }
}

#[test]
fn every_table_row_is_applied_as_its_action_code_says() {
    let keys = Pseudonymizer::new(&[5u8; 32]).unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    let mut ds: Vec<Element<'static>> = Vec::new();
    let mut expected = Vec::new();
    for (i, row) in PROFILE.iter().enumerate() {
        let tag = concrete(row);
        if matches!(
            (tag.group(), tag.element()),
            (0x0010, 0x0010) | (0x0010, 0x0020) | (0x0008, 0x0018)
        ) || tag.group() == 0x0002
        {
            continue; // set below, or file meta (rewritten whole); checked separately
        }
        let mut vr = dicom::dictionary_vr(tag);
        if vr == VR::UN {
            vr = VR::LO;
        }
        let action = effective_action(tag, vr, MR).unwrap();
        let value = value_for(vr, i);
        expected.push((tag, vr, action, value.clone(), row.name));
        dicom::put(&mut ds, Element { tag, vr, value });
    }
    // Identity of the instance.
    for el in [
        text_element(Tag(0x0008, 0x0016), VR::UI, MR),
        text_element(Tag(0x0008, 0x0018), VR::UI, "1.3.6.1.4.1.5555.999999"),
        text_element(Tag(0x0010, 0x0010), VR::PN, "SURNAME0^GIVEN0"),
        text_element(Tag(0x0010, 0x0020), VR::LO, "LOCAL-ID-42"),
    ] {
        dicom::put(&mut ds, el);
    }
    let file = dicom::write_file(
        &ds,
        dicom::ts::EXPLICIT_LE,
        MR,
        "1.3.6.1.4.1.5555.999999",
        "1.2.3",
        Encoding::ExplicitLe,
        false,
    )
    .unwrap();
    let Outcome::Accepted(a) = deid::deidentify(&file, &site, &keys).unwrap() else {
        panic!("quarantined")
    };
    let out = dicom::parse(&a.bytes, None).unwrap().dataset;
    let shift = keys.date_shift_days(&keys.pseudonym(&site, "LOCAL-ID-42"));

    let mut seen = std::collections::BTreeSet::new();
    for (tag, vr, action, before, name) in expected {
        seen.insert(action);
        let after = dicom::find(&out, tag);
        let before_b = bytes_of(&before);
        match action {
            "X" => assert!(after.is_none(), "{name} ({tag}) should be removed"),
            "Z" => {
                let el = after.unwrap_or_else(|| panic!("{name} should be present, empty"));
                match &el.value {
                    Value::Seq(items) => assert!(items.is_empty(), "{name}"),
                    v => assert!(bytes_of(v).is_empty(), "{name} should be empty"),
                }
            }
            "D" => {
                let el = after.unwrap_or_else(|| panic!("{name} should be replaced by a dummy"));
                if let Value::Bytes(b) = &el.value {
                    assert!(!b.is_empty(), "{name}: a dummy is not empty");
                    if matches!(
                        vr,
                        VR::PN
                            | VR::LO
                            | VR::SH
                            | VR::LT
                            | VR::ST
                            | VR::UT
                            | VR::UI
                            | VR::DA
                            | VR::DT
                    ) {
                        assert_ne!(
                            b.to_vec(),
                            before_b,
                            "{name}: a dummy differs from the original"
                        );
                    }
                }
            }
            "K" => {
                let el = after.unwrap_or_else(|| panic!("{name} should be kept"));
                assert_eq!(el.value, before, "{name} should be unchanged");
            }
            "U" => {
                let el = after.unwrap_or_else(|| panic!("{name} should be kept with new UIDs"));
                match &el.value {
                    Value::Bytes(b) => {
                        let s = dicom::trim_text(b);
                        assert!(s.starts_with("2.25."), "{name}: {s}");
                        assert_eq!(s, keys.uid(dicom::trim_text(&before_b)), "{name}");
                    }
                    Value::Seq(items) => assert_eq!(items.len(), 1, "{name}"),
                    Value::Encapsulated(_) => unreachable!(),
                }
            }
            "C" => {
                let el = after.unwrap_or_else(|| panic!("{name} should be kept, cleaned"));
                let s = dicom::trim_text(&bytes_of(&el.value)).to_string();
                let orig = dicom::trim_text(&before_b).to_string();
                match vr {
                    VR::DA => assert_eq!(s, shift_da(&orig, shift).unwrap(), "{name}"),
                    VR::DT => assert_eq!(
                        s,
                        format!("{}{}", shift_da(&orig[..8], shift).unwrap(), &orig[8..]),
                        "{name}"
                    ),
                    VR::TM => assert_eq!(s, orig, "{name}: times of day are kept"),
                    _ => {
                        // A descriptor, cleaned of the patient's name found elsewhere.
                        assert!(!s.contains("SURNAME0"), "{name}: {s}");
                        assert!(s.starts_with("IDENTIFYING TEXT"), "{name}: {s}");
                    }
                }
            }
            other => panic!("{name}: unexpected action {other}"),
        }
    }
    for a in ["X", "Z", "D", "K", "C", "U"] {
        assert!(seen.contains(a), "action {a} was exercised");
    }
    // Patient Name and ID carry the pseudonym; the instance declares what was done.
    let p = keys.pseudonym(&site, "LOCAL-ID-42");
    assert_eq!(dicom::text(&out, Tag(0x0010, 0x0010)), Some(p.as_str()));
    assert_eq!(dicom::text(&out, Tag(0x0010, 0x0020)), Some(p.as_str()));
    assert_eq!(dicom::text(&out, Tag(0x0012, 0x0062)), Some("YES"));
    assert_eq!(dicom::text(&out, Tag(0x0028, 0x0303)), Some("MODIFIED"));
    let Some(Element {
        value: Value::Seq(codes),
        ..
    }) = dicom::find(&out, Tag(0x0012, 0x0064))
    else {
        panic!("no De-identification Method Code Sequence")
    };
    let values: Vec<_> = codes
        .iter()
        .map(|it| dicom::text(it, Tag(0x0008, 0x0100)).unwrap().to_string())
        .collect();
    assert_eq!(values, ["113100", "113105", "113107", "113108", "113111"]);
    // The file meta header is new: its Media Storage SOP Instance UID is the new one.
    let sop = dicom::text(&out, Tag(0x0008, 0x0018)).unwrap();
    assert!(sop.starts_with("2.25."));
    assert!(a.bytes[..400]
        .windows(sop.len())
        .any(|w| w == sop.as_bytes()));
    // No source UID anywhere in the output bytes.
    assert!(!a.bytes.windows(17).any(|w| w == b"1.3.6.1.4.1.5555."));
}

#[test]
fn private_elements_keep_only_the_safe_list_and_their_creators() {
    let keys = Pseudonymizer::new(&[5u8; 32]).unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    let mut ds: Vec<Element<'static>> = vec![
        text_element(Tag(0x0008, 0x0016), VR::UI, MR),
        text_element(Tag(0x0008, 0x0018), VR::UI, "1.9.8.7"),
        text_element(Tag(0x0010, 0x0020), VR::LO, "ID1"),
        text_element(Tag(0x0019, 0x0010), VR::LO, "SIEMENS MR HEADER"),
        text_element(Tag(0x0019, 0x100C), VR::IS, "1400"),
        text_element(Tag(0x0019, 0x1099), VR::LO, "SECRET NAME"),
        text_element(Tag(0x0029, 0x0010), VR::LO, "SIEMENS CSA HEADER"),
        text_element(Tag(0x0029, 0x1010), VR::OB, "CSA WITH NAME"),
        text_element(Tag(0x0043, 0x0010), VR::LO, "GEMS_PARM_01"),
        text_element(Tag(0x0043, 0x1039), VR::IS, "1000000800\\8\\0\\0"),
        text_element(Tag(0x2001, 0x0010), VR::LO, "Philips Imaging DD 001"),
        text_element(Tag(0x2001, 0x1003), VR::FL, "ABCD"),
        text_element(Tag(0x2001, 0x1004), VR::CS, "I "),
        // An element whose block has no creator.
        text_element(Tag(0x0051, 0x1010), VR::LO, "ORPHAN"),
    ];
    ds.sort_by_key(|e| e.tag);
    let file = dicom::write_file(
        &ds,
        dicom::ts::EXPLICIT_LE,
        MR,
        "1.9.8.7",
        "1.2",
        Encoding::ExplicitLe,
        false,
    )
    .unwrap();
    let Outcome::Accepted(a) = deid::deidentify(&file, &site, &keys).unwrap() else {
        panic!()
    };
    let out = dicom::parse(&a.bytes, None).unwrap().dataset;
    let has = |g, e| dicom::find(&out, Tag(g, e)).is_some();
    assert!(has(0x0019, 0x0010) && has(0x0019, 0x100C));
    assert!(!has(0x0019, 0x1099));
    assert!(!has(0x0029, 0x0010) && !has(0x0029, 0x1010));
    assert!(has(0x0043, 0x0010) && has(0x0043, 0x1039));
    assert!(has(0x2001, 0x0010) && has(0x2001, 0x1003) && has(0x2001, 0x1004));
    assert!(!has(0x0051, 0x1010));
    for leak in [&b"SECRET NAME"[..], b"CSA WITH", b"ORPHAN"] {
        assert!(!a.bytes.windows(leak.len()).any(|w| w == leak));
    }
}

/// Random corruption of a valid file never panics: it is accepted, quarantined or
/// rejected with a reason.
#[test]
fn corrupted_files_never_panic() {
    let keys = Pseudonymizer::new(&[5u8; 32]).unwrap();
    let site = SiteId::new("SITE_A").unwrap();
    let mut ds: Vec<Element<'static>> = vec![
        text_element(Tag(0x0008, 0x0016), VR::UI, MR),
        text_element(Tag(0x0008, 0x0018), VR::UI, "1.9.8.7"),
        text_element(Tag(0x0010, 0x0010), VR::PN, "DOE^JANE"),
        text_element(Tag(0x0010, 0x0020), VR::LO, "ID1"),
        Element {
            tag: Tag(0x0040, 0x0275),
            vr: VR::SQ,
            value: Value::Seq(vec![vec![text_element(
                Tag(0x0040, 0x0009),
                VR::SH,
                "SPS1",
            )]]),
        },
        Element {
            tag: dicom::PIXEL_DATA,
            vr: VR::OW,
            value: Value::Bytes(Cow::Owned(vec![3u8; 512])),
        },
    ];
    ds.sort_by_key(|e| e.tag);
    let good = dicom::write_file(
        &ds,
        dicom::ts::EXPLICIT_LE,
        MR,
        "1.9.8.7",
        "1.2",
        Encoding::ExplicitLe,
        false,
    )
    .unwrap();
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut f = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % f.len();
            f[i] = next() as u8;
        }
        if next() % 3 == 0 {
            let cut = (next() as usize) % f.len();
            f.truncate(cut);
        }
        match deid::deidentify(&f, &site, &keys) {
            Ok(_) => ok += 1,
            Err(e) => {
                err += 1;
                let m = e.to_string();
                assert!(!m.is_empty());
                assert!(!m.contains("DOE") && !m.contains("ID1"), "{m}");
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} accepted, {err} rejected");
}
