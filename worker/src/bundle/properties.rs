//! Java `.properties` files: reading them as `java.util.Properties.load(Reader)` does, and writing
//! entries back so that Java reads them the same way.
//!
//! An operator's connector bundle carries its settings in `dtrust.properties`, a file made for the
//! Java connector. This module owns that format: [`decode`] turns the file's bytes into text,
//! [`Properties::parse`] reads it with the full syntax of `Properties.load` (natural and logical
//! lines, comments, continuations, separators, escapes, `\uXXXX` and surrogate pairs) and keeps
//! every entry with its line number and byte span, [`format_entry`] writes one entry, and
//! [`rewrite`] edits a file in place while keeping comments and all other lines byte for byte.
//!
//! The text is untrusted: nothing here panics on any input; a malformed escape is an error that
//! names its line.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;

/// One logical line's key/value pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based number of the natural line where this entry starts.
    pub line: usize,
    /// Byte range in the parsed text covering the whole logical line, including its continuation
    /// lines and its final line terminator (if any). Used to rewrite a file in place.
    pub span: Range<usize>,
}

/// The entries of a properties text, in file order, duplicates included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    entries: Vec<Entry>,
}

/// A properties text that `Properties.load` would reject (a malformed `\uXXXX` escape), or that a
/// Rust string cannot hold (an unpaired UTF-16 surrogate escape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PropertiesError {
    pub line: usize,
    pub message: String,
}

impl Properties {
    /// Parses `text` with the syntax of `java.util.Properties.load(Reader)`.
    ///
    /// # Errors
    ///
    /// A malformed `\uXXXX` escape (where Java throws "Malformed \uxxxx encoding"), or a `\uXXXX`
    /// escape of a UTF-16 surrogate that is not paired with the other half in the next escape.
    pub fn parse(text: &str) -> Result<Properties, PropertiesError> {
        Ok(Properties {
            entries: scan(text).entries()?,
        })
    }

    /// Last value for the key (Java semantics), None when absent.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|entry| entry.value.as_str())
    }

    /// The last entry for the key (for its line number).
    #[must_use]
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|entry| entry.key == key)
    }

    /// All entries in file order, duplicates included.
    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Keys that occur more than once, each once, in order of first occurrence.
    #[must_use]
    pub fn duplicate_keys(&self) -> Vec<&str> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for entry in &self.entries {
            *counts.entry(entry.key.as_str()).or_default() += 1;
        }
        let mut reported = HashSet::new();
        self.entries
            .iter()
            .map(|entry| entry.key.as_str())
            .filter(|key| counts.get(key).is_some_and(|&count| count > 1) && reported.insert(*key))
            .collect()
    }
}

/// Decodes file bytes: a UTF-8 BOM is stripped; valid UTF-8 is taken as UTF-8, anything else as
/// ISO-8859-1 (every byte one char).
#[must_use]
pub fn decode(bytes: &[u8]) -> Cow<'_, str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().copied().map(char::from).collect()),
    }
}

/// `key=value` as one line (without line terminator), escaped so that `Properties::parse` (and
/// Java's Properties.load with ISO-8859-1) read back exactly `key` and `value`: escape `\`, `=`,
/// `:`, `#`, `!` and whitespace in keys; leading whitespace, `\`, and line terminators in values
/// (and `#`/`!` only where needed); every char outside printable ASCII as `\uXXXX` (surrogate pairs
/// for chars above U+FFFF).
///
/// `#` and `!` in a value never need escaping: the line starts with the key or with `=`, so it is
/// never taken for a comment. `=` and `:` in a value need none either, as the separator is already
/// consumed.
#[must_use]
pub fn format_entry(key: &str, value: &str) -> String {
    let mut line = String::with_capacity(key.len() + value.len() + 1);
    escape_into(&mut line, key, true);
    line.push('=');
    escape_into(&mut line, value, false);
    line
}

/// Rewrites a properties text: removes every entry whose key is in `remove`, replaces the value of
/// `set.0` in place (its first occurrence keeps its position, later duplicates are removed) or
/// appends `set.0=set.1` at the end (adding a line terminator before it if the text does not end
/// with one). Comments, blank lines and all other entries are kept byte for byte. Returns an error
/// only if the text does not parse.
///
/// A key both in `remove` and in `set` is set. New lines use the text's first line terminator
/// (`\n` when it has none), and an appended line gets one too. When the text ends inside a
/// continuation (its last natural line ends in an odd number of backslashes), whatever followed it
/// would join that last entry, so the new line goes just before that entry instead.
///
/// # Errors
///
/// The errors of [`Properties::parse`] for `text`.
pub fn rewrite(
    text: &str,
    remove: &[&str],
    set: Option<(&str, &str)>,
) -> Result<String, PropertiesError> {
    let scan = scan(text);
    let entries = scan.entries()?;
    let terminator = first_terminator(text);
    let formatted = set.map(|(key, value)| format_entry(key, value));
    // The new line, until it is written.
    let mut pending = formatted.as_deref();
    let mut out = String::with_capacity(text.len() + pending.map_or(0, |line| line.len() + 2));
    let mut copied = 0;
    let last = entries.len().checked_sub(1);
    for (index, entry) in entries.iter().enumerate() {
        out.push_str(text.get(copied..entry.span.start).unwrap_or_default());
        copied = entry.span.end;
        let original = text.get(entry.span.clone()).unwrap_or_default();
        if set.is_some_and(|(key, _)| key == entry.key) {
            if let Some(line) = pending.take() {
                out.push_str(line);
                out.push_str(terminator_at_end(original));
            }
        } else if !remove.contains(&entry.key.as_str()) {
            if scan.open_at_end && Some(index) == last {
                if let Some(line) = pending.take() {
                    out.push_str(line);
                    out.push_str(terminator);
                }
            }
            out.push_str(original);
        }
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    if let Some(line) = pending {
        if !out.is_empty() && !out.ends_with(['\n', '\r']) {
            out.push_str(terminator);
        }
        out.push_str(line);
        out.push_str(terminator);
    }
    Ok(out)
}

/// Whitespace as `Properties.load` knows it: space, tab and form feed.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

fn is_terminator(c: char) -> bool {
    matches!(c, '\n' | '\r')
}

/// The text's first line terminator, `\n` when it has none.
fn first_terminator(text: &str) -> &'static str {
    match text
        .find(['\n', '\r'])
        .map(|at| text.get(at..).unwrap_or_default())
    {
        Some(rest) if rest.starts_with("\r\n") => "\r\n",
        Some(rest) if rest.starts_with('\r') => "\r",
        _ => "\n",
    }
}

/// The line terminator that ends `text`, empty when it has none.
fn terminator_at_end(text: &str) -> &'static str {
    if text.ends_with("\r\n") {
        "\r\n"
    } else if text.ends_with('\n') {
        "\n"
    } else if text.ends_with('\r') {
        "\r"
    } else {
        ""
    }
}

/// Appends `text` escaped as a key (`is_key`) or as a value; see [`format_entry`].
fn escape_into(out: &mut String, text: &str, is_key: bool) {
    for (index, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            ' ' if is_key || index == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if is_key => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0_u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
        }
    }
}

/// One logical line as `Properties.load` reads it, before it is split into key and value.
#[derive(Debug)]
struct LogicalLine {
    /// The line's characters: continuation lines joined, each continuation's backslash, line
    /// terminator and leading whitespace dropped.
    chars: Vec<char>,
    /// `(index in chars, natural line number)` where each natural line's characters begin.
    starts: Vec<(usize, usize)>,
    /// Natural line number where the logical line starts.
    line: usize,
    /// Byte range in the text, from the start of its first natural line through its last line
    /// terminator.
    span: Range<usize>,
}

impl LogicalLine {
    /// Natural line number of the character at `index`.
    fn line_of(&self, index: usize) -> usize {
        self.starts
            .iter()
            .rev()
            .find(|(start, _)| *start <= index)
            .map_or(self.line, |&(_, line)| line)
    }

    /// Splits the line into key and value and unescapes them, as `Properties.load0` does.
    fn to_entry(&self) -> Result<Entry, PropertiesError> {
        let chars = &self.chars;
        let mut key_end = 0;
        let mut value_start = chars.len();
        let mut has_separator = false;
        let mut preceding_backslash = false;
        while let Some(&c) = chars.get(key_end) {
            if !preceding_backslash {
                if c == '=' || c == ':' {
                    value_start = key_end + 1;
                    has_separator = true;
                    break;
                }
                if is_whitespace(c) {
                    value_start = key_end + 1;
                    break;
                }
            }
            preceding_backslash = c == '\\' && !preceding_backslash;
            key_end += 1;
        }
        while let Some(&c) = chars.get(value_start) {
            if !is_whitespace(c) {
                if has_separator || (c != '=' && c != ':') {
                    break;
                }
                has_separator = true;
            }
            value_start += 1;
        }
        Ok(Entry {
            key: self.unescape(0..key_end)?,
            value: self.unescape(value_start..chars.len())?,
            line: self.line,
            span: self.span.clone(),
        })
    }

    /// Resolves the escapes in `chars[range]`, as `Properties.loadConvert` does, and joins
    /// surrogate pairs written as two `\uXXXX` escapes.
    fn unescape(&self, range: Range<usize>) -> Result<String, PropertiesError> {
        let offset = range.start;
        let chars = self.chars.get(range).unwrap_or_default();
        let mut out = String::with_capacity(chars.len());
        // A high surrogate escape waiting for its low half, with the index of its backslash.
        let mut high: Option<(u32, usize)> = None;
        let mut index = 0;
        while let Some(&c) = chars.get(index) {
            let at = offset + index;
            index += 1;
            let unit = if c == '\\' {
                let Some(&escaped) = chars.get(index) else {
                    // A logical line never ends in an unescaped backslash; nothing to resolve.
                    break;
                };
                index += 1;
                match escaped {
                    'u' => {
                        let code = chars
                            .get(index..index + 4)
                            .and_then(hex_code)
                            .ok_or_else(|| self.error(at, "malformed \\uxxxx encoding"))?;
                        index += 4;
                        code
                    }
                    't' => u32::from('\t'),
                    'n' => u32::from('\n'),
                    'r' => u32::from('\r'),
                    'f' => u32::from('\x0c'),
                    other => u32::from(other),
                }
            } else {
                u32::from(c)
            };
            let decoded = match (high.take(), unit) {
                (None, 0xD800..=0xDBFF) => {
                    high = Some((unit, at));
                    continue;
                }
                (Some((high, _)), 0xDC00..=0xDFFF) => {
                    char::from_u32(0x1_0000 + ((high - 0xD800) << 10) + (unit - 0xDC00))
                }
                (Some((_, high_at)), _) => return Err(self.unpaired(high_at)),
                (None, _) => char::from_u32(unit),
            };
            out.push(decoded.ok_or_else(|| self.unpaired(at))?);
        }
        match high {
            Some((_, high_at)) => Err(self.unpaired(high_at)),
            None => Ok(out),
        }
    }

    fn error(&self, index: usize, message: &str) -> PropertiesError {
        PropertiesError {
            line: self.line_of(index),
            message: message.to_owned(),
        }
    }

    fn unpaired(&self, index: usize) -> PropertiesError {
        self.error(
            index,
            "unpaired UTF-16 surrogate in a \\uxxxx escape (a surrogate pair needs both halves)",
        )
    }
}

/// The value of four hex digits, as a `\uXXXX` escape takes them.
fn hex_code(digits: &[char]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0, |code, digit| Some(code << 4 | digit.to_digit(16)?))
}

/// The logical lines of a text.
struct Scan {
    lines: Vec<LogicalLine>,
    /// The text ends inside a continuation of its last logical line: anything appended to the text
    /// would join that line.
    open_at_end: bool,
}

impl Scan {
    fn entries(&self) -> Result<Vec<Entry>, PropertiesError> {
        self.lines.iter().map(LogicalLine::to_entry).collect()
    }
}

/// A character of the text with where it stands.
struct Located {
    c: char,
    /// Its natural line's number.
    line: usize,
    /// The byte offset where its natural line starts.
    line_start: usize,
}

/// Walks a text char by char, counting natural lines (`\n`, `\r` or `\r\n` end one).
struct Cursor<'a> {
    text: &'a str,
    /// Byte offset of the next char.
    pos: usize,
    /// Natural line number of the next char.
    line: usize,
    /// Byte offset where that natural line starts.
    line_start: usize,
}

impl Cursor<'_> {
    fn next_char(&mut self) -> Option<Located> {
        let c = self.text.get(self.pos..)?.chars().next()?;
        let located = Located {
            c,
            line: self.line,
            line_start: self.line_start,
        };
        self.pos += c.len_utf8();
        if c == '\n' || (c == '\r' && !self.next_is_lf()) {
            self.line += 1;
            self.line_start = self.pos;
        }
        Some(located)
    }

    fn next_is_lf(&self) -> bool {
        self.text.as_bytes().get(self.pos) == Some(&b'\n')
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }
}

/// Splits a text into logical lines exactly as `Properties.LineReader.readLine` does, noting
/// where each one lies in the text.
fn scan(text: &str) -> Scan {
    let mut cursor = Cursor {
        text,
        pos: 0,
        line: 1,
        line_start: 0,
    };
    let mut lines = Vec::new();
    // The logical line being read.
    let mut chars = Vec::new();
    let mut starts: Vec<(usize, usize)> = Vec::new();
    let mut begin: Option<(usize, usize)> = None;
    // LineReader's state.
    let mut skip_whitespace = true;
    let mut appended_line_begin = false;
    let mut preceding_backslash = false;
    let mut skip_lf = false;

    while let Some(located) = cursor.next_char() {
        let c = located.c;
        if skip_lf {
            skip_lf = false;
            if c == '\n' {
                continue;
            }
        }
        if skip_whitespace {
            if is_whitespace(c) || (!appended_line_begin && is_terminator(c)) {
                continue;
            }
            skip_whitespace = false;
            appended_line_begin = false;
        }
        if chars.is_empty() && (c == '#' || c == '!') {
            // A comment: skip through its line terminator; it is never continued.
            while cursor
                .next_char()
                .is_some_and(|next| !is_terminator(next.c))
            {}
            begin = None;
            starts.clear();
            skip_whitespace = true;
            continue;
        }
        if !is_terminator(c) {
            begin.get_or_insert((located.line_start, located.line));
            if starts.last().is_none_or(|&(_, line)| line != located.line) {
                starts.push((chars.len(), located.line));
            }
            chars.push(c);
            preceding_backslash = c == '\\' && !preceding_backslash;
            continue;
        }
        if chars.is_empty() {
            // A blank line, or a lone continuation backslash followed by one.
            begin = None;
            starts.clear();
            skip_whitespace = true;
            continue;
        }
        let at_end = cursor.at_end();
        if preceding_backslash && !at_end {
            // The terminator is escaped: the logical line goes on with the next natural line.
            chars.pop();
            skip_whitespace = true;
            appended_line_begin = true;
            preceding_backslash = false;
            skip_lf = c == '\r';
            continue;
        }
        if preceding_backslash {
            // A backslash ending the text is dropped.
            chars.pop();
        }
        if c == '\r' && cursor.next_is_lf() {
            cursor.next_char();
        }
        let (start, line) = begin.take().unwrap_or((located.line_start, located.line));
        lines.push(LogicalLine {
            chars: std::mem::take(&mut chars),
            starts: std::mem::take(&mut starts),
            line,
            span: start..cursor.pos,
        });
        if at_end {
            return Scan {
                lines,
                open_at_end: preceding_backslash,
            };
        }
        skip_whitespace = true;
    }

    let mut open_at_end = false;
    if !chars.is_empty() {
        open_at_end = preceding_backslash || appended_line_begin;
        if preceding_backslash {
            // A backslash ending the text is dropped.
            chars.pop();
        }
        let (start, line) = begin.unwrap_or((cursor.line_start, cursor.line));
        lines.push(LogicalLine {
            chars,
            starts,
            line,
            span: start..text.len(),
        });
    }
    Scan { lines, open_at_end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Properties {
        match Properties::parse(text) {
            Ok(properties) => properties,
            Err(error) => panic!("{text:?} does not parse: {error}"),
        }
    }

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text)
            .entries()
            .iter()
            .map(|entry| (entry.key.clone(), entry.value.clone()))
            .collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    fn parse_error(text: &str) -> PropertiesError {
        match Properties::parse(text) {
            Ok(properties) => panic!("{text:?} parses: {properties:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn javadoc_truth_examples() {
        for text in [
            "Truth = Beauty",
            "  Truth:Beauty",
            "Truth                    :Beauty",
        ] {
            assert_eq!(pairs(text), [pair("Truth", "Beauty")], "{text:?}");
        }
    }

    #[test]
    fn javadoc_fruits_continuation() {
        let text = "fruits                           apple, banana, pear, \\\n                                  cantaloupe, watermelon, \\\n                                  kiwi, mango\n";
        assert_eq!(
            pairs(text),
            [pair(
                "fruits",
                "apple, banana, pear, cantaloupe, watermelon, kiwi, mango"
            )]
        );
    }

    #[test]
    fn javadoc_key_without_value() {
        assert_eq!(pairs("cheeses"), [pair("cheeses", "")]);
        assert_eq!(pairs("cheeses\n"), [pair("cheeses", "")]);
        assert_eq!(pairs("cheeses   \n"), [pair("cheeses", "")]);
        assert_eq!(pairs("cheeses="), [pair("cheeses", "")]);
    }

    #[test]
    fn javadoc_escaped_separators_in_key() {
        assert_eq!(pairs("\\:\\="), [pair(":=", "")]);
        assert_eq!(
            pairs("key\\ with\\ spaces=v"),
            [pair("key with spaces", "v")]
        );
        assert_eq!(pairs("a\\=b\\:c=d"), [pair("a=b:c", "d")]);
    }

    #[test]
    fn separators_and_surrounding_whitespace() {
        assert_eq!(pairs("key = =value"), [pair("key", "=value")]);
        assert_eq!(pairs("key value"), [pair("key", "value")]);
        assert_eq!(pairs("key"), [pair("key", "")]);
        assert_eq!(pairs("key:=v"), [pair("key", "=v")]);
        assert_eq!(pairs("key=:v"), [pair("key", ":v")]);
        assert_eq!(pairs("key :v"), [pair("key", "v")]);
        assert_eq!(pairs("key\t=\tv"), [pair("key", "v")]);
        assert_eq!(pairs("key\x0c v"), [pair("key", "v")]);
        assert_eq!(pairs("key  value = x"), [pair("key", "value = x")]);
        assert_eq!(pairs("=value"), [pair("", "value")]);
        assert_eq!(pairs(":"), [pair("", "")]);
        assert_eq!(pairs("   key=value  "), [pair("key", "value  ")]);
        assert_eq!(pairs("key=a=b:c d"), [pair("key", "a=b:c d")]);
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        let text = "\n   \n\t\x0c\n# comment\n   ! also a comment\n#\n!\na=1\n  \n";
        let properties = parse(text);
        assert_eq!(pairs(text), [pair("a", "1")]);
        assert_eq!(
            properties.entries().first().map(|entry| entry.line),
            Some(8)
        );
        assert!(parse("").entries().is_empty());
        assert!(parse("# only a comment").entries().is_empty());
        // `#` and `!` start a comment only as the first non-whitespace char.
        assert_eq!(pairs("a=#1\nb!=2"), [pair("a", "#1"), pair("b!", "2")]);
    }

    #[test]
    fn escapes() {
        assert_eq!(pairs("k=a\\tb\\nc\\rd\\fe"), [pair("k", "a\tb\nc\rd\x0ce")]);
        assert_eq!(pairs("k=\\u00e9\\u00C9"), [pair("k", "éÉ")]);
        assert_eq!(pairs("caf\\u00e9=ol\\u00E9"), [pair("café", "olé")]);
        assert_eq!(
            pairs("k=\\a\\b\\=\\:\\ \\#\\!\\\\"),
            [pair("k", "ab=: #!\\")]
        );
        assert_eq!(pairs("\\#k=v"), [pair("#k", "v")]);
        assert_eq!(pairs("\\!k=v"), [pair("!k", "v")]);
        assert_eq!(pairs("k=\\ lead"), [pair("k", " lead")]);
        assert_eq!(pairs("k=\\\\\\\\"), [pair("k", "\\\\")]);
        assert_eq!(pairs("k=raw é 😀"), [pair("k", "raw é 😀")]);
        assert_eq!(pairs("k=\\é"), [pair("k", "é")]);
    }

    #[test]
    fn malformed_unicode_escape_is_an_error_with_its_line() {
        let error = parse_error("a=1\n\nb=\\u12\n");
        assert_eq!(error.line, 3);
        assert!(error.message.contains("malformed \\uxxxx"), "{error}");
        assert_eq!(error.to_string(), "line 3: malformed \\uxxxx encoding");
        assert_eq!(parse_error("k=\\u12G4").line, 1);
        assert_eq!(parse_error("k=\\u").line, 1);
        // The key ends at the unescaped space, leaving only two digits in it.
        assert_eq!(parse_error("# c\n\\u00 e9=v").line, 2);
        // The escape's digits may come from a continuation line; the error names the escape's.
        assert_eq!(pairs("k=\\u00\\\n   e9"), [pair("k", "é")]);
        assert_eq!(parse_error("k=x\\\n \\u00\\\n zz").line, 2);
    }

    #[test]
    fn surrogate_pairs_combine_and_lone_surrogates_are_errors() {
        assert_eq!(pairs("k=\\uD83D\\uDE00"), [pair("k", "😀")]);
        assert_eq!(pairs("\\ud83d\\ude00=v"), [pair("😀", "v")]);
        assert_eq!(parse_error("a=1\nk=\\uD83D").line, 2);
        assert_eq!(parse_error("k=\\uDE00\\uD83D").line, 1);
        assert_eq!(parse_error("k=\\uD83Dx").line, 1);
        assert_eq!(parse_error("k=\\uD83D\\uD83D\\uDE00").line, 1);
        assert_eq!(parse_error("k=\\uD83D😀").line, 1);
        // The halves of a pair belong to the same key or value.
        assert_eq!(parse_error("\\uD83D=\\uDE00").line, 1);
        let error = parse_error("a=1\n\nk=x\\\n  \\uDE00");
        assert_eq!(error.line, 4);
        assert!(error.message.contains("surrogate"), "{error}");
    }

    #[test]
    fn crlf_and_lone_cr_terminators() {
        let expected = [pair("a", "1"), pair("b", "2"), pair("c", "3")];
        for text in [
            "a=1\r\nb=2\r\n\r\nc=3\r\n",
            "a=1\rb=2\r\rc=3\r",
            "a=1\nb=2\r\n\rc=3",
        ] {
            assert_eq!(pairs(text), expected, "{text:?}");
            let lines: Vec<usize> = parse(text).entries().iter().map(|e| e.line).collect();
            assert_eq!(lines, [1, 2, 4], "{text:?}");
        }
        assert_eq!(
            pairs("a=x\\\r\n  y\r\nb=2"),
            [pair("a", "xy"), pair("b", "2")]
        );
        assert_eq!(pairs("a=x\\\r  y\rb=2"), [pair("a", "xy"), pair("b", "2")]);
        assert_eq!(
            pairs("# c\r\na=1\r# d\rb=2"),
            [pair("a", "1"), pair("b", "2")]
        );
    }

    #[test]
    fn continuation_needs_an_odd_number_of_backslashes() {
        assert_eq!(pairs("a=1\\\n2"), [pair("a", "12")]);
        assert_eq!(pairs("a=1\\\\\nb=2"), [pair("a", "1\\"), pair("b", "2")]);
        assert_eq!(pairs("a=1\\\\\\\n2"), [pair("a", "1\\2")]);
        assert_eq!(
            pairs("a=1\\\\\\\\\nb=2"),
            [pair("a", "1\\\\"), pair("b", "2")]
        );
        // Whitespace before the backslash stays; the continuation's leading whitespace goes.
        assert_eq!(pairs("a=x  \\\n \t\x0c y  "), [pair("a", "x  y  ")]);
        // A continuation may span several lines, and the key may continue too.
        assert_eq!(pairs("ke\\\n  y=\\\n  v\\\n  w"), [pair("key", "vw")]);
        // A blank line ends the logical line.
        assert_eq!(pairs("a=1\\\n\nb=2"), [pair("a", "1"), pair("b", "2")]);
        assert_eq!(pairs("a=1\\\n   \nb=2"), [pair("a", "1"), pair("b", "2")]);
        // A continuation line starting with `#` is not a comment.
        assert_eq!(pairs("a=1\\\n  # 2"), [pair("a", "1# 2")]);
    }

    #[test]
    fn comment_lines_are_not_continued() {
        assert_eq!(pairs("# comment \\\na=1"), [pair("a", "1")]);
        assert_eq!(pairs("! comment \\\r\na=1"), [pair("a", "1")]);
        assert_eq!(
            pairs("  # comment \\\\\\\nb=2\\\n  # x"),
            [pair("b", "2# x")]
        );
    }

    #[test]
    fn backslash_at_end_of_text_is_dropped() {
        assert_eq!(pairs("a=1\\"), [pair("a", "1")]);
        assert_eq!(pairs("a=1\\\n"), [pair("a", "1")]);
        assert_eq!(pairs("a=1\\\r"), [pair("a", "1")]);
        assert_eq!(pairs("a=1\\\\\\"), [pair("a", "1\\")]);
        assert_eq!(pairs("a\\"), [pair("a", "")]);
        // As in Java, a lone backslash ending the text is an entry with an empty key.
        assert_eq!(pairs("a=1\n\\"), [pair("a", "1"), pair("", "")]);
        // ... but a continuation that only reaches blank space is none.
        assert_eq!(pairs("a=1\n\\\n   "), [pair("a", "1")]);
    }

    #[test]
    fn lone_continuation_backslash_lines() {
        // A line holding only a backslash continues into the next one ...
        assert_eq!(pairs("\\\n  a=1"), [pair("a", "1")]);
        // ... whose leading `#` (as in Java 9 and later) makes it a comment ...
        assert_eq!(pairs("\\\n# c\nb=2"), [pair("b", "2")]);
        // ... and a blank line after it leaves nothing.
        assert_eq!(pairs("\\\n\nb=2"), [pair("b", "2")]);
        let properties = parse("\\\n  a=1");
        let entry = properties.entries().first();
        assert_eq!(entry.map(|entry| entry.line), Some(1));
        assert_eq!(entry.map(|entry| entry.span.clone()), Some(0..7));
    }

    #[test]
    fn duplicates_last_wins_all_kept() {
        let text = "a=1\nb=x\na=2\nc=y\nb=z\na=3\n";
        let properties = parse(text);
        assert_eq!(properties.get("a"), Some("3"));
        assert_eq!(properties.get("b"), Some("z"));
        assert_eq!(properties.get("c"), Some("y"));
        assert_eq!(properties.get("d"), None);
        assert_eq!(properties.entry("a").map(|entry| entry.line), Some(6));
        assert_eq!(properties.entry("b").map(|entry| entry.line), Some(5));
        assert_eq!(properties.entries().len(), 6);
        assert_eq!(properties.duplicate_keys(), ["a", "b"]);
        assert!(parse("a=1\nb=2").duplicate_keys().is_empty());
        assert_eq!(parse("b=1\na=1\na=2\nb=2").duplicate_keys(), ["b", "a"]);
    }

    #[test]
    fn spans_cover_whole_logical_lines() {
        let text = "# head\n  a = 1\r\n\nb=x\\\n   y\\\r\n   z\r\n! c\nc\\\n\\\n  d=4\n\ne=5\\";
        let properties = parse(text);
        let spans: Vec<(&str, usize)> = properties
            .entries()
            .iter()
            .map(|entry| (text.get(entry.span.clone()).unwrap_or("?"), entry.line))
            .collect();
        assert_eq!(
            spans,
            [
                ("  a = 1\r\n", 2),
                ("b=x\\\n   y\\\r\n   z\r\n", 4),
                ("c\\\n\\\n  d=4\n", 8),
                ("e=5\\", 12),
            ]
        );
        assert_eq!(properties.get("b"), Some("xyz"));
        assert_eq!(properties.get("cd"), Some("4"));
        assert_eq!(properties.get("e"), Some("5"));
        assert_eq!(
            parse("a=1\\\n\nb")
                .entries()
                .first()
                .map(|e| e.span.clone()),
            Some(0..6)
        );
    }

    #[test]
    fn decode_utf8_latin1_and_bom() {
        assert_eq!(decode(b"k=caf\xC3\xA9"), "k=café");
        assert!(matches!(decode(b"k=v"), Cow::Borrowed("k=v")));
        assert_eq!(decode(b"k=caf\xE9"), "k=café");
        assert_eq!(decode(b"\xFF\x00\x80"), "\u{FF}\u{0}\u{80}");
        assert_eq!(decode(b"\xEF\xBB\xBFk=\xC3\xA9"), "k=é");
        assert_eq!(decode(b"\xEF\xBB\xBFk=\xE9"), "k=é");
        assert_eq!(decode(b""), "");
        assert_eq!(decode(b"\xEF\xBB\xBF"), "");
    }

    #[test]
    fn format_entry_escapes() {
        assert_eq!(
            format_entry("url", "https://x/rest/"),
            "url=https://x/rest/"
        );
        assert_eq!(format_entry("a b", " x y "), "a\\ b=\\ x y ");
        assert_eq!(format_entry("#k!=:", "#v!=:"), "\\#k\\!\\=\\:=#v!=:");
        assert_eq!(format_entry("k\\", "v\\"), "k\\\\=v\\\\");
        assert_eq!(
            format_entry("t\tn\nr\rf\x0c", "\t\n\r\x0c"),
            "t\\tn\\nr\\rf\\f=\\t\\n\\r\\f"
        );
        assert_eq!(
            format_entry("café", "é\u{7f}\u{1}"),
            "caf\\u00E9=\\u00E9\\u007F\\u0001"
        );
        assert_eq!(format_entry("k", "😀"), "k=\\uD83D\\uDE00");
        assert_eq!(format_entry("", ""), "=");
        assert_eq!(format_entry("k", "=v"), "k==v");
        assert_eq!(pairs(&format_entry("k", "=v")), [pair("k", "=v")]);
    }

    const DTRUST: &str = "# REST interface
url=https://cmc.d-trust.net/rest/
p12File=CSMWM447922870184925_neXus_Technology_GmbH_2015_SSL.p12
p12Password=123456
serverCertificate=D-TRUST_SSL_Class_3_CA_1_2009.cer
certificateTemplates=SSL-Basic;SSL-OV;\\
    Personal-Sig
tokenProcedure.SSL-Basic=TP PKCS12 SSL
keyArchive=Key archive
";

    #[test]
    fn realistic_dtrust_properties() {
        let properties = parse(DTRUST);
        assert_eq!(
            pairs(DTRUST),
            [
                pair("url", "https://cmc.d-trust.net/rest/"),
                pair(
                    "p12File",
                    "CSMWM447922870184925_neXus_Technology_GmbH_2015_SSL.p12"
                ),
                pair("p12Password", "123456"),
                pair("serverCertificate", "D-TRUST_SSL_Class_3_CA_1_2009.cer"),
                pair("certificateTemplates", "SSL-Basic;SSL-OV;Personal-Sig"),
                pair("tokenProcedure.SSL-Basic", "TP PKCS12 SSL"),
                pair("keyArchive", "Key archive"),
            ]
        );
        assert_eq!(
            properties.entry("tokenProcedure.SSL-Basic").map(|e| e.line),
            Some(8)
        );
        assert_eq!(
            properties.entry("certificateTemplates").map(|e| e.line),
            Some(6)
        );
        assert!(properties.duplicate_keys().is_empty());
    }

    fn rewritten(text: &str, remove: &[&str], set: Option<(&str, &str)>) -> String {
        match rewrite(text, remove, set) {
            Ok(text) => text,
            Err(error) => panic!("{text:?} does not parse: {error}"),
        }
    }

    #[test]
    fn rewrite_removes_entries_and_sets_url_keeping_comments() {
        let text = "# REST interface\r\nurl=https://old.example/rest/\r\n\r\n# JAXB names\r\nnamespaceURI=http://\\\r\n    example/ns\r\nlocalPart=issue\r\n! keep me\r\nkeyArchive=Key archive\r\n";
        let out = rewritten(
            text,
            &["namespaceURI", "localPart"],
            Some(("url", "https://cmc.d-trust.net/rest/")),
        );
        assert_eq!(
            out,
            "# REST interface\r\nurl=https://cmc.d-trust.net/rest/\r\n\r\n# JAXB names\r\n! keep me\r\nkeyArchive=Key archive\r\n"
        );
        let properties = parse(&out);
        assert_eq!(properties.get("url"), Some("https://cmc.d-trust.net/rest/"));
        assert_eq!(properties.get("namespaceURI"), None);
        assert_eq!(properties.get("localPart"), None);
        assert_eq!(properties.get("keyArchive"), Some("Key archive"));
    }

    #[test]
    fn rewrite_replaces_first_occurrence_and_drops_later_duplicates() {
        let text = "a=1\nurl=old\nb=2\nurl=older\\\n  still\nc=3";
        assert_eq!(
            rewritten(text, &[], Some(("url", "new value"))),
            "a=1\nurl=new value\nb=2\nc=3"
        );
        // A key both removed and set is set.
        assert_eq!(
            rewritten(text, &["url"], Some(("url", "x"))),
            "a=1\nurl=x\nb=2\nc=3"
        );
        // The last entry keeps its lack of a final terminator.
        assert_eq!(
            rewritten("a=1\nurl=old", &[], Some(("url", "x"))),
            "a=1\nurl=x"
        );
    }

    #[test]
    fn rewrite_appends_with_the_text_terminator() {
        assert_eq!(rewritten("a=1\n", &[], Some(("url", "x"))), "a=1\nurl=x\n");
        assert_eq!(rewritten("a=1", &[], Some(("url", "x"))), "a=1\nurl=x\n");
        assert_eq!(
            rewritten("a=1\r\nb=2", &[], Some(("url", "x"))),
            "a=1\r\nb=2\r\nurl=x\r\n"
        );
        assert_eq!(rewritten("a=1\r", &[], Some(("url", "x"))), "a=1\rurl=x\r");
        assert_eq!(rewritten("", &[], Some(("url", "x"))), "url=x\n");
        assert_eq!(
            rewritten("# c", &[], Some(("k y", " v"))),
            "# c\nk\\ y=\\ v\n"
        );
        assert_eq!(rewritten("a=1\n", &["a"], Some(("url", "x"))), "url=x\n");
    }

    #[test]
    fn rewrite_without_set_only_removes() {
        assert_eq!(rewritten(DTRUST, &[], None), DTRUST);
        assert_eq!(
            rewritten(
                DTRUST,
                &["certificateTemplates", "p12Password", "absent"],
                None
            ),
            DTRUST.replace("p12Password=123456\n", "").replace(
                "certificateTemplates=SSL-Basic;SSL-OV;\\\n    Personal-Sig\n",
                ""
            )
        );
        assert_eq!(rewritten("a=1\nb=2", &["b"], None), "a=1\n");
    }

    #[test]
    fn rewrite_never_joins_the_new_line_to_an_open_continuation() {
        for text in ["a=1\\", "a=1\\\n", "a=1\\\r\n", "a=1\\\n  ", "b=0\na=1\\\r"] {
            let out = rewritten(text, &[], Some(("url", "x")));
            let properties = parse(&out);
            assert_eq!(properties.get("url"), Some("x"), "{text:?} -> {out:?}");
            assert_eq!(properties.get("a"), Some("1"), "{text:?} -> {out:?}");
        }
        assert_eq!(
            rewritten("b=0\na=1\\", &[], Some(("url", "x"))),
            "b=0\nurl=x\na=1\\"
        );
        // A comment ending in a backslash continues nothing.
        assert_eq!(
            rewritten("# c\\", &[], Some(("url", "x"))),
            "# c\\\nurl=x\n"
        );
    }

    #[test]
    fn rewrite_rejects_text_that_does_not_parse() {
        assert_eq!(
            rewrite("a=1\nb=\\uZZZZ", &["a"], None).map_err(|e| e.line),
            Err(2)
        );
    }

    /// Any char, with the ones that matter to the syntax much more often than chance.
    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => prop::sample::select(vec![
                ' ', '\t', '\x0c', '\n', '\r', '=', ':', '#', '!', '\\', 'u', 'D', '8', '0',
                'é', '\u{7f}', '\u{0}', '\u{FEFF}', '\u{FFFF}', '😀', '\u{10FFFF}',
            ]),
            2 => prop::char::range(' ', '~'),
            1 => any::<char>(),
        ]
    }

    fn any_string(min: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(any_char(), min..16).prop_map(|chars| chars.into_iter().collect())
    }

    /// Text made mostly of the characters that drive the syntax.
    fn syntax_text() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            6 => prop::sample::select(vec![
                'a', 'b', 'k', ' ', '\t', '\x0c', '\n', '\r', '=', ':', '#', '!', '\\', 'u', '0',
                'D', 'é', '😀',
            ]),
            1 => any::<char>(),
        ];
        prop::collection::vec(c, 0..80).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn format_entry_round_trips(
            entries in prop::collection::vec((any_string(1), any_string(0)), 0..8)
        ) {
            let lines: Vec<String> =
                entries.iter().map(|(key, value)| format_entry(key, value)).collect();
            let text = lines.join("\n");
            let properties = Properties::parse(&text);
            prop_assert!(properties.is_ok(), "{:?}: {:?}", text, properties);
            let parsed: Vec<(String, String)> = properties
                .unwrap_or_default()
                .entries()
                .iter()
                .map(|entry| (entry.key.clone(), entry.value.clone()))
                .collect();
            prop_assert_eq!(parsed, entries);
        }

        #[test]
        fn parse_never_panics(text in any::<String>(), syntax in syntax_text()) {
            let _ = Properties::parse(&text);
            let _ = Properties::parse(&syntax);
        }

        #[test]
        fn format_entry_is_printable_ascii(key in any_string(0), value in any_string(0)) {
            let line = format_entry(&key, &value);
            prop_assert!(line.chars().all(|c| (' '..='~').contains(&c)), "{:?}", line);
        }

        #[test]
        fn spans_are_ordered_and_line_numbers_match(text in syntax_text()) {
            if let Ok(properties) = Properties::parse(&text) {
                let mut previous_end = 0;
                for entry in properties.entries() {
                    prop_assert!(previous_end <= entry.span.start);
                    prop_assert!(entry.span.start < entry.span.end);
                    prop_assert!(entry.span.end <= text.len());
                    let before = text.get(..entry.span.start).unwrap_or_default();
                    let natural_lines =
                        before.matches(['\r', '\n']).count() - before.matches("\r\n").count();
                    prop_assert_eq!(entry.line, natural_lines + 1);
                    previous_end = entry.span.end;
                }
            }
        }

        #[test]
        fn rewrite_sets_removes_and_keeps_the_rest(
            text in syntax_text(),
            remove_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            key in any_string(0),
            value in any_string(0),
            set_existing in any::<Option<prop::sample::Index>>(),
        ) {
            let Ok(before) = Properties::parse(&text) else { return Ok(()); };
            let keys: Vec<&str> = before.entries().iter().map(|e| e.key.as_str()).collect();
            let key = match (set_existing, keys.is_empty()) {
                (Some(pick), false) => pick.get(&keys).to_string(),
                _ => key,
            };
            let remove: Vec<&str> = if keys.is_empty() {
                Vec::new()
            } else {
                remove_picks.iter().map(|pick| *pick.get(&keys)).filter(|k| *k != key).collect()
            };
            let out = rewrite(&text, &remove, Some((&key, &value)));
            prop_assert!(out.is_ok(), "{:?}", out);
            let out = out.unwrap_or_default();
            let after = Properties::parse(&out);
            prop_assert!(after.is_ok(), "{:?} -> {:?}: {:?}", text, out, after);
            let after = after.unwrap_or_default();
            prop_assert_eq!(after.get(&key), Some(value.as_str()), "{:?} -> {:?}", text, out);
            for removed in &remove {
                prop_assert_eq!(after.get(removed), None);
            }
            let others = |properties: &Properties| -> Vec<(String, String)> {
                properties
                    .entries()
                    .iter()
                    .filter(|e| e.key != key && !remove.contains(&e.key.as_str()))
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            };
            prop_assert_eq!(others(&after), others(&before), "{:?} -> {:?}", text, out);
            prop_assert_eq!(after.entries().iter().filter(|e| e.key == key).count(), 1);
            // Without changes the text comes back byte for byte.
            prop_assert_eq!(rewrite(&text, &[], None).ok(), Some(text.clone()));
        }
    }
}
