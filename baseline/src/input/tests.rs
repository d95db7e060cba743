use super::*;

#[test]
fn progress_lines() {
    let mib = 1024 * 1024;
    let cases = [
        (
            "a.log",
            0,
            Some(10 * mib),
            "a.log [------------------------------]   0% 0.0/10.0 MiB",
        ),
        (
            "a.log",
            5 * mib,
            Some(10 * mib),
            "a.log [###############---------------]  50% 5.0/10.0 MiB",
        ),
        (
            "a.log",
            10 * mib,
            Some(10 * mib),
            "a.log [##############################] 100% 10.0/10.0 MiB",
        ),
        // Read past a size taken earlier (a growing log): capped, never a panic.
        (
            "a.log",
            11 * mib,
            Some(10 * mib),
            "a.log [##############################] 100% 10.0/10.0 MiB",
        ),
        ("stdin", 3 * mib, None, "stdin 3.0 MiB"),
        ("empty", 0, Some(0), "empty 0.0 MiB"),
    ];
    for (label, read, total, want) in cases {
        assert_eq!(progress_line(label, read, total), want);
    }
}

#[test]
fn reads_plain_and_gzip_lines_alike() {
    let dir = std::env::temp_dir().join(format!("baseline-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = b"one\r\ntwo\n\nthree";
    let plain = dir.join("plain.log");
    std::fs::write(&plain, text).unwrap();
    let gz = dir.join("rotated.log.1");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text).unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    for path in [&plain, &gz] {
        let mut lines = Vec::new();
        for_each_line(&Source::File(path.display().to_string()), |line| {
            lines.push(String::from_utf8_lossy(line).into_owned())
        })
        .unwrap();
        assert_eq!(lines, ["one", "two", "", "three"], "{}", path.display());
    }
    let missing = dir.join("missing.log").display().to_string();
    let error = for_each_line(&Source::File(missing.clone()), |_| {}).unwrap_err();
    assert!(
        error.starts_with(&format!("cannot read {missing}: ")),
        "{error}"
    );
    // A corrupt gzip stream is a read error naming the file, not a panic.
    let corrupt = dir.join("corrupt.gz");
    std::fs::write(&corrupt, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
    let error = for_each_line(&Source::File(corrupt.display().to_string()), |_| {}).unwrap_err();
    assert!(error.contains("corrupt.gz"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
