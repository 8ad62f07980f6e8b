//! The Avro binary form of the record types, written and read without going through
//! apache-avro's `Value`: the codec's path for records of the current schema. Each record
//! type lists its fields once for writing ([`Datum::write`]) and once for reading
//! ([`Datum::read`], from any [`Source`]: these bytes, or a value apache-avro decoded and
//! resolved from an earlier version). Property tests (`tests/codec.rs`) check both against
//! apache-avro with the registered schemas: the same bytes as `to_avro_datum` writes for
//! the record's value (`WireRecord::to_avro`, which names every field), and the same
//! records and refusals as `from_avro_datum` reads.

use apache_avro::types::Value;

use crate::codec::CodecError;

/// A record of the contracts, or a record nested in one. Public only as the supertrait of
/// `WireRecord`: other crates can neither name nor implement it.
pub trait Datum: Sized {
    /// Appends the Avro binary datum: the fields in schema order.
    fn write(&self, out: &mut Writer);
    /// Reads the fields in schema order.
    fn read<S: Source>(input: &mut S) -> Result<Self, CodecError>;
}

/// An Avro enum of the contracts: its symbols, in the order of the `.avsc`.
pub trait Symbols: Sized + Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    fn symbol(self) -> &'static str;

    /// Its position in the schema's symbols, which is what the datum holds.
    fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    fn to_avro(self) -> Value {
        Value::Enum(self.index() as u32, self.symbol().to_owned())
    }
}

/// An Avro binary datum being written.
pub struct Writer(Vec<u8>);

impl Writer {
    /// Writes after `bytes`.
    pub(crate) fn after(bytes: Vec<u8>) -> Writer {
        Writer(bytes)
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// A `long` (an `int` too): zig-zag, then 7 bits a byte, the lowest first.
    pub fn long(&mut self, n: i64) {
        let mut zigzag = ((n << 1) ^ (n >> 63)) as u64;
        while zigzag > 0x7F {
            self.0.push(zigzag as u8 | 0x80);
            zigzag >>= 7;
        }
        self.0.push(zigzag as u8);
    }

    pub fn int(&mut self, n: i32) {
        self.long(n.into());
    }

    pub fn timestamp(&mut self, millis: i64) {
        self.long(millis);
    }

    /// Its length in bytes, then its UTF-8.
    pub fn string(&mut self, text: &str) {
        self.long(text.len() as i64);
        self.0.extend_from_slice(text.as_bytes());
    }

    /// An array as apache-avro writes it: one block of every item, then the empty block.
    pub fn array<T>(&mut self, items: &[T], mut write: impl FnMut(&mut Self, &T)) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for item in items {
                write(self, item);
            }
        }
        self.long(0);
    }

    pub fn strings(&mut self, texts: &[String]) {
        self.array(texts, |out, text| out.string(text));
    }

    pub fn boolean(&mut self, value: bool) {
        self.0.push(u8::from(value));
    }

    pub fn symbol<T: Symbols>(&mut self, symbol: T) {
        self.int(symbol.index() as i32);
    }

    /// The index of a union's branch; the branch's value follows.
    pub fn branch(&mut self, index: u32) {
        self.long(index.into());
    }

    /// A `["null", T]` union.
    pub fn nullable<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.branch(0),
            Some(value) => {
                self.branch(1);
                write(self, value);
            }
        }
    }

    pub fn nullable_string(&mut self, text: Option<&str>) {
        self.nullable(text, Self::string);
    }
}

/// Where a record's fields are read from, in schema order.
pub trait Source: Sized {
    fn string(&mut self) -> Result<String, CodecError>;
    fn boolean(&mut self) -> Result<bool, CodecError>;
    /// An array whose items `read` reads, one at a time.
    fn array<T>(&mut self, read: impl FnMut(&mut Self) -> Result<T, CodecError>) -> Result<Vec<T>, CodecError>;
    fn timestamp(&mut self) -> Result<i64, CodecError>;
    /// An `int` the record holds in a narrower type; one out of its range is a
    /// [`CodecError::Shape`] error naming `what`.
    fn int_as<N: TryFrom<i32> + Default>(&mut self, what: &'static str) -> Result<N, CodecError>;
    /// The index of an enum's symbol, of `symbols`.
    fn symbol_index(&mut self, symbols: usize) -> Result<usize, CodecError>;
    fn null(&mut self) -> Result<(), CodecError>;
    /// A nested record, whose fields `read` reads.
    fn record<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, CodecError>) -> Result<T, CodecError>;
    /// A union of `branches`: `read` reads the value of the branch it is given (one below
    /// `branches`).
    fn union<T>(
        &mut self,
        branches: usize,
        read: impl FnOnce(&mut Self, usize) -> Result<T, CodecError>,
    ) -> Result<T, CodecError>;

    fn symbol<T: Symbols>(&mut self) -> Result<T, CodecError> {
        let index = self.symbol_index(T::ALL.len())?;
        T::ALL.get(index).copied().ok_or(CodecError::Shape("enum symbol"))
    }

    /// A `["null", T]` union.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, CodecError>) -> Result<Option<T>, CodecError> {
        self.union(2, |input, branch| match branch {
            0 => input.null().map(|()| None),
            _ => read(input).map(Some),
        })
    }

    fn nullable_string(&mut self) -> Result<Option<String>, CodecError> {
        self.nullable(Self::string)
    }

    fn strings(&mut self) -> Result<Vec<String>, CodecError> {
        self.array(Self::string)
    }
}

/// An Avro binary datum being read. It refuses what apache-avro's decoder refuses, with
/// the same [`CodecError`] variant: a read past the end is [`CodecError::Truncated`] (as
/// the codec reports a datum apache-avro ran out of), and a malformed number, a negative
/// or oversized length, an enum or union index out of range or a string that is not UTF-8
/// is [`CodecError::Avro`].
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    /// The longest string and the most items of an array block it accepts.
    limit: usize,
    /// The first `int` the record's type cannot hold. apache-avro decodes the whole datum
    /// before the record is made of it, so any error further on comes before this one.
    misfit: Option<CodecError>,
}

impl<'a> Reader<'a> {
    /// The record made of the whole of `datum`.
    pub(crate) fn read_all<T: Datum>(datum: &'a [u8], limit: usize) -> Result<T, CodecError> {
        let mut reader = Reader { rest: datum, limit, misfit: None };
        let record = T::read(&mut reader)?;
        if !reader.rest.is_empty() {
            return Err(CodecError::TrailingBytes(reader.rest.len()));
        }
        reader.misfit.map_or(Ok(record), Err)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let (taken, rest) = self.rest.split_at_checked(len).ok_or(CodecError::Truncated)?;
        self.rest = rest;
        Ok(taken)
    }

    /// A zig-zag varint of at most 10 bytes; like apache-avro, bits past the 64th are
    /// dropped and an 11th byte is an error.
    fn long(&mut self) -> Result<i64, CodecError> {
        let mut zigzag = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.bytes(1)?[0];
            zigzag |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                let magnitude = (zigzag >> 1) as i64;
                return Ok(if zigzag & 1 == 0 { magnitude } else { !magnitude });
            }
        }
        Err(invalid("a varint longer than 10 bytes".into()))
    }

    fn int(&mut self) -> Result<i32, CodecError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| invalid(format!("{n} is not an int")))
    }

    /// A string's length or an array block's count.
    fn len(&self, n: i64) -> Result<usize, CodecError> {
        let len = usize::try_from(n).map_err(|_| invalid(format!("negative length {n}")))?;
        if len > self.limit {
            return Err(invalid(format!("length {len} is over the limit of {}", self.limit)));
        }
        Ok(len)
    }

    /// `Ok(index)` when `n` is below `count`.
    fn index(n: i64, count: usize, of: &str) -> Result<usize, CodecError> {
        usize::try_from(n)
            .ok()
            .filter(|index| *index < count)
            .ok_or_else(|| invalid(format!("index {n} of {count} {of}")))
    }
}

impl Source for Reader<'_> {
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.long()?;
        let len = self.len(n)?;
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| invalid(e.to_string()))
    }

    /// A byte 0 or 1; apache-avro refuses any other.
    fn boolean(&mut self) -> Result<bool, CodecError> {
        match self.bytes(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(invalid(format!("{byte} is not a boolean"))),
        }
    }

    /// Blocks of items up to the empty block; a block with a negative count gives its size
    /// in bytes next, which is skipped.
    fn array<T>(&mut self, mut read: impl FnMut(&mut Self) -> Result<T, CodecError>) -> Result<Vec<T>, CodecError> {
        let mut items = Vec::new();
        loop {
            let count = match self.long()? {
                0 => return Ok(items),
                n if n < 0 => {
                    self.long()?;
                    n.checked_neg().ok_or_else(|| invalid(format!("block count {n}")))?
                }
                n => n,
            };
            let count = self.len(count)?;
            // An item takes a byte at least: the rest of the datum bounds what to reserve.
            items.reserve(count.min(self.rest.len()));
            for _ in 0..count {
                items.push(read(self)?);
            }
        }
    }

    fn timestamp(&mut self) -> Result<i64, CodecError> {
        self.long()
    }

    fn int_as<N: TryFrom<i32> + Default>(&mut self, what: &'static str) -> Result<N, CodecError> {
        let n = self.int()?;
        Ok(N::try_from(n).unwrap_or_else(|_| {
            self.misfit.get_or_insert(CodecError::Shape(what));
            N::default()
        }))
    }

    fn symbol_index(&mut self, symbols: usize) -> Result<usize, CodecError> {
        let n = self.int()?;
        Self::index(n.into(), symbols, "enum symbols")
    }

    fn null(&mut self) -> Result<(), CodecError> {
        Ok(())
    }

    fn record<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, CodecError>) -> Result<T, CodecError> {
        read(self)
    }

    fn union<T>(
        &mut self,
        branches: usize,
        read: impl FnOnce(&mut Self, usize) -> Result<T, CodecError>,
    ) -> Result<T, CodecError> {
        let n = self.long()?;
        let branch = Self::index(n, branches, "union branches")?;
        read(self, branch)
    }
}

fn invalid(why: String) -> CodecError {
    CodecError::Avro(why)
}
