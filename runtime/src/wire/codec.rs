//! The serialization format, behind two functions: bincode 1 layout (fixed-width integers,
//! little-endian, u64 lengths), trailing bytes rejected. Nothing else names bincode.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::wire::frame::MAX_FRAME_LEN;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_FRAME_LEN as u64)
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(what: &'static str, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    options().serialize_into(out, value).map_err(|e| Error::Encode {
        what,
        type_name: std::any::type_name::<T>().to_string(),
        message: e.to_string(),
    })
}

/// Decodes a whole buffer as a `T`.
pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    options().deserialize(bytes).map_err(|e| Error::Decode {
        what,
        type_name: std::any::type_name::<T>().to_string(),
        message: e.to_string(),
    })
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
    fn a_lying_length_prefix_does_not_allocate_it() {
        // a Vec<u8> claiming u64::MAX elements with none present
        let bytes = u64::MAX.to_le_bytes();
        assert!(decode::<Vec<u8>>("result", &bytes).is_err());
    }
}
