//! Typed proxies to a manager's objects: each method is one request, atomic at the server.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;

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
    pub(super) fn call(&self, op: Op) -> Result<Answer> {
        client::call(&self.endpoint, &Request::Call { id: self.id, op })
    }

    pub(super) fn call_raw(&self, op: Op) -> Result<std::result::Result<Answer, Failure>> {
        client::call_raw(&self.endpoint, &Request::Call { id: self.id, op })
    }

    /// A value encoded to be stored in this handle's manager.
    pub(super) fn bytes<T: Serialize + ?Sized>(&self, value: &T) -> Result<ByteBuf> {
        stored_at(&self.endpoint, || bytes(value))
    }

    /// A value stored in this handle's manager, decoded.
    pub(super) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        stored_at(&self.endpoint, || decode(bytes))
    }

    /// The value an answer from this handle's manager holds, if any.
    pub(super) fn item<T: DeserializeOwned>(&self, answer: Answer) -> Result<Option<T>> {
        stored_at(&self.endpoint, || item(answer))
    }
}

thread_local! {
    /// The manager whose stored values this thread is encoding or decoding, if any.
    static STORED_AT: RefCell<Option<Arc<Endpoint>>> = const { RefCell::new(None) };
}

/// Runs `f`, which encodes or decodes values stored at `endpoint`'s manager: a proxy to
/// another object of that manager among them is written as the object's id alone, and read
/// back as a proxy through the same manager (a list of dicts, a dict of queues).
pub(crate) fn stored_at<R>(endpoint: &Arc<Endpoint>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Endpoint>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            let _ = STORED_AT.try_with(|s| *s.borrow_mut() = before);
        }
    }
    let _restore = Restore(STORED_AT.with(|s| s.replace(Some(Arc::clone(endpoint)))));
    f()
}

/// Why a proxy cannot be stored where it was put.
const OTHER_MANAGER: &str = "a proxy can be stored only in an object of the manager that holds its own object \
    (a list of dicts of one manager); store the other manager's data, or make both objects in one manager";

/// How a handle crosses to another process: a local manager's acceptor as a descriptor; a
/// remote one's address and key (only inside a frame, never to a file or JSON).
#[derive(Serialize, Deserialize)]
enum Wire {
    Local(u32),
    Remote(String, ByteBuf),
    /// Stored inside another object of the same manager: the id is enough.
    Here,
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if let Some(here) = STORED_AT.with(|s| s.borrow().clone()) {
            if !here.same(&self.endpoint) {
                return Err(S::Error::custom(OTHER_MANAGER));
            }
            return (Wire::Here, self.id).serialize(s);
        }
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
            Wire::Here => STORED_AT.with(|s| s.borrow().clone()).ok_or_else(|| {
                D::Error::custom(
                    "a proxy stored in a manager's object can be read only through a proxy of that manager",
                )
            })?,
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

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| Error::Decode {
        what: "value",
        type_name: std::any::type_name::<T>().into(),
        message: e.to_string(),
    })
}

pub(super) fn bytes<T: Serialize + ?Sized>(value: &T) -> Result<ByteBuf> {
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

pub(super) fn item<T: DeserializeOwned>(answer: Answer) -> Result<Option<T>> {
    match answer {
        Answer::Item(item) => item.map(|b| decode(&b)).transpose(),
        other => Err(unexpected(other)),
    }
}

pub(super) fn flag(answer: Answer) -> Result<bool> {
    match answer {
        Answer::Bool(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

pub(super) fn count(answer: Answer) -> Result<usize> {
    match answer {
        Answer::Count(n) => Ok(n as usize),
        other => Err(unexpected(other)),
    }
}

pub(super) fn done(answer: Answer) -> Result<()> {
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

pub(super) use proxy_impls;

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
        self.handle.item(self.handle.call(Op::DictGet(self.handle.bytes(key)?))?)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.handle.item(self.handle.call(Op::DictInsert(self.handle.bytes(&key)?, self.handle.bytes(&value)?))?)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        self.handle.item(self.handle.call(Op::DictRemove(self.handle.bytes(key)?))?)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        flag(self.handle.call(Op::DictContains(self.handle.bytes(key)?))?)
    }

    /// The value of `key`, set to `value` first if it had none (Python's `setdefault`), in one
    /// step.
    pub fn set_default(&self, key: K, value: V) -> Result<V> {
        self.handle
            .item(self.handle.call(Op::DictSetDefault(self.handle.bytes(&key)?, self.handle.bytes(&value)?))?)?
            .ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Sets `key` to `new` (`None`: removes it) if its value is `expected` (`None`: absent),
    /// in one step; returns whether it did.
    pub fn compare_and_set(&self, key: &K, expected: Option<&V>, new: Option<&V>) -> Result<bool> {
        let op = Op::DictCompareAndSet {
            key: self.handle.bytes(key)?,
            expected: expected.map(|v| self.handle.bytes(v)).transpose()?,
            new: new.map(|v| self.handle.bytes(v)).transpose()?,
        };
        flag(self.handle.call(op)?)
    }

    /// Read-modify-write without a race: `f` gets the value of `key` (if any) and returns the
    /// new one (`None`: remove). Another client's change in between makes it try again with
    /// the new value. Returns what was stored.
    pub fn update(&self, key: &K, mut f: impl FnMut(Option<V>) -> Option<V>) -> Result<Option<V>> {
        loop {
            let old = self.handle.call(Op::DictGet(self.handle.bytes(key)?))?;
            let old_bytes = match &old {
                Answer::Item(b) => b.clone(),
                _ => None,
            };
            let new = f(self.handle.item(old)?);
            let op = Op::DictCompareAndSet {
                key: self.handle.bytes(key)?,
                expected: old_bytes,
                new: new.as_ref().map(|v| self.handle.bytes(v)).transpose()?,
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
            Answer::Pairs(mut pairs) => {
                pairs.pop().map(|(k, v)| Ok((self.handle.decode(&k)?, self.handle.decode(&v)?))).transpose()
            }
            other => Err(unexpected(other)),
        }
    }

    /// Inserts every pair of `items`, in order, in one step (Python's `update(mapping)`); a
    /// key already there gets its new value in its old place.
    pub fn extend(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = items
            .into_iter()
            .map(|(k, v)| Ok((self.handle.bytes(&k)?, self.handle.bytes(&v)?)))
            .collect::<Result<Vec<_>>>()?;
        done(self.handle.call(Op::DictExtend(pairs))?)
    }

    /// Every entry, in order: a snapshot, taken in one step (iterate over it while others
    /// change the dict).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.handle.call(Op::DictItems)? {
            Answer::Pairs(pairs) => {
                pairs.into_iter().map(|(k, v)| Ok((self.handle.decode(&k)?, self.handle.decode(&v)?))).collect()
            }
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
///
/// Elements (and a dict's keys and values, a value's contents) may be proxies of the same
/// manager: a `ListProxy<DictProxy<K, V>>` is a list of dicts, and `get(i)` gives a proxy
/// that works in any process. They are stored by id; a proxy of another manager is refused
/// with [`Error::Encode`] saying so.
pub struct ListProxy<T> {
    handle: Handle,
    _t: PhantomData<fn(T) -> T>,
}

proxy_impls!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends `value`.
    pub fn push(&self, value: T) -> Result<()> {
        done(self.handle.call(Op::ListPush(self.handle.bytes(&value)?))?)
    }

    /// Element `index`. [`Error::OutOfRange`] past the end.
    pub fn get(&self, index: usize) -> Result<T> {
        self.handle.item(self.handle.call(Op::ListGet(index as u64))?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Replaces element `index`; returns the one it replaced.
    pub fn set(&self, index: usize, value: T) -> Result<T> {
        self.handle
            .item(self.handle.call(Op::ListSet(index as u64, self.handle.bytes(&value)?))?)?
            .ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Inserts `value` at `index` (at the end if past it).
    pub fn insert(&self, index: usize, value: T) -> Result<()> {
        done(self.handle.call(Op::ListInsert(index as u64, self.handle.bytes(&value)?))?)
    }

    /// Removes element `index` and returns it.
    pub fn remove(&self, index: usize) -> Result<T> {
        self.handle.item(self.handle.call(Op::ListRemove(index as u64))?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Removes the last element and returns it.
    pub fn pop(&self) -> Result<Option<T>> {
        self.handle.item(self.handle.call(Op::ListPop)?)
    }

    /// Appends every element of `items`, in one step.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<()> {
        let items = items.into_iter().map(|v| self.handle.bytes(&v)).collect::<Result<Vec<_>>>()?;
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
        count(self.handle.call(Op::ListCount(self.handle.bytes(value)?))?)
    }

    /// The index of the first element equal to `value` (Python's `index`, without the
    /// exception); `None` if there is none.
    pub fn index(&self, value: &T) -> Result<Option<usize>> {
        match self.handle.call(Op::ListIndex(self.handle.bytes(value)?, 0))? {
            Answer::Index(i) => Ok(i.map(|i| i as usize)),
            other => Err(unexpected(other)),
        }
    }

    /// Removes the first element equal to `value` (Python's `remove`); whether there was one.
    pub fn remove_value(&self, value: &T) -> Result<bool> {
        flag(self.handle.call(Op::ListRemoveValue(self.handle.bytes(value)?))?)
    }

    /// Changes the whole list without a race: `f` gets a copy, and its changes replace the
    /// list if no other client changed it meanwhile (else it runs again on the new contents).
    pub fn modify(&self, mut f: impl FnMut(&mut Vec<T>)) -> Result<()> {
        loop {
            let old = match self.handle.call(Op::ListItems)? {
                Answer::Items(items) => items,
                other => return Err(unexpected(other)),
            };
            let mut items = old.iter().map(|b| self.handle.decode(b)).collect::<Result<Vec<T>>>()?;
            f(&mut items);
            let new = items.iter().map(|v| self.handle.bytes(v)).collect::<Result<Vec<_>>>()?;
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
            let new = f(self.handle.decode(&old)?);
            let op = Op::ListCompareAndSet { index: index as u64, expected: old, new: self.handle.bytes(&new)? };
            if flag(self.handle.call(op)?)? {
                return Ok(new);
            }
        }
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.handle.call(Op::ListItems)? {
            Answer::Items(items) => items.iter().map(|b| self.handle.decode(b)).collect(),
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
        self.handle.item(self.handle.call(Op::ValueGet)?)?.ok_or_else(|| unexpected(Answer::Item(None)))
    }

    /// Replaces the value.
    pub fn set(&self, value: T) -> Result<()> {
        done(self.handle.call(Op::ValueSet(self.handle.bytes(&value)?))?)
    }

    /// Read-modify-write without a race (see [`DictProxy::update`]); returns the new value.
    pub fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let old = match self.handle.call(Op::ValueGet)? {
                Answer::Item(Some(b)) => b,
                other => return Err(unexpected(other)),
            };
            let new = f(self.handle.decode(&old)?);
            if flag(self.handle.call(Op::ValueCompareAndSet { expected: old, new: self.handle.bytes(&new)? })?)? {
                return Ok(new);
            }
        }
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
        self.handle
            .item(self.handle.call(Op::Served(self.handle.bytes(&request)?))?)?
            .ok_or_else(|| unexpected(Answer::Item(None)))
    }
}
