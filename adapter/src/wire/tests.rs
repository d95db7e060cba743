use super::*;

fn serialize_test_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
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
    let map = serialize_test_map(&[
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
    assert_eq!(pairs(&serialize_test_map(&[])).count(), 0);
    assert_eq!(pairs(&[]).count(), 0);
}

#[test]
fn damage_ends_the_map_and_non_utf8_pairs_are_skipped() {
    let map = serialize_test_map(&[(b"a", b"1"), (b"\xff", b"2"), (b"c", b"3")]);
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

// ---- property tests: random maps and bytes -------------------------------------------------

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_pairs_read_back_as_serialized(
            pairs in vec((".{0,8}", ".{0,8}"), 0..8),
        ) {
            let borrowed: Vec<(&[u8], &[u8])> =
                pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
            let read: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let map = serialize_test_map(&borrowed);
            prop_assert_eq!(super::pairs(&map).collect::<Vec<_>>(), read);
        }

        #[test]
        fn any_bytes_give_at_most_the_declared_pairs(bytes in vec(any::<u8>(), 0..96)) {
            let declared = bytes
                .get(..4)
                .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize);
            let read: Vec<_> = pairs(&bytes).collect();
            prop_assert!(read.len() <= declared);
            let held: usize = read.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
            prop_assert!(held <= bytes.len());
        }
    }
}

#[test]
fn serialized_maps_read_back_and_property_paths_join_with_nul() {
    let headers = [
        (":status", "429"),
        ("content-type", "application/json"),
        ("empty", ""),
    ];
    let map = serialize(headers.iter().copied()).unwrap();
    assert_eq!(map, self::serialize_bytes(&headers));
    assert_eq!(pairs(&map).collect::<Vec<_>>(), headers.to_vec());
    assert_eq!(
        serialize(std::iter::empty()).unwrap(),
        0u32.to_le_bytes().to_vec()
    );
    assert_eq!(
        property_path(&["xds", "route_name"]),
        b"xds\0route_name".to_vec()
    );
    assert_eq!(property_path(&["agent_budget"]), b"agent_budget".to_vec());
}

fn serialize_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
    let as_bytes: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    self::serialize_test_map(&as_bytes)
}
