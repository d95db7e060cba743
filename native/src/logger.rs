//! The `log` crate's records (the core's and the adapter's) into Envoy's log, under
//! `[dynamic_modules]`, at Envoy's own level.

use crate::ffi::{self, Level};

struct EnvoyLog;

fn level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug | log::Level::Trace => Level::Debug,
    }
}

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        ffi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            ffi::log(level(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

pub fn install() {
    static LOGGER: EnvoyLog = EnvoyLog;
    // Already set: the module was initialized before, nothing to do.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
