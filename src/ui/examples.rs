//! The `Examples:` section of a command's help (clap's `after_help`) read back as command lines,
//! so that the tests of `sealer`'s and a package's command lines can parse every example with
//! the real parser: an example that names a flag that does not exist fails a test.
//!
//! It only reads text; it runs nothing.

/// The command lines of `help`'s `Examples:` section that start with `program`, as words
/// without the program: environment assignments before the program, the other commands of a
/// pipeline,
/// `# comments`, `> FILE` redirections and `;`-separated commands of one line are taken apart.
pub fn example_commands(help: &str, program: &str) -> Vec<Vec<String>> {
    let Some((_, section)) = help.split_once("Examples:") else {
        return Vec::new();
    };
    let mut commands = Vec::new();
    for line in section.lines() {
        let line = line.split(" #").next().unwrap_or_default();
        for command in line.split(';').flat_map(|c| c.split('|')) {
            let mut words = command.split_whitespace().peekable();
            while words
                .peek()
                .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
            {
                words.next();
            }
            if words.next() != Some(program) {
                continue;
            }
            let mut args = Vec::new();
            let mut redirected = false;
            for word in words {
                if redirected {
                    redirected = false;
                } else if word == ">" {
                    redirected = true;
                } else if !word.starts_with('>') {
                    args.push(word.to_string());
                }
            }
            commands.push(args);
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_taken_apart_into_the_words_after_the_program() {
        let help = "Examples:\n  sealer man run | man -l -\n  echo \"$T\" | sealer login r -u ci --password-stdin\n  SEALER_SSH_PASSWORD=x sealer run a:1 -m 10.0.0.2   # over SSH\n  ./app.run inspect --manifest > m.json; ./app.run inspect --signature >m.sig\n  other tool\n";
        let words = |line: &[&str]| line.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            example_commands(help, "sealer"),
            vec![
                words(&["man", "run"]),
                words(&["login", "r", "-u", "ci", "--password-stdin"]),
                words(&["run", "a:1", "-m", "10.0.0.2"]),
            ]
        );
        assert_eq!(
            example_commands(help, "./app.run"),
            vec![
                words(&["inspect", "--manifest"]),
                words(&["inspect", "--signature"])
            ]
        );
        assert!(example_commands("no section", "sealer").is_empty());
    }
}
