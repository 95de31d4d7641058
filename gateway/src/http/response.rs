//! Responses, built in one place: whole bodies (JSON answers, errors, listings) and streamed
//! ones (a metered upstream answer), every one carrying its `x-request-id`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::http::error::{Failure, Protocol};

/// The header naming a request in answers, events and logs.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why a streamed body stopped early (hyper then closes the connection).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body: an upstream answer on its way through the meter.
pub type Streamed = Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>;

/// The sending end of a [`ResponseBody::Channel`]: chunks as they are made, and an error to
/// cut the body short.
pub type ChannelSender = tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>;

/// Chunks a channel body holds before its maker waits for the client.
const CHANNEL_CHUNKS_MAX: usize = 4;

/// A response body: whole, or streamed.
pub enum ResponseBody {
    /// A body held whole (an error, a non-streamed admin answer), sent in one frame; `None`
    /// once sent.
    Full(Option<Bytes>),
    /// A body sent as it arrives.
    Streamed(Streamed),
    /// A body made on another thread (an export), sent as each chunk is ready; bounded, so a
    /// slow client slows its maker.
    Channel(tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>),
}

/// A channel body and its sender.
#[must_use]
pub fn channel() -> (ChannelSender, ResponseBody) {
    let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS_MAX);
    (sender, ResponseBody::Channel(receiver))
}

impl ResponseBody {
    /// A body held whole.
    #[must_use]
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Streamed(body) => body.as_mut().poll_frame(cx),
            ResponseBody::Channel(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Streamed(body) => body.is_end_stream(),
            ResponseBody::Channel(receiver) => receiver.is_closed() && receiver.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Streamed(body) => body.size_hint(),
            ResponseBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// A whole response of `content_type`.
#[must_use]
pub fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer for the request `request_id`.
#[must_use]
pub fn json(
    status: StatusCode,
    request_id: &str,
    value: &serde_json::Value,
) -> Response<ResponseBody> {
    let mut response = plain(status, "application/json", value.to_string());
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    response
}

/// The error response for `failure` in the route's envelope (the event, where there is one,
/// is the caller's).
#[must_use]
pub fn error_response(
    protocol: Protocol,
    request_id: &str,
    failure: &Failure,
) -> Response<ResponseBody> {
    let class = failure.class();
    let mut response = plain(class.status, "application/json", failure.body(protocol));
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, id);
    }
    if let Some(seconds) = failure.retry_after_s() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
