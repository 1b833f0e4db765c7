//! The `callback-polling` transport (JSONP): a GET with `message` and `jsonp` parameters,
//! answered with a script that calls the named function with the reply array
//! (BAYEUX.md 4.5). Deliveries ride only on connect replies on this transport.

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

use super::{Exchange, TransportError, decode_form, json_array};
use crate::protocol::{DecodeError, Message};

const CONTENT_TYPE: &str = "text/javascript;charset=UTF-8";

/// Longest callback name accepted.
pub const MAX_CALLBACK_LEN: usize = 128;

/// The `jsonp` parameter of a query string, if present.
pub fn callback_param(query: &[u8]) -> Option<String> {
    form_urlencoded::parse(query)
        .find(|(key, _)| key == "jsonp")
        .map(|(_, value)| value.into_owned())
}

/// Whether `name` is a dotted JavaScript identifier path of bounded length, so that it can
/// be written into a script without letting a page inject code.
pub fn is_valid_callback(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    !name.is_empty() && name.len() <= MAX_CALLBACK_LEN && name.split('.').all(identifier)
}

/// Checks the callback name and decodes the `message` parameters of a callback-polling GET.
pub fn decode(callback: String, query: &[u8]) -> Result<(String, Vec<Message>), TransportError> {
    if !is_valid_callback(&callback) {
        return Err(TransportError::BadCallback);
    }
    match decode_form(query) {
        Ok(batch) => Ok((callback, batch)),
        Err(DecodeError::Empty) => Err(TransportError::NoMessage),
        Err(error) => Err(error.into()),
    }
}

/// The broker's answer as a script calling `callback`.
pub(crate) fn respond(exchange: Exchange, callback: &str) -> Response {
    let mut response = exchange.respond(CONTENT_TYPE, |messages| script(callback, messages));
    response.headers_mut().insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/**/callback([...]);` with U+2028 and U+2029 escaped, which JSON allows in strings but
/// older JavaScript engines do not.
fn script(callback: &str, messages: &[bytes::Bytes]) -> Vec<u8> {
    let json = json_array(messages);
    let mut body = Vec::with_capacity(json.len() + callback.len() + 8);
    body.extend_from_slice(b"/**/");
    body.extend_from_slice(callback.as_bytes());
    body.push(b'(');
    let mut rest = json.as_slice();
    while let Some(at) = rest
        .windows(3)
        .position(|w| w == b"\xE2\x80\xA8" || w == b"\xE2\x80\xA9")
    {
        body.extend_from_slice(&rest[..at]);
        body.extend_from_slice(if rest[at + 2] == 0xA8 {
            b"\\u2028"
        } else {
            b"\\u2029"
        });
        rest = &rest[at + 3..];
    }
    body.extend_from_slice(rest);
    body.extend_from_slice(b");");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn callback_names_are_identifier_paths() {
        for ok in [
            "_cometd_jsonp_3",
            "__jsonp3__",
            "jQuery1234_5678",
            "a.b._c",
            "$",
            "dojo.io.script.jsonp_dojoIoScript1._jsonpCallback",
        ] {
            assert!(is_valid_callback(ok), "{ok}");
        }
        let long = "a".repeat(MAX_CALLBACK_LEN + 1);
        for bad in [
            "",
            "1a",
            "a..b",
            "a.",
            "alert(1)",
            "a;b",
            "a-b",
            "a b",
            "a[0]",
            "<script>",
            long.as_str(),
        ] {
            assert!(!is_valid_callback(bad), "{bad}");
        }
    }

    #[test]
    fn scripts_call_the_callback_and_escape_line_separators() {
        let body = script("cb", &[Bytes::from("{\"data\":\"a\u{2028}b\u{2029}\"}")]);
        assert_eq!(
            String::from_utf8(body).expect("utf8"),
            "/**/cb([{\"data\":\"a\\u2028b\\u2029\"}]);"
        );
    }

    #[test]
    fn the_jsonp_parameter_is_found_anywhere_in_the_query() {
        assert_eq!(
            callback_param(b"message=x&jsonp=cb&_=1").as_deref(),
            Some("cb")
        );
        assert_eq!(callback_param(b"message=x"), None);
    }
}
