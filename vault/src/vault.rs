//! The vault service: ingest, export, withdraw (crypto-shred) and rotate, over a data
//! folder.
//!
//! A data folder (embedded default) holds:
//! - `keys/broker.secret`: the pseudonymization secret (64 random bytes, mode 0600);
//! - `keys/kek-vN.key`: key-encryption keys (32 bytes, 0600); the highest N is current;
//! - `hbs.db`: the SQLite catalogue (unless a PostgreSQL URL is configured);
//! - `blobs/`: the local blob store (unless another store is configured).
//!
//! Ingesting an instance: de-identify (in memory) → get or create the patient's data key
//! → seal → write the blob durably → commit the catalogue row → acknowledge. A crash
//! before the row commits leaves at most an orphan ciphertext, never plaintext and never
//! an acknowledged instance without its blob.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::catalog::{Catalog, CatalogError, InstanceRow, PatientKey};
use crate::clinical::{self, ClinicalError};
use crate::crypto::{self, CryptoError, DataKey, Kek};
use crate::deid::{self, Accepted, DeidError, Outcome};
use crate::pseudonym::{Pseudonym, Pseudonymizer, SiteId};
use crate::store::{BlobStore, StoreError};

/// Vault failures. Messages never contain identifying values.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The instance could not be de-identified (bad input).
    #[error(transparent)]
    Deid(#[from] DeidError),
    /// The clinical CSV could not be read.
    #[error(transparent)]
    Clinical(#[from] ClinicalError),
    /// Database failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Blob store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encryption failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Key files missing or unreadable.
    #[error("keys: {0}")]
    Keys(String),
    /// Data folder problems.
    #[error("data folder {path}: {source}")]
    Io {
        /// The path (a path of the data folder, not of patient data).
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A failure inside the vault that is no one's input (a worker task died).
    #[error("internal error: {0}")]
    Internal(String),
    /// The patient is not in the vault.
    #[error("no patient {0} in the vault")]
    UnknownPatient(String),
    /// The instance is not of the study the request named.
    #[error("the instance does not belong to the study named in the request")]
    OtherStudy,
    /// The patient withdrew consent; nothing more is stored for them.
    #[error("patient {0} withdrew consent: nothing is stored for this patient any more")]
    Withdrawn(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a vault keeps things.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// The data folder (keys live here).
    pub data_dir: PathBuf,
    /// Database URL; default `sqlite://DATA/hbs.db`.
    pub database_url: Option<String>,
    /// Blob store location; default `local:DATA/blobs`.
    pub blob_store: Option<String>,
}

impl VaultConfig {
    /// The embedded default for a data folder.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        VaultConfig {
            data_dir: data_dir.into(),
            database_url: None,
            blob_store: None,
        }
    }
    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("hbs.db").display()
            )
        })
    }
    /// The blob store location in force.
    pub fn blob_store(&self) -> String {
        self.blob_store
            .clone()
            .unwrap_or_else(|| format!("local:{}", self.data_dir.join("blobs").display()))
    }
    fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// Whether a new broker secret was created (false: one existed).
    pub created_secret: bool,
    /// Current KEK version.
    pub kek_version: u32,
    /// The database URL.
    pub database: String,
    /// The blob store.
    pub blob_store: String,
}

/// What happened to one ingested instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Ingested {
    /// Stored and committed: acknowledged.
    Stored {
        /// Blob ID.
        object_id: String,
        /// Patient pseudonym.
        pseudonym: String,
        /// New SOP Instance UID.
        sop_uid: String,
        /// New Study Instance UID.
        study_uid: String,
        /// SOP Class UID.
        sop_class: String,
        /// Stored before (same SOP instance): nothing changed.
        duplicate: bool,
        /// No Patient ID in the instance: pseudonymized per study.
        pseudonym_from_study: bool,
    },
    /// Not stored: possible burned-in text.
    Quarantined {
        /// Why.
        reason: String,
        /// Patient pseudonym.
        pseudonym: String,
    },
}

/// A de-identified, encrypted instance not yet stored ([`Vault::prepare`]).
#[derive(Debug)]
pub enum Prepared {
    /// Not to be stored: possible burned-in text.
    Quarantined {
        /// Why.
        reason: String,
        /// Patient pseudonym.
        pseudonym: String,
    },
    /// Ready for [`Vault::commit`].
    Ready(Box<ReadyInstance>),
}

/// What [`Vault::commit`] stores.
#[derive(Debug)]
pub struct ReadyInstance {
    /// Its catalogue row (pseudonymized values only).
    pub row: InstanceRow,
    /// What it says of its acquisition, for its series' facts.
    pub acquisition: crate::acquisition::Acquisition,
    blob: Vec<u8>,
    pseudonym_from_study: bool,
}

/// A patient's data key, filled once (see `Vault::data_key`).
type KeySlot = Arc<tokio::sync::OnceCell<Arc<DataKey>>>;

/// The vault over one data folder.
#[derive(Clone)]
pub struct Vault {
    cfg: VaultConfig,
    catalog: Catalog,
    store: BlobStore,
    keys: Pseudonymizer,
    keks: Arc<Mutex<Vec<Arc<Kek>>>>,
    /// Unwrapped data keys by pseudonym. Each entry is filled once: concurrent first
    /// uploads of a patient wait for one lookup (and one creation) instead of each
    /// reading, and racing to create, the same key.
    dek_cache: Arc<Mutex<HashMap<String, KeySlot>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("cfg", &self.cfg).finish()
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

fn kek_versions(dir: &Path) -> Result<Vec<u32>, VaultError> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("kek-v")
            .and_then(|s| s.strip_suffix(".key"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

impl Vault {
    /// Creates what a fresh data folder needs (idempotent: existing keys are kept).
    pub async fn init(cfg: &VaultConfig) -> Result<InitReport, VaultError> {
        let keys = cfg.keys_dir();
        std::fs::create_dir_all(&keys).map_err(io_err(&keys))?;
        #[cfg(unix)]
        restrict(&cfg.data_dir, 0o700).map_err(io_err(&cfg.data_dir))?;
        #[cfg(unix)]
        restrict(&keys, 0o700).map_err(io_err(&keys))?;
        let secret = keys.join("broker.secret");
        let created_secret = !secret.exists();
        if created_secret {
            let mut s = crypto::random_key()?.to_vec();
            s.extend_from_slice(&crypto::random_key()?);
            write_secret_file(&secret, &s)?;
        }
        if kek_versions(&keys)?.is_empty() {
            write_secret_file(&keys.join("kek-v1.key"), &crypto::random_key()?)?;
        }
        let v = Vault::open(cfg).await?;
        let kek_version = v.current_kek().version;
        v.catalog.close().await;
        Ok(InitReport {
            created_secret,
            kek_version,
            database: redact_url(&cfg.database_url()),
            blob_store: cfg.blob_store(),
        })
    }

    /// Opens an initialized data folder.
    pub async fn open(cfg: &VaultConfig) -> Result<Self, VaultError> {
        Self::open_with(cfg, None).await
    }

    /// Like [`Vault::open`], sharing `lock` with the other writers of the database in
    /// this process (see [`crate::catalog::WriteLock`]).
    pub async fn open_with(
        cfg: &VaultConfig,
        lock: Option<crate::catalog::WriteLock>,
    ) -> Result<Self, VaultError> {
        let keys_dir = cfg.keys_dir();
        let secret_path = keys_dir.join("broker.secret");
        let secret = std::fs::read(&secret_path).map_err(|_| {
            VaultError::Keys(format!(
                "no broker secret at {}: run `hbs init --data {}` first",
                secret_path.display(),
                cfg.data_dir.display()
            ))
        })?;
        let keys = Pseudonymizer::new(&secret).map_err(|e| VaultError::Keys(e.to_string()))?;
        let mut keks = Vec::new();
        for v in kek_versions(&keys_dir)? {
            let p = keys_dir.join(format!("kek-v{v}.key"));
            let b = std::fs::read(&p).map_err(io_err(&p))?;
            keks.push(Arc::new(Kek::new(&b, v)?));
        }
        if keks.is_empty() {
            return Err(VaultError::Keys(format!(
                "no key-encryption key in {}: run `hbs init` first",
                keys_dir.display()
            )));
        }
        let catalog = Catalog::connect_with(&cfg.database_url(), lock).await?;
        let store = BlobStore::open(&cfg.blob_store())?;
        Ok(Vault {
            cfg: cfg.clone(),
            catalog,
            store,
            keys,
            keks: Arc::new(Mutex::new(keks)),
            dek_cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The pseudonymizer (for previews with the broker's own keys).
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.keys
    }

    /// The catalogue.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The blob store.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    fn current_kek(&self) -> Arc<Kek> {
        let g = self.keks.lock().unwrap_or_else(|p| p.into_inner());
        // Never empty: `open` refuses a data folder without a KEK.
        g[g.len() - 1].clone()
    }

    fn kek(&self, version: u32) -> Result<Arc<Kek>, VaultError> {
        let g = self.keks.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .find(|k| k.version == version)
            .cloned()
            .ok_or_else(|| VaultError::Keys(format!("key-encryption key v{version} is missing")))
    }

    /// The patient's data key, from the cache or unwrapped from the catalogue; created
    /// (for `create_for`'s site) when the patient is new, unless they withdrew.
    async fn data_key(
        &self,
        p: &Pseudonym,
        create_for: Option<&SiteId>,
    ) -> Result<Arc<DataKey>, VaultError> {
        let cell = {
            let mut cache = self.dek_cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(p.as_str()) {
                Some(cell) => cell.clone(),
                // Only a patient's first lookup allocates its entry.
                None => cache.entry(p.to_string()).or_default().clone(),
            }
        };
        cell.get_or_try_init(|| self.load_data_key(p, create_for))
            .await
            .cloned()
    }

    /// [`Vault::data_key`] without the cache.
    async fn load_data_key(
        &self,
        p: &Pseudonym,
        create_for: Option<&SiteId>,
    ) -> Result<Arc<DataKey>, VaultError> {
        let rec = match self.catalog.patient_key(p.as_str()).await? {
            Some(r) => r,
            None if create_for.is_some() => {
                if self.catalog.is_withdrawn(p.as_str()).await? {
                    return Err(VaultError::Withdrawn(p.to_string()));
                }
                let kek = self.current_kek();
                let dek = crypto::random_key()?;
                let rec = PatientKey {
                    wrapped: kek.wrap(p.as_str(), &dek)?,
                    kek_version: kek.version,
                    key_version: 1,
                };
                self.catalog
                    .insert_patient_key(
                        p.as_str(),
                        create_for.map(SiteId::as_str).unwrap_or_default(),
                        &rec,
                    )
                    .await?
            }
            None => return Err(VaultError::UnknownPatient(p.to_string())),
        };
        let kek = self.kek(rec.kek_version)?;
        Ok(Arc::new(DataKey::new(
            &kek.unwrap_key(p.as_str(), &rec.wrapped)?,
            rec.key_version,
        )?))
    }

    /// The blob ID of an instance: derived from its (already pseudonymized) SOP UID.
    fn object_id(p: &Pseudonym, sop_uid: &str) -> String {
        let h = ring::digest::digest(&ring::digest::SHA256, sop_uid.as_bytes());
        format!(
            "instances/{}/{}",
            p.as_str(),
            hex::encode(&h.as_ref()[..16])
        )
    }

    /// Ingests one identifiable instance from a site. Returns only once the encrypted
    /// blob and its catalogue row are durable.
    pub async fn ingest(&self, site: &SiteId, bytes: Vec<u8>) -> Result<Ingested, VaultError> {
        self.ingest_into(site, bytes, None).await
    }

    /// Like [`Vault::ingest`], but the instance must belong to the study whose source
    /// Study Instance UID is `study` (STOW-RS to `/studies/{study}`); otherwise nothing
    /// is stored and [`VaultError::OtherStudy`] says so.
    pub async fn ingest_into(
        &self,
        site: &SiteId,
        bytes: Vec<u8>,
        study: Option<&str>,
    ) -> Result<Ingested, VaultError> {
        match self.prepare(site, bytes, study).await? {
            Prepared::Quarantined { reason, pseudonym } => {
                Ok(Ingested::Quarantined { reason, pseudonym })
            }
            Prepared::Ready(r) => self.commit(*r).await,
        }
    }

    /// The first half of an ingest: de-identify and encrypt, store nothing (except the
    /// patient's wrapped data key when the patient is new). The caller records what it is
    /// about to do (the audit log) and then calls [`Vault::commit`], or drops it.
    pub async fn prepare(
        &self,
        site: &SiteId,
        bytes: Vec<u8>,
        study: Option<&str>,
    ) -> Result<Prepared, VaultError> {
        let keys = self.keys.clone();
        let s = site.clone();
        let outcome = tokio::task::spawn_blocking(move || deid::deidentify(&bytes, &s, &keys))
            .await
            .map_err(|e| VaultError::Internal(format!("de-identification task failed: {e}")))??;
        let a = match outcome {
            Outcome::Quarantined { reason, pseudonym } => {
                return Ok(Prepared::Quarantined {
                    reason,
                    pseudonym: pseudonym.to_string(),
                })
            }
            Outcome::Accepted(a) => a,
        };
        if let Some(study) = study {
            if self.keys.uid(study) != a.study_uid {
                return Err(VaultError::OtherStudy);
            }
        }
        let dek = self.data_key(&a.pseudonym, Some(site)).await?;
        let object_id = Self::object_id(&a.pseudonym, &a.sop_uid);
        let mut row = InstanceRow {
            object_id: object_id.clone(),
            pseudonym: a.pseudonym.to_string(),
            site: site.to_string(),
            study_uid: a.study_uid.clone(),
            series_uid: a.series_uid.clone(),
            sop_uid: a.sop_uid.clone(),
            sop_class: a.sop_class.clone(),
            modality: a.modality.clone(),
            manufacturer: a.manufacturer.clone(),
            series_description: a.series_description.clone(),
            study_date: a.study_date.clone(),
            transfer_syntax: a.transfer_syntax.clone(),
            size: a.bytes.len() as i64,
            sha256: String::new(),
            key_version: dek.version,
        };
        let from_study = a.pseudonym_from_study;
        let Accepted {
            bytes, acquisition, ..
        } = *a;
        row.sha256 = crate::tree::sha256_hex(&bytes);
        let blob = dek.seal(&object_id, bytes)?;
        Ok(Prepared::Ready(Box::new(ReadyInstance {
            row,
            acquisition,
            blob,
            pseudonym_from_study: from_study,
        })))
    }

    /// The second half of an ingest: store the sealed blob durably, then commit its
    /// catalogue row. Returns once both are durable.
    pub async fn commit(&self, r: ReadyInstance) -> Result<Ingested, VaultError> {
        self.commit_with(r, None).await
    }

    /// Like [`Vault::commit`], handing `work` to the catalogue's batch hook inside the
    /// transaction that commits the row (see [`crate::catalog::BatchHook`]): the row is
    /// committed only if the hook succeeds. The blob is made durable first; a blob whose
    /// row never commits is an unreferenced ciphertext, rewritten by the next upload of
    /// the same instance.
    pub async fn commit_with(
        &self,
        r: ReadyInstance,
        work: Option<crate::catalog::TxWork>,
    ) -> Result<Ingested, VaultError> {
        let ReadyInstance {
            row,
            acquisition,
            blob,
            pseudonym_from_study,
        } = r;
        self.store.put(&row.object_id, blob).await?;
        let fresh = self
            .catalog
            .insert_instance_with(&row, Some(acquisition), work)
            .await?;
        Ok(Ingested::Stored {
            object_id: row.object_id,
            pseudonym: row.pseudonym,
            sop_uid: row.sop_uid,
            study_uid: row.study_uid,
            sop_class: row.sop_class,
            duplicate: !fresh,
            pseudonym_from_study,
        })
    }

    /// Ingests a site's clinical CSV: one encrypted record per patient row.
    pub async fn ingest_clinical(
        &self,
        site: &SiteId,
        csv: &[u8],
        safe_columns: &[String],
    ) -> Result<clinical::Pseudonymized, VaultError> {
        let mut out = clinical::pseudonymize(csv, site, &self.keys, safe_columns)?;
        let mut stored = Vec::new();
        for rec in out.records.drain(..) {
            let dek = match self.data_key(&rec.pseudonym, Some(site)).await {
                Ok(k) => k,
                Err(VaultError::Withdrawn(_)) => continue,
                Err(e) => return Err(e),
            };
            let json = serde_json::to_vec(&rec).map_err(|e| VaultError::Internal(e.to_string()))?;
            let digest = self.keys.digest("hbs/clinical/v1", &[&json]);
            let object_id = format!(
                "clinical/{}/{}",
                rec.pseudonym.as_str(),
                hex::encode(&digest[..16])
            );
            let blob = dek.seal(&object_id, json)?;
            self.store.put(&object_id, blob).await?;
            self.catalog
                .insert_clinical(
                    &object_id,
                    rec.pseudonym.as_str(),
                    site.as_str(),
                    dek.version,
                )
                .await?;
            stored.push(rec);
        }
        out.records = stored;
        Ok(out)
    }

    async fn open_blob(&self, pseudonym: &str, object_id: &str) -> Result<Vec<u8>, VaultError> {
        let p = Pseudonym::parse(pseudonym)
            .ok_or_else(|| VaultError::UnknownPatient("(malformed pseudonym)".into()))?;
        let dek = self.data_key(&p, None).await?;
        let blob = self.store.get(object_id).await?;
        Ok(dek.open(object_id, &blob)?)
    }

    /// Decrypts one patient's clinical records (the pseudonymized fields kept).
    pub async fn read_clinical(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<clinical::Record>, VaultError> {
        let mut out = Vec::new();
        for (object_id, p, _) in self.catalog.clinical(Some(pseudonym)).await? {
            let bytes = self.open_blob(&p, &object_id).await?;
            out.push(
                serde_json::from_slice(&bytes)
                    .map_err(|e| VaultError::Internal(format!("clinical record: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Decrypts one stored instance.
    pub async fn read_instance(&self, row: &InstanceRow) -> Result<Vec<u8>, VaultError> {
        self.open_blob(&row.pseudonym, &row.object_id).await
    }

    /// Decrypts one patient's instances and clinical records, or everyone's, into `out`
    /// (`out/<pseudonym>/<study>/<series>/<sop>.dcm`, `out/<pseudonym>/clinical-N.json`).
    /// Returns (instances, clinical records) written.
    pub async fn export(
        &self,
        patient: Option<&Pseudonym>,
        out: &Path,
    ) -> Result<(usize, usize), VaultError> {
        let p = patient.map(|p| p.as_str());
        if let Some(p) = p {
            if self.catalog.patient_key(p).await?.is_none() {
                return Err(VaultError::UnknownPatient(p.to_string()));
            }
        }
        let rows = self.catalog.instances(p).await?;
        for r in &rows {
            let bytes = self.read_instance(r).await?;
            let dest = out
                .join(&r.pseudonym)
                .join(&r.study_uid)
                .join(&r.series_uid)
                .join(format!("{}.dcm", r.sop_uid));
            crate::store::atomic_write(&dest, &bytes)?;
        }
        let clin = self.catalog.clinical(p).await?;
        for (i, (object_id, pseudonym, _)) in clin.iter().enumerate() {
            let bytes = self.open_blob(pseudonym, object_id).await?;
            let dest = out.join(pseudonym).join(format!("clinical-{i}.json"));
            crate::store::atomic_write(&dest, &bytes)?;
        }
        Ok((rows.len(), clin.len()))
    }

    /// Withdraws a patient (consent withdrawn): destroys the data key and the catalogue
    /// rows. Every blob of the patient stays where it is, and is unreadable for ever.
    /// Returns the number of instances shredded.
    pub async fn withdraw(&self, p: &Pseudonym) -> Result<i64, VaultError> {
        let n = self
            .catalog
            .withdraw(p.as_str())
            .await?
            .ok_or_else(|| VaultError::UnknownPatient(p.to_string()))?;
        self.dek_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(p.as_str());
        Ok(n)
    }

    /// Rotates the key-encryption key: writes version N+1, rewraps every data key under
    /// it in one transaction, then deletes the old KEK files. Blobs are not touched.
    /// Returns the new version.
    pub async fn rotate_kek(&self) -> Result<u32, VaultError> {
        let old = self.current_kek();
        let new_version = old.version + 1;
        let dir = self.cfg.keys_dir();
        let path = dir.join(format!("kek-v{new_version}.key"));
        let bytes = crypto::random_key()?;
        write_secret_file(&path, &bytes)?;
        let new = Arc::new(Kek::new(&bytes, new_version)?);
        let mut rewrapped = Vec::new();
        for (p, rec) in self.catalog.all_keys().await? {
            let dek = self.kek(rec.kek_version)?.unwrap_key(&p, &rec.wrapped)?;
            rewrapped.push((p.clone(), new.wrap(&p, &dek)?, new_version));
        }
        self.catalog.rewrap(&rewrapped).await?;
        {
            let mut g = self.keks.lock().unwrap_or_else(|p| p.into_inner());
            g.push(new);
        }
        for v in kek_versions(&dir)? {
            if v < new_version {
                let p = dir.join(format!("kek-v{v}.key"));
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        self.keks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| k.version == new_version);
        Ok(new_version)
    }

    /// Current KEK version.
    pub fn kek_version(&self) -> u32 {
        self.current_kek().version
    }

    /// Closes database connections.
    pub async fn close(&self) {
        self.catalog.close().await
    }
}

/// A database URL without its password, for printing.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
