//! Decoder for the binary encoding of `google.protobuf.Struct` into `serde_json::Value`.
//!
//! Envoy passes a plugin `configuration` written in YAML as a `google.protobuf.Struct`, which the
//! filter receives in protobuf wire format. Decoding it to JSON lets the same serde config types
//! serve both JSON and YAML configuration. The input is operator-controlled but still untrusted
//! bytes: every length is checked and nesting is bounded, so no input can panic or exhaust the
//! stack.

use serde_json::{Map, Number, Value};

/// Deepest nesting of Struct/ListValue accepted; real configuration is a few levels deep, and the
/// bound keeps recursion from exhausting the wasm stack.
const MAX_DEPTH: usize = 64;

/// Largest magnitude at which every integer is exactly representable as an f64.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// Why the bytes are not a valid `google.protobuf.Struct`, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    message: String,
    offset: usize,
}

impl DecodeError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            offset,
        }
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Byte offset in the input where the problem was found.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid protobuf Struct at byte {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the wire bytes of a google.protobuf.Struct into a JSON object.
pub fn decode_struct(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader { bytes, pos: 0 };
    let fields = reader.decode_struct(bytes.len(), 1)?;
    Ok(Value::Object(fields))
}

// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;

/// Cursor over the whole input; nested messages are decoded up to an absolute `end` so error
/// offsets are always relative to the start of the input.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> DecodeError {
        DecodeError::new(self.pos, message)
    }

    fn varint(&mut self, end: usize) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.pos).filter(|_| self.pos < end) else {
                return Err(DecodeError::new(start, "truncated varint"));
            };
            self.pos += 1;
            // The tenth byte may only carry the 64th bit.
            if shift == 63 && b > 1 {
                return Err(DecodeError::new(start, "varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::new(start, "varint overflows 64 bits"))
    }

    /// Reads a tag; returns (field number, wire type).
    fn tag(&mut self, end: usize) -> Result<(u64, u64), DecodeError> {
        let start = self.pos;
        let tag = self.varint(end)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(DecodeError::new(
                start,
                format!("invalid field number {field}"),
            ));
        }
        Ok((field, wire_type))
    }

    /// Advances past `n` bytes, which must lie before `end`.
    fn take(&mut self, n: usize, end: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let slice = self
            .bytes
            .get(self.pos..self.pos.saturating_add(n).min(end))
            .filter(|slice| slice.len() == n)
            .ok_or_else(|| self.err(format!("truncated {what}")))?;
        self.pos += n;
        Ok(slice)
    }

    /// Reads a length prefix and returns the absolute end of the payload that follows it.
    fn len_delimited(&mut self, end: usize) -> Result<usize, DecodeError> {
        let start = self.pos;
        let len = self.varint(end)?;
        let available = end.saturating_sub(self.pos);
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= available)
            .map(|len| self.pos + len)
            .ok_or_else(|| DecodeError::new(start, "truncated length-delimited field"))
    }

    fn expect_wire_type(
        &self,
        tag_pos: usize,
        field: u64,
        got: u64,
        want: u64,
    ) -> Result<(), DecodeError> {
        if got == want {
            Ok(())
        } else {
            Err(DecodeError::new(
                tag_pos,
                format!("field {field} has wire type {got}, expected {want}"),
            ))
        }
    }

    /// Skips an unknown field so newer encoders can add fields.
    fn skip(&mut self, wire_type: u64, end: usize) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => self.varint(end).map(drop),
            FIXED64 => self.take(8, end, "fixed64 field").map(drop),
            LEN => {
                self.pos = self.len_delimited(end)?;
                Ok(())
            }
            FIXED32 => self.take(4, end, "fixed32 field").map(drop),
            START_GROUP | END_GROUP => Err(self.err("groups are not supported")),
            _ => Err(self.err(format!("invalid wire type {wire_type}"))),
        }
    }

    fn string(&mut self, end: usize) -> Result<String, DecodeError> {
        let payload_end = self.len_delimited(end)?;
        let start = self.pos;
        let raw = self.take(payload_end - start, payload_end, "string")?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|e| DecodeError::new(start + e.valid_up_to(), "invalid UTF-8 in string"))
    }

    fn check_depth(&self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    }

    /// `Struct { map<string, Value> fields = 1; }`, ending at `end`.
    fn decode_struct(
        &mut self,
        end: usize,
        depth: usize,
    ) -> Result<Map<String, Value>, DecodeError> {
        self.check_depth(depth)?;
        let mut fields = Map::new();
        while self.pos < end {
            let tag_pos = self.pos;
            let (field, wire_type) = self.tag(end)?;
            if field == 1 {
                self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                let entry_end = self.len_delimited(end)?;
                let (key, value) = self.decode_entry(entry_end, depth)?;
                // Map semantics: a repeated key replaces the earlier value.
                fields.insert(key, value);
            } else {
                self.skip(wire_type, end)?;
            }
        }
        Ok(fields)
    }

    /// Map entry `{ string key = 1; Value value = 2; }`; missing parts take proto3 defaults.
    fn decode_entry(&mut self, end: usize, depth: usize) -> Result<(String, Value), DecodeError> {
        let mut key = String::new();
        let mut value = Value::Null;
        while self.pos < end {
            let tag_pos = self.pos;
            let (field, wire_type) = self.tag(end)?;
            match field {
                1 => {
                    self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                    key = self.string(end)?;
                }
                2 => {
                    self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                    let value_end = self.len_delimited(end)?;
                    value = self.decode_value(value_end, depth)?;
                }
                _ => self.skip(wire_type, end)?,
            }
        }
        Ok((key, value))
    }

    /// `Value`, a oneof; with no member set it is null, and the last member set wins.
    fn decode_value(&mut self, end: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut value = Value::Null;
        while self.pos < end {
            let tag_pos = self.pos;
            let (field, wire_type) = self.tag(end)?;
            match field {
                1 => {
                    self.expect_wire_type(tag_pos, field, wire_type, VARINT)?;
                    self.varint(end)?;
                    value = Value::Null;
                }
                2 => {
                    self.expect_wire_type(tag_pos, field, wire_type, FIXED64)?;
                    let number_pos = self.pos;
                    let raw = self.take(8, end, "double")?;
                    let mut le = [0u8; 8];
                    le.copy_from_slice(raw);
                    value = number(f64::from_le_bytes(le))
                        .ok_or_else(|| DecodeError::new(number_pos, "number is NaN or infinite"))?;
                }
                3 => {
                    self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                    value = Value::String(self.string(end)?);
                }
                4 => {
                    self.expect_wire_type(tag_pos, field, wire_type, VARINT)?;
                    value = Value::Bool(self.varint(end)? != 0);
                }
                5 => {
                    self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                    let struct_end = self.len_delimited(end)?;
                    value = Value::Object(self.decode_struct(struct_end, depth + 1)?);
                }
                6 => {
                    self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                    let list_end = self.len_delimited(end)?;
                    value = Value::Array(self.decode_list(list_end, depth + 1)?);
                }
                _ => self.skip(wire_type, end)?,
            }
        }
        Ok(value)
    }

    /// `ListValue { repeated Value values = 1; }`, ending at `end`.
    fn decode_list(&mut self, end: usize, depth: usize) -> Result<Vec<Value>, DecodeError> {
        self.check_depth(depth)?;
        let mut values = Vec::new();
        while self.pos < end {
            let tag_pos = self.pos;
            let (field, wire_type) = self.tag(end)?;
            if field == 1 {
                self.expect_wire_type(tag_pos, field, wire_type, LEN)?;
                let value_end = self.len_delimited(end)?;
                values.push(self.decode_value(value_end, depth)?);
            } else {
                self.skip(wire_type, end)?;
            }
        }
        Ok(values)
    }
}

/// Struct stores every number as a double, so YAML `5` arrives as 5.0: integral values that are
/// exact in an f64 become JSON integers, letting serde read them into integer fields.
fn number(v: f64) -> Option<Value> {
    if !v.is_finite() {
        return None;
    }
    if v.fract() == 0.0 && v.abs() <= MAX_SAFE_INTEGER {
        // Exact: the value is integral and within ±2^53, so the casts cannot round or saturate.
        return Some(if v >= 0.0 {
            Value::Number(Number::from(v as u64))
        } else {
            Value::Number(Number::from(v as i64))
        });
    }
    Number::from_f64(v).map(Value::Number)
}

#[cfg(test)]
pub(crate) mod tests;
