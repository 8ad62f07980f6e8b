//! Moving between the record types and `apache_avro` values. Decoding takes the value's
//! strings and lists over rather than copying them (the decoder allocated them already),
//! reading fields by position: the codec always hands over a value of the current schema,
//! whose fields come in the order of its `.avsc`.

use apache_avro::types::Value;

use crate::codec::CodecError;

/// An Avro enum of the contracts: its symbols, in the order of the `.avsc`.
pub(crate) trait Symbols: Sized + Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    fn symbol(self) -> &'static str;

    fn to_avro(self) -> Value {
        let index = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Value::Enum(index as u32, self.symbol().to_owned())
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        match value {
            Value::Enum(index, _) => Self::ALL
                .get(index as usize)
                .copied()
                .ok_or(CodecError::Shape("enum symbol")),
            _ => Err(CodecError::Shape("enum")),
        }
    }
}

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

/// The selected branch of a union value, with its index.
pub(crate) fn union(value: Value) -> Result<(u32, Value), CodecError> {
    match value {
        Value::Union(index, inner) => Ok((index, *inner)),
        _ => Err(CodecError::Shape("union")),
    }
}

/// The fields of a record value, taken in schema order.
pub(crate) struct Fields(std::vec::IntoIter<(String, Value)>);

impl Fields {
    pub(crate) fn of(value: Value) -> Result<Fields, CodecError> {
        match value {
            Value::Record(fields) => Ok(Fields(fields.into_iter())),
            _ => Err(CodecError::Shape("record")),
        }
    }

    pub(crate) fn next(&mut self) -> Result<Value, CodecError> {
        self.0
            .next()
            .map(|(_, value)| value)
            .ok_or(CodecError::Shape("missing field"))
    }

    pub(crate) fn string(&mut self) -> Result<String, CodecError> {
        match self.next()? {
            Value::String(text) => Ok(text),
            _ => Err(CodecError::Shape("string")),
        }
    }

    pub(crate) fn strings(&mut self) -> Result<Vec<String>, CodecError> {
        match self.next()? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(CodecError::Shape("string")),
                })
                .collect(),
            _ => Err(CodecError::Shape("array")),
        }
    }

    pub(crate) fn int(&mut self) -> Result<i32, CodecError> {
        match self.next()? {
            Value::Int(number) => Ok(number),
            _ => Err(CodecError::Shape("int")),
        }
    }

    pub(crate) fn timestamp(&mut self) -> Result<i64, CodecError> {
        match self.next()? {
            Value::TimestampMillis(millis) | Value::Long(millis) => Ok(millis),
            _ => Err(CodecError::Shape("timestamp-millis")),
        }
    }

    pub(crate) fn symbol<T: Symbols>(&mut self) -> Result<T, CodecError> {
        T::from_avro(self.next()?)
    }

    /// A `["null", T]` field.
    pub(crate) fn nullable<T>(
        &mut self,
        from_avro: impl FnOnce(Value) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match union(self.next()?)? {
            (0, Value::Null) => Ok(None),
            (_, value) => from_avro(value).map(Some),
        }
    }

    pub(crate) fn nullable_string(&mut self) -> Result<Option<String>, CodecError> {
        self.nullable(|value| match value {
            Value::String(text) => Ok(text),
            _ => Err(CodecError::Shape("string")),
        })
    }
}
