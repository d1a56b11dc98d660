//! `Value` (one plain-data value with its lock) and `AtomicValue` (an integer without a lock,
//! changed only by atomic operations).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytemuck::{CheckedBitPattern, NoUninit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::shared::poison::{self, LockResult, TryLockResult};
use crate::shared::region::{self, Kind, Region, Type};
use crate::sys::robust::Relock;

/// One value of plain data in shared memory, with its lock: Python's `multiprocessing.Value`.
///
/// `T` is plain data: integers, floats, `bool`, arrays of them, and `#[repr(C)]` structs of
/// them deriving bytemuck's `NoUninit` and `CheckedBitPattern` (or `Pod`). Every handle, in
/// every process, is the same value; pass a clone to a `#[process_fn]` to share it.
///
/// Read-modify-write under the lock: `*v.lock()? += 1`. [`get`](Value::get) and
/// [`set`](Value::set) take the lock for one copy. A holder that dies is reported to the next
/// locker, as for [`Lock`](crate::Lock). For an integer changed without a lock, see
/// [`AtomicValue`].
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Value};
///
/// #[process_fn]
/// fn add(total: Value<u64>, n: u64) {
///     *total.lock().unwrap() += n;
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let total = Value::new(0u64)?;
/// add.spawn(total.clone(), 5)?.join()?;
/// assert_eq!(total.get()?, 5);
/// # Ok(())
/// # }
/// ```
pub struct Value<T> {
    region: Arc<Region>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value { region: Arc::clone(&self.region), _t: PhantomData }
    }
}

impl<T: NoUninit + CheckedBitPattern> Value<T> {
    /// A new value in shared memory, holding `value`.
    pub fn new(value: T) -> Result<Value<T>> {
        Ok(Value { region: holding(Kind::Value, value)?, _t: PhantomData })
    }

    /// Waits for the lock, and returns a guard through which the value is read and written.
    #[inline]
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        poison::lock_result(poison::acquire(&self.region, None, "Value"), || self.guard())
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<ValueGuard<'_, T>> {
        poison::try_lock_result(poison::acquire(&self.region, Some(std::time::Instant::now()), "Value"), || {
            self.guard()
        })
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ValueGuard<'_, T>> {
        poison::try_lock_result(poison::acquire(&self.region, poison::deadline_in(timeout), "Value"), || self.guard())
    }

    /// A copy of the value, read under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::HolderDied`] when the previous holder of the lock died holding it: the value
    /// may be half-updated. The lock works again; look with [`lock`](Value::lock) and repair.
    pub fn get(&self) -> Result<T> {
        poison::with_lock(&self.region, "Value", || self.guard(), |g| Ok(*g))
    }

    /// Replaces the value, under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::HolderDied`], as for [`get`](Value::get); nothing is written then.
    pub fn set(&self, value: T) -> Result<()> {
        poison::with_lock(
            &self.region,
            "Value",
            || self.guard(),
            |mut g| {
                *g = value;
                Ok(())
            },
        )
    }

    #[inline]
    fn guard(&self) -> ValueGuard<'_, T> {
        ValueGuard { region: &self.region, _t: PhantomData }
    }
}

/// Holds a [`Value`]'s lock, and derefs to the value; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T> {
    region: &'a Region,
    /// Borrows a `T` mutably; cannot move to another thread (the lock's owner is this thread).
    _t: PhantomData<(&'a mut T, *const ())>,
}

impl<T> Deref for ValueGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the data is a valid, aligned T (written as one, checked when the handle
        // arrived), and the lock this guard holds keeps every other holder of a reference out.
        unsafe { &*self.region.data().cast::<T>() }
    }
}

impl<T> DerefMut for ValueGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference in this process.
        unsafe { &mut *self.region.data().cast::<T>() }
    }
}

impl<T> Drop for ValueGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.region.header().lock.mutex.unlock();
    }
}

impl<T: fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").field("type", &std::any::type_name::<T>()).finish_non_exhaustive()
    }
}

impl<T> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        region::serialize(&self.region, s)
    }
}

impl<'de, T: NoUninit + CheckedBitPattern> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let region = region::deserialize(d, Type::of::<T>(Kind::Value))?;
        check_bits::<T>(&region, 1).map_err(serde::de::Error::custom)?;
        Ok(Value { region, _t: PhantomData })
    }
}

/// A new region of `kind` holding `value`.
fn holding<T: NoUninit>(kind: Kind, value: T) -> Result<Arc<Region>> {
    Region::create(Type::of::<T>(kind), size_of::<T>(), Relock::Refuse, |_, data| {
        // SAFETY: `data` is aligned for T (at most a page: checked by `create`), with room for
        // a T, and nobody else sees it yet.
        unsafe { data.cast::<T>().write(value) }
    })
}

/// Checks that a region holds `n` valid `T`s (a `bool` is 0 or 1, ...).
pub(crate) fn check_bits<T: CheckedBitPattern>(region: &Region, n: usize) -> Result<()> {
    if region.len() != n * size_of::<T>() {
        return Err(Error::SharedConfig { reason: "shared memory of the wrong size for its type".into() });
    }
    // SAFETY: the region holds `len` bytes of data, initialized (a memfd starts as zeros).
    let bytes = unsafe { std::slice::from_raw_parts(region.data(), region.len()) };
    if size_of::<T>() > 0
        && bytes.chunks_exact(size_of::<T>()).any(|b| bytemuck::checked::try_from_bytes::<T>(b).is_err())
    {
        return Err(Error::SharedConfig { reason: "shared memory that does not hold valid values of its type".into() });
    }
    Ok(())
}

mod sealed {
    pub trait Sealed {}
}

/// The integer types an [`AtomicValue`] can hold: each has an atomic type in `std`.
pub trait AtomicInt: sealed::Sealed + NoUninit + CheckedBitPattern + fmt::Debug {
    #[doc(hidden)]
    type Atomic: Send + Sync;
    /// # Safety
    ///
    /// `at` is aligned for `Self::Atomic`, holds a value of `Self`, and outlives `'a`.
    #[doc(hidden)]
    unsafe fn atomic<'a>(at: *mut u8) -> &'a Self::Atomic;
    #[doc(hidden)]
    fn load(a: &Self::Atomic) -> Self;
    #[doc(hidden)]
    fn store(a: &Self::Atomic, v: Self);
    #[doc(hidden)]
    fn swap(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    fn fetch_add(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    fn fetch_sub(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    fn compare_exchange(a: &Self::Atomic, current: Self, new: Self) -> std::result::Result<Self, Self>;
}

macro_rules! atomic_int {
    ($($t:ty => $a:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl AtomicInt for $t {
            type Atomic = $a;
            #[inline]
            unsafe fn atomic<'a>(at: *mut u8) -> &'a $a {
                // SAFETY: the caller's promise: aligned, holding a value, alive for 'a.
                unsafe { <$a>::from_ptr(at.cast()) }
            }
            #[inline]
            fn load(a: &$a) -> $t { a.load(std::sync::atomic::Ordering::SeqCst) }
            #[inline]
            fn store(a: &$a, v: $t) { a.store(v, std::sync::atomic::Ordering::SeqCst) }
            #[inline]
            fn swap(a: &$a, v: $t) -> $t { a.swap(v, std::sync::atomic::Ordering::SeqCst) }
            #[inline]
            fn fetch_add(a: &$a, v: $t) -> $t { a.fetch_add(v, std::sync::atomic::Ordering::SeqCst) }
            #[inline]
            fn fetch_sub(a: &$a, v: $t) -> $t { a.fetch_sub(v, std::sync::atomic::Ordering::SeqCst) }
            #[inline]
            fn compare_exchange(a: &$a, c: $t, n: $t) -> std::result::Result<$t, $t> {
                a.compare_exchange(c, n, std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst)
            }
        }
    )*};
}

use std::sync::atomic::{AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

atomic_int!(i8 => AtomicI8, i16 => AtomicI16, i32 => AtomicI32, i64 => AtomicI64, isize => AtomicIsize,
    u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64, usize => AtomicUsize);

/// An integer in shared memory without a lock, changed only by atomic operations: Python's
/// `Value(..., lock=False)`, made safe. Where Python's unlocked value loses increments, every
/// [`fetch_add`](AtomicValue::fetch_add) here counts, from any number of processes.
///
/// Operations are sequentially consistent. Arithmetic wraps on overflow.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, AtomicValue};
///
/// #[process_fn]
/// fn count(hits: AtomicValue<u64>) {
///     for _ in 0..1000 {
///         hits.fetch_add(1);
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let hits = AtomicValue::new(0u64)?;
/// let a = count.spawn(hits.clone())?;
/// let b = count.spawn(hits.clone())?;
/// a.join()?;
/// b.join()?;
/// assert_eq!(hits.load(), 2000);
/// # Ok(())
/// # }
/// ```
pub struct AtomicValue<T> {
    region: Arc<Region>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for AtomicValue<T> {
    fn clone(&self) -> Self {
        AtomicValue { region: Arc::clone(&self.region), _t: PhantomData }
    }
}

impl<T: AtomicInt> AtomicValue<T> {
    /// A new atomic integer in shared memory, holding `value`.
    pub fn new(value: T) -> Result<AtomicValue<T>> {
        Ok(AtomicValue { region: holding(Kind::AtomicValue, value)?, _t: PhantomData })
    }

    #[inline]
    fn atomic(&self) -> &T::Atomic {
        // SAFETY: the data is page-aligned, holds a T (written at creation, checked when the
        // handle arrived), and lives as long as the region `self` holds.
        unsafe { T::atomic(self.region.data()) }
    }

    /// The value.
    #[inline]
    pub fn load(&self) -> T {
        T::load(self.atomic())
    }

    /// Replaces the value.
    #[inline]
    pub fn store(&self, value: T) {
        T::store(self.atomic(), value)
    }

    /// Replaces the value, returning the one before.
    #[inline]
    pub fn swap(&self, value: T) -> T {
        T::swap(self.atomic(), value)
    }

    /// Adds `n` (wrapping), returning the value before.
    #[inline]
    pub fn fetch_add(&self, n: T) -> T {
        T::fetch_add(self.atomic(), n)
    }

    /// Subtracts `n` (wrapping), returning the value before.
    #[inline]
    pub fn fetch_sub(&self, n: T) -> T {
        T::fetch_sub(self.atomic(), n)
    }

    /// Stores `new` if the value is `current`; returns the value before, as `Ok` when it was
    /// replaced.
    #[inline]
    pub fn compare_exchange(&self, current: T, new: T) -> std::result::Result<T, T> {
        T::compare_exchange(self.atomic(), current, new)
    }
}

impl<T: AtomicInt> fmt::Debug for AtomicValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AtomicValue").field(&self.load()).finish()
    }
}

impl<T> Serialize for AtomicValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        region::serialize(&self.region, s)
    }
}

impl<'de, T: AtomicInt> Deserialize<'de> for AtomicValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let region = region::deserialize(d, Type::of::<T>(Kind::AtomicValue))?;
        check_bits::<T>(&region, 1).map_err(serde::de::Error::custom)?;
        Ok(AtomicValue { region, _t: PhantomData })
    }
}
