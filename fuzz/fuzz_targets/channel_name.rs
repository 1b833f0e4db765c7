//! Channel names, one per input line (at most 8): parsing, single-pattern matching,
//! `overlaps`/`contains` consistency, and the subscription tree agreeing with `matches`
//! and emptying again after every pattern is removed.
#![no_main]

use halley::broker::SubscriptionTree;
use halley::protocol::ChannelName;
use halley::protocol::channel::MAX_CHANNEL_LEN;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names: Vec<ChannelName<'_>> = text
        .split('\n')
        .take(8)
        .filter_map(|line| ChannelName::parse(line).ok())
        .collect();

    for a in &names {
        let s = a.as_str();
        assert!(s.starts_with('/') && s.len() <= MAX_CHANNEL_LEN, "{s:?}");
        assert_eq!(ChannelName::parse(s).as_ref(), Ok(a), "parsing is stable");
        assert!(a.segments().all(|seg| !seg.is_empty()), "{s:?}");
        if a.wildcard().is_none() {
            assert!(a.matches(a), "{s:?} matches itself");
        }
        assert!(a.contains(a), "{s:?} contains itself");
        assert!(a.overlaps(a), "{s:?} overlaps itself");
        for b in &names {
            let t = b.as_str();
            assert_eq!(
                a.overlaps(b),
                b.overlaps(a),
                "overlaps is symmetric: {s:?} {t:?}"
            );
            if a.contains(b) {
                assert!(
                    a.overlaps(b),
                    "{s:?} contains {t:?} but does not overlap it"
                );
            }
            if a.contains(b) && b.contains(a) {
                assert_eq!(a.as_str(), b.as_str(), "mutual containment means equal");
            }
            if b.wildcard().is_none() {
                // For a concrete channel, containing it, overlapping it and matching it agree.
                let matched = a.matches(b);
                assert_eq!(a.contains(b), matched, "{s:?} contains {t:?} vs matches");
                assert_eq!(a.overlaps(b), matched, "{s:?} overlaps {t:?} vs matches");
                // Transitivity through a concrete channel: c ⊇ a and a matches b ⇒ c matches b.
                for c in &names {
                    if c.contains(a) && matched {
                        assert!(c.matches(b), "{:?} ⊇ {s:?} matches {t:?}", c.as_str());
                    }
                }
            }
        }
    }

    // The tree, with key i for names[i], must agree with single-pattern matching.
    let mut tree = SubscriptionTree::default();
    for (key, name) in names.iter().enumerate() {
        assert!(tree.insert(name, key as u64, key as u64));
        assert!(
            !tree.insert(name, key as u64, key as u64),
            "insert is idempotent"
        );
    }
    assert_eq!(tree.len(), names.len());
    for channel in names.iter().filter(|n| n.wildcard().is_none()) {
        let expected: Vec<u64> = names
            .iter()
            .enumerate()
            .filter(|(_, pattern)| pattern.matches(channel))
            .map(|(key, _)| key as u64)
            .collect();
        assert_eq!(
            tree.matches(channel),
            expected,
            "tree vs matches for {:?}",
            channel.as_str()
        );
    }
    for (key, name) in names.iter().enumerate() {
        assert!(
            tree.remove(name, key as u64),
            "{:?} was subscribed",
            name.as_str()
        );
        assert!(
            !tree.remove(name, key as u64),
            "{:?} removed twice",
            name.as_str()
        );
    }
    assert!(tree.is_empty(), "every pattern removed");
    for channel in names.iter().filter(|n| n.wildcard().is_none()) {
        assert!(tree.matches(channel).is_empty());
    }
});
