//! `SharedMemory`: bytes shared by every process that holds the handle, with no name anywhere.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::shared::region::{self, Kind, Region, Type, DATA_AT};
use crate::sys::robust::Relock;
use crate::sys::shm;

/// A region of bytes in shared memory: Python's `multiprocessing.shared_memory.SharedMemory`,
/// without its name.
///
/// It lives in a memfd: no file in `/dev/shm` to leak, nothing to `unlink`, no resource
/// tracker. The memory is freed when the last handle is dropped and the last process holding
/// one ends, however it ends. Pass it to a `#[process_fn]` as an argument.
///
/// It has no lock: [`read_at`](SharedMemory::read_at) and [`write_at`](SharedMemory::write_at)
/// copy through the kernel (`pread`/`pwrite`), so they are safe at any time, but concurrent
/// writers interleave as they please; guard the bytes with a [`Lock`](crate::Lock), or use an
/// [`Array<u8>`](crate::Array), whose guard gives `&mut [u8]` under its lock. For direct
/// access, [`as_ptr`](SharedMemory::as_ptr) gives the mapping.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, SharedMemory};
///
/// #[process_fn]
/// fn greet(m: SharedMemory) {
///     m.write_at(0, b"hello").unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let m = SharedMemory::new(4096)?;
/// greet.spawn(m.clone())?.join()?;
/// let mut buf = [0u8; 5];
/// m.read_at(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    region: Arc<Region>,
}

const MEMORY: Type = Type::bare(Kind::SharedMemory);

impl SharedMemory {
    /// New shared memory of `len` bytes, all zero. Pages take memory only once written.
    ///
    /// # Errors
    ///
    /// [`Error::SharedConfig`] for a `len` of zero, as CPython refuses `size=0`: memory of no
    /// bytes can hold nothing, and is most often a size computed wrong.
    pub fn new(len: usize) -> Result<SharedMemory> {
        if len == 0 {
            return Err(Error::SharedConfig {
                reason: "shared memory of 0 bytes holds nothing: give it a size of at least 1".into(),
            });
        }
        Ok(SharedMemory { region: Region::create(MEMORY, len, Relock::Refuse, |_, _| {})? })
    }

    /// New shared memory holding a copy of `bytes`; as with [`new`](SharedMemory::new), `bytes`
    /// may not be empty.
    pub fn from_bytes(bytes: &[u8]) -> Result<SharedMemory> {
        let m = SharedMemory::new(bytes.len())?;
        m.write_at(0, bytes)?;
        Ok(m)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether it is empty: never, since [`new`](SharedMemory::new) refuses a length of 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] when the range passes the end.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        shm::read_into(self.region.fd(), buf, (DATA_AT + offset) as u64)
            .map_err(|e| Error::io("could not read shared memory", e))
    }

    /// Copies `bytes` in at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] when the range passes the end (nothing is written then).
    pub fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check(offset, bytes.len())?;
        shm::write_at(self.region.fd(), bytes, (DATA_AT + offset) as u64)
            .map_err(|e| Error::io("could not write shared memory", e))
    }

    /// A copy of every byte.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        shm::read_at(self.region.fd(), self.len(), DATA_AT as u64)
            .map_err(|e| Error::io("could not read shared memory", e))
    }

    /// The start of the bytes, mapped in this process for as long as this handle lives.
    ///
    /// Reading or writing through it is `unsafe` for the caller to justify: other processes
    /// and threads may write the same bytes at the same time, unless a lock of yours keeps
    /// them out.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.data()
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::OutOfRange { index: offset.saturating_add(len), len: self.len() }),
        }
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory").field("len", &self.len()).finish()
    }
}

region::region_handle!(SharedMemory, MEMORY);
