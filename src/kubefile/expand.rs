//! Docker's word processing for raw Kubefile words: quote removal, `\` escapes and `$VAR`
//! substitution, as Docker applies to FROM, COPY, ADD, ENV, ARG and LABEL (see
//! [`InstructionKind`](super::InstructionKind) for which fields go through it). Knows nothing of
//! where the values come from: the caller passes a lookup.

/// The longest a word may become once expanded. Each `$VAR` copies a value, so a few lines of
/// `ARG B=$A$A$A...` grow tenfold per line; this stops such a word long before memory runs out.
pub const MAX_EXPANDED_LEN: usize = 1 << 20;

/// Why a word could not be expanded. The builder reports it with the instruction's `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated {quote} quote in `{word}`")]
    UnterminatedQuote { quote: &'static str, word: String },
    #[error("`${{` without a closing `}}` in `{word}`")]
    UnterminatedBrace { word: String },
    #[error(
        "bad substitution `{fragment}` in `{word}`: supported forms are $VAR, ${{VAR}}, \
         ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:+alt}}, ${{VAR+alt}}, ${{VAR:?message}}"
    )]
    BadSubstitution { fragment: String, word: String },
    #[error(
        "`{word}` expands to more than {limit} bytes; shorten the values it substitutes",
        word = shorten(word),
        limit = MAX_EXPANDED_LEN
    )]
    TooLong { word: String },
    /// `${VAR:?message}` with VAR unset or empty (`${VAR?message}`: unset).
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Expand one raw word the way Docker does (its `ProcessWord`):
///
/// - `'...'` is literal; `"..."` allows `$` substitution and the escapes `\"`, `\$`, `\\`;
/// - outside quotes `\c` is the literal `c` (so `\$HOME` stays `$HOME`);
/// - `$VAR` and `${VAR}` are replaced by the value (empty when unset);
/// - `${VAR:-word}` / `${VAR-word}`: `word` when VAR is unset or empty / unset;
/// - `${VAR:+word}` / `${VAR+word}`: `word` when VAR is set and non-empty / set, else empty;
/// - `${VAR:?msg}` / `${VAR?msg}`: error with `msg` when VAR is unset or empty / unset;
/// - a `$` not followed by a name or `{` is literal.
///
/// Whitespace is kept: the whole input is one word (ENV's legacy `K a b` value stays `a b`).
pub fn expand(word: &str, vars: &impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut expander = Expander {
        chars: word.chars().collect(),
        pos: 0,
        word,
        vars,
    };
    expander.until(None)
}

struct Expander<'a, F> {
    chars: Vec<char>,
    pos: usize,
    word: &'a str,
    vars: &'a F,
}

impl<F: Fn(&str) -> Option<String>> Expander<'_, F> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    /// Process up to `stop` (not consumed) or the end of the word.
    fn until(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                return Ok(out);
            }
            self.pos += 1;
            match ch {
                '\'' => loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(c) => out.push(c),
                        None => return Err(self.unterminated("single")),
                    }
                },
                '"' => loop {
                    match self.next() {
                        Some('"') => break,
                        Some('\\') => match self.peek() {
                            Some(c @ ('"' | '$' | '\\')) => {
                                self.pos += 1;
                                out.push(c);
                            }
                            _ => out.push('\\'),
                        },
                        Some('$') => self.push_value(&mut out)?,
                        Some(c) => out.push(c),
                        None => return Err(self.unterminated("double")),
                    }
                },
                '\\' => {
                    if let Some(c) = self.next() {
                        out.push(c);
                    }
                }
                '$' => self.push_value(&mut out)?,
                c => out.push(c),
            }
        }
        match stop {
            Some(_) => Err(ExpandError::UnterminatedBrace {
                word: self.word.to_string(),
            }),
            None => Ok(out),
        }
    }

    /// After a `$`: append the substituted value, refusing a word that grows past the limit.
    fn push_value(&mut self, out: &mut String) -> Result<(), ExpandError> {
        let value = self.dollar()?;
        if out.len() + value.len() > MAX_EXPANDED_LEN {
            return Err(ExpandError::TooLong {
                word: self.word.to_string(),
            });
        }
        out.push_str(&value);
        Ok(())
    }

    fn unterminated(&self, quote: &'static str) -> ExpandError {
        ExpandError::UnterminatedQuote {
            quote,
            word: self.word.to_string(),
        }
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let name = self.name();
                Ok((self.vars)(&name).unwrap_or_default())
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 1;
                Ok((self.vars)(&c.to_string()).unwrap_or_default())
            }
            _ => Ok("$".to_string()),
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c == '_' || c.is_ascii_alphanumeric() {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// After `${`.
    fn braced(&mut self) -> Result<String, ExpandError> {
        let start = self.pos - 2;
        let name = self.name();
        let bad = |this: &Self| {
            let end = this.pos.min(this.chars.len());
            ExpandError::BadSubstitution {
                fragment: this.chars[start..end].iter().collect(),
                word: this.word.to_string(),
            }
        };
        if name.is_empty() {
            return Err(match self.peek() {
                None => ExpandError::UnterminatedBrace {
                    word: self.word.to_string(),
                },
                Some(_) => bad(self),
            });
        }
        let value = (self.vars)(&name);
        let colon = match self.next() {
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(':') => true,
            Some('-' | '+' | '?') => {
                self.pos -= 1;
                false
            }
            Some(_) => return Err(bad(self)),
            None => {
                return Err(ExpandError::UnterminatedBrace {
                    word: self.word.to_string(),
                })
            }
        };
        let op = match self.next() {
            Some(op @ ('-' | '+' | '?')) => op,
            Some(_) => return Err(bad(self)),
            None => {
                return Err(ExpandError::UnterminatedBrace {
                    word: self.word.to_string(),
                })
            }
        };
        let alternative = self.until(Some('}'))?;
        self.pos += 1; // the closing brace
        let set = match (&value, colon) {
            (Some(v), true) => !v.is_empty(),
            (Some(_), false) => true,
            (None, _) => false,
        };
        match op {
            '-' => Ok(if set {
                value.unwrap_or_default()
            } else {
                alternative
            }),
            '+' => Ok(if set { alternative } else { String::new() }),
            _ => {
                if set {
                    Ok(value.unwrap_or_default())
                } else {
                    let message = if alternative.is_empty() {
                        "is not set; pass it with --build-arg or declare it with ARG/ENV"
                            .to_string()
                    } else {
                        alternative
                    };
                    Err(ExpandError::Required { name, message })
                }
            }
        }
    }
}

/// A word as error messages show it: at most 200 characters.
fn shorten(word: &str) -> String {
    match word.char_indices().nth(200) {
        Some((cut, _)) => format!("{}… ({} bytes)", &word[..cut], word.len()),
        None => word.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_that_grows_past_the_limit_is_refused() {
        let value = "x".repeat(300 << 10);
        let vars = |name: &str| (name == "A").then(|| value.clone());
        assert_eq!(expand("$A$A$A", &vars).unwrap().len(), 900 << 10);
        for word in ["$A$A$A$A", "\"${A}${A}${A}${A}\"", "${U:-$A$A$A$A}"] {
            let err = expand(word, &vars).unwrap_err();
            assert!(matches!(err, ExpandError::TooLong { .. }), "{word}: {err}");
            assert!(err.to_string().contains("1048576 bytes"), "{err}");
        }
    }
}
