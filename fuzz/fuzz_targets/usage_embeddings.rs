//! OpenAI Embeddings usage: the bytes as a JSON response body. No figure exceeds the numbers
//! the bytes hold. (Embeddings never stream; an OpenAI-shaped stream uses the chat meter.)
//! Input: shape, seed, then the body.
#![no_main]

use agent_budget_core::providers::Api;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_support::fuzz_provider(Api::OpenAiEmbeddings, data, false);
});
