//! The `jsonp` callback name: found in a query string by `callback_param`, and written
//! into a script only when `is_valid_callback` accepts it. An accepted name must be a
//! dotted identifier path of at most 128 characters from `[A-Za-z0-9_$.]`.
#![no_main]

use halley::transport::callback_polling::{MAX_CALLBACK_LEN, callback_param, is_valid_callback};
use libfuzzer_sys::fuzz_target;

fn check(name: &str) {
    if !is_valid_callback(name) {
        return;
    }
    assert!(
        !name.is_empty() && name.len() <= MAX_CALLBACK_LEN,
        "{name:?}"
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.')),
        "{name:?} has a character that could break out of the script"
    );
    for part in name.split('.') {
        let first = part.bytes().next();
        assert!(
            first.is_some_and(|b| !b.is_ascii_digit()),
            "{name:?} has a part that is not an identifier"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(name) = callback_param(data) {
        check(&name);
    }
    if let Ok(name) = std::str::from_utf8(data) {
        check(name);
    }
});
