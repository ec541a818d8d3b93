//! The output folder of a training run, held by one process at a time.
//!
//! `OUT/train.lock` carries an advisory lock (`flock`) for as long as the
//! run lives, and the holder's pid for messages. The operating system drops
//! the lock when the process ends, however it ends (`kill -9` included), so
//! a lock is never stale; the file itself stays, since deleting it would let
//! two processes lock two different files of the same name.
//!
//! Once the lock is held, the temporary files that a killed process left
//! beside the files it writes atomically (`<name>.tmp-<pid>`, see
//! [`crate::checkpoint::write_atomic`]) are removed: nobody else can be
//! writing them.

use crate::{bail, Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the output folder.
pub const LOCK_FILE: &str = "train.lock";

/// An output folder locked by this process; the lock is released on drop.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `out` if needed, takes its lock (an error naming the holder
    /// when another process has it) and removes stale temporary files.
    pub fn lock(out: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let lock_path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                bail!(
                    Usage,
                    "{} is in use by {holder} (lock {}): two runs writing one folder would mix \
                     their checkpoints and metrics; wait for it to finish, stop it, or use \
                     another --out",
                    out.display(),
                    lock_path.display()
                );
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&lock_path, e))?;
        let dir = RunDir {
            path: out.to_path_buf(),
            _lock: file,
        };
        dir.remove_stale_temporaries()?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes `*.tmp-<digits>` files: leftovers of atomic writes that a
    /// killed process never renamed. Returns how many were removed.
    fn remove_stale_temporaries(&self) -> Result<usize> {
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.path, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_atomic_temporary(name) && entry.file_type().is_ok_and(|t| t.is_file()) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                eprintln!("removed {} (left by an interrupted write)", p.display());
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `<name>.tmp-<pid>`, the temporary-file pattern of `write_atomic`.
fn is_atomic_temporary(name: &str) -> bool {
    name.rsplit_once(".tmp-").is_some_and(|(stem, pid)| {
        !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognized() {
        assert!(is_atomic_temporary("checkpoint.safetensors.tmp-1234"));
        assert!(is_atomic_temporary("metrics.jsonl.tmp-7"));
        assert!(!is_atomic_temporary("checkpoint.safetensors"));
        assert!(!is_atomic_temporary("notes.tmp-"));
        assert!(!is_atomic_temporary("x.tmp-12a"));
        assert!(!is_atomic_temporary(".tmp-12"));
    }
}
