//! The `image_data` base64 decoder (with optional data-URL prefix).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzz::base64_text(data));
