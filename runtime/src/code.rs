//! Code materialisation: turns the `/init` code (text, base64 zip or base64 executable) into files in
//! the action directory and finds the entry point the launcher or the executor starts from.
//!
//! The entry-point rules are pure functions over the archive's file names; only [`materialise`]
//! touches the disk.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::kind::Kind;

/// The file name a text Node.js action is written to.
pub const NODE_SOURCE: &str = "index.js";
/// The file a Python action (text or zip) starts from.
pub const PYTHON_MAIN: &str = "__main__.py";
/// The file a native action (text, executable or zip) is run from.
pub const NATIVE_EXEC: &str = "exec";

/// Why the code could not be materialised.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("Missing main/no code to execute.")]
    Empty,
    #[error("Unable to decode the base64 code: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("The binary code is not a zip archive.")]
    NotAZip,
    #[error("Unable to read the zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("The zip archive has no {0}.")]
    NoEntry(&'static str),
    #[error("The zip archive's package.json is not valid: {0}")]
    PackageJson(String),
    #[error("Unable to write the action's files in {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The decoded code, before it is written anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Text(String),
    Archive(Vec<u8>),
    Executable(Vec<u8>),
}

/// What to start once the files are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A Node.js source file compiled by the launcher (so a plain `function main` also works).
    NodeSource(PathBuf),
    /// A Node.js module path `require`d by the launcher (from a zip).
    NodeModule(PathBuf),
    /// A Python file imported by the launcher.
    Python(PathBuf),
    /// An executable run per activation.
    Native(PathBuf),
}

/// Decodes the code of an `/init`. Text code for a native kind is the executable itself (a script).
pub fn decode(kind: Kind, code: &str, binary: bool) -> Result<Source, CodeError> {
    if code.trim().is_empty() {
        return Err(CodeError::Empty);
    }
    if !binary {
        return Ok(match kind {
            Kind::Native => Source::Executable(code.as_bytes().to_vec()),
            Kind::Node | Kind::Python => Source::Text(code.to_string()),
        });
    }
    // Base64 from CLIs is often wrapped at 76 columns.
    let compact: String = code.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(compact)?;
    if bytes.is_empty() {
        return Err(CodeError::Empty);
    }
    match (is_zip(&bytes), kind) {
        (true, _) => Ok(Source::Archive(bytes)),
        (false, Kind::Native) => Ok(Source::Executable(bytes)),
        (false, Kind::Node | Kind::Python) => Err(CodeError::NotAZip),
    }
}

/// Whether the bytes start with a zip local file header (or the empty-archive end record).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// The Node.js entry of a zip: `package.json`'s `main` if it names one, else `index.js`.
pub fn resolve_node_entry(files: &BTreeSet<String>, package_json: Option<&str>) -> Result<String, CodeError> {
    if let Some(text) = package_json {
        let package: serde_json::Value =
            serde_json::from_str(text).map_err(|e| CodeError::PackageJson(e.to_string()))?;
        if let Some(main) = package.get("main").and_then(|m| m.as_str()).filter(|m| !m.trim().is_empty()) {
            return Ok(main.trim_start_matches("./").to_string());
        }
    }
    if files.contains(NODE_SOURCE) {
        return Ok(NODE_SOURCE.to_string());
    }
    Err(CodeError::NoEntry("package.json with a 'main' field nor index.js"))
}

/// The Python entry of a zip: `__main__.py` at its root.
pub fn resolve_python_entry(files: &BTreeSet<String>) -> Result<String, CodeError> {
    files.contains(PYTHON_MAIN).then(|| PYTHON_MAIN.to_string()).ok_or(CodeError::NoEntry(PYTHON_MAIN))
}

/// The native entry of a zip: `exec` at its root.
pub fn resolve_native_entry(files: &BTreeSet<String>) -> Result<String, CodeError> {
    files.contains(NATIVE_EXEC).then(|| NATIVE_EXEC.to_string()).ok_or(CodeError::NoEntry(NATIVE_EXEC))
}

/// Writes the code into `dir` (emptied first, so a retried `/init` starts clean) and returns the entry.
pub fn materialise(kind: Kind, source: &Source, dir: &Path) -> Result<Entry, CodeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CodeError::Io { path, source }
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    match (kind, source) {
        (Kind::Node, Source::Text(text)) => {
            let file = dir.join(NODE_SOURCE);
            std::fs::write(&file, text).map_err(io(&file))?;
            Ok(Entry::NodeSource(file))
        }
        (Kind::Python, Source::Text(text)) => {
            let file = dir.join(PYTHON_MAIN);
            std::fs::write(&file, text).map_err(io(&file))?;
            Ok(Entry::Python(file))
        }
        (_, Source::Executable(bytes)) => write_executable(dir, bytes),
        (Kind::Native, Source::Text(text)) => write_executable(dir, text.as_bytes()),
        (_, Source::Archive(bytes)) => {
            let mut archive = zip::ZipArchive::new(Cursor::new(bytes.as_slice()))?;
            let files: BTreeSet<String> =
                archive.file_names().map(|name| name.map(|n| n.into_owned())).collect::<Result<_, _>>()?;
            let entry = match kind {
                Kind::Node => {
                    let package = read_text(&mut archive, "package.json")?;
                    resolve_node_entry(&files, package.as_deref())?
                }
                Kind::Python => resolve_python_entry(&files)?,
                Kind::Native => resolve_native_entry(&files)?,
            };
            // `extract` refuses entries that would land outside `dir` and restores Unix modes.
            archive.extract(dir)?;
            let path = dir.join(&entry);
            Ok(match kind {
                Kind::Node => Entry::NodeModule(path),
                Kind::Python => Entry::Python(path),
                Kind::Native => {
                    make_executable(&path).map_err(io(&path))?;
                    Entry::Native(path)
                }
            })
        }
    }
}

fn read_text(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Option<String>, CodeError> {
    use std::io::Read as _;
    let mut file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| CodeError::PackageJson(e.to_string()))?;
    Ok(Some(text))
}

fn write_executable(dir: &Path, bytes: &[u8]) -> Result<Entry, CodeError> {
    let file = dir.join(NATIVE_EXEC);
    let io = |source| CodeError::Io { path: file.clone(), source };
    std::fs::write(&file, bytes).map_err(io)?;
    make_executable(&file).map_err(io)?;
    Ok(Entry::Native(file))
}

fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, text) in files {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(text.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn node_entry_prefers_package_main() {
        let files = names(&["package.json", "lib/main.js", "index.js"]);
        assert_eq!(resolve_node_entry(&files, Some(r#"{"main": "./lib/main.js"}"#)).unwrap(), "lib/main.js");
        assert_eq!(resolve_node_entry(&files, Some(r#"{"name": "x"}"#)).unwrap(), "index.js");
        assert_eq!(resolve_node_entry(&files, None).unwrap(), "index.js");
        assert!(matches!(resolve_node_entry(&names(&["a.js"]), None), Err(CodeError::NoEntry(_))));
        assert!(matches!(resolve_node_entry(&files, Some("{")), Err(CodeError::PackageJson(_))));
    }

    #[test]
    fn python_and_native_entries() {
        assert_eq!(resolve_python_entry(&names(&["__main__.py", "helper.py"])).unwrap(), "__main__.py");
        assert!(resolve_python_entry(&names(&["main.py"])).is_err());
        assert_eq!(resolve_native_entry(&names(&["exec", "data"])).unwrap(), "exec");
        assert!(resolve_native_entry(&names(&["run.sh"])).is_err());
    }

    #[test]
    fn decode_rules() {
        assert!(matches!(decode(Kind::Node, "  \n", false), Err(CodeError::Empty)));
        assert!(matches!(decode(Kind::Python, "", true), Err(CodeError::Empty)));
        assert_eq!(decode(Kind::Node, "x", false).unwrap(), Source::Text("x".into()));
        assert_eq!(
            decode(Kind::Native, "#!/bin/sh", false).unwrap(),
            Source::Executable(b"#!/bin/sh".to_vec())
        );
        assert_eq!(
            decode(Kind::Native, &b64(b"\x7fELF"), true).unwrap(),
            Source::Executable(b"\x7fELF".to_vec())
        );
        assert!(matches!(decode(Kind::Node, &b64(b"not zip"), true), Err(CodeError::NotAZip)));
        assert!(matches!(decode(Kind::Node, "!!!", true), Err(CodeError::Base64(_))));
        let zip = zip_of(&[("index.js", "")]);
        let wrapped: String =
            b64(&zip).as_bytes().chunks(10).map(|c| format!("{}\n", String::from_utf8_lossy(c))).collect();
        assert_eq!(decode(Kind::Node, &wrapped, true).unwrap(), Source::Archive(zip));
    }

    #[test]
    fn materialises_text_and_zip() {
        let dir = tempfile::tempdir().unwrap();
        let action = dir.path().join("action");
        let entry =
            materialise(Kind::Python, &Source::Text("def main(a): return a".into()), &action).unwrap();
        assert_eq!(entry, Entry::Python(action.join("__main__.py")));

        let zip =
            zip_of(&[("package.json", r#"{"main": "lib/m.js"}"#), ("lib/m.js", "exports.main = x => x")]);
        let entry = materialise(Kind::Node, &Source::Archive(zip), &action).unwrap();
        assert_eq!(entry, Entry::NodeModule(action.join("lib/m.js")));
        assert!(action.join("lib/m.js").exists());
        // The directory was emptied first.
        assert!(!action.join("__main__.py").exists());

        let zip = zip_of(&[("exec", "#!/bin/sh\necho '{}'\n")]);
        let entry = materialise(Kind::Native, &Source::Archive(zip), &action).unwrap();
        let Entry::Native(path) = entry else { panic!("not native") };
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o111, 0o111);
    }

    #[test]
    fn zip_without_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_of(&[("helper.py", "")]);
        let err = materialise(Kind::Python, &Source::Archive(zip), &dir.path().join("a")).unwrap_err();
        assert_eq!(err.to_string(), "The zip archive has no __main__.py.");
    }
}
