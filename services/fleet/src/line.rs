//! The streaming parser of a worker's body: `rnd=<int>\n` lines, in chunks
//! that may split a line anywhere or carry many lines at once.
//!
//! It is a pure state machine (bytes in, items out) so that it can be
//! tested on every chunking without a socket.

/// The longest line kept while waiting for its newline. A valid line is at
/// most 24 bytes (`rnd=` and an i64 with its sign); past this bound the rest
/// of the line is skipped and reported, so that a worker streaming garbage
/// without newlines cannot grow the buffer without limit.
pub const MAX_LINE: usize = 256;

/// How much of a junk line a report quotes.
const QUOTE: usize = 64;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A well-formed `rnd=<int>` line.
    Sample(i64),
    /// A line that is not one; it is skipped.
    Junk(Junk),
}

/// A skipped line and why it was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Junk {
    /// The start of the line, lossily decoded, at most 64 characters.
    pub line: String,
    /// What is wrong with it.
    pub reason: JunkReason,
}

/// What makes a line junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JunkReason {
    /// The line does not start with `rnd=`.
    #[error("the line does not start with `rnd=`")]
    NoPrefix,
    /// The text after `rnd=` is not a decimal integer.
    #[error("the value is not a decimal integer")]
    NotANumber,
    /// The value does not fit in a signed 64-bit integer.
    #[error("the value does not fit in 64 bits")]
    OutOfRange,
    /// The line is longer than [`MAX_LINE`] bytes.
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    /// The stream broke in the middle of this line, so it may be cut short
    /// (`rnd=12` of `rnd=123`) and cannot be trusted.
    #[error("the stream broke in the middle of the line")]
    CutOff,
}

/// Parses one line, without its line ending.
pub fn parse_line(line: &[u8]) -> Result<i64, JunkReason> {
    let digits = line.strip_prefix(b"rnd=").ok_or(JunkReason::NoPrefix)?;
    let magnitude = digits
        .strip_prefix(b"-")
        .or_else(|| digits.strip_prefix(b"+"))
        .unwrap_or(digits);
    if magnitude.is_empty() || !magnitude.iter().all(u8::is_ascii_digit) {
        return Err(JunkReason::NotANumber);
    }
    // Only ASCII digits and a sign remain, so the text is valid UTF-8 and the
    // one way left for `parse` to fail is overflow.
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or(JunkReason::OutOfRange)
}

/// The parser state: the unfinished line carried from one chunk to the next.
#[derive(Debug, Default)]
pub struct LineParser {
    pending: Vec<u8>,
    /// The current line passed [`MAX_LINE`]; its bytes are being skipped up
    /// to the next newline.
    overlong: bool,
}

impl LineParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one chunk, appending every line it completes to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(newline);
            chunk = &rest[1..];
            if self.overlong {
                self.overlong = false;
                self.pending.clear();
                continue;
            }
            if self.pending.is_empty() {
                out.push(item(head));
            } else {
                self.append(head, out);
                if !self.overlong {
                    out.push(item(&self.pending));
                }
                self.overlong = false;
                self.pending.clear();
            }
        }
        if !self.overlong {
            self.append(chunk, out);
        }
    }

    /// The stream ended cleanly: a last line without its newline counts.
    pub fn finish(&mut self, out: &mut Vec<Item>) {
        if !self.overlong && !self.pending.is_empty() {
            out.push(item(&self.pending));
        }
        self.reset();
    }

    /// The stream broke: a partial last line is reported, never counted.
    pub fn abort(&mut self, out: &mut Vec<Item>) {
        if !self.overlong && !self.pending.is_empty() {
            out.push(Item::Junk(junk(&self.pending, JunkReason::CutOff)));
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.overlong = false;
    }

    /// Adds bytes to the unfinished line, switching to skipping once the
    /// line is too long.
    fn append(&mut self, bytes: &[u8], out: &mut Vec<Item>) {
        if self.pending.len() + bytes.len() > MAX_LINE {
            let mut quoted = std::mem::take(&mut self.pending);
            quoted.extend_from_slice(&bytes[..bytes.len().min(QUOTE)]);
            out.push(Item::Junk(junk(&quoted, JunkReason::TooLong)));
            self.overlong = true;
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }
}

fn item(line: &[u8]) -> Item {
    // The length is checked with any `\r` still on, as `append` counts it
    // for a line that spans chunks: a line is junk or not whatever the
    // chunking.
    if line.len() > MAX_LINE {
        return Item::Junk(junk(line, JunkReason::TooLong));
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match parse_line(line) {
        Ok(value) => Item::Sample(value),
        Err(reason) => Item::Junk(junk(line, reason)),
    }
}

fn junk(line: &[u8], reason: JunkReason) -> Junk {
    let shown: String = String::from_utf8_lossy(line).chars().take(QUOTE).collect();
    Junk {
        line: shown,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse_chunks(chunks: &[&[u8]], clean_end: bool) -> Vec<Item> {
        let mut parser = LineParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        if clean_end {
            parser.finish(&mut out);
        } else {
            parser.abort(&mut out);
        }
        out
    }

    fn samples(items: &[Item]) -> Vec<i64> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Sample(v) => Some(*v),
                Item::Junk(_) => None,
            })
            .collect()
    }

    fn reasons(items: &[Item]) -> Vec<JunkReason> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Junk(j) => Some(j.reason),
                Item::Sample(_) => None,
            })
            .collect()
    }

    #[test]
    fn lines_split_and_merged_across_chunks() {
        let items = parse_chunks(&[b"rnd=1\nrn", b"d=22", b"\nrnd=333\nrnd=4\n"], true);
        assert_eq!(samples(&items), vec![1, 22, 333, 4]);
        assert!(reasons(&items).is_empty());
    }

    #[test]
    fn extreme_values_and_overflow() {
        let items = parse_chunks(
            &[b"rnd=9223372036854775807\nrnd=-9223372036854775808\nrnd=9223372036854775808\n"],
            true,
        );
        assert_eq!(samples(&items), vec![i64::MAX, i64::MIN]);
        assert_eq!(reasons(&items), vec![JunkReason::OutOfRange]);
    }

    #[test]
    fn junk_is_reported_and_skipped() {
        let items = parse_chunks(
            &[b"hello\nrnd=\nrnd=12x\n\nrnd=5\r\nRND=6\nrnd= 7\nrnd=8\n"],
            true,
        );
        assert_eq!(samples(&items), vec![5, 8]);
        assert_eq!(
            reasons(&items),
            vec![
                JunkReason::NoPrefix,
                JunkReason::NotANumber,
                JunkReason::NotANumber,
                JunkReason::NoPrefix,
                JunkReason::NoPrefix,
                JunkReason::NotANumber,
            ]
        );
        let Item::Junk(first) = &items[0] else {
            panic!("the first line is junk")
        };
        assert_eq!(first.line, "hello");
    }

    #[test]
    fn missing_final_newline_counts_only_on_a_clean_end() {
        assert_eq!(samples(&parse_chunks(&[b"rnd=1\nrnd=2"], true)), vec![1, 2]);
        let broken = parse_chunks(&[b"rnd=1\nrnd=2"], false);
        assert_eq!(samples(&broken), vec![1]);
        assert_eq!(reasons(&broken), vec![JunkReason::CutOff]);
    }

    #[test]
    fn an_overlong_line_is_skipped_up_to_its_newline() {
        let long = vec![b'7'; MAX_LINE * 3];
        let mut parser = LineParser::new();
        let mut out = Vec::new();
        parser.feed(b"rnd=1\nrnd=", &mut out);
        for piece in long.chunks(100) {
            parser.feed(piece, &mut out);
        }
        parser.feed(b"\nrnd=2\n", &mut out);
        parser.finish(&mut out);
        assert_eq!(samples(&out), vec![1, 2]);
        assert_eq!(reasons(&out), vec![JunkReason::TooLong]);
        assert!(parser.pending.capacity() <= MAX_LINE * 2);
    }

    /// A line of a generated stream: a number or a piece of junk.
    #[derive(Debug, Clone)]
    enum Line {
        Number(i64),
        Junk(String),
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            4 => any::<i64>().prop_map(Line::Number),
            1 => "[a-z =!]{0,12}".prop_map(Line::Junk),
        ]
    }

    proptest! {
        /// Any split of a valid stream parses to the same numbers and the
        /// same junk, with or without a final newline.
        #[test]
        fn any_chunking_parses_the_same(
            lines in prop::collection::vec(line(), 0..40),
            crlf in any::<bool>(),
            final_newline in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let ending: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut stream = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                match line {
                    Line::Number(v) => stream.extend_from_slice(format!("rnd={v}").as_bytes()),
                    Line::Junk(s) => stream.extend_from_slice(s.as_bytes()),
                }
                if i + 1 < lines.len() || final_newline {
                    stream.extend_from_slice(ending);
                }
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();

            let whole = parse_chunks(&[&stream], true);
            let split = parse_chunks(&chunks, true);
            prop_assert_eq!(&split, &whole);

            let want: Vec<i64> = lines.iter().filter_map(|l| match l {
                Line::Number(v) => Some(*v),
                Line::Junk(_) => None,
            }).collect();
            prop_assert_eq!(samples(&split), want);
            // A junk line is reported, except an empty last line with no
            // newline, which is no line at all.
            let junk_lines = lines.iter().enumerate().filter(|(i, l)| match l {
                Line::Junk(s) => !(s.is_empty() && *i + 1 == lines.len() && !final_newline),
                Line::Number(_) => false,
            }).count();
            prop_assert_eq!(reasons(&split).len(), junk_lines);
        }
    }
}
