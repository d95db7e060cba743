//! Hand-encoded wire bytes, a test-only encoder for round trips, and no-panic sweeps.

use super::*;
use serde_json::json;

// ---- test-only encoder ----------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_len(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Encodes a `google.protobuf.Value` message body.
fn enc_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::Null => {
            put_tag(&mut out, 1, 0);
            put_varint(&mut out, 0);
        }
        Value::Number(n) => {
            put_tag(&mut out, 2, 1);
            out.extend_from_slice(&n.as_f64().unwrap().to_le_bytes());
        }
        Value::String(s) => put_len(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => {
            put_tag(&mut out, 4, 0);
            put_varint(&mut out, u64::from(*b));
        }
        Value::Object(map) => put_len(&mut out, 5, &enc_struct(map)),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                put_len(&mut list, 1, &enc_value(item));
            }
            put_len(&mut out, 6, &list);
        }
    }
    out
}

/// Encodes one `fields` map entry as it appears inside a Struct (tag, length, entry).
fn enc_entry(key: &str, value: &Value) -> Vec<u8> {
    let mut entry = Vec::new();
    put_len(&mut entry, 1, key.as_bytes());
    put_len(&mut entry, 2, &enc_value(value));
    let mut out = Vec::new();
    put_len(&mut out, 1, &entry);
    out
}

fn enc_struct(map: &Map<String, Value>) -> Vec<u8> {
    map.iter().flat_map(|(k, v)| enc_entry(k, v)).collect()
}

/// Encodes a JSON object as `google.protobuf.Struct` wire bytes (what Envoy hands over for YAML config).
pub(crate) fn enc(v: &Value) -> Vec<u8> {
    enc_struct(v.as_object().unwrap())
}

/// Struct `{ key: <value bytes> }` where the Value body is given raw.
fn struct_with_raw_value(key: &str, value_body: &[u8]) -> Vec<u8> {
    let mut entry = Vec::new();
    put_len(&mut entry, 1, key.as_bytes());
    put_len(&mut entry, 2, value_body);
    let mut out = Vec::new();
    put_len(&mut out, 1, &entry);
    out
}

fn double_value(d: f64) -> Vec<u8> {
    let mut v = vec![0x11];
    v.extend_from_slice(&d.to_le_bytes());
    v
}

fn err(bytes: &[u8]) -> DecodeError {
    decode_struct(bytes).unwrap_err()
}

// ---- hand-encoded bytes ---------------------------------------------------------------------

#[test]
fn empty_struct() {
    assert_eq!(decode_struct(&[]).unwrap(), json!({}));
}

#[test]
fn each_value_kind_from_literal_bytes() {
    let cases: &[(&[u8], Value)] = &[
        // {"a": null}: entry { key "a", value { null_value: 0 } }
        (
            &[0x0A, 0x07, 0x0A, 0x01, b'a', 0x12, 0x02, 0x08, 0x00],
            json!({"a": null}),
        ),
        // {"a": 5.0}
        (
            &[
                0x0A, 0x0E, 0x0A, 0x01, b'a', 0x12, 0x09, 0x11, 0, 0, 0, 0, 0, 0, 0x14, 0x40,
            ],
            json!({"a": 5}),
        ),
        // {"a": 1.5}
        (
            &[
                0x0A, 0x0E, 0x0A, 0x01, b'a', 0x12, 0x09, 0x11, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F,
            ],
            json!({"a": 1.5}),
        ),
        // {"a": "hi"}
        (
            &[
                0x0A, 0x09, 0x0A, 0x01, b'a', 0x12, 0x04, 0x1A, 0x02, b'h', b'i',
            ],
            json!({"a": "hi"}),
        ),
        // {"a": true}, {"a": false}; any non-zero varint is true
        (
            &[0x0A, 0x07, 0x0A, 0x01, b'a', 0x12, 0x02, 0x20, 0x01],
            json!({"a": true}),
        ),
        (
            &[0x0A, 0x07, 0x0A, 0x01, b'a', 0x12, 0x02, 0x20, 0x00],
            json!({"a": false}),
        ),
        (
            &[0x0A, 0x08, 0x0A, 0x01, b'a', 0x12, 0x03, 0x20, 0x80, 0x01],
            json!({"a": true}),
        ),
        // {"a": {}}
        (
            &[0x0A, 0x07, 0x0A, 0x01, b'a', 0x12, 0x02, 0x2A, 0x00],
            json!({"a": {}}),
        ),
        // {"a": []}
        (
            &[0x0A, 0x07, 0x0A, 0x01, b'a', 0x12, 0x02, 0x32, 0x00],
            json!({"a": []}),
        ),
        // {"a": <Value with no member set>} is null
        (
            &[0x0A, 0x05, 0x0A, 0x01, b'a', 0x12, 0x00],
            json!({"a": null}),
        ),
        // Entry with no value → null; entry with no key → ""
        (&[0x0A, 0x03, 0x0A, 0x01, b'a'], json!({"a": null})),
        (&[0x0A, 0x04, 0x12, 0x02, 0x20, 0x01], json!({"": true})),
        (&[0x0A, 0x00], json!({"": null})),
    ];
    for (bytes, want) in cases {
        assert_eq!(&decode_struct(bytes).unwrap(), want, "bytes {bytes:02X?}");
    }
}

#[test]
fn nested_struct_and_list_from_literal_bytes() {
    #[rustfmt::skip]
    let bytes = [
        0x0A, 0x19,                       // fields entry, 25 bytes
          0x0A, 0x01, b'o',               //   key "o"
          0x12, 0x14,                     //   value, 20 bytes
            0x2A, 0x12,                   //     struct_value, 18 bytes
              0x0A, 0x10,                 //       fields entry, 16 bytes
                0x0A, 0x01, b'l',         //         key "l"
                0x12, 0x0B,               //         value, 11 bytes
                  0x32, 0x09,             //           list_value, 9 bytes
                    0x0A, 0x02,           //             values[0], 2 bytes
                      0x20, 0x01,         //               bool_value true
                    0x0A, 0x03,           //             values[1], 3 bytes
                      0x1A, 0x01, b'x',   //               string_value "x"
    ];
    let want = json!({"o": {"l": [true, "x"]}});
    assert_eq!(decode_struct(&bytes).unwrap(), want);
    // The test encoder agrees with the hand encoding.
    assert_eq!(enc(&want), bytes);
}

#[test]
fn numbers_integral_become_integers() {
    let two53 = 9_007_199_254_740_992.0_f64;
    // (double, expected JSON, expected kind: "u64" | "i64" | "f64")
    let cases: &[(f64, Value, &str)] = &[
        (5.0, json!(5), "u64"),
        (0.0, json!(0), "u64"),
        (-0.0, json!(0), "u64"),
        (-3.0, json!(-3), "i64"),
        (2.5, json!(2.5), "f64"),
        (-2.5, json!(-2.5), "f64"),
        (0.1, json!(0.1), "f64"),
        (two53, json!(9_007_199_254_740_992u64), "u64"),
        (-two53, json!(-9_007_199_254_740_992i64), "i64"),
        (two53 * 2.0, json!(two53 * 2.0), "f64"),
        (-two53 * 2.0, json!(-two53 * 2.0), "f64"),
        (1e300, json!(1e300), "f64"),
        (f64::MIN_POSITIVE, json!(f64::MIN_POSITIVE), "f64"),
    ];
    for &(d, ref want, kind) in cases {
        let got = decode_struct(&struct_with_raw_value("n", &double_value(d))).unwrap();
        let n = &got["n"];
        assert_eq!(n, want, "{d}");
        let actual_kind = if n.is_u64() {
            "u64"
        } else if n.is_i64() {
            "i64"
        } else {
            "f64"
        };
        assert_eq!(actual_kind, kind, "{d}");
    }
    // The point of the conversion: YAML `daily_usd: 5` fills an integer field.
    #[derive(serde::Deserialize)]
    struct Cfg {
        daily_usd: u32,
        offset: i64,
    }
    let v = decode_struct(&enc(&json!({"daily_usd": 5.0, "offset": -7.0}))).unwrap();
    let cfg: Cfg = serde_json::from_value(v).unwrap();
    assert_eq!((cfg.daily_usd, cfg.offset), (5, -7));
}

#[test]
fn unknown_fields_are_skipped() {
    // One of every valid wire type under an unknown field number.
    let mut unknown = Vec::new();
    put_tag(&mut unknown, 15, 0);
    put_varint(&mut unknown, 300);
    put_tag(&mut unknown, 16, 1);
    unknown.extend_from_slice(&[1; 8]);
    put_len(&mut unknown, 17, b"skip me");
    put_tag(&mut unknown, 18, 5);
    unknown.extend_from_slice(&[2; 4]);
    put_tag(&mut unknown, 536_870_911, 0); // largest field number
    put_varint(&mut unknown, u64::MAX);

    // Unknown fields inside a Value, a ListValue, a map entry and the Struct itself.
    let mut value = unknown.clone();
    value.extend_from_slice(&enc_value(&json!("v")));
    value.extend_from_slice(&unknown);
    let mut list = unknown.clone();
    put_len(&mut list, 1, &value);
    list.extend_from_slice(&unknown);
    let mut list_value = Vec::new();
    put_len(&mut list_value, 6, &list);

    let mut entry = unknown.clone();
    put_len(&mut entry, 1, b"k");
    entry.extend_from_slice(&unknown);
    put_len(&mut entry, 2, &list_value);
    entry.extend_from_slice(&unknown);

    let mut bytes = unknown.clone();
    put_len(&mut bytes, 1, &entry);
    bytes.extend_from_slice(&unknown);
    assert_eq!(decode_struct(&bytes).unwrap(), json!({"k": ["v"]}));
    assert_eq!(decode_struct(&unknown).unwrap(), json!({}));
}

#[test]
fn repeated_keys_last_wins_and_oneof_last_member_wins() {
    let mut bytes = enc_entry("a", &json!(1.0));
    bytes.extend(enc_entry("b", &json!(2.0)));
    bytes.extend(enc_entry("a", &json!("again")));
    let v = decode_struct(&bytes).unwrap();
    assert_eq!(v, json!({"a": "again", "b": 2}));

    let mut value = enc_value(&json!("first"));
    value.extend(enc_value(&json!(true)));
    assert_eq!(
        decode_struct(&struct_with_raw_value("x", &value)).unwrap(),
        json!({"x": true})
    );
    let mut value = enc_value(&json!(3.0));
    value.extend(enc_value(&Value::Null));
    assert_eq!(
        decode_struct(&struct_with_raw_value("x", &value)).unwrap(),
        json!({"x": null})
    );
}

#[test]
fn object_key_order_is_preserved() {
    let v = json!({"zeta": 1, "alpha": 2, "mid": [1, 2]});
    let got = decode_struct(&enc(&v)).unwrap();
    let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["zeta", "alpha", "mid"]);
}

// ---- errors ---------------------------------------------------------------------------------

/// Struct nested `depth` levels deep (top level counts as 1), alternating Struct and ListValue.
fn nested(depth: usize) -> Vec<u8> {
    // Build inside-out: the innermost container is empty.
    let mut inner_value: Option<Vec<u8>> = None;
    for level in (2..=depth).rev() {
        let mut container = Vec::new();
        if let Some(v) = inner_value.take() {
            if level % 2 == 0 {
                put_len(&mut container, 1, &v); // list holding the value
            } else {
                container = struct_with_raw_value("k", &v);
            }
        }
        let mut value = Vec::new();
        put_len(&mut value, if level % 2 == 0 { 6 } else { 5 }, &container);
        inner_value = Some(value);
    }
    match inner_value {
        Some(v) => struct_with_raw_value("k", &v),
        None => Vec::new(),
    }
}

#[test]
fn nesting_is_bounded() {
    assert!(decode_struct(&nested(1)).is_ok());
    let ok = decode_struct(&nested(MAX_DEPTH)).unwrap();
    // Walk down to make sure the fixture really is MAX_DEPTH containers deep.
    let mut depth = 0;
    let mut cur = &ok;
    loop {
        depth += 1;
        cur = match cur {
            Value::Object(m) if !m.is_empty() => &m["k"],
            Value::Array(a) if !a.is_empty() => &a[0],
            _ => break,
        };
    }
    assert_eq!(depth, MAX_DEPTH);
    let e = err(&nested(MAX_DEPTH + 1));
    assert_eq!(e.message(), "nesting deeper than 64 levels");
    // Far deeper input is rejected without deep recursion.
    assert!(decode_struct(&nested(5000)).is_err());
}

#[test]
fn error_cases() {
    let mut list_with_bad_item = Vec::new();
    put_len(&mut list_with_bad_item, 1, &[0x1A, 0x01, 0xFF]);
    let mut list_value = Vec::new();
    put_len(&mut list_value, 6, &list_with_bad_item);

    // A Value whose length fits in the buffer but overruns its enclosing map entry.
    let overrun_entry = [0x0A, 0x05, 0x0A, 0x01, b'a', 0x12, 0x02, 0x20, 0x01];

    let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        ("truncated tag varint", vec![0x8A], 0, "truncated varint"),
        ("truncated length", vec![0x0A, 0x80], 1, "truncated varint"),
        (
            "length past end",
            vec![0x0A, 0x05, 0x0A],
            1,
            "truncated length-delimited field",
        ),
        (
            "huge length",
            vec![0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            1,
            "truncated length-delimited field",
        ),
        (
            "varint too long",
            [vec![0x18], vec![0xFF; 10], vec![0x01]].concat(),
            1,
            "varint overflows 64 bits",
        ),
        (
            "varint tenth byte too big",
            [vec![0x18], vec![0xFF; 9], vec![0x02]].concat(),
            1,
            "varint overflows 64 bits",
        ),
        (
            "field number 0",
            vec![0x02, 0x00],
            0,
            "invalid field number 0",
        ),
        // Field numbers stop at 2^29 - 1.
        (
            "field number too big",
            vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00],
            0,
            "invalid field number 536870912",
        ),
        ("start group", vec![0x13], 1, "groups are not supported"),
        ("end group", vec![0x1C], 1, "groups are not supported"),
        ("wire type 6", vec![0x1E], 1, "invalid wire type 6"),
        ("wire type 7", vec![0x1F], 1, "invalid wire type 7"),
        (
            "truncated unknown fixed64",
            vec![0x19, 1, 2, 3],
            1,
            "truncated fixed64 field",
        ),
        (
            "truncated unknown fixed32",
            vec![0x1D, 1, 2, 3],
            1,
            "truncated fixed32 field",
        ),
        (
            "truncated unknown varint",
            vec![0x18, 0x80, 0x80],
            1,
            "truncated varint",
        ),
        (
            "fields with wrong wire type",
            vec![0x08, 0x01],
            0,
            "field 1 has wire type 0, expected 2",
        ),
        (
            "key with wrong wire type",
            vec![0x0A, 0x02, 0x08, 0x01],
            2,
            "field 1 has wire type 0, expected 2",
        ),
        (
            "number with wrong wire type",
            struct_with_raw_value("a", &[0x15, 0, 0, 0, 0]),
            7,
            "field 2 has wire type 5, expected 1",
        ),
        (
            "bool with wrong wire type",
            struct_with_raw_value("a", &[0x22, 0x00]),
            7,
            "field 4 has wire type 2, expected 0",
        ),
        (
            "truncated double",
            struct_with_raw_value("a", &[0x11, 0, 0, 0]),
            8,
            "truncated double",
        ),
        (
            "invalid UTF-8 key",
            vec![0x0A, 0x04, 0x0A, 0x02, b'a', 0xFF],
            5,
            "invalid UTF-8 in string",
        ),
        (
            "invalid UTF-8 string",
            struct_with_raw_value("a", &[0x1A, 0x02, 0xC3, 0x28]),
            9,
            "invalid UTF-8 in string",
        ),
        (
            "invalid UTF-8 in list item",
            struct_with_raw_value("a", &list_value),
            13,
            "invalid UTF-8 in string",
        ),
        (
            "NaN",
            struct_with_raw_value("a", &double_value(f64::NAN)),
            8,
            "number is NaN or infinite",
        ),
        (
            "+inf",
            struct_with_raw_value("a", &double_value(f64::INFINITY)),
            8,
            "number is NaN or infinite",
        ),
        (
            "-inf",
            struct_with_raw_value("a", &double_value(f64::NEG_INFINITY)),
            8,
            "number is NaN or infinite",
        ),
        (
            "value overruns its entry",
            overrun_entry.to_vec(),
            6,
            "truncated length-delimited field",
        ),
    ];
    for (name, bytes, offset, message) in cases {
        let e = err(&bytes);
        assert_eq!(
            (e.offset(), e.message()),
            (offset, message),
            "{name}: {bytes:02X?}"
        );
    }
}

#[test]
fn error_display() {
    let e = err(&[0x0A, 0x05, 0x0A]);
    assert_eq!(
        e.to_string(),
        "invalid protobuf Struct at byte 1: truncated length-delimited field"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().starts_with("invalid protobuf Struct"));
}

// ---- encoder-built, round trips, sweeps ------------------------------------------------------

fn sample_values() -> Vec<Value> {
    vec![
        json!({}),
        json!({"a": null}),
        json!({"daily_usd": 5, "ratio": 0.25, "neg": -12, "name": "agent-1", "on": true, "off": false}),
        json!({"budgets": [{"agent": "a", "daily_usd": 10}, {"agent": "b", "daily_usd": 2.5}], "mode": "enforce"}),
        json!({"nested": {"deeper": {"deepest": [[], [[1, 2], {}], null, "ü€𝄞"]}}}),
        json!({"": "", "empty_list": [], "empty_obj": {}, "big": 9_007_199_254_740_992u64, "tiny": 1e-300}),
        json!({"unicode key ✓": "multi\nline\u{0}with nul", "long": "x".repeat(300)}),
    ]
}

#[test]
fn encoder_built_config_decodes() {
    let config = json!({
        "default_budget": {"daily_usd": 5, "monthly_usd": 100.5},
        "agents": [{"id": "planner", "daily_usd": 20}],
        "on_exceed": "deny",
        "dry_run": false,
        "alert": null,
    });
    assert_eq!(decode_struct(&enc(&config)).unwrap(), config);
}

#[test]
fn round_trip_samples() {
    for v in sample_values() {
        assert_eq!(decode_struct(&enc(&v)).unwrap(), v);
    }
}

/// Small deterministic PRNG so the "property" tests need no extra crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random value in the decoder's canonical form (integral numbers as integers).
fn random_value(rng: &mut Lcg, depth: usize) -> Value {
    let kinds = if depth >= 5 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 1),
        2 => match rng.below(3) {
            0 => json!(rng.below(1 << 40)),
            1 => json!(-(rng.below(1 << 40) as i64) - 1),
            _ => json!(rng.below(1_000_000) as f64 / 7.0 + 0.5),
        },
        3 => Value::String(
            (0..rng.below(6))
                .map(|_| ['a', 'é', '✓', '\n'][rng.below(4) as usize])
                .collect(),
        ),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut Lcg, depth: usize) -> Value {
    let mut map = Map::new();
    for _ in 0..rng.below(5) {
        let key = format!("k{}", rng.below(8));
        map.insert(key, random_value(rng, depth));
    }
    Value::Object(map)
}

#[test]
fn round_trip_random_values() {
    let mut rng = Lcg(42);
    for _ in 0..500 {
        let v = random_object(&mut rng, 1);
        assert_eq!(decode_struct(&enc(&v)).unwrap(), v);
    }
}

#[test]
fn truncation_at_every_offset_errs_or_decodes_a_prefix() {
    let mut rng = Lcg(7);
    let mut values = sample_values();
    values.extend((0..40).map(|_| random_object(&mut rng, 1)));
    for v in values {
        let map = v.as_object().unwrap();
        // Top-level entry boundaries, and the object each boundary-aligned prefix decodes to.
        let mut bytes = Vec::new();
        let mut prefixes = vec![(0usize, Map::new())];
        for (k, val) in map {
            bytes.extend(enc_entry(k, val));
            let mut prefix = prefixes.last().unwrap().1.clone();
            prefix.insert(k.clone(), val.clone());
            prefixes.push((bytes.len(), prefix));
        }
        for cut in 0..=bytes.len() {
            let result = decode_struct(&bytes[..cut]);
            match prefixes.iter().find(|(at, _)| *at == cut) {
                Some((_, want)) => assert_eq!(result.unwrap(), Value::Object(want.clone())),
                None => {
                    let e = result.unwrap_err();
                    assert!(e.offset() <= cut, "offset {} past cut {cut}", e.offset());
                }
            }
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut rng = Lcg(99);
    let seeds: Vec<Vec<u8>> = sample_values().iter().map(enc).collect();
    for seed in &seeds {
        for _ in 0..300 {
            let mut bytes = seed.clone();
            for _ in 0..=rng.below(3) {
                if bytes.is_empty() {
                    break;
                }
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.below(256) as u8;
            }
            if let Err(e) = decode_struct(&bytes) {
                assert!(e.offset() <= bytes.len());
            }
        }
    }
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.below(256) as u8).collect();
        let _ = decode_struct(&bytes);
    }
}

// ---- property tests: random values and bytes, and configuration through both forms ---------

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use crate::config::Config;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    /// JSON values whose numbers a double carries exactly (integers within ±2^53, and
    /// fractions), so they come back from a Struct unchanged.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
            (-1e6f64..1e6)
                .prop_filter("fractional", |f| f.fract() != 0.0)
                .prop_map(Value::from),
            ".{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(".{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A configuration value: the shipped shape with random values in its fields.
    fn config_value() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("daily_usd"),
            Just("monthly_usd"),
            Just("action"),
            Just("soft_threshold"),
            Just("degrade_to"),
            Just("degrade_usd"),
            Just("task_daily_usd"),
            Just("bogus"),
        ];
        let amount = prop_oneof![
            (0u64..1000).prop_map(Value::from),
            Just(Value::from(0.02)),
            Just(Value::from(-1)),
            Just(Value::from("5")),
            Just(Value::from("stop")),
            Just(Value::from("degrade")),
            Just(serde_json::json!({"gpt-4o*": "gpt-4o-mini"})),
        ];
        btree_map("[a-z-]{1,8}", btree_map(field, amount, 0..4), 1..3).prop_map(|agents| {
            let agents: Map<String, Value> = agents
                .into_iter()
                .map(|(name, fields)| {
                    let fields = fields
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    (name, Value::Object(fields))
                })
                .collect();
            serde_json::json!({"agents": agents, "reservations": true})
        })
    }

    proptest! {
        #[test]
        fn any_struct_round_trips(map in btree_map(".{0,4}", value(), 0..6)) {
            let map: Map<String, Value> = map.into_iter().collect();
            prop_assert_eq!(decode_struct(&enc_struct(&map)), Ok(Value::Object(map)));
        }

        #[test]
        fn any_bytes_decode_or_fail_inside_the_input(bytes in vec(any::<u8>(), 0..96)) {
            match decode_struct(&bytes) {
                Ok(Value::Object(map)) => {
                    prop_assert_eq!(decode_struct(&enc_struct(&map)), Ok(Value::Object(map)));
                }
                Ok(other) => prop_assert!(false, "non-object {}", other),
                Err(error) => prop_assert!(error.offset() <= bytes.len()),
            }
            // The configuration parser takes the same bytes (and JSON text) without panicking.
            let _ = Config::from_bytes(&bytes);
        }

        #[test]
        fn a_configuration_is_judged_the_same_as_json_and_as_a_struct(config in config_value()) {
            let as_json = Config::from_bytes(config.to_string().as_bytes());
            let as_struct = Config::from_bytes(&enc(&config));
            match (&as_json, &as_struct) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "JSON {:?} but Struct {:?}", as_json, as_struct),
            }
        }
    }
}
