//! The admin token, the HS256 secret and the media URL key: taken from the configuration when given, otherwise
//! generated at first start and kept in the data directory (files readable by the owner
//! only), so that a restart keeps every issued token valid.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::RngCore;

/// File of the generated admin token, inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin_token";
/// File of the generated HS256 secret, inside the data directory.
pub const JWT_SECRET_FILE: &str = "jwt_secret";
/// File of the generated HMAC key of signed media URLs, inside the data directory.
pub const MEDIA_URL_KEY_FILE: &str = "media_url_key";

/// A secret and whether this start created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Secret {
    pub(crate) value: String,
    pub(crate) generated: bool,
}

/// `configured` when it is set and not empty, else the value kept in `dir/file`, else a new
/// random value written there (mode 0600) first.
pub(crate) fn load_or_generate(dir: &Path, file: &str, configured: Option<&str>) -> io::Result<Secret> {
    if let Some(value) = configured.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok(Secret { value: value.to_owned(), generated: false });
    }
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Secret { value: text.trim().to_owned(), generated: false }),
        Ok(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is empty", path.display()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let value = random_hex(32);
    write_private(&path, &value)?;
    Ok(Secret { value, generated: true })
}

/// `bytes` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `value` to `path` atomically (a temporary file, synced, renamed) with mode 0600.
fn write_private(path: &Path, value: &str) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_kept_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), ADMIN_TOKEN_FILE, None).unwrap();
        assert!(first.generated);
        assert_eq!(first.value.len(), 64);
        let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let again = load_or_generate(dir.path(), ADMIN_TOKEN_FILE, None).unwrap();
        assert_eq!(again, Secret { value: first.value.clone(), generated: false });

        let configured = load_or_generate(dir.path(), ADMIN_TOKEN_FILE, Some("given")).unwrap();
        assert_eq!(configured, Secret { value: "given".into(), generated: false });
        let blank = load_or_generate(dir.path(), ADMIN_TOKEN_FILE, Some("  ")).unwrap();
        assert_eq!(blank.value, first.value);
    }
}
