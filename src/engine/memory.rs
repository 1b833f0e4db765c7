//! The in-memory engine: one process, no network.
//!
//! With one broker it has nothing to carry, and a publish costs one read of an empty
//! list. Brokers built with clones of one `MemoryEngine` are nodes of an in-process
//! cluster: each publish is handed to every other node, which is how the engine seam is
//! tested without a network.

use std::sync::{Arc, RwLock};

use super::{Confirmation, Engine, EngineError, Interest, Publish};
use crate::broker::WeakBroker;

/// The default engine. Clones share their nodes.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    nodes: Arc<RwLock<Vec<WeakBroker>>>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.nodes.read().map_or(0, |n| n.len());
        f.debug_struct("MemoryEngine")
            .field("nodes", &nodes)
            .finish()
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, node: WeakBroker) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|n| n.upgrade().is_some());
        nodes.push(node);
    }

    fn publish(&self, publish: &Publish<'_>) -> Result<Option<Confirmation>, EngineError> {
        let others: Vec<WeakBroker> = {
            let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
            if nodes.len() < 2 {
                return Ok(None);
            }
            nodes.clone()
        };
        // No lock held while other nodes fan out.
        for node in others.iter().filter_map(WeakBroker::upgrade) {
            if node.node_id() != publish.origin {
                node.deliver_from_engine(publish);
            }
        }
        Ok(None)
    }

    fn interest(&self, _pattern: &str, _change: Interest) {
        // Every node gets every publish; a node without subscribers matches nobody.
    }
}
