//! What every provider handler gets besides the knobs and the body.

/// Model name used when neither a header, the body nor the path names one.
pub const DEFAULT_MODEL: &str = "mock-model";

/// Per-request facts decided by the server, not by the provider format.
#[derive(Clone, Copy, Debug, Default)]
pub struct Call<'a> {
    /// From the process-wide counter shared by every API, for response ids.
    pub id: u64,
    /// Unix seconds, for OpenAI's `created` / `created_at`.
    pub created: u64,
    /// The model the URL names: an Azure deployment
    /// (`/openai/deployments/{d}/…`) or Gemini's `models/{m}:generateContent`.
    pub path_model: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// `x-mock-model`, else the body's `model`, else the path's, else
    /// `mock-model`. Empty names count as absent.
    pub fn model(&self, knob: Option<&'a str>, body: Option<&'a str>) -> &'a str {
        [knob, body, self.path_model]
            .into_iter()
            .flatten()
            .find(|m| !m.is_empty())
            .unwrap_or(DEFAULT_MODEL)
    }
}

/// The deployment of an Azure OpenAI path such as
/// `/openai/deployments/{d}/chat/completions`.
pub fn azure_deployment(path: &str) -> Option<&str> {
    let (_, rest) = path.split_once("/openai/deployments/")?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

/// The model of a Gemini path: the segment before the `:method`, as in
/// `/v1beta/models/gemini-2.5-flash:generateContent` or the Vertex form
/// `/v1/projects/p/locations/l/publishers/google/models/M:generateContent`.
pub fn gemini_model(path: &str) -> Option<&str> {
    let (head, _) = path.rsplit_once(':')?;
    head.rsplit('/').next().filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_precedence() {
        let c = Call {
            path_model: Some("dep"),
            ..Call::default()
        };
        assert_eq!(c.model(Some("hdr"), Some("body")), "hdr");
        assert_eq!(c.model(None, Some("body")), "body");
        assert_eq!(c.model(None, None), "dep");
        assert_eq!(c.model(Some(""), Some("")), "dep");
        assert_eq!(Call::default().model(None, None), DEFAULT_MODEL);
    }

    #[test]
    fn path_models() {
        assert_eq!(
            azure_deployment("/openai/deployments/gpt4o-prod/chat/completions"),
            Some("gpt4o-prod")
        );
        assert_eq!(azure_deployment("/openai/deployments//embeddings"), None);
        assert_eq!(azure_deployment("/v1/chat/completions"), None);
        assert_eq!(
            gemini_model("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            gemini_model(
                "/v1/projects/p/locations/l/publishers/google/models/gemini-2.0-pro:streamGenerateContent"
            ),
            Some("gemini-2.0-pro")
        );
        assert_eq!(gemini_model("/v1beta/models/:generateContent"), None);
        assert_eq!(gemini_model("/no-colon"), None);
    }
}
