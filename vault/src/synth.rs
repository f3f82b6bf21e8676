//! Synthetic, identifiable mpMRI corpora: what a clinical site's PACS export looks like,
//! for tests, benchmarks and demos of the de-identifier.
//!
//! [`generate`] writes, deterministically from [`SynthConfig::seed`]:
//!
//! - `OUT/<SITE>/<FAMILY>_<GIVEN>_<MRN digits>/study-<n>/series-<number>/<instance>.dcm`:
//!   Explicit VR Little Endian MR Image Storage files (T2W, DWI, ADC, DCE) of the three
//!   vendors with their header conventions (private b-value tags, Siemens CSA headers,
//!   Philips private sequences written as explicit-VR `UN` of undefined length), and for
//!   about one patient in five a DICOM Segmentation (gland and index lesion) of the
//!   baseline T2W series, in `series-9901`. The index lesion shows in the images as
//!   much as the patient's ISUP grade says (not at all for 0, faintly for 1, plainly
//!   for 2 and above), so models can be checked against the clinical records;
//! - `OUT/<SITE>/clinical.csv`: one clinical record per patient of the site;
//! - `OUT/identifiers.json`: every identifying string planted anywhere above, so a test
//!   can assert that none of them survives de-identification.
//!
//! Identifying values are put everywhere scanners and RIS put them: patient name (some
//! non-ASCII, in ISO_IR 100 or ISO_IR 192), IDs, birth date, address, other IDs (with
//! the hospital's name three levels deep), accession numbers, physicians, operators, institution, station and
//! serial numbers, request attributes, free-text comments and histories, one series
//! description holding the surname for some patients, private CSA headers and private
//! sequences. Planted dates other than birth dates all fall in one 365-day window, so a
//! date moved back by at least a year (as the de-identifier does) can never equal a
//! planted one; IDs carry letters, so they cannot turn up by chance inside a numeric UID.
//!
//! This is test data, not crypto: the generator's PRNG is a plain splitmix64.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use dicom_core::smallvec::SmallVec;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value as DicomValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use time::macros::date;
use time::{Date, Duration};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of patients, spread round-robin over the sites.
    pub patients: usize,
    /// Number of sites (`SITE_A`, `SITE_B`, ...); at least 1.
    pub sites: usize,
    /// Seed: the same configuration and seed always give the same bytes.
    pub seed: u64,
    /// Slices per series (DCE: time points, each of 2 slices); at least 1.
    pub slices: usize,
    /// Image rows; at least 16.
    pub rows: u16,
    /// Image columns; at least 16.
    pub cols: u16,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            patients: 10,
            sites: 2,
            seed: 1,
            slices: 4,
            rows: 256,
            cols: 256,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthSummary {
    /// DICOM files written (`.dcm`; the CSV and JSON files are not counted).
    pub files: usize,
    /// Total size of those DICOM files, in bytes.
    pub bytes: u64,
    /// Patients.
    pub patients: usize,
    /// Studies (baselines and follow-ups).
    pub studies: usize,
    /// Series, the SEG series included.
    pub series: usize,
    /// Segmentation instances (one per SEG series).
    pub segs: usize,
    /// Site codes, in order (every site gets a folder and a `clinical.csv`).
    pub sites: Vec<String>,
}

/// Why a corpus could not be written. Messages name the path (which, in a synthetic
/// corpus, holds synthetic names only).
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The configuration cannot be generated.
    #[error("invalid synthetic corpus configuration: {0}")]
    Config(&'static str),
    /// Creating a folder or writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// dicom-object could not build the file meta group.
    #[error("cannot build the file meta group of {}: {source}", path.display())]
    Meta {
        /// The DICOM file.
        path: PathBuf,
        /// The dicom-object error.
        #[source]
        source: Box<dicom_object::WithMetaError>,
    },
    /// dicom-object could not encode the data set.
    #[error("cannot encode {}: {source}", path.display())]
    Write {
        /// The DICOM file.
        path: PathBuf,
        /// The dicom-object error.
        #[source]
        source: Box<dicom_object::WriteError>,
    },
    /// The encoded file does not end with the pixel data element, so the raw Philips
    /// private sequence has no place to go.
    #[error("cannot splice the private sequence into {}: pixel data is not the last element", path.display())]
    Splice {
        /// The DICOM file.
        path: PathBuf,
    },
    /// Writing a clinical CSV failed.
    #[error("cannot write {}: {source}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The csv error.
        #[source]
        source: csv::Error,
    },
    /// Writing `identifiers.json` failed.
    #[error("cannot write {}: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes a synthetic corpus under `out` (created if needed; files of an earlier run are
/// overwritten, not removed, so give it an empty folder) and says what it wrote.
///
/// Patient `i` (0-based) is at site `i % sites` and scanned on the site's Siemens, GE or
/// Philips scanner for `i % 3` = 0, 1, 2; even `i` also have a follow-up study 3 to 6
/// months after the baseline; `i % 5 == 0` have a SEG; `i % 6` = 1 and 2 have a Latin-1
/// (ISO_IR 100) and a UTF-8 (ISO_IR 192) name; `i % 4 == 1` have their surname in the
/// T2W Series Description of each study. Each study holds T2W, DWI (b = 0, 800, 1400 in
/// turn over the slices), ADC (`slices` images each) and DCE (`slices` time points of 2
/// slices).
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary, SynthError> {
    if cfg.sites == 0 {
        return Err(SynthError::Config("sites must be at least 1"));
    }
    if cfg.slices == 0 {
        return Err(SynthError::Config("slices must be at least 1"));
    }
    if cfg.rows < 16 || cfg.cols < 16 {
        return Err(SynthError::Config("rows and cols must be at least 16"));
    }
    mkdir(out)?;
    let mut g = Gen {
        cfg,
        out,
        ids: BTreeSet::new(),
        buf: Vec::with_capacity(cfg.rows as usize * cfg.cols as usize * 2 + 64 * 1024),
        pixels: Vec::new(),
        files: 0,
        bytes: 0,
        series: 0,
        segs: 0,
        studies: 0,
    };
    let sites: Vec<Site> = (0..cfg.sites).map(|i| Site::new(cfg.seed, i)).collect();
    let mut rows: Vec<Vec<[String; 12]>> = vec![Vec::new(); cfg.sites];
    let mut used_mrns = HashSet::new();
    for s in &sites {
        mkdir(&out.join(&s.code))?;
    }
    for i in 0..cfg.patients {
        let site = &sites[i % cfg.sites];
        let p = Patient::new(cfg, site, i, &mut used_mrns);
        g.register_patient(site, &p);
        let anatomy = Anatomy::new(cfg.rows as usize, cfg.cols as usize, &p.anatomy);
        for st in &p.studies {
            g.studies += 1;
            let base = study_base(site, &p, st);
            let mut t2 = None;
            for kind in [Kind::T2w, Kind::Dwi, Kind::Adc, Kind::Dce] {
                let refs = g.mr_series(site, &p, st, &anatomy, kind, &base)?;
                if kind == Kind::T2w {
                    t2 = Some(refs);
                }
            }
            if st.number == 1 && p.seg {
                if let Some(t2) = &t2 {
                    g.seg(site, &p, st, &anatomy, t2, &base)?;
                }
            }
        }
        rows[site.index].push(p.clinical_row());
    }
    for (s, site_rows) in sites.iter().zip(&rows) {
        write_csv(&out.join(&s.code).join("clinical.csv"), site_rows)?;
    }
    let ids_path = out.join("identifiers.json");
    let ids: Vec<&String> = g.ids.iter().collect();
    let json = serde_json::to_vec_pretty(&ids).map_err(|source| SynthError::Json {
        path: ids_path.clone(),
        source,
    })?;
    fs::write(&ids_path, json).map_err(|source| SynthError::Io {
        path: ids_path,
        source,
    })?;
    Ok(SynthSummary {
        files: g.files,
        bytes: g.bytes,
        patients: cfg.patients,
        studies: g.studies,
        series: g.series,
        segs: g.segs,
        sites: sites.into_iter().map(|s| s.code).collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Randomness, dates, text helpers

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64, with independent streams derived from the seed and a path of numbers.
#[derive(Debug, Clone)]
struct Rng(u64);

const STREAM_SITE: u64 = 1;
const STREAM_PATIENT: u64 = 2;
const STREAM_NOISE: u64 = 3;
const STREAM_CSA: u64 = 4;

impl Rng {
    fn new(seed: u64, path: &[u64]) -> Rng {
        let mut s = mix(seed.wrapping_add(0x9E37_79B9_7F4A_7C15));
        for &p in path {
            s = mix(s ^ p
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(0x632B_E59B_D9B4_E019));
        }
        Rng(s)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: u32) -> String {
        format!("{:0width$}", self.below(10u64.pow(n)), width = n as usize)
    }
}

/// The seed's component of every UID (9 digits, no leading zero), so corpora of
/// different seeds never share a UID.
fn uid_component(seed: u64) -> u64 {
    mix(seed ^ 0x5EED_C01D) % 900_000_000 + 100_000_000
}

fn da(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

fn iso(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A time of day (seconds since midnight) as TM.
fn tm(secs: u32) -> String {
    let s = secs % 86_400;
    format!("{:02}{:02}{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A DS value: at most 16 characters, no superfluous zeros.
fn ds(v: f64) -> String {
    let mut s = format!("{v:.6}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".into();
    }
    s.truncate(16);
    s
}

/// Text as the given Specific Character Set encodes it (ISO_IR 100 is Latin-1; no
/// character set and ISO_IR 192 are ASCII and UTF-8).
fn encode(charset: Option<&str>, s: &str) -> Vec<u8> {
    if charset == Some("ISO_IR 100") {
        s.chars()
            .map(|c| {
                if (c as u32) < 256 {
                    c as u32 as u8
                } else {
                    b'?'
                }
            })
            .collect()
    } else {
        s.as_bytes().to_vec()
    }
}

fn mkdir(path: &Path) -> Result<(), SynthError> {
    fs::create_dir_all(path).map_err(|source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Data set building helpers

/// Short-hands to put values into an object.
trait Put {
    fn text(&mut self, tag: Tag, vr: VR, v: &str);
    /// A multi-valued text value given with backslashes.
    fn multi(&mut self, tag: Tag, vr: VR, v: &str);
    fn us(&mut self, tag: Tag, v: &[u16]);
    fn ul(&mut self, tag: Tag, v: &[u32]);
    fn fd(&mut self, tag: Tag, v: &[f64]);
    fn fl(&mut self, tag: Tag, v: &[f32]);
    fn at(&mut self, tag: Tag, v: &[Tag]);
    fn seq(&mut self, tag: Tag, items: Vec<InMemDicomObject>);
    fn bytes(&mut self, tag: Tag, vr: VR, v: Vec<u8>);
}

impl Put for InMemDicomObject {
    fn text(&mut self, tag: Tag, vr: VR, v: &str) {
        self.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    fn multi(&mut self, tag: Tag, vr: VR, v: &str) {
        let vals: SmallVec<[String; 2]> = v.split('\\').map(str::to_string).collect();
        self.put(DataElement::new(tag, vr, PrimitiveValue::Strs(vals)));
    }
    fn us(&mut self, tag: Tag, v: &[u16]) {
        self.put(DataElement::new(
            tag,
            VR::US,
            PrimitiveValue::U16(v.iter().copied().collect()),
        ));
    }
    fn ul(&mut self, tag: Tag, v: &[u32]) {
        self.put(DataElement::new(
            tag,
            VR::UL,
            PrimitiveValue::U32(v.iter().copied().collect()),
        ));
    }
    fn fd(&mut self, tag: Tag, v: &[f64]) {
        self.put(DataElement::new(
            tag,
            VR::FD,
            PrimitiveValue::F64(v.iter().copied().collect()),
        ));
    }
    fn fl(&mut self, tag: Tag, v: &[f32]) {
        self.put(DataElement::new(
            tag,
            VR::FL,
            PrimitiveValue::F32(v.iter().copied().collect()),
        ));
    }
    fn at(&mut self, tag: Tag, v: &[Tag]) {
        self.put(DataElement::new(
            tag,
            VR::AT,
            PrimitiveValue::Tags(v.iter().copied().collect()),
        ));
    }
    fn seq(&mut self, tag: Tag, items: Vec<InMemDicomObject>) {
        self.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
    }
    fn bytes(&mut self, tag: Tag, vr: VR, mut v: Vec<u8>) {
        if v.len() % 2 == 1 {
            v.push(0);
        }
        self.put(DataElement::new(
            tag,
            vr,
            PrimitiveValue::U8(SmallVec::from_vec(v)),
        ));
    }
}

fn item(f: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    f(&mut o);
    o
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(|o| {
        o.text(tags::CODE_VALUE, VR::SH, value);
        o.text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
        o.text(tags::CODE_MEANING, VR::LO, meaning);
    })
}

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Detached Patient Management SOP Class (retired), what Referenced Patient Sequence
/// items point to.
const DETACHED_PATIENT: &str = "1.2.840.10008.3.1.2.1.1";
const UID_ROOT: &str = "1.3.6.1.4.1.99999";

// ---------------------------------------------------------------------------------------
// Vendors and series protocols

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Siemens,
    Ge,
    Philips,
}

const VENDORS: [Vendor; 3] = [Vendor::Siemens, Vendor::Ge, Vendor::Philips];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    T2w,
    Dwi,
    Adc,
    Dce,
}

impl Kind {
    fn index(self) -> u64 {
        match self {
            Kind::T2w => 0,
            Kind::Dwi => 1,
            Kind::Adc => 2,
            Kind::Dce => 3,
        }
    }
}

/// b-values of the DWI series, spread over its slices.
const B_VALUES: [u32; 3] = [0, 800, 1400];
const SEG_SERIES_NUMBER: u32 = 9901;

impl Vendor {
    fn manufacturer(self) -> &'static str {
        match self {
            Vendor::Siemens => "SIEMENS",
            Vendor::Ge => "GE MEDICAL SYSTEMS",
            Vendor::Philips => "Philips Medical Systems",
        }
    }
    /// (model, field strength in T).
    fn models(self) -> &'static [(&'static str, f64)] {
        match self {
            Vendor::Siemens => &[("Skyra", 3.0), ("Prisma", 3.0), ("Aera", 1.5)],
            Vendor::Ge => &[
                ("DISCOVERY MR750", 3.0),
                ("SIGNA Premier", 3.0),
                ("Optima MR450w", 1.5),
            ],
            Vendor::Philips => &[("Ingenia", 3.0), ("Achieva", 1.5), ("Ingenia", 1.5)],
        }
    }
    fn software(self) -> &'static str {
        match self {
            Vendor::Siemens => "syngo MR E11",
            Vendor::Ge => "27\\LX\\MR Software release:DV26.0_R03_1831.b",
            Vendor::Philips => "5.6.1\\5.6.1.2",
        }
    }
    fn implementation(self) -> (&'static str, &'static str) {
        match self {
            Vendor::Siemens => ("1.3.12.2.1107.5.2", "MR_VE11E"),
            Vendor::Ge => ("1.2.840.113619.6.374", "MR_DV26"),
            Vendor::Philips => ("1.3.46.670589.11.0.0.51.4.56.1", "Philips MR 56.1"),
        }
    }
    fn study_description(self) -> &'static str {
        match self {
            Vendor::Siemens => "Prostate^mpMRI",
            Vendor::Ge => "MR PROSTATE W/WO CONTRAST",
            Vendor::Philips => "PROSTATE mpMRI",
        }
    }
    /// Specific Character Set for pure-ASCII names (GE leaves it out).
    fn ascii_charset(self) -> Option<&'static str> {
        match self {
            Vendor::Ge => None,
            _ => Some("ISO_IR 100"),
        }
    }
    fn patient_position(self) -> &'static str {
        match self {
            Vendor::Ge => "FFS",
            _ => "HFS",
        }
    }
    fn protocol(self, kind: Kind) -> Protocol {
        use Kind::*;
        use Vendor::*;
        let t2 = Protocol {
            number: 0,
            description: "",
            protocol: "",
            image_type: "ORIGINAL\\PRIMARY\\OTHER",
            scanning_sequence: "SE",
            sequence_variant: "SK\\SP\\OSP",
            scan_options: "PFP",
            acquisition: "2D",
            sequence_name: "",
            tr: 5000.0,
            te: 104.0,
            etl: 25,
            flip: 150.0,
            averages: 2.0,
            bandwidth: 200.0,
            thickness: 3.0,
            spacing: 3.3,
            window: (700.0, 1600.0),
        };
        let dwi = Protocol {
            scanning_sequence: "EP",
            sequence_variant: "SK\\SP",
            scan_options: "PFP\\FS",
            tr: 4600.0,
            te: 66.0,
            etl: 1,
            flip: 90.0,
            averages: 4.0,
            bandwidth: 1900.0,
            thickness: 3.5,
            spacing: 3.85,
            window: (300.0, 800.0),
            ..t2
        };
        let adc = Protocol {
            image_type: "DERIVED\\PRIMARY\\ADC",
            window: (1200.0, 2400.0),
            ..dwi
        };
        let dce = Protocol {
            scanning_sequence: "GR",
            sequence_variant: "SP\\OSP",
            scan_options: "PFP\\FS",
            acquisition: "3D",
            tr: 4.65,
            te: 1.8,
            etl: 1,
            flip: 12.0,
            averages: 1.0,
            bandwidth: 400.0,
            thickness: 3.0,
            spacing: 3.0,
            window: (600.0, 1200.0),
            ..t2
        };
        match (self, kind) {
            (Siemens, T2w) => Protocol {
                number: 5,
                description: "t2_tse_tra",
                protocol: "t2_tse_tra",
                image_type: "ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D",
                sequence_name: "*tse2d1_25",
                scan_options: "PFP\\SAT1",
                ..t2
            },
            (Siemens, Dwi) => Protocol {
                number: 7,
                description: "ep2d_diff_b0_800_1400",
                protocol: "ep2d_diff_b0_800_1400",
                image_type: "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE\\ND\\NORM",
                sequence_name: "*ep_b1400t",
                ..dwi
            },
            (Siemens, Adc) => Protocol {
                number: 8,
                description: "ep2d_diff_b0_800_1400_ADC",
                protocol: "ep2d_diff_b0_800_1400",
                image_type: "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM",
                sequence_name: "*ep_b0_1400",
                ..adc
            },
            (Siemens, Dce) => Protocol {
                number: 12,
                description: "t1_vibe_dyn",
                protocol: "t1_vibe_dyn",
                image_type: "ORIGINAL\\PRIMARY\\M\\NORM\\DIS3D",
                sequence_name: "*fl3d1",
                ..dce
            },
            (Ge, T2w) => Protocol {
                number: 3,
                description: "Ax T2 FRFSE",
                protocol: "PROSTATE MP-MRI",
                sequence_variant: "SK\\OSP",
                scan_options: "FAST_GEMS\\FR_GEMS",
                sequence_name: "frfse2d",
                tr: 4800.0,
                te: 102.0,
                etl: 24,
                flip: 111.0,
                bandwidth: 244.1,
                spacing: 3.5,
                ..t2
            },
            (Ge, Dwi) => Protocol {
                number: 5,
                description: "Ax DWI",
                protocol: "PROSTATE MP-MRI",
                sequence_variant: "NONE",
                scan_options: "EPI_GEMS\\PFF",
                sequence_name: "epi2",
                tr: 4000.0,
                te: 68.0,
                averages: 6.0,
                bandwidth: 1953.1,
                spacing: 4.0,
                ..dwi
            },
            (Ge, Adc) => Protocol {
                number: 500,
                description: "ADC (10^-6 mm2/s)",
                protocol: "PROSTATE MP-MRI",
                image_type: "DERIVED\\PRIMARY\\ADC",
                sequence_variant: "NONE",
                scan_options: "EPI_GEMS\\PFF",
                sequence_name: "epi2",
                tr: 4000.0,
                te: 68.0,
                spacing: 4.0,
                ..adc
            },
            (Ge, Dce) => Protocol {
                number: 8,
                description: "Ax LAVA DCE",
                protocol: "PROSTATE MP-MRI",
                sequence_variant: "SS\\SK",
                scan_options: "FAST_GEMS\\EDR_GEMS\\SEQ_GEMS",
                sequence_name: "efgre3d",
                tr: 3.9,
                te: 1.8,
                ..dce
            },
            (Philips, T2w) => Protocol {
                number: 401,
                description: "T2W_TSE_ax",
                protocol: "T2W_TSE_ax",
                image_type: "ORIGINAL\\PRIMARY\\M_SE\\M\\SE",
                sequence_variant: "SK",
                scan_options: "OTHER",
                sequence_name: "TSE",
                tr: 3500.0,
                te: 100.0,
                etl: 18,
                flip: 90.0,
                ..t2
            },
            (Philips, Dwi) => Protocol {
                number: 601,
                description: "DWI_b0_800_1400",
                protocol: "DWI_b0_800_1400",
                image_type: "ORIGINAL\\PRIMARY\\DIFFUSION\\ISOTROPIC",
                sequence_variant: "SK",
                scan_options: "FS",
                sequence_name: "DwiSE",
                tr: 4500.0,
                te: 75.0,
                ..dwi
            },
            (Philips, Adc) => Protocol {
                number: 602,
                description: "dADC",
                protocol: "DWI_b0_800_1400",
                image_type: "DERIVED\\PRIMARY\\ADC\\ADC",
                sequence_variant: "SK",
                scan_options: "FS",
                sequence_name: "DwiSE",
                tr: 4500.0,
                te: 75.0,
                ..adc
            },
            (Philips, Dce) => Protocol {
                number: 901,
                description: "DCE_THRIVE",
                protocol: "DCE_THRIVE",
                image_type: "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE",
                sequence_variant: "SP",
                scan_options: "FS",
                sequence_name: "THRIVE",
                tr: 4.1,
                te: 2.0,
                flip: 10.0,
                ..dce
            },
        }
    }
}

/// How a vendor acquires one series type.
#[derive(Debug, Clone, Copy)]
struct Protocol {
    number: u32,
    description: &'static str,
    protocol: &'static str,
    image_type: &'static str,
    scanning_sequence: &'static str,
    sequence_variant: &'static str,
    scan_options: &'static str,
    acquisition: &'static str,
    sequence_name: &'static str,
    tr: f64,
    te: f64,
    etl: u32,
    flip: f64,
    averages: f64,
    bandwidth: f64,
    thickness: f64,
    spacing: f64,
    window: (f64, f64),
}

// ---------------------------------------------------------------------------------------
// Sites, people, patients

/// (institution, address, issuer of patient ID, city, telephone prefix). Fictional.
const INSTITUTIONS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "Ridgeview University Hospital",
        "14 Harbour Road, 4021 Ridgeview",
        "RIDGEVIEW_UH",
        "Ridgeview",
        "+44 161 555",
    ),
    (
        "Ospedale San Fittizio",
        "Via dei Colli 88, 40136 Bologna",
        "OSP_SAN_FITTIZIO",
        "Bologna",
        "+39 051 555",
    ),
    (
        "Hospital Universitario del Mar Ficticio",
        "Avenida del Puerto 301, 46026 Valencia",
        "HU_MAR_FICTICIO",
        "Valencia",
        "+34 963 555",
    ),
    (
        "Agios Mythikos General Hospital",
        "Leoforos Kifisias 120, 11526 Athens",
        "AGIOS_MYTHIKOS_GH",
        "Athens",
        "+30 210 555",
    ),
    (
        "Klinikum Erfundenstadt",
        "Lindenallee 5, 80331 Erfundenstadt",
        "KLINIKUM_ERFUNDEN",
        "Erfundenstadt",
        "+49 89 555",
    ),
    (
        "Centre Hospitalier Imaginaire",
        "12 rue des Songes, 69003 Lyon",
        "CH_IMAGINAIRE",
        "Lyon",
        "+33 4 555",
    ),
    (
        "Fictief Medisch Centrum",
        "Droomlaan 7, 6525 Nijmegen",
        "FICTIEF_MC",
        "Nijmegen",
        "+31 24 555",
    ),
    (
        "Hospital de Santa Inventada",
        "Rua das Flores 42, 4050 Porto",
        "HOSP_SANTA_INVENTADA",
        "Porto",
        "+351 22 555",
    ),
];

/// Physicians, radiographers and radiologists (family, given).
const STAFF: &[(&str, &str)] = &[
    ("NIKOLAOU", "ELENI"),
    ("BERGMANN", "KLAUS"),
    ("FONTAINE", "CLAIRE"),
    ("VERHOEVEN", "ANNEKE"),
    ("MORETTI", "LUCIA"),
    ("KRAWCZYK", "AGATA"),
    ("LINDQVIST", "INGRID"),
    ("OLIVEIRA", "RITA"),
    ("KELLER", "ANNA"),
    ("BRENNAN", "PATRICK"),
    ("SCHOLZ", "MARTINA"),
    ("DELACROIX", "HELENE"),
];

const ASCII_FAMILY: &[&str] = &[
    "DOE", "SMITH", "ROSSI", "JANSEN", "NOWAK", "SILVA", "DUBOIS", "WAGNER", "HANSEN", "MURPHY",
    "ROMANO", "COSTA", "PETERS", "KOWALSKI", "BAKKER", "MORENO", "LAMBERT", "FISCHER", "RICCI",
    "OCONNOR",
];
const ASCII_GIVEN: &[&str] = &[
    "JOHN", "ROBERT", "MARCO", "PIETER", "PIOTR", "ANTONIO", "PIERRE", "THOMAS", "ERIK", "SEAN",
    "GIUSEPPE", "MIGUEL", "WILLEM", "JANUSZ", "HENDRIK", "CARLOS", "LUC", "STEFAN", "LORENZO",
    "DECLAN",
];
/// Names that need ISO_IR 100 (Latin-1), used in turn. The first has an ASCII surname
/// and a non-ASCII given name: the de-identifier must still find the surname in free
/// text although the name as a whole is not valid UTF-8.
const LATIN1_NAMES: &[(&str, &str)] = &[
    ("FERREIRA", "JOÃO"),
    ("MÜLLER", "JÜRGEN"),
    ("GONZÁLEZ", "JOSÉ"),
    ("ØSTERGAARD", "SØREN"),
    ("LEFÈVRE", "FRANÇOIS"),
    ("NÚÑEZ", "ÁLVARO"),
];
/// A name's ideographic-position group (family, given), if it has one.
type AltName = Option<(&'static str, &'static str)>;

/// Names that need ISO_IR 192 (UTF-8), used in turn: alphabetic group, and an
/// ideographic-position group in Greek for some.
const UTF8_NAMES: &[(&str, &str, AltName)] = &[
    ("PAPADOPOULOS", "GIORGOS", Some(("ΠΑΠΑΔΟΠΟΥΛΟΣ", "ΓΙΩΡΓΟΣ"))),
    ("WIŚNIEWSKI", "ŁUKASZ", None),
    ("NIKOLAIDIS", "DIMITRIS", Some(("ΝΙΚΟΛΑΪΔΗΣ", "ΔΗΜΗΤΡΗΣ"))),
    ("DVOŘÁK", "JIŘÍ", None),
];
const STREETS: &[&str] = &[
    "Elm Street",
    "Mill Lane",
    "Station Road",
    "Church Street",
    "Park Avenue",
    "Kingsway",
    "Marina Drive",
    "Olive Grove",
];

/// A person's name: the DICOM PN value and its alphabetic components.
#[derive(Debug, Clone)]
struct Person {
    pn: String,
    family: String,
    given: String,
}

impl Person {
    fn new(family: &str, given: &str) -> Person {
        Person {
            pn: format!("{family}^{given}"),
            family: family.into(),
            given: given.into(),
        }
    }
    /// "GIVEN FAMILY", as people write it in free text.
    fn display(&self) -> String {
        format!("{} {}", self.given, self.family)
    }
}

#[derive(Debug, Clone)]
struct Device {
    model: &'static str,
    field: f64,
    station: String,
    serial: String,
}

#[derive(Debug, Clone)]
struct Site {
    index: usize,
    code: String,
    institution: String,
    address: String,
    issuer: String,
    city: String,
    phone: &'static str,
    /// One scanner per vendor, indexed like [`VENDORS`].
    devices: Vec<Device>,
    /// The radiology workstation SEGs are made on.
    workstation: Device,
}

/// `SITE_A`, ..., `SITE_Z`, `SITE_AA`, ...
fn site_code(mut i: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'A' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    letters.reverse();
    format!("SITE_{}", String::from_utf8(letters).unwrap_or_default())
}

impl Site {
    fn new(seed: u64, index: usize) -> Site {
        let mut rng = Rng::new(seed, &[STREAM_SITE, index as u64]);
        let (inst, addr, issuer, city, phone) = INSTITUTIONS[index % INSTITUTIONS.len()];
        let round = index / INSTITUTIONS.len();
        let suffix = if round == 0 {
            String::new()
        } else {
            format!(" {}", round + 1)
        };
        let abbr: String = issuer
            .chars()
            .filter(|c| c.is_ascii_alphabetic())
            .take(3)
            .collect();
        let devices = VENDORS
            .iter()
            .map(|&v| {
                let (model, field) = rng.pick(v.models());
                let (station, serial) = match v {
                    Vendor::Siemens => (
                        format!("AWP{}", rng.digits(5)),
                        format!("SN{}", rng.digits(6)),
                    ),
                    Vendor::Ge => (
                        format!("{abbr}GEMR{}", rng.between(1, 9)),
                        format!("GE{}MR", rng.digits(9)),
                    ),
                    Vendor::Philips => (
                        format!("PHILIPS-{}{}", abbr, rng.digits(4)),
                        format!("PH{}", rng.digits(5)),
                    ),
                };
                Device {
                    model,
                    field,
                    station,
                    serial,
                }
            })
            .collect();
        let workstation = Device {
            model: "dcmqi",
            field: 0.0,
            station: format!("RADWS-{abbr}{}", rng.digits(2)),
            serial: format!("WS{}", rng.digits(6)),
        };
        Site {
            index,
            code: site_code(index),
            institution: format!("{inst}{suffix}"),
            address: addr.to_string(),
            issuer: format!("{issuer}{}", suffix.replace(' ', "_")),
            city: city.to_string(),
            phone,
            devices,
            workstation,
        }
    }
}

/// Where the gland and lesion are, in normalised image coordinates (-1..1).
#[derive(Debug, Clone, Copy)]
struct AnatomyParams {
    gland_c: (f32, f32),
    gland_r: (f32, f32),
    lesion_c: (f32, f32),
    lesion_r: f32,
}

#[derive(Debug, Clone)]
struct Study {
    number: u32,
    date: Date,
    time: u32,
    uid: String,
    frame_of_reference: String,
    accession: String,
    study_id: String,
    requested_procedure_id: String,
    scheduled_step_id: String,
    performed_step_id: String,
    referring: Person,
    performing: Person,
    operator: Person,
    /// Table position of the slice stack centre, mm.
    z_centre: f64,
    /// UIDs of the localizer images the series reference.
    localizers: Vec<String>,
}

#[derive(Debug, Clone)]
struct Clinical {
    psa: f64,
    psa_date: Date,
    isup: u8,
    pirads: u8,
    biopsy_date: Date,
    treatment: &'static str,
    smoking: &'static str,
    comments: String,
}

#[derive(Debug, Clone)]
struct Patient {
    index: usize,
    vendor: Vendor,
    device: Device,
    name: Person,
    charset: Option<&'static str>,
    mrn: String,
    other_id: String,
    birth: Date,
    weight: u32,
    size: f64,
    address: String,
    phone: String,
    folder: String,
    uid_prefix: String,
    studies: Vec<Study>,
    seg: bool,
    surname_in_description: bool,
    radiologist: Person,
    anatomy: AnatomyParams,
    clinical: Clinical,
}

/// First day of the window every planted date but birth dates falls in (365 days).
fn window_start() -> Date {
    date!(2021 - 02 - 01)
}

impl Patient {
    fn new(
        cfg: &SynthConfig,
        site: &Site,
        index: usize,
        used_mrns: &mut HashSet<String>,
    ) -> Patient {
        let mut rng = Rng::new(cfg.seed, &[STREAM_PATIENT, index as u64]);
        let vendor = VENDORS[index % 3];
        // Patients 1, 7, 13, ... have Latin-1 names, 2, 8, 14, ... UTF-8 ones.
        let turn = index / 6;
        let (name, charset) = match index % 6 {
            1 => {
                let (f, g) = LATIN1_NAMES[turn % LATIN1_NAMES.len()];
                (Person::new(f, g), Some("ISO_IR 100"))
            }
            2 => {
                let (f, g, alt) = UTF8_NAMES[turn % UTF8_NAMES.len()];
                let mut p = Person::new(f, g);
                if let Some((af, ag)) = alt {
                    p.pn = format!("{f}^{g}={af}^{ag}");
                }
                (p, Some("ISO_IR 192"))
            }
            _ => (
                Person::new(rng.pick(ASCII_FAMILY), rng.pick(ASCII_GIVEN)),
                vendor.ascii_charset(),
            ),
        };
        let mrn = loop {
            let m = format!("MRN{}", rng.digits(7));
            if used_mrns.insert(m.clone()) {
                break m;
            }
        };
        let birth = date!(1940 - 01 - 01) + Duration::days(rng.between(0, 26 * 365));
        let start = window_start();
        let baseline = start + Duration::days(rng.between(60, 180));
        let mut dates = vec![baseline];
        if index & 1 == 0 {
            // A follow-up 3 to 6 months later (still inside the window).
            dates.push(baseline + Duration::days(rng.between(90, 180)));
        }
        let staff = |rng: &mut Rng| {
            let (f, g) = rng.pick(STAFF);
            Person::new(f, g)
        };
        let uid_prefix = format!(
            "{UID_ROOT}.{}.{}.{}",
            site.index + 1,
            uid_component(cfg.seed),
            index + 1
        );
        let studies = dates
            .iter()
            .enumerate()
            .map(|(k, &date)| {
                let n = k as u32 + 1;
                Study {
                    number: n,
                    date,
                    time: rng.between(7 * 3600 + 30 * 60, 17 * 3600) as u32,
                    uid: format!("{uid_prefix}.1.{n}"),
                    frame_of_reference: format!("{uid_prefix}.4.{n}"),
                    accession: format!("ACC{}", rng.digits(8)),
                    study_id: format!("ST{}", rng.digits(6)),
                    requested_procedure_id: format!("RP{}", rng.digits(7)),
                    scheduled_step_id: format!("SPS{}", rng.digits(7)),
                    performed_step_id: format!("PPS{}", rng.digits(7)),
                    referring: staff(&mut rng),
                    performing: staff(&mut rng),
                    operator: staff(&mut rng),
                    z_centre: rng.between(-40, 40) as f64,
                    localizers: (1..=3).map(|i| format!("{uid_prefix}.6.{n}.{i}")).collect(),
                }
            })
            .collect();
        let isup = rng.pick(&[0u8, 0, 1, 1, 2, 2, 3, 4, 5]);
        let pirads = match isup {
            0 => rng.between(1, 3) as u8,
            1 => rng.between(2, 4) as u8,
            _ => rng.between(4, 5) as u8,
        };
        let treatment = match isup {
            0 | 1 => "active surveillance",
            2 | 3 => rng.pick(&["radical prostatectomy", "radiotherapy", "focal therapy"]),
            _ => rng.pick(&["radiotherapy", "hormone therapy", "radical prostatectomy"]),
        };
        let psa_date = start + Duration::days(rng.between(0, (baseline - start).whole_days()));
        let biopsy_date = baseline + Duration::days(rng.between(7, 30));
        let comments = match rng.below(4) {
            0 => format!(
                "{} prefers to discuss options with his family",
                name.display()
            ),
            1 => "Family history of prostate cancer".to_string(),
            2 => format!("MDT: {} {}, reviewed with urology", name.family, name.given),
            _ => String::new(),
        };
        let anatomy = AnatomyParams {
            gland_c: (
                rng.between(-40, 40) as f32 / 1000.0,
                0.12 + rng.between(-30, 30) as f32 / 1000.0,
            ),
            gland_r: (
                0.17 + rng.between(-30, 30) as f32 / 1000.0,
                0.13 + rng.between(-20, 20) as f32 / 1000.0,
            ),
            lesion_c: (0.0, 0.0),
            lesion_r: 0.045 + rng.between(0, 25) as f32 / 1000.0,
        };
        // The index lesion: posterior peripheral zone, left or right.
        let side = if rng.below(2) == 0 { -1.0 } else { 1.0 };
        let anatomy = AnatomyParams {
            lesion_c: (
                anatomy.gland_c.0 + side * anatomy.gland_r.0 * 0.45,
                anatomy.gland_c.1 + anatomy.gland_r.1 * 0.4,
            ),
            ..anatomy
        };
        let mrn_digits = mrn.trim_start_matches("MRN").to_string();
        Patient {
            index,
            vendor,
            device: site.devices[index % 3].clone(),
            folder: format!("{}_{}_{}", name.family, name.given, mrn_digits),
            charset,
            mrn,
            other_id: format!("NID{}", rng.digits(9)),
            birth,
            weight: rng.between(62, 112) as u32,
            size: rng.between(162, 196) as f64 / 100.0,
            address: format!(
                "{} {}, {}",
                rng.between(1, 199),
                rng.pick(STREETS),
                site.city
            ),
            phone: format!("{} {}", site.phone, rng.digits(4)),
            uid_prefix,
            studies,
            seg: matches!(index % 5, 0),
            surname_in_description: index % 4 == 1,
            radiologist: staff(&mut rng),
            anatomy,
            clinical: Clinical {
                psa: (2.0 + rng.unit() * rng.unit() * 30.0 * 10.0).round() / 10.0,
                psa_date,
                isup,
                pirads,
                biopsy_date,
                treatment,
                smoking: rng.pick(&["never", "former", "current"]),
                comments,
            },
            name,
        }
    }

    fn age_at(&self, d: Date) -> u32 {
        let mut y = d.year() - self.birth.year();
        if (u8::from(d.month()), d.day()) < (u8::from(self.birth.month()), self.birth.day()) {
            y -= 1;
        }
        y.max(0) as u32
    }

    fn clinical_row(&self) -> [String; 12] {
        let c = &self.clinical;
        [
            self.mrn.clone(),
            format!("{}^{}", self.name.family, self.name.given),
            iso(self.birth),
            format!("{:.1}", c.psa),
            iso(c.psa_date),
            c.isup.to_string(),
            c.pirads.to_string(),
            if c.isup == 0 {
                "negative".to_string()
            } else {
                format!("ISUP{}", c.isup)
            },
            iso(c.biopsy_date),
            c.treatment.to_string(),
            c.smoking.to_string(),
            c.comments.clone(),
        ]
    }
}

const CSV_HEADER: [&str; 12] = [
    "patient_id",
    "patient_name",
    "birth_date",
    "psa",
    "psa_date",
    "isup_grade",
    "pirads",
    "biopsy_result",
    "biopsy_date",
    "treatment",
    "smoking",
    "comments",
];

fn write_csv(path: &Path, rows: &[[String; 12]]) -> Result<(), SynthError> {
    let err = |source| SynthError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    w.write_record(CSV_HEADER).map_err(err)?;
    for r in rows {
        w.write_record(r).map_err(err)?;
    }
    w.flush().map_err(|source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Pixels

/// Per-patient pixel layers, computed once and reused for every slice of every series:
/// a slice is a weighted sum of them plus noise, which costs a few operations a pixel.
struct Anatomy {
    rows: usize,
    cols: usize,
    /// Body texture, 0 outside the body.
    body: Vec<f32>,
    /// Squared normalised distance to the gland centre.
    gland: Vec<f32>,
    /// Squared normalised distance to the lesion centre.
    lesion: Vec<f32>,
}

/// Weights of the layers for one image.
#[derive(Debug, Clone, Copy)]
struct Contrast {
    body: f32,
    gland: f32,
    lesion: f32,
    noise: f32,
}

/// Position of a slice in its stack, -1 (first) to 1 (last).
fn stack_pos(k: usize, n: usize) -> f32 {
    if n <= 1 {
        0.0
    } else {
        k as f32 / (n - 1) as f32 * 2.0 - 1.0
    }
}

/// Gland radius scale at a stack position (largest mid-gland).
fn gland_scale(t: f32) -> f32 {
    (1.0 - 0.55 * t * t).max(0.0).sqrt()
}

/// Lesion radius scale at a stack position (0: not in this slice).
fn lesion_scale(t: f32) -> f32 {
    (1.0 - 2.5 * t * t).max(0.0).sqrt()
}

impl Anatomy {
    fn new(rows: usize, cols: usize, a: &AnatomyParams) -> Anatomy {
        let n = rows * cols;
        let (mut body, mut gland, mut lesion) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for y in 0..rows {
            let ny = (y as f32 + 0.5) / rows as f32 * 2.0 - 1.0;
            for x in 0..cols {
                let nx = (x as f32 + 0.5) / cols as f32 * 2.0 - 1.0;
                let e = (nx / 0.92).powi(2) + ((ny - 0.05) / 0.72).powi(2);
                let b = if e >= 1.0 {
                    0.0
                } else {
                    let mut v = 0.45 + 0.08 * (7.0 * nx).sin() * (5.0 * ny).cos();
                    if e > 0.78 {
                        v = 0.9; // subcutaneous fat
                    }
                    for hx in [-0.55f32, 0.55] {
                        let d = ((nx - hx) / 0.18).powi(2) + ((ny - 0.05) / 0.2).powi(2);
                        if d < 1.0 {
                            v = 0.25 + 0.2 * d; // femoral heads
                        }
                    }
                    let r = (nx / 0.09).powi(2) + ((ny - 0.42) / 0.08).powi(2);
                    if r < 1.0 {
                        v = 0.15; // rectum
                    }
                    v * ((1.0 - e) * 12.0).min(1.0)
                };
                body.push(b);
                gland.push(
                    ((nx - a.gland_c.0) / a.gland_r.0).powi(2)
                        + ((ny - a.gland_c.1) / a.gland_r.1).powi(2),
                );
                lesion.push(
                    ((nx - a.lesion_c.0) / a.lesion_r).powi(2)
                        + ((ny - a.lesion_c.1) / a.lesion_r).powi(2),
                );
            }
        }
        Anatomy {
            rows,
            cols,
            body,
            gland,
            lesion,
        }
    }

    /// Renders one 12-bit image into `out` (little-endian u16).
    fn render(&self, out: &mut Vec<u8>, c: Contrast, t: f32, rng: &mut Rng) {
        let gs = gland_scale(t).powi(2);
        let ls = lesion_scale(t).powi(2);
        let soft = |d2: f32, s2: f32| {
            if s2 <= 0.0 {
                0.0
            } else {
                ((s2 - d2) / (0.25 * s2)).clamp(0.0, 1.0)
            }
        };
        out.clear();
        out.reserve(self.rows * self.cols * 2);
        let mut r = 0u64;
        for i in 0..self.rows * self.cols {
            if i % 4 == 0 {
                r = rng.next();
            }
            let noise = ((r >> (16 * (i % 4))) & 0xFFFF) as f32 / 65535.0 - 0.5;
            let b = self.body[i];
            let v = if b > 0.0 {
                c.body * b
                    + c.gland * soft(self.gland[i], gs)
                    + c.lesion * soft(self.lesion[i], ls)
                    + 2.0 * noise * c.noise
            } else {
                noise.abs() * c.noise * 0.3
            };
            out.extend_from_slice(&(v.clamp(0.0, 4095.0) as u16).to_le_bytes());
        }
    }

    /// The binary masks of the gland and the lesion at a stack position.
    fn masks(&self, t: f32) -> (Vec<bool>, Vec<bool>) {
        let gs = gland_scale(t).powi(2);
        let ls = lesion_scale(t).powi(2);
        (
            self.gland.iter().map(|&d| d < gs).collect(),
            self.lesion
                .iter()
                .zip(&self.gland)
                .map(|(&d, &g)| ls > 0.0 && d < ls && g < gs)
                .collect(),
        )
    }
}

/// How visible the index lesion is, by ISUP grade: not at all without cancer, faintly
/// for grade 1, plainly for clinically significant cancer (grade 2 and above). The
/// compute enclave's tests rely on this: a model that finds the lesion separates
/// ISUP >= 2 from the rest, and the right answer is known from the clinical records.
fn conspicuity(isup: u8) -> f32 {
    match isup {
        0 => 0.0,
        1 => 0.35,
        2 => 0.8,
        _ => 1.0,
    }
}

fn contrast(kind: Kind, b: Option<u32>, temporal: Option<u32>) -> Contrast {
    match kind {
        Kind::T2w => Contrast {
            body: 1400.0,
            gland: 600.0,
            lesion: -900.0,
            noise: 60.0,
        },
        Kind::Dwi => match b.unwrap_or(0) {
            0 => Contrast {
                body: 900.0,
                gland: 300.0,
                lesion: 100.0,
                noise: 40.0,
            },
            800 => Contrast {
                body: 300.0,
                gland: 100.0,
                lesion: 500.0,
                noise: 25.0,
            },
            _ => Contrast {
                body: 150.0,
                gland: 40.0,
                lesion: 600.0,
                noise: 20.0,
            },
        },
        Kind::Adc => Contrast {
            body: 3000.0,
            gland: 150.0,
            lesion: -800.0,
            noise: 80.0,
        },
        Kind::Dce => {
            let t = temporal.unwrap_or(1).saturating_sub(1) as f32;
            // Wash-in then slow wash-out.
            let e = (1.0 - (-1.2 * t).exp()) * (-0.08 * t).exp();
            Contrast {
                body: 900.0 * (1.0 + 0.3 * e),
                gland: 250.0 * e,
                lesion: 1100.0 * e,
                noise: 30.0,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Vendor private data

/// A Siemens CSA2 ("SV10") header: a few entries, binary junk, and the patient's name
/// and ID as text, as real headers (the Phoenix protocol in particular) leak them.
fn csa_header(entries: &[(&str, &str, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut v = b"SV10\x04\x03\x02\x01".to_vec();
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    v.extend_from_slice(&77u32.to_le_bytes());
    for (name, vr, items) in entries {
        let mut nm = [0u8; 64];
        let n = name.len().min(63);
        nm[..n].copy_from_slice(&name.as_bytes()[..n]);
        v.extend_from_slice(&nm);
        v.extend_from_slice(&1u32.to_le_bytes()); // VM
        let mut vrb = [0u8; 4];
        vrb[..2].copy_from_slice(&vr.as_bytes()[..2]);
        v.extend_from_slice(&vrb);
        v.extend_from_slice(&6u32.to_le_bytes()); // SyngoDT
        v.extend_from_slice(&(items.len() as u32).to_le_bytes());
        v.extend_from_slice(&77u32.to_le_bytes());
        for it in items {
            let l = it.len() as u32;
            for x in [l, l, 77, l] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(it);
            while v.len() & 3 != 0 {
                v.push(0);
            }
        }
    }
    v
}

fn junk(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Appends an implicit VR little-endian element (even-padded value).
fn implicit(out: &mut Vec<u8>, g: u16, e: u16, mut value: Vec<u8>, pad: u8) {
    if value.len() % 2 == 1 {
        value.push(pad);
    }
    out.extend_from_slice(&g.to_le_bytes());
    out.extend_from_slice(&e.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&value);
}

const PHILIPS_SEQUENCE: Tag = Tag(0x2005, 0x1080);

/// The raw bytes of a Philips private sequence (2005,"Philips MR Imaging DD 001",80) as
/// Philips scanners write it: explicit VR `UN`, undefined length, items in implicit VR
/// little endian (one of undefined, one of defined length), holding the patient's name
/// and ID, the study date, the series UID and private elements of their own.
fn philips_sequence(p: &Patient, st: &Study, series_uid: &str, tr: f64) -> Vec<u8> {
    let creator = b"Philips MR Imaging DD 001".to_vec();
    let mut item1 = Vec::new();
    implicit(
        &mut item1,
        0x0010,
        0x0010,
        encode(p.charset, &p.name.pn),
        b' ',
    );
    implicit(
        &mut item1,
        0x0020,
        0x000E,
        series_uid.as_bytes().to_vec(),
        0,
    );
    implicit(&mut item1, 0x2005, 0x0010, creator.clone(), b' ');
    // Not on the safe list: a private text holding the name and MRN.
    let note = format!("{}^{} {}", p.name.family, p.name.given, p.mrn);
    implicit(&mut item1, 0x2005, 0x1018, encode(p.charset, &note), b' ');
    let mut item2 = Vec::new();
    implicit(&mut item2, 0x0008, 0x0020, da(st.date).into_bytes(), b' ');
    implicit(&mut item2, 0x0010, 0x0020, p.mrn.as_bytes().to_vec(), b' ');
    implicit(&mut item2, 0x2005, 0x0010, creator, b' ');
    // On the safe list: a number.
    implicit(
        &mut item2,
        0x2005,
        0x1030,
        (tr as f32).to_le_bytes().to_vec(),
        0,
    );

    let mut out = Vec::with_capacity(item1.len() + item2.len() + 48);
    out.extend_from_slice(&PHILIPS_SEQUENCE.group().to_le_bytes());
    out.extend_from_slice(&PHILIPS_SEQUENCE.element().to_le_bytes());
    out.extend_from_slice(b"UN\0\0");
    out.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    // Item 1: undefined length, closed by an item delimiter.
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    out.extend_from_slice(&item1);
    out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    // Item 2: defined length.
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    out.extend_from_slice(&(item2.len() as u32).to_le_bytes());
    out.extend_from_slice(&item2);
    // Sequence delimiter.
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out
}

// ---------------------------------------------------------------------------------------
// Data sets

/// Patient and study attributes shared by every instance of a study (MR and SEG).
fn study_base(site: &Site, p: &Patient, st: &Study) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    if let Some(cs) = p.charset {
        o.text(tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }
    o.text(tags::STUDY_DATE, VR::DA, &da(st.date));
    o.text(tags::STUDY_TIME, VR::TM, &tm(st.time));
    o.text(tags::ACCESSION_NUMBER, VR::SH, &st.accession);
    o.text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, &st.referring.pn);
    o.text(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        p.vendor.study_description(),
    );
    o.seq(
        tags::REFERENCED_PATIENT_SEQUENCE,
        vec![item(|i| {
            i.text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, DETACHED_PATIENT);
            i.text(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &format!("{}.5", p.uid_prefix),
            );
        })],
    );
    o.text(tags::PATIENT_NAME, VR::PN, &p.name.pn);
    o.text(tags::PATIENT_ID, VR::LO, &p.mrn);
    o.text(tags::ISSUER_OF_PATIENT_ID, VR::LO, &site.issuer);
    o.text(tags::PATIENT_BIRTH_DATE, VR::DA, &da(p.birth));
    o.text(tags::PATIENT_SEX, VR::CS, "M");
    // Other Patient IDs (retired, still written by many RIS).
    o.text(Tag(0x0010, 0x1000), VR::LO, &p.other_id);
    o.seq(
        tags::OTHER_PATIENT_I_DS_SEQUENCE,
        vec![item(|i| {
            i.text(tags::PATIENT_ID, VR::LO, &p.other_id);
            i.text(tags::ISSUER_OF_PATIENT_ID, VR::LO, &site.issuer);
            i.text(tags::TYPE_OF_PATIENT_ID, VR::CS, "TEXT");
            i.seq(
                tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
                vec![item(|q| {
                    q.text(
                        tags::UNIVERSAL_ENTITY_ID,
                        VR::UT,
                        &format!("{UID_ROOT}.{}", site.index + 1),
                    );
                    q.text(tags::UNIVERSAL_ENTITY_ID_TYPE, VR::CS, "ISO");
                    // Three levels down: the hospital's name.
                    q.seq(
                        tags::ASSIGNING_FACILITY_SEQUENCE,
                        vec![item(|f| {
                            f.text(tags::LOCAL_NAMESPACE_ENTITY_ID, VR::UT, &site.institution)
                        })],
                    );
                })],
            );
        })],
    );
    o.text(
        tags::PATIENT_AGE,
        VR::AS,
        &format!("{:03}Y", p.age_at(st.date)),
    );
    o.text(tags::PATIENT_SIZE, VR::DS, &ds(p.size));
    o.text(tags::PATIENT_WEIGHT, VR::DS, &p.weight.to_string());
    o.text(tags::PATIENT_ADDRESS, VR::LO, &p.address);
    o.text(tags::PATIENT_TELEPHONE_NUMBERS, VR::SH, &p.phone);
    o.text(
        tags::ADDITIONAL_PATIENT_HISTORY,
        VR::LT,
        &format!(
            "{}, referred by {} for rising PSA ({:.1} ng/mL on {}). Lives at {}.",
            p.name.display(),
            st.referring.display(),
            p.clinical.psa,
            iso(p.clinical.psa_date),
            p.address
        ),
    );
    o.text(tags::STUDY_INSTANCE_UID, VR::UI, &st.uid);
    o.text(tags::STUDY_ID, VR::SH, &st.study_id);
    o.text(tags::REQUESTING_PHYSICIAN, VR::PN, &st.referring.pn);
    o.text(
        tags::REQUESTED_PROCEDURE_DESCRIPTION,
        VR::LO,
        "MRI PROSTATE",
    );
    o.text(
        Tag(0x0032, 0x4000), // Study Comments (retired, still common)
        VR::LT,
        &format!(
            "Patient {} ({}), scanned {}; claustrophobic, needs a call on {}",
            p.name.pn,
            p.mrn,
            iso(st.date),
            p.phone
        ),
    );
    o
}

/// The reference of one source image, for the SEG.
struct SliceRef {
    sop_uid: String,
    position: [f64; 3],
    stack: f32,
}

/// What the SEG needs of the T2W series.
struct SeriesRefs {
    series_uid: String,
    slices: Vec<SliceRef>,
    pixel_spacing: f64,
    thickness: f64,
    spacing: f64,
}

/// One image of a series.
struct Slice {
    instance: u32,
    stack: f32,
    z: f64,
    b: Option<u32>,
    temporal: Option<u32>,
    /// Seconds after the series start.
    offset: u32,
}

const FIELD_OF_VIEW_MM: f64 = 200.0;
const DCE_TEMPORAL_RESOLUTION_S: u32 = 10;

fn plan(kind: Kind, n: usize, proto: &Protocol, z_centre: f64) -> Vec<Slice> {
    let z_of = |k: usize, n: usize| z_centre + (k as f64 - (n as f64 - 1.0) / 2.0) * proto.spacing;
    match kind {
        Kind::Dce => (0..n)
            .flat_map(|t| {
                (0..2).map(move |loc| Slice {
                    instance: (t * 2 + loc + 1) as u32,
                    stack: (loc as f32 - 0.5) * 0.4,
                    z: z_centre + (loc as f64 - 0.5) * proto.spacing,
                    b: None,
                    temporal: Some(t as u32 + 1),
                    offset: t as u32 * DCE_TEMPORAL_RESOLUTION_S,
                })
            })
            .collect(),
        _ => (0..n)
            .map(|k| Slice {
                instance: k as u32 + 1,
                stack: stack_pos(k, n),
                z: z_of(k, n),
                b: (kind == Kind::Dwi).then(|| B_VALUES[k % B_VALUES.len()]),
                temporal: None,
                offset: k as u32,
            })
            .collect(),
    }
}

/// Series start, seconds after the study start.
fn series_offset(kind: Kind) -> u32 {
    match kind {
        Kind::T2w => 300,
        Kind::Dwi => 720,
        Kind::Adc => 760,
        Kind::Dce => 1200,
    }
}

struct Gen<'a> {
    cfg: &'a SynthConfig,
    out: &'a Path,
    ids: BTreeSet<String>,
    buf: Vec<u8>,
    pixels: Vec<u8>,
    files: usize,
    bytes: u64,
    series: usize,
    segs: usize,
    studies: usize,
}

impl Gen<'_> {
    fn id(&mut self, s: &str) {
        let s = s.trim();
        if !s.is_empty() {
            self.ids.insert(s.to_string());
        }
    }

    /// A name, its component groups and its components of 3 characters or more.
    fn name(&mut self, pn: &str) {
        self.id(pn);
        for group in pn.split('=') {
            self.id(group);
            for part in group.split(['^', ' ']) {
                if part.chars().count() >= 3 {
                    self.id(part);
                }
            }
        }
    }

    fn date(&mut self, d: Date) {
        self.id(&da(d));
        self.id(&iso(d));
    }

    /// Everything identifying about a patient that [`Patient::new`] decided; the UIDs of
    /// series and instances are added as they are written.
    fn register_patient(&mut self, site: &Site, p: &Patient) {
        self.name(&p.name.pn);
        self.name(&format!("{}^{}", p.name.family, p.name.given));
        for s in [
            &p.mrn,
            &p.other_id,
            &p.address,
            &p.phone,
            &site.institution,
            &site.address,
            &site.issuer,
            &p.device.station,
            &p.device.serial,
            &format!("{}.5", p.uid_prefix),
            &format!("{UID_ROOT}.{}", site.index + 1),
        ] {
            self.id(s);
        }
        self.date(p.birth);
        self.date(p.clinical.psa_date);
        self.date(p.clinical.biopsy_date);
        if p.seg {
            self.name(&p.radiologist.pn);
            self.id(&site.workstation.station);
            self.id(&site.workstation.serial);
        }
        for st in &p.studies {
            self.date(st.date);
            for s in [
                &st.uid,
                &st.frame_of_reference,
                &st.accession,
                &st.study_id,
                &st.requested_procedure_id,
                &st.scheduled_step_id,
                &st.performed_step_id,
            ] {
                self.id(s);
            }
            for l in &st.localizers {
                self.id(l);
            }
            for person in [&st.referring, &st.performing, &st.operator] {
                self.name(&person.pn);
            }
        }
    }

    /// Encodes `obj` as a Part 10 file at `path` (with `splice` inserted right before
    /// the pixel data, which must be the last element) and hands the object back.
    fn write(
        &mut self,
        path: &Path,
        obj: InMemDicomObject,
        meta: FileMetaTableBuilder,
        splice: Option<&[u8]>,
        pixel_len: usize,
    ) -> Result<InMemDicomObject, SynthError> {
        let file = obj.with_meta(meta).map_err(|e| SynthError::Meta {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        self.buf.clear();
        file.write_all(&mut self.buf)
            .map_err(|e| SynthError::Write {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        let obj = file.into_inner();
        let io = |source| SynthError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = fs::File::create(path).map_err(io)?;
        match splice {
            None => f.write_all(&self.buf).map_err(io)?,
            Some(raw) => {
                // The pixel data element (tag, VR, reserved, 32-bit length, value) ends
                // the data set: the private sequence goes right before it.
                let at = self
                    .buf
                    .len()
                    .checked_sub(12 + pixel_len)
                    .filter(|&at| self.buf[at..at + 4] == [0xE0, 0x7F, 0x10, 0x00])
                    .ok_or_else(|| SynthError::Splice {
                        path: path.to_path_buf(),
                    })?;
                f.write_all(&self.buf[..at]).map_err(io)?;
                f.write_all(raw).map_err(io)?;
                f.write_all(&self.buf[at..]).map_err(io)?;
                self.bytes += raw.len() as u64;
            }
        }
        self.files += 1;
        self.bytes += self.buf.len() as u64;
        Ok(obj)
    }

    fn series_dir(&self, site: &Site, p: &Patient, st: &Study, number: u32) -> PathBuf {
        self.out
            .join(&site.code)
            .join(&p.folder)
            .join(format!("study-{}", st.number))
            .join(format!("series-{number}"))
    }

    fn mr_series(
        &mut self,
        site: &Site,
        p: &Patient,
        st: &Study,
        anatomy: &Anatomy,
        kind: Kind,
        study: &InMemDicomObject,
    ) -> Result<SeriesRefs, SynthError> {
        let proto = p.vendor.protocol(kind);
        let dir = self.series_dir(site, p, st, proto.number);
        mkdir(&dir)?;
        self.series += 1;
        let series_uid = format!("{}.2.{}.{}", p.uid_prefix, st.number, proto.number);
        self.id(&series_uid);
        let start = st.time + series_offset(kind);
        let date = da(st.date);
        let dev = &p.device;
        let ps = FIELD_OF_VIEW_MM / self.cfg.cols.max(self.cfg.rows) as f64;
        let (x0, y0) = (
            -(self.cfg.cols as f64) * ps / 2.0,
            -(self.cfg.rows as f64) * ps / 2.0,
        );
        let slices = plan(kind, self.cfg.slices, &proto, st.z_centre);
        let description = if kind == Kind::T2w && p.surname_in_description {
            // What a technologist types to find the patient again.
            format!("{} {}", proto.description, p.name.family)
        } else {
            proto.description.to_string()
        };

        let mut o = study.clone();
        o.multi(tags::IMAGE_TYPE, VR::CS, proto.image_type);
        o.text(tags::SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE);
        o.text(tags::SERIES_DATE, VR::DA, &date);
        o.text(tags::ACQUISITION_DATE, VR::DA, &date);
        o.text(tags::CONTENT_DATE, VR::DA, &date);
        o.text(tags::INSTANCE_CREATION_DATE, VR::DA, &date);
        o.text(tags::SERIES_TIME, VR::TM, &tm(start));
        o.text(tags::MODALITY, VR::CS, "MR");
        o.text(tags::MANUFACTURER, VR::LO, p.vendor.manufacturer());
        o.text(tags::INSTITUTION_NAME, VR::LO, &site.institution);
        o.text(tags::INSTITUTION_ADDRESS, VR::ST, &site.address);
        o.text(tags::STATION_NAME, VR::SH, &dev.station);
        o.text(tags::SERIES_DESCRIPTION, VR::LO, &description);
        o.text(tags::INSTITUTIONAL_DEPARTMENT_NAME, VR::LO, "Radiology");
        o.text(tags::PERFORMING_PHYSICIAN_NAME, VR::PN, &st.performing.pn);
        o.text(tags::OPERATORS_NAME, VR::PN, &st.operator.pn);
        o.text(tags::MANUFACTURER_MODEL_NAME, VR::LO, dev.model);
        o.seq(
            tags::REFERENCED_IMAGE_SEQUENCE,
            st.localizers
                .iter()
                .map(|l| {
                    item(|i| {
                        i.text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE);
                        i.text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, l);
                    })
                })
                .collect(),
        );
        o.text(tags::BODY_PART_EXAMINED, VR::CS, "PROSTATE");
        o.multi(tags::SCANNING_SEQUENCE, VR::CS, proto.scanning_sequence);
        o.multi(tags::SEQUENCE_VARIANT, VR::CS, proto.sequence_variant);
        o.multi(tags::SCAN_OPTIONS, VR::CS, proto.scan_options);
        o.text(tags::MR_ACQUISITION_TYPE, VR::CS, proto.acquisition);
        o.text(tags::SEQUENCE_NAME, VR::SH, proto.sequence_name);
        o.text(tags::ANGIO_FLAG, VR::CS, "N");
        o.text(tags::SLICE_THICKNESS, VR::DS, &ds(proto.thickness));
        o.text(tags::REPETITION_TIME, VR::DS, &ds(proto.tr));
        o.text(tags::ECHO_TIME, VR::DS, &ds(proto.te));
        o.text(tags::NUMBER_OF_AVERAGES, VR::DS, &ds(proto.averages));
        o.text(tags::IMAGING_FREQUENCY, VR::DS, &ds(dev.field * 42.577_478));
        o.text(tags::IMAGED_NUCLEUS, VR::SH, "1H");
        o.text(tags::ECHO_NUMBERS, VR::IS, "1");
        o.text(tags::MAGNETIC_FIELD_STRENGTH, VR::DS, &ds(dev.field));
        o.text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(proto.spacing));
        o.text(tags::ECHO_TRAIN_LENGTH, VR::IS, &proto.etl.to_string());
        o.text(tags::PIXEL_BANDWIDTH, VR::DS, &ds(proto.bandwidth));
        o.text(tags::DEVICE_SERIAL_NUMBER, VR::LO, &dev.serial);
        o.multi(tags::SOFTWARE_VERSIONS, VR::LO, p.vendor.software());
        o.text(tags::PROTOCOL_NAME, VR::LO, proto.protocol);
        o.us(
            tags::ACQUISITION_MATRIX,
            &[0, self.cfg.cols.min(320), self.cfg.rows.min(320), 0],
        );
        o.text(tags::IN_PLANE_PHASE_ENCODING_DIRECTION, VR::CS, "ROW");
        o.text(tags::FLIP_ANGLE, VR::DS, &ds(proto.flip));
        o.text(tags::PATIENT_POSITION, VR::CS, p.vendor.patient_position());
        o.text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
        o.text(tags::SERIES_NUMBER, VR::IS, &proto.number.to_string());
        o.text(tags::ACQUISITION_NUMBER, VR::IS, "1");
        o.multi(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0");
        o.text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &st.frame_of_reference);
        o.text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        o.us(tags::SAMPLES_PER_PIXEL, &[1]);
        o.text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        o.us(tags::ROWS, &[self.cfg.rows]);
        o.us(tags::COLUMNS, &[self.cfg.cols]);
        o.multi(
            tags::PIXEL_SPACING,
            VR::DS,
            &format!("{}\\{}", ds(ps), ds(ps)),
        );
        o.us(tags::BITS_ALLOCATED, &[16]);
        o.us(tags::BITS_STORED, &[12]);
        o.us(tags::HIGH_BIT, &[11]);
        o.us(tags::PIXEL_REPRESENTATION, &[0]);
        o.text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
        o.text(tags::WINDOW_CENTER, VR::DS, &ds(proto.window.0));
        o.text(tags::WINDOW_WIDTH, VR::DS, &ds(proto.window.1));
        o.text(tags::PERFORMED_PROCEDURE_STEP_START_DATE, VR::DA, &date);
        o.text(
            tags::PERFORMED_PROCEDURE_STEP_START_TIME,
            VR::TM,
            &tm(st.time),
        );
        o.text(
            tags::PERFORMED_PROCEDURE_STEP_ID,
            VR::SH,
            &st.performed_step_id,
        );
        o.text(
            tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION,
            VR::LO,
            "MRI PROSTATE",
        );
        o.seq(
            tags::REQUEST_ATTRIBUTES_SEQUENCE,
            vec![item(|i| {
                i.text(tags::ACCESSION_NUMBER, VR::SH, &st.accession);
                i.seq(
                    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
                    vec![item(|q| {
                        q.text(tags::LOCAL_NAMESPACE_ENTITY_ID, VR::UT, &site.institution)
                    })],
                );
                i.text(tags::STUDY_INSTANCE_UID, VR::UI, &st.uid);
                i.text(
                    tags::REQUESTED_PROCEDURE_DESCRIPTION,
                    VR::LO,
                    "MRI PROSTATE",
                );
                i.text(
                    tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
                    VR::LO,
                    "MRI PROSTATE MP",
                );
                i.text(
                    tags::SCHEDULED_PROCEDURE_STEP_ID,
                    VR::SH,
                    &st.scheduled_step_id,
                );
                i.text(
                    tags::REQUESTED_PROCEDURE_ID,
                    VR::SH,
                    &st.requested_procedure_id,
                );
            })],
        );
        if kind == Kind::Dce {
            o.text(tags::CONTRAST_BOLUS_AGENT, VR::LO, "Gadovist");
            o.text(tags::CONTRAST_BOLUS_ROUTE, VR::LO, "IV");
            o.text(tags::CONTRAST_BOLUS_VOLUME, VR::DS, "7.5");
            o.text(
                tags::NUMBER_OF_TEMPORAL_POSITIONS,
                VR::IS,
                &self.cfg.slices.to_string(),
            );
            o.text(
                tags::TEMPORAL_RESOLUTION,
                VR::DS,
                &(DCE_TEMPORAL_RESOLUTION_S * 1000).to_string(),
            );
        }
        // Vendor private data common to the series.
        let mut csa_rng = Rng::new(
            self.cfg.seed,
            &[STREAM_CSA, p.index as u64, st.number as u64, kind.index()],
        );
        match p.vendor {
            Vendor::Siemens => {
                o.text(Tag(0x0019, 0x0010), VR::LO, "SIEMENS MR HEADER");
                o.text(Tag(0x0019, 0x1008), VR::CS, "IMAGE NUM 4");
                o.text(Tag(0x0019, 0x1009), VR::LO, "1.0");
                o.text(Tag(0x0029, 0x0010), VR::LO, "SIEMENS CSA HEADER");
                o.text(Tag(0x0029, 0x1008), VR::CS, "IMAGE NUM 4");
                o.text(Tag(0x0029, 0x1018), VR::CS, "MR");
                let name = encode(p.charset, &p.name.pn);
                let phoenix = [
                    b"### ASCCONV BEGIN ###\nulVersion = 0x14b44b6\ntProtocolName = \"".as_slice(),
                    proto.protocol.as_bytes(),
                    b"\"\nsPatient.tPatientName = \"",
                    &name,
                    b"\"\nsPatient.tPatientID = \"",
                    p.mrn.as_bytes(),
                    b"\"\n### ASCCONV END ###\n",
                ]
                .concat();
                let image_csa = csa_header(&[
                    ("ImaCoilString", "LO", vec![b"BO1,2;SP3-5".to_vec()]),
                    (
                        "SliceNormalVector",
                        "FD",
                        vec![b"0.0".to_vec(), b"0.0".to_vec(), b"1.0".to_vec()],
                    ),
                    ("ImaAbsTablePosition", "SL", vec![junk(&mut csa_rng, 48)]),
                    ("PatientName", "PN", vec![name.clone()]),
                    ("ImaComments", "LT", vec![junk(&mut csa_rng, 96)]),
                ]);
                let series_csa = csa_header(&[
                    (
                        "UsedPatientWeight",
                        "IS",
                        vec![p.weight.to_string().into_bytes()],
                    ),
                    ("MrPhoenixProtocol", "UN", vec![phoenix]),
                    ("CoilForGradient", "SH", vec![junk(&mut csa_rng, 64)]),
                ]);
                o.bytes(Tag(0x0029, 0x1010), VR::OB, image_csa);
                o.bytes(Tag(0x0029, 0x1020), VR::OB, series_csa);
            }
            Vendor::Ge => {
                o.text(Tag(0x0009, 0x0010), VR::LO, "GEMS_IDEN_01");
                o.text(Tag(0x0009, 0x1001), VR::LO, "GE_GENESIS_FF");
                // Suite ID: the scanner's name, not on the safe list.
                o.text(Tag(0x0009, 0x1002), VR::SH, &dev.station);
            }
            Vendor::Philips => {
                o.text(Tag(0x2001, 0x0010), VR::LO, "Philips Imaging DD 001");
                o.text(Tag(0x2001, 0x100B), VR::CS, "TRANSVERSAL");
                o.text(Tag(0x2005, 0x0010), VR::LO, "Philips MR Imaging DD 001");
                o.fl(Tag(0x2005, 0x100D), &[0.0]);
                o.fl(
                    Tag(0x2005, 0x100E),
                    &[1.0 + csa_rng.below(1000) as f32 / 1000.0],
                );
            }
        }
        let splice =
            (p.vendor == Vendor::Philips).then(|| philips_sequence(p, st, &series_uid, proto.tr));

        let (impl_uid, impl_version) = p.vendor.implementation();
        let pixel_len = self.cfg.rows as usize * self.cfg.cols as usize * 2;
        let mut refs = Vec::with_capacity(slices.len());
        let last = slices.len();
        for (n, s) in slices.iter().enumerate() {
            let sop_uid = format!(
                "{}.3.{}.{}.{}",
                p.uid_prefix, st.number, proto.number, s.instance
            );
            self.id(&sop_uid);
            let time = tm(start + s.offset);
            let position = [x0, y0, s.z];
            o.text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
            o.text(tags::INSTANCE_CREATION_TIME, VR::TM, &time);
            o.text(tags::ACQUISITION_TIME, VR::TM, &time);
            o.text(tags::CONTENT_TIME, VR::TM, &time);
            o.text(tags::INSTANCE_NUMBER, VR::IS, &s.instance.to_string());
            o.multi(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                &format!(
                    "{}\\{}\\{}",
                    ds(position[0]),
                    ds(position[1]),
                    ds(position[2])
                ),
            );
            o.text(tags::SLICE_LOCATION, VR::DS, &ds(s.z));
            if n == 0 || n + 1 == last {
                o.text(
                    tags::IMAGE_COMMENTS,
                    VR::LT,
                    &format!("{} ({}) - {} ok", p.name.pn, p.mrn, proto.description),
                );
            } else {
                o.remove_element(tags::IMAGE_COMMENTS);
            }
            if let Some(t) = s.temporal {
                o.text(tags::TEMPORAL_POSITION_IDENTIFIER, VR::IS, &t.to_string());
                o.text(
                    tags::TRIGGER_TIME,
                    VR::DS,
                    &(s.offset as u64 * 1000).to_string(),
                );
            }
            if let Some(b) = s.b {
                o.fd(tags::DIFFUSION_B_VALUE, &[b as f64]);
                let dir = if b == 0 { [0.0; 3] } else { [0.0, 0.0, 1.0] };
                match p.vendor {
                    Vendor::Siemens => {
                        o.text(Tag(0x0019, 0x100C), VR::IS, &b.to_string());
                        o.text(
                            Tag(0x0019, 0x100D),
                            VR::CS,
                            if b == 0 { "NONE" } else { "DIRECTIONAL" },
                        );
                        if b == 0 {
                            o.remove_element(Tag(0x0019, 0x100E));
                            o.remove_element(Tag(0x0019, 0x1027));
                        } else {
                            o.fd(Tag(0x0019, 0x100E), &dir);
                            o.fd(Tag(0x0019, 0x1027), &[0.0, 0.0, 0.0, 0.0, 0.0, b as f64]);
                        }
                    }
                    Vendor::Ge => {
                        o.text(Tag(0x0019, 0x0010), VR::LO, "GEMS_ACQU_01");
                        for (e, v) in [(0x10BB, dir[0]), (0x10BC, dir[1]), (0x10BD, dir[2])] {
                            o.text(Tag(0x0019, e), VR::DS, &ds(v));
                        }
                        o.text(Tag(0x0043, 0x0010), VR::LO, "GEMS_PARM_01");
                        // slop_int_6..9: the b-value, plus 10^9 on some software versions.
                        let first = if p.index % 2 == 1 && b > 0 {
                            b as u64 + 1_000_000_000
                        } else {
                            b as u64
                        };
                        o.multi(Tag(0x0043, 0x1039), VR::IS, &format!("{first}\\8\\0\\0"));
                    }
                    Vendor::Philips => {
                        o.fl(Tag(0x2001, 0x1003), &[b as f32]);
                        o.text(Tag(0x2001, 0x1004), VR::CS, if b == 0 { "O" } else { "I" });
                    }
                }
            }
            let mut rng = Rng::new(
                self.cfg.seed,
                &[
                    STREAM_NOISE,
                    p.index as u64,
                    st.number as u64,
                    kind.index(),
                    s.instance as u64,
                ],
            );
            let mut pixels = std::mem::take(&mut self.pixels);
            let mut c = contrast(kind, s.b, s.temporal);
            c.lesion *= conspicuity(p.clinical.isup);
            anatomy.render(&mut pixels, c, s.stack, &mut rng);
            o.bytes(tags::PIXEL_DATA, VR::OW, pixels);

            let meta = FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .implementation_class_uid(impl_uid)
                .implementation_version_name(impl_version)
                .source_application_entity_title(dev.station.as_str());
            let path = dir.join(format!("{:04}.dcm", s.instance));
            o = self.write(&path, o, meta, splice.as_deref(), pixel_len)?;
            // Take the pixel buffer back for the next slice.
            if let Some(el) = o.take(tags::PIXEL_DATA) {
                if let DicomValue::Primitive(PrimitiveValue::U8(v)) = el.into_value() {
                    self.pixels = v.into_vec();
                }
            }
            refs.push(SliceRef {
                sop_uid,
                position,
                stack: s.stack,
            });
        }
        Ok(SeriesRefs {
            series_uid,
            slices: refs,
            pixel_spacing: ps,
            thickness: proto.thickness,
            spacing: proto.spacing,
        })
    }

    /// A DICOM Segmentation of the T2W series: gland on every slice, lesion where it is.
    fn seg(
        &mut self,
        site: &Site,
        p: &Patient,
        st: &Study,
        anatomy: &Anatomy,
        t2: &SeriesRefs,
        study: &InMemDicomObject,
    ) -> Result<(), SynthError> {
        let dir = self.series_dir(site, p, st, SEG_SERIES_NUMBER);
        mkdir(&dir)?;
        self.series += 1;
        self.segs += 1;
        let prefix = &p.uid_prefix;
        let series_uid = format!("{prefix}.2.{}.{SEG_SERIES_NUMBER}", st.number);
        let sop_uid = format!("{prefix}.3.{}.{SEG_SERIES_NUMBER}.1", st.number);
        let dim_uid = format!("{prefix}.7.{}", st.number);
        for u in [&series_uid, &sop_uid, &dim_uid] {
            self.id(u);
        }
        // A few days after the scan: still in the date window.
        let date = da(st.date + Duration::days(3));
        self.id(&date);
        self.id(&iso(st.date + Duration::days(3)));
        let time = tm(st.time + 3600);
        let ws = &site.workstation;

        // Frames: segment 1 (gland) on every slice, then segment 2 (lesion) where present.
        let mut frames: Vec<(u16, usize, Vec<bool>)> = Vec::new();
        let masks: Vec<(Vec<bool>, Vec<bool>)> =
            t2.slices.iter().map(|s| anatomy.masks(s.stack)).collect();
        for (k, (gland, _)) in masks.iter().enumerate() {
            frames.push((1, k, gland.clone()));
        }
        for (k, (_, lesion)) in masks.iter().enumerate() {
            if lesion.iter().any(|&b| b) {
                frames.push((2, k, lesion.clone()));
            }
        }
        let bits: usize = frames.iter().map(|f| f.2.len()).sum();
        let mut packed = vec![0u8; bits.div_ceil(8)];
        let mut bit = 0usize;
        for (_, _, mask) in &frames {
            for &on in mask {
                if on {
                    packed[bit / 8] |= 1 << (bit % 8);
                }
                bit += 1;
            }
        }

        let mut o = study.clone();
        o.multi(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
        o.text(tags::INSTANCE_CREATION_DATE, VR::DA, &date);
        o.text(tags::INSTANCE_CREATION_TIME, VR::TM, &time);
        o.text(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
        o.text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
        o.text(tags::SERIES_DATE, VR::DA, &date);
        o.text(tags::CONTENT_DATE, VR::DA, &date);
        o.text(tags::SERIES_TIME, VR::TM, &time);
        o.text(tags::CONTENT_TIME, VR::TM, &time);
        o.text(tags::MODALITY, VR::CS, "SEG");
        o.text(tags::MANUFACTURER, VR::LO, "QIICR");
        o.text(tags::INSTITUTION_NAME, VR::LO, &site.institution);
        o.text(tags::INSTITUTION_ADDRESS, VR::ST, &site.address);
        o.text(tags::STATION_NAME, VR::SH, &ws.station);
        o.text(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            "Prostate gland and index lesion",
        );
        o.text(tags::MANUFACTURER_MODEL_NAME, VR::LO, ws.model);
        o.seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item(|i| {
                i.seq(
                    tags::REFERENCED_INSTANCE_SEQUENCE,
                    t2.slices
                        .iter()
                        .map(|s| {
                            item(|r| {
                                r.text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, MR_IMAGE_STORAGE);
                                r.text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &s.sop_uid);
                            })
                        })
                        .collect(),
                );
                i.text(tags::SERIES_INSTANCE_UID, VR::UI, &t2.series_uid);
            })],
        );
        o.text(tags::DEVICE_SERIAL_NUMBER, VR::LO, &ws.serial);
        o.text(tags::SOFTWARE_VERSIONS, VR::LO, "1.2.5");
        o.text(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
        o.text(tags::SERIES_NUMBER, VR::IS, &SEG_SERIES_NUMBER.to_string());
        o.text(tags::INSTANCE_NUMBER, VR::IS, "1");
        o.text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &st.frame_of_reference);
        o.text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
        o.seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(|i| {
                i.text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid)
            })],
        );
        o.seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            [
                (
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "ReferencedSegmentNumber",
                ),
                (
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "ImagePositionPatient",
                ),
            ]
            .iter()
            .map(|&(pointer, group, label)| {
                item(|i| {
                    i.text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
                    i.at(tags::DIMENSION_INDEX_POINTER, &[pointer]);
                    i.at(tags::FUNCTIONAL_GROUP_POINTER, &[group]);
                    i.text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
                })
            })
            .collect(),
        );
        o.us(tags::SAMPLES_PER_PIXEL, &[1]);
        o.text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        o.text(tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string());
        o.us(tags::ROWS, &[self.cfg.rows]);
        o.us(tags::COLUMNS, &[self.cfg.cols]);
        o.us(tags::BITS_ALLOCATED, &[1]);
        o.us(tags::BITS_STORED, &[1]);
        o.us(tags::HIGH_BIT, &[0]);
        o.us(tags::PIXEL_REPRESENTATION, &[0]);
        o.text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
        o.text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
        o.seq(
            tags::SEGMENT_SEQUENCE,
            vec![
                item(|i| {
                    i.seq(
                        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                        vec![code("91723000", "SCT", "Anatomical Structure")],
                    );
                    i.us(tags::SEGMENT_NUMBER, &[1]);
                    i.text(tags::SEGMENT_LABEL, VR::LO, "Prostate");
                    i.text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "MANUAL");
                    i.us(
                        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                        &[43802, 38427, 24236],
                    );
                    i.seq(
                        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                        vec![code("41216001", "SCT", "Prostate")],
                    );
                }),
                item(|i| {
                    i.seq(
                        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                        vec![code("49755003", "SCT", "Morphologically Altered Structure")],
                    );
                    i.us(tags::SEGMENT_NUMBER, &[2]);
                    i.text(tags::SEGMENT_LABEL, VR::LO, "Index lesion");
                    i.text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "MANUAL");
                    i.us(
                        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                        &[54534, 55140, 49042],
                    );
                    i.seq(
                        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                        vec![code("108369006", "SCT", "Neoplasm")],
                    );
                }),
            ],
        );
        o.text(tags::CONTENT_LABEL, VR::CS, "PROSTATE");
        o.text(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            "Gland and index lesion, PI-RADS read",
        );
        o.text(tags::CONTENT_CREATOR_NAME, VR::PN, &p.radiologist.pn);
        o.seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![item(|i| {
                i.seq(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    vec![item(|q| {
                        q.multi(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0")
                    })],
                );
                i.seq(
                    tags::PIXEL_MEASURES_SEQUENCE,
                    vec![item(|q| {
                        q.text(tags::SLICE_THICKNESS, VR::DS, &ds(t2.thickness));
                        q.text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(t2.spacing));
                        q.multi(
                            tags::PIXEL_SPACING,
                            VR::DS,
                            &format!("{}\\{}", ds(t2.pixel_spacing), ds(t2.pixel_spacing)),
                        );
                    })],
                );
            })],
        );
        o.seq(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            frames
                .iter()
                .map(|&(segment, k, _)| {
                    let src = &t2.slices[k];
                    item(|i| {
                        i.seq(
                            tags::DERIVATION_IMAGE_SEQUENCE,
                            vec![item(|d| {
                                d.seq(
                                    tags::SOURCE_IMAGE_SEQUENCE,
                                    vec![item(|s| {
                                        s.text(
                                            tags::REFERENCED_SOP_CLASS_UID,
                                            VR::UI,
                                            MR_IMAGE_STORAGE,
                                        );
                                        s.text(
                                            tags::REFERENCED_SOP_INSTANCE_UID,
                                            VR::UI,
                                            &src.sop_uid,
                                        );
                                        s.seq(
                                            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                                            vec![code(
                                                "121322",
                                                "DCM",
                                                "Source image for image processing operation",
                                            )],
                                        );
                                    })],
                                );
                                d.seq(
                                    tags::DERIVATION_CODE_SEQUENCE,
                                    vec![code("113076", "DCM", "Segmentation")],
                                );
                            })],
                        );
                        i.seq(
                            tags::FRAME_CONTENT_SEQUENCE,
                            vec![item(|f| {
                                f.ul(
                                    tags::DIMENSION_INDEX_VALUES,
                                    &[segment as u32, k as u32 + 1],
                                )
                            })],
                        );
                        i.seq(
                            tags::PLANE_POSITION_SEQUENCE,
                            vec![item(|q| {
                                q.multi(
                                    tags::IMAGE_POSITION_PATIENT,
                                    VR::DS,
                                    &format!(
                                        "{}\\{}\\{}",
                                        ds(src.position[0]),
                                        ds(src.position[1]),
                                        ds(src.position[2])
                                    ),
                                )
                            })],
                        );
                        i.seq(
                            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                            vec![item(|q| q.us(tags::REFERENCED_SEGMENT_NUMBER, &[segment]))],
                        );
                    })
                })
                .collect(),
        );
        let pixel_len = packed.len() + packed.len() % 2;
        o.bytes(tags::PIXEL_DATA, VR::OB, packed);
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(EXPLICIT_VR_LE)
            .implementation_class_uid("1.2.276.0.7230010.3.0.3.6.7")
            .implementation_version_name("dcmqi 1.2.5")
            .source_application_entity_title(ws.station.as_str());
        self.write(&dir.join("0001.dcm"), o, meta, None, pixel_len)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deid::{self, Outcome};
    use crate::dicom::{self, Element, Value};
    use crate::pseudonym::{Pseudonymizer, SiteId};
    use std::collections::BTreeMap;

    fn small() -> SynthConfig {
        SynthConfig {
            patients: 3,
            sites: 2,
            seed: 7,
            ..SynthConfig::default()
        }
    }

    fn dcm_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = crate::tree::walk(dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        v.sort();
        v
    }

    fn text_of(ds: &[Element<'_>], g: u16, e: u16) -> String {
        dicom::text(ds, Tag(g, e)).unwrap_or("").to_string()
    }

    #[test]
    fn summary_matches_the_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(dir.path(), &small()).unwrap();
        let files = dcm_files(dir.path());
        assert_eq!(s.files, files.len());
        let bytes: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
        assert_eq!(s.bytes, bytes);
        assert_eq!(s.patients, 3);
        assert_eq!(s.sites, vec!["SITE_A".to_string(), "SITE_B".to_string()]);
        // Patients 0 and 2 have a follow-up; patient 0 has a SEG.
        assert_eq!(s.studies, 5);
        assert_eq!(s.segs, 1);
        assert_eq!(s.series, 5 * 4 + 1);
        // 4 slices: T2W, DWI, ADC 4 each, DCE 4 time points x 2 slices.
        assert_eq!(s.files, 5 * (4 + 4 + 4 + 8) + 1);

        let mut studies = BTreeSet::new();
        let mut series = BTreeSet::new();
        let mut segs = 0;
        for f in &files {
            let bytes = fs::read(f).unwrap();
            let inflated = dicom::inflate_if_needed(&bytes).unwrap();
            let file = dicom::parse(&bytes, inflated.as_ref()).unwrap();
            studies.insert(text_of(&file.dataset, 0x0020, 0x000D));
            series.insert(text_of(&file.dataset, 0x0020, 0x000E));
            if text_of(&file.dataset, 0x0008, 0x0060) == "SEG" {
                segs += 1;
            }
        }
        assert_eq!(studies.len(), s.studies);
        assert_eq!(series.len(), s.series);
        assert_eq!(segs, s.segs);

        for site in &s.sites {
            let csv = fs::read_to_string(dir.path().join(site).join("clinical.csv")).unwrap();
            let mut lines = csv.lines();
            assert_eq!(
                lines.next().unwrap(),
                "patient_id,patient_name,birth_date,psa,psa_date,isup_grade,pirads,biopsy_result,biopsy_date,treatment,smoking,comments"
            );
            let n = if site == "SITE_A" { 2 } else { 1 };
            assert_eq!(lines.count(), n);
        }
        let ids: Vec<String> =
            serde_json::from_slice(&fs::read(dir.path().join("identifiers.json")).unwrap())
                .unwrap();
        assert!(ids.iter().any(|i| i.starts_with("MRN")));
        assert!(ids.iter().any(|i| i.starts_with(UID_ROOT)));
    }

    #[test]
    fn same_seed_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = SynthConfig {
            patients: 2,
            sites: 1,
            slices: 2,
            rows: 64,
            cols: 64,
            ..small()
        };
        generate(a.path(), &cfg).unwrap();
        generate(b.path(), &cfg).unwrap();
        let (fa, fb) = (
            crate::tree::walk(a.path()).unwrap(),
            crate::tree::walk(b.path()).unwrap(),
        );
        assert_eq!(fa.len(), fb.len());
        let mut fa = fa;
        let mut fb = fb;
        fa.sort();
        fb.sort();
        for (x, y) in fa.iter().zip(&fb) {
            assert_eq!(
                x.strip_prefix(a.path()).unwrap(),
                y.strip_prefix(b.path()).unwrap()
            );
            assert_eq!(
                fs::read(x).unwrap(),
                fs::read(y).unwrap(),
                "{}",
                x.display()
            );
        }
    }

    /// The top-level (and nested) attribute paths whose value holds `needle`.
    /// Elements that merely hold a digits-only identifier by chance inside a new
    /// `2.25.` UID (a 39-digit decimal number) are left out.
    fn where_is(ds: &[Element<'_>], needle: &[u8], path: &str, out: &mut Vec<String>) {
        let digits = needle.iter().all(u8::is_ascii_digit);
        for el in ds {
            let here = format!("{path}({:04X},{:04X})", el.tag.group(), el.tag.element());
            match &el.value {
                Value::Bytes(b) => {
                    let chance = digits && el.vr == VR::UI && b.starts_with(b"2.25.");
                    if !chance && b.windows(needle.len()).any(|w| w == needle) {
                        out.push(here);
                    }
                }
                Value::Seq(items) => {
                    for (i, it) in items.iter().enumerate() {
                        where_is(it, needle, &format!("{here}[{i}]>"), out);
                    }
                }
                Value::Encapsulated(_) => {}
            }
        }
    }

    /// Byte runs that could hold text (no control bytes): every identifier, in any of
    /// the encodings used, lies inside one. 12-bit pixel data never yields a run longer
    /// than one byte (every high byte is below 0x10).
    fn text_runs(bytes: &[u8]) -> Vec<&[u8]> {
        bytes
            .split(|&b| b < 0x20 || b == 0x7F)
            .filter(|r| r.len() >= 3)
            .collect()
    }

    fn encodings(id: &str) -> Vec<Vec<u8>> {
        let mut v = vec![id.as_bytes().to_vec()];
        if !id.is_ascii() && id.chars().all(|c| (c as u32) < 256) {
            v.push(encode(Some("ISO_IR 100"), id));
        }
        v
    }

    #[test]
    fn every_file_parses_is_accepted_and_no_unknown_identifier_survives() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &small()).unwrap();
        let ids: Vec<String> =
            serde_json::from_slice(&fs::read(dir.path().join("identifiers.json")).unwrap())
                .unwrap();
        let keys = Pseudonymizer::new(&[1u8; 32]).unwrap();
        let site = SiteId::new("SITE_A").unwrap();
        // (identifier, attribute path) -> files it survived in.
        let mut survivors: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut in_source: HashSet<&str> = HashSet::new();
        for f in dcm_files(dir.path()) {
            let bytes = fs::read(&f).unwrap();
            let inflated = dicom::inflate_if_needed(&bytes).unwrap();
            let parsed = dicom::parse(&bytes, inflated.as_ref());
            assert!(parsed.is_ok(), "{}: {:?}", f.display(), parsed.err());
            let src_runs = text_runs(&bytes);
            for id in &ids {
                for enc in encodings(id) {
                    if src_runs
                        .iter()
                        .any(|r| r.windows(enc.len()).any(|w| w == enc))
                    {
                        in_source.insert(id);
                    }
                }
            }
            let out = match deid::deidentify(&bytes, &site, &keys).unwrap() {
                Outcome::Accepted(a) => a,
                Outcome::Quarantined { reason, .. } => panic!("{}: {reason}", f.display()),
            };
            let runs = text_runs(&out.bytes);
            let deid_file = dicom::parse(&out.bytes, None).unwrap();
            for id in &ids {
                for enc in encodings(id) {
                    if runs.iter().any(|r| r.windows(enc.len()).any(|w| w == enc)) {
                        let mut at = Vec::new();
                        where_is(&deid_file.dataset, &enc, "", &mut at);
                        if at.is_empty() && enc.iter().all(u8::is_ascii_digit) {
                            continue; // in a new UID (data set or file meta)
                        }
                        let rel = f.strip_prefix(dir.path()).unwrap().display().to_string();
                        survivors
                            .entry((id.clone(), at.join(" ")))
                            .or_default()
                            .push(rel);
                    }
                }
            }
        }
        // Every identifier was really planted: in a DICOM file, in a clinical CSV, or (a
        // date) in its other form.
        let csv: String = ["SITE_A", "SITE_B"]
            .iter()
            .map(|s| fs::read_to_string(dir.path().join(s).join("clinical.csv")).unwrap())
            .collect();
        let planted = |i: &str| in_source.contains(i) || csv.contains(i);
        for i in &ids {
            let other_form = match (i.len(), i.as_bytes().get(4)) {
                (10, Some(b'-')) => Some(i.replace('-', "")),
                (8, _) if i.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(format!("{}-{}-{}", &i[..4], &i[4..6], &i[6..]))
                }
                _ => None,
            };
            assert!(
                planted(i) || other_form.is_some_and(|o| planted(&o)),
                "identifier {i:?} planted nowhere"
            );
        }
        // No survivor, whatever the character set of the value that carried it.
        let known: BTreeSet<(String, String)> = BTreeSet::new();
        let found: BTreeSet<(String, String)> = survivors.keys().cloned().collect();
        assert_eq!(
            found, known,
            "identifiers surviving de-identification (with their files): {survivors:#?}"
        );
    }

    #[test]
    fn philips_files_hold_an_explicit_un_of_undefined_length_in_group_2005() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &small()).unwrap();
        let mut philips = 0;
        for f in dcm_files(dir.path()) {
            let bytes = fs::read(&f).unwrap();
            let file = dicom::parse(&bytes, None).unwrap();
            let ds = &file.dataset;
            if text_of(ds, 0x0008, 0x0070) != Vendor::Philips.manufacturer() {
                continue;
            }
            philips += 1;
            let pattern = [
                0x05, 0x20, 0x80, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            assert!(
                bytes.windows(pattern.len()).any(|w| w == pattern),
                "{}",
                f.display()
            );
            // Read back as a sequence of two items, in tag order before the pixels.
            let el = dicom::find(ds, PHILIPS_SEQUENCE).expect("(2005,1080)");
            match &el.value {
                Value::Seq(items) => assert_eq!(items.len(), 2),
                v => panic!("not a sequence: {v:?}"),
            }
            let tags: Vec<Tag> = ds.iter().map(|e| e.tag).collect();
            let mut sorted = tags.clone();
            sorted.sort();
            assert_eq!(tags, sorted, "{}", f.display());
            // And b-values where DOMAIN.md says they are.
            if text_of(ds, 0x0008, 0x103E).starts_with("DWI") {
                assert!(dicom::find(ds, Tag(0x2001, 0x1003)).is_some());
                assert!(dicom::find(ds, Tag(0x0018, 0x9087)).is_some());
            }
        }
        assert!(philips > 0);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cfg in [
            SynthConfig {
                sites: 0,
                ..small()
            },
            SynthConfig {
                slices: 0,
                ..small()
            },
            SynthConfig { rows: 8, ..small() },
        ] {
            assert!(matches!(
                generate(dir.path(), &cfg),
                Err(SynthError::Config(_))
            ));
        }
        assert_eq!(site_code(0), "SITE_A");
        assert_eq!(site_code(25), "SITE_Z");
        assert_eq!(site_code(26), "SITE_AA");
    }
}
