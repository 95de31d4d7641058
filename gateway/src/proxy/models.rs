//! `GET /v1/models`: the priced models of configured providers that the caller's key may use.

use std::time::Instant;

use http::{HeaderMap, Response, StatusCode};

use crate::clock::now_ms;
use crate::http::auth::presented_key;
use crate::http::error::{Failure, Protocol};
use crate::http::response::{ResponseBody, plain};
use crate::proxy::reject;
use crate::state::Gateway;

/// The models list for the key in `headers`.
pub fn list(gateway: &Gateway, headers: &HeaderMap) -> Response<ResponseBody> {
    let now = now_ms();
    let key = match gateway
        .keys
        .resolve(presented_key(headers).unwrap_or_default(), now)
    {
        Ok(key) => key,
        Err(rejection) => {
            let request_id = gateway.request_id(now);
            return reject(
                gateway,
                None,
                Protocol::OpenAi,
                &request_id,
                now,
                Instant::now(),
                None,
                None,
                &Failure::InvalidApiKey(rejection),
            );
        }
    };
    let card = gateway.card.load();
    let mut data = Vec::new();
    if let Some(version) = card.at(now) {
        for price in version.models() {
            if gateway.providers.contains_key(price.model.provider())
                && key.check_model(&price.model).is_ok()
            {
                data.push(serde_json::json!({
                    "id": price.model.as_str(),
                    "object": "model",
                    "created": version.effective_from.0 / 1000,
                    "owned_by": price.model.provider(),
                }));
            }
        }
    }
    let body = serde_json::json!({ "object": "list", "data": data });
    plain(StatusCode::OK, "application/json", body.to_string())
}
