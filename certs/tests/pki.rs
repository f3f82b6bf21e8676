//! The platform PKI checked by a real, independent verifier: the `openssl` command line.

use std::path::Path;
use std::process::Command;

use certs::{principal_from_cert, Ca, Role};
use openssl::x509::X509;

/// `openssl verify` of `cert` against the CA, with the CRL when given. Returns
/// (success, output).
fn verify(dir: &Path, cert: &Path, crl: bool) -> (bool, String) {
    let mut c = Command::new("openssl");
    c.arg("verify").arg("-CAfile").arg(dir.join("ca.pem"));
    if crl {
        c.arg("-crl_check").arg("-CRLfile").arg(dir.join("crl.pem"));
    }
    let o = c
        .arg("-purpose")
        .arg("sslclient")
        .arg(cert)
        .output()
        .expect("openssl is installed");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn issued_certificates_verify_and_revocation_shows_in_the_crl() {
    let d = tempfile::tempdir().unwrap();
    let ca_dir = d.path().join("ca");
    let (ca, created) = Ca::init(&ca_dir).unwrap();
    assert!(created);
    let (_, again) = Ca::init(&ca_dir).unwrap();
    assert!(!again, "init is idempotent");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut serials = Vec::new();
    for role in Role::ALL {
        let site = (role == Role::DataProvider).then_some("SITE_A");
        let issued = ca.issue_client(role, "someone", site, 90).unwrap();
        let out = d.path().join(role.as_str());
        certs::write_issued(&out, &issued, &ca.ca_pem().unwrap()).unwrap();
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{role}: private key mode");
        let (ok, msg) = verify(&ca_dir, &out.join("cert.pem"), true);
        assert!(ok, "{role}: {msg}");
        let cert = X509::from_pem(&issued.cert_pem).unwrap();
        let p = principal_from_cert(&cert).unwrap();
        assert_eq!(p.role, role);
        assert_eq!(p.site.as_deref(), site);
        assert_eq!(p.serial, issued.serial);
        // Client authentication only, short-lived.
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"));
        assert!(text.contains("CA:FALSE"));
        serials.push((out, issued.serial));
    }
    // Two certificates never share a serial.
    let mut s: Vec<_> = serials.iter().map(|(_, s)| s.clone()).collect();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), Role::ALL.len());

    // Revoke the researcher: openssl now refuses it with the CRL, still accepts the others.
    let (researcher_dir, serial) = &serials[1];
    assert!(ca.revoke(serial, "laptop lost").unwrap());
    assert!(
        !ca.revoke(serial, "again").unwrap(),
        "revoking twice is a no-op"
    );
    let (ok, msg) = verify(&ca_dir, &researcher_dir.join("cert.pem"), true);
    assert!(!ok && msg.contains("revoked"), "{msg}");
    let (ok, _) = verify(&ca_dir, &researcher_dir.join("cert.pem"), false);
    assert!(ok, "without the CRL the chain itself is still valid");
    let (ok, msg) = verify(&ca_dir, &serials[0].0.join("cert.pem"), true);
    assert!(ok, "{msg}");
    assert_eq!(ca.revocations().unwrap().len(), 1);

    // A CA from elsewhere does not vouch for ours.
    let other = d.path().join("other");
    let (_, _) = Ca::init(&other).unwrap();
    let (ok, _) = verify(&other, &serials[0].0.join("cert.pem"), false);
    assert!(!ok);
}

#[test]
fn the_server_certificate_names_its_hosts() {
    let d = tempfile::tempdir().unwrap();
    let (ca, _) = Ca::init(d.path()).unwrap();
    let s = ca.issue_server(&["localhost", "127.0.0.1"], 90).unwrap();
    let cert = X509::from_pem(&s.cert_pem).unwrap();
    let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"));
    // A server certificate has no URI SAN: it is not a platform identity.
    assert!(principal_from_cert(&cert).is_err());
    // Bad validity or host names are refused with a reason.
    assert!(ca.issue_server(&["bad host"], 90).is_err());
    assert!(ca.issue_client(Role::Auditor, "a", None, 0).is_err());
}

#[test]
fn certificates_that_are_not_svids_are_refused() {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::X509Builder;
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let make = |uris: &[&str], ca: bool| {
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let mut bc = BasicConstraints::new();
        if ca {
            bc.ca();
        }
        b.append_extension(bc.build().unwrap()).unwrap();
        if !uris.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for u in uris {
                san.uri(u);
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    };
    let ok = "spiffe://prostatenet/auditor/ann";
    assert!(principal_from_cert(&make(&[ok], false)).is_ok());
    let two = principal_from_cert(&make(&[ok, "spiffe://prostatenet/operator/otto"], false));
    assert!(two.unwrap_err().to_string().contains("exactly one URI SAN"));
    assert!(principal_from_cert(&make(&[], false)).is_err());
    let ca = principal_from_cert(&make(&[ok], true));
    assert!(ca.unwrap_err().to_string().contains("CA"));
}
