//! A password or passphrase as one type from the Clusterfile to the SSH library.
//!
//! Owns the redaction: the text is reachable only through [`Secret::expose`]. Shared by the
//! Clusterfile model and the SSH transport; it knows neither.

use std::fmt;
use std::str::FromStr;

/// A password or passphrase. `Debug` and `Display` print `***`; only [`Secret::expose`] gives
/// the text, so it can reach the SSH library but never a log line by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }
    /// The secret text, for handing to authentication only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}
