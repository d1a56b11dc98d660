//! What crosses between processes: frames, their encoding, their messages, the handshake.

pub(crate) mod codec;
pub(crate) mod doorbell;
pub(crate) mod error;
pub(crate) mod fds;
pub(crate) mod frame;
pub(crate) mod handshake;
pub(crate) mod items;
pub(crate) mod large;
pub(crate) mod message;
pub(crate) mod shm_stream;
