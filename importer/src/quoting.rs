//! What the `csv` crate does not tell: it reads any input (it has no strict mode, see
//! rust-csv issues #77 and #289), so a quote left open swallows every row after it into one
//! field and `"bad"quote` becomes `badquote`; and the line it gives a record is where the
//! previous record's line end was, one too low after CRLF or a blank line.
//!
//! [`Watched`] hands the bytes the `csv` reader reads to a [`Quoting`], which follows the
//! same RFC 4180 rules as the reader (delimiter `,`, quote `"`, lines ending in LF, CRLF or
//! CR, blank lines skipped) and notes where each record starts (its line) and every quote
//! out of place (line, column, field). The reader still does the parsing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;

/// A quote out of place in a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Byte offset in the input.
    pub offset: u64,
    pub line: u64,
    /// Column (characters, 1-based) of the first character out of place.
    pub column: u64,
    /// Position of the field in its record (0-based).
    pub field: usize,
    /// What is out of place.
    pub what: StrayKind,
}

/// The two ways a quote can be out of place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrayKind {
    /// A quote inside a field that does not start with one (`bad"quote`).
    QuoteInside,
    /// Something other than `,` or a line end after a closing quote (`"bad"quote`).
    AfterClosingQuote,
}

/// Where a quoted field opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub offset: u64,
    pub line: u64,
    pub column: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records (blank lines are skipped here).
    RecordStart,
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first of `""`.
    QuoteInQuoted,
}

/// Follows the input byte by byte; see the module's documentation.
#[derive(Debug)]
pub struct Quoting {
    state: State,
    offset: u64,
    line: u64,
    column: u64,
    field: usize,
    /// The current field has a problem already (one is reported per field).
    field_reported: bool,
    opened: Option<Opened>,
    /// Byte offset and line of each record start not yet asked for.
    starts: VecDeque<(u64, u64)>,
    strays: VecDeque<Stray>,
    /// The last byte was a CR (a LF after it ends no second line).
    after_cr: bool,
    /// The input ended; `Some` if it ended inside a quoted field.
    ended: Option<Option<Opened>>,
}

impl Default for Quoting {
    fn default() -> Self {
        Self {
            state: State::RecordStart,
            offset: 0,
            line: 1,
            column: 1,
            field: 0,
            field_reported: false,
            opened: None,
            starts: VecDeque::new(),
            strays: VecDeque::new(),
            after_cr: false,
            ended: None,
        }
    }
}

impl Quoting {
    /// Follows `bytes`, the next part of the input.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            self.offset += 1;
            if b == b'\r' || (b == b'\n' && !after_cr) {
                self.line += 1;
                self.column = 1;
            } else if b == b'\n' {
                // The LF of a CRLF.
            } else if b & 0xC0 != 0x80 {
                // Not a UTF-8 continuation byte: one more character.
                self.column += 1;
            }
        }
    }

    /// The input ended.
    pub fn finish(&mut self) {
        if self.ended.is_none() {
            self.ended = Some(
                (self.state == State::Quoted)
                    .then_some(self.opened)
                    .flatten(),
            );
        }
    }

    /// Where a quoted field opened that the input never closed (known once it ended).
    pub fn unterminated(&self) -> Option<Opened> {
        self.ended.flatten()
    }

    fn stray(&mut self, what: StrayKind) {
        if !self.field_reported {
            self.field_reported = true;
            self.strays.push_back(Stray {
                offset: self.offset,
                line: self.line,
                column: self.column,
                field: self.field,
                what,
            });
        }
    }

    fn next_field(&mut self) {
        self.field += 1;
        self.field_reported = false;
        self.state = State::FieldStart;
    }

    fn step(&mut self, b: u8) {
        let line_end = b == b'\n' || b == b'\r';
        match self.state {
            State::RecordStart => {
                if line_end {
                    return;
                }
                self.starts.push_back((self.offset, self.line));
                self.field = 0;
                self.field_reported = false;
                self.state = State::FieldStart;
                self.step(b);
            }
            State::FieldStart => match b {
                b'"' => {
                    self.opened = Some(Opened {
                        offset: self.offset,
                        line: self.line,
                        column: self.column,
                    });
                    self.state = State::Quoted;
                }
                b',' => self.next_field(),
                _ if line_end => self.state = State::RecordStart,
                _ => self.state = State::Unquoted,
            },
            State::Unquoted => match b {
                b'"' => self.stray(StrayKind::QuoteInside),
                b',' => self.next_field(),
                _ if line_end => self.state = State::RecordStart,
                _ => {}
            },
            State::Quoted => {
                if b == b'"' {
                    self.state = State::QuoteInQuoted;
                }
            }
            State::QuoteInQuoted => match b {
                b'"' => self.state = State::Quoted,
                b',' => self.next_field(),
                _ if line_end => self.state = State::RecordStart,
                _ => {
                    // The csv reader goes on as in an unquoted field.
                    self.stray(StrayKind::AfterClosingQuote);
                    self.state = State::Unquoted;
                }
            },
        }
    }

    /// The line of the record the csv reader says starts at byte `offset` (which may point
    /// at the line end before it); records must be asked for in order.
    pub fn line_of_record_at(&mut self, offset: u64) -> Option<u64> {
        while self
            .starts
            .front()
            .is_some_and(|&(start, _)| start < offset)
        {
            self.starts.pop_front();
        }
        self.starts.front().map(|&(_, line)| line)
    }

    /// The quotes out of place before byte `end` (the end of the record just read).
    pub fn strays_before(&mut self, end: u64) -> Vec<Stray> {
        let mut found = Vec::new();
        while self.strays.front().is_some_and(|s| s.offset < end) {
            found.extend(self.strays.pop_front());
        }
        found
    }
}

/// A reader that shows every byte read through it to a [`Quoting`].
pub struct Watched<R> {
    inner: R,
    quoting: Rc<RefCell<Quoting>>,
}

impl<R: Read> Watched<R> {
    /// `inner`, followed by `quoting`.
    pub fn new(inner: R, quoting: Rc<RefCell<Quoting>>) -> Self {
        Self { inner, quoting }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut quoting = self.quoting.borrow_mut();
        if n == 0 && !buf.is_empty() {
            quoting.finish();
        } else {
            quoting.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// `input` without a UTF-8 byte order mark at its start.
pub fn without_bom(mut input: impl Read) -> io::Result<impl Read> {
    let mut start = [0u8; 3];
    let mut filled = 0;
    while filled < 3 {
        match input.read(&mut start[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kept = if start[..filled] == [0xEF, 0xBB, 0xBF] {
        Vec::new()
    } else {
        start[..filled].to_vec()
    };
    Ok(io::Cursor::new(kept).chain(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(text: &str) -> Quoting {
        let mut quoting = Quoting::default();
        quoting.feed(text.as_bytes());
        quoting.finish();
        quoting
    }

    #[test]
    fn record_starts_are_found_after_crlf_cr_and_blank_lines() {
        let mut q = follow("a,b\r\n1,2\r\n\r\n3,\"x\r\ny\"\r4,5\n\n6,7");
        let lines: Vec<u64> = q.starts.iter().map(|&(_, line)| line).collect();
        // A lone CR ends a line too (as in editors).
        assert_eq!(lines, [1, 2, 4, 6, 8]);
        // The csv reader's offset may point at the line end before the record.
        assert_eq!(q.line_of_record_at(0), Some(1));
        assert_eq!(q.line_of_record_at(4), Some(2));
        assert_eq!(q.line_of_record_at(9), Some(4));
        assert!(q.unterminated().is_none());
        assert!(q.strays.is_empty());
    }

    #[test]
    fn an_open_quote_at_the_end_is_named_where_it_opened() {
        let q = follow("a,b\n1,2\n3,\"four\n5,6\n7,8\n");
        assert_eq!(
            q.unterminated(),
            Some(Opened {
                offset: 10,
                line: 3,
                column: 3
            })
        );
        // A closed quote is not open, even as the very last byte.
        assert!(follow("a,b\n1,\"2\"").unterminated().is_none());
        assert!(follow("a,b\n1,\"2\"\"\"").unterminated().is_none());
    }

    #[test]
    fn quotes_out_of_place_are_named_by_line_column_and_field() {
        let mut q = follow("a,b,c\n1,\"bad\"quote,3\n\"ok \"\"quoted\"\"\",b\"ad,é\"\n");
        let strays = q.strays_before(u64::MAX);
        assert_eq!(
            strays
                .iter()
                .map(|s| (s.line, s.column, s.field, s.what))
                .collect::<Vec<_>>(),
            [
                (2, 8, 1, StrayKind::AfterClosingQuote),
                (3, 18, 1, StrayKind::QuoteInside),
                (3, 23, 2, StrayKind::QuoteInside),
            ]
        );
    }

    #[test]
    fn a_bom_is_left_out() {
        let mut text = String::new();
        without_bom("\u{feff}url".as_bytes())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "url");
        for plain in ["", "u", "url,id"] {
            let mut text = String::new();
            without_bom(plain.as_bytes())
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, plain);
        }
    }
}
