//! Image decode + preprocessing on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::fuzz::image(data));
