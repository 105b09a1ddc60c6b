//! `POST /predict` with a JSON body (`{"image_data": "<base64>"}`) of arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzz::request_body("application/json", data));
