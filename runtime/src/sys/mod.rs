//! Raw operating-system calls. Every `unsafe` block of the runtime that is not shared memory
//! lives here, each with a `// SAFETY:` line.

mod linux;
pub(crate) mod robust;
pub(crate) mod shm;

pub(crate) use linux::*;
