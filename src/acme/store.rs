//! The state directory: one subdirectory per ACME directory URL (so staging and production
//! never mix), holding the account (`account-EMAIL.json`: key and URL) and, per certificate,
//! `NAME.crt` (chain, leaf first), `NAME.key` and `NAME.lock`. Directories are 0700, files 0600.
//!
//! Files are written to a temporary name and renamed, key first: a reader (another instance
//! polling) sees either the old pair, or a new key with the old certificate for an instant —
//! which fails the key check and is read again at its next poll — never half a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::AcmeCertConfig;

pub struct Store {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    lock: PathBuf,
    pub account: PathBuf,
}

impl Store {
    pub fn new(cfg: &AcmeCertConfig) -> Store {
        let dir = cfg.state_dir.join(directory_id(&cfg.directory));
        let name = &cfg.domains[0];
        Store {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            lock: dir.join(format!("{name}.lock")),
            account: dir.join(format!("account-{}.json", file_safe(&cfg.email))),
            dir,
        }
    }

    /// Creates the directories (0700) if they are missing.
    pub fn ensure_dir(&self) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        // `recursive` leaves an existing directory's mode alone; ours is made private.
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// Takes the certificate's lock without waiting: `None` when another process (or another
    /// gateway in this one) holds it. Released when the returned file is dropped.
    pub fn try_lock(&self) -> Result<Option<File>, String> {
        self.ensure_dir()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| format!("cannot open {}: {e}", self.lock.display()))?;
        // SAFETY: flock on a descriptor we own; it only changes the lock's state.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(file));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(format!("cannot lock {}: {err}", self.lock.display())),
        }
    }

    /// Writes the new key and chain (key first, each by rename).
    pub fn save_cert(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        self.ensure_dir()?;
        write_private(&self.key, key_pem.as_bytes())?;
        write_private(&self.cert, chain_pem.as_bytes())
    }
}

/// Writes `path` with mode 0600 through a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// A directory name for an ACME directory URL: its host and port.
fn directory_id(url: &str) -> String {
    let authority = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| url.to_string());
    file_safe(&authority)
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '@' => c,
            _ => '_',
        })
        .collect()
}
