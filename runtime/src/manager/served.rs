//! A user's own type, served by a manager: its requests and replies are types, checked by the
//! compiler; the server finds the code by the type's registered name.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A type a [`Manager`](crate::Manager) can hold and serve: Python's `BaseManager.register`,
/// typed. Each call sends one `Request` and gets one `Response` back; the compiler checks both.
///
/// The server runs `handle` one call at a time per object, so each call is atomic. A `handle`
/// that panics answers its caller with [`Error::ManagerOperation`](crate::Error) and the server
/// goes on (the object stays as the panic left it).
///
/// Register the type once with [`served!`](crate::served): the server (the same program,
/// started again) finds its code by name.
///
/// # Examples
///
/// ```
/// # extern crate multiproc_runtime as multiproc;
/// use multiproc::{served, Manager, Served};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Counter {
///     count: u64,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// enum Op {
///     Add(u64),
///     Get,
/// }
///
/// impl Served for Counter {
///     type Request = Op;
///     type Response = u64;
///     fn handle(&mut self, op: Op) -> u64 {
///         match op {
///             Op::Add(n) => self.count += n,
///             Op::Get => {}
///         }
///         self.count
///     }
/// }
///
/// served!(Counter);
///
/// # fn main() -> multiproc::Result<()> {
/// let manager = Manager::start()?;
/// let counter = manager.serve_object(Counter { count: 0 })?;
/// counter.call(Op::Add(5))?;
/// assert_eq!(counter.call(Op::Get)?, 5);
/// # Ok(())
/// # }
/// ```
pub trait Served: Serialize + DeserializeOwned + Send + 'static {
    /// What a call sends.
    type Request: Serialize + DeserializeOwned;
    /// What a call returns.
    type Response: Serialize + DeserializeOwned;
    /// Handles one call, at the server.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
}

/// A served object at the server, its type erased.
pub(crate) trait Erased: Send {
    /// Decodes a request, handles it, encodes the response; a panic is caught and told.
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, CallFailed>;
}

/// Why a served call failed.
pub(crate) enum CallFailed {
    Panicked(String),
    Codec(String),
}

struct Holder<T>(T);

impl<T: Served> Erased for Holder<T> {
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, CallFailed> {
        let request: T::Request = bincode::deserialize(request).map_err(|e| CallFailed::Codec(e.to_string()))?;
        let response = crate::panic::catch(|| self.0.handle(request)).map_err(|r| {
            CallFailed::Panicked(match r.location {
                Some(at) => format!("{} (at {at})", r.message),
                None => r.message,
            })
        })?;
        bincode::serialize(&response).map_err(|e| CallFailed::Codec(e.to_string()))
    }
}

/// Makes a served object from its encoded value.
type Make = fn(&[u8]) -> Result<Box<dyn Erased>, String>;

/// One registered type: its name, and how to make it from its encoded value. Made by
/// `served!`; not public API.
#[derive(Debug)]
pub struct ServedEntry {
    pub(crate) name: fn() -> &'static str,
    pub(crate) make: Make,
}

impl ServedEntry {
    /// The entry of `T`.
    pub const fn of<T: Served>() -> ServedEntry {
        ServedEntry { name: std::any::type_name::<T>, make: make::<T> }
    }
}

fn make<T: Served>(init: &[u8]) -> Result<Box<dyn Erased>, String> {
    let value: T = bincode::deserialize(init).map_err(|e| e.to_string())?;
    Ok(Box::new(Holder(value)))
}

/// Every `served!` type.
#[linkme::distributed_slice]
pub static SERVED: [ServedEntry];

/// The entry registered for `name`.
pub(crate) fn find(name: &str) -> Option<&'static ServedEntry> {
    SERVED.iter().find(|e| (e.name)() == name)
}

/// Registers a [`Served`] type, so that a manager's server can make and serve it. Write it
/// once, next to the type's `impl Served`.
#[macro_export]
macro_rules! served {
    ($ty:ty) => {
        const _: () = {
            #[$crate::__private::linkme::distributed_slice($crate::__private::SERVED)]
            #[linkme(crate = $crate::__private::linkme)]
            static ENTRY: $crate::__private::ServedEntry = $crate::__private::ServedEntry::of::<$ty>();
        };
    };
}
