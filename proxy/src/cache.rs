//! The on-disk snapshot cache (invariant I7): with `--cache-dir`, the proxy keeps the last
//! config it runs in one file per service, so that a proxy started while the control plane
//! is unreachable serves at once from it (and then follows the Sentinels, I6).
//!
//! The file holds a protobuf `ConfigUpdate`: each update applied from the control plane,
//! and the same update with the topology the proxy followed from the Sentinels during an
//! outage. It is written atomically (a temporary file, `fsync`, `rename`, `fsync` of the
//! directory): a crash leaves the previous file or the new one, never a torn one. A loaded
//! file is validated by the same `RoutingTable::from_proto` as a live update.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pivot_proto::v1;
use prost::Message;

/// Largest cache file read back (a config is a few KiB; this only guards against a wrong
/// file).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// One service's cache file in `--cache-dir`.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl Cache {
    /// Creates `dir` if missing; the file is named after `service`.
    pub fn open(dir: &Path, service: &str) -> Result<Cache, String> {
        fs::create_dir_all(dir)
            .map_err(|e| format!("--cache-dir {}: cannot create it: {e}", dir.display()))?;
        if !dir.is_dir() {
            return Err(format!("--cache-dir {} is not a directory", dir.display()));
        }
        let name = file_name(service);
        Ok(Cache {
            dir: dir.to_path_buf(),
            path: dir.join(&name),
            tmp: dir.join(format!(".{name}.tmp")),
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `update`, atomically and durably. Blocking.
    pub fn store(&self, update: &v1::ConfigUpdate) -> std::io::Result<()> {
        let bytes = update.encode_to_vec();
        {
            let mut f = File::create(&self.tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&self.tmp, &self.path)?;
        // The rename itself is durable once the directory is synced.
        File::open(&self.dir)?.sync_all()
    }

    /// The cached update; `Ok(None)` when there is none. Blocking.
    pub fn load(&self) -> Result<Option<v1::ConfigUpdate>, String> {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{}: {} bytes is too large for a cached config",
                self.path.display(),
                meta.len()
            ));
        }
        let bytes = fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        v1::ConfigUpdate::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| format!("{}: not a config update: {e}", self.path.display()))
    }

    /// [`store`](Self::store) off the async threads.
    pub async fn store_async(self: &Arc<Self>, update: v1::ConfigUpdate) -> Result<(), String> {
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.store(&update))
            .await
            .map_err(|e| format!("cache writer failed: {e}"))?
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// [`load`](Self::load) off the async threads.
    pub async fn load_async(self: &Arc<Self>) -> Result<Option<v1::ConfigUpdate>, String> {
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.load())
            .await
            .map_err(|e| format!("cache reader failed: {e}"))?
    }
}

/// `<service>.config.pb`, with every byte outside `[A-Za-z0-9._-]` (and a leading dot)
/// written as `%XX`, so that any Sentinel master name is one safe file name.
fn file_name(service: &str) -> String {
    let mut out = String::with_capacity(service.len() + 10);
    for (i, b) in service.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(".config.pb");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn update(version: u64) -> v1::ConfigUpdate {
        v1::ConfigUpdate {
            version,
            nonce: "n".into(),
            services: vec![v1::ServiceConfig {
                name: "mymaster".into(),
                ..Default::default()
            }],
            unknown_services: Vec::new(),
            control_plane_id: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn store_then_load_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("sub"), "mymaster").unwrap();
        assert_eq!(cache.load().unwrap(), None);
        cache.store(&update(3)).unwrap();
        cache.store(&update(4)).unwrap();
        assert_eq!(cache.load().unwrap(), Some(update(4)));
        // Only the file itself is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["mymaster.config.pb".to_string()]);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), "mymaster").unwrap();
        fs::write(cache.path(), b"\xff\xff\xff garbage").unwrap();
        assert!(cache.load().unwrap_err().contains("not a config update"));
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name("mymaster"), "mymaster.config.pb");
        assert_eq!(file_name("a/b"), "a%2Fb.config.pb");
        assert_eq!(file_name(".."), "%2E..config.pb");
        assert_eq!(file_name("my.master-1"), "my.master-1.config.pb");
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(Cache::open(&file, "m").is_err());
    }
}
