//! A fleet worker's body (`rnd=<int>` lines), cut into chunks anywhere. The
//! oracle is a line-at-a-time reading of the whole body: however the bytes
//! are chunked, the parser yields the same samples and the same junk
//! reasons, in order, and a well-formed line yields its value.

#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use tributary_fleet::line::{Item, JunkReason, LineParser, MAX_LINE, parse_line};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    body: Vec<u8>,
    /// Chunk lengths, used in turn; the rest of the body is the last chunk.
    cuts: Vec<u8>,
    clean_end: bool,
}

/// What an item says, without the quoted text (which may show a character
/// cut at a chunk boundary differently).
fn outline(items: &[Item]) -> Vec<Result<i64, JunkReason>> {
    items
        .iter()
        .map(|item| match item {
            Item::Sample(value) => Ok(*value),
            Item::Junk(junk) => Err(junk.reason),
        })
        .collect()
}

/// The body read whole, one line at a time.
fn expected(body: &[u8], clean_end: bool) -> Vec<Result<i64, JunkReason>> {
    let mut lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let last = lines.pop().unwrap_or_default();
    let mut out: Vec<_> = lines.into_iter().map(one).collect();
    if !last.is_empty() {
        out.push(match (clean_end, last.len() > MAX_LINE) {
            (_, true) => Err(JunkReason::TooLong),
            (true, false) => one(last),
            (false, false) => Err(JunkReason::CutOff),
        });
    }
    out
}

fn one(line: &[u8]) -> Result<i64, JunkReason> {
    if line.len() > MAX_LINE {
        return Err(JunkReason::TooLong);
    }
    parse_line(line.strip_suffix(b"\r").unwrap_or(line))
}

fuzz_target!(|input: Input| {
    let mut parser = LineParser::new();
    let mut items = Vec::new();
    let mut rest = input.body.as_slice();
    for cut in input.cuts.iter().map(|c| usize::from(*c)) {
        let (chunk, tail) = rest.split_at(cut.min(rest.len()));
        parser.feed(chunk, &mut items);
        rest = tail;
    }
    parser.feed(rest, &mut items);
    if input.clean_end {
        parser.finish(&mut items);
    } else {
        parser.abort(&mut items);
    }
    assert_eq!(outline(&items), expected(&input.body, input.clean_end));
    for item in &items {
        if let Item::Junk(junk) = item {
            assert!(junk.line.chars().count() <= 64);
        }
    }
});
