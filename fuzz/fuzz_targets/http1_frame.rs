//! The HTTP/1.1 request reader's framing (heads, Content-Length and chunked bodies,
//! pipelining) on arbitrary connection bytes, delivered at once and split every way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    halley_fuzz::check_http1_framing(data);
});
