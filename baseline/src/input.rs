//! Log sources (files or stdin, plain or gzip) read line by line through one reused buffer,
//! with a progress bar on stderr when stderr is a terminal.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const REDRAW_EVERY: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 30;

/// Where log lines come from, for messages and the progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(String),
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Stdin => "stdin",
            Source::File(path) => path,
        }
    }
}

/// Counts the (compressed, for gzip) bytes read and draws the bar.
struct Progress<R> {
    inner: R,
    read: u64,
    total: Option<u64>,
    label: String,
    enabled: bool,
    last_draw: Option<Instant>,
}

impl<R> Progress<R> {
    fn draw(&mut self, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && self.last_draw.is_some_and(|at| now - at < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(now);
        let line = progress_line(&self.label, self.read, self.total);
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[K{line}");
        let _ = stderr.flush();
    }

    fn finish(&mut self) {
        if self.enabled {
            self.draw(true);
            let _ = writeln!(io::stderr());
        }
    }
}

/// `access.log [#########---------------------]  31% 12.0/38.5 MiB` (bytes only when the
/// total is unknown, as for stdin).
pub fn progress_line(label: &str, read: u64, total: Option<u64>) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    match total {
        Some(total) if total > 0 => {
            let done = read.min(total);
            let filled = usize::try_from(done * BAR_WIDTH as u64 / total).unwrap_or(BAR_WIDTH);
            format!(
                "{label} [{}{}] {:>3}% {:.1}/{:.1} MiB",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH.saturating_sub(filled)),
                done * 100 / total,
                mib(done),
                mib(total)
            )
        }
        _ => format!("{label} {:.1} MiB", mib(read)),
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.draw(false);
        Ok(n)
    }
}

/// Calls `each_line` with every line of `source` (without its line ending), decompressing
/// gzip (detected by its magic bytes, whatever the file name).
pub fn for_each_line(source: &Source, mut each_line: impl FnMut(&[u8])) -> Result<(), String> {
    let cannot = |error: io::Error| format!("cannot read {}: {error}", source.name());
    let (reader, total): (Box<dyn Read>, Option<u64>) = match source {
        Source::Stdin => (Box::new(io::stdin().lock()), None),
        Source::File(path) => {
            let file = File::open(path).map_err(cannot)?;
            let total = file.metadata().ok().map(|m| m.len());
            (Box::new(file), total)
        }
    };
    let mut progress = Progress {
        inner: reader,
        read: 0,
        total,
        label: source.name().to_string(),
        enabled: io::stderr().is_terminal(),
        last_draw: None,
    };
    let result = {
        let mut buffered = BufReader::with_capacity(256 * 1024, &mut progress);
        let is_gzip = buffered
            .fill_buf()
            .map_err(cannot)?
            .starts_with(&GZIP_MAGIC);
        if is_gzip {
            let mut decoded = BufReader::with_capacity(
                256 * 1024,
                flate2::bufread::MultiGzDecoder::new(buffered),
            );
            read_lines(&mut decoded, &mut each_line)
        } else {
            read_lines(&mut buffered, &mut each_line)
        }
    };
    progress.finish();
    result.map_err(cannot)
}

fn read_lines(reader: &mut impl BufRead, each_line: &mut impl FnMut(&[u8])) -> io::Result<()> {
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        each_line(content);
    }
}

#[cfg(test)]
mod tests;
