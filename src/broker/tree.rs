//! The channel subscription tree shared by all sessions.
//!
//! One node per channel segment; each node keeps its exact, `*` and `**` subscribers.
//! Finding who receives a publish walks one path from the root, so it costs the channel's
//! depth plus the number of matches, never the number of subscriptions (BAYEUX.md 1.5).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::protocol::{ChannelName, Wildcard};

/// Identifies a subscriber; used to store it once per node and to de-duplicate matches.
pub type SubscriberKey = u64;

/// Who is subscribed to what. `V` is what a match yields (the broker stores its sessions).
#[derive(Debug)]
pub struct SubscriptionTree<V> {
    root: Node<V>,
    count: usize,
}

/// One pattern's subscribers, shared copy-on-write: a publish takes a reference to the
/// set under the tree's lock and walks it after letting go, while a subscribe or
/// unsubscribe meanwhile changes a copy.
type Subscribers<V> = Arc<HashMap<SubscriberKey, V>>;

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// Subscribers of exactly this channel.
    exact: Subscribers<V>,
    /// Subscribers of `<this>/*`.
    one: Subscribers<V>,
    /// Subscribers of `<this>/**`.
    many: Subscribers<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            exact: Arc::default(),
            one: Arc::default(),
            many: Arc::default(),
        }
    }
}

/// Everyone who receives one publish: the matching subscriber sets, taken from the tree
/// in O(depth) under its lock and read after, so subscription churn does not wait for a
/// large fan-out and a fan-out does not wait for churn.
#[derive(Debug)]
pub struct Matches<V> {
    sets: Vec<Subscribers<V>>,
}

impl<V> Default for Matches<V> {
    /// Nobody: the fan-out of a publish the engine brings back later.
    fn default() -> Self {
        Matches { sets: Vec::new() }
    }
}

impl<V> Matches<V> {
    /// How many subscribers the sets hold, a session matched by several patterns counted
    /// once per pattern.
    pub fn len_upper_bound(&self) -> usize {
        self.sets.iter().map(|s| s.len()).sum()
    }

    /// Every subscriber once, however many of its patterns match.
    pub fn iter(&self) -> impl Iterator<Item = (SubscriberKey, &V)> {
        let mut seen = (self.sets.len() > 1).then(HashSet::new);
        self.sets
            .iter()
            .flat_map(|set| set.iter())
            .filter(move |(key, _)| seen.as_mut().is_none_or(|seen| seen.insert(**key)))
            .map(|(key, value)| (*key, value))
    }
}

impl<V: Clone> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.exact.is_empty()
            && self.one.is_empty()
            && self.many.is_empty()
    }

    /// The set of one pattern kind, copied first if a publish is reading it.
    fn set_mut(&mut self, wildcard: Option<Wildcard>) -> &mut HashMap<SubscriberKey, V> {
        let set = match wildcard {
            None => &mut self.exact,
            Some(Wildcard::One) => &mut self.one,
            Some(Wildcard::Many) => &mut self.many,
        };
        Arc::make_mut(set)
    }
}

impl<V> Default for SubscriptionTree<V> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::default(),
            count: 0,
        }
    }
}

/// What a subscribe or unsubscribe changed, so the broker can tell its engine when a
/// pattern gains its first subscriber or loses its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the subscriber already was (or was not) subscribed.
    None,
    /// The pattern's subscribers changed.
    Changed,
    /// The pattern went from no subscriber to one, or from one to none.
    Edge,
}

impl<V: Clone> SubscriptionTree<V> {
    /// Subscribes `key` to `pattern`.
    pub fn insert(&mut self, pattern: &ChannelName<'_>, key: SubscriberKey, value: V) -> Change {
        let mut node = &mut self.root;
        for segment in path_of(pattern) {
            node = node.children.entry(segment.into()).or_default();
        }
        let set = node.set_mut(pattern.wildcard());
        if set.insert(key, value).is_some() {
            return Change::None;
        }
        self.count += 1;
        if set.len() == 1 {
            Change::Edge
        } else {
            Change::Changed
        }
    }

    /// Unsubscribes `key` from `pattern`, pruning nodes left empty.
    pub fn remove(&mut self, pattern: &ChannelName<'_>, key: SubscriberKey) -> Change {
        let path: Vec<&str> = path_of(pattern).collect();
        let change = remove_at(&mut self.root, &path, pattern.wildcard(), key);
        if change != Change::None {
            self.count -= 1;
        }
        change
    }

    /// Everyone who receives a publish on the concrete channel `channel`.
    pub fn matches(&self, channel: &ChannelName<'_>) -> Matches<V> {
        let mut sets = Vec::new();
        let mut take = |set: &Subscribers<V>| {
            if !set.is_empty() {
                sets.push(set.clone());
            }
        };
        let segments: Vec<&str> = channel.segments().collect();
        let mut node = &self.root;
        let last = segments.len() - 1;
        let mut reached_leaf = true;
        for (depth, segment) in segments.iter().enumerate() {
            take(&node.many);
            if depth == last {
                take(&node.one);
            }
            match node.children.get(*segment) {
                Some(child) => node = child,
                None => {
                    reached_leaf = false;
                    break;
                }
            }
        }
        if reached_leaf {
            take(&node.exact);
        }
        Matches { sets }
    }

    /// At most `limit` patterns with the most subscribers, most first (the admin page's
    /// busiest channels). Walks the whole tree: for operators' pages, not the hot path.
    pub fn busiest(&self, limit: usize) -> Vec<(String, usize)> {
        let mut found = Vec::new();
        let mut path = String::new();
        collect(&self.root, &mut path, &mut found);
        found.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        found.truncate(limit);
        found
    }

    /// How many (subscriber, pattern) pairs the tree holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nobody is subscribed to anything.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The tree path of a pattern: its segments without the trailing wildcard.
fn path_of<'a>(pattern: &ChannelName<'a>) -> impl Iterator<Item = &'a str> + use<'a> {
    let skip_last = pattern.wildcard().is_some();
    let count = pattern.segments().count() - usize::from(skip_last);
    pattern.segments().take(count)
}

/// Adds every pattern under `node` (whose name is `path`) with its subscriber count.
/// Recursion depth is bounded by `channel::MAX_SEGMENTS`.
fn collect<V>(node: &Node<V>, path: &mut String, found: &mut Vec<(String, usize)>) {
    let counts = [
        ("", node.exact.len()),
        ("/*", node.one.len()),
        ("/**", node.many.len()),
    ];
    for (suffix, count) in counts {
        if count > 0 {
            let name = if path.is_empty() && suffix.is_empty() {
                "/"
            } else {
                path.as_str()
            };
            found.push((format!("{name}{suffix}"), count));
        }
    }
    for (segment, child) in &node.children {
        let len = path.len();
        path.push('/');
        path.push_str(segment);
        collect(child, path, found);
        path.truncate(len);
    }
}

/// Recursion depth is bounded by `channel::MAX_SEGMENTS`.
fn remove_at<V: Clone>(
    node: &mut Node<V>,
    path: &[&str],
    wildcard: Option<Wildcard>,
    key: SubscriberKey,
) -> Change {
    let Some((first, rest)) = path.split_first() else {
        let set = node.set_mut(wildcard);
        return match set.remove(&key) {
            None => Change::None,
            Some(_) if set.is_empty() => Change::Edge,
            Some(_) => Change::Changed,
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return Change::None;
    };
    let removed = remove_at(child, rest, wildcard, key);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName<'_> {
        ChannelName::parse(s).expect("valid")
    }

    fn matching(tree: &SubscriptionTree<SubscriberKey>, channel: &str) -> Vec<SubscriberKey> {
        let mut keys: Vec<SubscriberKey> = tree
            .matches(&name(channel))
            .iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn matches_exact_parent_star_and_ancestor_double_star() {
        let mut tree = SubscriptionTree::default();
        let subs = [
            (1, "/a/b/c"),
            (2, "/a/b/*"),
            (3, "/a/b/**"),
            (4, "/a/**"),
            (5, "/**"),
            (6, "/a/*"),
            (7, "/a/b/c/d"),
            (8, "/a/b"),
            (9, "/x/**"),
        ];
        for (key, pattern) in subs {
            assert_ne!(tree.insert(&name(pattern), key, key), Change::None);
        }
        assert_eq!(matching(&tree, "/a/b/c"), vec![1, 2, 3, 4, 5]);
        assert_eq!(matching(&tree, "/a/b"), vec![4, 5, 6, 8]);
        assert_eq!(matching(&tree, "/a"), vec![5]);
        assert_eq!(matching(&tree, "/a/zz/c"), vec![4, 5]);
        assert_eq!(matching(&tree, "/q"), vec![5]);
    }

    #[test]
    fn one_copy_per_subscriber_with_overlapping_patterns() {
        let mut tree = SubscriptionTree::default();
        for pattern in ["/a/*", "/a/**", "/a/b", "/**"] {
            tree.insert(&name(pattern), 42, 42);
        }
        assert_eq!(matching(&tree, "/a/b"), vec![42]);
        assert_eq!(tree.len(), 4);
    }

    #[test]
    fn the_busiest_patterns_come_first() {
        let mut tree = SubscriptionTree::default();
        for key in 0..3 {
            tree.insert(&name("/chat/room"), key, key);
        }
        tree.insert(&name("/chat/*"), 7, 7);
        tree.insert(&name("/**"), 8, 8);
        tree.insert(&name("/**"), 9, 9);
        assert_eq!(
            tree.busiest(2),
            vec![("/chat/room".to_string(), 3), ("/**".to_string(), 2)]
        );
        assert_eq!(tree.busiest(10).len(), 3);
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_subscriptions() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&name("/a"), 1, 1);
        let before = tree.matches(&name("/a"));
        tree.insert(&name("/a"), 2, 2);
        tree.remove(&name("/a"), 1);
        let keys: Vec<_> = before.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![1], "the publish sees the set as it was");
        assert_eq!(matching(&tree, "/a"), vec![2]);
    }

    #[test]
    fn insert_is_idempotent_and_remove_prunes() {
        let mut tree = SubscriptionTree::default();
        assert_eq!(tree.insert(&name("/a/b/c"), 1, 1), Change::Edge);
        assert_eq!(tree.insert(&name("/a/b/c"), 1, 1), Change::None);
        assert_eq!(tree.insert(&name("/a/b/c"), 2, 2), Change::Changed);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.remove(&name("/a/b/c"), 1), Change::Changed);
        assert_eq!(tree.remove(&name("/a/b/c"), 2), Change::Edge);
        assert_eq!(tree.remove(&name("/a/b/c"), 1), Change::None);
        assert_eq!(tree.remove(&name("/never/there"), 1), Change::None);
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "empty nodes are pruned");
        tree.insert(&name("/a/**"), 1, 1);
        tree.insert(&name("/a/b"), 2, 2);
        tree.remove(&name("/a/**"), 1);
        assert_eq!(matching(&tree, "/a/b"), vec![2]);
        assert!(tree.root.children.contains_key("a"));
    }

    #[test]
    fn agrees_with_single_pattern_matching() {
        let patterns = [
            "/a", "/a/*", "/a/**", "/a/b", "/a/b/*", "/a/b/**", "/*", "/**", "/b/*",
        ];
        let channels = [
            "/a", "/b", "/a/b", "/a/c", "/a/b/c", "/a/b/c/d", "/b/a", "/ab",
        ];
        let mut tree = SubscriptionTree::default();
        for (key, p) in patterns.iter().enumerate() {
            tree.insert(&name(p), key as u64, key as u64);
        }
        for c in channels {
            let expected: Vec<u64> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| name(p).matches(&name(c)))
                .map(|(k, _)| k as u64)
                .collect();
            assert_eq!(matching(&tree, c), expected, "{c}");
        }
    }
}
