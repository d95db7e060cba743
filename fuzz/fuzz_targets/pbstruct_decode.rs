//! The `google.protobuf.Struct` decoder (Envoy's YAML plugin configuration): any bytes decode
//! or fail with an offset inside the input; what decodes re-encodes to bytes that decode to
//! the same value.
#![no_main]

use agent_budget_core::pbstruct::decode_struct;
use fuzz_support::encode_struct;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match decode_struct(data) {
        Ok(Value::Object(map)) => {
            let again = decode_struct(&encode_struct(&map));
            assert_eq!(
                again,
                Ok(Value::Object(map)),
                "round trip changed the value"
            );
        }
        Ok(other) => panic!("a Struct decoded to a non-object: {other}"),
        Err(error) => assert!(error.offset() <= data.len(), "error offset past the input"),
    }
});
