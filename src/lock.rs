//! Only one dispatcher may work a database at a time.
//!
//! The dispatcher takes an exclusive OS lock on a file beside the database before it touches
//! any claim. The kernel drops the lock when the process dies, even by `kill -9`, so a restart
//! takes over at once, and every `in_flight` row it then finds belongs to a dead process. A
//! second `run` on the same database waits as a standby and takes over when the first stops.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a standby checks whether the active dispatcher has gone.
const STANDBY_POLL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct DispatcherLock {
    _file: File,
    path: PathBuf,
}

impl DispatcherLock {
    /// The lock file of the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".dispatcher.lock");
        PathBuf::from(name)
    }

    /// Take the lock if it is free; otherwise `Ok(Err(pid))` with the holder's process id.
    pub fn try_acquire(db: &Path) -> std::io::Result<Result<Self, String>> {
        let path = Self::path_for(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                file.rewind()?;
                writeln!(file, "{}", std::process::id())?;
                file.flush()?;
                Ok(Ok(Self { _file: file, path }))
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder)?;
                Ok(Err(holder.trim().to_owned()))
            }
            Err(TryLockError::Error(err)) => Err(err),
        }
    }

    /// The pid of the dispatcher working the database at `db`, if one is. Does not take the
    /// lock (a shared probe held for an instant), so a starting dispatcher is not delayed.
    pub fn holder(db: &Path) -> std::io::Result<Option<String>> {
        let path = Self::path_for(db);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                file.read_to_string(&mut pid)?;
                Ok(Some(pid.trim().to_owned()))
            }
            Err(TryLockError::Error(err)) => Err(err),
        }
    }

    /// Take the lock, standing by while another dispatcher holds it. `None` if cancelled first.
    pub async fn acquire(db: &Path, cancel: &CancellationToken) -> std::io::Result<Option<Self>> {
        let mut announced = false;
        loop {
            match Self::try_acquire(db)? {
                Ok(lock) => {
                    if announced {
                        info!(lock = %lock.path.display(), "the other dispatcher is gone; taking over");
                    }
                    return Ok(Some(lock));
                }
                Err(holder) => {
                    if !announced {
                        warn!(
                            holder_pid = %holder,
                            lock = %Self::path_for(db).display(),
                            "another dispatcher is working this database; standing by until it stops"
                        );
                        announced = true;
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(STANDBY_POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("q.db");
        let first = DispatcherLock::try_acquire(&db).expect("io").expect("free");
        let holder = DispatcherLock::try_acquire(&db)
            .expect("io")
            .expect_err("held");
        assert_eq!(holder, std::process::id().to_string());
        assert_eq!(
            DispatcherLock::holder(&db).expect("io"),
            Some(std::process::id().to_string())
        );
        drop(first);
        assert_eq!(DispatcherLock::holder(&db).expect("io"), None);
        assert!(DispatcherLock::try_acquire(&db).expect("io").is_ok());
    }
}
