//! The one quoting routine for anything put into a remote shell command line, and the `export`
//! lines that carry an environment through it.
//!
//! Shared by the deploy engine, the SSH transport and the Clusterfile checks; it runs nothing.

/// A name that cannot be exported by a POSIX shell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid environment variable name (letters, digits and _, not starting with a digit)")]
pub struct InvalidEnvName(pub String);

/// True for names a POSIX shell can `export`: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Quotes `text` as one word for a POSIX shell: wrapped in single quotes, each `'` written as
/// `'\''`. Nothing inside is expanded (`$`, backticks, `\`, newlines stay literal).
pub fn shell_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// `export KEY='value'` for one variable; the key must be a shell name.
pub fn export_line(key: &str, value: &str) -> Result<String, InvalidEnvName> {
    if !is_env_name(key) {
        return Err(InvalidEnvName(key.to_string()));
    }
    Ok(format!("export {key}={}", shell_quote(value)))
}

/// One `export` line per variable, each ending in a newline, ready to prefix a remote script.
pub fn export_script(env: &[(String, String)]) -> Result<String, InvalidEnvName> {
    let mut script = String::new();
    for (key, value) in env {
        script.push_str(&export_line(key, value)?);
        script.push('\n');
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `printf %s <quoted>` in a real shell and returns what it printed.
    fn through_sh(text: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(text)))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn shell_quote_survives_quotes_dollars_backticks_and_newlines() {
        for text in [
            "",
            "plain",
            "it's",
            "''",
            "$HOME and ${PATH} and $(id) and `id`",
            "line1\nline2\n",
            "back\\slash \"double\" ; rm -rf / #",
            "p@ss'w\"$rd\n'",
        ] {
            assert_eq!(through_sh(text), text, "quoting {text:?}");
        }
    }

    #[test]
    fn export_line_quotes_value_and_refuses_bad_names() {
        assert_eq!(export_line("A_1", "x'y").unwrap(), "export A_1='x'\\''y'");
        assert!(export_line("etcd-dir", "x").is_err());
        assert!(export_line("1A", "x").is_err());
        assert!(export_line("", "x").is_err());
        let script = export_script(&[("K".into(), "$(touch /tmp/pwned)".into())]).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{script}printf %s \"$K\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "$(touch /tmp/pwned)"
        );
    }
}
