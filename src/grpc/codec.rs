//! The protobuf codec of every generated service (see `build.rs`): prost's,
//! except that a request that does not decode is the caller's mistake —
//! `INVALID_ARGUMENT` with the decoder's reason — where the stock codec
//! answers `INTERNAL`, which this service keeps for its own bugs.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// Marks a status as a decode failure, so the server counts it under its
/// method (see [`super::server`]); removed before the answer leaves.
pub const DECODE_ERROR_MARK: &str = "x-datalayer-decode-error";

#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            let reason = format!("is not a valid protobuf message: {}", status.message());
            let mut status = Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("invalid argument: request: {reason}"),
                ErrorDetails::with_bad_request_violation("request", reason),
            );
            status.metadata_mut().insert(
                DECODE_ERROR_MARK,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
