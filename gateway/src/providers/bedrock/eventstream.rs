//! The AWS event-stream framing of ConverseStream: `[total u32][headers u32][prelude crc]
//! [headers][payload][message crc]`, both CRCs checked, every length bounded.

use bytes::{Buf as _, Bytes, BytesMut};

/// Why bytes are not a valid event-stream frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length in the prelude is impossible.
    #[error("event-stream frame has a bad length {0}")]
    Length(u32),
    /// A checksum did not match.
    #[error("event-stream frame failed its {0} CRC")]
    Crc(&'static str),
    /// A header could not be read.
    #[error("event-stream frame has a malformed header")]
    Header,
}

/// Largest frame accepted (AWS caps payloads at 24 MiB, headers at 128 KiB).
const FRAME_BYTES_MAX: u32 = 24 * 1024 * 1024 + 128 * 1024 + 16;

/// One decoded frame: its string headers and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Headers whose values are strings (the ones Bedrock sends); others are skipped.
    pub headers: Vec<(String, String)>,
    /// The payload: JSON for Converse's events and exceptions.
    pub payload: Bytes,
}

impl Frame {
    /// The value of header `name` (`:event-type`, `:message-type`), if the frame has it.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a byte stream into event-stream frames, checking both CRCs.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Appends `data` and decodes every whole frame into `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        loop {
            let Some(prelude) = self.buf.get(..12) else {
                return Ok(());
            };
            let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
            let headers_len = u32::from_be_bytes([prelude[4], prelude[5], prelude[6], prelude[7]]);
            let prelude_crc =
                u32::from_be_bytes([prelude[8], prelude[9], prelude[10], prelude[11]]);
            if crc32fast::hash(&prelude[..8]) != prelude_crc {
                return Err(FrameError::Crc("prelude"));
            }
            if !(16..=FRAME_BYTES_MAX).contains(&total) || headers_len > total - 16 {
                return Err(FrameError::Length(total));
            }
            let total = total as usize;
            if self.buf.len() < total {
                return Ok(());
            }
            let frame = self.buf.split_to(total).freeze();
            let body_end = total - 4;
            let message_crc = u32::from_be_bytes([
                frame[body_end],
                frame[body_end + 1],
                frame[body_end + 2],
                frame[body_end + 3],
            ]);
            if crc32fast::hash(&frame[..body_end]) != message_crc {
                return Err(FrameError::Crc("message"));
            }
            let headers_end = 12 + headers_len as usize;
            let headers = parse_headers(&frame[12..headers_end])?;
            out.push(Frame {
                headers,
                payload: frame.slice(headers_end..body_end),
            });
        }
    }
}

fn parse_headers(mut data: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut headers = Vec::new();
    while !data.is_empty() {
        let name_len = usize::from(data.try_get_u8().map_err(|_| FrameError::Header)?);
        let name = data.get(..name_len).ok_or(FrameError::Header)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| FrameError::Header)?;
        data.advance(name_len);
        let kind = data.try_get_u8().map_err(|_| FrameError::Header)?;
        let skip = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = usize::from(data.try_get_u16().map_err(|_| FrameError::Header)?);
                let value = data.get(..len).ok_or(FrameError::Header)?;
                if kind == 7 {
                    let value =
                        String::from_utf8(value.to_vec()).map_err(|_| FrameError::Header)?;
                    headers.push((name, value));
                }
                len
            }
            _ => return Err(FrameError::Header),
        };
        if data.len() < skip {
            return Err(FrameError::Header);
        }
        data.advance(skip);
    }
    Ok(headers)
}

/// Encodes a frame with string headers (for tests and the mock's mirror of it).
#[must_use]
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        encoded_headers.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers
            .extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = 16 + encoded_headers.len() + payload.len();
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(
        &u32::try_from(encoded_headers.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    let prelude_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&encoded_headers);
    frame.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        // botocore's own vector: one string header, a small payload.
        let vector = encode_frame(&[("content-type", "application/json")], b"{'foo':'bar'}");
        assert_eq!(
            &vector[..12],
            &[0, 0, 0, 0x3d, 0, 0, 0, 0x20, 0x07, 0xfd, 0x83, 0x96]
        );
        assert_eq!(&vector[vector.len() - 4..], &[0x8d, 0x9c, 0x08, 0xb1]);
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        // Fed a byte at a time, it still yields the one frame.
        for byte in &vector {
            decoder.push(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header("content-type"), Some("application/json"));
        assert_eq!(&out[0].payload[..], b"{'foo':'bar'}");
        let mut corrupt = vector.clone();
        corrupt[20] ^= 1;
        assert_eq!(
            Decoder::default().push(&corrupt, &mut Vec::new()),
            Err(FrameError::Crc("message"))
        );
        corrupt = vector;
        corrupt[1] ^= 1;
        assert_eq!(
            Decoder::default().push(&corrupt, &mut Vec::new()),
            Err(FrameError::Crc("prelude"))
        );
    }
}
