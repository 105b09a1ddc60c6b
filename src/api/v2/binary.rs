//! Triton's binary tensor data extension (`triton-inference-server/server`,
//! `docs/protocol/extension_binary_data.md`): a body whose first
//! `Inference-Header-Content-Length` bytes are the JSON request, followed by the inputs' raw
//! bytes in input order, each input saying its share with `parameters.binary_data_size`.
//! `BYTES` elements in binary are each a 4-byte little-endian length and that many bytes;
//! `FP32` elements are little-endian `f32`s. Answers use the same layout.
//!
//! Everything here reads untrusted bytes: every size is checked against what is there before
//! it is used, and nothing allocates more than the body already holds.

use bytes::Bytes;

/// The header that says where the JSON ends.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("Inference-Header-Content-Length {0:?} is not a byte count")]
    BadHeader(String),
    #[error("Inference-Header-Content-Length is {header}, but the body has only {body} bytes")]
    HeaderPastBody { header: usize, body: usize },
    #[error("input {input:?} has binary_data_size but the request has no Inference-Header-Content-Length")]
    NoBinaryPart { input: String },
    #[error("input {input:?}: binary_data_size must be a byte count, got {value}")]
    BadSize { input: String, value: String },
    #[error("input {input:?} says binary_data_size {size}, but only {left} bytes of binary data are left")]
    Short { input: String, size: u64, left: usize },
    #[error("{0} bytes of binary data follow the JSON that no input's binary_data_size claims")]
    LeftOver(usize),
    #[error("BYTES element {index}: its length prefix says {length} bytes, but only {left} are left")]
    ElementPastEnd { index: usize, length: u32, left: usize },
    #[error("BYTES data ends inside an element's 4-byte length prefix")]
    TruncatedPrefix,
    #[error("FP32 data is {0} bytes, not a whole number of 4-byte values")]
    RaggedFp32(usize),
}

/// Splits a body into its JSON and its binary part by `Inference-Header-Content-Length`
/// (absent: all JSON, no binary part).
pub fn split(body: &Bytes, header: Option<&str>) -> Result<(Bytes, Option<Bytes>), BinaryError> {
    let Some(header) = header else { return Ok((body.clone(), None)) };
    let length: usize = header.trim().parse().map_err(|_| BinaryError::BadHeader(header.to_owned()))?;
    if length > body.len() {
        return Err(BinaryError::HeaderPastBody { header: length, body: body.len() });
    }
    Ok((body.slice(..length), Some(body.slice(length..))))
}

/// Cuts the binary part into each input's share, in order: `sizes[i]` is input `i`'s name and
/// its `binary_data_size` (`None`: its data is in the JSON). Every byte must be claimed.
pub fn take_parts(
    binary: Option<&Bytes>,
    sizes: &[(String, Option<serde_json::Value>)],
) -> Result<Vec<Option<Bytes>>, BinaryError> {
    let mut at = 0usize;
    let mut parts = Vec::with_capacity(sizes.len());
    for (input, size) in sizes {
        let Some(size) = size else {
            parts.push(None);
            continue;
        };
        let Some(binary) = binary else { return Err(BinaryError::NoBinaryPart { input: input.clone() }) };
        let size = size.as_u64().ok_or_else(|| BinaryError::BadSize {
            input: input.clone(),
            value: size.to_string().chars().take(100).collect(),
        })?;
        let left = binary.len() - at;
        let wanted = usize::try_from(size).ok().filter(|&n| n <= left);
        let Some(wanted) = wanted else { return Err(BinaryError::Short { input: input.clone(), size, left }) };
        parts.push(Some(binary.slice(at..at + wanted)));
        at += wanted;
    }
    let left = binary.map_or(0, |b| b.len() - at);
    if left > 0 {
        return Err(BinaryError::LeftOver(left));
    }
    Ok(parts)
}

/// The elements of binary `BYTES` data: each a 4-byte little-endian length, then its bytes.
/// Reading stops past `most` elements (the count is then wrong, and refused by the caller).
pub fn bytes_elements(data: &Bytes, most: usize) -> Result<Vec<Bytes>, BinaryError> {
    let mut elements = Vec::new();
    let mut at = 0usize;
    while at < data.len() && elements.len() <= most {
        let prefix: [u8; 4] =
            data.get(at..at + 4).and_then(|p| p.try_into().ok()).ok_or(BinaryError::TruncatedPrefix)?;
        let length = u32::from_le_bytes(prefix);
        at += 4;
        let left = data.len() - at;
        let end = usize::try_from(length).ok().filter(|&n| n <= left).map(|n| at + n);
        let Some(end) = end else { return Err(BinaryError::ElementPastEnd { index: elements.len(), length, left }) };
        elements.push(data.slice(at..end));
        at = end;
    }
    Ok(elements)
}

/// Binary `FP32` data as values.
pub fn fp32_elements(data: &[u8]) -> Result<Vec<f32>, BinaryError> {
    if !data.len().is_multiple_of(4) {
        return Err(BinaryError::RaggedFp32(data.len()));
    }
    Ok(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `BYTES` elements in the binary layout.
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        let length = u32::try_from(element.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&element[..length as usize]);
    }
    out
}

/// `FP32` values in the binary layout.
pub fn encode_fp32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sizes(list: &[Option<u64>]) -> Vec<(String, Option<serde_json::Value>)> {
        list.iter().enumerate().map(|(i, s)| (format!("in{i}"), s.map(|n| json!(n)))).collect()
    }

    #[test]
    fn the_header_splits_json_from_binary() {
        let body = Bytes::from_static(b"{\"a\":1}BINARY");
        let (json, binary) = split(&body, Some("7")).expect("split");
        assert_eq!((&json[..], binary.as_deref()), (&b"{\"a\":1}"[..], Some(&b"BINARY"[..])));
        assert_eq!(split(&body, None).expect("all JSON").1, None);
        assert_eq!(split(&body, Some("14")), Err(BinaryError::HeaderPastBody { header: 14, body: 13 }));
        for bad in ["-1", "x", "", "1e3", "99999999999999999999999"] {
            assert!(matches!(split(&body, Some(bad)), Err(BinaryError::BadHeader(_))), "{bad:?}");
        }
    }

    #[test]
    fn every_binary_byte_belongs_to_one_input() {
        let binary = Bytes::from_static(b"aaabb");
        let parts = take_parts(Some(&binary), &sizes(&[Some(3), None, Some(2)])).expect("parts");
        assert_eq!(parts[0].as_deref(), Some(&b"aaa"[..]));
        assert_eq!(parts[1], None);
        assert_eq!(parts[2].as_deref(), Some(&b"bb"[..]));
        assert_eq!(take_parts(Some(&binary), &sizes(&[Some(3)])), Err(BinaryError::LeftOver(2)));
        assert!(matches!(
            take_parts(Some(&binary), &sizes(&[Some(6)])),
            Err(BinaryError::Short { size: 6, left: 5, .. })
        ));
        assert!(matches!(take_parts(None, &sizes(&[Some(1)])), Err(BinaryError::NoBinaryPart { .. })));
        let negative = vec![("x".to_owned(), Some(json!(-1)))];
        assert!(matches!(take_parts(Some(&binary), &negative), Err(BinaryError::BadSize { .. })));
        assert_eq!(take_parts(None, &sizes(&[None])).expect("JSON only"), vec![None]);
    }

    #[test]
    fn bytes_elements_round_trip_and_refuse_bad_prefixes() {
        let encoded = Bytes::from(encode_bytes_elements([&b"one"[..], b"", b"three"]));
        let decoded = bytes_elements(&encoded, 3).expect("decode");
        assert_eq!(bytes_elements(&encoded, 1).expect("stops early").len(), 2, "at most one past the bound");
        assert_eq!(decoded, vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from_static(b"three")]);
        assert_eq!(bytes_elements(&Bytes::from_static(&[1, 0]), 9), Err(BinaryError::TruncatedPrefix));
        let past = Bytes::from_static(&[9, 0, 0, 0, b'a']);
        assert_eq!(bytes_elements(&past, 9), Err(BinaryError::ElementPastEnd { index: 0, length: 9, left: 1 }));
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(bytes_elements(&huge, 9), Err(BinaryError::ElementPastEnd { .. })));
    }

    #[test]
    fn fp32_round_trips_and_must_be_whole() {
        let values = [0.5f32, -1.25, f32::MIN_POSITIVE];
        assert_eq!(fp32_elements(&encode_fp32(&values)).expect("decode"), values);
        assert_eq!(fp32_elements(&[0, 0, 0]), Err(BinaryError::RaggedFp32(3)));
    }
}
