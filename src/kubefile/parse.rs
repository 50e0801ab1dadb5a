//! Text → [`Kubefile`]: logical lines (comments, directives, continuations), one parser per
//! instruction, then the file-level rules. Errors always carry `FILE:LINE`.

use super::{AppSource, Command, Instruction, InstructionKind, Kubefile, KubefileError};

/// Dockerfile instructions a Kubefile does not have, and why.
const DOCKER_ONLY: &[(&str, &str)] = &[
    (
        "WORKDIR",
        "RUN always works in the root of the image being built; write paths relative to it",
    ),
    (
        "USER",
        "RUN runs as the user running the build and layer ownership is normalised; use COPY --chown",
    ),
    ("EXPOSE", "a cluster image is not a container and exposes no ports"),
    ("VOLUME", "a cluster image is not a container and has no volumes"),
    (
        "ENTRYPOINT",
        "use CMD or CMDS for commands that run at install time, or APP + LAUNCH",
    ),
    ("ONBUILD", "there are no deferred build triggers"),
    (
        "STOPSIGNAL",
        "a cluster image is not a container and is never stopped",
    ),
    (
        "HEALTHCHECK",
        "a cluster image is not a container; check health in a CMD or a hook",
    ),
    (
        "SHELL",
        "RUN and CMD always use /bin/sh -c; call another shell explicitly (RUN bash -c '...')",
    ),
];

/// Parse a Kubefile. `file_name` is only used in error messages (`Kubefile:12: ...`).
///
/// Checks syntax, arguments and the file-level rules; app names used by APPCMDS, APPENV and LAUNCH
/// are checked here when the base is `scratch`, otherwise by the builder through
/// [`Kubefile::check_apps`] once it knows the base image's apps.
pub fn parse(text: &str, file_name: &str) -> Result<Kubefile, KubefileError> {
    let ctx = Ctx { file: file_name };
    let mut instructions = Vec::new();
    for logical in ctx.logical_lines(text)? {
        for kind in ctx.instruction(logical.line, &logical.text)? {
            instructions.push(Instruction {
                line: logical.line,
                kind,
                text: logical.shown.clone(),
            });
        }
    }
    let kubefile = Kubefile {
        file: file_name.to_string(),
        instructions,
    };
    ctx.check_rules(&kubefile)?;
    let scratch = kubefile.instructions.iter().any(|i| i.kind.is_scratch());
    if scratch {
        kubefile.check_apps(&|_| false)?;
    }
    Ok(kubefile)
}

/// One instruction's physical lines joined. `text` is what the instruction parsers read: the
/// pieces concatenated exactly, as Docker joins them. `shown` is the same pieces trimmed and
/// separated by one space, for progress lines and image history ([`Instruction::text`]).
struct LogicalLine {
    line: usize,
    text: String,
    shown: String,
}

struct Ctx<'a> {
    file: &'a str,
}

type Res<T> = Result<T, KubefileError>;

impl Ctx<'_> {
    fn syntax(&self, line: usize, message: impl Into<String>) -> KubefileError {
        KubefileError::Syntax {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    fn unsupported(&self, line: usize, message: impl Into<String>) -> KubefileError {
        KubefileError::Unsupported {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    fn order(&self, line: usize, message: impl Into<String>) -> KubefileError {
        KubefileError::Order {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    /// Join physical lines into instructions: skip parser directives, comments and blank lines,
    /// follow `\` continuations (comment and blank lines inside a continuation are skipped, as
    /// Docker does).
    fn logical_lines(&self, text: &str) -> Res<Vec<LogicalLine>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let physical: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut out = Vec::new();
        let mut directives_open = true;
        let mut i = 0;
        while i < physical.len() {
            let number = i + 1;
            let first = physical[i].trim_start();
            i += 1;
            if directives_open {
                if let Some((key, value)) = parser_directive(first) {
                    if key == "escape" && value != "\\" {
                        return Err(self.unsupported(
                            number,
                            format!(
                                "the parser directive `# escape={value}` is not supported; \
                                 Kubefiles always use `\\` as the escape character"
                            ),
                        ));
                    }
                    continue;
                }
                directives_open = false;
            }
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            let (part, mut continued) = strip_continuation(first);
            let mut pieces = vec![part];
            while continued && i < physical.len() {
                let next = physical[i];
                i += 1;
                let trimmed = next.trim_start();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                let (part, more) = strip_continuation(next);
                pieces.push(part);
                continued = more;
            }
            let shown: Vec<&str> = pieces.iter().map(|p| p.trim()).collect();
            out.push(LogicalLine {
                line: number,
                text: pieces.concat().trim().to_string(),
                shown: shown.join(" ").trim().to_string(),
            });
        }
        Ok(out)
    }

    fn instruction(&self, line: usize, text: &str) -> Res<Vec<InstructionKind>> {
        let (name, rest) = match text.find(char::is_whitespace) {
            Some(p) => (&text[..p], text[p..].trim()),
            None => (text, ""),
        };
        let keyword = name.to_ascii_uppercase();
        let kind = match keyword.as_str() {
            "FROM" => self.from(line, rest)?,
            "COPY" | "ADD" => self.copy(line, &keyword, rest)?,
            "RUN" => self.run(line, rest)?,
            "ENV" => InstructionKind::Env(self.name_values(line, "ENV", rest, true)?),
            "LABEL" => InstructionKind::Label(self.name_values(line, "LABEL", rest, true)?),
            "ARG" => return self.arg(line, rest),
            "MAINTAINER" => {
                if rest.is_empty() {
                    return Err(self.syntax(line, "MAINTAINER needs a name"));
                }
                InstructionKind::Maintainer(rest.to_string())
            }
            "CMD" => InstructionKind::Cmd(self.cmd(line, rest)?),
            "CMDS" => InstructionKind::Cmds(self.cmds(line, rest)?),
            "APP" | "CNI" | "CSI" => {
                let (name, sources) = self.app(line, &keyword, rest)?;
                match keyword.as_str() {
                    "APP" => InstructionKind::App { name, sources },
                    "CNI" => InstructionKind::Cni { name, sources },
                    _ => InstructionKind::Csi { name, sources },
                }
            }
            "APPCMDS" => self.app_cmds(line, rest)?,
            "APPENV" => self.app_env(line, rest)?,
            "LAUNCH" => InstructionKind::Launch(self.launch(line, rest)?),
            "KUBEVERSION" => {
                if rest.is_empty() {
                    return Err(self.syntax(
                        line,
                        "KUBEVERSION needs a version range, e.g. `KUBEVERSION >=1.20 <1.26`",
                    ));
                }
                self.no_trailing_comment(line, "KUBEVERSION", &split_words_lossy(rest))?;
                InstructionKind::KubeVersion(rest.to_string())
            }
            other => {
                if let Some((_, why)) = DOCKER_ONLY.iter().find(|(k, _)| *k == other) {
                    return Err(self.unsupported(
                        line,
                        format!("{other} is a Dockerfile instruction that Kubefiles do not support: {why}"),
                    ));
                }
                return Err(KubefileError::UnknownInstruction {
                    file: self.file.to_string(),
                    line,
                    name: name.to_string(),
                });
            }
        };
        Ok(vec![kind])
    }

    fn from(&self, line: usize, rest: &str) -> Res<InstructionKind> {
        let (flags, args) = split_flags(rest);
        let mut platform = None;
        for flag in flags {
            match flag_parts(flag) {
                ("platform", Some(value)) if !value.is_empty() => {
                    platform = Some(value.to_string())
                }
                ("platform", _) => {
                    return Err(self.syntax(
                        line,
                        "FROM --platform needs a value, e.g. --platform=linux/amd64",
                    ))
                }
                _ => {
                    return Err(self.unsupported(
                        line,
                        format!("FROM {flag} is not supported (FROM accepts only --platform=...)"),
                    ))
                }
            }
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        self.no_trailing_comment(line, "FROM", &words)?;
        match words.as_slice() {
            [] => Err(self.syntax(
                line,
                "FROM needs an image: `FROM scratch` or `FROM <image>`",
            )),
            [image] => Ok(InstructionKind::From {
                image: image.to_string(),
                platform,
            }),
            [_, as_kw, stage] if as_kw.eq_ignore_ascii_case("as") => Err(self.unsupported(
                line,
                format!(
                    "FROM ... AS {stage}: build stages are not supported; a Kubefile has one FROM"
                ),
            )),
            _ => Err(self.syntax(
                line,
                format!(
                    "FROM takes one image, got {} arguments: `{}`",
                    words.len(),
                    args
                ),
            )),
        }
    }

    fn copy(&self, line: usize, keyword: &str, rest: &str) -> Res<InstructionKind> {
        let (flags, args) = split_flags(rest);
        let (mut chown, mut chmod) = (None, None);
        for flag in flags {
            match flag_parts(flag) {
                ("chown", Some(v)) if !v.is_empty() => chown = Some(v.to_string()),
                ("chmod", Some(v)) if !v.is_empty() => chmod = Some(v.to_string()),
                ("chown" | "chmod", _) => {
                    return Err(self.syntax(
                        line,
                        format!("{keyword} {flag} needs a value, e.g. --chown=0:0 or --chmod=0644"),
                    ))
                }
                ("from", _) => {
                    return Err(self.unsupported(
                        line,
                        format!(
                            "{keyword} {flag}: copying from another stage or image is not \
                             supported; Kubefiles have one stage"
                        ),
                    ))
                }
                _ => {
                    return Err(self.unsupported(
                        line,
                        format!(
                        "{keyword} {flag} is not supported ({keyword} accepts --chown and --chmod)"
                    ),
                    ))
                }
            }
        }
        let json = match args.strip_prefix('[') {
            Some(after) => args.ends_with(']') || after.trim_start().starts_with('"'),
            None => false,
        };
        let words = if json {
            self.json_array(line, keyword, args)?
        } else {
            let words = self.words(line, keyword, args)?;
            self.no_trailing_comment(line, keyword, &words)?;
            if let Some(w) = words.iter().find(|w| is_heredoc(w)) {
                return Err(self.heredoc(line, keyword, w));
            }
            words
        };
        if words.len() < 2 {
            return Err(self.syntax(
                line,
                format!("{keyword} needs at least a source and a destination"),
            ));
        }
        if words.iter().any(String::is_empty) {
            return Err(self.syntax(line, format!("{keyword} has an empty path")));
        }
        let mut sources = words;
        let dest = sources.pop().unwrap_or_default();
        Ok(if keyword == "ADD" {
            InstructionKind::Add {
                sources,
                dest,
                chown,
                chmod,
            }
        } else {
            InstructionKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            }
        })
    }

    fn run(&self, line: usize, rest: &str) -> Res<InstructionKind> {
        let (flags, args) = split_flags(rest);
        if let Some(flag) = flags.first() {
            return Err(self.unsupported(
                line,
                format!(
                    "RUN {flag} is not supported: RUN executes directly on the build host, \
                     without mounts, network or security options"
                ),
            ));
        }
        if args.is_empty() {
            return Err(self.syntax(line, "RUN needs a command"));
        }
        let command = if json_form(args) {
            let argv = self.json_array(line, "RUN", args)?;
            if argv.is_empty() || argv[0].is_empty() {
                return Err(self.syntax(line, "RUN [] needs at least a program to run"));
            }
            Command::Exec(argv)
        } else {
            if let Some(w) = args.split_whitespace().find(|w| is_heredoc(w)) {
                return Err(self.heredoc(line, "RUN", w));
            }
            Command::Shell(args.to_string())
        };
        Ok(InstructionKind::Run { command })
    }

    fn cmd(&self, line: usize, rest: &str) -> Res<Vec<String>> {
        if rest.is_empty() {
            return Err(self.syntax(line, "CMD needs a command"));
        }
        if !json_form(rest) {
            return Ok(vec![rest.to_string()]);
        }
        let cmds = self.json_array(line, "CMD", rest)?;
        self.command_lines(line, "CMD", cmds)
    }

    fn cmds(&self, line: usize, rest: &str) -> Res<Vec<String>> {
        if !rest.starts_with('[') {
            return Err(self.syntax(
                line,
                "CMDS takes a JSON array of command lines, e.g. \
                 CMDS [\"kubectl apply -f manifests/app.yaml\"]",
            ));
        }
        let cmds = self.json_array(line, "CMDS", rest)?;
        self.command_lines(line, "CMDS", cmds)
    }

    fn command_lines(&self, line: usize, keyword: &str, cmds: Vec<String>) -> Res<Vec<String>> {
        if cmds.is_empty() {
            return Err(self.syntax(line, format!("{keyword} needs at least one command")));
        }
        if cmds.iter().any(|c| c.trim().is_empty()) {
            return Err(self.syntax(line, format!("{keyword} has an empty command")));
        }
        Ok(cmds)
    }

    /// ENV, LABEL (legacy `K V` form allowed) and APPENV pairs (`K=V` only).
    fn name_values(
        &self,
        line: usize,
        keyword: &str,
        rest: &str,
        legacy_ok: bool,
    ) -> Res<Vec<(String, String)>> {
        let words = self.words(line, keyword, rest)?;
        if words.is_empty() {
            return Err(self.syntax(line, format!("{keyword} needs at least one KEY=VALUE")));
        }
        self.no_trailing_comment(line, keyword, &words)?;
        if legacy_ok && !words[0].contains('=') {
            // Legacy form: the first word is the key, the rest of the line is the value.
            let (key, value) = match rest.find(char::is_whitespace) {
                Some(p) => (&rest[..p], rest[p..].trim()),
                None => (rest, ""),
            };
            if value.is_empty() {
                return Err(self.syntax(
                    line,
                    format!(
                        "{keyword} {key} needs a value: write `{keyword} {key}=VALUE` \
                         (or `{keyword} {key} VALUE`)"
                    ),
                ));
            }
            return Ok(vec![(key.to_string(), value.to_string())]);
        }
        words
            .into_iter()
            .map(|word| match word.split_once('=') {
                Some(("", _)) => Err(self.syntax(
                    line,
                    format!("{keyword}: `{word}` has an empty name before `=`"),
                )),
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(self.syntax(
                    line,
                    format!(
                        "{keyword}: `{word}` is not KEY=VALUE (quote values that contain \
                         spaces: KEY=\"a b\")"
                    ),
                )),
            })
            .collect()
    }

    fn arg(&self, line: usize, rest: &str) -> Res<Vec<InstructionKind>> {
        let words = self.words(line, "ARG", rest)?;
        if words.is_empty() {
            return Err(self.syntax(line, "ARG needs a name: `ARG NAME` or `ARG NAME=DEFAULT`"));
        }
        self.no_trailing_comment(line, "ARG", &words)?;
        words
            .into_iter()
            .map(|word| {
                let (name, default) = match word.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (word.clone(), None),
                };
                if !is_variable_name(&name) {
                    return Err(self.syntax(
                        line,
                        format!(
                            "ARG name `{name}` must be letters, digits and `_`, not starting \
                             with a digit"
                        ),
                    ));
                }
                Ok(InstructionKind::Arg { name, default })
            })
            .collect()
    }

    fn app(&self, line: usize, keyword: &str, rest: &str) -> Res<(String, Vec<AppSource>)> {
        let words = if rest.starts_with('[') {
            self.json_array(line, keyword, rest)?
        } else {
            let words = self.words(line, keyword, rest)?;
            self.no_trailing_comment(line, keyword, &words)?;
            words
        };
        let usage = format!("{keyword} NAME local://PATH|http://URL|https://URL ...");
        let Some((name, sources)) = words.split_first() else {
            return Err(self.syntax(
                line,
                format!("{keyword} needs an app name and sources: {usage}"),
            ));
        };
        self.app_name(line, keyword, name)?;
        if sources.is_empty() {
            return Err(self.syntax(
                line,
                format!("{keyword} {name} needs at least one source: {usage}"),
            ));
        }
        let sources = sources
            .iter()
            .map(|s| {
                if let Some(path) = s.strip_prefix("local://") {
                    if path.is_empty() {
                        return Err(self.syntax(
                            line,
                            format!(
                                "{keyword} {name}: `local://` needs a path in the build context"
                            ),
                        ));
                    }
                    Ok(AppSource::Local(path.to_string()))
                } else if let Some(host) = s
                    .strip_prefix("http://")
                    .or_else(|| s.strip_prefix("https://"))
                {
                    if host.is_empty() {
                        return Err(
                            self.syntax(line, format!("{keyword} {name}: `{s}` has no host"))
                        );
                    }
                    Ok(AppSource::Remote(s.to_string()))
                } else {
                    Err(self.syntax(
                        line,
                        format!(
                            "{keyword} {name}: source `{s}` must start with local://, http:// or \
                             https:// (e.g. local://{s})"
                        ),
                    ))
                }
            })
            .collect::<Res<Vec<_>>>()?;
        Ok((name.clone(), sources))
    }

    fn app_cmds(&self, line: usize, rest: &str) -> Res<InstructionKind> {
        let usage = "APPCMDS NAME [\"command line\", ...]";
        let (name, cmds) = match rest.find(char::is_whitespace) {
            Some(p) => (&rest[..p], rest[p..].trim()),
            None => (rest, ""),
        };
        if name.is_empty() {
            return Err(self.syntax(
                line,
                format!("APPCMDS needs an app name and commands: {usage}"),
            ));
        }
        self.app_name(line, "APPCMDS", name)?;
        if !cmds.starts_with('[') {
            return Err(self.syntax(
                line,
                format!("APPCMDS {name} needs a JSON array of command lines: {usage}"),
            ));
        }
        let cmds = self.json_array(line, "APPCMDS", cmds)?;
        let cmds = self.command_lines(line, "APPCMDS", cmds)?;
        Ok(InstructionKind::AppCmds {
            name: name.to_string(),
            cmds,
        })
    }

    fn app_env(&self, line: usize, rest: &str) -> Res<InstructionKind> {
        let (name, pairs) = match rest.find(char::is_whitespace) {
            Some(p) => (&rest[..p], rest[p..].trim()),
            None => (rest, ""),
        };
        if name.is_empty() || pairs.is_empty() {
            return Err(self.syntax(
                line,
                "APPENV needs an app name and KEY=VALUE pairs: APPENV NAME K=V ...",
            ));
        }
        self.app_name(line, "APPENV", name)?;
        let env = self.name_values(line, "APPENV", pairs, false)?;
        Ok(InstructionKind::AppEnv {
            name: name.to_string(),
            env,
        })
    }

    fn launch(&self, line: usize, rest: &str) -> Res<Vec<String>> {
        let apps = if rest.starts_with('[') {
            self.json_array(line, "LAUNCH", rest)?
        } else {
            let words = self.words(line, "LAUNCH", rest)?;
            self.no_trailing_comment(line, "LAUNCH", &words)?;
            words
        };
        if apps.is_empty() {
            return Err(self.syntax(
                line,
                "LAUNCH needs at least one app: LAUNCH [\"app1\", \"app2\"]",
            ));
        }
        for (i, app) in apps.iter().enumerate() {
            self.app_name(line, "LAUNCH", app)?;
            if apps[..i].contains(app) {
                return Err(self.syntax(line, format!("LAUNCH names app `{app}` twice")));
            }
        }
        Ok(apps)
    }

    fn app_name(&self, line: usize, keyword: &str, name: &str) -> Res<()> {
        let valid = !name.is_empty()
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(())
        } else {
            Err(self.syntax(
                line,
                format!(
                    "{keyword}: app name `{name}` must be letters, digits, `.`, `_` and `-` \
                     (it names the directory application/apps/<name>/)"
                ),
            ))
        }
    }

    fn words(&self, line: usize, keyword: &str, rest: &str) -> Res<Vec<String>> {
        split_words(rest).map_err(|quote| {
            self.syntax(
                line,
                format!("{keyword}: unterminated {quote} quote in `{rest}`"),
            )
        })
    }

    fn json_array(&self, line: usize, keyword: &str, text: &str) -> Res<Vec<String>> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            self.syntax(
                line,
                format!(
                    "{keyword}: malformed JSON array `{text}` ({e}); write a JSON array of \
                     double-quoted strings, e.g. [\"a b\", \"c\"]"
                ),
            )
        })?;
        let serde_json::Value::Array(items) = value else {
            return Err(self.syntax(line, format!("{keyword}: `{text}` is not a JSON array")));
        };
        items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => Ok(s),
                other => Err(self.syntax(
                    line,
                    format!("{keyword}: JSON array must hold only strings, found `{other}`"),
                )),
            })
            .collect()
    }

    fn no_trailing_comment<S: AsRef<str>>(
        &self,
        line: usize,
        keyword: &str,
        words: &[S],
    ) -> Res<()> {
        let Some(at) = words.iter().position(|w| w.as_ref().starts_with('#')) else {
            return Ok(());
        };
        let comment: Vec<&str> = words[at..].iter().map(AsRef::as_ref).collect();
        Err(self.unsupported(
            line,
            format!(
                "{keyword}: trailing comments are not supported: `{}` would be read as arguments; \
                 `#` starts a comment only at the beginning of a line, so move it to its own line",
                comment.join(" ")
            ),
        ))
    }

    fn heredoc(&self, line: usize, keyword: &str, word: &str) -> KubefileError {
        self.unsupported(
            line,
            format!(
                "{keyword} with a heredoc (`{word}`) is not supported; put the text in a file of \
                 the build context and COPY it, or use `\\` continuations"
            ),
        )
    }

    /// File-level rules: FROM first and once, LAUNCH and CMDS at most once and last, LAUNCH
    /// exclusive with CMD and CMDS, each app declared once.
    fn check_rules(&self, kubefile: &Kubefile) -> Res<()> {
        let mut from_line = None;
        let (mut launch, mut cmds, mut cmd) = (None, None, None);
        let mut apps: Vec<(&str, usize)> = Vec::new();
        for instruction in &kubefile.instructions {
            let line = instruction.line;
            let keyword = instruction.kind.keyword();
            match &instruction.kind {
                InstructionKind::From { .. } => {
                    if let Some(first) = from_line {
                        return Err(self.unsupported(
                            line,
                            format!(
                                "second FROM (the first is at line {first}): multi-stage builds \
                                 are not supported; a Kubefile has exactly one FROM"
                            ),
                        ));
                    }
                    from_line = Some(line);
                }
                InstructionKind::Arg { .. } => {}
                _ if from_line.is_none() => {
                    return Err(self.order(
                        line,
                        format!(
                            "{keyword} comes before FROM; a Kubefile starts with `FROM scratch` \
                             or `FROM <image>` (only ARG may come before it)"
                        ),
                    ));
                }
                _ => {}
            }
            let slot = match &instruction.kind {
                InstructionKind::Launch(_) => Some(&mut launch),
                InstructionKind::Cmds(_) => Some(&mut cmds),
                InstructionKind::Cmd(_) => {
                    cmd.get_or_insert(line);
                    None
                }
                _ => None,
            };
            if let Some(slot) = slot {
                if let Some(first) = *slot {
                    return Err(self.order(
                        line,
                        format!("second {keyword} (the first is at line {first}); a Kubefile has at most one {keyword}"),
                    ));
                }
                *slot = Some(line);
            }
            if let Some((name, _)) = instruction.kind.declared_app() {
                if let Some((_, first)) = apps.iter().find(|(n, _)| *n == name) {
                    return Err(self.syntax(
                        line,
                        format!("{keyword}: app `{name}` is already declared at line {first}"),
                    ));
                }
                apps.push((name, line));
            }
        }
        let Some(_) = from_line else {
            let line = kubefile.instructions.last().map_or(1, |i| i.line);
            return Err(self.order(
                line,
                "no FROM instruction; a Kubefile starts with `FROM scratch` or `FROM <image>`",
            ));
        };
        if let (Some(l), Some(c)) = (launch, cmds) {
            return Err(self.order(
                l.max(c),
                format!(
                    "LAUNCH (line {l}) and CMDS (line {c}) are mutually exclusive: launch apps or \
                     run commands, not both"
                ),
            ));
        }
        if let (Some(l), Some(c)) = (launch, cmd) {
            return Err(self.order(
                l,
                format!(
                    "LAUNCH and CMD (line {c}) are mutually exclusive: launch apps or run \
                     commands, not both"
                ),
            ));
        }
        let last = kubefile.instructions.last();
        for (keyword, at) in [("LAUNCH", launch), ("CMDS", cmds)] {
            let (Some(at), Some(last)) = (at, last) else {
                continue;
            };
            if last.line != at {
                return Err(self.order(
                    at,
                    format!(
                        "{keyword} must be the last instruction, but {} follows it at line {}",
                        last.kind.keyword(),
                        last.line
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `# key=value` at the top of the file, for the directives Docker knows.
fn parser_directive(line: &str) -> Option<(String, String)> {
    let body = line.strip_prefix('#')?;
    let (key, value) = body.split_once('=')?;
    let key = key.trim().to_ascii_lowercase();
    matches!(key.as_str(), "syntax" | "escape" | "check").then(|| (key, value.trim().to_string()))
}

/// Remove a trailing `\` (and whitespace after it); report whether the line continues.
fn strip_continuation(line: &str) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix('\\') {
        Some(body) => (body, true),
        None => (line, false),
    }
}

/// Leading `--flag[=value]` words; `--` alone ends them.
fn split_flags(rest: &str) -> (Vec<&str>, &str) {
    let mut flags = Vec::new();
    let mut r = rest.trim_start();
    while r.starts_with("--") {
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let flag = &r[..end];
        r = r[end..].trim_start();
        if flag == "--" {
            break;
        }
        flags.push(flag);
    }
    (flags, r)
}

fn flag_parts(flag: &str) -> (&str, Option<&str>) {
    let body = flag.trim_start_matches('-');
    match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    }
}

/// Whether RUN/CMD text is meant as a JSON array. `[ -f x ] && ...` (the shell's test command:
/// `[`, whitespace, not a quote) stays shell form; anything else starting with `[` must be valid
/// JSON, so a typo is reported instead of being run as a shell command.
fn json_form(text: &str) -> bool {
    let Some(after) = text.strip_prefix('[') else {
        return false;
    };
    if !after.starts_with(char::is_whitespace) {
        return true;
    }
    matches!(after.trim_start().chars().next(), Some('"' | ']') | None)
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `2<<EOF`: the heredoc words Docker recognises.
fn is_heredoc(word: &str) -> bool {
    let word = word.trim_start_matches(|c: char| c.is_ascii_digit());
    match word.strip_prefix("<<") {
        Some(rest) => {
            let rest = rest.strip_prefix('-').unwrap_or(rest);
            !rest.is_empty() && !rest.starts_with('<')
        }
        None => false,
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Split on unquoted whitespace, keeping quotes and escapes in the words (Docker's `parseWords`):
/// `a="b c" d` → `a="b c"`, `d`. Err names the unterminated quote.
pub(super) fn split_words(rest: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars();
    while let Some(ch) = chars.next() {
        if let Some(q) = quote {
            word.push(ch);
            if ch == q {
                quote = None;
            } else if ch == '\\' && q == '"' {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            continue;
        }
        if ch.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        word.push(ch);
        match ch {
            '\'' | '"' => quote = Some(ch),
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            _ => {}
        }
    }
    match quote {
        Some('\'') => Err("single"),
        Some(_) => Err("double"),
        None => {
            if in_word {
                words.push(word);
            }
            Ok(words)
        }
    }
}

/// Words for checks only (trailing comments): falls back to whitespace splitting on bad quoting.
fn split_words_lossy(rest: &str) -> Vec<String> {
    split_words(rest).unwrap_or_else(|_| rest.split_whitespace().map(str::to_string).collect())
}
