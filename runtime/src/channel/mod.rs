//! Channels between processes: pipes (two typed ends) and queues (any number of producers and
//! consumers). Both are handles: they cross to a child as ordinary arguments.

mod descriptor;
mod listener;
pub(crate) mod pipe;
mod queue;
mod wait;

pub use descriptor::Descriptor;
pub use listener::Listener;
pub use pipe::{pipe, pipe_one_way, Connection, Receiver, RecvIter, Sender};
pub use queue::{JoinableQueue, Queue, QueueIter};
pub use wait::{wait, Source, Waitable};
