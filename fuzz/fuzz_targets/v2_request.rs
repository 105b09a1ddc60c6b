//! An Open Inference Protocol inference body, JSON or with binary tensor data, of arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzz::v2_request(data));
