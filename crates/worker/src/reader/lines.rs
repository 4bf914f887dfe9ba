//! Reading lines as bytes, bounded: a line longer than [`MAX_LINE_BYTES`] is skipped without
//! being held in memory, and one that is not UTF-8 is reported by the caller as a bad line
//! (with its number) instead of failing the whole read.

use std::io::{self, BufRead};

/// Longest line parsed. Criteo lines are a few hundred bytes and a libsvm line of 10,000
/// features is about 200 KB; a longer one is a bad line (a 200 MB line once became a 209 MB
/// error message).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One line read by [`read_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line (its newline and any `\r` before it removed).
    Text(&'a str),
    /// A line that is not valid UTF-8: the offset of its first bad byte.
    NotUtf8(usize),
    /// A line over the limit: its length in bytes (it was consumed, not kept).
    TooLong(u64),
}

/// Reads the next line into `buf` (cleared first); `None` at the end of input.
pub fn read_line<'b>(reader: &mut dyn BufRead, buf: &'b mut Vec<u8>) -> io::Result<Option<Line<'b>>> {
    buf.clear();
    let mut len = 0u64;
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match memchr_newline(chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        len += take as u64;
        if !too_long {
            if buf.len() + take > MAX_LINE_BYTES + 1 {
                too_long = true;
                buf.clear();
                buf.shrink_to(MAX_LINE_BYTES);
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Some(Line::TooLong(len)));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(text) => Line::Text(text),
        Err(e) => Line::NotUtf8(e.valid_up_to()),
    }))
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// At most `max` characters of `text`, with an ellipsis if anything was cut: what a bad-line
/// sample shows to clients (never the whole line: it may be huge, or someone else's data).
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}...", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = io::BufReader::with_capacity(7, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut reader, &mut buf).unwrap() {
            out.push(format!("{line:?}"));
        }
        out
    }

    #[test]
    fn lines_split_and_bad_ones_are_named_not_fatal() {
        assert_eq!(lines(b"a\nbc\r\n\nlast"), ["Text(\"a\")", "Text(\"bc\")", "Text(\"\")", "Text(\"last\")"]);
        assert_eq!(lines(b"ok\n\xff\xfe\nafter\n"), ["Text(\"ok\")", "NotUtf8(0)", "Text(\"after\")"]);
        let mut long = vec![b'x'; MAX_LINE_BYTES + 10];
        long.extend_from_slice(b"\nnext\n");
        assert_eq!(lines(&long), [format!("TooLong({})", MAX_LINE_BYTES + 11), "Text(\"next\")".into()]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn excerpts_are_short_and_cut_on_characters() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("ééééé", 2), "éé...");
        assert_eq!(excerpt(&"x".repeat(10_000_000), 100).len(), 103);
    }
}
