//! Text from the network on its way to a terminal: worker names, reasons
//! and module logs are shown to a person, so nothing a peer sends may move
//! the cursor, clear the screen or forge a line of muster's own.

use std::fmt::Write as _;

/// `text` with every control character (and Unicode's invisible format
/// characters, such as right-to-left overrides) written as a visible
/// escape: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`. Printable text is kept.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// One line of module output for a terminal: tabs and colour (SGR escape
/// sequences such as `\x1b[31m`) are kept, since build tools colour their
/// output; every other control character, including `\r` and cursor or
/// screen sequences, is shown escaped.
pub fn escape_log_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            if let Some(len) = sgr_len(rest) {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        if c == '\t' {
            out.push(c);
        } else {
            push_escaped(&mut out, c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The length of an SGR sequence (`ESC [ digits and ; m`) at the start of
/// `text`, if there is one.
fn sgr_len(text: &str) -> Option<usize> {
    let body = text.strip_prefix("\x1b[")?;
    let params = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (params <= 32 && body.as_bytes().get(params) == Some(&b'm')).then_some(2 + params + 1)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && c.is_control() => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c.is_control() || is_invisible_format(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Unicode format characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width characters).
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_every_control_character() {
        fn check(input: &str, expected: &str) {
            assert_eq!(escape(input), expected, "{input:?}");
        }
        check("local-1", "local-1");
        check("evil\n[hold] ** ok", "evil\\n[hold] ** ok");
        check("a\x1b[2Jb", "a\\x1b[2Jb");
        check("bell\x07 del\x7f", "bell\\x07 del\\x7f");
        check("cr\rtab\t", "cr\\rtab\\t");
        check("c1\u{9b}2J", "c1\\u{9b}2J");
        check("rtl\u{202e}txt", "rtl\\u{202e}txt");
        check("ünïcode ✓", "ünïcode ✓");
    }

    #[test]
    fn log_lines_keep_colour_and_tabs_only() {
        fn check(input: &str, expected: &str) {
            assert_eq!(escape_log_line(input), expected, "{input:?}");
        }
        check("\x1b[31merror\x1b[0m: x", "\x1b[31merror\x1b[0m: x");
        check("\x1b[1;32mok\x1b[m", "\x1b[1;32mok\x1b[m");
        check("a\tb", "a\tb");
        check(
            "progress 50%\rprogress 100%",
            "progress 50%\\rprogress 100%",
        );
        check("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H");
        check("\x1b]0;title\x07", "\\x1b]0;title\\x07");
        check("trailing \x1b[", "trailing \\x1b[");
        check("\x1b[31", "\\x1b[31");
    }
}
