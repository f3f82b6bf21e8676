//! # certs: the platform PKI and the principals it vouches for
//!
//! Every call into ProstateNET comes from a known party, and identity is a client
//! certificate issued by the platform CA and nothing else. This crate owns:
//!
//! - the platform root CA ([`Ca::init`]): an EC P-256 key and a self-signed certificate
//!   under the data folder, the key readable by its owner only;
//! - issuing client certificates for the six roles ([`Ca::issue_client`]) and the
//!   gateway's server certificate ([`Ca::issue_server`]), short-lived (90 days by
//!   default), each naming its holder in one SPIFFE URI SAN such as
//!   `spiffe://prostatenet/site/SITE_A/data-provider/alice`;
//! - revocation ([`Ca::revoke`]) and the CRL that a running gateway reloads;
//! - turning a verified peer certificate into a typed [`Principal`]
//!   ([`principal_from_cert`]), refusing what the SPIFFE X.509-SVID rules refuse.
//!
//! It makes no access decisions (that is `policy`) and does no TLS (that is the gateway,
//! which verifies chains and CRLs with openssl before asking this crate who the peer is).
//! All of it is openssl; nothing here is hand-made cryptography.
//!
//! ```
//! use certs::{Ca, Role, principal_from_cert};
//! let dir = tempfile::tempdir().unwrap();
//! let (ca, _) = Ca::init(dir.path()).unwrap();
//! let issued = ca.issue_client(Role::Researcher, "rita", None, 90).unwrap();
//! let cert = openssl::x509::X509::from_pem(&issued.cert_pem).unwrap();
//! let p = principal_from_cert(&cert).unwrap();
//! assert_eq!(p.role, Role::Researcher);
//! assert_eq!(p.name, "rita");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::CrlNumber;
use openssl::x509::{
    X509Builder, X509CrlBuilder, X509NameBuilder, X509Ref, X509RevokedBuilder, X509,
};

/// The SPIFFE trust domain of the platform.
pub const TRUST_DOMAIN: &str = "prostatenet";

/// PKI failures. Messages name files and fields, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// openssl refused an operation.
    #[error("openssl: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    /// A file of the CA could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No CA in this folder yet.
    #[error("no platform CA in {0}: run `hbs init` (or `hbs ca init`) first")]
    NoCa(String),
    /// A name, site or role that cannot be put in a certificate.
    #[error("{0}")]
    BadInput(String),
    /// A certificate that is not a valid platform identity.
    #[error("not a platform identity: {0}")]
    NotAnIdentity(String),
    /// The revocation list file is damaged.
    #[error("revocation list {0} is damaged")]
    BadRevocations(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The roles a certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A clinical site's data provider: contributes studies for its own site.
    DataProvider,
    /// A researcher: counts cohorts, requests data and model runs.
    Researcher,
    /// An ethics board member: reviews requests.
    EthicsBoard,
    /// An auditor: reads and verifies the log.
    Auditor,
    /// An operator: runs the service, rotates keys.
    Operator,
    /// The compute service.
    Compute,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 6] = [
        Role::DataProvider,
        Role::Researcher,
        Role::EthicsBoard,
        Role::Auditor,
        Role::Operator,
        Role::Compute,
    ];

    /// The role as it appears in SPIFFE paths and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::DataProvider => "data-provider",
            Role::Researcher => "researcher",
            Role::EthicsBoard => "ethics-board",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
            Role::Compute => "compute",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, CertError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                CertError::BadInput(format!(
                    "unknown role (use one of: {})",
                    Role::ALL.map(Role::as_str).join(", ")
                ))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling: what a verified client certificate says, typed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// The role.
    pub role: Role,
    /// The site, for site-bound roles (data providers must have one).
    pub site: Option<String>,
    /// The holder's name (a login, not a patient: never identifying data).
    pub name: String,
    /// The certificate's serial number, upper-case hex.
    pub serial: String,
}

fn check_label(what: &str, s: &str) -> Result<(), CertError> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || s.starts_with('.')
    {
        return Err(CertError::BadInput(format!(
            "{what} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'"
        )));
    }
    Ok(())
}

/// The SPIFFE ID of a holder: `spiffe://prostatenet/site/SITE/ROLE/NAME`, or
/// `spiffe://prostatenet/ROLE/NAME` for roles not bound to a site.
pub fn spiffe_id(role: Role, name: &str, site: Option<&str>) -> Result<String, CertError> {
    check_label("name", name)?;
    if let Some(s) = site {
        check_label("site", s)?;
    }
    if role == Role::DataProvider && site.is_none() {
        return Err(CertError::BadInput(
            "a data-provider certificate needs --site".into(),
        ));
    }
    Ok(match site {
        Some(s) => format!("spiffe://{TRUST_DOMAIN}/site/{s}/{role}/{name}"),
        None => format!("spiffe://{TRUST_DOMAIN}/{role}/{name}"),
    })
}

/// Parses a SPIFFE ID of the platform into (role, site, name).
pub fn parse_spiffe_id(uri: &str) -> Result<(Role, Option<String>, String), CertError> {
    let bad = |why: &str| CertError::NotAnIdentity(why.to_string());
    let path = uri
        .strip_prefix(&format!("spiffe://{TRUST_DOMAIN}/"))
        .ok_or_else(|| bad("URI SAN is not in the spiffe://prostatenet trust domain"))?;
    let parts: Vec<&str> = path.split('/').collect();
    let (role, site, name) = match parts.as_slice() {
        ["site", site, role, name] => (*role, Some(site.to_string()), *name),
        [role, name] => (*role, None, *name),
        _ => {
            return Err(bad(
                "SPIFFE path is neither site/SITE/ROLE/NAME nor ROLE/NAME",
            ))
        }
    };
    let role = Role::parse(role).map_err(|_| bad("unknown role in SPIFFE path"))?;
    check_label("name", name).map_err(|_| bad("malformed name in SPIFFE path"))?;
    if let Some(s) = &site {
        check_label("site", s).map_err(|_| bad("malformed site in SPIFFE path"))?;
    }
    if role == Role::DataProvider && site.is_none() {
        return Err(bad("a data provider's identity must name its site"));
    }
    Ok((role, site, name.to_string()))
}

/// Turns a certificate the TLS layer has already verified (chain, validity, CRL) into a
/// principal, applying the SPIFFE X.509-SVID rules: exactly one URI SAN, and not a CA.
pub fn principal_from_cert(cert: &X509Ref) -> Result<Principal, CertError> {
    let bad = |why: &str| CertError::NotAnIdentity(why.to_string());
    let uris: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.uri().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if uris.len() != 1 {
        return Err(bad(&format!(
            "a platform identity has exactly one URI SAN, this certificate has {}",
            uris.len()
        )));
    }
    if is_ca(cert) {
        return Err(bad("a CA certificate cannot be a client identity"));
    }
    let (role, site, name) = parse_spiffe_id(&uris[0])?;
    Ok(Principal {
        role,
        site,
        name,
        serial: serial_hex(cert)?,
    })
}

/// Whether a certificate says it is a CA (basicConstraints CA:TRUE). The openssl crate
/// exposes no accessor for basicConstraints, so this reads openssl's own rendering of
/// the extension (the line after its name); a certificate openssl cannot render is
/// treated as a CA, that is, refused.
fn is_ca(cert: &X509Ref) -> bool {
    let Ok(text) = cert.to_text() else {
        return true;
    };
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("X509v3 Basic Constraints") {
            return lines
                .next()
                .is_some_and(|v| v.trim().starts_with("CA:TRUE"));
        }
    }
    false
}

/// A certificate's serial number, upper-case hex.
pub fn serial_hex(cert: &X509Ref) -> Result<String, CertError> {
    Ok(cert.serial_number().to_bn()?.to_hex_str()?.to_string())
}

/// A freshly issued certificate and its key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8). Write it 0600.
    pub key_pem: Vec<u8>,
    /// Serial, upper-case hex.
    pub serial: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Issued(serial {})", self.serial)
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// Serial, upper-case hex.
    pub serial: String,
    /// Why (free text chosen by the operator; never patient data).
    pub reason: String,
    /// When, seconds since the epoch.
    pub at: i64,
}

/// The platform CA, kept in a folder: `ca.pem`, `ca.key` (0600), `revoked.json`,
/// `crl.pem`.
pub struct Ca {
    dir: PathBuf,
    cert: X509,
    key: PKey<Private>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ca({})", self.dir.display())
    }
}

fn new_key() -> Result<PKey<Private>, CertError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn random_serial() -> Result<Asn1Integer, CertError> {
    let mut bn = BigNum::new()?;
    // 127 random bits with the top bit set: positive, 16 bytes, unpredictable.
    bn.rand(127, MsbOption::ONE, false)?;
    Ok(bn.to_asn1_integer()?)
}

/// Writes a file with mode 0600 (created anew, or replaced atomically).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Ca {
    /// Creates the platform CA in `dir` unless one is there; returns it and whether it
    /// was created.
    pub fn init(dir: &Path) -> Result<(Ca, bool), CertError> {
        if dir.join("ca.pem").exists() {
            return Ok((Ca::open(dir)?, false));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = new_key()?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "ProstateNET platform CA")?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ProstateNET hbs")?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        b.set_serial_number(&*random_serial()?)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
        b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(&key, MessageDigest::sha256())?;
        let cert = b.build();
        write_private(&dir.join("ca.key"), &key.private_key_to_pem_pkcs8()?)?;
        write_public(&dir.join("ca.pem"), &cert.to_pem()?)?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert,
            key,
        };
        ca.write_crl(&[])?;
        Ok((ca, true))
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join("ca.pem");
        if !cert_path.exists() {
            return Err(CertError::NoCa(dir.display().to_string()));
        }
        let cert = X509::from_pem(&std::fs::read(&cert_path).map_err(io(&cert_path))?)?;
        let key_path = dir.join("ca.key");
        let key = PKey::private_key_from_pem(&std::fs::read(&key_path).map_err(io(&key_path))?)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> Result<Vec<u8>, CertError> {
        Ok(self.cert.to_pem()?)
    }

    /// Where the CRL is written (and where the gateway reads it).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn issue(
        &self,
        cn: &str,
        san: SubjectAlternativeName,
        eku: ExtendedKeyUsage,
        days: u32,
    ) -> Result<Issued, CertError> {
        if !(1..=825).contains(&days) {
            return Err(CertError::BadInput("validity must be 1 to 825 days".into()));
        }
        let key = new_key()?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
        let name = name.build();
        let serial = random_serial()?;
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(&key)?;
        b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(days)?)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        b.append_extension(eku.build()?)?;
        let san = san.build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        let cert = b.build();
        Ok(Issued {
            serial: serial_hex(&cert)?,
            cert_pem: cert.to_pem()?,
            key_pem: key.private_key_to_pem_pkcs8()?,
        })
    }

    /// Issues a client certificate for a role (clientAuth only, one SPIFFE URI SAN).
    pub fn issue_client(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
        days: u32,
    ) -> Result<Issued, CertError> {
        let id = spiffe_id(role, name, site)?;
        let mut san = SubjectAlternativeName::new();
        san.uri(&id);
        let mut eku = ExtendedKeyUsage::new();
        eku.client_auth();
        self.issue(name, san, eku, days)
    }

    /// Issues the gateway's server certificate for host names and IP addresses.
    pub fn issue_server(&self, hosts: &[&str], days: u32) -> Result<Issued, CertError> {
        let mut san = SubjectAlternativeName::new();
        for h in hosts {
            if h.parse::<std::net::IpAddr>().is_ok() {
                san.ip(h);
            } else {
                check_label("host name", h)?;
                san.dns(h);
            }
        }
        let mut eku = ExtendedKeyUsage::new();
        eku.server_auth();
        self.issue(hosts.first().copied().unwrap_or("hbs"), san, eku, days)
    }

    /// The revocations so far.
    pub fn revocations(&self) -> Result<Vec<Revocation>, CertError> {
        let p = self.dir.join("revoked.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|_| CertError::BadRevocations(p.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Revokes a certificate by serial (hex) and rewrites the CRL. Revoking twice is a
    /// no-op. Returns false when it was already revoked.
    pub fn revoke(&self, serial: &str, reason: &str) -> Result<bool, CertError> {
        let serial = serial.trim().trim_start_matches("0x").to_ascii_uppercase();
        if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CertError::BadInput("a serial is hexadecimal".into()));
        }
        let mut list = self.revocations()?;
        if list.iter().any(|r| r.serial == serial) {
            return Ok(false);
        }
        list.push(Revocation {
            serial,
            reason: reason.to_string(),
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        });
        let p = self.dir.join("revoked.json");
        let json = serde_json::to_vec_pretty(&list)
            .map_err(|_| CertError::BadRevocations(p.display().to_string()))?;
        write_public(&p, &json)?;
        self.write_crl(&list)?;
        Ok(true)
    }

    /// Re-signs the CRL when it expires within `days` (a CRL past its nextUpdate makes
    /// openssl refuse every client). Returns whether it was re-signed. The gateway calls
    /// this periodically.
    pub fn refresh_crl_if_due(&self, days: u32) -> Result<bool, CertError> {
        let path = self.crl_path();
        let due = match std::fs::read(&path) {
            Ok(pem) => match openssl::x509::X509Crl::from_pem(&pem) {
                Ok(crl) => match crl.next_update() {
                    Some(next) => {
                        let limit = Asn1Time::days_from_now(days)?;
                        next.compare(&limit)? != std::cmp::Ordering::Greater
                    }
                    None => true,
                },
                Err(_) => true,
            },
            Err(_) => true,
        };
        if due {
            self.write_crl(&self.revocations()?)?;
        }
        Ok(due)
    }

    /// Writes a freshly signed CRL listing `list` (valid for 7 days; rewritten on every
    /// revocation and by the gateway before it expires).
    pub fn write_crl(&self, list: &[Revocation]) -> Result<(), CertError> {
        let mut b = X509CrlBuilder::new()?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_last_update(&*Asn1Time::days_from_now(0)?)?;
        b.set_next_update(&*Asn1Time::days_from_now(7)?)?;
        // RFC 5280 5.2: the CRL names the issuing key and carries an increasing number
        // (the signing time in seconds, so two CRLs never share one).
        let dummy = X509Builder::new()?;
        let ctx = dummy.x509v3_context(Some(&self.cert), None);
        b.append_extension(AuthorityKeyIdentifier::new().keyid(true).build(&ctx)?)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        b.append_extension(CrlNumber::new(BigNum::from_dec_str(&now.to_string())?)?.build()?)?;
        for r in list {
            let mut rb = X509RevokedBuilder::new()?;
            rb.set_serial_number(&*BigNum::from_hex_str(&r.serial)?.to_asn1_integer()?)?;
            rb.set_revocation_date(&*Asn1Time::from_unix(r.at)?)?;
            b.add_revoked(rb.build())?;
        }
        b.sort()?;
        b.sign(&self.key, MessageDigest::sha256())?;
        let crl = b.build()?;
        write_public(&self.crl_path(), &crl.to_pem()?)
    }
}

/// Writes an issued certificate as `OUT/cert.pem`, `OUT/key.pem` (0600) and `OUT/ca.pem`.
pub fn write_issued(out: &Path, issued: &Issued, ca_pem: &[u8]) -> Result<(), CertError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_public(&out.join("cert.pem"), &issued.cert_pem)?;
    write_private(&out.join("key.pem"), &issued.key_pem)?;
    write_public(&out.join("ca.pem"), ca_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crl_is_resigned_before_it_expires() {
        let d = tempfile::tempdir().unwrap();
        let (ca, _) = Ca::init(d.path()).unwrap();
        // Fresh CRL: valid 7 days, not due within 1 day, due within 8.
        assert!(!ca.refresh_crl_if_due(1).unwrap());
        assert!(ca.refresh_crl_if_due(8).unwrap());
        // A damaged CRL file is rewritten.
        std::fs::write(ca.crl_path(), b"garbage").unwrap();
        assert!(ca.refresh_crl_if_due(1).unwrap());
        assert!(!ca.refresh_crl_if_due(1).unwrap());
    }

    #[test]
    fn spiffe_ids_roundtrip_and_bad_ones_are_refused() {
        let id = spiffe_id(Role::DataProvider, "alice", Some("SITE_A")).unwrap();
        assert_eq!(id, "spiffe://prostatenet/site/SITE_A/data-provider/alice");
        assert_eq!(
            parse_spiffe_id(&id).unwrap(),
            (Role::DataProvider, Some("SITE_A".into()), "alice".into())
        );
        assert_eq!(
            parse_spiffe_id("spiffe://prostatenet/auditor/ann").unwrap(),
            (Role::Auditor, None, "ann".into())
        );
        assert!(spiffe_id(Role::DataProvider, "alice", None).is_err());
        assert!(spiffe_id(Role::Researcher, "a/b", None).is_err());
        for bad in [
            "spiffe://other/auditor/ann",
            "spiffe://prostatenet/king/ann",
            "spiffe://prostatenet/data-provider/alice",
            "spiffe://prostatenet/site/S/auditor",
            "https://prostatenet/auditor/ann",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad}");
        }
    }
}
