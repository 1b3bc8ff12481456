//! Compiled plugins kept on disk, so a restart or `gateway plugin check`
//! loads a filter it has compiled before in milliseconds instead of
//! compiling it again (seconds for a JavaScript or Python filter, whose
//! components carry a whole interpreter).
//!
//! An entry is the component as wasmtime serialises it, followed by the
//! SHA-256 of those bytes. Its name is the SHA-256 of the component it was
//! compiled from and a hash of everything that makes compiled code
//! compatible (wasmtime's version, the target and the engine's settings),
//! so a change to any of them is a miss, never a wrong hit.
//!
//! Loading compiled code runs it as the gateway, so the cache is trusted
//! only where nobody else could have written it: the directory and every
//! entry must belong to the gateway's user and be writable by no one else,
//! and an entry's checksum must match before wasmtime (which checks the
//! format and version again) reads it. Anything else is a miss, and a bad
//! entry is removed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

const DIGEST: usize = 32;
const SUFFIX: &str = ".cwasm";

/// A directory of compiled plugins for one engine.
pub struct CompileCache {
    dir: PathBuf,
    /// What every entry this engine can load has in its name.
    engine_key: String,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries that could not be written or were refused when read.
    pub errors: AtomicU64,
}

/// The cache's counters, for the admin endpoint.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

/// The default directory: `$XDG_CACHE_HOME/gateway/plugins`, else
/// `$HOME/.cache/gateway/plugins`.
pub use crate::config::default_compile_cache_dir as default_dir;

/// The user this process runs as: the owner of its `/proc/self`.
fn own_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Why `meta` may not be trusted: owned by another user, or writable by
/// its group or everyone.
fn untrusted(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    if meta.uid() != uid {
        return Some(format!("owned by uid {}, not {uid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    None
}

impl CompileCache {
    /// Opens (creating, readable and writable by this user only) the cache
    /// in `dir` for `engine`. Refused when the directory is not this user's
    /// alone.
    pub fn open(dir: &Path, engine: &Engine) -> Result<CompileCache, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let uid = own_uid().map_err(|e| format!("cannot tell this process's user: {e}"))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        if let Some(why) = untrusted(&meta, uid) {
            return Err(format!("{} is {why}", dir.display()));
        }
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: engine_key(engine),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn entry(&self, binary: &[u8]) -> PathBuf {
        self.dir.join(format!(
            "{}-{}{SUFFIX}",
            super::content_hash(binary),
            self.engine_key
        ))
    }

    /// `binary` compiled for `engine`: from the cache when an entry for it
    /// is there and sound, else compiled now and stored.
    pub fn component(&self, engine: &Engine, binary: &[u8]) -> wasmtime::Result<Component> {
        let path = self.entry(binary);
        match self.read(engine, &path) {
            Ok(Some(component)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // Marks the entry used, for `gateway cache prune`.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                return Ok(component);
            }
            Ok(None) => {}
            Err(why) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("compile cache entry {} refused: {why}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, binary)?;
        if let Err(e) = self.write(&path, &component) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "cannot store {} in the compile cache: {e:#}",
                path.display()
            );
        }
        Ok(component)
    }

    /// The entry at `path`, if there is one; `Err` when it is there but
    /// may not be used.
    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        let uid = own_uid().map_err(|e| e.to_string())?;
        if let Some(why) = untrusted(&meta, uid) {
            return Err(why);
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        if bytes.len() < DIGEST {
            return Err("truncated".into());
        }
        let (code, digest) = bytes.split_at(bytes.len() - DIGEST);
        if ring::digest::digest(&ring::digest::SHA256, code).as_ref() != digest {
            return Err("its checksum does not match".into());
        }
        deserialize(engine, code)
            .map(Some)
            .map_err(|e| format!("{e:#}"))
    }

    /// Stores `component` at `path`: written to a file of its own, readable
    /// by this user only, then renamed into place, so a reader never sees
    /// half an entry.
    fn write(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let code = component.serialize()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &code);
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&code)?;
            f.write_all(digest.as_ref())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(written?)
    }

    /// Removes entries this engine cannot load (another wasmtime version or
    /// engine settings), leftovers of interrupted writes, and entries not
    /// used for `unused_for`. Answers how many files and bytes went.
    pub fn prune(&self, unused_for: Duration) -> std::io::Result<(usize, u64)> {
        let now = SystemTime::now();
        let (mut files, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let ours = name.ends_with(&format!("-{}{SUFFIX}", self.engine_key));
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age >= unused_for);
            let leftover = name.ends_with(".tmp");
            let cached = name.ends_with(SUFFIX);
            if (cached && (!ours || stale)) || (leftover && stale) {
                std::fs::remove_file(entry.path())?;
                files += 1;
                bytes += meta.len();
            }
        }
        Ok((files, bytes))
    }
}

/// Everything that decides whether code compiled by one engine runs on
/// another, as 16 hex digits.
fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    super::WASMTIME_VERSION.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Loads compiled code.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes be what `serialize` wrote,
    // as code compiled from them runs unchecked. They are: the entry is
    // read only from a directory and a file that belong to this user and
    // nobody else may write, after its checksum matched, and wasmtime
    // itself refuses bytes from another version or engine configuration.
    unsafe { Component::deserialize(engine, code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(component (core module (func (export "f"))))"#;

    fn engine() -> Engine {
        Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gateway-compile-cache-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_load_is_a_hit_and_a_damaged_entry_is_refused_and_replaced() {
        let (dir, engine) = (scratch("hit"), engine());
        let binary = wat::parse_str(WAT).unwrap();
        let cache = CompileCache::open(&dir, &engine).unwrap();
        cache.component(&engine, &binary).unwrap();
        cache.component(&engine, &binary).unwrap();
        let c = cache.counts();
        assert_eq!((c.hits, c.misses, c.errors), (1, 1, 0));
        let entry = cache.entry(&binary);
        let mode = std::fs::metadata(&entry).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);

        // One flipped byte: the checksum catches it, and the entry is
        // compiled and written again.
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&entry, &bytes).unwrap();
        cache.component(&engine, &binary).unwrap();
        let c = cache.counts();
        assert_eq!((c.hits, c.misses, c.errors), (1, 2, 1));
        cache.component(&engine, &binary).unwrap();
        assert_eq!(cache.counts().hits, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entries_others_may_write_are_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, engine) = (scratch("perm"), engine());
        let binary = wat::parse_str(WAT).unwrap();
        let cache = CompileCache::open(&dir, &engine).unwrap();
        cache.component(&engine, &binary).unwrap();
        let entry = cache.entry(&binary);
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        cache.component(&engine, &binary).unwrap();
        assert_eq!(cache.counts().errors, 1, "the writable entry was refused");
        assert_eq!(cache.counts().hits, 0);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = CompileCache::open(&dir, &engine).err().unwrap();
        assert!(refused.contains("writable by others"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prune_removes_other_engines_entries_and_unused_ones() {
        let (dir, engine) = (scratch("prune"), engine());
        let binary = wat::parse_str(WAT).unwrap();
        let cache = CompileCache::open(&dir, &engine).unwrap();
        cache.component(&engine, &binary).unwrap();
        std::fs::write(dir.join("00-0000000000000000.cwasm"), b"other engine").unwrap();
        assert_eq!(cache.prune(Duration::from_secs(3600)).unwrap().0, 1);
        assert!(cache.entry(&binary).exists(), "a recent entry stays");
        assert_eq!(cache.prune(Duration::ZERO).unwrap().0, 1);
        assert!(!cache.entry(&binary).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
