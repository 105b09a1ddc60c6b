//! `POST /predict` with an arbitrary multipart/form-data body (fixed boundary).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzz::request_body("multipart/form-data; boundary=X-BOUNDARY", data));
