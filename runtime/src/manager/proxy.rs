//! Typed proxies to a manager's objects: each method is one request, atomic at the server.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::manager::client::{self, Endpoint, Place};
use crate::manager::proto::{Answer, Failure, Op, Request};
use crate::manager::served::Served;
use crate::wire::fds;

/// An object at a server: where, and which.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) id: u64,
}

impl Handle {
    fn call(&self, op: Op) -> Result<Answer> {
        client::call(&self.endpoint, &Request::Call { id: self.id, op })
    }

    fn call_raw(&self, op: Op) -> Result<std::result::Result<Answer, Failure>> {
        client::call_raw(&self.endpoint, &Request::Call { id: self.id, op })
    }
}

/// How a handle crosses to another process: a local manager's acceptor as a descriptor; a
/// remote one's address and key (only inside a frame, never to a file or JSON).
#[derive(Serialize, Deserialize)]
enum Wire {
    Local(u32),
    Remote(String, ByteBuf),
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let wire = match &self.endpoint.place {
            Place::Local { acceptor } => Wire::Local(fds::share(acceptor.as_fd()).map_err(S::Error::custom)?),
            Place::Remote { addr, authkey } => {
                if !fds::in_frame() {
                    return Err(S::Error::custom(fds::OUTSIDE_A_FRAME));
                }
                Wire::Remote(addr.clone(), ByteBuf::from(authkey.clone()))
            }
        };
        (wire, self.id).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let (wire, id) = <(Wire, u64)>::deserialize(d)?;
        let endpoint = match wire {
            Wire::Local(index) => {
                let fd = fds::take(index).map_err(D::Error::custom)?;
                super::local_endpoint(fd).map_err(D::Error::custom)?
            }
            Wire::Remote(addr, authkey) => Endpoint::remote(addr, authkey.into_vec()),
        };
        Ok(Handle { endpoint, id })
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| Error::Encode {
        what: "value",
        type_name: std::any::type_name::<T>().into(),
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| Error::Decode {
        what: "value",
        type_name: std::any::type_name::<T>().into(),
        message: e.to_string(),
    })
}

fn bytes<T: Serialize + ?Sized>(value: &T) -> Result<ByteBuf> {
    encode(value).map(ByteBuf::from)
}

pub(crate) fn encode_items<T: Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let encoded = items.iter().map(bytes).collect::<Result<Vec<ByteBuf>>>()?;
    encode(&encoded)
}

/// A dict's initial contents: each key and value encoded on its own, as the proxy's requests
/// carry them.
pub(crate) fn encode_pairs<K: Serialize, V: Serialize>(items: impl IntoIterator<Item = (K, V)>) -> Result<Vec<u8>> {
    let encoded = items.into_iter().map(|(k, v)| Ok((bytes(&k)?, bytes(&v)?))).collect::<Result<Vec<_>>>()?;
    encode(&encoded)
}

pub(crate) fn unexpected(answer: Answer) -> Error {
    Error::ManagerOperation { message: format!("unexpected answer {answer:?}; both sides must run the same multiproc") }
}

fn item<T: DeserializeOwned>(answer: Answer) -> Result<Option<T>> {
    match answer {
        Answer::Item(item) => item.map(|b| decode(&b)).transpose(),
        other => Err(unexpected(other)),
    }
}

fn flag(answer: Answer) -> Result<bool> {
    match answer {
        Answer::Bool(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

fn count(answer: Answer) -> Result<usize> {
    match answer {
        Answer::Count(n) => Ok(n as usize),
        other => Err(unexpected(other)),
    }
}

fn done(answer: Answer) -> Result<()> {
    match answer {
        Answer::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Marks a proxy's types: invariant, and no bound on `Send`/`Sync` from them (the proxy holds
/// none).
type Invariant<T> = fn(T) -> T;

macro_rules! proxy_impls {
    ($name:ident $(<$($t:ident),*>)?) => {
        impl$(<$($t),*>)? Clone for $name$(<$($t),*>)? {
            fn clone(&self) -> Self {
                $name { handle: self.handle.clone(), _t: PhantomData }
            }
        }

        impl$(<$($t),*>)? fmt::Debug for $name$(<$($t),*>)? {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("id", &self.handle.id).finish()
            }
        }

        impl$(<$($t),*>)? Serialize for $name$(<$($t),*>)? {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.handle.serialize(s)
            }
        }

        impl<'de $(, $($t),*)?> Deserialize<'de> for $name$(<$($t),*>)? {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($name { handle: Handle::deserialize(d)?, _t: PhantomData })
            }
        }

        impl$(<$($t),*>)? $name$(<$($t),*>)? {
            pub(crate) fn new(handle: Handle) -> Self {
                $name { handle, _t: PhantomData }
            }
        }
    };
}

/// A proxy to a dict held by a [`Manager`](crate::Manager): Python's `DictProxy`. Entries keep
/// the order they were inserted in.
///
/// Every proxy is a handle: clone it into a `#[process_fn]`'s arguments, and every process
/// reaches the same object. Each call is one request to the manager's server.
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{process_fn, DictProxy, ListProxy, LockProxy, Manager, Pool, QueueProxy, ValueProxy};
///
/// #[process_fn]
/// fn count_words(
///     text: String,
///     counts: DictProxy<String, u64>,
///     seen: ListProxy<String>,
///     total: ValueProxy<u64>,
///     log: QueueProxy<String>,
///     lock: LockProxy,
/// ) -> multiproc::Result<()> {
///     for word in text.split_whitespace() {
///         counts.update(&word.to_string(), |n| Some(n.unwrap_or(0) + 1))?; // no lost update
///         total.update(|t| t + 1)?;
///     }
///     {
///         let _held = lock.acquire()?; // released if this process dies holding it
///         seen.push(text.clone())?;
///     }
///     log.put(format!("done: {text}"))?;
///     Ok(())
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let m = Manager::start()?;
/// let (counts, seen, total) = (m.dict()?, m.list()?, m.value(0u64)?);
/// let (log, lock) = (m.queue()?, m.lock()?);
/// let pool = Pool::new(2)?;
/// let texts = ["a b a", "b c", "a"].map(String::from);
/// let args = texts.map(|t| (t, counts.clone(), seen.clone(), total.clone(), log.clone(), lock.clone()));
/// for r in pool.starmap(count_words, args)? {
///     r?;
/// }
/// assert_eq!(counts.get(&"a".into())?, Some(3));
/// assert_eq!(total.get()?, 6);
/// assert_eq!(seen.len()?, 3);
/// assert!(log.get()?.starts_with("done: "));
/// # Ok(())
/// # }
/// ```
pub struct DictProxy<K, V> {
    handle: Handle,
    _t: PhantomData<Invariant<(K, V)>>,
}

proxy_impls!(DictProxy<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// The value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        item(self.handle.call(Op::DictGet(bytes(key)?))?)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        item(self.handle.call(Op::DictInsert(bytes(&key)?, bytes(&value)?))?)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        item(self.handle.call(Op::DictRemove(bytes(key)?))?)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        flag(self.handle.call(Op::DictContains(bytes(key)?))?)
    }

    /// The value of `key`, set to `value` first if it had none (Python's `setdefault`), in one
    /// step.
    pub fn set_default(&self, key: K, value: V) -> Result<V> {
        item(self.handle.call(Op::DictSetDefault(bytes(&key)?, bytes(&value)?))?)?
            .ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Sets `key` to `new` (`None`: removes it) if its value is `expected` (`None`: absent),
    /// in one step; returns whether it did.
    pub fn compare_and_set(&self, key: &K, expected: Option<&V>, new: Option<&V>) -> Result<bool> {
        let op = Op::DictCompareAndSet {
            key: bytes(key)?,
            expected: expected.map(bytes).transpose()?,
            new: new.map(bytes).transpose()?,
        };
        flag(self.handle.call(op)?)
    }

    /// Read-modify-write without a race: `f` gets the value of `key` (if any) and returns the
    /// new one (`None`: remove). Another client's change in between makes it try again with
    /// the new value. Returns what was stored.
    pub fn update(&self, key: &K, mut f: impl FnMut(Option<V>) -> Option<V>) -> Result<Option<V>> {
        loop {
            let old = self.handle.call(Op::DictGet(bytes(key)?))?;
            let old_bytes = match &old {
                Answer::Item(b) => b.clone(),
                _ => None,
            };
            let new = f(item(old)?);
            let op = Op::DictCompareAndSet {
                key: bytes(key)?,
                expected: old_bytes,
                new: new.as_ref().map(bytes).transpose()?,
            };
            if flag(self.handle.call(op)?)? {
                return Ok(new);
            }
        }
    }

    /// Removes the entry inserted last and returns it (Python's `popitem()`); `None` when
    /// empty.
    pub fn pop_item(&self) -> Result<Option<(K, V)>> {
        match self.handle.call(Op::DictPopItem)? {
            Answer::Pairs(mut pairs) => pairs.pop().map(|(k, v)| Ok((decode(&k)?, decode(&v)?))).transpose(),
            other => Err(unexpected(other)),
        }
    }

    /// Inserts every pair of `items`, in order, in one step (Python's `update(mapping)`); a
    /// key already there gets its new value in its old place.
    pub fn extend(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = items.into_iter().map(|(k, v)| Ok((bytes(&k)?, bytes(&v)?))).collect::<Result<Vec<_>>>()?;
        done(self.handle.call(Op::DictExtend(pairs))?)
    }

    /// Every entry, in order: a snapshot, taken in one step (iterate over it while others
    /// change the dict).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.handle.call(Op::DictItems)? {
            Answer::Pairs(pairs) => pairs.into_iter().map(|(k, v)| Ok((decode(&k)?, decode(&v)?))).collect(),
            other => Err(unexpected(other)),
        }
    }

    /// Every key, in order.
    pub fn keys(&self) -> Result<Vec<K>> {
        Ok(self.items()?.into_iter().map(|(k, _)| k).collect())
    }

    /// Every value, in order.
    pub fn values(&self) -> Result<Vec<V>> {
        Ok(self.items()?.into_iter().map(|(_, v)| v).collect())
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        count(self.handle.call(Op::Len)?)
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        done(self.handle.call(Op::DictClear)?)
    }
}

/// A proxy to a list held by a [`Manager`](crate::Manager): Python's `ListProxy`.
pub struct ListProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends `value`.
    pub fn push(&self, value: T) -> Result<()> {
        done(self.handle.call(Op::ListPush(bytes(&value)?))?)
    }

    /// Element `index`. [`Error::OutOfRange`] past the end.
    pub fn get(&self, index: usize) -> Result<T> {
        item(self.handle.call(Op::ListGet(index as u64))?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Replaces element `index`; returns the one it replaced.
    pub fn set(&self, index: usize, value: T) -> Result<T> {
        item(self.handle.call(Op::ListSet(index as u64, bytes(&value)?))?)?
            .ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Inserts `value` at `index` (at the end if past it).
    pub fn insert(&self, index: usize, value: T) -> Result<()> {
        done(self.handle.call(Op::ListInsert(index as u64, bytes(&value)?))?)
    }

    /// Removes element `index` and returns it.
    pub fn remove(&self, index: usize) -> Result<T> {
        item(self.handle.call(Op::ListRemove(index as u64))?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Removes the last element and returns it.
    pub fn pop(&self) -> Result<Option<T>> {
        item(self.handle.call(Op::ListPop)?)
    }

    /// Appends every element of `items`, in one step.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<()> {
        let items = items.into_iter().map(|v| bytes(&v)).collect::<Result<Vec<_>>>()?;
        done(self.handle.call(Op::ListExtend(items))?)
    }

    /// Reverses it in place.
    pub fn reverse(&self) -> Result<()> {
        done(self.handle.call(Op::ListReverse)?)
    }

    /// Removes every element.
    pub fn clear(&self) -> Result<()> {
        done(self.handle.call(Op::ListClear)?)
    }

    /// Whether an element equals `value` (Python's `in`). Elements are compared by their
    /// encoding, which for plain data is equality (not for floats: `NaN` equals itself,
    /// `-0.0` does not equal `0.0`).
    pub fn contains(&self, value: &T) -> Result<bool> {
        Ok(self.index(value)?.is_some())
    }

    /// How many elements equal `value` (Python's `count`; compared as [`contains`](Self::contains) does).
    pub fn count(&self, value: &T) -> Result<usize> {
        count(self.handle.call(Op::ListCount(bytes(value)?))?)
    }

    /// The index of the first element equal to `value` (Python's `index`, without the
    /// exception); `None` if there is none.
    pub fn index(&self, value: &T) -> Result<Option<usize>> {
        match self.handle.call(Op::ListIndex(bytes(value)?, 0))? {
            Answer::Index(i) => Ok(i.map(|i| i as usize)),
            other => Err(unexpected(other)),
        }
    }

    /// Removes the first element equal to `value` (Python's `remove`); whether there was one.
    pub fn remove_value(&self, value: &T) -> Result<bool> {
        flag(self.handle.call(Op::ListRemoveValue(bytes(value)?))?)
    }

    /// Changes the whole list without a race: `f` gets a copy, and its changes replace the
    /// list if no other client changed it meanwhile (else it runs again on the new contents).
    pub fn modify(&self, mut f: impl FnMut(&mut Vec<T>)) -> Result<()> {
        loop {
            let old = match self.handle.call(Op::ListItems)? {
                Answer::Items(items) => items,
                other => return Err(unexpected(other)),
            };
            let mut items = old.iter().map(|b| decode(b)).collect::<Result<Vec<T>>>()?;
            f(&mut items);
            let new = items.iter().map(|v| bytes(v)).collect::<Result<Vec<_>>>()?;
            if flag(self.handle.call(Op::ListReplaceIf { expected: old, new })?)? {
                return Ok(());
            }
        }
    }

    /// Sorts it (Python's `sort()`): by `T`'s order, in this process, then stored in one step
    /// if nobody changed it meanwhile ([`modify`](Self::modify)).
    pub fn sort(&self) -> Result<()>
    where
        T: Ord,
    {
        self.modify(|v| v.sort())
    }

    /// Read-modify-write of element `index` without a race (see [`DictProxy::update`]).
    pub fn update(&self, index: usize, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let old = match self.handle.call(Op::ListGet(index as u64))? {
                Answer::Item(Some(b)) => b,
                other => return Err(unexpected(other)),
            };
            let new = f(decode(&old)?);
            let op = Op::ListCompareAndSet { index: index as u64, expected: old, new: bytes(&new)? };
            if flag(self.handle.call(op)?)? {
                return Ok(new);
            }
        }
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.handle.call(Op::ListItems)? {
            Answer::Items(items) => items.iter().map(|b| decode(b)).collect(),
            other => Err(unexpected(other)),
        }
    }

    /// The number of elements.
    pub fn len(&self) -> Result<usize> {
        count(self.handle.call(Op::Len)?)
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A proxy to one value held by a [`Manager`](crate::Manager): Python's `ValueProxy` (and,
/// with a struct, its `Namespace`).
pub struct ValueProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(ValueProxy<T>);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The value.
    pub fn get(&self) -> Result<T> {
        item(self.handle.call(Op::ValueGet)?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Replaces the value.
    pub fn set(&self, value: T) -> Result<()> {
        done(self.handle.call(Op::ValueSet(bytes(&value)?))?)
    }

    /// Read-modify-write without a race (see [`DictProxy::update`]); returns the new value.
    pub fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let old = match self.handle.call(Op::ValueGet)? {
                Answer::Item(Some(b)) => b,
                other => return Err(unexpected(other)),
            };
            let new = f(decode(&old)?);
            if flag(self.handle.call(Op::ValueCompareAndSet { expected: old, new: bytes(&new)? })?)? {
                return Ok(new);
            }
        }
    }
}

/// A proxy to a queue held by a [`Manager`](crate::Manager): Python's `manager.Queue()`.
pub struct QueueProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(QueueProxy<T>);

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Puts `item` at the back.
    pub fn put(&self, item: T) -> Result<()> {
        done(self.handle.call(Op::QueuePut(bytes(&item)?))?)
    }

    /// Takes the item at the front, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.take(None)
    }

    /// Takes the item at the front, waiting at most `timeout`: [`Error::Empty`] then.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.take(Some(timeout))
    }

    fn take(&self, timeout: Option<Duration>) -> Result<T> {
        let timeout_ms = timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
        match self.handle.call_raw(Op::QueueGet { timeout_ms })? {
            Ok(answer) => item(answer)?.ok_or_else(|| unexpected(Answer::Item(None))),
            Err(Failure::TimedOut) => Err(Error::Empty { waited: timeout }),
            Err(f) => Err(client::failure(f)),
        }
    }

    /// The number of items in it now.
    pub fn len(&self) -> Result<usize> {
        count(self.handle.call(Op::Len)?)
    }

    /// Whether it is empty now.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// This thread's number, for the server to tell a lock's holder among a process's threads.
fn thread_id() -> u64 {
    thread_local! {
        static ID: u64 = {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            NEXT.fetch_add(1, Relaxed)
        };
    }
    ID.with(|id| *id)
}

/// A proxy to a lock held by a [`Manager`](crate::Manager): Python's `manager.Lock()`. A
/// client that dies holding it releases it.
pub struct LockProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(LockProxy);

impl LockProxy {
    /// Waits for the lock and takes it; dropping the guard releases it. The lock is not
    /// reentrant: if this thread holds it already, this is an error rather than a deadlock.
    pub fn acquire(&self) -> Result<LockProxyGuard<'_>> {
        self.acquire_within(None)?.ok_or_else(|| unexpected(Answer::Done))
    }

    /// Waits at most `timeout`: `Ok(None)` if the lock stayed held. If this thread holds it
    /// already, no wait can free it, so this is `Ok(None)` at once, for any timeout.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockProxyGuard<'_>>> {
        self.acquire_within(Some(timeout))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<Option<LockProxyGuard<'_>>> {
        let timeout_ms = timeout.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
        match self.handle.call_raw(Op::LockAcquire { thread: thread_id(), timeout_ms })? {
            Ok(answer) => done(answer).map(|()| Some(LockProxyGuard { lock: self, _not_send: PhantomData })),
            Err(Failure::TimedOut) => Ok(None),
            Err(f) => Err(client::failure(f)),
        }
    }
}

/// Holds a [`LockProxy`]; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockProxyGuard<'a> {
    lock: &'a LockProxy,
    /// The server knows the holder by its thread's connection.
    _not_send: PhantomData<*const ()>,
}

impl Drop for LockProxyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.handle.call(Op::LockRelease { thread: thread_id() });
    }
}

impl fmt::Debug for LockProxyGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockProxyGuard").finish_non_exhaustive()
    }
}

/// A proxy to an event held by a [`Manager`](crate::Manager): Python's `manager.Event()`.
pub struct EventProxy {
    handle: Handle,
    _t: PhantomData<()>,
}

proxy_impls!(EventProxy);

impl EventProxy {
    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<()> {
        done(self.handle.call(Op::EventSet)?)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        done(self.handle.call(Op::EventClear)?)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool> {
        flag(self.handle.call(Op::EventIsSet)?)
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<()> {
        flag(self.handle.call(Op::EventWait { timeout_ms: None })?).map(drop)
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        flag(self.handle.call(Op::EventWait { timeout_ms: Some(timeout.as_millis().min(u64::MAX as u128) as u64) })?)
    }
}

/// A proxy to a user's object held by a [`Manager`](crate::Manager) (see [`Served`]).
pub struct ObjectProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(ObjectProxy<T>);

impl<T: Served> ObjectProxy<T> {
    /// Sends `request` to the object and returns its response.
    ///
    /// # Errors
    ///
    /// [`Error::ManagerOperation`] when the object's `handle` panicked (the server goes on);
    /// [`Error::ManagerGone`] when the server is gone.
    pub fn call(&self, request: T::Request) -> Result<T::Response> {
        item(self.handle.call(Op::Served(bytes(&request)?))?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }
}
