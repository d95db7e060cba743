//! Placeholder: being written (issue 3).

use super::{ErrorKind, EventFate, Metered, PreparedRequest, Progress, Unmetered};
use crate::sse::SseEvent;

pub fn prepare_request(_body: &[u8]) -> PreparedRequest {
    PreparedRequest::default()
}

pub fn usage_from_body(_body: &[u8]) -> Result<Metered, Unmetered> {
    Err(Unmetered::NoUsage)
}

#[derive(Debug, Clone, Default)]
pub struct StreamMeter {}

impl StreamMeter {
    pub fn on_event(&mut self, _event: &SseEvent) -> EventFate {
        EventFate::Forward
    }

    pub fn finish(&self) -> Result<Metered, Unmetered> {
        Err(Unmetered::NoUsage)
    }

    pub fn progress(&self) -> Progress {
        Progress::default()
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    super::openai::error_body(kind, message)
}
