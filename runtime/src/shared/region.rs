//! One shared object's memory: a memfd holding a header and the object's data, mapped once per
//! process however many handles of it the process holds or receives.
//!
//! ```text
//! 0          the robust mutex, and who holds it
//! INLINE_AT  the data of a Value of at most 64 bytes
//! 128        what the object is (kind, type, length), the words its kind uses, and the member
//!            table (who takes part, for the kinds that need to know)
//! DATA_AT    the data of a larger Value, an Array or a SharedMemory (page-aligned)
//! ```
//!
//! **Who is alive.** For the kinds that must notice a dead process (a semaphore's counts, a
//! barrier's parties), each process using the object takes a member slot and holds a lock on the
//! slot's byte through an open file description of its own. The kernel drops that lock when
//! the process dies, however it dies; a slot marked in use whose byte nobody holds is a process
//! that died without leaving. What it left is then taken back (`bury`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::sys::robust::{Relock, RobustMutex};
use crate::sys::shm::{self, ByIdentity, Mapping};

/// Marks an object's memory, with the layout's version in its last byte.
const MAGIC: u64 = u64::from_le_bytes(*b"MPSHARE\x01");
/// Processes that can take part at once in an object that counts its members.
pub(crate) const MEMBERS: usize = 128;
/// Where the data starts.
pub(crate) const DATA_AT: usize = 4096;
/// Words each kind may use as it likes.
pub(crate) const WORDS: usize = 8;

/// What an object is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Value = 1,
    AtomicValue,
    Array,
    SharedMemory,
    Lock,
    RLock,
    Condition,
    Event,
    Semaphore,
    Barrier,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Value => "Value",
            Kind::AtomicValue => "AtomicValue",
            Kind::Array => "Array",
            Kind::SharedMemory => "SharedMemory",
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Condition => "Condition",
            Kind::Event => "Event",
            Kind::Semaphore => "Semaphore",
            Kind::Barrier => "Barrier",
        }
    }

    fn from_u32(k: u32) -> Option<Kind> {
        use Kind::*;
        [Value, AtomicValue, Array, SharedMemory, Lock, RLock, Condition, Event, Semaphore, Barrier]
            .into_iter()
            .find(|kind| *kind as u32 == k)
    }

    /// Whether the object's mutex is used (and so watched by the rescuer).
    fn uses_lock(self) -> bool {
        !matches!(self, Kind::AtomicValue | Kind::SharedMemory | Kind::Event | Kind::Barrier)
    }
}

/// Takes back what a dead member held (see [`Region::sweep`]): given by the kinds whose
/// processes take member slots, called with the slot and the dead one's state word, and only
/// under the rules [`Region::bury`] keeps.
pub(crate) type Bury = fn(region: &Region, slot: usize, state: u32);

/// The type of an object's data, as checked when a handle arrives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Type {
    pub(crate) kind: Kind,
    /// `std::any::type_name` of the element type (empty for none).
    pub(crate) name: &'static str,
    pub(crate) size: usize,
    pub(crate) align: usize,
    /// For a kind whose processes take member slots, how to take back a dead one's share.
    pub(crate) bury: Option<Bury>,
}

impl Type {
    pub(crate) fn of<T>(kind: Kind) -> Type {
        Type {
            kind,
            name: std::any::type_name::<T>(),
            size: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
            bury: None,
        }
    }

    pub(crate) const fn bare(kind: Kind) -> Type {
        Type { kind, name: "", size: 0, align: 1, bury: None }
    }

    /// A kind without a data type whose processes take member slots, and `bury` what one that
    /// died held.
    pub(crate) const fn with_members(kind: Kind, bury: Bury) -> Type {
        Type { kind, name: "", size: 0, align: 1, bury: Some(bury) }
    }

    fn tag(&self) -> u64 {
        // FNV-1a: stable across builds and processes (std's hasher is seeded per process).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.name.bytes().chain((self.size as u64).to_le_bytes()).chain((self.align as u64).to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    fn describe(&self) -> String {
        match self.name {
            "" => self.kind.name().to_string(),
            name => format!("{}<{name}>", self.kind.name()),
        }
    }
}

/// A process taking part in an object.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Member {
    /// `generation << 1 | in use`.
    pub(crate) state: AtomicU32,
    pub(crate) pid: AtomicU32,
    /// What the member holds, for its kind to take back if it dies (a semaphore's counts).
    pub(crate) held: AtomicU32,
    _pad: u32,
}

/// The start of an object's memory.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Header {
    /// First: a locker touches this line, and the next one (the two are fetched together).
    pub(crate) lock: LockLine,
    /// A small value's data, next to its lock (`INLINE_AT`).
    inline: Inline,
    magic: AtomicU64,
    kind: u32,
    /// Where the data starts: `INLINE_AT` or `DATA_AT`.
    data_at: u32,
    tag: u64,
    /// Bytes of data.
    len: u64,
    /// The type's name, for an error that says what arrived.
    name: [u8; 32],
    pub(crate) words: [AtomicU32; WORDS],
    pub(crate) members: [Member; MEMBERS],
}

/// Room for a small value on the cache line after its lock's.
#[repr(C, align(64))]
#[derive(Debug)]
struct Inline([u8; 64]);

/// Where a value of at most 64 bytes lives: the line after the lock's, so that a locked
/// increment touches one pair of lines (W7: a tenth faster under contention).
pub(crate) const INLINE_AT: usize = 64;

const _: () = assert!(std::mem::size_of::<Header>() <= DATA_AT);

/// The object's mutex, and who holds it, on one cache line of their own: a locker touches
/// nothing else of the header.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct LockLine {
    pub(crate) mutex: RobustMutex,
    /// The process id of the mutex's last holder: whom to name when it died holding it.
    pub(crate) holder: AtomicU32,
}

/// An object's memory, mapped in this process.
#[derive(Debug)]
pub(crate) struct Region {
    fd: OwnedFd,
    map: Mapping,
    identity: (u64, u64),
    /// This process's id (cached: `getpid` is a system call).
    pub(crate) pid: u32,
    /// This process's member slot, for the kinds with members.
    membership: Option<Membership>,
    /// What the kind takes back from a dead member (for the kinds with members).
    burial: Option<Bury>,
}

#[derive(Debug)]
struct Membership {
    slot: u32,
    generation: u32,
    /// The open file description holding the slot's byte lock.
    private: OwnedFd,
}

/// Every object mapped in this process, by the identity of its memfd.
fn registry() -> &'static ByIdentity<Region> {
    static REGISTRY: OnceLock<ByIdentity<Region>> = OnceLock::new();
    REGISTRY.get_or_init(ByIdentity::new)
}

impl Region {
    /// Makes a new object of type `ty` with `len` bytes of data (zeros), and lets `init` set its
    /// header words and data before any other process can see it.
    pub(crate) fn create(
        ty: Type,
        len: usize,
        relock: Relock,
        init: impl FnOnce(&Header, *mut u8),
    ) -> Result<Arc<Region>> {
        let io = |e| Error::io("could not create shared memory", e);
        if ty.align > DATA_AT {
            return Err(Error::SharedConfig { reason: format!("{} needs an alignment over {DATA_AT}", ty.name) });
        }
        let inline = matches!(ty.kind, Kind::Value | Kind::AtomicValue) && len <= 64 && ty.align <= 64;
        let data_at = if inline { INLINE_AT } else { DATA_AT };
        let total = match inline {
            true => DATA_AT as u64,
            false => (DATA_AT as u64).checked_add(len as u64).ok_or_else(|| too_large(len))?,
        };
        if total > isize::MAX as u64 {
            return Err(too_large(len));
        }
        let fd = shm::memfd(&format!("multiproc-{}", ty.kind.name()), total).map_err(io)?;
        let map = Mapping::new(fd.as_fd(), total as usize).map_err(io)?;
        // SAFETY: the mapping is at least DATA_AT bytes of zeros, page-aligned; zeros are a
        // valid Header but for the fields set here, and nobody else has the memory yet.
        let header = unsafe { &mut *(map.ptr() as *mut Header) };
        header.kind = ty.kind as u32;
        header.data_at = data_at as u32;
        header.tag = ty.tag();
        header.len = len as u64;
        let name = ty.name.as_bytes();
        let n = name.len().min(header.name.len());
        header.name[..n].copy_from_slice(&name[..n]);
        header.lock.mutex.init(relock).map_err(|e| Error::io("could not make a lock", e))?;
        // SAFETY: data_at + len is within the mapping (64 + at most 64, or DATA_AT + len).
        init(header, unsafe { map.ptr().add(data_at) });
        header.magic.store(MAGIC, Release);
        let (_, identity) = shm::file_identity(fd.as_fd()).map_err(io)?;
        Region::attach(fd, map, identity, ty)
    }

    /// Uses an object whose memfd arrived with a handle, checking it is the object expected.
    pub(crate) fn open(fd: OwnedFd, ty: Type) -> Result<Arc<Region>> {
        let (len, identity) =
            shm::file_identity(fd.as_fd()).map_err(|e| Error::io("could not inspect shared memory", e))?;
        let region = match registry().get(identity) {
            Some(region) => region,
            None => {
                if len < DATA_AT as u64 {
                    return Err(mismatch(ty, "memory too small to be a multiproc object".into()));
                }
                let map =
                    Mapping::new(fd.as_fd(), len as usize).map_err(|e| Error::io("could not map shared memory", e))?;
                // SAFETY: the mapping is at least a Header long and page-aligned.
                let header = unsafe { &*(map.ptr() as *const Header) };
                let fits = match header.data_at as usize {
                    INLINE_AT => header.len <= 64,
                    DATA_AT => header.len + DATA_AT as u64 <= len,
                    _ => false,
                };
                if header.magic.load(Acquire) != MAGIC || !fits {
                    return Err(mismatch(ty, "memory that is not a multiproc object of this version".into()));
                }
                Region::attach(fd, map, identity, ty)?
            }
        };
        let h = region.header();
        if h.kind != ty.kind as u32 || h.tag != ty.tag() {
            let kind = Kind::from_u32(h.kind).map(Kind::name).unwrap_or("an unknown object");
            let end = h.name.iter().position(|b| *b == 0).unwrap_or(h.name.len());
            let found = match std::str::from_utf8(&h.name[..end]) {
                Ok("") | Err(_) => kind.to_string(),
                Ok(name) => format!("{kind}<{name}>"),
            };
            return Err(mismatch(ty, found));
        }
        Ok(region)
    }

    fn attach(fd: OwnedFd, map: Mapping, identity: (u64, u64), ty: Type) -> Result<Arc<Region>> {
        let mut region = Region { fd, map, identity, pid: std::process::id(), membership: None, burial: ty.bury };
        if ty.kind.uses_lock() {
            region.header().lock.mutex.watch(); // unwatched in `drop`, before the memory is unmapped
        }
        if ty.bury.is_some() {
            region.membership = Some(region.join()?);
            leave_at_exit();
        }
        // Two threads may have raced to map the same object: the first one's stands.
        Ok(registry().insert(identity, Arc::new(region)))
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping starts with an initialized Header (checked when mapped) and lives
        // as long as `self`; fields changed after sharing are atomics or the mutex.
        unsafe { &*(self.map.ptr() as *const Header) }
    }

    /// The start of the data (`len` bytes).
    #[inline]
    pub(crate) fn data(&self) -> *mut u8 {
        // SAFETY: data_at + len is within the mapping (checked when mapped).
        unsafe { self.map.ptr().add(self.header().data_at as usize) }
    }

    /// Bytes of data.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.header().len as usize
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A word of the header, for the object's kind.
    #[inline]
    pub(crate) fn word(&self, i: usize) -> &AtomicU32 {
        &self.header().words[i]
    }

    /// This process's member slot.
    pub(crate) fn my_slot(&self) -> Option<usize> {
        self.membership.as_ref().map(|m| m.slot as usize)
    }

    /// Takes a member slot: the first whose byte no live process holds.
    fn join(&self) -> Result<Membership> {
        let private = shm::reopen(self.fd.as_fd()).map_err(|e| Error::io("could not open shared memory again", e))?;
        for (p, member) in self.header().members.iter().enumerate() {
            // Holding the byte proves no live process has the slot: only then is it ours.
            match shm::lock_byte(private.as_fd(), p as u64) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(Error::io("could not lock a member's byte", e)),
            }
            let old = member.state.load(Acquire);
            if old & 1 == 1 {
                self.bury(p, old); // a process that died without leaving (once, if not done)
            }
            let generation = ((old >> 1) + 1) & 0x7fff_ffff;
            member.pid.store(self.pid, Relaxed);
            member.state.store((generation << 1) | 1, Release);
            return Ok(Membership { slot: p as u32, generation, private });
        }
        Err(Error::SharedConfig { reason: format!("{MEMBERS} processes use this object already") })
    }

    /// Finds the members that died without leaving, takes back what they held, and returns the
    /// process id of the first one found.
    pub(crate) fn sweep(&self) -> Option<u32> {
        let mine = self.membership.as_ref()?;
        let mut first = None;
        for (p, member) in self.header().members.iter().enumerate() {
            let state = member.state.load(Acquire);
            if state & 1 == 0 || p as u32 == mine.slot {
                continue;
            }
            // an error here must not make a live member look dead
            if shm::byte_locked_elsewhere(mine.private.as_fd(), p as u64).unwrap_or(true) {
                continue;
            }
            // Bury first, then mark the slot free: a slot marked free has nothing left to take
            // back, so a process taking it over cannot lose what the dead one held. Burying is
            // done once however many sweep at once (see `bury`).
            self.bury(p, state);
            if member.state.compare_exchange(state, state & !1, AcqRel, Acquire).is_ok() {
                first = first.or(Some(member.pid.load(Relaxed)));
            }
        }
        first
    }

    /// Takes back what the dead member in `slot` held, if the slot is still in `state` (the
    /// dead one's): once only, and never from a process that took the slot over since.
    fn bury(&self, slot: usize, state: u32) {
        if let Some(bury) = self.burial {
            bury(self, slot, state);
        }
    }
}

impl Region {
    /// Gives up this process's member slot: it left, it did not die.
    fn leave(&self) {
        if let Some(m) = &self.membership {
            let member = &self.header().members[m.slot as usize];
            let _ = member.state.compare_exchange(m.generation << 1 | 1, m.generation << 1, AcqRel, Acquire);
            shm::unlock_byte(m.private.as_fd(), m.slot as u64);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.leave();
        if Kind::from_u32(self.header().kind).is_some_and(Kind::uses_lock) {
            let lock = &self.header().lock;
            let held_here = lock.holder.load(Acquire) == self.pid && lock.mutex.is_locked();
            if held_here {
                // A thread here still holds the mutex (a guard was forgotten, or the last
                // handle went while it was held): unmapped, the kernel could not mark it when
                // that thread or process ends, and it would stay locked for ever. It stays
                // mapped (and watched), so the next locker gets `HolderDied`.
                self.map.keep();
            } else {
                self.header().lock.mutex.unwatch();
            }
        }
        registry().remove(self.identity);
    }
}

/// Makes a process that exits (`exit`, a return from `main`, a worker retiring) leave every
/// object it is a member of, even through handles it never dropped (kept in a `static`, say):
/// only a process that dies without exiting (killed, crashed, aborted) is taken for dead.
fn leave_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| shm::at_exit(leave_all));
}

extern "C" fn leave_all() {
    registry().for_each(Region::leave);
}

fn mismatch(expected: Type, found: String) -> Error {
    Error::Decode {
        what: "handle",
        type_name: expected.describe(),
        message: format!("received a handle to {found}; pass the same type on both sides"),
    }
}

fn too_large(len: usize) -> Error {
    Error::SharedConfig { reason: format!("{len} bytes of shared memory cannot be mapped") }
}

/// Serializes a region as its memfd (for a handle's `Serialize`).
pub(crate) fn serialize<S: serde::Serializer>(region: &Region, s: S) -> std::result::Result<S::Ok, S::Error> {
    crate::wire::fds::serialize(region.fd(), s)
}

/// Deserializes a region of type `ty` (for a handle's `Deserialize`).
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
    ty: Type,
) -> std::result::Result<Arc<Region>, D::Error> {
    let fd = crate::wire::fds::deserialize(d)?;
    Region::open(fd, ty).map_err(serde::de::Error::custom)
}

/// `Serialize` and `Deserialize` for a handle type that is a `region` field and nothing else.
macro_rules! region_handle {
    ($ty:ident, $TYPE:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                $crate::shared::region::serialize(&self.region, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($ty { region: $crate::shared::region::deserialize(d, $TYPE)? })
            }
        }
    };
}

pub(crate) use region_handle;
