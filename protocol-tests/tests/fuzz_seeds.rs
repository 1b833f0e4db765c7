//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) through the checks the decoder fuzz targets run,
//! so every input the fuzzer ever crashed on stays a regression test in the default test run. The fuzzing
//! itself is `scripts/fuzz` (`scripts/test --fuzz`).

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::PathBuf;

use halley::protocol::decode_batch;
use halley::transport::{decode_body, decode_form};

/// The fuzz target's content types, picked by a seed's first byte (as `fuzz_targets/decode_body.rs` does).
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

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("seed");
            (path, bytes)
        })
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

#[test]
fn decode_batch_seeds_pass_the_fuzz_checks() {
    for (path, data) in seeds("decode_batch") {
        let mut batch = Vec::new();
        if decode_batch(&data, &mut batch).is_ok() {
            checks::check_messages(&mut batch);
        } else {
            panic!(
                "{}: a committed decode_batch seed should decode",
                path.display()
            );
        }
    }
}

#[test]
fn decode_form_seeds_pass_the_fuzz_checks() {
    for (path, data) in seeds("decode_form") {
        let mut batch = decode_form(&data).unwrap_or_else(|e| {
            panic!(
                "{}: a committed decode_form seed should decode: {e:?}",
                path.display()
            )
        });
        checks::check_messages(&mut batch);
    }
}

#[test]
fn decode_body_seeds_pass_the_fuzz_checks() {
    for (path, data) in seeds("decode_body") {
        let (&selector, body) = data
            .split_first()
            .unwrap_or_else(|| panic!("{}: an empty decode_body seed", path.display()));
        let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
        let mut batch = decode_body(content_type, body).unwrap_or_else(|e| {
            panic!(
                "{}: a committed decode_body seed should decode: {e:?}",
                path.display()
            )
        });
        checks::check_messages(&mut batch);
    }
}

/// `ok-*` seeds frame into requests only; `refused-*` seeds end in a refusal.
#[test]
fn http1_frame_seeds_pass_the_fuzz_checks() {
    use halley::server::http1::Framed;
    for (path, data) in seeds("http1_frame") {
        let framed = checks::check_http1_framing(&data);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let refused = matches!(framed.last(), Some(Framed::Refused(_)));
        let requests = framed
            .iter()
            .filter(|f| matches!(f, Framed::Request { .. }))
            .count();
        if name.starts_with("ok-") {
            assert!(
                !refused && requests > 0,
                "{}: should frame into requests, framed {framed:?}",
                path.display()
            );
        } else {
            assert!(
                name.starts_with("refused-") && refused,
                "{}: should be refused (and named refused-*), framed {framed:?}",
                path.display()
            );
        }
    }
}
