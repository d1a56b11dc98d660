//! Any file descriptor, as a value that crosses between processes: Python's
//! `multiprocessing.reduction.send_handle` / `recv_handle`, typed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::wire::fds;

/// A file descriptor that crosses to another process as itself: in a pipe message, as a
/// `#[process_fn]`'s argument or result, in a queue item's neighbour, anywhere a handle can
/// go. What arrives is a new descriptor (a duplicate) for the same open file, socket or pipe.
/// It cannot cross TCP or an MPI rank's stream: [`Error::Encode`](crate::Error::Encode) says so.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use std::io::{Read, Seek, Write};
/// use multiproc::{process_fn, Descriptor};
///
/// /// Writes into the file the parent opened, through the descriptor it was given.
/// #[process_fn]
/// fn write_into(file: Descriptor) -> multiproc::Result<()> {
///     let mut f = std::fs::File::from(file.into_inner());
///     f.write_all(b"from the child").map_err(|e| multiproc::Error::Io { context: "write", error: e })
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let mut file = tempfile_like()?;
/// write_into.spawn(Descriptor::new(file.try_clone().unwrap().into()))?.join()??;
/// let mut text = String::new();
/// file.rewind().unwrap();
/// file.read_to_string(&mut text).unwrap();
/// assert_eq!(text, "from the child");
/// # Ok(())
/// # }
/// # fn tempfile_like() -> multiproc::Result<std::fs::File> {
/// #     let path = std::env::temp_dir().join(format!("multiproc-descriptor-doc-{}", std::process::id()));
/// #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
/// #     std::fs::remove_file(&path).unwrap();
/// #     Ok(f)
/// # }
/// ```
#[derive(Debug)]
pub struct Descriptor(OwnedFd);

impl Descriptor {
    /// Wraps a descriptor to send (a duplicate is sent; this one stays here).
    pub fn new(fd: OwnedFd) -> Descriptor {
        Descriptor(fd)
    }

    /// The descriptor.
    pub fn into_inner(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Descriptor {
    fn from(fd: OwnedFd) -> Descriptor {
        Descriptor(fd)
    }
}

impl From<Descriptor> for OwnedFd {
    fn from(d: Descriptor) -> OwnedFd {
        d.0
    }
}

impl AsFd for Descriptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl serde::Serialize for Descriptor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fds::serialize(self.0.as_fd(), s)
    }
}

impl<'de> serde::Deserialize<'de> for Descriptor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fds::deserialize(d).map(Descriptor)
    }
}
