//! The proxy-wasm header-map wire parser (`adapter/src/wire.rs`, compiled here
//! from its source: the fuzz workspace builds it alone, and the parser needs nothing else).
//! Any bytes give at most the declared pairs; the pairs serialized again read back the same.
#![no_main]

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../adapter/src/wire.rs"]
mod wire;

use libfuzzer_sys::fuzz_target;

fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let read: Vec<(&str, &str)> = wire::pairs(data).collect();
    let declared = data
        .get(..4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize);
    assert!(read.len() <= declared);
    let bytes: usize = read.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    assert!(bytes <= data.len(), "pairs hold more bytes than the map");
    let again = serialize(&read);
    assert_eq!(wire::pairs(&again).collect::<Vec<_>>(), read);
});
