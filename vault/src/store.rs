//! Where encrypted blobs live.
//!
//! Two backends behind one type, chosen by a location string:
//! - `local:PATH` (the embedded default): files under PATH, written atomically (a
//!   temporary file in the same folder, then `rename`), so a blob is either wholly there
//!   or not at all, whenever the process dies; and durably with group sync: one writer
//!   thread takes every blob waiting, writes and renames them all, then makes them
//!   durable with a single `syncfs` before any of their callers is answered. That is
//!   the group commit of databases applied to files: one flush is shared by many
//!   blobs, where an `fsync` per file and per folder would cap throughput at the disk's
//!   flush rate.
//! - `objfs:PATH` or `memory:`: the same interface over the `object_store` crate
//!   (its local-file and in-memory stores). `object_store` is the path to S3-compatible
//!   storage for scale-out; its cloud backends are not compiled in yet (see the README).
//!
//! Only ciphertext ever reaches a store: [`crate::vault`] encrypts before calling `put`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error on a local store.
    #[error("blob store I/O on {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Error from an `object_store` backend.
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    /// No such blob.
    #[error("blob {0} not found")]
    NotFound(String),
    /// A location string hbs does not understand.
    #[error("unknown blob store location {0:?}: use local:PATH, objfs:PATH or memory:")]
    BadLocation(String),
    /// An object ID that is not a safe relative path.
    #[error("invalid object ID")]
    BadId,
}

/// A blob store.
#[derive(Clone, Debug)]
pub enum BlobStore {
    /// Files with atomic, durable, group-synced writes.
    Local(Arc<LocalStore>),
    /// Any `object_store` backend.
    Object(Arc<dyn ObjectStore>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId)
    }
}

impl BlobStore {
    /// Opens a store from its location string.
    pub fn open(location: &str) -> Result<Self, StoreError> {
        if let Some(p) = location.strip_prefix("local:") {
            Ok(BlobStore::Local(Arc::new(LocalStore::open(
                PathBuf::from(p),
            )?)))
        } else if let Some(p) = location.strip_prefix("objfs:") {
            let p = PathBuf::from(p);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            Ok(BlobStore::Object(Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&p)?,
            )))
        } else if location == "memory:" {
            Ok(BlobStore::Object(Arc::new(
                object_store::memory::InMemory::new(),
            )))
        } else {
            Err(StoreError::BadLocation(location.to_string()))
        }
    }

    /// Stores a blob durably under `id` (a relative path of safe characters).
    pub async fn put(&self, id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        check_id(id)?;
        match self {
            BlobStore::Local(local) => local.put(id, bytes).await,
            BlobStore::Object(s) => {
                s.put(&object_store::path::Path::from(id), bytes.into())
                    .await?;
                Ok(())
            }
        }
    }

    /// Reads a blob.
    pub async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        check_id(id)?;
        match self {
            BlobStore::Local(local) => {
                let path = local.root.join(id);
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StoreError::NotFound(id.to_string()))
                    }
                    Err(e) => Err(io(&path)(e)),
                }
            }
            BlobStore::Object(s) => match s.get(&object_store::path::Path::from(id)).await {
                Ok(r) => Ok(r.bytes().await?.to_vec()),
                Err(object_store::Error::NotFound { .. }) => {
                    Err(StoreError::NotFound(id.to_string()))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Whether a backend is reachable (for readiness checks).
    pub async fn ready(&self) -> bool {
        match self {
            BlobStore::Local(local) => tokio::fs::metadata(&local.root).await.is_ok(),
            BlobStore::Object(s) => s
                .list_with_delimiter(None)
                .await
                .map(|_| true)
                .unwrap_or(false),
        }
    }
}

/// A blob waiting for the group writer, with the channel its caller waits on.
type WriteRequest = (
    PathBuf,
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// Most blobs made durable by one `syncfs`.
const MAX_GROUP: usize = 128;

/// The local file store and its group-sync writer thread.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    writer: std::sync::Mutex<std::sync::mpsc::Sender<WriteRequest>>,
}

impl LocalStore {
    fn open(root: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let dir = std::fs::File::open(&root).map_err(io(&root))?;
        let (tx, rx) = std::sync::mpsc::channel::<WriteRequest>();
        std::thread::Builder::new()
            .name("hbs-blob-writer".into())
            .spawn(move || group_writer(dir, rx))
            .map_err(io(&root))?;
        Ok(LocalStore {
            root,
            writer: std::sync::Mutex::new(tx),
        })
    }

    async fn put(&self, id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Io {
            path: "blob writer".into(),
            source: std::io::Error::other("the blob writer thread has stopped"),
        };
        self.writer
            .lock()
            .map_err(|_| stopped())?
            .send((self.root.join(id), bytes, reply))
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

/// Writes every waiting blob (temporary file, rename), then one `syncfs` makes the whole
/// group durable, then answers each caller. Ends when the store is dropped.
fn group_writer(root: std::fs::File, rx: std::sync::mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results: Vec<Result<(), StoreError>> = group
            .iter()
            .map(|(path, bytes, _)| write_renamed(path, bytes))
            .collect();
        let synced = rustix::fs::syncfs(&root).map_err(|e| StoreError::Io {
            path: "syncfs".into(),
            source: e.into(),
        });
        for ((_, _, reply), r) in group.into_iter().zip(results) {
            let r = match (&synced, r) {
                (Err(e), _) => Err(StoreError::Io {
                    path: "syncfs".into(),
                    source: std::io::Error::other(e.to_string()),
                }),
                (Ok(()), r) => r,
            };
            let _ = reply.send(r);
        }
    }
}

/// Writes a temporary file beside `path` and renames it into place (not yet durable).
fn write_renamed(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or(StoreError::BadId)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = temporary_beside(path)?;
    let result = std::fs::write(&tmp, bytes)
        .map_err(io(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temporary_beside(path: &Path) -> Result<PathBuf, StoreError> {
    let dir = path.parent().ok_or(StoreError::BadId)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(StoreError::BadId)?;
    let mut suffix = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix).map_err(
        |_| StoreError::Io {
            path: "rng".into(),
            source: std::io::Error::other("system random generator failed"),
        },
    )?;
    Ok(dir.join(format!(".{name}.{}.tmp", hex::encode(suffix))))
}

/// Writes a file so that it is either complete or absent after a crash.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = path.parent().ok_or(StoreError::BadId)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = temporary_beside(path)?;
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(s: BlobStore) {
        s.put("a/b/c.bin", b"ciphertext".to_vec()).await.unwrap();
        assert_eq!(s.get("a/b/c.bin").await.unwrap(), b"ciphertext");
        s.put("a/b/c.bin", b"again".to_vec()).await.unwrap();
        assert_eq!(s.get("a/b/c.bin").await.unwrap(), b"again");
        assert!(matches!(
            s.get("a/b/none").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.put("../escape", vec![]).await,
            Err(StoreError::BadId)
        ));
        assert!(s.ready().await);
    }

    #[tokio::test]
    async fn every_backend_behaves_the_same() {
        let d = tempfile::tempdir().unwrap();
        roundtrip(BlobStore::open(&format!("local:{}", d.path().join("l").display())).unwrap())
            .await;
        roundtrip(BlobStore::open(&format!("objfs:{}", d.path().join("o").display())).unwrap())
            .await;
        roundtrip(BlobStore::open("memory:").unwrap()).await;
        assert!(BlobStore::open("ftp://x").is_err());
        // No temporary files are left behind by the local store.
        let names: Vec<_> = std::fs::read_dir(d.path().join("l/a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.bin")]);
    }
}
