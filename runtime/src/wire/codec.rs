//! The serialization format, behind two functions: bincode 1 layout (fixed-width integers,
//! little-endian, u64 lengths), trailing bytes rejected. Nothing else names bincode.

use std::cell::Cell;
use std::io;

use bincode::Options;
use serde::de::{DeserializeOwned, Visitor};
use serde::Serialize;

use crate::error::Error;
use crate::wire::{fds, large};

/// No size limit: a frame is already bounded by `MAX_FRAME_LEN`, a lying length inside it
/// runs out of bytes (serde preallocates at most 1 MiB on a length's word), and a limit would
/// make bincode measure every value before encoding it.
fn options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian()
}

/// Appends the encoding of `value` to `out`.
#[inline]
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    options().serialize_into(Append::<true>(out), value).map_err(|e| encode_failed::<T>(what, e))
}

/// A `Vec` to append to, whose writes are inlined into the encoder whatever the size of the
/// function around it: a `map` encodes millions of small values, a few bytes each (measured, W3:
/// 2 ns per item when the `Vec`'s own writes were left out of line). With `LARGE`, a large byte
/// run may go out of line (see `large.rs`); without, all stay here (plain bincode).
struct Append<'a, const LARGE: bool>(&'a mut Vec<u8>);

impl<const LARGE: bool> io::Write for Append<'_, LARGE> {
    #[inline(always)]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    #[inline(always)]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if LARGE && large::is_large(buf.len()) && self.out_of_line(buf) {
            return Ok(());
        }
        self.0.reserve(buf.len());
        let len = self.0.len();
        // SAFETY: `reserve` made room for `buf.len()` more bytes past `len`; they are written
        // (a non-overlapping copy from `buf`) before the length covers them.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.0.as_mut_ptr().add(len), buf.len());
            self.0.set_len(len + buf.len());
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<const LARGE: bool> Append<'_, LARGE> {
    /// Puts a large byte run out of line (see `large.rs`), if it is one (bincode wrote its
    /// length just before) and a frame's descriptors can carry it. `false`: it goes inline.
    #[cold]
    #[inline(never)]
    fn out_of_line(&mut self, run: &[u8]) -> bool {
        let at = self.0.len();
        if at < 8 || self.0[at - 8..] != (run.len() as u64).to_le_bytes() {
            return false;
        }
        let Some(index) = fds::put_large(run) else { return false };
        self.0[at - 8..].copy_from_slice(&(run.len() as u64 | large::OUT_OF_LINE).to_le_bytes());
        self.0.extend_from_slice(&index.to_le_bytes());
        true
    }
}

/// Appends the encoding of `value` to a writer.
#[inline]
pub(crate) fn encode_to<T: Serialize + ?Sized, W: io::Write>(
    what: &'static str,
    value: &T,
    out: W,
) -> Result<(), Error> {
    options().serialize_into(out, value).map_err(|e| encode_failed::<T>(what, e))
}

/// Appends the encoding of `value` to `out`, plain (no byte run out of line: a queue's item),
/// inlined whole: `put_many` encodes thousands of small items with it (measured, W6 batched:
/// bincode's own entry point, called per item, was a third of the producer's time).
#[inline(always)]
pub(crate) fn encode_plain<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut ser = bincode::Serializer::new(Append::<false>(out), options());
    value.serialize(&mut ser).map_err(|e| encode_failed::<T>(what, e))
}

#[cold]
fn encode_failed<T: ?Sized>(what: &'static str, e: bincode::Error) -> Error {
    Error::Encode { what, type_name: std::any::type_name::<T>().to_string(), message: e.to_string() }
}

/// The error for a value whose `Serialize` panicked (while the frame it was going into was
/// encoded).
pub(crate) fn serialize_panicked(what: &'static str, type_name: &str, message: String) -> Error {
    Error::Encode { what, type_name: type_name.to_string(), message: format!("its Serialize panicked: {message}") }
}

/// The error for a value whose `Deserialize` panicked.
pub(crate) fn deserialize_panicked(what: &'static str, type_name: &str, message: String) -> Error {
    Error::Decode { what, type_name: type_name.to_string(), message: format!("its Deserialize panicked: {message}") }
}

/// Decodes a whole buffer as a `T`.
pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    let mut reader = ValueReader::new(bytes, what);
    let value = reader.read::<T>()?;
    reader.finish()?;
    Ok(value)
}

/// Decodes a whole buffer of plain bincode (no large values out of line: a queue's item) as a
/// `T`; the error is bincode's, for [`decode_failed`] to name.
/// Inlined whole (with bincode's reader), since a `get_many` decodes each of thousands of small
/// items with it (measured, W6 batched: a call and a reader's setup per item were a third of
/// the consumer's time).
#[inline(always)]
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    let rest = Cell::new(bytes);
    let mut de = bincode::Deserializer::with_bincode_read(Tail::<false> { rest: &rest }, options());
    let value = T::deserialize(&mut de)?;
    match rest.get().len() {
        0 => Ok(value),
        n => Err(left_over(n)),
    }
}

#[cold]
fn left_over(n: usize) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(format!("{n} bytes left over after the value")))
}

/// The error of a [`decode_plain`] that failed.
#[cold]
pub(crate) fn decode_failed<T>(what: &'static str, e: bincode::Error) -> Error {
    Error::Decode { what, type_name: std::any::type_name::<T>().to_string(), message: e.to_string() }
}

/// Reads values one after another from an encoded sequence: the arguments of a call (encoded
/// as a tuple is: each element in turn), or the results of a batch. Not public API.
#[derive(Debug)]
pub struct ValueReader<'a> {
    rest: Cell<&'a [u8]>,
    what: &'static str,
}

impl<'a> ValueReader<'a> {
    /// Reads `bytes`; `what` names them in errors (`arguments`, `result`).
    #[inline]
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        ValueReader { rest: Cell::new(bytes), what }
    }

    /// Decodes the next value as a `T`.
    #[inline]
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let mut de = bincode::Deserializer::with_bincode_read(Tail::<true> { rest: &self.rest }, options());
        T::deserialize(&mut de).map_err(|e| Error::Decode {
            what: self.what,
            type_name: std::any::type_name::<T>().to_string(),
            message: e.to_string(),
        })
    }

    /// How many bytes are left to read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.rest.get().len()
    }

    /// Decodes the next value as a `Vec` of plain numbers written by
    /// [`encode_numbers`](crate::private::encode_numbers): its bytes as one block.
    #[cfg(target_endian = "little")]
    pub fn read_numbers<T: bytemuck::Pod>(&mut self) -> Result<Vec<T>, Error> {
        let mut tail = Tail::<true> { rest: &self.rest };
        let fail = |message: String| Error::Decode {
            what: self.what,
            type_name: std::any::type_name::<Vec<T>>().to_string(),
            message,
        };
        let word = tail.take(8).map_err(|e| fail(e.to_string()))?;
        let len = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        if len & large::OUT_OF_LINE != 0 {
            let index = tail.take(4).map_err(|e| fail(e.to_string()))?;
            let index = u32::from_le_bytes(index.try_into().expect("4 bytes"));
            return fds::with_received(index, |fd| large::read::<T>(fd, (len & !large::OUT_OF_LINE) as usize))
                .map_err(fail);
        }
        let each = std::mem::size_of::<T>() as u64;
        if !len.is_multiple_of(each) {
            return Err(fail(format!("{len} bytes are not a whole number of {each}-byte elements")));
        }
        let bytes = tail.take(len as usize).map_err(|e| fail(e.to_string()))?;
        let mut out = vec![T::zeroed(); (len / each) as usize];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(bytes);
        Ok(out)
    }

    /// As above, on a big-endian machine: the general path, element by element.
    #[cfg(target_endian = "big")]
    pub fn read_numbers<T: bytemuck::Pod + DeserializeOwned>(&mut self) -> Result<Vec<T>, Error> {
        self.read::<Vec<T>>()
    }

    /// Decodes the next value as a byte buffer, in one block.
    pub fn read_bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.read::<serde_bytes::ByteBuf>().map(serde_bytes::ByteBuf::into_vec)
    }

    /// Checks that every byte was used: a longer buffer is not silently a shorter value.
    #[inline]
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.rest.get().len() {
            0 => Ok(()),
            n => Err(Error::Decode {
                what: self.what,
                type_name: "the whole message".into(),
                message: format!("{n} bytes left over"),
            }),
        }
    }
}

/// The unread part of a `ValueReader`, as bincode reads it; with `LARGE`, byte runs may be out
/// of line (see `large.rs`), else all are here (plain bincode: a queue's item).
struct Tail<'r, 'a, const LARGE: bool = true> {
    rest: &'r Cell<&'a [u8]>,
}

/// A byte run as the reader found it: in the frame, or read from its own memfd.
enum Run<'a> {
    Here(&'a [u8]),
    OutOfLine(Vec<u8>),
}

impl<'a, const LARGE: bool> Tail<'_, 'a, LARGE> {
    /// A byte run of the length bincode just read: here, or out of line (see `large.rs`).
    #[inline]
    fn run(&mut self, len: usize) -> bincode::Result<Run<'a>> {
        if !LARGE || len as u64 & large::OUT_OF_LINE == 0 {
            return self.take(len).map(Run::Here);
        }
        self.run_out_of_line(len)
    }

    #[cold]
    fn run_out_of_line(&mut self, len: usize) -> bincode::Result<Run<'a>> {
        let index = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        let len = (len as u64 & !large::OUT_OF_LINE) as usize;
        fds::with_received(index, |fd| large::read::<u8>(fd, len))
            .map(Run::OutOfLine)
            .map_err(|e| Box::new(bincode::ErrorKind::Custom(e)))
    }

    #[inline]
    fn take(&mut self, len: usize) -> bincode::Result<&'a [u8]> {
        let rest = self.rest.get();
        if rest.len() < len {
            return Err(Box::new(bincode::ErrorKind::Io(io::ErrorKind::UnexpectedEof.into())));
        }
        let (head, tail) = rest.split_at(len);
        self.rest.set(tail);
        Ok(head)
    }
}

impl<const LARGE: bool> io::Read for Tail<'_, '_, LARGE> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.rest.get().len());
        self.read_exact(&mut buf[..n])?;
        Ok(n)
    }

    #[inline]
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let bytes = self.take(buf.len()).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

impl<'a, const LARGE: bool> bincode::BincodeRead<'a> for Tail<'_, 'a, LARGE> {
    fn forward_read_str<V: Visitor<'a>>(&mut self, length: usize, visitor: V) -> bincode::Result<V::Value> {
        let utf8 = |e| Box::new(bincode::ErrorKind::InvalidUtf8Encoding(e));
        match self.run(length)? {
            Run::Here(bytes) => visitor.visit_borrowed_str(std::str::from_utf8(bytes).map_err(utf8)?),
            Run::OutOfLine(bytes) => visitor.visit_string(String::from_utf8(bytes).map_err(|e| utf8(e.utf8_error()))?),
        }
    }

    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        Ok(match self.run(length)? {
            Run::Here(bytes) => bytes.to_vec(),
            Run::OutOfLine(bytes) => bytes,
        })
    }

    fn forward_read_bytes<V: Visitor<'a>>(&mut self, length: usize, visitor: V) -> bincode::Result<V::Value> {
        match self.run(length)? {
            Run::Here(bytes) => visitor.visit_borrowed_bytes(bytes),
            Run::OutOfLine(bytes) => visitor.visit_byte_buf(bytes),
        }
    }
}

/// Whether `T` is a number whose encoding is its own bytes (fixed-size integers and floats:
/// little-endian, as this codec writes them), so that an item can be read by copying its bytes
/// instead of through its `Deserialize`. `typeid::of` works for types that are not `'static`;
/// a number type has no lifetimes, so equal ids mean `T` is that type.
#[inline]
pub(crate) fn is_plain_number<T: ?Sized>() -> bool {
    use std::any::TypeId;
    if cfg!(target_endian = "big") {
        return false;
    }
    let t = typeid::of::<T>();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<u128>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<i128>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
    ]
    .contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_bincode_1_layout() {
        let mut out = Vec::new();
        encode_into("arguments", &(7u64, "hi".to_string()), &mut out).unwrap();
        assert_eq!(out, [7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        let back: (u64, String) = decode("arguments", &out).unwrap();
        assert_eq!(back, (7, "hi".to_string()));
    }

    #[test]
    fn wrong_types_are_a_decode_error_naming_the_type() {
        let mut out = Vec::new();
        encode_into("result", &1u8, &mut out).unwrap();
        match decode::<u64>("result", &out) {
            Err(Error::Decode { type_name, what: "result", .. }) if type_name == "u64" => {}
            other => panic!("expected a decode error, got {other:?}"),
        }
        // trailing bytes are refused too: a longer buffer is not silently a shorter value
        encode_into("result", &2u8, &mut out).unwrap();
        assert!(decode::<u8>("result", &out).is_err());
    }

    #[test]
    fn an_arg_reader_reads_a_tuple_one_element_at_a_time() {
        let mut out = Vec::new();
        encode_into("arguments", &(7u64, "hi".to_string(), vec![1u8, 2]), &mut out).unwrap();
        let mut r = ValueReader::new(&out, "arguments");
        assert_eq!(r.read::<u64>().unwrap(), 7);
        assert_eq!(r.read::<String>().unwrap(), "hi");
        assert_eq!(r.read::<Vec<u8>>().unwrap(), [1, 2]);
        r.finish().unwrap();

        let mut r = ValueReader::new(&out, "arguments");
        assert_eq!(r.read::<u64>().unwrap(), 7);
        assert!(r.finish().is_err(), "left-over bytes must be an error");
        let mut r = ValueReader::new(&out[..12], "arguments");
        r.read::<u64>().unwrap();
        assert!(matches!(r.read::<String>(), Err(Error::Decode { .. })), "a short buffer must be an error");
    }

    #[test]
    fn byte_buffers_encode_exactly_as_a_vec_of_u8() {
        let data: Vec<u8> = (0..=255).collect();
        let (mut as_vec, mut as_bytes) = (Vec::new(), Vec::new());
        encode_into("arguments", &data, &mut as_vec).unwrap();
        encode_into("arguments", serde_bytes::Bytes::new(&data), &mut as_bytes).unwrap();
        assert_eq!(as_vec, as_bytes);
        assert_eq!(ValueReader::new(&as_vec, "arguments").read_bytes().unwrap(), data);
    }

    #[test]
    fn a_lying_length_prefix_does_not_allocate_it() {
        // a Vec<u8> claiming u64::MAX elements with none present
        let bytes = u64::MAX.to_le_bytes();
        assert!(decode::<Vec<u8>>("result", &bytes).is_err());
    }
}
