use super::*;

fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[test]
fn reads_every_pair_in_place() {
    let map = serialize(&[
        (b":path", b"/v1/chat/completions"),
        (b"x-agent-id", b"bot"),
        (b"empty", b""),
    ]);
    let read: Vec<_> = pairs(&map).collect();
    assert_eq!(
        read,
        vec![
            (":path", "/v1/chat/completions"),
            ("x-agent-id", "bot"),
            ("empty", ""),
        ]
    );
    assert_eq!(pairs(&serialize(&[])).count(), 0);
    assert_eq!(pairs(&[]).count(), 0);
}

#[test]
fn damage_ends_the_map_and_non_utf8_pairs_are_skipped() {
    let map = serialize(&[(b"a", b"1"), (b"\xff", b"2"), (b"c", b"3")]);
    assert_eq!(
        pairs(&map).collect::<Vec<_>>(),
        vec![("a", "1"), ("c", "3")]
    );
    for cut in 0..map.len() {
        let read = pairs(&map[..cut]).count();
        assert!(read <= 2, "{cut}");
    }
    // A count far larger than the map.
    let mut lying = map.clone();
    lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(pairs(&lying).count() <= 2);
}
