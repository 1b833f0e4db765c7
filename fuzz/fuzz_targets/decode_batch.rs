//! `decode_batch` on arbitrary bytes; whatever it accepts must encode back to JSON.
#![no_main]

use halley::protocol::decode_batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut batch = Vec::new();
    if decode_batch(data, &mut batch).is_ok() {
        halley_fuzz::check_messages(&mut batch);
    }
});
