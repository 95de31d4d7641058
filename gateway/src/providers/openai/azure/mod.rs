//! Azure OpenAI: OpenAI's dialect on deployment paths (`/openai/deployments/{name}/...`) with
//! an `api-version` and an `api-key` header; the Responses API on Azure's v1 surface.

pub mod config;

use http::Request;
use http::header::{HeaderName, HeaderValue};
use tollgate_engine::UnixMs;

use super::{route_path, serves_openai};
use crate::http::route::Api;
use crate::providers::client::percent_encode_segment;
use crate::providers::read::Reader;
use crate::providers::{
    Adapter, Answer, ProviderConfig, Serve, SetupError, SliceBody, credential, native_reader,
};

const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// An Azure OpenAI resource.
#[derive(Debug)]
pub struct Azure {
    credential: Option<HeaderValue>,
    /// Checked present by config validation.
    api_version: String,
}

impl Azure {
    /// Reads the key named by `api_key_env`.
    pub fn new(
        config: &ProviderConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Azure, SetupError> {
        Ok(Azure {
            credential: credential(config, env, |key| key)?,
            api_version: config.api_version.clone().unwrap_or_default(),
        })
    }
}

impl Adapter for Azure {
    fn serves(&self, route: Api, provider: &str) -> Result<Serve, String> {
        serves_openai(route, provider)
    }

    fn path(&self, route: Api, model: &str, _stream: bool) -> String {
        let version = &self.api_version;
        match route {
            // The Responses API lives on Azure's v1 surface, not on a deployment.
            Api::Responses => format!("/openai/v1/responses?api-version={version}"),
            _ => format!(
                "/openai/deployments/{}{}?api-version={version}",
                percent_encode_segment(model),
                route_path(route)
            ),
        }
    }

    fn authorize(&self, request: &mut Request<SliceBody>, _now: UnixMs) -> Result<(), http::Error> {
        if let Some(credential) = &self.credential {
            request.headers_mut().insert(API_KEY, credential.clone());
        }
        Ok(())
    }

    fn reader(&self, answer: &Answer<'_>) -> Box<dyn Reader> {
        native_reader(answer)
    }
}
