//! What the fuzz targets share: how an input picks its chunk boundaries, the bound every usage
//! figure must respect, a stream metered the way the filter meters it, and a
//! `google.protobuf.Struct` encoder for round trips.
//!
//! Targets read a few leading control bytes (see each target) and treat the rest as the
//! bytes under test, so every committed seed is a fixture with those bytes in front.

use agent_budget_core::providers::{Api, EventFate, Metered, Progress, Unmetered};
use agent_budget_core::sse::{SseEvent, SseParser};
use agent_budget_core::usage::Usage;
use serde_json::{Map, Value};

/// Cuts `data` into chunks. `shape` picks the chunk size (1, 2, 3, 5, 16 or 64 bytes, sizes
/// drawn from `seed`, or all at once), so the fuzzer can steer where boundaries fall, down to
/// between a CR and its LF or inside a multi-byte character.
pub fn chunks(data: &[u8], shape: u8, seed: u8) -> Vec<&[u8]> {
    let fixed = match shape % 8 {
        0 => 1,
        1 => 2,
        2 => 3,
        3 => 5,
        4 => 16,
        5 => 64,
        6 => 0,
        _ => return vec![data],
    };
    if fixed > 0 {
        return data.chunks(fixed).collect();
    }
    // xorshift, never zero: varied chunk sizes from 1 to 32 bytes.
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % 32 + 1) as usize;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The sum of every run of ASCII digits in `data` (saturating): no token count read from
/// these bytes, nor any sum of distinct counts, can exceed it.
pub fn digit_sum(data: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut run = 0u64;
    for &b in data {
        if b.is_ascii_digit() {
            run = run.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        } else {
            total = total.saturating_add(run);
            run = 0;
        }
    }
    total.saturating_add(run)
}

/// Every usage class comes from a distinct number in the input (reasoning is a share of
/// output), so each figure, and the billed sum, is at most `bound`.
pub fn check_usage(usage: &Usage, bound: u64) {
    let billed = usage.total_input().saturating_add(usage.output);
    assert!(
        billed <= bound,
        "usage {usage:?} bills more tokens than the input holds ({bound})"
    );
    assert!(usage.reasoning <= bound, "reasoning {usage:?} > {bound}");
}

/// What a stream meter made of a stream fed in `pieces`: the events, each event's fate,
/// the final result and the progress.
#[derive(Debug, PartialEq, Eq)]
pub struct Metering {
    pub events: Vec<SseEvent>,
    pub fates: Vec<EventFate>,
    pub result: Result<Metered, Unmetered>,
    pub progress: Progress,
}

/// Meters a stream as the filter does: SSE parser fed chunk by chunk, each event handed to
/// the API's meter, then the unterminated tail at end of stream.
pub fn meter_stream(api: Api, pieces: &[&[u8]], max_event_bytes: usize) -> Metering {
    let mut parser = SseParser::new(max_event_bytes);
    let mut meter = api.stream_meter();
    let mut events = Vec::new();
    let mut fates = Vec::new();
    let mut batch = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut batch);
        for event in batch.drain(..) {
            fates.push(meter.on_event(&event));
            events.push(event);
        }
    }
    if let Some(event) = parser.finish() {
        fates.push(meter.on_event(&event));
        events.push(event);
    }
    Metering {
        events,
        fates,
        result: meter.finish(),
        progress: meter.progress(),
    }
}

/// The body-and-stream target shared by every provider: the bytes as a JSON body, then as a
/// stream whole and in the chunks `shape`/`seed` choose. Usage never exceeds the numbers in
/// the bytes, and a stream meters the same however it is cut.
pub fn fuzz_provider(api: Api, data: &[u8], stream_too: bool) {
    let [shape, seed, rest @ ..] = data else {
        return;
    };
    let bound = digit_sum(rest);
    if let Ok(metered) = api.usage_from_body(rest) {
        check_usage(&metered.usage, bound);
    }
    if !stream_too {
        return;
    }
    let whole = meter_stream(api, &[rest], 1 << 20);
    let split = meter_stream(api, &chunks(rest, *shape, *seed), 1 << 20);
    assert_eq!(whole, split, "the stream metered differently when split");
    if let Ok(metered) = &whole.result {
        check_usage(&metered.usage, bound);
    }
    check_usage(&whole.progress.reported, bound);
    assert!(whole.progress.text_bytes <= rest.len() as u64);
}

/// Nesting depth of a JSON value (a scalar is 0).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---- google.protobuf.Struct encoder -------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_len(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// A `google.protobuf.Value` message body.
fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        Value::Number(number) => {
            put_varint(&mut out, (2 << 3) | 1);
            out.extend_from_slice(&number.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Value::String(text) => put_len(&mut out, 3, text.as_bytes()),
        Value::Bool(flag) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*flag));
        }
        Value::Object(map) => put_len(&mut out, 5, &encode_struct(map)),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                put_len(&mut list, 1, &encode_value(item));
            }
            put_len(&mut out, 6, &list);
        }
    }
    out
}

/// A `google.protobuf.Struct` as Envoy hands a YAML plugin configuration over.
pub fn encode_struct(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in map {
        let mut entry = Vec::new();
        put_len(&mut entry, 1, key.as_bytes());
        put_len(&mut entry, 2, &encode_value(value));
        put_len(&mut out, 1, &entry);
    }
    out
}

/// Whether every number survives the trip through a protobuf double unchanged: integers
/// within ±2^53, and fractional floats (an integral float such as `1.0` would come back as
/// the integer `1`, which integer fields accept and JSON floats are not).
pub fn numbers_survive_double(value: &Value) -> bool {
    const SAFE: u64 = 1 << 53;
    match value {
        Value::Number(number) => {
            if let Some(n) = number.as_u64() {
                n <= SAFE
            } else if let Some(n) = number.as_i64() {
                n.unsigned_abs() <= SAFE
            } else {
                number.as_f64().is_some_and(|f| f.fract() != 0.0)
            }
        }
        Value::Array(items) => items.iter().all(numbers_survive_double),
        Value::Object(map) => map.values().all(numbers_survive_double),
        Value::Null | Value::Bool(_) | Value::String(_) => true,
    }
}
