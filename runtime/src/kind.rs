//! The runtime kinds this proxy can run, parsed from OpenWhisk kind names (`nodejs:20`, `python:3`,
//! `native`, `blackbox`).

use std::fmt;
use std::str::FromStr;

/// How an action's code is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JavaScript, run by `node` in a long-lived action loop.
    Node,
    /// Python 3, run by `python3` in a long-lived action loop.
    Python,
    /// An executable, run once per activation with the parameters as its argument.
    Native,
}

/// A kind name this proxy does not know how to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind '{0}': expected nodejs:*, python:*, native or blackbox")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The family is what matters here: the version after ':' names an OpenWhisk image, while
        // locally the installed interpreter runs every version.
        let family = s.split_once(':').map_or(s, |(family, _)| family);
        match family {
            "nodejs" | "node" => Ok(Kind::Node),
            "python" => Ok(Kind::Python),
            "native" | "blackbox" if !s.contains(':') => Ok(Kind::Native),
            _ => Err(UnknownKind(s.to_string())),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Node => "nodejs",
            Kind::Python => "python",
            Kind::Native => "native",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openwhisk_kinds() {
        for (name, kind) in [
            ("nodejs:20", Kind::Node),
            ("nodejs:default", Kind::Node),
            ("nodejs", Kind::Node),
            ("python:3", Kind::Python),
            ("python:3.11", Kind::Python),
            ("native", Kind::Native),
            ("blackbox", Kind::Native),
        ] {
            assert_eq!(name.parse::<Kind>(), Ok(kind), "{name}");
        }
    }

    #[test]
    fn refuses_unknown_kinds() {
        for name in ["java:8", "", "go:1.22", "native:1", "pythonx:3"] {
            let err = name.parse::<Kind>().unwrap_err();
            assert!(err.to_string().contains("unknown kind"), "{err}");
        }
    }
}
