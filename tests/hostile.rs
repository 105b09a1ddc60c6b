//! Inputs built to cost a server far more than they cost the client, against a real
//! `tandem serve`: each is refused quickly, with the right status, and leaves no job behind.

mod common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use common::{Tandem, get_json, post_bytes};

/// A small JPEG with `extra` more scans after its own.
fn jpeg_with_scans(extra: usize) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64))
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .expect("encode");
    let mut bytes = jpeg[..jpeg.len() - 2].to_vec();
    for _ in 0..extra {
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x00]);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

#[test]
fn scan_bombs_and_oversized_gif_frames_are_refused_fast() {
    let server = Tandem::serve(&[]);
    let url = server.url("/predict");

    // 1,000 scans in a few KB: 400 in well under a second, never queued for the accurate tier.
    let started = Instant::now();
    let (status, body) = post_bytes(&url, "image/jpeg", &jpeg_with_scans(1000));
    let took = started.elapsed();
    assert_eq!((status, common::as_error(&body).error.code.as_str()), (400, "image_too_complex"), "{body}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A GIF whose screen is 1x1 but whose frame is 11000x11000 (121 MP): 413 from the frame's
    // own descriptor.
    let mut gif = b"GIF89a\x01\0\x01\0\0\0\0".to_vec();
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xF8, 0x2A, 0xF8, 0x2A, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    let (status, body) = post_bytes(&url, "image/gif", &gif);
    assert_eq!((status, common::as_error(&body).error.code.as_str()), (413, "image_too_large"), "{body}");
    assert!(common::as_error(&body).error.message.contains("11000x11000"), "{body}");

    // Neither left work behind: nothing was enqueued.
    let text = common::agent().get(&server.url("/metrics")).call().expect("metrics").into_body().read_to_string();
    assert!(text.expect("metrics").contains("tandem_jobs_enqueued_total 0"));
    assert_eq!(get_json(&server.url("/health")).0, 200);
}

// ---------------------------------------------------------------------------------------------
// Memory: small files that decode to hundreds of MB.

/// One PNG chunk: length, type, data, CRC over type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// zlib of `len` zero bytes, streamed (nothing of that size is held).
fn zlib_zeros(len: usize, row: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; row];
    let mut left = len;
    while left > 0 {
        let n = left.min(row);
        encoder.write_all(&zeros[..n]).expect("compress");
        left -= n;
    }
    encoder.finish().expect("compress")
}

/// A PNG of zeros: `depth` 8 or 16, `color` 2 (RGB) or 6 (RGBA); `extra` chunks before IDAT.
fn zero_png(width: u32, height: u32, depth: u8, color: u8, extra: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let channels = if color == 6 { 4 } else { 3 };
    let row = 1 + width as usize * channels * usize::from(depth / 8);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    for (kind, data) in extra {
        png_chunk(&mut png, kind, data);
    }
    png_chunk(&mut png, b"IDAT", &zlib_zeros(row * height as usize, row));
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// The server's resident memory and its peak since [`reset_peak`], in bytes, from /proc.
fn rss(server: &Tandem) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("/proc status");
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
        line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak (VmHWM) to the current RSS, so the peak a test reads is the one it caused,
/// not the model loading's.
fn reset_peak(server: &Tandem) -> u64 {
    std::fs::write(format!("/proc/{}/clear_refs", server.child.id()), "5").expect("clear_refs");
    rss(server).0
}

/// Posts `body` from `n` clients at once; returns each (status, error code).
fn post_concurrently(url: &str, body: &[u8], n: usize) -> Vec<(u16, String)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    let (status, answer) = post_bytes(url, "image/png", body);
                    (status, answer["error"]["code"].as_str().unwrap_or("").to_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    })
}

const MIB: u64 = 1 << 20;

/// 8000x8000 PNGs of zeros are ~200 KB and decode to 192 MB (RGB8) or 512 MB (RGBA16). With
/// `--decode-memory 500MiB` one RGBA16 image needs more than the whole budget (413); an RGB8
/// one reserves 384 MB (pixels and a rotated copy), so of four at once one is decoded at a
/// time and the others are refused for now (503). The peak stays within the budget, where
/// four such files at once took 2.6 GB before.
#[test]
fn concurrent_decodes_stay_within_the_decode_memory_budget() {
    let server = Tandem::serve(&["--decode-memory", "500MiB"]);
    let url = server.url("/predict");
    let rgba16 = zero_png(8000, 8000, 16, 6, &[]);
    let rgb8 = zero_png(8000, 8000, 8, 2, &[]);
    assert!(rgba16.len() < 2_000_000 && rgb8.len() < 1_000_000);
    let before = reset_peak(&server);

    let (status, body) = post_bytes(&url, "image/png", &rgba16);
    assert_eq!((status, common::as_error(&body).error.code.as_str()), (413, "image_too_large"), "{body}");
    assert!(common::as_error(&body).error.message.contains("--decode-memory"), "{body}");

    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.extend(post_concurrently(&url, &rgb8, 4));
    }
    for (status, code) in &outcomes {
        assert!(*status == 200 || (*status == 503 && code == "decode_busy"), "{outcomes:?}");
    }
    assert!(outcomes.iter().any(|(status, _)| *status == 200), "{outcomes:?}");
    assert!(outcomes.iter().any(|(status, _)| *status == 503), "never over the budget: {outcomes:?}");
    let (_, peak) = rss(&server);
    // The budget plus what the rest of a request holds (bodies, tensors, allocator slack).
    assert!(peak < before + 500 * MIB + 120 * MIB, "peak RSS {} MiB from {} MiB", peak / MIB, before / MIB);
    assert_eq!(get_json(&server.url("/health")).0, 200);
}

/// A 64x64 PNG whose ICC profile inflates to 400 MB: the profile is never inflated.
#[test]
fn png_chunks_that_classification_does_not_use_are_not_inflated() {
    let server = Tandem::serve(&[]);
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend_from_slice(&zlib_zeros(400 << 20, 1 << 20));
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend_from_slice(&zlib_zeros(200 << 20, 1 << 20));
    let png = zero_png(64, 64, 8, 2, &[(b"iCCP", iccp), (b"zTXt", ztxt)]);
    assert!(png.len() < 1_000_000, "{}", png.len());
    let before = reset_peak(&server);
    let outcomes = post_concurrently(&server.url("/predict"), &png, 2);
    assert!(outcomes.iter().all(|(status, _)| *status == 200), "{outcomes:?}");
    let (_, peak) = rss(&server);
    assert!(peak < before + 64 * MIB, "peak RSS {} MiB from {} MiB", peak / MIB, before / MIB);
}

// ---------------------------------------------------------------------------------------------
// Connections: slow bodies, refusals before the body, timed-out work.

/// Opens a connection that sends its headers and the first bytes of a `declared`-byte body,
/// then stalls.
fn stalled_upload(base: &str, declared: usize) -> std::net::TcpStream {
    use std::io::Write as _;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let head =
        format!("POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/jpeg\r\ncontent-length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(&[0xFF, 0xD8]).expect("write");
    stream
}

fn read_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits until the server reports `n` bodies being received.
fn wait_for_uploads(server: &Tandem, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = format!("tandem_uploads_in_progress {n}");
    loop {
        let text = common::agent().get(&server.url("/metrics")).call().expect("metrics").into_body().read_to_string();
        if text.expect("metrics").lines().any(|line| line == want) {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} uploads in progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sample() -> Vec<u8> {
    std::fs::read(common::images_dir().join("sample_01.jpg")).expect("photo")
}

/// 64 clients that send headers and then trickle their bodies hold no inference permits: a
/// normal request still gets its answer, and the stalled ones get 408 at --body-timeout.
#[test]
fn slow_bodies_do_not_lock_out_other_clients() {
    let server = Tandem::serve(&["--max-inflight", "4", "--body-timeout", "2"]);
    // They declare the largest body allowed, as an attacker would, and send 2 bytes of it.
    let mut stalled: Vec<_> = (0..64).map(|_| stalled_upload(&server.base, 10 * 1024 * 1024)).collect();
    wait_for_uploads(&server, 64);
    for _ in 0..3 {
        let (status, body) = post_bytes(&server.url("/predict"), "image/jpeg", &sample());
        assert_eq!(status, 200, "{body}");
    }
    let started = Instant::now();
    let response = read_response(&mut stalled[0]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_timeout\""), "{response}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Refused before its body was read (every upload slot taken), a client that writes its whole
/// body first still reads the 429 with Retry-After, not a reset connection; and with few
/// in-flight permits, many concurrent large uploads are all answered.
#[test]
fn refusals_reach_clients_that_are_still_sending() {
    let server = Tandem::serve(&["--max-uploads", "2", "--max-inflight", "2"]);
    let photo = std::fs::read(common::images_dir().join("large/photo_4000x3000.jpg")).expect("12 MP photo");
    let _held = [stalled_upload(&server.base, 1_000_000), stalled_upload(&server.base, 1_000_000)];
    wait_for_uploads(&server, 2);
    let response = common::agent()
        .post(&server.url("/predict"))
        .header("content-type", "image/jpeg")
        .send(&photo[..])
        .expect("an answer, not a broken pipe");
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    drop(_held);

    let server = Tandem::serve(&["--max-inflight", "2"]);
    let outcomes: Vec<Result<u16, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| {
                scope.spawn(|| {
                    let request = common::agent().post(&server.url("/predict")).header("content-type", "image/jpeg");
                    request.send(&photo[..]).map(|r| r.status().as_u16()).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    });
    assert!(outcomes.iter().all(|o| matches!(o, Ok(200 | 429))), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| matches!(o, Ok(200))), "{outcomes:?}");
}

/// A request that timed out keeps its in-flight permit until its decode has ended: the next
/// request, sent at once, is refused rather than let in beside a decode still running.
#[test]
fn a_timed_out_request_holds_its_permit_until_its_decode_ends() {
    let server = Tandem::serve(&["--max-inflight", "1", "--request-timeout", "0.05"]);
    // 192 MB of pixels: its decode takes far longer than the 50 ms the request may take.
    let slow = zero_png(8000, 8000, 8, 2, &[]);
    let url = server.url("/predict");
    let mut refused = 0;
    for _ in 0..3 {
        let (status, body) = post_bytes(&url, "image/png", &slow);
        assert_eq!((status, common::as_error(&body).error.code.as_str()), (503, "timeout"), "{body}");
        let (status, _) = post_bytes(&url, "image/jpeg", &sample());
        if status == 429 {
            refused += 1;
        }
        // Past the decode, the permit is back.
        let deadline = Instant::now() + Duration::from_secs(20);
        while post_bytes(&url, "image/jpeg", &sample()).0 != 200 {
            assert!(Instant::now() < deadline, "the permit never came back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(refused, 3, "the next request was let in while the timed-out decode ran");
}
