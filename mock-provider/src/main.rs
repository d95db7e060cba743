//! Deterministic mock of the OpenAI, Anthropic and Gemini APIs for
//! agent-budget's integration tests and benchmarks. See README.md for the knobs.

mod anthropic;
mod body;
mod call;
mod completions;
mod embeddings;
mod gemini;
mod json;
mod knobs;
mod openai;
mod responses;
mod server;
mod stats;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::stats::Stats;

const USAGE: &str = "usage: mock-provider [--listen ADDR] [--port-file PATH] [--threads N]
  --listen ADDR     address to bind (default 127.0.0.1:0, an ephemeral port)
  --port-file PATH  write the bound port to PATH (atomically) once listening
  --threads N       runtime worker threads (default 1)";

/// One process serves one test run, so a process-wide table is enough and
/// spares every request an `Arc` clone.
static STATS: Stats = Stats::new();

#[derive(Debug, PartialEq)]
struct Cli {
    listen: String,
    port_file: Option<PathBuf>,
    threads: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut cli = Cli {
        listen: "127.0.0.1:0".to_owned(),
        port_file: None,
        threads: 1,
    };
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => cli.listen = value()?,
            "--port-file" => cli.port_file = Some(PathBuf::from(value()?)),
            "--threads" => {
                let v = value()?;
                cli.threads =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--threads must be a positive integer, got {v:?}")
                    })?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(cli)
}

/// Write-then-rename so a test polling for the file never reads a partial port.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(cli: Cli) -> Result<(), String> {
    let listener = TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot bind {}: {e}", cli.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read bound address: {e}"))?;
    {
        // Tests wait for this exact line; a closed stdout must not kill us.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mock-provider listening on {addr}");
        let _ = out.flush();
    }
    if let Some(path) = &cli.port_file {
        write_port_file(path, addr.port())
            .map_err(|e| format!("cannot write port file {}: {e}", path.display()))?;
    }
    tokio::select! {
        _ = server::serve(listener, &STATS) => {}
        _ = shutdown_signal() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("mock-provider: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread by default: a current-thread runtime has no cross-thread
    // wakeups, which is the fastest setup for a loopback benchmark, and it
    // leaves the other cores to Envoy and the load generator.
    let rt = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-provider: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mock-provider: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Cli, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn cli_defaults_and_forms() {
        let c = args(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.threads, 1);
        assert!(c.port_file.is_none());
        let c = args(&[
            "--listen",
            "127.0.0.1:9",
            "--port-file=/tmp/p",
            "--threads",
            "2",
        ])
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.port_file.as_deref(), Some(Path::new("/tmp/p")));
        assert_eq!(c.threads, 2);
        assert!(args(&["--threads", "0"]).is_err());
        assert!(args(&["--listen"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
