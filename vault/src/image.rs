//! Pixels out of a (decrypted, de-identified) DICOM file: MR slices as rescaled values,
//! Segmentations as per-frame binary masks. Pure.
//!
//! The compute enclave needs the images themselves, not only their headers. This
//! reads native (uncompressed) little-endian pixel data of 8 or 16 bits, applies
//! Rescale Slope and Intercept, and keeps the geometry a model needs (slice position,
//! pixel spacing). A Segmentation's frames come with the segment they belong to
//! (`gland`, `lesion`, by code, as [`crate::acquisition`] reads them) and the SOP
//! Instance UID of the image each was drawn on (pseudonymized like every UID here).

use crate::acquisition::number;
use dicom_core::{Tag, VR};

use crate::dicom::{self, Element, Encoding, Value};

/// Why pixels could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not DICOM, or damaged.
    #[error("not a readable DICOM file: {0}")]
    Dicom(#[from] dicom::DicomError),
    /// Something the reader does not handle (named, no values).
    #[error("pixel data: {0}")]
    Unsupported(&'static str),
}

/// One MR slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Rescaled values, row-major.
    pub values: Vec<f32>,
    /// Diffusion b-value, if any.
    pub b_value: Option<f64>,
    /// Position along the stack: Image Position (Patient) z, else Instance Number.
    pub position: f64,
    /// Pixel spacing (row, column), mm.
    pub spacing: [f64; 2],
    /// Its SOP Instance UID.
    pub sop_uid: String,
}

/// One frame of a Segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct SegFrame {
    /// `gland`, `lesion`, or empty for another segment.
    pub segment: String,
    /// The SOP Instance UID of the image the frame was drawn on.
    pub source_uid: String,
    /// The mask, row-major.
    pub on: Vec<bool>,
}

/// A Segmentation's frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Frames.
    pub frames: Vec<SegFrame>,
}

fn num(ds: &[Element<'_>], g: u16, e: u16, big: bool) -> Option<f64> {
    dicom::find(ds, Tag(g, e)).and_then(|el| number(el, big))
}

fn nth(ds: &[Element<'_>], g: u16, e: u16, k: usize) -> Option<f64> {
    dicom::text(ds, Tag(g, e))?
        .split('\\')
        .nth(k)?
        .trim()
        .parse()
        .ok()
}

fn item<'e, 'a>(ds: &'e [Element<'a>], g: u16, e: u16) -> Option<&'e [Element<'a>]> {
    match dicom::find(ds, Tag(g, e)).map(|el| &el.value) {
        Some(Value::Seq(items)) => items.first().map(Vec::as_slice),
        _ => None,
    }
}

fn pixel_bytes<'e>(ds: &'e [Element<'_>]) -> Result<&'e [u8], ImageError> {
    match dicom::find(ds, Tag(0x7FE0, 0x0010)).map(|e| &e.value) {
        Some(Value::Bytes(b)) => Ok(b),
        Some(Value::Encapsulated(_)) => Err(ImageError::Unsupported(
            "compressed (encapsulated) pixel data is not read",
        )),
        _ => Err(ImageError::Unsupported("no pixel data")),
    }
}

fn dims(ds: &[Element<'_>]) -> Result<(usize, usize), ImageError> {
    let rows = num(ds, 0x0028, 0x0010, false).unwrap_or(0.0) as usize;
    let cols = num(ds, 0x0028, 0x0011, false).unwrap_or(0.0) as usize;
    if rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        return Err(ImageError::Unsupported(
            "rows and columns must be 1 to 4096",
        ));
    }
    Ok((rows, cols))
}

/// Parses a little-endian file and hands its data set, encoding and size to `read`.
fn open<T>(
    bytes: &[u8],
    read: impl FnOnce(&[Element<'_>], Encoding, usize, usize) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let inflated = dicom::inflate_if_needed(bytes)?;
    let file = dicom::parse(bytes, inflated.as_ref())?;
    if file.encoding == Encoding::ExplicitBe {
        return Err(ImageError::Unsupported("big-endian pixel data is not read"));
    }
    let (rows, cols) = dims(&file.dataset)?;
    read(&file.dataset, file.encoding, rows, cols)
}

/// Reads one single-frame MR slice.
pub fn slice(bytes: &[u8]) -> Result<Slice, ImageError> {
    open(bytes, |ds, encoding, rows, cols| {
        if num(ds, 0x0028, 0x0008, false).is_some_and(|f| f > 1.0) {
            return Err(ImageError::Unsupported("multi-frame images are not read"));
        }
        let bits = num(ds, 0x0028, 0x0100, false).unwrap_or(16.0) as u32;
        let signed = num(ds, 0x0028, 0x0103, false) == Some(1.0);
        let slope = num(ds, 0x0028, 0x1053, false).unwrap_or(1.0) as f32;
        let intercept = num(ds, 0x0028, 0x1052, false).unwrap_or(0.0) as f32;
        let px = pixel_bytes(ds)?;
        let n = rows * cols;
        let raw: Vec<f32> = match (bits, signed) {
            (16, false) if px.len() >= 2 * n => px[..2 * n]
                .chunks_exact(2)
                .map(|b| f32::from(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            (16, true) if px.len() >= 2 * n => px[..2 * n]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            (8, _) if px.len() >= n => px[..n].iter().map(|b| f32::from(*b)).collect(),
            _ => {
                return Err(ImageError::Unsupported(
                    "pixel data must be 8 or 16 bits and as long as rows x columns",
                ))
            }
        };
        let acq = crate::acquisition::read(ds, encoding);
        let position = nth(ds, 0x0020, 0x0032, 2)
            .or_else(|| num(ds, 0x0020, 0x0013, false))
            .unwrap_or(0.0);
        Ok(Slice {
            rows,
            cols,
            values: raw.into_iter().map(|v| v * slope + intercept).collect(),
            b_value: acq.b_value,
            position,
            spacing: [
                nth(ds, 0x0028, 0x0030, 0).unwrap_or(1.0),
                nth(ds, 0x0028, 0x0030, 1).unwrap_or(1.0),
            ],
            sop_uid: dicom::text(ds, Tag(0x0008, 0x0018))
                .unwrap_or("")
                .to_string(),
        })
    })
}

/// Reads a binary Segmentation's frames.
pub fn segmentation(bytes: &[u8]) -> Result<Segmentation, ImageError> {
    open(bytes, |ds, _, rows, cols| {
        if num(ds, 0x0028, 0x0100, false) != Some(1.0) {
            return Err(ImageError::Unsupported(
                "only BINARY segmentations (1 bit) are read",
            ));
        }
        let frames = num(ds, 0x0028, 0x0008, false).unwrap_or(1.0) as usize;
        let px = pixel_bytes(ds)?;
        let n = rows * cols;
        if frames == 0 || px.len() < (frames * n).div_ceil(8) {
            return Err(ImageError::Unsupported(
                "pixel data shorter than its frames",
            ));
        }
        // Segment number -> gland / lesion, by code.
        let mut kinds = std::collections::BTreeMap::new();
        if let Some(Value::Seq(items)) = dicom::find(ds, Tag(0x0062, 0x0002)).map(|e| &e.value) {
            for it in items {
                let number = num(it, 0x0062, 0x0004, false).unwrap_or(0.0) as u32;
                let kind = crate::acquisition::segments(&[Element {
                    tag: Tag(0x0062, 0x0002),
                    vr: VR::SQ,
                    value: Value::Seq(vec![it.clone()]),
                }]);
                kinds.insert(number, kind.first().cloned().unwrap_or_default());
            }
        }
        let Some(Value::Seq(per_frame)) = dicom::find(ds, Tag(0x5200, 0x9230)).map(|e| &e.value)
        else {
            return Err(ImageError::Unsupported("no per-frame functional groups"));
        };
        if per_frame.len() != frames {
            return Err(ImageError::Unsupported(
                "one functional group per frame expected",
            ));
        }
        let mut out = Vec::with_capacity(frames);
        for (f, group) in per_frame.iter().enumerate() {
            let segment = item(group, 0x0062, 0x000A)
                .and_then(|s| num(s, 0x0062, 0x000B, false))
                .map(|n| n as u32)
                .and_then(|n| kinds.get(&n).cloned())
                .unwrap_or_default();
            let source_uid = item(group, 0x0008, 0x9124)
                .and_then(|d| item(d, 0x0008, 0x2112))
                .and_then(|s| dicom::text(s, Tag(0x0008, 0x1155)))
                .unwrap_or("")
                .to_string();
            let on = (0..n)
                .map(|i| {
                    let bit = f * n + i;
                    px[bit / 8] >> (bit % 8) & 1 == 1
                })
                .collect();
            out.push(SegFrame {
                segment,
                source_uid,
                on,
            });
        }
        Ok(Segmentation {
            rows,
            cols,
            frames: out,
        })
    })
}
