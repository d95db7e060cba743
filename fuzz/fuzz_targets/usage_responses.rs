//! OpenAI Responses usage: the bytes as a JSON response body, and as an SSE stream fed whole
//! and in fuzzer-chosen chunks, which must meter the same. No figure exceeds the numbers the
//! bytes hold.
//! Input: shape, seed, then the body or stream.
#![no_main]

use agent_budget_core::providers::Api;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_support::fuzz_provider(Api::OpenAiResponses, data, true);
});
