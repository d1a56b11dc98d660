//! How an [`Error`](crate::Error) crosses between processes: a child's `?` on a multiproc call
//! returns it as the function's result, kind and message kept.
//!
//! Most fields are plain data. Two kinds need help: `&'static str` fields (names of signals,
//! of what was being encoded, of what multiproc was doing) are interned on arrival, so a
//! process that receives the same one many times keeps one copy; and an [`io::Error`] crosses
//! as its OS error code, or as its kind and message when it has none.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads a `&'static str` field: the one copy this process keeps of that text.
pub(crate) fn interned<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let text = String::deserialize(d)?;
    Ok(intern(text))
}

/// The interned copy of `text`, made the first time it is seen. The texts are multiproc's own
/// (a few dozen), or a peer's; an interning table past 4,096 entries stops growing and leaks
/// no more (each text beyond is kept once per error that carries it).
fn intern(text: String) -> &'static str {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if let Some(&known) = seen.get(text.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    if seen.len() < 4096 {
        seen.insert(leaked);
    }
    leaked
}

/// The kinds an I/O error keeps across processes when it has no OS error code.
const KINDS: [io::ErrorKind; 18] = [
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::ConnectionRefused,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::ConnectionAborted,
    io::ErrorKind::NotConnected,
    io::ErrorKind::AddrInUse,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::AlreadyExists,
    io::ErrorKind::WouldBlock,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::TimedOut,
    io::ErrorKind::WriteZero,
    io::ErrorKind::Interrupted,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::OutOfMemory,
];

/// An [`io::Error`] as it crosses.
#[derive(Serialize, Deserialize)]
struct RemoteIo {
    os: Option<i32>,
    kind: u8,
    message: String,
}

/// `#[serde(with = ...)]` for an [`io::Error`] field.
pub(crate) mod io_error {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(e: &io::Error, s: S) -> Result<S::Ok, S::Error> {
        let kind = KINDS.iter().position(|k| *k == e.kind()).unwrap_or(0) as u8;
        RemoteIo { os: e.raw_os_error(), kind, message: e.to_string() }.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<io::Error, D::Error> {
        let r = RemoteIo::deserialize(d)?;
        Ok(match r.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(KINDS.get(r.kind as usize).copied().unwrap_or(io::ErrorKind::Other), r.message),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::codec;
    use crate::Error;
    use std::time::Duration;

    fn round_trip(e: &Error) -> Error {
        let mut bytes = Vec::new();
        codec::encode_to("error", e, &mut bytes).unwrap();
        codec::decode::<Error>("error", &bytes).unwrap()
    }

    #[test]
    fn every_kind_of_field_crosses_with_its_message() {
        let errors = [
            Error::Signaled { pid: 7, signal: 11, name: "SIGSEGV" },
            Error::Decode { what: "item", type_name: "u64".into(), message: "too short".into() },
            Error::io("could not map the queue", std::io::Error::from_raw_os_error(12)),
            Error::io("a peer said", std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone")),
            Error::Item { index: 3, error: Box::new(Error::TaskTimedOut { pid: 9, timeout: Duration::from_secs(2) }) },
            Error::MessageKind { expected: "a value", found: "raw bytes" },
            Error::Empty { waited: Some(Duration::from_millis(5)) },
        ];
        for e in &errors {
            let back = round_trip(e);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(format!("{back:?}"), format!("{e:?}"), "every field kept");
        }
        match round_trip(&errors[2]) {
            Error::Io { error, .. } => assert_eq!(error.raw_os_error(), Some(12)),
            other => panic!("{other:?}"),
        }
        match round_trip(&errors[3]) {
            Error::Io { error, .. } => assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_text_received_twice_is_kept_once() {
        let a = super::intern("SIGWHATEVER".to_string());
        let b = super::intern("SIGWHATEVER".to_string());
        assert!(std::ptr::eq(a, b));
    }
}
