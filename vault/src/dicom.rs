//! A small, strict DICOM Part 10 reader and writer that keeps values as bytes.
//!
//! Why not `dicom-object` for this path: de-identification needs three things that a
//! full object model gets in the way of. (1) Explicit-VR `UN` elements of undefined length
//! (Philips writes its private sequences in groups 2001/2005 this way) must be read as the
//! implicit-VR little-endian sequences they are (PS3.5 section 6.2.2); `dicom-object` 0.10
//! fails on them (dicom-rs issue #169). (2) Pixel data must go out byte for byte, native
//! or encapsulated, without being decoded or even copied into an object: here it is a
//! borrowed slice of the input. (3) Every attribute, at any depth, must be visited and
//! rewritten, including ones no dictionary knows. `dicom-object` is still used by
//! [`crate::synth`] to write test corpora, which also makes it an independent writer for
//! this reader to be tested against.
//!
//! The model is a tree of [`Element`]s whose values are byte slices borrowed from the input
//! (or owned, once rewritten), sequences of items, or the raw encapsulated pixel data.
//! Nothing here interprets values beyond what parsing needs; [`crate::deid`] does that.

use std::borrow::Cow;

use dicom_core::dictionary::DataDictionary;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Deepest sequence nesting accepted. Real files nest a handful of levels; a crafted file
/// nesting thousands would otherwise exhaust the stack.
pub const MAX_DEPTH: usize = 32;
/// Largest inflated data set accepted from a deflated transfer syntax (zip-bomb guard).
pub const MAX_INFLATED: usize = 1 << 30;

/// Transfer syntax UIDs this module knows how to rewrite.
pub mod ts {
    /// Implicit VR Little Endian.
    pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
    /// Explicit VR Little Endian.
    pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    /// Deflated Explicit VR Little Endian.
    pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
    /// Explicit VR Big Endian (retired, still found in archives).
    pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
}

/// What went wrong while reading or writing a file. Messages name the position and the
/// tag, never a value, so they can be logged and reported.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DicomError {
    /// The file ends before a structure it announces.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset in the (inflated) stream.
        offset: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// No "DICM" magic at byte 128: not a DICOM Part 10 file.
    #[error("not a DICOM Part 10 file: no 'DICM' prefix at byte 128 (no file meta header)")]
    NoPreamble,
    /// The file meta group is missing something it must have.
    #[error("file meta header invalid: {0}")]
    BadMeta(String),
    /// A transfer syntax this writer cannot reproduce.
    #[error("transfer syntax {0} is not supported for rewriting")]
    UnsupportedTransferSyntax(String),
    /// A VR code that does not exist.
    #[error("invalid VR bytes {vr:?} for element ({group:04X},{element:04X}) at byte {offset}")]
    BadVr {
        /// Group.
        group: u16,
        /// Element.
        element: u16,
        /// The two raw bytes.
        vr: [u8; 2],
        /// Offset.
        offset: usize,
    },
    /// A length that cannot be right.
    #[error("element ({group:04X},{element:04X}) at byte {offset}: {reason}")]
    BadElement {
        /// Group.
        group: u16,
        /// Element.
        element: u16,
        /// Offset.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Sequences nested deeper than [`MAX_DEPTH`].
    #[error("sequences nested deeper than {MAX_DEPTH} levels at byte {0}")]
    TooDeep(usize),
    /// Deflate stream broken or too large.
    #[error("deflated data set: {0}")]
    Deflate(String),
}

/// The encoding of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Implicit VR, little endian.
    ImplicitLe,
    /// Explicit VR, little endian.
    ExplicitLe,
    /// Explicit VR, big endian.
    ExplicitBe,
}

impl Encoding {
    fn big(self) -> bool {
        self == Encoding::ExplicitBe
    }
    fn explicit(self) -> bool {
        self != Encoding::ImplicitLe
    }
}

/// One attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Element<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value representation (from the file, or the dictionary for implicit VR).
    pub vr: VR,
    /// The value.
    pub value: Value<'a>,
}

/// The value of an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Primitive value bytes, exactly as encoded (in the data set's byte order).
    Bytes(Cow<'a, [u8]>),
    /// A sequence of items.
    Seq(Vec<Item<'a>>),
    /// Encapsulated pixel data: the raw bytes of all items and the sequence delimiter,
    /// copied through untouched.
    Encapsulated(&'a [u8]),
}

/// One item of a sequence: a nested data set.
pub type Item<'a> = Vec<Element<'a>>;

/// A parsed Part 10 file.
#[derive(Debug, Clone)]
pub struct FileObject<'a> {
    /// Transfer syntax UID from the meta header (trimmed).
    pub transfer_syntax: String,
    /// Media Storage SOP Class UID from the meta header (trimmed), if present.
    pub media_sop_class: Option<String>,
    /// The data set after the meta group.
    pub dataset: Vec<Element<'a>>,
    /// Encoding of the data set.
    pub encoding: Encoding,
    /// Whether the data set was deflated in the file.
    pub deflated: bool,
}

/// Holds the inflated bytes of a deflated data set, so the parsed tree can borrow them.
pub struct Inflated(pub Vec<u8>);

/// Splits a Part 10 file into its meta information and the raw data set bytes.
/// Returns (transfer syntax, media storage SOP class, data set offset).
pub fn read_meta(bytes: &[u8]) -> Result<(String, Option<String>, usize), DicomError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(DicomError::NoPreamble);
    }
    let mut r = Reader::new(bytes, 132, Encoding::ExplicitLe);
    let mut ts = None;
    let mut sop = None;
    while r.pos + 4 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[r.pos], bytes[r.pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let el = r.element(0)?;
        if let Value::Bytes(v) = &el.value {
            match el.tag.element() {
                0x0010 => ts = Some(trim_text(v).to_string()),
                0x0002 => sop = Some(trim_text(v).to_string()),
                _ => {}
            }
        }
    }
    let ts = ts.ok_or_else(|| {
        DicomError::BadMeta("Transfer Syntax UID (0002,0010) missing".to_string())
    })?;
    Ok((ts, sop, r.pos))
}

/// Inflates the data set of a deflated file, if it is one.
pub fn inflate_if_needed(bytes: &[u8]) -> Result<Option<Inflated>, DicomError> {
    let (ts, _, off) = read_meta(bytes)?;
    if ts != ts::DEFLATED_LE {
        return Ok(None);
    }
    use std::io::Read;
    let mut out = Vec::with_capacity((bytes.len() - off) * 4);
    let dec = flate2::read::DeflateDecoder::new(&bytes[off..]);
    dec.take(MAX_INFLATED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DicomError::Deflate(e.to_string()))?;
    if out.len() > MAX_INFLATED {
        return Err(DicomError::Deflate(format!(
            "inflates to more than {MAX_INFLATED} bytes"
        )));
    }
    Ok(Some(Inflated(out)))
}

/// Parses a Part 10 file. For a deflated file, pass the result of [`inflate_if_needed`]
/// as `inflated` (the tree borrows from it).
pub fn parse<'a>(
    bytes: &'a [u8],
    inflated: Option<&'a Inflated>,
) -> Result<FileObject<'a>, DicomError> {
    let (ts, sop, off) = read_meta(bytes)?;
    let (encoding, deflated) = match ts.as_str() {
        ts::IMPLICIT_LE => (Encoding::ImplicitLe, false),
        ts::EXPLICIT_BE => (Encoding::ExplicitBe, false),
        ts::DEFLATED_LE => (Encoding::ExplicitLe, true),
        // Every other transfer syntax of the standard encodes the data set in explicit VR
        // little endian; encapsulated pixel data is copied through as bytes.
        t if t.starts_with("1.2.840.10008.1.2.") => (Encoding::ExplicitLe, false),
        _ => return Err(DicomError::UnsupportedTransferSyntax(ts)),
    };
    let data: &'a [u8] = if deflated {
        match inflated {
            Some(i) => &i.0,
            None => {
                return Err(DicomError::Deflate(
                    "deflated data set was not inflated first".into(),
                ))
            }
        }
    } else {
        &bytes[off..]
    };
    let mut r = Reader::new(data, 0, encoding);
    let dataset = r.dataset(data.len(), 0)?;
    Ok(FileObject {
        transfer_syntax: ts,
        media_sop_class: sop,
        dataset,
        encoding,
        deflated,
    })
}

/// Trims DICOM padding (spaces and NULs) from a value's bytes, whatever its character set.
pub fn trim_bytes(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&c| c != b' ' && c != 0)
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&c| c != b' ' && c != 0)
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Trims DICOM padding (spaces and NULs) from a text value; "" when it is not UTF-8 (use
/// [`trim_bytes`] for values in other character sets).
pub fn trim_text(v: &[u8]) -> &str {
    let s = std::str::from_utf8(v).unwrap_or("");
    s.trim_matches(|c: char| c == ' ' || c == '\0')
}

/// VRs whose explicit encoding has a 2-byte reserved field and a 4-byte length.
fn long_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::UC
            | VR::UR
            | VR::UT
            | VR::UN
            | VR::SV
            | VR::UV
    )
}

/// The VR an implicit-VR element has, from the standard dictionary.
pub fn dictionary_vr(tag: Tag) -> VR {
    if tag.element() == 0x0000 {
        return VR::UL;
    }
    if tag.group() % 2 == 1 {
        if (0x0010..=0x00FF).contains(&tag.element()) {
            return VR::LO;
        }
        return VR::UN;
    }
    match StandardDataDictionary.by_tag(tag) {
        Some(e) => e.vr.relaxed(),
        None => VR::UN,
    }
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQ_END: Tag = Tag(0xFFFE, 0xE0DD);
/// The pixel data tag.
pub const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    enc: Encoding,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], pos: usize, enc: Encoding) -> Self {
        Reader { data, pos, enc }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DicomError> {
        let available = self.data.len().saturating_sub(self.pos);
        if n > available {
            return Err(DicomError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DicomError> {
        let b = self.take(2, what)?;
        Ok(if self.enc.big() {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DicomError> {
        let b = self.take(4, what)?;
        Ok(if self.enc.big() {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    fn tag(&mut self) -> Result<Tag, DicomError> {
        let g = self.u16("tag group")?;
        let e = self.u16("tag element")?;
        Ok(Tag(g, e))
    }

    /// Reads elements until `end` (exclusive) or an item/sequence delimiter.
    fn dataset(&mut self, end: usize, depth: usize) -> Result<Vec<Element<'a>>, DicomError> {
        let mut out = Vec::new();
        while self.pos < end {
            // Trailing padding some writers leave after the data set.
            if end - self.pos < 8 && self.data[self.pos..end].iter().all(|&b| b == 0) {
                self.pos = end;
                break;
            }
            let save = self.pos;
            let tag = self.tag()?;
            if tag == ITEM_END || tag == SEQ_END {
                self.pos = save;
                break;
            }
            self.pos = save;
            let el = self.element(depth)?;
            if self.pos > end {
                return Err(bad(
                    tag,
                    save,
                    "element runs past the end of its enclosing item",
                ));
            }
            out.push(el);
        }
        Ok(out)
    }

    fn element(&mut self, depth: usize) -> Result<Element<'a>, DicomError> {
        let start = self.pos;
        let tag = self.tag()?;
        if tag.group() == 0xFFFE {
            return Err(bad(
                tag,
                start,
                "unexpected item delimiter outside a sequence",
            ));
        }
        let (mut vr, len) = if self.enc.explicit() {
            let raw = self.take(2, "VR")?;
            let vr = VR::from_binary([raw[0], raw[1]]).ok_or(DicomError::BadVr {
                group: tag.group(),
                element: tag.element(),
                vr: [raw[0], raw[1]],
                offset: start,
            })?;
            let len = if long_vr(vr) {
                self.take(2, "reserved")?;
                self.u32("length")?
            } else {
                self.u16("length")? as u32
            };
            (vr, len)
        } else {
            let len = self.u32("length")?;
            (dictionary_vr(tag), len)
        };
        if len == UNDEFINED {
            if tag == PIXEL_DATA && self.enc.explicit() && vr != VR::SQ && vr != VR::UN {
                // Encapsulated pixel data: copy items through until the delimiter.
                let s = self.pos;
                self.skip_fragments(tag)?;
                return Ok(Element {
                    tag,
                    vr,
                    value: Value::Encapsulated(&self.data[s..self.pos]),
                });
            }
            if vr == VR::UN && self.enc.explicit() {
                // PS3.5 6.2.2: UN of undefined length is a sequence in implicit VR LE.
                let mut sub = Reader::new(self.data, self.pos, Encoding::ImplicitLe);
                let items = sub.items(None, tag, depth + 1)?;
                self.pos = sub.pos;
                return Ok(Element {
                    tag,
                    vr: VR::SQ,
                    value: Value::Seq(items),
                });
            }
            if vr != VR::SQ && self.enc.explicit() {
                return Err(bad(tag, start, "undefined length on a non-sequence value"));
            }
            let items = self.items(None, tag, depth + 1)?;
            return Ok(Element {
                tag,
                vr: VR::SQ,
                value: Value::Seq(items),
            });
        }
        let len = len as usize;
        if len > self.data.len() - self.pos {
            return Err(bad(
                tag,
                start,
                &format!(
                    "length {len} exceeds the {} bytes left",
                    self.data.len() - self.pos
                ),
            ));
        }
        if vr == VR::SQ {
            let end = self.pos + len;
            let items = self.items(Some(end), tag, depth + 1)?;
            self.pos = end;
            return Ok(Element {
                tag,
                vr,
                value: Value::Seq(items),
            });
        }
        let value = self.take(len, "value")?;
        // A public attribute the writer did not know (VR UN): read it as the dictionary
        // says, since its bytes are implicit VR little endian (PS3.5 6.2.2).
        if vr == VR::UN && tag.group() % 2 == 0 && !self.enc.big() {
            let dvr = dictionary_vr(tag);
            if dvr == VR::SQ {
                let mut sub = Reader::new(self.data, self.pos - len, Encoding::ImplicitLe);
                let items = sub.items(Some(self.pos), tag, depth + 1)?;
                return Ok(Element {
                    tag,
                    vr: VR::SQ,
                    value: Value::Seq(items),
                });
            }
            if dvr != VR::UN {
                vr = dvr;
            }
        }
        Ok(Element {
            tag,
            vr,
            value: Value::Bytes(Cow::Borrowed(value)),
        })
    }

    fn items(
        &mut self,
        end: Option<usize>,
        seq_tag: Tag,
        depth: usize,
    ) -> Result<Vec<Item<'a>>, DicomError> {
        if depth > MAX_DEPTH {
            return Err(DicomError::TooDeep(self.pos));
        }
        let mut items = Vec::new();
        loop {
            if let Some(e) = end {
                if self.pos >= e {
                    break;
                }
            }
            let at = self.pos;
            let tag = self.tag()?;
            let len = self.u32("item length")?;
            match tag {
                SEQ_END if end.is_none() => break,
                ITEM => {
                    if len == UNDEFINED {
                        let limit = end.unwrap_or(self.data.len());
                        let ds = self.dataset(limit, depth)?;
                        let t = self.tag()?;
                        self.u32("item delimiter length")?;
                        if t != ITEM_END {
                            return Err(bad(seq_tag, at, "item not closed by an item delimiter"));
                        }
                        items.push(ds);
                    } else {
                        let len = len as usize;
                        if len > self.data.len() - self.pos {
                            return Err(bad(seq_tag, at, "item length exceeds the data left"));
                        }
                        let iend = self.pos + len;
                        let ds = self.dataset(iend, depth)?;
                        self.pos = iend;
                        items.push(ds);
                    }
                }
                _ => return Err(bad(seq_tag, at, "expected an item in the sequence")),
            }
        }
        Ok(items)
    }

    fn skip_fragments(&mut self, seq_tag: Tag) -> Result<(), DicomError> {
        loop {
            let at = self.pos;
            let tag = self.tag()?;
            let len = self.u32("fragment length")?;
            match tag {
                SEQ_END => return Ok(()),
                ITEM if len != UNDEFINED => {
                    self.take(len as usize, "pixel data fragment")?;
                }
                _ => return Err(bad(seq_tag, at, "malformed encapsulated pixel data")),
            }
        }
    }
}

fn bad(tag: Tag, offset: usize, reason: &str) -> DicomError {
    DicomError::BadElement {
        group: tag.group(),
        element: tag.element(),
        offset,
        reason: reason.to_string(),
    }
}

/// Serializes a data set in the given encoding. Sequences and items are written with
/// undefined length and delimiters, which every reader must accept.
pub fn write_dataset(out: &mut Vec<u8>, ds: &[Element<'_>], enc: Encoding) {
    for el in ds {
        write_element(out, el, enc);
    }
}

fn put16(out: &mut Vec<u8>, v: u16, enc: Encoding) {
    if enc.big() {
        out.extend_from_slice(&v.to_be_bytes())
    } else {
        out.extend_from_slice(&v.to_le_bytes())
    }
}

fn put32(out: &mut Vec<u8>, v: u32, enc: Encoding) {
    if enc.big() {
        out.extend_from_slice(&v.to_be_bytes())
    } else {
        out.extend_from_slice(&v.to_le_bytes())
    }
}

fn put_header(out: &mut Vec<u8>, tag: Tag, vr: VR, len: u32, enc: Encoding) {
    put16(out, tag.group(), enc);
    put16(out, tag.element(), enc);
    if enc.explicit() {
        out.extend_from_slice(vr.to_string().as_bytes());
        if long_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            put32(out, len, enc);
        } else {
            put16(out, len as u16, enc);
        }
    } else {
        put32(out, len, enc);
    }
}

fn write_element(out: &mut Vec<u8>, el: &Element<'_>, enc: Encoding) {
    match &el.value {
        Value::Bytes(b) => {
            let mut vr = el.vr;
            // A short-VR value longer than 16 bits of length cannot be written explicitly:
            // write it as UN, which has a 32-bit length.
            if enc.explicit() && !long_vr(vr) && b.len() > 0xFFFF {
                vr = VR::UN;
            }
            put_header(out, el.tag, vr, b.len() as u32, enc);
            out.extend_from_slice(b);
        }
        Value::Encapsulated(raw) => {
            put_header(out, el.tag, el.vr, UNDEFINED, enc);
            out.extend_from_slice(raw);
        }
        Value::Seq(items) => {
            put_header(out, el.tag, VR::SQ, UNDEFINED, enc);
            for item in items {
                put16(out, 0xFFFE, enc);
                put16(out, 0xE000, enc);
                put32(out, UNDEFINED, enc);
                write_dataset(out, item, enc);
                put16(out, 0xFFFE, enc);
                put16(out, 0xE00D, enc);
                put32(out, 0, enc);
            }
            put16(out, 0xFFFE, enc);
            put16(out, 0xE0DD, enc);
            put32(out, 0, enc);
        }
    }
}

/// Pads a text value to even length as its VR requires (NUL for UI, space otherwise).
pub fn padded(vr: VR, mut v: Vec<u8>) -> Vec<u8> {
    if v.len() % 2 == 1 {
        v.push(if vr == VR::UI { 0 } else { b' ' });
    }
    v
}

/// Writes a complete Part 10 file: preamble, a new meta group, and the data set in the
/// given transfer syntax (deflating it again for the deflated syntax).
pub fn write_file(
    ds: &[Element<'_>],
    transfer_syntax: &str,
    sop_class: &str,
    sop_instance: &str,
    implementation_uid: &str,
    enc: Encoding,
    deflated: bool,
) -> Result<Vec<u8>, DicomError> {
    let mut out = Vec::with_capacity(256 * 1024);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    let meta = [
        (Tag(0x0002, 0x0001), VR::OB, vec![0u8, 1u8]),
        (
            Tag(0x0002, 0x0002),
            VR::UI,
            padded(VR::UI, sop_class.as_bytes().to_vec()),
        ),
        (
            Tag(0x0002, 0x0003),
            VR::UI,
            padded(VR::UI, sop_instance.as_bytes().to_vec()),
        ),
        (
            Tag(0x0002, 0x0010),
            VR::UI,
            padded(VR::UI, transfer_syntax.as_bytes().to_vec()),
        ),
        (
            Tag(0x0002, 0x0012),
            VR::UI,
            padded(VR::UI, implementation_uid.as_bytes().to_vec()),
        ),
        (
            Tag(0x0002, 0x0013),
            VR::SH,
            padded(VR::SH, b"HBS_VAULT_1".to_vec()),
        ),
    ];
    let mut body = Vec::new();
    for (tag, vr, v) in meta {
        put_header(&mut body, tag, vr, v.len() as u32, Encoding::ExplicitLe);
        body.extend_from_slice(&v);
    }
    put_header(
        &mut out,
        Tag(0x0002, 0x0000),
        VR::UL,
        4,
        Encoding::ExplicitLe,
    );
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    if deflated {
        use std::io::Write;
        let mut raw = Vec::new();
        write_dataset(&mut raw, ds, enc);
        let mut e = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
        e.write_all(&raw)
            .map_err(|e| DicomError::Deflate(e.to_string()))?;
        out = e.finish().map_err(|e| DicomError::Deflate(e.to_string()))?;
        if out.len() % 2 == 1 {
            out.push(0);
        }
    } else {
        write_dataset(&mut out, ds, enc);
    }
    Ok(out)
}

/// Finds an element at the top level of a data set (sorted or not).
pub fn find<'e, 'a>(ds: &'e [Element<'a>], tag: Tag) -> Option<&'e Element<'a>> {
    ds.iter().find(|e| e.tag == tag)
}

/// The trimmed text of a top-level element, if present and textual.
pub fn text<'e>(ds: &'e [Element<'_>], tag: Tag) -> Option<&'e str> {
    match &find(ds, tag)?.value {
        Value::Bytes(b) => Some(trim_text(b)),
        _ => None,
    }
}

/// Inserts or replaces a top-level element, keeping tag order.
pub fn put<'a>(ds: &mut Vec<Element<'a>>, el: Element<'a>) {
    match ds.binary_search_by(|e| e.tag.cmp(&el.tag)) {
        Ok(i) => ds[i] = el,
        Err(i) => ds.insert(i, el),
    }
}

/// A text element with a padded value.
pub fn text_element(tag: Tag, vr: VR, value: &str) -> Element<'static> {
    Element {
        tag,
        vr,
        value: Value::Bytes(Cow::Owned(padded(vr, value.as_bytes().to_vec()))),
    }
}
