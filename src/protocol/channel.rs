//! Channel names: validation, the three channel classes and wildcard patterns.
//!
//! Everything here is pure string work so that the router and the transports agree on
//! one definition of a valid name (BAYEUX.md 1.3 - 1.5).

use thiserror::Error;

/// Longest channel name accepted, in bytes. Real names are short; this bounds the work a
/// hostile name can cause in the subscription tree.
pub const MAX_CHANNEL_LEN: usize = 1024;

/// Most segments a channel name may have, for the same reason.
pub const MAX_SEGMENTS: usize = 64;

/// Why a string is not a usable channel name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// The name does not start with `/`, or is `/` alone.
    #[error("channel name must start with '/' and have at least one segment")]
    NotAbsolute,
    /// `/a//b` or `/a/`.
    #[error("channel name has an empty segment")]
    EmptySegment,
    /// A character outside CometD's set.
    #[error("channel name contains the character {0:?}, which is not allowed")]
    BadCharacter(char),
    /// `/a/*/b`: a wildcard that is not the last segment.
    #[error("a wildcard may only be the last segment")]
    WildcardNotLast,
    /// Longer than [`MAX_CHANNEL_LEN`] or deeper than [`MAX_SEGMENTS`].
    #[error("channel name is too long")]
    TooLong,
}

/// Why a channel cannot be published to. One check serves clients, the server side and
/// the HTTP API, so they refuse the same channels for the same reasons.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PublishChannelError {
    /// Not a valid channel name.
    #[error("invalid channel: {0}")]
    Invalid(#[from] ChannelError),
    /// A pattern: publishes go to one concrete channel.
    #[error("cannot publish to a wildcard pattern")]
    Wildcard,
    /// `/meta/` channels belong to the protocol.
    #[error("cannot publish to a /meta/ channel")]
    Meta,
    /// A server-side publish to a `/service/` channel: those only reach handlers, when a
    /// client publishes to them.
    #[error("a /service/ channel is never broadcast; publish to a broadcast channel")]
    Service,
    /// A client publish to one of the server's own channels.
    #[error("channels under /halley/ are the server's own")]
    Reserved,
}

/// The server's own channels (the demo's presence between nodes): clients may neither
/// publish nor subscribe to them by name.
pub const RESERVED: &str = "/halley/";

/// Who publishes, which decides whether `/service/` channels are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// A session: `/service/` publishes go to their handler.
    Session,
    /// The server itself or the HTTP API: broadcast channels only.
    Server,
}

/// What may be done with a channel, decided by its first segment (BAYEUX.md 1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelClass {
    /// `/meta/**`: protocol requests; never published to or subscribed by clients.
    Meta,
    /// `/service/**`: requests to server-side handlers; never broadcast.
    Service,
    /// Everything else: fanned out to subscribers.
    Broadcast,
}

/// The wildcard a name ends with, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wildcard {
    /// `/a/*`: exactly one more segment.
    One,
    /// `/a/**`: one or more segments.
    Many,
}

/// A validated channel name, borrowed from the message that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelName<'a> {
    name: &'a str,
    class: ChannelClass,
    wildcard: Option<Wildcard>,
}

impl<'a> ChannelName<'a> {
    /// Validates `name` against CometD's character set and segment rules.
    pub fn parse(name: &'a str) -> Result<Self, ChannelError> {
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        let rest = name.strip_prefix('/').ok_or(ChannelError::NotAbsolute)?;
        if rest.is_empty() {
            return Err(ChannelError::NotAbsolute);
        }
        let mut wildcard = None;
        let mut count = 0;
        for segment in rest.split('/') {
            count += 1;
            if count > MAX_SEGMENTS {
                return Err(ChannelError::TooLong);
            }
            if wildcard.is_some() {
                return Err(ChannelError::WildcardNotLast);
            }
            if segment.is_empty() {
                return Err(ChannelError::EmptySegment);
            }
            if let Some(bad) = segment.chars().find(|&c| !is_channel_char(c)) {
                return Err(ChannelError::BadCharacter(bad));
            }
            wildcard = match segment {
                "*" => Some(Wildcard::One),
                "**" => Some(Wildcard::Many),
                _ => None,
            };
        }
        let first = rest.split('/').next().unwrap_or_default();
        let class = match first {
            "meta" => ChannelClass::Meta,
            "service" => ChannelClass::Service,
            _ => ChannelClass::Broadcast,
        };
        Ok(ChannelName {
            name,
            class,
            wildcard,
        })
    }

    /// Parses the channel a publish names: concrete, not `/meta/`, and for the server side
    /// a broadcast channel.
    pub fn for_publish(name: &'a str, by: Publisher) -> Result<Self, PublishChannelError> {
        let channel = ChannelName::parse(name)?;
        if channel.wildcard.is_some() {
            return Err(PublishChannelError::Wildcard);
        }
        match (channel.class, by) {
            (ChannelClass::Meta, _) => Err(PublishChannelError::Meta),
            (ChannelClass::Service, Publisher::Server) => Err(PublishChannelError::Service),
            (_, Publisher::Session) if channel.is_reserved() => Err(PublishChannelError::Reserved),
            _ => Ok(channel),
        }
    }

    /// Whether it is one of the server's own channels ([`RESERVED`]).
    pub fn is_reserved(&self) -> bool {
        self.name.starts_with(RESERVED)
    }

    /// The name as it arrived.
    pub fn as_str(&self) -> &'a str {
        self.name
    }

    /// Meta, service or broadcast.
    pub fn class(&self) -> ChannelClass {
        self.class
    }

    /// The trailing wildcard, if the name is a pattern.
    pub fn wildcard(&self) -> Option<Wildcard> {
        self.wildcard
    }

    /// The segments after the leading `/`, wildcard included.
    pub fn segments(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.name[1..].split('/')
    }

    /// Whether this pattern (or exact name) matches the concrete channel `channel`.
    ///
    /// The subscription tree does this for many patterns at once; this is the
    /// one-pattern definition it is tested against.
    pub fn matches(&self, channel: &ChannelName<'_>) -> bool {
        let mut pattern = self.segments();
        let mut target = channel.segments();
        loop {
            match (pattern.next(), target.next()) {
                (Some("**"), Some(_)) if self.wildcard == Some(Wildcard::Many) => return true,
                (Some("*"), Some(_)) if self.wildcard == Some(Wildcard::One) => {
                    return target.next().is_none();
                }
                (Some(p), Some(t)) if p == t => continue,
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl ChannelName<'_> {
    /// The segments before the trailing wildcard (all of them for an exact name).
    fn literal(&self) -> impl Iterator<Item = &str> {
        let count = self.segments().count() - usize::from(self.wildcard.is_some());
        self.segments().take(count)
    }

    /// The range of segment counts of the channels this pattern matches.
    fn depths(&self) -> (usize, usize) {
        let n = self.literal().count();
        match self.wildcard {
            None => (n, n),
            Some(Wildcard::One) => (n + 1, n + 1),
            Some(Wildcard::Many) => (n + 1, usize::MAX),
        }
    }

    /// Whether some concrete channel matches both patterns.
    pub fn overlaps(&self, other: &ChannelName<'_>) -> bool {
        let (lo_a, hi_a) = self.depths();
        let (lo_b, hi_b) = other.depths();
        self.literal().zip(other.literal()).all(|(a, b)| a == b) && lo_a <= hi_b && lo_b <= hi_a
    }

    /// Whether every channel that `other` matches is matched by this pattern too.
    pub fn contains(&self, other: &ChannelName<'_>) -> bool {
        let (lo_a, hi_a) = self.depths();
        let (lo_b, hi_b) = other.depths();
        let mut theirs = other.literal();
        self.literal().all(|mine| theirs.next() == Some(mine)) && lo_a <= lo_b && hi_b <= hi_a
    }
}

/// CometD's channel character set: letters, digits, space and `!#$()*+-./@_{~}`.
fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            ' ' | '!' | '#' | '$' | '(' | ')' | '*' | '+' | '-' | '.' | '@' | '_' | '{' | '~' | '}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> ChannelName<'_> {
        ChannelName::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn accepts_the_cometd_character_set() {
        ok("/chat/room-1_a.b");
        ok("/a b/!#$()+-.@_{~}");
        ok("/foo/ba*");
        ok("/users/{id}");
    }

    #[test]
    fn rejects_malformed_names() {
        use ChannelError::*;
        for (name, err) in [
            ("", NotAbsolute),
            ("/", NotAbsolute),
            ("foo", NotAbsolute),
            ("/foo//bar", EmptySegment),
            ("/foo/", EmptySegment),
            ("/a/*/b", WildcardNotLast),
            ("/a/**/b", WildcardNotLast),
            ("/a/b%20", BadCharacter('%')),
            ("/a/é", BadCharacter('é')),
            ("/a?b", BadCharacter('?')),
        ] {
            assert_eq!(ChannelName::parse(name), Err(err), "{name}");
        }
        assert_eq!(
            ChannelName::parse(&"/a".repeat(MAX_SEGMENTS + 1)),
            Err(TooLong)
        );
        assert_eq!(
            ChannelName::parse(&format!("/{}", "a".repeat(MAX_CHANNEL_LEN))),
            Err(TooLong)
        );
    }

    #[test]
    fn classifies_by_first_segment_only() {
        assert_eq!(ok("/meta/connect").class(), ChannelClass::Meta);
        assert_eq!(ok("/meta").class(), ChannelClass::Meta);
        assert_eq!(ok("/service/echo").class(), ChannelClass::Service);
        assert_eq!(ok("/metadata").class(), ChannelClass::Broadcast);
        assert_eq!(ok("/services/x").class(), ChannelClass::Broadcast);
        assert_eq!(ok("/chat/meta").class(), ChannelClass::Broadcast);
    }

    #[test]
    fn overlap_and_containment_of_patterns() {
        let cases = [
            // (a, b, a overlaps b, a contains b)
            ("/a/**", "/a/b", true, true),
            ("/a/**", "/a/*", true, true),
            ("/a/**", "/**", true, false),
            ("/a/*", "/a/b/c", false, false),
            ("/a/*", "/a/b", true, true),
            ("/a/*", "/a/**", true, false),
            ("/a/b", "/a/*", true, false),
            ("/a/b", "/a/b", true, true),
            ("/a/b", "/a/c", false, false),
            ("/a", "/a/*", false, false),
            ("/**", "/x/y/z", true, true),
            ("/*", "/a/**", false, false),
            ("/*", "/a", true, true),
            ("/a/b/**", "/a/*", false, false),
            ("/a/b/**", "/a/**", true, false),
        ];
        for (a, b, overlaps, contains) in cases {
            assert_eq!(ok(a).overlaps(&ok(b)), overlaps, "{a} overlaps {b}");
            assert_eq!(ok(b).overlaps(&ok(a)), overlaps, "{b} overlaps {a}");
            assert_eq!(ok(a).contains(&ok(b)), contains, "{a} contains {b}");
        }
    }

    #[test]
    fn wildcard_matching_follows_the_table() {
        let table = [
            (
                "/foo/*",
                &["/foo/bar", "/foo/baz"][..],
                &["/foo", "/foobar", "/foo/bar/baz"][..],
            ),
            (
                "/foo/**",
                &["/foo/bar", "/foo/bar/baz"],
                &["/foo", "/foobar", "/foobar/baz"],
            ),
            ("/*", &["/foo"], &["/foo/bar"]),
            ("/**", &["/foo", "/a/b/c"], &[]),
            (
                "/foo/bar",
                &["/foo/bar"],
                &["/foo/bar/baz", "/foo/ba*", "/Foo/bar"],
            ),
        ];
        for (pattern, yes, no) in table {
            let p = ok(pattern);
            for c in yes {
                assert!(p.matches(&ok(c)), "{pattern} should match {c}");
            }
            for c in no {
                assert!(!p.matches(&ok(c)), "{pattern} should not match {c}");
            }
        }
    }
}
