//! OpenWhisk's naming rules: entity names and runtime kinds.
//!
//! Pure checks, shared by the HTTP handlers and the admin commands, so that a name the API refuses can
//! never be created from the command line either.

/// OpenWhisk's cap on an entity name, in characters.
pub const MAX_NAME_LENGTH: usize = 256;

/// The runtime kinds this platform can run. `*:default` are aliases chosen by the runtime.
pub const KINDS: &[&str] = &[
    "nodejs:18",
    "nodejs:20",
    "nodejs:22",
    "nodejs:default",
    "python:3",
    "python:3.10",
    "python:3.11",
    "python:3.12",
    "python:default",
    "blackbox",
    "native",
];

/// Why a name was refused; the text is OpenWhisk's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("The name of the entity contains illegal characters.")]
    Illegal,
    #[error("The name of the entity is longer than allowed: {0} > {MAX_NAME_LENGTH}.")]
    TooLong(usize),
}

/// Checks OpenWhisk's entity-name rule, `\A([\w]|[\w][\w@ .-]*[\w@.-]+)\z` (Java's ASCII `\w`), and
/// its length cap.
pub fn validate_entity_name(name: &str) -> Result<(), NameError> {
    let length = name.chars().count();
    if length > MAX_NAME_LENGTH {
        return Err(NameError::TooLong(length));
    }
    let bytes = name.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(NameError::Illegal);
    };
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let inner = |b: u8| word(b) || matches!(b, b'@' | b' ' | b'.' | b'-');
    // Non-ASCII bytes fail every class, so checking bytes is the same as checking characters.
    let valid = word(first)
        && (bytes.len() == 1 || (inner(last) && last != b' ' && bytes[1..].iter().all(|&b| inner(b))));
    if valid { Ok(()) } else { Err(NameError::Illegal) }
}

/// The message OpenWhisk gives for a kind it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kind '{0}' not in Set({list})", list = KINDS.join(", "))]
pub struct UnknownKind(pub String);

/// Accepts only the kinds listed in [`KINDS`].
pub fn validate_kind(kind: &str) -> Result<(), UnknownKind> {
    if KINDS.contains(&kind) { Ok(()) } else { Err(UnknownKind(kind.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_openwhisk_names() {
        for name in ["a", "_", "hello", "hello-world", "my action", "a.b@c-d", "x.", "x@", "0"] {
            assert_eq!(validate_entity_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn refuses_names_outside_the_rule() {
        for name in ["", " a", "a ", "-a", ".a", "@a", "a/b", "a$b", "hé", "a\nb", "a%2Fb"] {
            assert_eq!(validate_entity_name(name), Err(NameError::Illegal), "{name:?}");
        }
    }

    #[test]
    fn caps_the_length() {
        assert_eq!(validate_entity_name(&"a".repeat(256)), Ok(()));
        assert_eq!(validate_entity_name(&"a".repeat(257)), Err(NameError::TooLong(257)));
    }

    #[test]
    fn kinds_are_a_closed_set_with_openwhisks_message() {
        assert!(validate_kind("nodejs:20").is_ok());
        assert!(validate_kind("python:3").is_ok());
        let error = validate_kind("cobol:1").unwrap_err().to_string();
        assert!(error.starts_with("kind 'cobol:1' not in Set(nodejs:18, "), "{error}");
    }
}
