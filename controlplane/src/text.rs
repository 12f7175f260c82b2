//! Text that came from outside (request fields, server answers) on its way to a log line, an
//! error message or a terminal: control characters (NUL, newline, ESC of an ANSI sequence) and
//! the invisible format characters that reorder or hide text (bidi overrides and isolates,
//! zero-width characters) are written as escapes, and echoes are cut short, so an input can
//! neither forge output lines nor blow up a message.

use std::fmt::Write as _;

/// Characters of an input an error message echoes at most.
pub const ECHO_CHARS: usize = 64;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls and DEL, and the format
/// characters that change how surrounding text is shown (bidi marks, embeddings, overrides and
/// isolates, zero-width characters, line and paragraph separators, the BOM, tag characters).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        )
        || ('\u{E0000}'..='\u{E007F}').contains(&c)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` with every unsafe character written as an escape (`\n`, `\u{1b}`, `\u{202e}`); everything
/// else as it is. For text shown to an operator (`sluicectl`).
pub fn escape(s: &str) -> String {
    if !s.chars().any(is_unsafe_char) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) { push_escaped(&mut out, c) } else { out.push(c) }
    }
    out
}

/// `s` as an error message echoes it: in double quotes, `"` and `\` escaped like unsafe
/// characters, cut after [`ECHO_CHARS`] characters with an ellipsis and its full length.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for (n, c) in s.chars().enumerate() {
        if n == ECHO_CHARS {
            let _ = write!(out, "\"… ({} bytes)", s.len());
            return out;
        }
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_unsafe_char(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serialized JSON with the unsafe characters inside its strings written as `\uXXXX` escapes
/// (serde_json escapes only those below U+0020); the newlines that lay out pretty-printed JSON
/// stay (inside strings serde_json already wrote them as `\n`).
pub fn json_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && is_unsafe_char(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One character of an input, named for an error message: `'x'`, or `U+001B` for one that must
/// not be shown.
pub fn describe_char(c: char) -> String {
    if is_unsafe_char(c) || c == '\'' || c == '\\' { format!("U+{:04X}", u32::from(c)) } else { format!("'{c}'") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_echoes_are_cut() {
        assert_eq!(escape("plain-id_1"), "plain-id_1");
        assert_eq!(escape("a\nb\0c\u{1b}[31md\u{202e}e\u{2066}é"), "a\\nb\\0c\\u{1b}[31md\\u{202e}e\\u{2066}é");
        assert_eq!(escape("\u{85}\u{7f}\u{feff}\u{e0041}"), "\\u{85}\\u{7f}\\u{feff}\\u{e0041}");
        assert_eq!(quote("x\"y\\z\n"), "\"x\\\"y\\\\z\\n\"");
        let long = "k".repeat(1 << 20);
        let q = quote(&long);
        assert!(q.len() < 100 && q.ends_with("\"… (1048576 bytes)"), "{q}");
        assert_eq!(quote(&"é".repeat(64)), format!("\"{}\"", "é".repeat(64)), "exactly 64 characters: not cut");
        assert_eq!(describe_char('\u{202e}'), "U+202E");
        assert_eq!(describe_char(' '), "' '");
        let json = "{\n  \"id\": \"a\u{202e}b\u{85}c\u{e0041}\"\n}";
        assert_eq!(json_escape(json), "{\n  \"id\": \"a\\u202eb\\u0085c\\udb40\\udc41\"\n}");
        let v: serde_json::Value = serde_json::from_str(&json_escape(json)).unwrap();
        assert_eq!(v["id"], "a\u{202e}b\u{85}c\u{e0041}", "still the same JSON value");
    }
}
