//! `.tmpl` files: the subset of Go's text/template that sealer's cluster images use, parsed once
//! (at build, so a template this subset cannot render is refused with its line) and rendered at
//! install with a host's env (`etc/app.conf.tmpl` becomes `etc/app.conf`).
//!
//! The subset: text; `{{ .Key }}`; string literals; the functions `default`, `eq`, `ne`, `not`;
//! pipes (`{{ .Key | default "x" }}`); `{{ if PIPE }}`, `{{ else if PIPE }}`, `{{ else }}`,
//! `{{ end }}`; `{{ range .Key }}…{{ . }}…{{ end }}` over the value's space-separated words (a
//! key repeated in an env list is such a list); `{{/* comments */}}`; the trim markers `{{- `
//! and ` -}}`. Anything else (variables, `with`, `define`, other functions, numbers) is an
//! error naming its line. Values are strings; a key with no value is an error when it is
//! printed (`default` gives it one), and false in `if`. This module renders text; it does not
//! read or write files.

use std::collections::BTreeMap;

/// Why a template cannot be parsed or rendered: its line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        line,
        message: message.into(),
    }
}

/// The functions a template may call.
pub const FUNCTIONS: &[&str] = &["default", "eq", "ne", "not"];

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Pipe),
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        over: Pipe,
        body: Vec<Node>,
    },
}

#[derive(Debug, Clone)]
struct Pipe {
    line: usize,
    commands: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Field(String),
    Dot,
    Str(String),
    Func(String),
}

/// One `{{ … }}` or the text between two of them.
#[derive(Debug)]
enum Token {
    Text(String),
    Action { line: usize, body: String },
}

fn tokenize(text: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let after_open = &rest[open + 2..];
        let trim_before = after_open.starts_with("- ")
            || after_open.starts_with("-\t")
            || after_open.starts_with("-\n");
        if trim_before {
            before = before.trim_end();
        }
        line += rest[..open].matches('\n').count();
        let start_line = line;
        let inner_start = if trim_before { 2 } else { 0 };
        let Some(close) = after_open.find("}}") else {
            return Err(err(start_line, "`{{` without a closing `}}`"));
        };
        let mut body = &after_open[inner_start..close];
        if body.starts_with("/*") || body.trim_start().starts_with("/*") {
            // A comment may hold `}}` only after `*/`.
            let Some(end) = after_open.find("*/") else {
                return Err(err(start_line, "comment without `*/`"));
            };
            let Some(close2) = after_open[end..].find("}}") else {
                return Err(err(start_line, "`{{` without a closing `}}`"));
            };
            let close = end + close2;
            body = &after_open[inner_start..close];
            let trim_after = body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-");
            if !before.is_empty() {
                tokens.push(Token::Text(before.to_string()));
            }
            line += after_open[..close].matches('\n').count();
            rest = &after_open[close + 2..];
            trim_next = trim_after;
            continue;
        }
        let trim_after = body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-");
        if trim_after {
            body = &body[..body.len() - 1];
        }
        if !before.is_empty() {
            tokens.push(Token::Text(before.to_string()));
        }
        tokens.push(Token::Action {
            line: start_line,
            body: body.trim().to_string(),
        });
        line += after_open[..close].matches('\n').count();
        rest = &after_open[close + 2..];
        trim_next = trim_after;
    }
    let last = if trim_next { rest.trim_start() } else { rest };
    if !last.is_empty() {
        tokens.push(Token::Text(last.to_string()));
    }
    Ok(tokens)
}

/// Splits an action into words: string literals keep their spaces, `|` is its own word.
fn words(body: &str, line: usize) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push("|".to_string());
        } else if c == '"' || c == '`' {
            let quote = c;
            let mut word = String::from(c);
            chars.next();
            let mut closed = false;
            while let Some(d) = chars.next() {
                word.push(d);
                if d == '\\' && quote == '"' {
                    if let Some(e) = chars.next() {
                        word.push(e);
                    }
                } else if d == quote {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(err(line, format!("unterminated string {word}")));
            }
            out.push(word);
        } else if c == '(' || c == ')' {
            return Err(err(
                line,
                "parentheses are not in the template subset; use a pipe (`.A | default \"x\"`)",
            ));
        } else {
            let mut word = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || d == '|' || d == '"' {
                    break;
                }
                word.push(d);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn unquote(word: &str, line: usize) -> Result<String, TemplateError> {
    if let Some(raw) = word.strip_prefix('`') {
        return Ok(raw.trim_end_matches('`').to_string());
    }
    let inner = &word[1..word.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            other => {
                return Err(err(
                    line,
                    format!(
                        "escape \\{} is not in the template subset (\\n, \\t, \\\", \\\\)",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn operand(word: &str, line: usize) -> Result<Operand, TemplateError> {
    if word == "." {
        return Ok(Operand::Dot);
    }
    if word.starts_with('"') || word.starts_with('`') {
        return Ok(Operand::Str(unquote(word, line)?));
    }
    if let Some(key) = word.strip_prefix('.') {
        if !key.is_empty()
            && !key.contains('.')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Ok(Operand::Field(key.to_string()));
        }
        return Err(err(
            line,
            format!("`{word}`: only one level of keys (`.Key`) is in the template subset"),
        ));
    }
    if word.starts_with('$') {
        return Err(err(
            line,
            format!("variable `{word}` is not in the template subset; use `.Key`"),
        ));
    }
    if FUNCTIONS.contains(&word) {
        return Ok(Operand::Func(word.to_string()));
    }
    if word == "true" || word == "false" || word.parse::<f64>().is_ok() {
        return Err(err(
            line,
            format!(
                "literal `{word}` is not in the template subset; write it as a string (\"{word}\")"
            ),
        ));
    }
    Err(err(
        line,
        format!(
            "unknown function `{word}`; the template subset has {} (see docs/kubefile.md, Templates)",
            FUNCTIONS.join(", ")
        ),
    ))
}

fn pipe(words: &[String], line: usize) -> Result<Pipe, TemplateError> {
    let mut commands = Vec::new();
    for command in words.split(|w| w == "|") {
        if command.is_empty() {
            return Err(err(line, "empty command in a pipe"));
        }
        let ops = command
            .iter()
            .map(|w| operand(w, line))
            .collect::<Result<Vec<_>, _>>()?;
        if ops.len() > 1 && !matches!(ops[0], Operand::Func(_)) {
            return Err(err(
                line,
                format!("`{}` is not a function and takes no arguments", command[0]),
            ));
        }
        commands.push(ops);
    }
    if commands.is_empty() {
        return Err(err(line, "empty action `{{ }}`"));
    }
    Ok(Pipe { line, commands })
}

/// Where a block being parsed ends.
enum BlockEnd {
    Eof,
    Close,
    Else(Option<Pipe>),
}

impl Template {
    /// Parses `text`; the error names the line of the first thing outside the subset.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let tokens = tokenize(text)?;
        let mut at = 0;
        let (nodes, end, line) = parse_block(&tokens, &mut at)?;
        match end {
            BlockEnd::Eof => Ok(Template { nodes }),
            BlockEnd::Close => Err(err(line, "`{{ end }}` without `if` or `range`")),
            BlockEnd::Else(_) => Err(err(line, "`{{ else }}` without `if`")),
        }
    }

    /// The template with `vars`; a printed key without a value is an error naming it.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::new();
        render_nodes(&self.nodes, vars, None, &mut out)?;
        Ok(out)
    }

    /// The keys the template reads (`.Key` anywhere: printed, in a condition, ranged over),
    /// whatever branch a render would take: what its output can depend on.
    pub fn fields(&self) -> std::collections::BTreeSet<String> {
        fn walk(nodes: &[Node], out: &mut std::collections::BTreeSet<String>) {
            let pipe = |p: &Pipe, out: &mut std::collections::BTreeSet<String>| {
                for op in p.commands.iter().flatten() {
                    if let Operand::Field(k) = op {
                        out.insert(k.clone());
                    }
                }
            };
            for node in nodes {
                match node {
                    Node::Text(_) => {}
                    Node::Print(p) => pipe(p, out),
                    Node::If {
                        branches,
                        otherwise,
                    } => {
                        for (cond, body) in branches {
                            pipe(cond, out);
                            walk(body, out);
                        }
                        walk(otherwise, out);
                    }
                    Node::Range { over, body } => {
                        pipe(over, out);
                        walk(body, out);
                    }
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(&self.nodes, &mut out);
        out
    }
}

fn parse_block(
    tokens: &[Token],
    at: &mut usize,
) -> Result<(Vec<Node>, BlockEnd, usize), TemplateError> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.get(*at) {
        *at += 1;
        let (line, body) = match token {
            Token::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Token::Action { line, body } => (*line, body),
        };
        let w = words(body, line)?;
        match w.first().map(String::as_str) {
            None => return Err(err(line, "empty action `{{ }}`")),
            Some("end") if w.len() == 1 => return Ok((nodes, BlockEnd::Close, line)),
            Some("else") if w.len() == 1 => return Ok((nodes, BlockEnd::Else(None), line)),
            Some("else") if w.get(1).map(String::as_str) == Some("if") => {
                return Ok((nodes, BlockEnd::Else(Some(pipe(&w[2..], line)?)), line))
            }
            Some("if") => {
                let mut branches = vec![(pipe(&w[1..], line)?, Vec::new())];
                let otherwise;
                loop {
                    let (body, end, end_line) = parse_block(tokens, at)?;
                    if let Some(last) = branches.last_mut() {
                        last.1 = body;
                    }
                    match end {
                        BlockEnd::Close => {
                            otherwise = Vec::new();
                            break;
                        }
                        BlockEnd::Else(Some(cond)) => branches.push((cond, Vec::new())),
                        BlockEnd::Else(None) => {
                            let (body, end, end_line) = parse_block(tokens, at)?;
                            if !matches!(end, BlockEnd::Close) {
                                return Err(err(end_line, "`{{ if }}` ... `{{ else }}` needs `{{ end }}`"));
                            }
                            otherwise = body;
                            break;
                        }
                        BlockEnd::Eof => {
                            return Err(err(
                                line.max(end_line),
                                "`{{ if }}` without `{{ end }}`",
                            ))
                        }
                    }
                }
                nodes.push(Node::If {
                    branches,
                    otherwise,
                });
            }
            Some("range") => {
                let over = pipe(&w[1..], line)?;
                let (body, end, _) = parse_block(tokens, at)?;
                match end {
                    BlockEnd::Close => nodes.push(Node::Range { over, body }),
                    BlockEnd::Else(_) => {
                        return Err(err(line, "`{{ range }}` ... `{{ else }}` is not in the template subset"))
                    }
                    BlockEnd::Eof => return Err(err(line, "`{{ range }}` without `{{ end }}`")),
                }
            }
            Some(
                keyword @ ("with" | "define" | "template" | "block" | "break" | "continue"
                | "end" | "else"),
            ) => {
                return Err(err(
                    line,
                    format!("`{keyword}` is not in the template subset (if, else, range, end, .Key, default, eq, ne, not)"),
                ))
            }
            Some(_) => nodes.push(Node::Print(pipe(&w, line)?)),
        }
    }
    Ok((nodes, BlockEnd::Eof, 0))
}

/// A value while rendering: `None` is a key with no value.
type Value = Option<String>;

fn truthy(v: &Value) -> bool {
    matches!(v, Some(s) if !s.is_empty() && s != "false")
}

fn bool_value(b: bool) -> Value {
    Some(if b { "true" } else { "false" }.to_string())
}

fn eval(
    pipe: &Pipe,
    vars: &BTreeMap<String, String>,
    dot: Option<&str>,
) -> Result<(Value, Option<String>), TemplateError> {
    // The value so far and, when it came from a key with no value, that key's name.
    let mut value: Value = None;
    let mut missing: Option<String> = None;
    for (i, command) in pipe.commands.iter().enumerate() {
        let arg = |op: &Operand| -> Result<(Value, Option<String>), TemplateError> {
            Ok(match op {
                Operand::Field(k) => match (dot, vars.get(k)) {
                    (Some(_), _) => {
                        return Err(err(
                            pipe.line,
                            format!("`.{k}` inside `range`: only `.` (the word) is in the template subset there"),
                        ))
                    }
                    (None, Some(v)) => (Some(v.clone()), None),
                    (None, None) => (None, Some(k.clone())),
                },
                Operand::Dot => match dot {
                    Some(d) => (Some(d.to_string()), None),
                    None => {
                        return Err(err(
                            pipe.line,
                            "`.` alone is only in the template subset inside `range`; use `.Key`",
                        ))
                    }
                },
                Operand::Str(s) => (Some(s.clone()), None),
                Operand::Func(f) => {
                    return Err(err(pipe.line, format!("function `{f}` used as a value")))
                }
            })
        };
        let (first, rest) = command
            .split_first()
            .ok_or_else(|| err(pipe.line, "empty command"))?;
        let Operand::Func(name) = first else {
            if i > 0 {
                return Err(err(pipe.line, "only a function can follow `|`"));
            }
            (value, missing) = arg(first)?;
            continue;
        };
        let mut args = rest.iter().map(arg).collect::<Result<Vec<_>, _>>()?;
        if i > 0 {
            args.push((value.clone(), missing.clone()));
        }
        let want = match name.as_str() {
            "default" | "eq" | "ne" => 2,
            _ => 1,
        };
        if args.len() != want {
            return Err(err(
                pipe.line,
                format!("`{name}` takes {want} argument(s), got {}", args.len()),
            ));
        }
        (value, missing) = match name.as_str() {
            "default" => {
                if truthy(&args[1].0) {
                    args.swap_remove(1)
                } else {
                    args.swap_remove(0)
                }
            }
            "eq" => (bool_value(args[0].0 == args[1].0), None),
            "ne" => (bool_value(args[0].0 != args[1].0), None),
            _ => (bool_value(!truthy(&args[0].0)), None),
        };
    }
    Ok((value, missing))
}

fn render_nodes(
    nodes: &[Node],
    vars: &BTreeMap<String, String>,
    dot: Option<&str>,
    out: &mut String,
) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(p) => match eval(p, vars, dot)? {
                (Some(v), _) => out.push_str(&v),
                (None, key) => {
                    return Err(err(
                        p.line,
                        format!(
                            "`{}` has no value; set it (Clusterfile spec.env, -e {0}=…, --env-file) or give a default (`{{{{ .{0} | default \"…\" }}}}`)",
                            key.unwrap_or_default()
                        ),
                    ))
                }
            },
            Node::If {
                branches,
                otherwise,
            } => {
                let mut taken = false;
                for (cond, body) in branches {
                    if truthy(&eval(cond, vars, dot)?.0) {
                        render_nodes(body, vars, dot, out)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    render_nodes(otherwise, vars, dot, out)?;
                }
            }
            Node::Range { over, body } => {
                let (value, _) = eval(over, vars, dot)?;
                for word in value.unwrap_or_default().split_whitespace() {
                    render_nodes(body, vars, Some(word), out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn render(text: &str, pairs: &[(&str, &str)]) -> Result<String, TemplateError> {
        Template::parse(text)?.render(&vars(pairs))
    }

    #[test]
    fn keys_defaults_and_pipes_render_as_go_does() {
        assert_eq!(
            render("port: {{ .Port }}\n", &[("Port", "80")]).unwrap(),
            "port: 80\n"
        );
        assert_eq!(render("{{.Port}}", &[("Port", "80")]).unwrap(), "80");
        assert_eq!(
            render("{{ .Port | default \"8080\" }}", &[]).unwrap(),
            "8080"
        );
        assert_eq!(
            render("{{ default \"8080\" .Port }}", &[("Port", "")]).unwrap(),
            "8080"
        );
        assert_eq!(
            render("{{ default \"8080\" .Port }}", &[("Port", "1")]).unwrap(),
            "1"
        );
        assert_eq!(render("{{/* note */}}x", &[]).unwrap(), "x");
        assert_eq!(render("{{ `raw \"q\"` }}", &[]).unwrap(), "raw \"q\"");
    }

    #[test]
    fn if_else_and_trim_markers_follow_go() {
        let t = "a:\n  {{- if .Tls }}\n  tls: on\n  {{- else }}\n  tls: off\n  {{- end }}\nb\n";
        assert_eq!(render(t, &[("Tls", "yes")]).unwrap(), "a:\n  tls: on\nb\n");
        assert_eq!(render(t, &[]).unwrap(), "a:\n  tls: off\nb\n");
        let t = "{{ if eq .Mode \"ha\" }}3{{ else if ne .Mode \"\" }}1{{ else }}0{{ end }}";
        assert_eq!(render(t, &[("Mode", "ha")]).unwrap(), "3");
        assert_eq!(render(t, &[("Mode", "one")]).unwrap(), "1");
        assert_eq!(render(t, &[("Mode", "")]).unwrap(), "0");
        assert_eq!(render("{{ if not .X }}none{{ end }}", &[]).unwrap(), "none");
        assert_eq!(render("x {{- \" y\" -}}  \n z", &[]).unwrap(), "x yz");
    }

    #[test]
    fn range_walks_the_words_of_a_value() {
        let t = "sans:\n{{- range .CertSANs }}\n- {{ . }}\n{{- end }}\n";
        assert_eq!(
            render(t, &[("CertSANs", "a.example 10.0.0.1")]).unwrap(),
            "sans:\n- a.example\n- 10.0.0.1\n"
        );
    }

    #[test]
    fn what_the_subset_lacks_is_refused_with_its_line() {
        let e = Template::parse("a\nb\n{{ .X | upper }}\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown function `upper`"), "{e}");
        let e = Template::parse("{{ with .X }}{{ end }}").unwrap_err();
        assert!(e.message.contains("`with`"), "{e}");
        let e = Template::parse("\n{{ $x := .A }}").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Template::parse("{{ if .A }}\nno end\n").unwrap_err();
        assert!(e.message.contains("without `{{ end }}`"), "{e}");
        let e = Template::parse("x {{ .A ").unwrap_err();
        assert!(e.message.contains("closing"), "{e}");
        let e = Template::parse("{{ end }}").unwrap_err();
        assert!(e.message.contains("without"), "{e}");
        let e = Template::parse("{{ .A.B }}").unwrap_err();
        assert!(e.message.contains("one level"), "{e}");
    }

    #[test]
    fn a_printed_key_without_value_is_an_error_naming_it() {
        let e = render("ok\n{{ .Missing }}", &[]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("`Missing` has no value"), "{e}");
        assert_eq!(render("{{ if .Missing }}x{{ end }}", &[]).unwrap(), "");
    }

    #[test]
    fn fields_are_every_key_read_in_any_branch_and_not_the_range_word() {
        let t = Template::parse(
            "{{ .A }}{{ if eq .B \"x\" }}{{ .C | default .D }}{{ else }}{{ .E }}{{ end }}{{ range .F }}{{ . }}{{ end }}{{/* .G */}}",
        )
        .unwrap();
        let fields: Vec<String> = t.fields().into_iter().collect();
        assert_eq!(fields, ["A", "B", "C", "D", "E", "F"]);
        assert!(Template::parse("plain text").unwrap().fields().is_empty());
    }
}
