//! The configuration parser (`Config::from_bytes`): JSON text or a binary protobuf Struct.
//! Whatever the bytes, it accepts or names a reason; a JSON configuration is judged the same
//! when it arrives as a Struct (what Envoy sends for YAML); an accepted one builds a worker
//! that ticks.
#![no_main]

use agent_budget_core::config::Config;
use agent_budget_core::host::fake::FakeHost;
use agent_budget_core::root::Worker;
use fuzz_support::{depth, encode_struct, numbers_survive_double};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parsed = Config::from_bytes(data);
    if let Ok(config) = &parsed {
        let host = FakeHost::new().at_unix_secs(1_795_900_000);
        Worker::new(config.clone()).tick(&host);
    }
    // The same value as JSON text and as a Struct: same verdict. Only values whose numbers
    // survive a double and whose nesting the Struct decoder allows compare; the canonical
    // text has no duplicate keys, which typed JSON parsing would refuse.
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let value = Value::Object(map);
    if !numbers_survive_double(&value) || depth(&value) > 60 {
        return;
    }
    let Value::Object(map) = &value else { return };
    let text = serde_json::to_vec(&value).unwrap_or_default();
    let as_json = Config::from_bytes(&text);
    let as_struct = Config::from_bytes(&encode_struct(map));
    match (&as_json, &as_struct) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "JSON and Struct gave different configs"),
        (Err(_), Err(_)) => {}
        _ => panic!("JSON says {as_json:?}, Struct says {as_struct:?}"),
    }
});
