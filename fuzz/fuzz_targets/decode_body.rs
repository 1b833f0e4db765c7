//! `decode_body` with each Content-Type a client sends, chosen by the first input byte;
//! the rest of the input is the POST body.
#![no_main]

use halley::transport::decode_body;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("text/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain"),
    None,
    Some("application/json;charset=UTF-8"),
    Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
    Some("text/plain;charset=UTF-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    if let Ok(mut batch) = decode_body(content_type, body) {
        halley_fuzz::check_messages(&mut batch);
    }
});
