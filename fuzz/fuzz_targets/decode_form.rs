//! `decode_form` on arbitrary form bodies and query strings.
#![no_main]

use halley::transport::decode_form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut batch) = decode_form(data) {
        halley_fuzz::check_messages(&mut batch);
    }
});
