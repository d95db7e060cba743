//! SSE framing: the same bytes fed whole or in any chunks give the same events; events tile
//! the stream; kept data respects the cap and never holds a CR.
//! Input: shape, seed, cap selector, then the stream.
#![no_main]

use agent_budget_core::sse::{SseEvent, SseParser};
use fuzz_support::chunks;
use libfuzzer_sys::fuzz_target;

fn parse(pieces: &[&[u8]], max: usize) -> (Vec<SseEvent>, u64) {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut events);
    }
    let offset = parser.offset();
    events.extend(parser.finish());
    (events, offset)
}

fuzz_target!(|data: &[u8]| {
    let [shape, seed, cap, stream @ ..] = data else {
        return;
    };
    let max = match cap % 4 {
        0 => 1 << 20,
        1 => 64,
        2 => 7,
        _ => 0,
    };
    let (whole, offset) = parse(&[stream], max);
    assert_eq!(offset, stream.len() as u64);
    let (split, _) = parse(&chunks(stream, *shape, *seed), max);
    assert_eq!(whole, split, "events differ when the stream is split");
    let mut at = 0;
    for event in &whole {
        assert_eq!(event.start, at, "events must tile the stream");
        assert!(event.end >= event.start && event.end <= offset);
        assert!(event.data.len() <= max, "data past the cap");
        assert!(!event.data.contains(&b'\r'), "a CR inside kept data");
        at = event.end;
    }
});
