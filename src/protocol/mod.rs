//! The Bayeux wire model: messages, replies, advice, channel names and error strings.
//!
//! No I/O and no async here: the broker and every transport share these definitions.

pub mod channel;
pub mod error;
pub mod message;

pub use channel::{
    ChannelClass, ChannelError, ChannelName, PublishChannelError, Publisher, Wildcard,
};
pub use error::BayeuxError;
pub use message::{
    Advice, BAYEUX_VERSION, DecodeError, Delivery, DirectMessage, Message, Reconnect, Reply,
    decode_batch, epoch_ms,
};
