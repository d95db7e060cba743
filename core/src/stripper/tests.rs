use super::*;

/// One `process` call: the chunk, the end of the last complete event (absolute), the spans
/// to drop, end of stream, and the expected outcome.
struct Step {
    chunk: &'static [u8],
    boundary: u64,
    drops: &'static [(u64, u64)],
    end: bool,
    want: ChunkOutcome,
}

fn pass(chunk: &'static [u8], boundary: u64, drops: &'static [(u64, u64)], end: bool) -> Step {
    Step {
        chunk,
        boundary,
        drops,
        end,
        want: ChunkOutcome::Pass,
    }
}

fn out(
    chunk: &'static [u8],
    boundary: u64,
    drops: &'static [(u64, u64)],
    end: bool,
    want: &[u8],
) -> Step {
    Step {
        chunk,
        boundary,
        drops,
        end,
        want: ChunkOutcome::Replace(want.to_vec()),
    }
}

#[test]
fn usage_stripper_forwards_complete_events_minus_drops() {
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "complete events pass",
            vec![pass(b"a\n\nb\n\n", 6, &[], false)],
        ),
        (
            "a dropped event in the middle",
            vec![out(b"a\n\nU\n\nb\n\n", 9, &[(3, 6)], false, b"a\n\nb\n\n")],
        ),
        (
            "two drops at both ends",
            vec![out(
                b"U\n\na\n\nV\n\n",
                9,
                &[(0, 3), (6, 9)],
                false,
                b"a\n\n",
            )],
        ),
        (
            "a partial event is held and released when it completes",
            vec![
                out(b"a\n\nb", 3, &[], false, b"a\n\n"),
                out(b"b\n", 3, &[], false, b""),
                out(b"\n", 7, &[], false, b"bb\n\n"),
                pass(b"c\n\n", 10, &[], false),
            ],
        ),
        (
            "a held usage event is dropped when it completes",
            vec![
                out(b"a\n\nU", 3, &[], false, b"a\n\n"),
                out(b"\n\nc\n\n", 9, &[(3, 6)], false, b"c\n\n"),
            ],
        ),
        (
            "a usage event spread over three chunks",
            vec![
                out(b"U", 0, &[], false, b""),
                out(b"\n", 0, &[], false, b""),
                out(b"\nb\n\n", 6, &[(0, 3)], false, b"b\n\n"),
            ],
        ),
        (
            "nothing complete yet holds everything",
            vec![
                out(b"ab", 0, &[], false, b""),
                out(b"c\n\n", 5, &[], false, b"abc\n\n"),
            ],
        ),
        (
            "end of stream flushes held bytes",
            vec![
                out(b"a\n\nb", 3, &[], false, b"a\n\n"),
                out(b"", 4, &[], true, b"b"),
            ],
        ),
        (
            "end of stream flushes held bytes with the last chunk",
            vec![
                out(b"a\n\nb", 3, &[], false, b"a\n\n"),
                out(b"c", 5, &[], true, b"bc"),
            ],
        ),
        (
            "end of stream drops a final unterminated usage event",
            vec![
                out(b"a\n\nU", 3, &[], false, b"a\n\n"),
                out(b"", 4, &[(3, 4)], true, b""),
            ],
        ),
        (
            "end of stream with nothing held passes",
            vec![pass(b"a\n\n", 3, &[], true)],
        ),
        (
            "after a drop, later complete chunks pass",
            vec![
                out(b"U\n\n", 3, &[(0, 3)], false, b""),
                pass(b"a\n\n", 6, &[], false),
            ],
        ),
        (
            "an empty chunk with nothing held passes",
            vec![pass(b"", 0, &[], false)],
        ),
    ];
    for (name, steps) in cases {
        let mut stripper = UsageStripper::default();
        let mut offset = 0u64;
        for (index, step) in steps.into_iter().enumerate() {
            let got = stripper.process(step.chunk, offset, step.boundary, step.drops, step.end);
            assert_eq!(got, step.want, "{name}: step {index}");
            offset += step.chunk.len() as u64;
        }
        assert!(stripper.held.is_empty(), "{name}: nothing left behind");
    }
}

#[test]
fn usage_stripper_releases_an_oversized_event() {
    let mut stripper = UsageStripper::default();
    let big = vec![b'x'; MAX_EVENT_BYTES];
    assert_eq!(
        stripper.process(&big, 0, 0, &[], false),
        ChunkOutcome::Replace(Vec::new()),
        "up to the cap the partial event is held"
    );
    let got = stripper.process(b"y", MAX_EVENT_BYTES as u64, 0, &[], false);
    let mut want = big.clone();
    want.push(b'y');
    assert_eq!(
        got,
        ChunkOutcome::Replace(want),
        "past the cap it is released"
    );
    assert!(stripper.held.is_empty());
}
