//! A subset parser of nginx's config syntax: directives, arguments (quoted or not), blocks,
//! comments, and `include` (relative to the main file's directory, `*`/`?` globs in the file
//! name). Unknown directives are kept, not judged; nothing here panics on any input (fuzzed).

use std::path::{Path, PathBuf};

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// `file:line` where it starts.
    pub at: String,
    pub block: Option<Vec<Directive>>,
}

/// Includes deeper than this are refused (a loop of includes, or a mistake).
const MAX_DEPTH: usize = 16;

/// Parses `path` and every file it includes. Problems (an unreadable include, an unclosed
/// block) are returned as warnings next to what could be read.
pub fn load(path: &Path) -> Result<(Vec<Directive>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut warnings = Vec::new();
    let tree = parse_with_includes(&text, &path.display().to_string(), &base, 0, &mut warnings);
    Ok((tree, warnings))
}

fn parse_with_includes(
    text: &str,
    file: &str,
    base: &Path,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Vec<Directive> {
    let tree = parse_str(text, file, warnings);
    expand(tree, base, depth, warnings)
}

/// Parses one file's text (no includes followed); a stray `}` is a warning, not the end.
pub fn parse_str(text: &str, file: &str, warnings: &mut Vec<String>) -> Vec<Directive> {
    let tokens = tokenize(text);
    let mut pos = 0;
    let mut tree = block(&tokens, &mut pos, file, warnings);
    while pos < tokens.len() {
        warnings.push(format!("{file}: a '}}' closes no block"));
        tree.extend(block(&tokens, &mut pos, file, warnings));
    }
    tree
}

/// Replaces each `include PATTERN;` by the directives of the files it names.
fn expand(
    tree: Vec<Directive>,
    base: &Path,
    depth: usize,
    warnings: &mut Vec<String>,
) -> Vec<Directive> {
    let mut out = Vec::new();
    for mut d in tree {
        if d.name == "include" && d.block.is_none() {
            let Some(pattern) = d.args.first() else {
                continue;
            };
            if depth >= MAX_DEPTH {
                warnings.push(format!("{}: include nested too deep, not followed", d.at));
                continue;
            }
            for path in glob(base, pattern) {
                match std::fs::read_to_string(&path) {
                    Ok(text) => out.extend(parse_with_includes(
                        &text,
                        &path.display().to_string(),
                        base,
                        depth + 1,
                        warnings,
                    )),
                    Err(e) => warnings.push(format!("{}: include {}: {e}", d.at, path.display())),
                }
            }
            continue;
        }
        if let Some(children) = d.block.take() {
            d.block = Some(expand(children, base, depth, warnings));
        }
        out.push(d);
    }
    out
}

/// Files matching `pattern` (relative to `base` unless absolute), sorted; `*` and `?` only in
/// the last path component, as nginx configs use them (`sites-enabled/*`, `conf.d/*.conf`).
pub fn glob(base: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![full];
    }
    let dir = full.parent().unwrap_or(Path::new(".")).to_path_buf();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter(|e| matches(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Shell-style match of `*` and `?` (iterative, no recursion blow-up).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String, usize),
    Semicolon(usize),
    Open(usize),
    Close(usize),
}

/// Words (quotes removed, `\x` escapes kept as `x`), `;`, `{`, `}`, with their line.
fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            ';' => out.push(Token::Semicolon(line)),
            '{' => out.push(Token::Open(line)),
            '}' => out.push(Token::Close(line)),
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                while let Some(ch) = chars.next() {
                    match ch {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                word.push(e);
                            }
                        }
                        q if q == c => break,
                        '\n' => {
                            line += 1;
                            word.push('\n');
                        }
                        other => word.push(other),
                    }
                }
                out.push(Token::Word(word, start));
            }
            first => {
                let mut word = String::from(first);
                while let Some(&ch) = chars.peek() {
                    // `${var}` keeps its braces inside a word.
                    if ch == '{' && word.ends_with('$') {
                        for c in chars.by_ref() {
                            word.push(c);
                            if c == '}' {
                                break;
                            }
                        }
                        continue;
                    }
                    if ch.is_whitespace() || matches!(ch, ';' | '{' | '}') {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                out.push(Token::Word(word, line));
            }
        }
    }
    out
}

/// Directives until a `}` or the end.
fn block(
    tokens: &[Token],
    pos: &mut usize,
    file: &str,
    warnings: &mut Vec<String>,
) -> Vec<Directive> {
    nested(tokens, pos, file, warnings, 0)
}

/// Blocks nested deeper than this are skipped whole (nginx's own contexts nest a few levels).
const MAX_NESTING: usize = 32;

fn nested(
    tokens: &[Token],
    pos: &mut usize,
    file: &str,
    warnings: &mut Vec<String>,
    depth: usize,
) -> Vec<Directive> {
    let mut out = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    while let Some(t) = tokens.get(*pos) {
        *pos += 1;
        match t {
            Token::Word(w, line) => words.push((w.clone(), *line)),
            Token::Semicolon(line) => {
                if let Some(d) = directive(&mut words, file, *line, None) {
                    out.push(d);
                }
            }
            Token::Open(line) if depth >= MAX_NESTING => {
                warnings.push(format!("{file}:{line}: blocks nested too deep, skipped"));
                words.clear();
                skip_block(tokens, pos);
            }
            Token::Open(line) => {
                let children = nested(tokens, pos, file, warnings, depth + 1);
                match directive(&mut words, file, *line, Some(children)) {
                    Some(d) => out.push(d),
                    None => warnings.push(format!("{file}:{line}: a block without a name")),
                }
            }
            Token::Close(_) => return out,
        }
    }
    if !words.is_empty() {
        warnings.push(format!("{file}: the last directive has no ';'"));
    }
    out
}

/// Moves past the `}` that closes the block just opened.
fn skip_block(tokens: &[Token], pos: &mut usize) {
    let mut open = 1usize;
    while let Some(t) = tokens.get(*pos) {
        *pos += 1;
        match t {
            Token::Open(_) => open += 1,
            Token::Close(_) => {
                open -= 1;
                if open == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

fn directive(
    words: &mut Vec<(String, usize)>,
    file: &str,
    line: usize,
    block: Option<Vec<Directive>>,
) -> Option<Directive> {
    let mut it = std::mem::take(words).into_iter();
    let (name, first_line) = it.next()?;
    Some(Directive {
        name,
        args: it.map(|(w, _)| w).collect(),
        at: format!("{file}:{}", first_line.min(line)),
        block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_quotes_comments_and_lines() {
        let src = "http {\n  # comment ; {\n  upstream app { server 127.0.0.1:3000 max_fails=1; keepalive 8; }\n  server { location / { proxy_set_header Connection \"\"; proxy_pass http://app; } }\n}\n";
        let mut w = Vec::new();
        let mut pos = 0;
        let tree = block(&tokenize(src), &mut pos, "t.conf", &mut w);
        assert!(w.is_empty(), "{w:?}");
        let http = &tree[0];
        assert_eq!((http.name.as_str(), http.at.as_str()), ("http", "t.conf:1"));
        let body = http.block.as_ref().unwrap();
        let up = &body[0];
        assert_eq!(up.args, ["app"]);
        assert_eq!(up.at, "t.conf:3");
        let server = &up.block.as_ref().unwrap()[0];
        assert_eq!(server.args, ["127.0.0.1:3000", "max_fails=1"]);
        let loc = &body[1].block.as_ref().unwrap()[0];
        let set = &loc.block.as_ref().unwrap()[0];
        assert_eq!(set.args, ["Connection", ""]);
    }

    #[test]
    fn globs_match_like_the_shell() {
        assert!(matches(b"*.conf", b"default.conf"));
        assert!(!matches(b"*.conf", b"default.conf.bak"));
        assert!(matches(b"*", b"anything"));
        assert!(matches(b"a?c*", b"abcdef"));
        assert!(!matches(b"a?c", b"ac"));
    }

    #[test]
    fn never_panics_on_broken_input() {
        for src in [
            "}",
            "{",
            "\"unterminated",
            "a b c",
            ";;;",
            "x {{{ }",
            "${",
            "'\\",
            "} a;",
        ] {
            let mut w = Vec::new();
            let _ = parse_str(src, "f", &mut w);
        }
        let deep = "a {".repeat(100_000);
        let _ = parse_str(&deep, "f", &mut Vec::new());
        let mut w = Vec::new();
        let tree = parse_str("} a 1; set $u ${host}x;", "f", &mut w);
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert_eq!(tree[1].args, ["$u", "${host}x"]);
    }
}
