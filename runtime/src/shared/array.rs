//! `Array`: a fixed-length run of plain data in shared memory, with its lock.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytemuck::{CheckedBitPattern, NoUninit, Zeroable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::shared::poison::{self, LockResult, TryLockResult};
use crate::shared::region::{self, Kind, Region, Type};
use crate::shared::value::check_bits;
use crate::sys::robust::Relock;

/// A fixed-length array of plain data in shared memory, with its lock: Python's
/// `multiprocessing.Array`.
///
/// `T` is plain data, as for [`Value`](crate::Value). The guard of [`lock`](Array::lock)
/// derefs to `[T]`; [`get`](Array::get), [`set`](Array::set) and [`to_vec`](Array::to_vec) take
/// the lock for one copy.
///
/// An array of any size costs one mapping per process and no copy when it is passed: this is
/// the way to give a worker a large buffer (an `Array<u8>` of 64 MiB passes as one file
/// descriptor).
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, Array};
///
/// #[process_fn]
/// fn negate(a: Array<i32>) {
///     for x in a.lock().unwrap().iter_mut() {
///         *x = -*x;
///     }
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let a = Array::from_slice(&[1, 2, 3])?;
/// negate.spawn(a.clone())?.join()?;
/// assert_eq!(a.to_vec()?, [-1, -2, -3]);
/// # Ok(())
/// # }
/// ```
pub struct Array<T> {
    pub(super) region: Arc<Region>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array { region: Arc::clone(&self.region), _t: PhantomData }
    }
}

impl<T: NoUninit + CheckedBitPattern> Array<T> {
    /// A new array holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<Array<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(items);
        Array::make(items.len(), |data| {
            // SAFETY: `data` has room for `items.len()` Ts (the region's length) and nobody
            // else sees it yet; the two do not overlap (the region is a fresh mapping).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len()) }
        })
    }

    /// A new array of `len` zeros.
    pub fn zeroed(len: usize) -> Result<Array<T>>
    where
        T: Zeroable,
    {
        Array::make(len, |_| {}) // a memfd starts as zeros
    }

    fn make(len: usize, fill: impl FnOnce(*mut u8)) -> Result<Array<T>> {
        if size_of::<T>() == 0 {
            return Err(Error::SharedConfig { reason: "an Array of a zero-sized type holds nothing".into() });
        }
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| Error::SharedConfig {
            reason: format!("an Array of {len} elements of {} bytes is too large", size_of::<T>()),
        })?;
        let region = Region::create(Type::of::<T>(Kind::Array), bytes, Relock::Refuse, |_, data| fill(data))?;
        Ok(Array { region, _t: PhantomData })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.region.len() / size_of::<T>()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the lock, and returns a guard that derefs to the elements.
    #[inline]
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        poison::lock_result(poison::acquire(&self.region, None, "Array"), || self.guard())
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<ArrayGuard<'_, T>> {
        poison::try_lock_result(poison::acquire(&self.region, Some(std::time::Instant::now()), "Array"), || {
            self.guard()
        })
    }

    /// Waits at most `timeout` for the lock.
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<ArrayGuard<'_, T>> {
        poison::try_lock_result(poison::acquire(&self.region, poison::deadline_in(timeout), "Array"), || self.guard())
    }

    /// A copy of element `index`, read under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfRange`] past the end; [`Error::HolderDied`] when the lock's previous
    /// holder died holding it (nothing is read then; the lock works again).
    pub fn get(&self, index: usize) -> Result<T> {
        self.with_lock(|items| items.get(index).copied().ok_or(Error::OutOfRange { index, len: items.len() }))
    }

    /// Replaces element `index`, under the lock. Errors as for [`get`](Array::get); nothing is
    /// written then.
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        self.with_lock(|items| {
            let len = items.len();
            *items.get_mut(index).ok_or(Error::OutOfRange { index, len })? = value;
            Ok(())
        })
    }

    /// A copy of every element, read under the lock. Errors as for [`get`](Array::get).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.with_lock(|items| Ok(items.to_vec()))
    }

    fn with_lock<R>(&self, f: impl FnOnce(&mut [T]) -> Result<R>) -> Result<R> {
        poison::with_lock(&self.region, "Array", || self.guard(), |mut g| f(&mut g))
    }

    #[inline]
    fn guard(&self) -> ArrayGuard<'_, T> {
        ArrayGuard { region: &self.region, len: self.len(), _t: PhantomData }
    }
}

/// Holds an [`Array`]'s lock, and derefs to its elements; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    region: &'a Region,
    len: usize,
    _t: PhantomData<(&'a mut [T], *const ())>,
}

impl<T> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: the data is `len` valid, aligned Ts (written as such, checked when the handle
        // arrived), and the lock this guard holds keeps every other reference out.
        unsafe { std::slice::from_raw_parts(self.region.data().cast::<T>(), self.len) }
    }
}

impl<T> DerefMut for ArrayGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference in this process.
        unsafe { std::slice::from_raw_parts_mut(self.region.data().cast::<T>(), self.len) }
    }
}

impl<T> Drop for ArrayGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.region.header().lock.mutex.unlock();
    }
}

impl<T: fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("bytes", &self.region.len())
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        region::serialize(&self.region, s)
    }
}

impl<'de, T: NoUninit + CheckedBitPattern> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let region = region::deserialize(d, Type::of::<T>(Kind::Array))?;
        let n = region.len() / size_of::<T>().max(1);
        check_bits::<T>(&region, n).map_err(serde::de::Error::custom)?;
        Ok(Array { region, _t: PhantomData })
    }
}
