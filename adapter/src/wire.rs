//! The proxy-wasm ABI's serialized header map: a u32 pair count, then each pair's key and
//! value lengths (u32 each), then each key and value followed by a NUL byte; all
//! little-endian. Read in place, so a map costs no allocation per header.

/// The `(name, value)` pairs of a serialized map. A malformed map yields the pairs read
/// before the damage; a pair that is not UTF-8 is skipped.
pub fn pairs(map: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let count = read_u32(map, 0).unwrap_or(0) as usize;
    let sizes_end = count.saturating_mul(8).saturating_add(4);
    let mut data_at = sizes_end;
    (0..count)
        .map_while(move |index| {
            let sizes_at = 4 + index * 8;
            let name_len = read_u32(map, sizes_at)? as usize;
            let value_len = read_u32(map, sizes_at + 4)? as usize;
            let name = map.get(data_at..data_at.checked_add(name_len)?)?;
            let value_at = data_at.checked_add(name_len)?.checked_add(1)?;
            let value = map.get(value_at..value_at.checked_add(value_len)?)?;
            data_at = value_at.checked_add(value_len)?.checked_add(1)?;
            Some((name, value))
        })
        .filter_map(|(name, value)| {
            Some((
                std::str::from_utf8(name).ok()?,
                std::str::from_utf8(value).ok()?,
            ))
        })
}

/// Serializes `(name, value)` pairs into the map form [`pairs`] reads (headers of a local
/// reply or a callout). A length past `u32::MAX` cannot be sent and yields `None`.
/// Calls `visit` with each pair [`pairs`] reads from a serialized map.
pub fn visit_pairs(map: &[u8], visit: &mut dyn FnMut(&str, &str)) {
    for (name, value) in pairs(map) {
        visit(name, value);
    }
}

pub fn serialize<'a>(map: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> Option<Vec<u8>> {
    let count = u32::try_from(map.clone().into_iter().count()).ok()?;
    let mut out = count.to_le_bytes().to_vec();
    for (name, value) in map.clone() {
        out.extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_le_bytes());
    }
    for (name, value) in map {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    Some(out)
}

/// A property path in the ABI's form: the segments joined by NUL bytes.
pub fn property_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

#[cfg(test)]
mod tests;
