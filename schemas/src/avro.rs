//! Moving between the record types and `apache_avro` values: the value apache-avro writes
//! for a record (`WireRecord::to_avro`, what the codec's own writer is checked against),
//! and a value it decoded, read as a [`Source`] (a record of an earlier version, resolved
//! to the current schema). Reading takes the value's strings and lists over rather than
//! copying them, field by field in the order of the current `.avsc`.

use apache_avro::types::Value;

use crate::codec::CodecError;
use crate::datum::Source;

/// A record value from `(name, value)` pairs in schema order.
pub(crate) fn record<const N: usize>(fields: [(&'static str, Value); N]) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    )
}

/// Branch `index` of a union.
pub(crate) fn branch(index: u32, value: Value) -> Value {
    Value::Union(index, Box::new(value))
}

/// A `["null", T]` union.
pub(crate) fn nullable<T>(value: Option<T>, to_avro: impl FnOnce(T) -> Value) -> Value {
    match value {
        None => branch(0, Value::Null),
        Some(value) => branch(1, to_avro(value)),
    }
}

pub(crate) fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

pub(crate) fn strings(texts: &[String]) -> Value {
    Value::Array(
        texts
            .iter()
            .map(|text| Value::String(text.clone()))
            .collect(),
    )
}

pub(crate) fn timestamp(millis: i64) -> Value {
    Value::TimestampMillis(millis)
}

/// A value apache-avro decoded (and resolved to the current schema), read as a [`Source`].
pub(crate) struct ValueReader(std::vec::IntoIter<(String, Value)>);

impl ValueReader {
    pub(crate) fn new(value: Value) -> ValueReader {
        ValueReader(vec![(String::new(), value)].into_iter())
    }

    fn next(&mut self) -> Result<Value, CodecError> {
        self.0.next().map(|(_, value)| value).ok_or(CodecError::Shape("missing field"))
    }
}

impl Source for ValueReader {
    fn string(&mut self) -> Result<String, CodecError> {
        match self.next()? {
            Value::String(text) => Ok(text),
            _ => Err(CodecError::Shape("string")),
        }
    }

    fn boolean(&mut self) -> Result<bool, CodecError> {
        match self.next()? {
            Value::Boolean(value) => Ok(value),
            _ => Err(CodecError::Shape("boolean")),
        }
    }

    fn array<T>(&mut self, mut read: impl FnMut(&mut Self) -> Result<T, CodecError>) -> Result<Vec<T>, CodecError> {
        match self.next()? {
            Value::Array(items) => items.into_iter().map(|item| read(&mut ValueReader::new(item))).collect(),
            _ => Err(CodecError::Shape("array")),
        }
    }

    fn timestamp(&mut self) -> Result<i64, CodecError> {
        match self.next()? {
            Value::TimestampMillis(millis) | Value::Long(millis) => Ok(millis),
            _ => Err(CodecError::Shape("timestamp-millis")),
        }
    }

    fn int_as<N: TryFrom<i32> + Default>(&mut self, what: &'static str) -> Result<N, CodecError> {
        match self.next()? {
            Value::Int(number) => N::try_from(number).map_err(|_| CodecError::Shape(what)),
            _ => Err(CodecError::Shape("int")),
        }
    }

    fn symbol_index(&mut self, symbols: usize) -> Result<usize, CodecError> {
        match self.next()? {
            Value::Enum(index, _) if (index as usize) < symbols => Ok(index as usize),
            Value::Enum(..) => Err(CodecError::Shape("enum symbol")),
            _ => Err(CodecError::Shape("enum")),
        }
    }

    fn null(&mut self) -> Result<(), CodecError> {
        match self.next()? {
            Value::Null => Ok(()),
            _ => Err(CodecError::Shape("null")),
        }
    }

    fn record<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, CodecError>) -> Result<T, CodecError> {
        match self.next()? {
            Value::Record(fields) => read(&mut ValueReader(fields.into_iter())),
            _ => Err(CodecError::Shape("record")),
        }
    }

    fn union<T>(
        &mut self,
        branches: usize,
        read: impl FnOnce(&mut Self, usize) -> Result<T, CodecError>,
    ) -> Result<T, CodecError> {
        match self.next()? {
            Value::Union(index, value) if (index as usize) < branches => {
                read(&mut ValueReader::new(*value), index as usize)
            }
            Value::Union(..) => Err(CodecError::Shape("union branch")),
            _ => Err(CodecError::Shape("union")),
        }
    }
}
