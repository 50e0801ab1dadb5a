//! The one-sentence error both binaries print: an error and its causes joined with `: `, each
//! cause once (a cause already spelled out by the message above it is not repeated).

use std::error::Error;

/// `what: why: root cause`.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_are_joined_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Err::<(), _>(io)
            .context("reading /x/Kubefile")
            .context("building app:1")
            .unwrap_err();
        assert_eq!(
            one_line(err.as_ref()),
            "building app:1: reading /x/Kubefile: no such file"
        );
        let repeated = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing blob: disk full")
            .unwrap_err();
        assert_eq!(one_line(repeated.as_ref()), "writing blob: disk full");
    }
}
